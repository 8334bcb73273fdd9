//! Unpacking a gold image archive into a staging folder, refusing anything that could write
//! outside it, and finding the one .vmx it must hold.
//!
//! The tar family is unpacked from the download stream itself (one pass over the bytes); zip
//! needs its central directory, so it is unpacked from a file. Both feed the same `Tree`,
//! which owns every rule about what may be created where.

mod copy;
mod names;
mod pax_sparse;
mod tar_stream;
mod tree;
mod zip_file;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::image::archive::ArchiveFormat;
use crate::image::vm_format::{tart_file_names, VmFormat, TART_COMPLETE, TART_FILES};

/// Bounds on what an archive may expand to.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Sum of the sizes of everything unpacked, counted as it is written (holes in sparse files
    /// included), so a small archive cannot fill the disk.
    pub max_unpacked_bytes: u64,
    /// Stops decompression and unpacking when set: a bomb whose VMs are gone must not burn
    /// a core for half an hour (its few compressed bytes are read too rarely to notice).
    pub cancel: Option<crate::sys::cancel::Cancel>,
    /// What the archive must hold: one VMware VM or one tart VM folder.
    pub vm: VmFormat,
}

/// What an archive unpacked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// The gold VM's configuration, relative to the staging folder: its .vmx (VMware) or
    /// its folder's `config.json` (tart).
    pub vmx: PathBuf,
    /// Regular files created (hard links included).
    pub files: u64,
    /// Bytes unpacked, as counted against `Limits::max_unpacked_bytes`.
    pub bytes: u64,
}

/// Unpacks a tar, tar.gz or tar.bz2 stream into `dest` (an existing, empty staging folder).
///
/// Reads from `reader` only as far as the archive needs (plus what one read-ahead buffer
/// holds); the caller drains the rest for the checksum. On error, `dest` may hold a partial
/// tree but nothing outside it has been touched: the caller removes it.
pub fn unpack_tar<R: Read>(
    format: ArchiveFormat,
    reader: R,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, ExtractError> {
    tar_stream::unpack(format, reader, dest, limits)
}

/// Unpacks a zip file on disk into `dest` (an existing, empty staging folder) without
/// buffering the archive in memory.
pub fn unpack_zip(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, ExtractError> {
    zip_file::unpack(archive, dest, limits)
}

/// How many entry names a `no-vmx` error lists.
pub const LISTED_ENTRIES: usize = 20;

/// Why an archive could not be unpacked. Each names the entry at fault where there is one.
#[derive(Debug)]
pub enum ExtractError {
    /// Not a valid archive of its format, or cut short.
    Corrupt {
        format: ArchiveFormat,
        entry: Option<String>,
        detail: String,
    },
    /// The caller's reader (or the archive file) failed; the original error is kept so that
    /// the caller can recognise its own errors (e.g. a timed-out download) in `get_ref()`.
    ReadFailed(io::Error),
    /// A name that is absolute, climbs out with `..`, or passes through a symlink.
    UnsafePath { entry: String, reason: String },
    /// A symlink or hard link whose target is outside the folder or cannot be trusted.
    UnsafeLink {
        entry: String,
        target: String,
        reason: String,
    },
    /// A device node, FIFO or socket.
    SpecialFile { entry: String, kind: &'static str },
    /// An entry type this extractor does not know how to unpack faithfully.
    UnsupportedEntry { entry: String, kind: String },
    /// An entry whose path another entry already took.
    DuplicateEntry { entry: String, reason: String },
    /// The archive expands to more than `Limits::max_unpacked_bytes`.
    UnpackLimit { limit: u64, entry: String },
    /// No .vmx anywhere: the first `LISTED_ENTRIES` entry names and the total count.
    NoVmx {
        listed: Vec<String>,
        entries: u64,
        /// A whole tart VM folder was seen: the archive is a tart VM.
        tart_vm_seen: bool,
    },
    /// More than one .vmx: the archive holds several VMs, or stray copies.
    ManyVmx { vmx: Vec<String> },
    /// No folder holds all of tart's `config.json`, `disk.img` and `nvram.bin`: `found`
    /// has a bit per file (`vm_format::tart_file_bit`) for the folder that holds most.
    TartVmIncomplete {
        found: u8,
        entries: u64,
        /// A .vmx was seen: the archive is a VMware VM.
        vmx_seen: bool,
    },
    /// Two folders (or more) hold a whole tart VM: which to clone is ambiguous.
    ManyTartVms { folders: Vec<String> },
    /// The staging folder's file system is full.
    DiskFull { dir: PathBuf, entry: String },
    /// Any other failure to create or write something in the staging folder.
    WriteFailed { path: PathBuf, source: io::Error },
    /// The staging folder was not empty, so the safety rules (which track everything created
    /// in it) would not hold.
    StagingNotEmpty { dir: PathBuf },
}

impl ExtractError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Corrupt { .. } => "archive-corrupt",
            Self::ReadFailed(_) => "archive-read-failed",
            Self::UnsafePath { .. } => "unsafe-path",
            Self::UnsafeLink { .. } => "unsafe-link",
            Self::SpecialFile { .. } => "special-file",
            Self::UnsupportedEntry { .. } => "unsupported-entry",
            Self::DuplicateEntry { .. } => "duplicate-entry",
            Self::UnpackLimit { .. } => "unpack-limit",
            Self::NoVmx { .. } => "no-vmx",
            Self::ManyVmx { .. } => "many-vmx",
            Self::TartVmIncomplete { .. } => "image-tart-vm-incomplete",
            Self::ManyTartVms { .. } => "image-many-tart-vms",
            Self::DiskFull { .. } => "disk-full",
            Self::WriteFailed { .. } => "write-failed",
            Self::StagingNotEmpty { .. } => "staging-not-empty",
        }
    }

    /// The archive entry the error is about, if any.
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::Corrupt { entry, .. } => entry.as_deref(),
            Self::UnsafePath { entry, .. }
            | Self::UnsafeLink { entry, .. }
            | Self::SpecialFile { entry, .. }
            | Self::UnsupportedEntry { entry, .. }
            | Self::DuplicateEntry { entry, .. }
            | Self::UnpackLimit { entry, .. }
            | Self::DiskFull { entry, .. } => Some(entry),
            _ => None,
        }
    }

    /// A write error, with a full disk told apart so the operator knows to free space.
    pub(crate) fn from_write(source: io::Error, path: &Path, dest: &Path, entry: &str) -> Self {
        if is_disk_full(&source) {
            Self::DiskFull {
                dir: dest.to_path_buf(),
                entry: entry.to_owned(),
            }
        } else {
            Self::WriteFailed {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt {
                format,
                entry,
                detail,
            } => {
                write!(f, "the {format} archive is corrupt or truncated")?;
                if let Some(entry) = entry {
                    write!(f, " (at entry `{}`)", shown_entry(entry))?;
                }
                write!(
                    f,
                    ": {detail}; check that the image URL serves the complete archive, or \
                     rebuild it"
                )
            }
            Self::ReadFailed(e) => write!(f, "reading the archive failed: {e}"),
            Self::UnsafePath { entry, reason } => write!(
                f,
                "archive entry `{entry}` refused: {reason}; an image archive may only hold \
                 relative paths that stay inside its folder, so rebuild the archive"
            ),
            Self::UnsafeLink {
                entry,
                target,
                reason,
            } => write!(
                f,
                "archive entry `{entry}` is a link to `{target}` and was refused: {reason}; \
                 rebuild the archive without links that point outside the VM folder"
            ),
            Self::SpecialFile { entry, kind } => write!(
                f,
                "archive entry `{entry}` is a {kind}, which a VM image never needs and which \
                 is not created; rebuild the archive without it"
            ),
            Self::UnsupportedEntry { entry, kind } => write!(
                f,
                "archive entry `{entry}` has an unsupported type ({kind}); rebuild the archive \
                 with plain files, folders and links"
            ),
            Self::DuplicateEntry { entry, reason } => write!(
                f,
                "archive entry `{entry}` conflicts with an earlier entry: {reason}; rebuild the \
                 archive so that each path appears once"
            ),
            Self::UnpackLimit { limit, entry } => write!(
                f,
                "the archive unpacks to more than the limit of {limit} bytes ({}) (reached at \
                 entry `{entry}`); if the image really is that large, raise \
                 --max-unpacked-bytes (OSX_BUILDER_MAX_UNPACKED_BYTES)",
                human_bytes(*limit)
            ),
            Self::NoVmx {
                listed,
                entries,
                tart_vm_seen,
            } => {
                write!(
                    f,
                    "the archive holds no .vmx file, so it is not a VMware VM; it has {entries} \
                     entries"
                )?;
                if *tart_vm_seen {
                    f.write_str(
                        " (it holds a tart VM folder: config.json, disk.img and nvram.bin, and \
                         this server runs VMware)",
                    )?;
                }
                // The names are not listed: the archive may be any local file, and what
                // it holds is not the client's to read.
                let _ = listed;
                f.write_str("; point the image URL at an archive of one VM folder")
            }
            Self::ManyVmx { vmx } => write!(
                f,
                "the archive holds more than one .vmx file ({}), so which VM to clone is \
                 ambiguous; rebuild the archive with exactly one VM",
                vmx.join(", ")
            ),
            Self::TartVmIncomplete {
                found,
                entries,
                vmx_seen,
            } => {
                let missing = tart_file_names(!found & TART_COMPLETE);
                if *found == 0 {
                    write!(
                        f,
                        "the archive holds none of {}, so it is not a tart VM; it has \
                         {entries} entries",
                        tart_file_names(TART_COMPLETE)
                    )?;
                } else {
                    let beside = if found.count_ones() > 1 { "them" } else { "it" };
                    write!(
                        f,
                        "the archive holds {} but no {missing} beside {beside}",
                        tart_file_names(*found)
                    )?;
                }
                if *vmx_seen {
                    f.write_str(
                        " (it holds a .vmx: it is a VMware VM, and this server runs tart)",
                    )?;
                }
                write!(
                    f,
                    ": a tart VM folder needs all three of {}, in one folder at any depth; \
                     archive the VM's whole folder (~/.tart/vms/NAME) and point the image URL \
                     at it",
                    TART_FILES.join(", ")
                )
            }
            Self::ManyTartVms { folders } => write!(
                f,
                "the archive holds more than one tart VM folder ({}), so which VM to clone \
                 is ambiguous; rebuild the archive with exactly one VM folder",
                folders.join(", ")
            ),
            Self::DiskFull { dir, entry } => write!(
                f,
                "no space left on the device while writing `{entry}` into {}; free disk space \
                 or move --data-dir to a larger volume",
                dir.display()
            ),
            Self::WriteFailed { path, source } => {
                write!(f, "could not write {}: {source}", path.display())
            }
            Self::StagingNotEmpty { dir } => write!(
                f,
                "the staging folder {} is not empty; it must be a fresh folder (this is a bug)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ExtractError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::ReadFailed(e) | Self::WriteFailed { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// An entry's name as shown in an error: the one entry at fault, cut to a sane length.
fn shown_entry(name: &str) -> String {
    match name.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_write_errors() {
        let dest = Path::new("/data/images/staging-1");
        let full = ExtractError::from_write(
            io::Error::from_raw_os_error(libc::ENOSPC),
            &dest.join("vm/disk.vmdk"),
            dest,
            "vm/disk.vmdk",
        );
        assert_eq!(full.code(), "disk-full");
        let text = full.to_string();
        assert!(text.contains("/data/images/staging-1"), "{text}");
        assert!(text.contains("vm/disk.vmdk"), "{text}");

        let quota =
            ExtractError::from_write(io::Error::from_raw_os_error(libc::EDQUOT), dest, dest, "x");
        assert_eq!(quota.code(), "disk-full");

        let denied = ExtractError::from_write(
            io::Error::from_raw_os_error(libc::EACCES),
            &dest.join("x"),
            dest,
            "x",
        );
        assert_eq!(denied.code(), "write-failed");
    }

    #[test]
    fn limit_message_names_the_setting() {
        let e = ExtractError::UnpackLimit {
            limit: 10 << 20,
            entry: "vm/disk.vmdk".into(),
        };
        let text = e.to_string();
        assert!(text.contains("--max-unpacked-bytes"), "{text}");
        assert!(text.contains("10485760 bytes (10.0 MiB)"), "{text}");
        assert!(text.contains("vm/disk.vmdk"), "{text}");
    }

    #[test]
    fn each_hypervisor_says_when_an_archive_is_the_others_vm() {
        let tart = ExtractError::TartVmIncomplete {
            found: 0b010,
            entries: 4,
            vmx_seen: false,
        };
        let text = tart.to_string();
        assert!(
            text.starts_with(
                "the archive holds disk.img but no config.json and nvram.bin beside it"
            ),
            "{text}"
        );
        let vmware = ExtractError::NoVmx {
            listed: vec![],
            entries: 3,
            tart_vm_seen: true,
        };
        assert!(
            vmware.to_string().contains("it holds a tart VM folder"),
            "{vmware}"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(60 << 30), "60.0 GiB");
    }
}
