//! The digest of an archive as it streams past, so that verifying costs no second pass.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::image::spec::ChecksumType;

#[derive(Clone)]
pub enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(kind: ChecksumType) -> Self {
        match kind {
            ChecksumType::Md5 => Self::Md5(Md5::new()),
            ChecksumType::Sha1 => Self::Sha1(Sha1::new()),
            ChecksumType::Sha256 => Self::Sha256(Sha256::new()),
            ChecksumType::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// The digest as lowercase hex, the form create requests use.
    pub fn finish_hex(self) -> String {
        match self {
            Self::Md5(h) => format!("{:x}", h.finalize()),
            Self::Sha1(h) => format!("{:x}", h.finalize()),
            Self::Sha256(h) => format!("{:x}", h.finalize()),
            Self::Sha512(h) => format!("{:x}", h.finalize()),
        }
    }
}

/// True when `checksum` is a digest of `kind` written as the cache names folders: lowercase
/// hex of the right length. Anything else must never become a path.
pub fn is_valid_digest(checksum: &str, kind: ChecksumType) -> bool {
    checksum.len() == kind.hex_len() && is_lower_hex(checksum)
}

/// True for a digest of any supported kind (the cache can be asked about a folder without
/// knowing the kind).
pub fn is_any_digest(checksum: &str) -> bool {
    [
        ChecksumType::Md5,
        ChecksumType::Sha1,
        ChecksumType::Sha256,
        ChecksumType::Sha512,
    ]
    .iter()
    .any(|&kind| is_valid_digest(checksum, kind))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Hashes every byte read through it and counts them into `progress`, which other threads
/// read to report how far the download is.
pub struct HashingReader<'p, R> {
    inner: R,
    hasher: Hasher,
    progress: &'p AtomicU64,
}

impl<'p, R: Read> HashingReader<'p, R> {
    pub fn new(inner: R, kind: ChecksumType, progress: &'p AtomicU64) -> Self {
        progress.store(0, Ordering::Relaxed);
        Self {
            inner,
            hasher: Hasher::new(kind),
            progress,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The digest of everything read so far (reading may go on).
    pub fn hex_digest(&self) -> String {
        self.hasher.clone().finish_hex()
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: &[u8] = b"The quick brown fox jumps over the lazy dog";

    fn digest(kind: ChecksumType, data: &[u8]) -> String {
        let mut h = Hasher::new(kind);
        // Fed in pieces, as a network read would.
        for chunk in data.chunks(7) {
            h.update(chunk);
        }
        h.finish_hex()
    }

    #[test]
    fn known_digests() {
        assert_eq!(
            digest(ChecksumType::Md5, QUICK),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
        assert_eq!(
            digest(ChecksumType::Sha1, QUICK),
            "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"
        );
        assert_eq!(
            digest(ChecksumType::Sha256, QUICK),
            "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
        );
        assert_eq!(
            digest(ChecksumType::Sha512, b""),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
    }

    #[test]
    fn reader_hashes_and_counts_what_passes() {
        let progress = AtomicU64::new(99);
        let mut r = HashingReader::new(QUICK, ChecksumType::Md5, &progress);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, QUICK);
        assert_eq!(progress.load(Ordering::Relaxed), QUICK.len() as u64);
        assert_eq!(r.hex_digest(), "9e107d9d372bb6826bd81d3542a419d6");
    }

    #[test]
    fn digest_shapes() {
        let md5 = "9e107d9d372bb6826bd81d3542a419d6";
        assert!(is_valid_digest(md5, ChecksumType::Md5));
        assert!(!is_valid_digest(md5, ChecksumType::Sha1));
        assert!(!is_valid_digest(&md5.to_uppercase(), ChecksumType::Md5));
        assert!(!is_valid_digest(
            "../../../../etc/passwd0000000000",
            ChecksumType::Md5
        ));
        assert!(is_any_digest(md5));
        assert!(!is_any_digest(""));
        assert!(!is_any_digest("9e107d9d"));
    }
}
