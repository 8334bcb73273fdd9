//! Naming a VM: the path as the caller gave it (for messages), its absolute form (for files)
//! and a stable key (for the state folder), so `a/../x.vmx` and `x.vmx` are one VM.

use crate::error::SimError;
use std::path::{Component, Path, PathBuf};

pub struct VmPath {
    pub given: String,
    pub abs: PathBuf,
    pub key: String,
}

impl VmPath {
    pub fn new(given: &str) -> Result<VmPath, SimError> {
        if given.is_empty() {
            return Err(SimError::InvalidArguments(
                "empty virtual machine path".into(),
            ));
        }
        let abs = absolute(Path::new(given))?;
        let key = format!(
            "{:016x}",
            fnv64(canonical(&abs).to_string_lossy().as_bytes())
        );
        Ok(VmPath {
            given: given.to_string(),
            abs,
            key,
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// `gold.vmx` -> `gold`: VMware names the VM's other files after it.
    pub fn stem(&self) -> String {
        self.abs
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn sibling(&self, extension: &str) -> PathBuf {
        self.dir().join(format!("{}.{extension}", self.stem()))
    }

    pub fn is_file(&self) -> bool {
        self.abs.is_file()
    }
}

/// Absolute and lexically normalised, symlinks kept: what a caller would recognise in `list`.
pub fn absolute(path: &Path) -> Result<PathBuf, SimError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir()
            .map_err(|e| SimError::Sim(format!("cannot read the current folder: {e}")))?;
        cwd.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

/// Symlinks resolved where the file (or at least its folder) exists, so that the state key of
/// `/tmp/x.vmx` and `/private/tmp/x.vmx` on macOS is the same.
fn canonical(abs: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(abs) {
        return real;
    }
    if let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) {
        if let Ok(real_parent) = std::fs::canonicalize(parent) {
            return real_parent.join(name);
        }
    }
    abs.to_path_buf()
}

/// FNV-1a: stable across Rust versions and platforms, unlike std's hasher.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// VMware's lock folder for a file: `<file>.lck/`.
pub fn lck_dir(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".lck");
    PathBuf::from(name)
}
