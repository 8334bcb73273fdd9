//! tart's notion of "running": an fcntl write lock on the VM's `config.json`, held by the
//! `tart run` process for the VM's whole life and dropped by the kernel when it dies.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value that is filled in below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Takes the write lock without waiting; false when another process holds it.
pub fn try_lock(file: &File) -> bool {
    let lock = whole_file(libc::F_WRLCK as libc::c_short);
    // SAFETY: a valid descriptor and a pointer to a live flock.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) == 0 }
}

/// The pid of the process that runs the VM whose config is at `config`, if any.
pub fn holder(config: &Path) -> Option<i32> {
    let file = File::open(config).ok()?;
    let mut lock = whole_file(libc::F_WRLCK as libc::c_short);
    // SAFETY: a valid descriptor and a pointer to a live flock the kernel fills in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    (rc == 0 && lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid)
}
