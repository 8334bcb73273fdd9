//! zip archives, unpacked from a file on disk (a zip's index is at its end).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use zip::result::ZipError;
use zip::ZipArchive;

use super::copy::CopyError;
use super::tree::Tree;
use super::{ExtractError, Limits, Unpacked};
use crate::image::archive::ArchiveFormat;

/// Archive bytes read at a time; the zip crate seeks between entries, which drops the buffer.
const INPUT_BUF_LEN: usize = 256 * 1024;

/// Symlink targets are short paths; anything longer is not one.
const MAX_LINK_TARGET: u64 = 4096;

// File type bits of a Unix mode, identical on macOS and Linux.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;

const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

pub(super) fn unpack(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, ExtractError> {
    let mut tree = Tree::new(dest, limits)?;
    let file = File::open(archive).map_err(ExtractError::ReadFailed)?;
    let mut zip = ZipArchive::new(BufReader::with_capacity(INPUT_BUF_LEN, file))
        .map_err(|e| corrupt(None, &e))?;
    for index in 0..zip.len() {
        let listed_name = zip.name_for_index(index).map(str::to_owned);
        let mut member = zip
            .by_index(index)
            .map_err(|e| corrupt(listed_name.as_deref(), &e))?;
        let name = member.name().to_owned();
        tree.note_entry(&name);
        let rel = tree.path_for(name.as_bytes(), &name, true)?;
        // Belt and braces: the zip crate's own containment check must agree.
        if rel.is_some() && member.enclosed_name().is_none() {
            return Err(ExtractError::UnsafePath {
                entry: name,
                reason: "the zip library considers it outside the folder".to_owned(),
            });
        }
        let mode = member.unix_mode();
        match mode.map(|m| m & S_IFMT) {
            Some(S_IFLNK) => {
                let target = link_target(&mut member, &name)?;
                tree.symlink(rel, &name, &target)?;
            }
            Some(S_IFCHR) => return Err(special(name, "character device")),
            Some(S_IFBLK) => return Err(special(name, "block device")),
            Some(S_IFIFO) => return Err(special(name, "FIFO")),
            Some(S_IFSOCK) => return Err(special(name, "socket")),
            Some(S_IFDIR) => tree.dir(rel, &name, mode.unwrap_or(DEFAULT_DIR_MODE))?,
            _ if member.is_dir() => tree.dir(rel, &name, mode.unwrap_or(DEFAULT_DIR_MODE))?,
            _ => {
                let rel = rel.ok_or_else(|| ExtractError::UnsafePath {
                    entry: name.clone(),
                    reason: "it names the image folder itself".to_owned(),
                })?;
                let declared = member.size();
                tree.check_declared_size(declared, &name)?;
                let new = tree.create_file(&rel, &name, mode.unwrap_or(DEFAULT_FILE_MODE))?;
                // Read to the member's real end: a lying size must not get past the limit.
                let copied = tree
                    .copy_into(&mut member, &new.file, 0, u64::MAX)
                    .map_err(|e| match e {
                        CopyError::Read(e) => ExtractError::Corrupt {
                            format: ArchiveFormat::Zip,
                            entry: Some(name.clone()),
                            detail: e.to_string(),
                        },
                        CopyError::Write(e) => {
                            ExtractError::from_write(e, &new.path, tree.dest(), &name)
                        }
                        CopyError::Limit => tree.limit_error(&name),
                    })?;
                if copied.bytes != declared {
                    return Err(ExtractError::Corrupt {
                        format: ArchiveFormat::Zip,
                        entry: Some(name),
                        detail: format!(
                            "it unpacks to {} bytes but its header says {declared}",
                            copied.bytes
                        ),
                    });
                }
                if copied.data_end.unwrap_or(0) < copied.bytes {
                    new.file
                        .set_len(copied.bytes)
                        .map_err(|e| ExtractError::from_write(e, &new.path, tree.dest(), &name))?;
                }
            }
        }
    }
    tree.finish()
}

fn link_target(member: &mut impl Read, name: &str) -> Result<Vec<u8>, ExtractError> {
    let mut target = Vec::new();
    member
        .take(MAX_LINK_TARGET + 1)
        .read_to_end(&mut target)
        .map_err(|e| ExtractError::Corrupt {
            format: ArchiveFormat::Zip,
            entry: Some(name.to_owned()),
            detail: e.to_string(),
        })?;
    if target.len() as u64 > MAX_LINK_TARGET {
        return Err(ExtractError::UnsafeLink {
            entry: name.to_owned(),
            target: format!("{}...", String::from_utf8_lossy(&target[..64])),
            reason: format!("the target is longer than {MAX_LINK_TARGET} bytes"),
        });
    }
    Ok(target)
}

fn special(entry: String, kind: &'static str) -> ExtractError {
    ExtractError::SpecialFile { entry, kind }
}

fn corrupt(entry: Option<&str>, e: &ZipError) -> ExtractError {
    ExtractError::Corrupt {
        format: ArchiveFormat::Zip,
        entry: entry.map(str::to_owned),
        detail: e.to_string(),
    }
}
