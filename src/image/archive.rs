//! Which kind of archive a gold image is, told from its first bytes.
//!
//! The URL's extension is not trusted: mirrors rename files, and the seed's own examples call
//! a `.tar.bz2` "tar.bzip2". Magic numbers are what the decompressors will actually see.

/// The archive formats a gold image may come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    TarBz2,
    Zip,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tar => "tar",
            Self::TarGz => "tar.gz",
            Self::TarBz2 => "tar.bz2",
            Self::Zip => "zip",
        }
    }
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes of the archive's start needed by `detect` (tar's "ustar" magic sits at offset 257).
pub const DETECT_LEN: usize = 512;

const TAR_BLOCK: usize = 512;
const TAR_MAGIC_OFFSET: usize = 257;
const TAR_CHECKSUM: std::ops::Range<usize> = 148..156;

/// The archive format, from magic numbers. `head` is the archive's first `DETECT_LEN` bytes,
/// or all of it when the archive is shorter.
pub fn detect(head: &[u8]) -> Option<ArchiveFormat> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(ArchiveFormat::TarGz);
    }
    if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        return Some(ArchiveFormat::TarBz2);
    }
    // A local file header, or the end-of-central-directory record of an empty zip.
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Some(ArchiveFormat::Zip);
    }
    if is_tar_header(head) {
        return Some(ArchiveFormat::Tar);
    }
    None
}

/// Names a known but unsupported format, so that the error can say "this is an xz file"
/// rather than only "not an archive".
pub fn unsupported_format_name(head: &[u8]) -> Option<&'static str> {
    const KNOWN: &[(&[u8], &str)] = &[
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"7z\xbc\xaf\x27\x1c", "7z"),
        (b"Rar!\x1a\x07", "rar"),
        (b"LZIP", "lzip"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"\x5d\x00\x00", "lzma"),
        (b"\x1f\x9d", "compress (.Z)"),
        (b"KDMV", "a bare VMware disk (.vmdk)"),
        (
            b"# Disk DescriptorFile",
            "a bare VMware disk descriptor (.vmdk)",
        ),
    ];
    KNOWN
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
}

fn is_tar_header(head: &[u8]) -> bool {
    if head.len() < TAR_BLOCK {
        return false;
    }
    let block = &head[..TAR_BLOCK];
    // POSIX "ustar\0" and GNU "ustar  \0" both start with these five bytes.
    if &block[TAR_MAGIC_OFFSET..TAR_MAGIC_OFFSET + 5] == b"ustar" {
        return true;
    }
    // Pre-POSIX (v7) archives carry no magic; a valid header checksum is the only sign.
    header_checksum_valid(block)
}

/// The stored checksum is the sum of the header's bytes with the checksum field itself read as
/// spaces. Some historic tars summed signed bytes, so either sum is accepted.
fn header_checksum_valid(block: &[u8]) -> bool {
    let Some(stored) = parse_octal(&block[TAR_CHECKSUM]) else {
        return false;
    };
    if block.iter().all(|&b| b == 0) {
        return false;
    }
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if TAR_CHECKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored) == Ok(signed)
}

/// Octal digits, optionally surrounded by spaces and terminated by NUL or space.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let start = field.iter().position(|&b| b != b' ')?;
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|&b| b == 0 || b == b' ')
            .unwrap_or(rest.len());
        &rest[..end]
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if (b'0'..=b'7').contains(&d) {
            acc.checked_mul(8)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v7_header(name: &str) -> Vec<u8> {
        let mut block = vec![0u8; TAR_BLOCK];
        block[..name.len()].copy_from_slice(name.as_bytes());
        block[100..107].copy_from_slice(b"0000644");
        block[124..135].copy_from_slice(b"00000000005");
        block[156] = b'0';
        block[TAR_CHECKSUM].copy_from_slice(b"        ");
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        block[TAR_CHECKSUM].copy_from_slice(field.as_bytes());
        block
    }

    fn ustar_header(magic: &[u8]) -> Vec<u8> {
        let mut block = v7_header("a.vmx");
        block[TAR_MAGIC_OFFSET..TAR_MAGIC_OFFSET + magic.len()].copy_from_slice(magic);
        block
    }

    #[test]
    fn compressed_formats_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 0x08, 0]), Some(ArchiveFormat::TarGz));
        assert_eq!(detect(b"BZh91AY&SY"), Some(ArchiveFormat::TarBz2));
        assert_eq!(detect(b"PK\x03\x04\x14\x00"), Some(ArchiveFormat::Zip));
        assert_eq!(detect(b"PK\x05\x06\0\0\0\0"), Some(ArchiveFormat::Zip));
    }

    #[test]
    fn near_misses_are_not_archives() {
        assert_eq!(detect(b""), None);
        assert_eq!(detect(&[0x1f]), None);
        assert_eq!(detect(b"BZh"), None, "no block size digit");
        assert_eq!(detect(b"BZh0"), None, "block size digit out of range");
        assert_eq!(
            detect(b"PK\x01\x02"),
            None,
            "a central directory is not a zip's start"
        );
        assert_eq!(detect(b"<html><body>404 Not Found</body></html>"), None);
        assert_eq!(detect(&[0u8; 1024]), None, "all zeros is no header");
    }

    #[test]
    fn posix_and_gnu_tar_magic() {
        assert_eq!(
            detect(&ustar_header(b"ustar\x0000")),
            Some(ArchiveFormat::Tar)
        );
        assert_eq!(
            detect(&ustar_header(b"ustar  \x00")),
            Some(ArchiveFormat::Tar)
        );
    }

    #[test]
    fn magic_alone_is_enough_even_with_a_bad_checksum() {
        let mut block = ustar_header(b"ustar\x0000");
        block[TAR_CHECKSUM].copy_from_slice(b"0000000\0");
        assert_eq!(detect(&block), Some(ArchiveFormat::Tar));
    }

    #[test]
    fn v7_tar_needs_a_valid_checksum() {
        let good = v7_header("disk.vmdk");
        assert_eq!(detect(&good), Some(ArchiveFormat::Tar));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(detect(&bad), None);
        assert_eq!(
            detect(&good[..TAR_BLOCK - 1]),
            None,
            "shorter than a header"
        );
    }

    #[test]
    fn v7_tar_with_signed_checksum() {
        let mut block = v7_header("caf\u{e9}.vmx");
        block[TAR_CHECKSUM].copy_from_slice(b"        ");
        let signed: i64 = block.iter().map(|&b| i64::from(b as i8)).sum();
        let field = format!("{signed:06o}\0 ");
        block[TAR_CHECKSUM].copy_from_slice(field.as_bytes());
        assert_eq!(detect(&block), Some(ArchiveFormat::Tar));
    }

    #[test]
    fn text_is_not_a_v7_tar() {
        let text = "x".repeat(TAR_BLOCK);
        assert_eq!(detect(text.as_bytes()), None);
    }

    #[test]
    fn format_names() {
        let names: Vec<_> = [
            ArchiveFormat::Tar,
            ArchiveFormat::TarGz,
            ArchiveFormat::TarBz2,
            ArchiveFormat::Zip,
        ]
        .iter()
        .map(|f| f.as_str())
        .collect();
        assert_eq!(names, ["tar", "tar.gz", "tar.bz2", "zip"]);
    }

    #[test]
    fn unsupported_formats_are_named() {
        assert_eq!(unsupported_format_name(b"\xfd7zXZ\x00\x00"), Some("xz"));
        assert_eq!(
            unsupported_format_name(b"\x28\xb5\x2f\xfd\x00"),
            Some("zstd")
        );
        assert_eq!(unsupported_format_name(b"hello"), None);
    }
}
