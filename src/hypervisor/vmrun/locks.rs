//! VMware's lock folders (`*.lck` beside a VM's files), which it leaves behind when the host
//! or its process dies and which then make `start`, `deleteVM` and `clone` answer "in use";
//! and which VMs run, by canonical VMX path, to tell a stale lock from a live one. A gold VM
//! never runs: its locks are told stale or live by the process that made them.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::hypervisor::running::canonical;

/// Removes `*.lck` folders directly in `dir` unless a running VM lives there: `running`
/// holds the folders of the server's VMs and the VMX paths of others.
pub fn remove_locks_in(dir: &Path, running: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let dir = canonical(dir);
    if running
        .iter()
        .any(|vm| vm == &dir || vm.parent() == Some(dir.as_path()))
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

/// Beside a gold VMX while the vmrun simulator (testdata/vmrun-sim) clones it: a file
/// holding the simulator's pid, its stand-in for VMware's `.lck` folders.
pub const SIM_CLONE_LOCK_SUFFIX: &str = ".sim-clone-lock";

/// A lock beside a gold VM that was left where it is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    pub path: PathBuf,
    pub why: String,
}

/// Who made a lock, as its files say.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// Every process named is gone: nothing can release it but its removal.
    Gone,
    Alive(i32),
    Unknown(String),
}

/// Removes the locks in `dir` (a gold VM's folder) whose processes are gone: VMware's
/// `*.lck` folders and the simulator's `*.sim-clone-lock` files. A lock whose process runs,
/// or whose owner its files do not tell, is left and returned. VMware's own rule is the
/// same (a lock is stale when the process that made it is gone on the same host); the
/// machine id in a member file is not checked, as a data folder is local to its host.
pub fn remove_dead_locks_in(dir: &Path) -> Vec<HeldLock> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut held = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = if kind.is_dir() && name.ends_with(".lck") {
            lck_owner(&path)
        } else if kind.is_file() && name.ends_with(SIM_CLONE_LOCK_SUFFIX) {
            sim_lock_owner(&path)
        } else {
            continue;
        };
        match owner {
            Owner::Gone => {
                let removed = if kind.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => crate::warn!(
                        "removed stale lock {} (the vmrun that made it is no longer running)",
                        path.display()
                    ),
                    // Released meanwhile by its owner: as good.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => held.push(HeldLock {
                        why: format!("it is stale but cannot be removed: {err}"),
                        path,
                    }),
                }
            }
            Owner::Alive(pid) => held.push(HeldLock {
                why: format!("process {pid}, which made it, is running"),
                path,
            }),
            Owner::Unknown(why) => held.push(HeldLock { why, path }),
        }
    }
    held.sort_by(|a, b| a.path.cmp(&b.path));
    held
}

/// A VMware lock folder: each member file (`M12345.lck`, `D…`, `E…`) reads `<machine id>
/// <execution id> <number> <X|S> …`, the execution id being `<pid>` or `<pid>-<start>`.
/// An empty folder is what a release cut short leaves.
fn lck_owner(dir: &Path) -> Owner {
    let Ok(members) = fs::read_dir(dir) else {
        return Owner::Unknown("its members cannot be read".into());
    };
    for member in members.flatten() {
        let path = member.path();
        let text = match fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Owner::Unknown(format!("{} cannot be read: {err}", path.display())),
        };
        let pid = text
            .split_whitespace()
            .nth(1)
            .and_then(|id| id.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        match pid {
            Some(pid) if process_exists(pid) => return Owner::Alive(pid),
            Some(_) => {}
            None => {
                return Owner::Unknown(format!(
                    "{} does not name the process that made it",
                    path.display()
                ))
            }
        }
    }
    Owner::Gone
}

fn sim_lock_owner(file: &Path) -> Owner {
    match fs::read_to_string(file) {
        Ok(text) => match text.trim().parse::<i32>() {
            Ok(pid) if process_exists(pid) => Owner::Alive(pid),
            Ok(_) => Owner::Gone,
            // Made this instant: its owner has not written its pid yet.
            Err(_) if text.is_empty() => Owner::Unknown("it is being made".into()),
            Err(_) => Owner::Unknown("it does not name the process that made it".into()),
        },
        Err(err) => Owner::Unknown(format!("it cannot be read: {err}")),
    }
}

/// Whether a process with this id runs on this host (one of another user's counts).
fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 sends nothing: it only checks that the process exists
    // and touches no memory of ours.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_locks_go_when_their_process_is_gone_and_stay_otherwise() {
        let root = crate::sys::scratch::dir("locks-gold");
        // A pid that existed and is gone: a child that ran and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let alive = std::process::id();
        let member = |dir: &str, text: String| {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::write(root.join(dir).join("M12345.lck"), text).unwrap();
        };
        member("dead.vmdk.lck", format!("5f2a-host {dead}-0 7 X [ lc=1"));
        member("old.vmx.lck", format!("5f2a-host {dead} 3 S"));
        member("live.vmx.lck", format!("5f2a-host {alive}-0 7 X"));
        member("blank.vmdk.lck", String::new());
        fs::create_dir_all(root.join("empty.vmx.lck")).unwrap();
        fs::write(
            root.join(format!("gold.vmx{SIM_CLONE_LOCK_SUFFIX}")),
            format!("{dead}\n"),
        )
        .unwrap();
        fs::write(
            root.join(format!("other.vmx{SIM_CLONE_LOCK_SUFFIX}")),
            format!("{alive}\n"),
        )
        .unwrap();
        fs::write(root.join("notes.lck"), "a file, not a lock folder").unwrap();

        let held = remove_dead_locks_in(&root);
        let names: Vec<String> = held
            .iter()
            .map(|h| h.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["blank.vmdk.lck", "live.vmx.lck", "other.vmx.sim-clone-lock"],
            "{held:?}"
        );
        assert!(held[1].why.contains(&alive.to_string()), "{held:?}");
        assert!(held[0].why.contains("does not name"), "{held:?}");
        for gone in [
            "dead.vmdk.lck",
            "old.vmx.lck",
            "empty.vmx.lck",
            "gold.vmx.sim-clone-lock",
        ] {
            assert!(!root.join(gone).exists(), "{gone} kept");
        }
        assert!(root.join("notes.lck").exists());
        fs::remove_dir_all(&root).unwrap();
    }

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
