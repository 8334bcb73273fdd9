//! Moving an entry's bytes into its file: big reads, positioned writes, holes for zeros, and
//! every byte counted against the unpack limit.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// One read/write buffer per unpack: large enough that syscalls and decompressor calls are
/// amortised, small next to the 64 MiB memory target.
pub(super) const COPY_BUF_LEN: usize = 1 << 20;

/// Zero runs at least this long (and aligned to it) become holes instead of writes. Disk images
/// are mostly zeros; skipping them saves the disk and the write bandwidth, and the file reads
/// back the same.
const HOLE_GRAIN: usize = 64 * 1024;

/// Unpacked bytes so far against the limit. Holes count as much as data: the limit is about what
/// the archive expands to, and a file's zeros are its size whether or not they take disk blocks.
#[derive(Debug)]
pub(super) struct Budget {
    pub(super) used: u64,
    pub(super) limit: u64,
}

impl Budget {
    /// Takes `n` bytes from the budget, or leaves it untouched and says no.
    pub(super) fn charge(&mut self, n: u64) -> bool {
        match self.used.checked_add(n) {
            Some(total) if total <= self.limit => {
                self.used = total;
                true
            }
            _ => false,
        }
    }

    pub(super) fn would_exceed(&self, n: u64) -> bool {
        self.used
            .checked_add(n)
            .is_none_or(|total| total > self.limit)
    }
}

#[derive(Debug)]
pub(super) enum CopyError {
    /// Reading the archive failed: corrupt, truncated or the source itself failed.
    Read(io::Error),
    Write(io::Error),
    Limit,
}

/// What one `copy_at` call did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Copied {
    /// Bytes taken from the source (data and zeros alike).
    pub(super) bytes: u64,
    /// The end of the last real write, if any: when it is short of the file's size the tail
    /// is a hole that only `set_len` can create.
    pub(super) data_end: Option<u64>,
}

/// Copies up to `len` bytes from `src` into `file` at `offset`, stopping early only at the
/// source's end (the caller decides whether a short copy is truncation).
pub(super) fn copy_at(
    src: &mut dyn Read,
    file: &File,
    offset: u64,
    len: u64,
    buf: &mut [u8],
    budget: &mut Budget,
) -> Result<Copied, CopyError> {
    let mut copied = Copied {
        bytes: 0,
        data_end: None,
    };
    while copied.bytes < len {
        let want =
            usize::try_from(len - copied.bytes).map_or(buf.len(), |left| left.min(buf.len()));
        let got = fill(src, &mut buf[..want]).map_err(CopyError::Read)?;
        if got == 0 {
            break;
        }
        if !budget.charge(got as u64) {
            return Err(CopyError::Limit);
        }
        let at = offset + copied.bytes;
        if let Some(end) = write_data_runs(file, &buf[..got], at).map_err(CopyError::Write)? {
            copied.data_end = Some(end);
        }
        copied.bytes += got as u64;
    }
    Ok(copied)
}

/// Reads until `buf` is full or the source ends, so that writes come in whole buffers.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes the non-zero grains of `data` (which belongs at `at`), merging neighbours into one
/// write. Returns the end offset of the last write, if any.
fn write_data_runs(file: &File, data: &[u8], at: u64) -> io::Result<Option<u64>> {
    let mut last_end = None;
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let grain_end = (pos + HOLE_GRAIN).min(data.len());
        let zero = is_zero(&data[pos..grain_end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(start)) => {
                file.write_all_at(&data[start..pos], at + start as u64)?;
                last_end = Some(at + pos as u64);
                run_start = None;
            }
            _ => {}
        }
        pos = grain_end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], at + start as u64)?;
        last_end = Some(at + data.len() as u64);
    }
    Ok(last_end)
}

/// OR-folds fixed-size blocks so the compiler can vectorise; exits at the first non-zero block,
/// which for real data is the first one.
fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(256)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::fs::MetadataExt;

    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir()
                .join(format!("osxb-copy-{tag}-{}-{nanos}", std::process::id()));
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn unlimited() -> Budget {
        Budget {
            used: 0,
            limit: u64::MAX,
        }
    }

    #[test]
    fn data_and_zeros_read_back_identically() {
        let scratch = Scratch::new("mixed");
        let mut data = vec![0u8; 5 * HOLE_GRAIN + 123];
        data[10] = 1;
        data[3 * HOLE_GRAIN + 7] = 2;
        data[5 * HOLE_GRAIN + 100] = 3;
        let file = File::create(&scratch.0).unwrap();
        let mut buf = vec![0u8; 2 * HOLE_GRAIN];
        let mut budget = unlimited();
        let copied = copy_at(
            &mut Cursor::new(&data),
            &file,
            0,
            data.len() as u64,
            &mut buf,
            &mut budget,
        )
        .unwrap();
        assert_eq!(copied.bytes, data.len() as u64);
        assert_eq!(copied.data_end, Some(data.len() as u64));
        assert_eq!(budget.used, data.len() as u64);
        assert_eq!(std::fs::read(&scratch.0).unwrap(), data);
    }

    #[test]
    fn trailing_zeros_are_left_to_set_len() {
        let scratch = Scratch::new("tail");
        let mut data = vec![0u8; 4 * HOLE_GRAIN];
        data[0] = 9;
        let file = File::create(&scratch.0).unwrap();
        let mut buf = vec![0u8; COPY_BUF_LEN];
        let copied = copy_at(
            &mut Cursor::new(&data),
            &file,
            0,
            u64::MAX,
            &mut buf,
            &mut unlimited(),
        )
        .unwrap();
        assert_eq!(copied.bytes, data.len() as u64, "stops at the source's end");
        assert_eq!(copied.data_end, Some(HOLE_GRAIN as u64));
        assert_eq!(file.metadata().unwrap().len(), HOLE_GRAIN as u64);
        file.set_len(copied.bytes).unwrap();
        assert_eq!(std::fs::read(&scratch.0).unwrap(), data);
        let blocks_bytes = file.metadata().unwrap().blocks() * 512;
        assert!(blocks_bytes <= 2 * HOLE_GRAIN as u64, "{blocks_bytes}");
    }

    #[test]
    fn the_limit_stops_the_copy_before_the_write() {
        let scratch = Scratch::new("limit");
        let data = vec![7u8; 3000];
        let file = File::create(&scratch.0).unwrap();
        let mut buf = vec![0u8; 1024];
        let mut budget = Budget {
            used: 0,
            limit: 2500,
        };
        let result = copy_at(
            &mut Cursor::new(&data),
            &file,
            0,
            3000,
            &mut buf,
            &mut budget,
        );
        assert!(matches!(result, Err(CopyError::Limit)), "{result:?}");
        assert_eq!(budget.used, 2048);
        assert_eq!(file.metadata().unwrap().len(), 2048);
    }

    #[test]
    fn budget_arithmetic_saturates() {
        let mut budget = Budget {
            used: u64::MAX - 1,
            limit: u64::MAX,
        };
        assert!(budget.would_exceed(2));
        assert!(!budget.charge(2));
        assert!(budget.charge(1));
    }
}
