//! One server per data folder. Two servers on one folder each take the other's staging
//! folders for leftovers and its provisioning VMs for interrupted ones; an exclusive
//! `flock` on a file in the folder, held for the life of the process, makes the second
//! refuse to start. The kernel drops the lock when the process dies, however it dies, so
//! a crash never leaves a lock behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in the data folder. It holds the pid of the server that holds it and
/// a newline, nothing else: the message of the next server reads it, and so does newsyslog,
/// as the pid_file it signals (SIGHUP) after it rotates the `--log-file`.
pub const LOCK_FILE: &str = "osx-builder.lock";

/// Held for as long as the server runs: dropping it releases the lock.
#[derive(Debug)]
pub struct DataLock {
    file: File,
    pub path: PathBuf,
    /// False when the folder is read-only: the lock holds, but the pid could not be written.
    pub pid_written: bool,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; its pid, when the file names one.
    Held {
        path: PathBuf,
        pid: Option<u32>,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Held { path, pid } => {
                let holder = pid.map_or_else(
                    || "another process".to_string(),
                    |pid| format!("another osx-builder (pid {pid})"),
                );
                write!(
                    f,
                    "{holder} already serves this data folder (it holds the lock {}); stop it first, or give this server another --data-dir / OSX_BUILDER_DATA_DIR",
                    path.display()
                )
            }
            Self::Io { path, source } => write!(
                f,
                "cannot lock {}: {source}; the data folder must allow creating or opening that file",
                path.display()
            ),
        }
    }
}

/// Takes the data folder's lock or says who has it. Works on a read-only folder as long as
/// the lock file exists: a read-only descriptor can be locked.
pub fn acquire(data_dir: &Path) -> Result<DataLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let io_err = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let (mut file, writable) = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(file) => (file, true),
        Err(err) if is_read_only(&err) => (File::open(&path).map_err(|_| io_err(err))?, false),
        Err(err) => return Err(io_err(err)),
    };
    // SAFETY: flock(2) on a descriptor this function owns; it reads no memory of ours.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LockError::Held {
                pid: read_pid(&mut file),
                path,
            });
        }
        return Err(io_err(err));
    }
    let pid_written = writable && write_pid(&mut file).is_ok();
    Ok(DataLock {
        file,
        path,
        pid_written,
    })
}

/// A graceful stop empties the file: newsyslog (run as root) would otherwise signal the pid
/// of a stopped server, which the system may since have given to another process. After a
/// crash the pid stays until launchd's restart writes the new one.
impl Drop for DataLock {
    fn drop(&mut self) {
        if self.pid_written {
            let _ = self.file.set_len(0);
        }
    }
}

fn is_read_only(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == libc::EROFS || code == libc::EACCES || code == libc::EPERM
    )
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_folder_is_refused_with_the_holders_pid() {
        let dir = std::env::temp_dir().join(format!("osxb-datalock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = acquire(&dir).unwrap();
        assert!(first.pid_written);
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process's would.
        match acquire(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        assert_eq!(std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), "");
        let again = acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
