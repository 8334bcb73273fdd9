//! `tart clone` (a copy of the VM's files, sparse as APFS copy-on-write keeps them; an
//! existing target is overwritten without a word), `tart pull` from the pretend registry
//! (`TART_SIM_REGISTRY`) into `cache/OCIs/`, and `tart delete` of a cached OCI image.
//!
//! As tart does, a pull files the image under the digest of the manifest the registry
//! served, and a name that differs (a tag, or a digest the served manifest does not have)
//! becomes a symlink to it: tart itself never refuses a manifest whose digest is not the
//! one asked for. In the pretend registry a manifest is `manifests/<digest>/manifest.json`
//! when there is one (its sha256 is what was served), else the folder's name.

use crate::error::TartError;
use crate::home::{self, env_flag, Home, VM_FILES};
use serde_json::Value;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `host/path:tag` or `host/path@sha256:<hex>`.
struct Reference {
    repository: String,
    /// `sha256:<hex>` or a tag.
    tag_or_digest: String,
}

impl Reference {
    fn parse(text: &str) -> Result<Reference, TartError> {
        let bad = || TartError::one(format!("failed to parse remote name \"{text}\""));
        let (repository, tag_or_digest) = if let Some((repo, digest)) = text.split_once('@') {
            let hex = digest.strip_prefix("sha256:").ok_or_else(bad)?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            (repo, digest.to_string())
        } else {
            match text.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_string()),
                _ => (text, "latest".to_string()),
            }
        };
        if !repository.contains('/') || repository.split('/').any(|p| p.is_empty() || p == "..") {
            return Err(bad());
        }
        Ok(Reference {
            repository: repository.to_string(),
            tag_or_digest,
        })
    }

    fn name(&self) -> String {
        if self.tag_or_digest.starts_with("sha256:") {
            format!("{}@{}", self.repository, self.tag_or_digest)
        } else {
            format!("{}:{}", self.repository, self.tag_or_digest)
        }
    }
}

fn cache_dir(home: &Home, reference: &Reference) -> PathBuf {
    home.root
        .join("cache/OCIs")
        .join(&reference.repository)
        .join(&reference.tag_or_digest)
}

/// Pulls `text` into the cache (unless there already) and returns the cached VM's folder.
fn pull(home: &Home, text: &str) -> Result<PathBuf, TartError> {
    let reference = Reference::parse(text)?;
    let target = cache_dir(home, &reference);
    if home::is_vm_dir(&target) {
        return Ok(target);
    }
    let unknown = || {
        TartError::one(format!(
            "failed to pull {}: manifest unknown (the registry has no such image)",
            reference.name()
        ))
    };
    let registry = std::env::var_os("TART_SIM_REGISTRY").ok_or_else(unknown)?;
    let repo = Path::new(&registry).join(&reference.repository);
    let digest = if reference.tag_or_digest.starts_with("sha256:") {
        reference.tag_or_digest.clone()
    } else {
        fs::read_to_string(repo.join("tags").join(&reference.tag_or_digest))
            .map_err(|_| unknown())?
            .trim()
            .to_string()
    };
    let source = repo.join("manifests").join(&digest);
    if !home::is_vm_dir(&source) {
        return Err(unknown());
    }
    println!("pulling {}...", reference.name());
    println!("pulling manifest...");
    let digest = served_digest(&source).unwrap_or(digest);
    let by_digest = home
        .root
        .join("cache/OCIs")
        .join(&reference.repository)
        .join(&digest);
    if !home::is_vm_dir(&by_digest) {
        let disk = fs::metadata(source.join("disk.img"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!("pulling disk ({:.1} GB compressed)...", disk as f64 / 1e9);
        copy_vm(home, &source, &by_digest)?;
        println!("100%");
    }
    if by_digest != target {
        let _ = fs::remove_file(&target);
        std::os::unix::fs::symlink(&digest, &target)
            .map_err(|e| TartError::io("link", &target, e))?;
    }
    prune(home, &by_digest);
    Ok(target)
}

/// `sha256:<hex>` of the manifest the pretend registry serves from `source`, when it has one.
fn served_digest(source: &Path) -> Option<String> {
    use sha2::Digest;
    let manifest = fs::read(source.join("manifest.json")).ok()?;
    let hex: String = sha2::Sha256::digest(&manifest)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

/// `tart delete` of a cached OCI image (a name with a `/`): its folder or symlink, then, as
/// tart's garbage collection does, symlinks left pointing nowhere.
pub fn delete_oci(home: &Home, text: &str) -> Result<(), TartError> {
    let reference = Reference::parse(text)?;
    let path = cache_dir(home, &reference);
    let removed = if path.is_symlink() {
        fs::remove_file(&path)
    } else if home::is_vm_dir(&path) {
        fs::remove_dir_all(&path)
    } else {
        return Err(TartError::missing(text));
    };
    removed.map_err(|e| TartError::io("delete", &path, e))?;
    let mut stack = vec![home.root.join("cache/OCIs")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_symlink() && !path.exists() {
                let _ = fs::remove_file(&path);
            } else if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// A Mac short of disk: tart deletes least-recently used cached images after a pull.
fn prune(home: &Home, keep: &Path) {
    if !env_flag("TART_SIM_PRUNE") || std::env::var_os("TART_NO_AUTO_PRUNE").is_some() {
        return;
    }
    let mut stack = vec![home.root.join("cache/OCIs")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if home::is_vm_dir(&path) {
                if fs::canonicalize(&path).ok().as_deref() != fs::canonicalize(keep).ok().as_deref()
                {
                    let _ = fs::remove_dir_all(&path);
                }
            } else if path.is_dir() {
                stack.push(path);
            }
        }
    }
}

/// Copies the three files into a scratch folder of `tmp/`, then renames it to `dst`,
/// replacing whatever was there.
fn copy_vm(home: &Home, src: &Path, dst: &Path) -> Result<(), TartError> {
    let scratch = home.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
    fs::create_dir_all(&scratch).map_err(|e| TartError::io("create", &scratch, e))?;
    for file in VM_FILES {
        copy_sparse(&src.join(file), &scratch.join(file))?;
    }
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|e| TartError::io("create", parent, e))?;
    }
    if dst.exists() {
        fs::remove_dir_all(dst).map_err(|e| TartError::io("replace", dst, e))?;
    }
    fs::rename(&scratch, dst).map_err(|e| TartError::io("rename", dst, e))
}

/// Copies the data regions only, so a sparse disk stays sparse (APFS clones keep holes).
fn copy_sparse(src: &Path, dst: &Path) -> Result<(), TartError> {
    let mut from = File::open(src).map_err(|e| TartError::io("open", src, e))?;
    let mut to = File::create(dst).map_err(|e| TartError::io("create", dst, e))?;
    let len = from
        .metadata()
        .map_err(|e| TartError::io("stat", src, e))?
        .len();
    let fd = from.as_raw_fd();
    let mut offset: i64 = 0;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    while (offset as u64) < len {
        // SAFETY: lseek on a valid descriptor.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        from.seek(SeekFrom::Start(data as u64))
            .map_err(|e| TartError::io("seek", src, e))?;
        to.seek(SeekFrom::Start(data as u64))
            .map_err(|e| TartError::io("seek", dst, e))?;
        let mut left = (end - data) as usize;
        while left > 0 {
            let n = from
                .read(&mut buf[..left.min(CHUNK)])
                .map_err(|e| TartError::io("read", src, e))?;
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n])
                .map_err(|e| TartError::io("write", dst, e))?;
            left -= n;
        }
        offset = end;
    }
    to.set_len(len).map_err(|e| TartError::io("resize", dst, e))
}

/// `tart clone SOURCE NAME`.
pub fn clone(home: &Home, args: &[String]) -> Result<(), TartError> {
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if let Some(flag) = args.iter().find(|a| a.starts_with('-')) {
        return Err(TartError::usage(&format!("Unknown option '{flag}'")));
    }
    let [source, name] = positional.as_slice() else {
        return Err(TartError::usage("Missing expected argument '<new-name>'"));
    };
    if name.contains('/') || name.is_empty() {
        return Err(TartError::usage(&format!(
            "invalid VM name \"{name}\": local VM names cannot contain slashes"
        )));
    }
    let (from, oci) = if source.contains('/') {
        (pull(home, source)?, true)
    } else {
        home.require(source)?;
        (home.vm_dir(source), false)
    };
    let dst = home.vm_dir(name);
    copy_vm(home, &from, &dst)?;
    if !oci {
        // A clone of a local VM gets a MAC address of its own; one of an OCI image does not.
        let path = dst.join("config.json");
        let mut config = home::read_config(&path)?;
        config.insert("macAddress".into(), Value::from(home::random_mac()));
        home::write_config_in_place(&path, &config)?;
    }
    Ok(())
}

/// `tart pull REFERENCE`.
pub fn pull_command(home: &Home, args: &[String]) -> Result<(), TartError> {
    let [reference] = args else {
        return Err(TartError::usage(
            "Missing expected argument '<remote-name>'",
        ));
    };
    pull(home, reference).map(|_| ())
}
