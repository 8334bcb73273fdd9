//! Pools declared through the API, on disk: `<data>/pools/<name>.json` holds one spec,
//! replaced atomically and fsynced (as VM records are) before the API answers, so a pool
//! acknowledged is a pool a restart finds.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::spec::{check_name, PoolSpec};
use crate::sys::fsutil;

pub struct PoolFiles {
    dir: PathBuf,
}

impl PoolFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("pools"),
        }
    }

    /// Every pool on disk. A file that does not read as a spec is reported and left alone
    /// (someone's edit gone wrong is theirs to fix, not ours to delete).
    pub fn load(&self) -> BTreeMap<String, PoolSpec> {
        let mut pools = BTreeMap::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return pools,
            Err(e) => {
                crate::error!(
                    "cannot read the pools in {}: {e}; pools declared through the API are not kept warm",
                    self.dir.display()
                );
                return pools;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            let spec = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
            match spec {
                Ok(spec) => {
                    pools.insert(name.to_string(), spec);
                }
                Err(e) => crate::warn!(
                    "left alone: {} is not a pool spec ({e}); fix or remove it",
                    path.display()
                ),
            }
        }
        pools
    }

    pub fn save(&self, name: &str, spec: &PoolSpec) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(spec).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.path(name), &bytes)
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => fsutil::sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}
