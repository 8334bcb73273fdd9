//! A VM's own log in its folder (VMware's `vmware.log`, tart's runner log): what an
//! operator reads first when a VM fails. Only a driver's constant name in the VM's own
//! folder is ever opened (no part of it comes from a request), never through a symbolic
//! link.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Lines of the log a failed VM carries in `error.log_tail`.
pub const TAIL_LINES: usize = 40;
/// The tail is read from at most this many bytes at the file's end, and each line is cut
/// to [`MAX_LINE_CHARS`]: a record stays small whatever VMware wrote.
const TAIL_MAX_BYTES: u64 = 64 * 1024;
const MAX_LINE_CHARS: usize = 1000;

/// The log `name` (a constant of a driver's, never a request's) of the VM's folder, opened
/// for reading with its length, or `None` when there is none (never started, deleted, or
/// not a plain file).
pub fn open_file(vm_dir: &Path, name: &str) -> io::Result<Option<(File, u64)>> {
    let path = vm_dir.join(name);
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path);
    let file = match opened {
        Ok(file) => file,
        // ELOOP: a symbolic link, which is not the hypervisor's log.
        Err(err)
            if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Ok(None)
        }
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta.len())))
}

/// The last `lines` lines of the log `name` of the VM's folder (invalid UTF-8 replaced), or
/// `None` when there is no log or it cannot be read.
pub fn tail_file(vm_dir: &Path, name: &str, lines: usize) -> Option<Vec<String>> {
    let (mut file, len) = open_file(vm_dir, name).ok()??;
    let start = len.saturating_sub(TAIL_MAX_BYTES);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.take(TAIL_MAX_BYTES).read_to_end(&mut bytes).ok()?;
    Some(last_lines(&bytes, lines, start > 0))
}

/// `cut`: the bytes begin mid-file, so their first line is likely partial and is dropped
/// when there are enough whole ones.
fn last_lines(bytes: &[u8], lines: usize, cut: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if cut && all.len() > lines {
        all.remove(0);
    }
    let from = all.len().saturating_sub(lines);
    all[from..]
        .iter()
        .map(|line| {
            let line = line.trim_end_matches('\r');
            match line.char_indices().nth(MAX_LINE_CHARS) {
                Some((at, _)) => format!("{}…", &line[..at]),
                None => line.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_the_last_lines() {
        let dir = crate::sys::scratch::dir("vmware-log-tail");
        let text: String = (1..=100).map(|n| format!("line {n}\n")).collect();
        std::fs::write(dir.join("vmware.log"), text).unwrap();
        let tail = tail_file(&dir, "vmware.log", 40).unwrap();
        assert_eq!(tail.len(), 40);
        assert_eq!(tail[0], "line 61");
        assert_eq!(tail[39], "line 100");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn short_logs_long_lines_and_bad_bytes() {
        assert_eq!(last_lines(b"a\r\nb", 40, false), vec!["a", "b"]);
        assert_eq!(last_lines(b"", 40, false), Vec::<String>::new());
        assert_eq!(last_lines(b"\xffx\n", 40, false), vec!["\u{fffd}x"]);
        let long = "x".repeat(5000);
        let cut = &last_lines(long.as_bytes(), 40, false)[0];
        assert_eq!(cut.chars().count(), MAX_LINE_CHARS + 1);
        // Read from mid-file: the partial first line goes when whole ones fill the tail.
        assert_eq!(last_lines(b"tial\nb\nc\n", 2, true), vec!["b", "c"]);
        assert_eq!(last_lines(b"tial\nb\n", 2, true), vec!["tial", "b"]);
    }

    #[test]
    fn a_large_log_is_read_from_its_end_only() {
        let dir = crate::sys::scratch::dir("vmware-log-large");
        let mut text = "y".repeat(3 * TAIL_MAX_BYTES as usize);
        text.push('\n');
        for n in 1..=50 {
            text.push_str(&format!("end {n}\n"));
        }
        std::fs::write(dir.join("vmware.log"), text).unwrap();
        let tail = tail_file(&dir, "vmware.log", 40).unwrap();
        assert_eq!(tail.first().map(String::as_str), Some("end 11"));
        assert_eq!(tail.last().map(String::as_str), Some("end 50"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_log_and_links_are_none() {
        let dir = crate::sys::scratch::dir("vmware-log-none");
        assert!(tail_file(&dir, "vmware.log", 40).is_none());
        std::fs::write(dir.join("elsewhere"), "secret\n").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("vmware.log")).unwrap();
        assert!(open_file(&dir, "vmware.log").unwrap().is_none());
        assert!(tail_file(&dir, "vmware.log", 40).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
