//! Where images live under the data folder, and what the cache leaves there.
//!
//! - `gold/<checksum>/`: a published gold image (the original Go server used the same).
//! - `gold/.staging-<checksum>-<pid>-<n>/`: an image being unpacked; on the same file system
//!   as its gold folder so that publishing is one atomic rename.
//! - `images/<checksum>-<pid>-<n>.part`: a zip being downloaded (zip is unpacked from a file).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hypervisor::GoldVm;
use crate::image::error::ImageError;
use crate::image::vm_format::{tart_file_bit, VmFormat, TART_COMPLETE};

const STAGING_PREFIX: &str = ".staging-";
const PART_SUFFIX: &str = ".part";
/// Deep enough for any VM bundle; bounds the walk of a folder we did not make.
const MAX_VMX_DEPTH: usize = 16;

/// Makes staging and part names unique within the process (the pid makes them unique
/// between processes).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A published gold image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldImage {
    pub checksum: String,
    /// `gold/<checksum>`.
    pub dir: PathBuf,
    /// The gold VM's configuration, absolute: its .vmx (VMware), or its folder's
    /// `config.json` (tart).
    pub config: PathBuf,
}

impl GoldImage {
    /// How hypervisor calls name it.
    pub fn vm(&self) -> GoldVm<'_> {
        GoldVm {
            checksum: &self.checksum,
            dir: &self.dir,
            config: &self.config,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    gold: PathBuf,
    images: PathBuf,
    vm: VmFormat,
}

impl Layout {
    pub fn new(data_dir: &Path, vm: VmFormat) -> Self {
        Self {
            gold: data_dir.join("gold"),
            images: data_dir.join("images"),
            vm,
        }
    }

    pub fn vm_format(&self) -> VmFormat {
        self.vm
    }

    pub fn gold_root(&self) -> &Path {
        &self.gold
    }

    /// Creates `gold/` and `images/`.
    pub fn create(&self) -> Result<(), ImageError> {
        for dir in [&self.gold, &self.images] {
            fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
        }
        Ok(())
    }

    /// `checksum` must have been checked to be a hex digest: it becomes a path component.
    pub fn gold_dir(&self, checksum: &str) -> PathBuf {
        self.gold.join(checksum)
    }

    pub fn new_staging_dir(&self, checksum: &str) -> PathBuf {
        self.gold.join(format!(
            "{STAGING_PREFIX}{checksum}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub fn new_part_file(&self, checksum: &str) -> PathBuf {
        self.images.join(format!(
            "{checksum}-{}-{}{PART_SUFFIX}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Removes the staging folders and partial downloads of a process that died mid-download
    /// (one server per data folder: anything of ours found at start is stale). Other files
    /// in `images/` (the original server kept whole archives there) are left alone.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, ImageError> {
        let mut removed = Vec::new();
        for (dir, is_ours) in [
            (
                &self.gold,
                (|name: &str| name.starts_with(STAGING_PREFIX)) as fn(&str) -> bool,
            ),
            (&self.images, |name: &str| name.ends_with(PART_SUFFIX)),
        ] {
            let entries = fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| ImageError::io(dir, e))?;
                let name = entry.file_name();
                if !name.to_str().is_some_and(is_ours) {
                    continue;
                }
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                // A read-only or damaged folder must not keep the server from starting
                // (its VMs could not be seen or stopped): the leftover waits for a later
                // start.
                match remove_path(&path, is_dir) {
                    Ok(()) => removed.push(path),
                    Err(e) => crate::warn!("left for a later start: {} ({e})", path.display()),
                }
            }
        }
        Ok(removed)
    }

    /// The gold image for `checksum` if its folder exists. A folder without exactly one VM
    /// (one .vmx, or one tart VM folder) is an error rather than "absent": downloading again
    /// could not replace it.
    pub fn find_gold(&self, checksum: &str) -> Result<Option<GoldImage>, ImageError> {
        let dir = self.gold_dir(checksum);
        if !dir.is_dir() {
            return Ok(None);
        }
        let found = find_vm(&dir, self.vm).map_err(|e| ImageError::io(&dir, e))?;
        match found.as_slice() {
            [vmx] => Ok(Some(GoldImage {
                checksum: checksum.to_owned(),
                config: vmx.clone(),
                dir,
            })),
            _ => Err(ImageError::GoldInvalid {
                dir,
                found,
                wanted: self.vm.wanted(),
            }),
        }
    }
}

pub fn remove_path(path: &Path, is_dir: bool) -> io::Result<()> {
    let result = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Every VM under `root`, absolute, without following symlinks: each .vmx (VMware), or
/// the `config.json` of each folder that holds all of tart's three files.
fn find_vm(root: &Path, vm: VmFormat) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![(root.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let mut tart_files = 0;
        for entry in fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() && depth < MAX_VMX_DEPTH {
                folders.push((path, depth + 1));
            } else if !kind.is_file() {
                continue;
            } else if vm == VmFormat::Vmware && is_vmx(&path, root) {
                found.push(path);
            } else if vm == VmFormat::Tart {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                tart_files |= tart_file_bit(rel).unwrap_or(0);
            }
        }
        if tart_files == TART_COMPLETE {
            found.push(folder.join("config.json"));
        }
    }
    found.sort();
    Ok(found)
}

/// The same rule as the extractor's: a `.vmx` file, not a macOS AppleDouble companion
/// (`._name.vmx`, `__MACOSX/`).
fn is_vmx(path: &Path, root: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let has_extension = name.len() > 4 && name[name.len() - 4..].eq_ignore_ascii_case(".vmx");
    let in_macosx = path
        .strip_prefix(root)
        .is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == "__MACOSX"));
    has_extension && !name.starts_with("._") && !in_macosx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_one_vmx_anywhere_and_ignores_companions() {
        let data = crate::sys::scratch::dir("layout-find");
        let layout = Layout::new(&data, VmFormat::Vmware);
        layout.create().unwrap();
        let sum = "9e107d9d372bb6826bd81d3542a419d6";
        let bundle = layout.gold_dir(sum).join("top/macOS.vmwarevm");
        fs::create_dir_all(&bundle).unwrap();
        fs::create_dir_all(layout.gold_dir(sum).join("__MACOSX/top")).unwrap();
        fs::write(bundle.join("macOS.VMX"), "x").unwrap();
        fs::write(bundle.join("._macOS.vmx"), "x").unwrap();
        fs::write(bundle.join("macOS.vmxf"), "x").unwrap();
        fs::write(layout.gold_dir(sum).join("__MACOSX/top/a.vmx"), "x").unwrap();
        let gold = layout.find_gold(sum).unwrap().unwrap();
        assert_eq!(gold.config, bundle.join("macOS.VMX"));
        assert_eq!(gold.dir, layout.gold_dir(sum));

        fs::write(layout.gold_dir(sum).join("second.vmx"), "x").unwrap();
        let e = layout.find_gold(sum).unwrap_err();
        assert_eq!(e.code(), "gold-invalid");
        assert!(e.to_string().contains("second.vmx"), "{e}");
        // Clones may read it: removing is advised only once none does.
        assert!(
            e.to_string()
                .contains("remove it once no VM is a linked clone of it"),
            "{e}"
        );

        assert!(layout
            .find_gold("0000000000000000000000000000000a")
            .unwrap()
            .is_none());
        fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn finds_the_one_tart_vm_folder_anywhere() {
        let data = crate::sys::scratch::dir("layout-find-tart");
        let layout = Layout::new(&data, VmFormat::Tart);
        layout.create().unwrap();
        let sum = "9e107d9d372bb6826bd81d3542a419d6";
        let vm = layout.gold_dir(sum).join("export/macos.tartvm");
        fs::create_dir_all(&vm).unwrap();
        for file in crate::image::vm_format::TART_FILES {
            fs::write(vm.join(file), "x").unwrap();
        }
        // Parts of a VM, and a VMware VM, are not a second tart VM.
        fs::write(layout.gold_dir(sum).join("config.json"), "x").unwrap();
        fs::write(layout.gold_dir(sum).join("macOS.vmx"), "x").unwrap();
        let gold = layout.find_gold(sum).unwrap().unwrap();
        assert_eq!(gold.config, vm.join("config.json"));

        let other = layout.gold_dir(sum).join("other");
        fs::create_dir_all(&other).unwrap();
        for file in crate::image::vm_format::TART_FILES {
            fs::write(other.join(file), "x").unwrap();
        }
        let e = layout.find_gold(sum).unwrap_err();
        assert_eq!(e.code(), "gold-invalid");
        assert!(e.to_string().contains("one tart VM folder"), "{e}");
        fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn leftovers_are_ours_only() {
        let data = crate::sys::scratch::dir("layout-leftovers");
        let layout = Layout::new(&data, VmFormat::Vmware);
        layout.create().unwrap();
        let staging = layout.new_staging_dir("abc");
        fs::create_dir_all(staging.join("vm")).unwrap();
        fs::write(staging.join("vm/disk.vmdk"), "x").unwrap();
        let part = layout.new_part_file("abc");
        fs::write(&part, "x").unwrap();
        let kept_archive = data.join("images/macos.tar.gz");
        fs::write(&kept_archive, "x").unwrap();
        let gold = layout.gold_dir("abc");
        fs::create_dir_all(&gold).unwrap();

        let mut removed = layout.remove_leftovers().unwrap();
        removed.sort();
        let mut expected = vec![staging.clone(), part.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(!staging.exists() && !part.exists());
        assert!(kept_archive.exists() && gold.exists());
        fs::remove_dir_all(&data).unwrap();
    }
}
