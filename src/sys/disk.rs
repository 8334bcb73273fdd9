//! Free space on a file system and the size of a folder: the free-disk floor (capacity,
//! health) and the image cache budget are decided from these two numbers.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes an unprivileged process may still write on the file system holding `path`.
///
/// `f_bavail` rather than `f_bfree`: blocks reserved for root do not help us, since the
/// server should not run as root and VMware would not get them either.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: path contains a NUL byte", path.display()),
        )
    })?;
    // SAFETY: statvfs is plain old data, so all-zero is a valid value for the kernel to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid, writable struct;
    // both outlive the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("cannot read free space of {}: {err}", path.display()),
        ));
    }
    // The field types differ by platform (u32 block counts on macOS, u64 on Linux), so the
    // casts are needed on one and redundant on the other.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(block_size))
}

/// Sum of the lengths of the regular files under `path` (or of `path` itself if it is a file).
///
/// Symbolic links are neither followed nor counted: a gold image must not be charged for
/// whatever a link inside it points at, and a link cycle must not hang the walk. Entries that
/// vanish during the walk are skipped, because the cache may be evicting or a VM being
/// deleted next to the folder being measured.
pub fn dir_size(path: &Path) -> io::Result<u64> {
    dir_usage(path).map(|(bytes, _)| bytes)
}

/// `dir_size`, and how many regular files make it up.
pub fn dir_usage(path: &Path) -> io::Result<(u64, u64)> {
    let root = std::fs::symlink_metadata(path).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot measure {}: {err}", path.display()),
        )
    })?;
    if !root.is_dir() {
        return Ok(if root.is_file() {
            (root.len(), 1)
        } else {
            (0, 0)
        });
    }
    let mut total = 0u64;
    let mut files = 0u64;
    // An explicit stack instead of recursion: image archives can nest deeply and a stack
    // overflow would take the whole server down.
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound && dir != path => continue,
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot list {}: {err}", dir.display()),
                ))
            }
        };
        for entry in entries {
            let entry = entry?;
            // DirEntry::metadata does not follow symlinks, which is what we want here.
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!("cannot measure {}: {err}", entry.path().display()),
                    ))
                }
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() {
                total = total.saturating_add(metadata.len());
                files += 1;
            }
        }
    }
    Ok((total, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            TempDir(crate::sys::scratch::dir(&format!("disk-{tag}")))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, len: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![b'x'; len]).unwrap();
    }

    #[test]
    fn free_bytes_is_positive_and_no_more_than_the_disk() {
        let dir = TempDir::new("free");
        let free = free_bytes(&dir.0).unwrap();
        assert!(free > 0, "a writable temp dir should have free space");
        // Cross-check against the total size reported by the same call's fields.
        let c_path = CString::new(dir.0.as_os_str().as_bytes()).unwrap();
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
        #[allow(clippy::unnecessary_cast)]
        let total = stat.f_blocks as u64 * stat.f_frsize as u64;
        assert!(free <= total, "free {free} > total {total}");
    }

    #[test]
    fn free_bytes_agrees_with_df() {
        // `df -P -k` (POSIX, so the same on macOS and Linux) reports the space available to
        // unprivileged users in KiB: a wrong field (f_bfree counts root's reserve, f_bsize
        // can differ from f_frsize) would be off by far more than the tolerance below on
        // most disks. Other processes write meanwhile, so allow a margin and a few tries.
        let dir = TempDir::new("df");
        let Ok(out) = std::process::Command::new("df")
            .args(["-P", "-k"])
            .arg(&dir.0)
            .output()
        else {
            eprintln!("note: df not found, skipped the cross-check");
            return;
        };
        assert!(out.status.success(), "df failed: {out:?}");
        let tolerance = 64u64 << 20;
        let mut last = String::new();
        for _ in 0..5 {
            let ours = free_bytes(&dir.0).unwrap();
            let out = std::process::Command::new("df")
                .args(["-P", "-k"])
                .arg(&dir.0)
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let available_kib: u64 = text
                .lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .nth(3)
                .unwrap()
                .parse()
                .unwrap();
            let theirs = available_kib * 1024;
            if ours.abs_diff(theirs) <= tolerance {
                return;
            }
            last = format!("ours {ours}, df {theirs}");
        }
        panic!("free_bytes disagrees with df: {last}");
    }

    #[test]
    fn free_bytes_of_a_missing_path_names_it() {
        let dir = TempDir::new("free-missing");
        let missing = dir.0.join("nope");
        let err = free_bytes(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn dir_size_sums_nested_files() {
        let dir = TempDir::new("sum");
        write(&dir.0.join("a"), 10);
        write(&dir.0.join("sub/b"), 200);
        write(&dir.0.join("sub/deeper/c"), 3000);
        write(&dir.0.join("sub/deeper/empty"), 0);
        std::fs::create_dir_all(dir.0.join("empty-dir")).unwrap();
        assert_eq!(dir_size(&dir.0).unwrap(), 3210);
        assert_eq!(dir_size(&dir.0.join("sub")).unwrap(), 3200);
    }

    #[test]
    fn dir_size_of_an_empty_folder_is_zero() {
        let dir = TempDir::new("empty");
        assert_eq!(dir_size(&dir.0).unwrap(), 0);
    }

    #[test]
    fn dir_size_of_a_file_is_its_length() {
        let dir = TempDir::new("file");
        write(&dir.0.join("f"), 1234);
        assert_eq!(dir_size(&dir.0.join("f")).unwrap(), 1234);
    }

    #[test]
    fn dir_size_does_not_follow_symlinks() {
        let dir = TempDir::new("links");
        let outside = TempDir::new("links-outside");
        write(&outside.0.join("big"), 100_000);
        write(&dir.0.join("own"), 5);
        std::os::unix::fs::symlink(outside.0.join("big"), dir.0.join("to-file")).unwrap();
        std::os::unix::fs::symlink(&outside.0, dir.0.join("to-dir")).unwrap();
        // A cycle would hang a walk that followed links.
        std::os::unix::fs::symlink(&dir.0, dir.0.join("to-self")).unwrap();
        assert_eq!(dir_size(&dir.0).unwrap(), 5);
    }

    #[test]
    fn dir_size_of_a_missing_path_is_an_error_naming_it() {
        let dir = TempDir::new("missing");
        let err = dir_size(&dir.0.join("gone")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
