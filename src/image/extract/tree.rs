//! The staging folder as it fills: every rule about what may be created where.
//!
//! The folder starts empty and only this type writes into it. Symlinks are created last, after
//! every file and hard link: while entries are written no symlink exists below the folder, so
//! no write can be redirected through one, whatever order the archive lists things in, and
//! whatever names the file system (case-insensitive on most Macs) considers equal.
//!
//! Folders and symlinks are remembered in memory; regular files are not: an image of a
//! million files would hold a million paths (86.7 MB peak RSS once). With no symlink on the
//! disk until the end, the folder itself says truthfully which files exist, so an
//! exclusive create and a `lstat` answer what the set did.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::copy::{self, Budget, Copied, CopyError, COPY_BUF_LEN};
use super::names::{self, BadTarget};
use super::{ExtractError, Limits, Unpacked, LISTED_ENTRIES};
use crate::image::vm_format::{tart_file_bit, VmFormat, TART_COMPLETE};

/// Folders whose tart files are remembered: an archive of a million `config.json` must not
/// hold a million paths. Past this many the archive is refused as ambiguous.
const MAX_TART_FOLDERS: usize = 256;

/// Permission bits kept from the archive: setuid, setgid and sticky never survive.
const PERMISSION_BITS: u32 = 0o777;

/// Folders stay writable and searchable by their owner so that the image can be
/// cleaned up or replaced later without a chmod pass.
const DIR_OWNER_BITS: u32 = 0o700;

pub(super) struct Tree {
    dest: PathBuf,
    dirs: HashSet<PathBuf>,
    symlinks: HashSet<PathBuf>,
    pending_symlinks: Vec<PendingSymlink>,
    dir_modes: Vec<(PathBuf, u32)>,
    /// What the archive must hold.
    vm: VmFormat,
    /// The .vmx found so far, as a path and as the entry name the archive gave it.
    vmx: Option<(PathBuf, String)>,
    /// Folders holding tart's files, with a bit per file found there.
    tart_folders: BTreeMap<PathBuf, u8>,
    listed: Vec<String>,
    entries: u64,
    files_created: u64,
    budget: Budget,
    buf: Vec<u8>,
    /// Checked before every read of entry data: a zip is unpacked from its file after the
    /// download, so no download read notices that its VMs are gone.
    cancel: Option<crate::sys::cancel::Cancel>,
}

/// Entry data that stops being read once the unpack is cancelled (one flag load a read of up
/// to `COPY_BUF_LEN` bytes).
struct Cancellable<'a, 'c> {
    inner: &'a mut dyn Read,
    cancel: Option<&'c crate::sys::cancel::Cancel>,
}

impl Read for Cancellable<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(io::Error::other(CANCELLED));
        }
        self.inner.read(buf)
    }
}

/// What a cancelled unpack's read error says.
pub(super) const CANCELLED: &str = "the download was cancelled";

struct PendingSymlink {
    path: PathBuf,
    target: Vec<u8>,
    entry: String,
}

/// A regular file being written, with what error messages need to name it.
pub(super) struct NewFile {
    pub(super) file: File,
    pub(super) path: PathBuf,
}

impl Tree {
    pub(super) fn new(dest: &Path, limits: &Limits) -> Result<Self, ExtractError> {
        let write_failed = |source| ExtractError::WriteFailed {
            path: dest.to_path_buf(),
            source,
        };
        if fs::read_dir(dest).map_err(write_failed)?.next().is_some() {
            return Err(ExtractError::StagingNotEmpty {
                dir: dest.to_path_buf(),
            });
        }
        Ok(Tree {
            dest: dest.to_path_buf(),
            dirs: HashSet::new(),
            symlinks: HashSet::new(),
            pending_symlinks: Vec::new(),
            dir_modes: Vec::new(),
            vm: limits.vm,
            vmx: None,
            tart_folders: BTreeMap::new(),
            listed: Vec::new(),
            entries: 0,
            files_created: 0,
            budget: Budget {
                used: 0,
                limit: limits.max_unpacked_bytes,
            },
            buf: vec![0; COPY_BUF_LEN],
            cancel: limits.cancel.clone(),
        })
    }

    pub(super) fn dest(&self) -> &Path {
        &self.dest
    }

    /// Counts an entry and remembers the first few names for a `no-vmx` error.
    pub(super) fn note_entry(&mut self, name: &str) {
        self.entries += 1;
        if self.listed.len() < LISTED_ENTRIES {
            self.listed.push(name.to_owned());
        }
    }

    /// The checked relative path for an entry name; `None` is the folder itself.
    pub(super) fn path_for(
        &self,
        name: &[u8],
        entry: &str,
        backslash_separates: bool,
    ) -> Result<Option<PathBuf>, ExtractError> {
        names::relative_path(name, backslash_separates).map_err(|bad| ExtractError::UnsafePath {
            entry: entry.to_owned(),
            reason: format!("the name {}", bad.reason()),
        })
    }

    /// Refuses an entry up front when its declared size alone would pass the limit, so a bomb
    /// is caught before its bytes are inflated. Sizes are still counted as written.
    pub(super) fn check_declared_size(&self, size: u64, entry: &str) -> Result<(), ExtractError> {
        if self.budget.would_exceed(size) {
            return Err(self.limit_error(entry));
        }
        Ok(())
    }

    pub(super) fn limit_error(&self, entry: &str) -> ExtractError {
        ExtractError::UnpackLimit {
            limit: self.budget.limit,
            entry: entry.to_owned(),
        }
    }

    /// Counts a hole (a gap in a sparse file) against the limit.
    pub(super) fn charge_hole(&mut self, len: u64, entry: &str) -> Result<(), ExtractError> {
        if self.budget.charge(len) {
            Ok(())
        } else {
            Err(self.limit_error(entry))
        }
    }

    pub(super) fn dir(
        &mut self,
        rel: Option<PathBuf>,
        entry: &str,
        mode: u32,
    ) -> Result<(), ExtractError> {
        // The staging folder's own mode is the caller's business.
        let Some(rel) = rel else { return Ok(()) };
        if !self.dirs.contains(&rel) {
            self.ensure_parent(&rel, entry)?;
            self.ensure_unclaimed(&rel, entry)?;
            self.mkdir(&rel, entry)?;
        }
        self.dir_modes.push((rel, mode));
        Ok(())
    }

    /// Creates a regular file, never following or replacing anything already there.
    pub(super) fn create_file(
        &mut self,
        rel: &Path,
        entry: &str,
        mode: u32,
    ) -> Result<NewFile, ExtractError> {
        self.ensure_parent(rel, entry)?;
        self.ensure_unclaimed(rel, entry)?;
        self.note_file(rel, entry)?;
        let path = self.dest.join(rel);
        let permissions = mode & PERMISSION_BITS;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(permissions)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|file| {
                // The umask must not decide a gold image's permissions.
                file.set_permissions(Permissions::from_mode(permissions))?;
                Ok(file)
            })
            .map_err(|e| self.create_error(e, rel, entry))?;
        Ok(NewFile { file, path })
    }

    /// Copies entry data into `file` at `offset`; see `copy::copy_at`.
    pub(super) fn copy_into(
        &mut self,
        src: &mut dyn Read,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<Copied, CopyError> {
        let mut src = Cancellable {
            inner: src,
            cancel: self.cancel.as_ref(),
        };
        copy::copy_at(&mut src, file, offset, len, &mut self.buf, &mut self.budget)
    }

    /// Scratch space for reading small structures out of entries (sparse maps).
    pub(super) fn scratch(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// A hard link must point at a regular file that this archive already unpacked: anything
    /// else could be outside the folder, a symlink, or a name still to come.
    pub(super) fn hard_link(
        &mut self,
        rel: &Path,
        entry: &str,
        target: &[u8],
    ) -> Result<(), ExtractError> {
        let refuse = |reason: &str| ExtractError::UnsafeLink {
            entry: entry.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            reason: reason.to_owned(),
        };
        let target_rel = match names::relative_path(target, false) {
            Ok(Some(path)) => path,
            Ok(None) => return Err(refuse("the target is the image folder itself")),
            Err(bad) => return Err(refuse(&format!("the target {}", bad.reason()))),
        };
        if !self.is_unpacked_file(&target_rel) {
            return Err(refuse(
                "the target is not a regular file unpacked earlier from this archive",
            ));
        }
        self.ensure_parent(rel, entry)?;
        self.ensure_unclaimed(rel, entry)?;
        self.note_file(rel, entry)?;
        let path = self.dest.join(rel);
        fs::hard_link(self.dest.join(&target_rel), &path)
            .map_err(|e| self.create_error(e, rel, entry))?;
        Ok(())
    }

    /// A regular file this archive created: every file in the folder is one (only this type
    /// writes here), and no path on the disk can pass through a symlink yet. A path through a
    /// symlink still to be created names nothing on the disk, but is refused by name as well.
    fn is_unpacked_file(&self, rel: &Path) -> bool {
        let through_symlink = rel.ancestors().skip(1).any(|a| self.symlinks.contains(a));
        !through_symlink
            && !self.symlinks.contains(rel)
            && fs::symlink_metadata(self.dest.join(rel)).is_ok_and(|m| m.file_type().is_file())
    }

    /// An exclusive create that failed: a name an earlier entry took (byte for byte, or
    /// equal to the file system only), or a write error.
    fn create_error(&self, e: io::Error, rel: &Path, entry: &str) -> ExtractError {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return ExtractError::from_write(e, &self.dest.join(rel), &self.dest, entry);
        }
        match self.taken_on_disk(rel) {
            Some(taken_by) => already_unpacked(entry, taken_by),
            None => same_name_on_disk(entry),
        }
    }

    /// What an earlier entry made at exactly `rel` (not at a name the file system only
    /// considers equal): the parent is listed, which happens on this error path only.
    fn taken_on_disk(&self, rel: &Path) -> Option<&'static str> {
        let name = rel.file_name()?;
        let parent = self.dest.join(rel.parent().unwrap_or(Path::new("")));
        let found = fs::read_dir(parent)
            .ok()?
            .flatten()
            .find(|e| e.file_name() == name)?;
        let kind = found.file_type().ok()?;
        Some(if kind.is_dir() { "a folder" } else { "a file" })
    }

    /// Records a symlink, created by `finish`. Targets that are absolute or climb out are
    /// refused at once; the check is repeated on the disk once every symlink exists.
    pub(super) fn symlink(
        &mut self,
        rel: Option<PathBuf>,
        entry: &str,
        target: &[u8],
    ) -> Result<(), ExtractError> {
        let Some(rel) = rel else {
            return Err(ExtractError::UnsafePath {
                entry: entry.to_owned(),
                reason: "a symlink cannot replace the image folder itself".to_owned(),
            });
        };
        self.check_symlink_target(&rel, entry, target)?;
        self.ensure_parent(&rel, entry)?;
        self.ensure_unclaimed(&rel, entry)?;
        if fs::symlink_metadata(self.dest.join(&rel)).is_ok() {
            return Err(already_unpacked(entry, "a file"));
        }
        self.symlinks.insert(rel.clone());
        self.pending_symlinks.push(PendingSymlink {
            path: rel,
            target: target.to_vec(),
            entry: entry.to_owned(),
        });
        Ok(())
    }

    fn check_symlink_target(
        &self,
        rel: &Path,
        entry: &str,
        target: &[u8],
    ) -> Result<(), ExtractError> {
        names::resolve_symlink(rel, target, |p| self.symlinks.contains(p))
            .map(drop)
            .map_err(|bad: BadTarget| ExtractError::UnsafeLink {
                entry: entry.to_owned(),
                target: String::from_utf8_lossy(target).into_owned(),
                reason: bad.to_string(),
            })
    }

    /// Creates the symlinks, applies folder modes and names the .vmx.
    pub(super) fn finish(mut self) -> Result<Unpacked, ExtractError> {
        self.create_symlinks()?;
        for (rel, mode) in std::mem::take(&mut self.dir_modes) {
            let path = self.dest.join(&rel);
            let mode = (mode & PERMISSION_BITS) | DIR_OWNER_BITS;
            fs::set_permissions(&path, Permissions::from_mode(mode)).map_err(|e| {
                ExtractError::from_write(e, &path, &self.dest, &rel.to_string_lossy())
            })?;
        }
        let complete = |mask: &u8| *mask == TART_COMPLETE;
        let tart_vm = self
            .tart_folders
            .iter()
            .find(|(_, mask)| complete(mask))
            .map(|(folder, _)| folder.join("config.json"));
        let vmx = match (self.vm, self.vmx, tart_vm) {
            (VmFormat::Vmware, Some((vmx, _)), _) | (VmFormat::Tart, _, Some(vmx)) => vmx,
            (VmFormat::Vmware, None, tart_vm) => {
                return Err(ExtractError::NoVmx {
                    listed: self.listed,
                    entries: self.entries,
                    tart_vm_seen: tart_vm.is_some(),
                })
            }
            (VmFormat::Tart, vmx, None) => {
                let most = self
                    .tart_folders
                    .values()
                    .copied()
                    .max_by_key(|m| m.count_ones());
                return Err(ExtractError::TartVmIncomplete {
                    found: most.unwrap_or(0),
                    entries: self.entries,
                    vmx_seen: vmx.is_some(),
                });
            }
        };
        Ok(Unpacked {
            vmx,
            files: self.files_created,
            bytes: self.budget.used,
        })
    }

    /// Creates every symlink, then checks each target again on the disk itself, removing them
    /// all if one is refused.
    ///
    /// The check at entry time compares names as bytes, but macOS file systems are usually
    /// case- and normalization-insensitive: there `L1/..` goes through a symlink `l1` that a
    /// byte comparison misses. Asking the file system whether each step of the walk is a
    /// symlink gives its own answer. Nothing is written after this point, so a symlink that
    /// exists for the moment of the check cannot redirect a write.
    fn create_symlinks(&mut self) -> Result<(), ExtractError> {
        let pending = std::mem::take(&mut self.pending_symlinks);
        let mut created = Vec::with_capacity(pending.len());
        let result = self.create_and_verify(&pending, &mut created);
        if result.is_err() {
            for path in created {
                let _ = fs::remove_file(path);
            }
        }
        result
    }

    fn create_and_verify(
        &self,
        pending: &[PendingSymlink],
        created: &mut Vec<PathBuf>,
    ) -> Result<(), ExtractError> {
        for link in pending {
            let path = self.dest.join(&link.path);
            match std::os::unix::fs::symlink(OsStr::from_bytes(&link.target), &path) {
                Ok(()) => created.push(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(same_name_on_disk(&link.entry))
                }
                Err(e) => return Err(ExtractError::from_write(e, &path, &self.dest, &link.entry)),
            }
        }
        let is_symlink_on_disk = |rel: &Path| {
            fs::symlink_metadata(self.dest.join(rel)).is_ok_and(|m| m.file_type().is_symlink())
        };
        for link in pending {
            names::resolve_symlink(&link.path, &link.target, is_symlink_on_disk).map_err(
                |bad| ExtractError::UnsafeLink {
                    entry: link.entry.clone(),
                    target: String::from_utf8_lossy(&link.target).into_owned(),
                    reason: bad.to_string(),
                },
            )?;
        }
        Ok(())
    }

    /// Creates the missing folders above `rel`, refusing a way through a symlink or a file.
    fn ensure_parent(&mut self, rel: &Path, entry: &str) -> Result<(), ExtractError> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        let mut at = PathBuf::new();
        for component in parent.components() {
            at.push(component);
            if self.dirs.contains(&at) {
                continue;
            }
            if self.symlinks.contains(&at) {
                return Err(ExtractError::UnsafePath {
                    entry: entry.to_owned(),
                    reason: format!("it passes through the symlink `{}`", at.display()),
                });
            }
            self.mkdir(&at, entry)?;
        }
        Ok(())
    }

    /// Folders and symlinks by name; a file is found by the exclusive create that follows.
    fn ensure_unclaimed(&self, rel: &Path, entry: &str) -> Result<(), ExtractError> {
        let taken_by = if self.symlinks.contains(rel) {
            "a symlink"
        } else if self.dirs.contains(rel) {
            "a folder"
        } else {
            return Ok(());
        };
        Err(already_unpacked(entry, taken_by))
    }

    fn mkdir(&mut self, rel: &Path, entry: &str) -> Result<(), ExtractError> {
        let path = self.dest.join(rel);
        match DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            // A file an earlier entry made (files are not remembered), or a folder of a name
            // the file system considers equal; never accept a symlink.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let kind = fs::symlink_metadata(&path).map(|m| m.file_type());
                match kind {
                    Ok(kind) if kind.is_dir() => {}
                    Ok(kind) if kind.is_file() => {
                        return Err(ExtractError::DuplicateEntry {
                            entry: entry.to_owned(),
                            reason: format!("`{}` is a file, not a folder", rel.display()),
                        })
                    }
                    _ => return Err(ExtractError::from_write(e, &path, &self.dest, entry)),
                }
            }
            Err(e) => return Err(ExtractError::from_write(e, &path, &self.dest, entry)),
        }
        self.dirs.insert(rel.to_path_buf());
        Ok(())
    }

    /// Counts a new regular file and fails fast at a second .vmx: with a 60 GB download there
    /// is no point reading on once the archive is known to be ambiguous.
    fn note_file(&mut self, rel: &Path, entry: &str) -> Result<(), ExtractError> {
        self.files_created += 1;
        if let Some(bit) = tart_file_bit(rel) {
            return self.note_tart_file(rel, bit);
        }
        if !is_vmx(rel) {
            return Ok(());
        }
        if let Some((_, first)) = &self.vmx {
            if self.vm == VmFormat::Vmware {
                return Err(ExtractError::ManyVmx {
                    vmx: vec![first.clone(), entry.to_owned()],
                });
            }
            return Ok(());
        }
        self.vmx = Some((rel.to_path_buf(), entry.to_owned()));
        Ok(())
    }

    /// One of tart's three files; fails fast at a second whole VM folder, as at a second
    /// .vmx.
    fn note_tart_file(&mut self, rel: &Path, bit: u8) -> Result<(), ExtractError> {
        let folder = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let too_many =
            self.tart_folders.len() >= MAX_TART_FOLDERS && !self.tart_folders.contains_key(&folder);
        if too_many {
            if self.vm == VmFormat::Vmware {
                return Ok(());
            }
            let mut folders: Vec<String> =
                self.tart_folders.keys().take(2).map(|f| shown(f)).collect();
            folders.push(format!("and {} more", MAX_TART_FOLDERS - 1));
            return Err(ExtractError::ManyTartVms { folders });
        }
        let mask = self.tart_folders.entry(folder.clone()).or_insert(0);
        *mask |= bit;
        if *mask != TART_COMPLETE || self.vm != VmFormat::Tart {
            return Ok(());
        }
        let whole: Vec<String> = self
            .tart_folders
            .iter()
            .filter(|(_, mask)| **mask == TART_COMPLETE)
            .map(|(folder, _)| shown(folder))
            .collect();
        if whole.len() > 1 {
            return Err(ExtractError::ManyTartVms { folders: whole });
        }
        Ok(())
    }
}

/// A folder of the archive as messages name it (`.` for its top).
fn shown(folder: &Path) -> String {
    if folder.as_os_str().is_empty() {
        "./".to_owned()
    } else {
        format!("{}/", folder.display())
    }
}

fn already_unpacked(entry: &str, taken_by: &str) -> ExtractError {
    ExtractError::DuplicateEntry {
        entry: entry.to_owned(),
        reason: format!("{taken_by} of that name was already unpacked"),
    }
}

/// Every path this type creates is new to it, so an existing one is a name that the file system
/// considers equal to an earlier entry's (macOS ignores case and Unicode normalization).
fn same_name_on_disk(entry: &str) -> ExtractError {
    ExtractError::DuplicateEntry {
        entry: entry.to_owned(),
        reason: "the file system already has that path from an earlier entry whose name \
                 differs only in case or Unicode normalization"
            .to_owned(),
    }
}

/// A VM's configuration file. macOS's tar and Finder's zip add AppleDouble companions
/// (`._name.vmx`, `__MACOSX/`) that are not VMs.
fn is_vmx(rel: &Path) -> bool {
    let name = names::file_name_bytes(rel);
    let has_extension = name.len() > 4 && name[name.len() - 4..].eq_ignore_ascii_case(b".vmx");
    has_extension
        && !name.starts_with(b"._")
        && !rel.components().any(|c| c.as_os_str() == "__MACOSX")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_names() {
        assert!(is_vmx(Path::new("macOS.vmx")));
        assert!(is_vmx(Path::new("vm/macOS 14.vmwarevm/macOS.VMX")));
        assert!(!is_vmx(Path::new("macOS.vmxf")));
        assert!(!is_vmx(Path::new(".vmx")));
        assert!(!is_vmx(Path::new("vm/._macOS.vmx")));
        assert!(!is_vmx(Path::new("__MACOSX/vm/macOS.vmx")));
        assert!(!is_vmx(Path::new("macOS.vmx.lck/M12345.lck")));
    }
}
