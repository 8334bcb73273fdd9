//! VMware's lock folders (`*.lck` beside a VM's files), which it leaves behind when the host
//! or its process dies and which then make `start` and `deleteVM` answer "in use"; and which
//! VMs run, by canonical VMX path, to tell a stale lock from a live one.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::Hypervisor;

/// Absolute, symlink-free form, so that `/var/...` and `/private/var/...` (macOS) compare
/// equal whichever vmrun prints.
pub fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The VMX paths vmrun says are running, canonical; `None` when vmrun cannot tell.
pub fn running_set(hypervisor: &dyn Hypervisor) -> Option<HashSet<PathBuf>> {
    match hypervisor.list_running() {
        Ok(paths) => Some(paths.iter().map(|p| canonical(p)).collect()),
        Err(err) => {
            crate::warn!("cannot tell which VMs run: {err}");
            None
        }
    }
}

/// Removes `*.lck` folders directly in `dir` unless a running VM's VMX lives there.
pub fn remove_locks_in(dir: &Path, running: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let dir = canonical(dir);
    if running
        .iter()
        .any(|vmx| vmx.parent() == Some(dir.as_path()))
    {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_lock = path.extension().is_some_and(|ext| ext == "lck")
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_lock {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                crate::warn!(
                    "removed stale VMware lock {} (its VM is not running)",
                    path.display()
                );
                removed.push(path);
            }
            Err(err) => crate::warn!("cannot remove stale lock {}: {err}", path.display()),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_locks_go_unless_the_vm_runs() {
        let root = crate::sys::scratch::dir("locks-locks");
        fs::create_dir_all(root.join("a.vmx.lck")).unwrap();
        fs::write(root.join("a.vmx.lck/M1.lck"), "").unwrap();
        fs::create_dir_all(root.join("disk.vmdk.lck")).unwrap();
        fs::write(root.join("notes.lck"), "a file, not a lock folder").unwrap();
        let running: HashSet<PathBuf> = [canonical(&root).join("a.vmx")].into();
        assert!(remove_locks_in(&root, &running).is_empty());
        assert!(root.join("a.vmx.lck").exists());
        let removed = remove_locks_in(&root, &HashSet::new());
        assert_eq!(removed.len(), 2);
        assert!(!root.join("a.vmx.lck").exists());
        assert!(root.join("notes.lck").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
