//! `--log-file`: the log appended to a file the server opens itself, reopened by path on
//! SIGHUP so that newsyslog can rename it and signal the server (its pid is in the data
//! folder's lock file). Without it the log goes to stderr, as launchd's StandardErrorPath
//! or journald capture it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The open log file and the path it is reopened by. One lock around each line's single
/// write and around the swap of the file: a line goes whole into the old file or the new
/// one, never split between them or interleaved with another thread's.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// What a reopen did, for the line the caller writes about it.
#[derive(Debug)]
pub enum Reopened {
    Yes,
    /// The old file is kept and written to; the message says what failed and what to do.
    Failed(String),
}

impl LogFile {
    /// Opens (creates 0644) `path` for appending; the error names the path.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = open_append(path).map_err(|e| {
            format!(
                "cannot open the log file {} (--log-file / OSX_BUILDER_LOG_FILE): {e}; give a path in a folder that exists and this user may write to",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one whole line (with its newline) in one write. A failed write (a full disk)
    /// is dropped: the log must not take the server down.
    pub fn write_line(&self, line: &[u8]) {
        let _ = self.lock().write_all(line);
    }

    /// Opens the path anew and writes from then on to what it names now. When that fails
    /// (its folder gone, no permission) the old file stays in use and `said` (a line in
    /// the log's format, made from the error's message) is written to it once, here, under
    /// the same lock, so no line comes between the failure and its report.
    pub fn reopen(&self, said: impl FnOnce(&str) -> String) -> Reopened {
        let mut file = self.lock();
        match open_append(&self.path) {
            Ok(new) => {
                *file = new;
                Reopened::Yes
            }
            Err(e) => {
                let message = format!(
                    "cannot reopen the log file {} on SIGHUP: {e}; still writing to the file it was before (renamed by the rotation, or deleted). Create its folder or let this user write there, then send SIGHUP again (kill -HUP <pid in the data folder's osx-builder.lock>), or restart the server",
                    self.path.display()
                );
                let _ = file.write_all(said(&message).as_bytes());
                Reopened::Failed(message)
            }
        }
    }

    /// A panic while writing a line leaves the file as usable as before.
    fn lock(&self) -> MutexGuard<'_, File> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // O_APPEND: each line lands at the end even if something else appends too (launchd's
    // own redirection, an operator's echo); O_CLOEXEC (Rust's default, made explicit) keeps
    // the descriptor out of vmrun, tart and the other children.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    #[test]
    fn lines_of_many_threads_land_whole_in_one_file_or_the_next_across_reopens() {
        let dir = crate::sys::scratch::dir("log-file-reopen");
        let path = dir.join("server.log");
        let log = Arc::new(LogFile::open(&path).unwrap());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        // Long enough that a torn write would show.
                        log.write_line(format!("t{t} line {i} {}\n", "x".repeat(200)).as_bytes());
                    }
                })
            })
            .collect();
        let rotated = 20;
        for n in 0..rotated {
            std::fs::rename(&path, dir.join(format!("server.log.{n}"))).unwrap();
            assert!(matches!(log.reopen(|m| m.to_string()), Reopened::Yes));
        }
        for writer in writers {
            writer.join().unwrap();
        }
        let mut seen = BTreeSet::new();
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            files += 1;
            for line in text.lines() {
                let (head, tail) = line.split_at(line.len() - 200);
                assert_eq!(tail, "x".repeat(200), "a torn line: {line:?}");
                assert!(seen.insert(head.to_string()), "a line twice: {line:?}");
            }
        }
        assert_eq!(seen.len(), 4 * 2000, "lines lost");
        assert_eq!(files, rotated + 1);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        // 0644 less the umask, which may only take bits away.
        assert_eq!(mode & 0o7022, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reopen_that_fails_keeps_the_old_file_and_says_so_on_it() {
        let dir = crate::sys::scratch::dir("log-file-gone");
        let folder = dir.join("logs");
        std::fs::create_dir_all(&folder).unwrap();
        let log = LogFile::open(&folder.join("server.log")).unwrap();
        log.write_line(b"before\n");
        let moved = dir.join("moved");
        std::fs::rename(&folder, &moved).unwrap();
        let Reopened::Failed(message) = log.reopen(|m| format!("WARN {m}\n")) else {
            panic!("a reopen into a missing folder succeeded");
        };
        assert!(message.contains("server.log") && message.contains("SIGHUP again"));
        log.write_line(b"after\n");
        let text = std::fs::read_to_string(moved.join("server.log")).unwrap();
        assert_eq!(text, format!("before\nWARN {message}\nafter\n"));
        let err = LogFile::open(&dir.join("none/server.log")).unwrap_err();
        assert!(
            err.contains("none/server.log") && err.contains("No such file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
