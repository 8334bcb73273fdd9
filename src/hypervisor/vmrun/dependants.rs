//! Which gold images the linked clones on disk read, found from the disks themselves: each
//! `.vmdk` descriptor under `vms/` names its parent in `parentFileNameHint`, and a parent
//! outside `gold/` (a clone of a clone) is followed in turn. Records can be lost, a VM can
//! be the original server's or one made by hand in Fusion: only the disks cannot be wrong
//! about what would break if an image went.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::vm::VmId;

/// A descriptor is text of a few hundred bytes; a sparse extent embeds its descriptor near
/// the start (sector 1 in VMware's layout). Reading this much of each file finds either.
const DESCRIPTOR_BYTES: u64 = 64 << 10;
/// Bounds a chain of clones of clones, and a cycle someone made by hand.
const MAX_CHAIN: usize = 32;
/// Deep enough for a VM folder with a sub-folder or two; bounds a walk of folders we did
/// not make.
const MAX_DEPTH: usize = 4;

/// One folder under `vms/` whose disks read a gold image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependant {
    /// The folder's name when it is a VM id (ours or the original server's).
    pub id: Option<VmId>,
    pub folder: PathBuf,
}

impl Dependant {
    /// The id, or the folder for one that no id names.
    pub fn name(&self) -> String {
        match self.id {
            Some(id) => id.to_string(),
            None => self.folder.display().to_string(),
        }
    }
}

/// Gold image checksum → the folders under `vms_root` with a disk that reads it.
pub fn scan(vms_root: &Path, gold_root: &Path) -> BTreeMap<String, BTreeSet<Dependant>> {
    let golds = GoldRoots::new(gold_root);
    let mut found: BTreeMap<String, BTreeSet<Dependant>> = BTreeMap::new();
    let Ok(entries) = fs::read_dir(vms_root) else {
        return found;
    };
    for entry in entries.flatten() {
        let folder = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mut disks = Vec::new();
        find_disks(&folder, 0, &mut disks);
        let checksums: BTreeSet<String> = disks
            .iter()
            .filter_map(|disk| gold_parent(disk, &golds))
            .collect();
        if checksums.is_empty() {
            continue;
        }
        let dependant = Dependant {
            id: entry.file_name().to_str().and_then(VmId::parse),
            folder,
        };
        for checksum in checksums {
            found.entry(checksum).or_default().insert(dependant.clone());
        }
    }
    found
}

fn find_disks(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            // VMware's lock folders hold no disks.
            if depth < MAX_DEPTH && path.extension().is_none_or(|e| e != "lck") {
                find_disks(&path, depth + 1, out);
            }
        } else if kind.is_file() && is_vmdk(&path) {
            out.push(path);
        }
    }
}

fn is_vmdk(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("vmdk"))
}

/// The gold image `disk` reads, following its chain of parents.
fn gold_parent(disk: &Path, golds: &GoldRoots) -> Option<String> {
    let mut seen = HashSet::new();
    let mut current = disk.to_path_buf();
    for _ in 0..MAX_CHAIN {
        let parent = parent_of(&current)?;
        if let Some(checksum) = golds.checksum_of(&parent) {
            return Some(checksum);
        }
        if !seen.insert(parent.clone()) {
            return None;
        }
        current = parent;
    }
    None
}

/// The disk `disk`'s descriptor names as its parent, absolute.
fn parent_of(disk: &Path) -> Option<PathBuf> {
    let mut head = Vec::new();
    File::open(disk)
        .ok()?
        .take(DESCRIPTOR_BYTES)
        .read_to_end(&mut head)
        .ok()?;
    let hint = parent_hint(&head)?;
    let hint = Path::new(&hint);
    Some(if hint.is_absolute() {
        hint.to_path_buf()
    } else {
        disk.parent()?.join(hint)
    })
}

/// The value of `parentFileNameHint="..."` in a descriptor's bytes.
pub fn parent_hint(bytes: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"parentfilenamehint";
    for line in bytes.split(|&b| b == b'\n' || b == b'\r') {
        let line = trim(line);
        if line.len() <= KEY.len() || !line[..KEY.len()].eq_ignore_ascii_case(KEY) {
            continue;
        }
        let rest = trim(&line[KEY.len()..]);
        let Some(value) = rest.strip_prefix(b"=") else {
            continue;
        };
        let value = trim(value);
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        if value.is_empty() {
            return None;
        }
        return String::from_utf8(value.to_vec()).ok();
    }
    None
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// `gold/` as written and as the file system resolves it (`/var` is `/private/var` on
/// macOS, and a hint holds whichever path VMware was given).
struct GoldRoots(Vec<PathBuf>);

impl GoldRoots {
    fn new(gold_root: &Path) -> Self {
        let mut roots = vec![lexical(gold_root)];
        if let Ok(real) = gold_root.canonicalize() {
            if real != roots[0] {
                roots.push(real);
            }
        }
        Self(roots)
    }

    /// `gold/<checksum>/...` → checksum.
    fn checksum_of(&self, path: &Path) -> Option<String> {
        let mut candidates = vec![lexical(path)];
        if let Ok(real) = path.canonicalize() {
            candidates.push(real);
        }
        for candidate in &candidates {
            for root in &self.0 {
                if let Ok(rest) = candidate.strip_prefix(root) {
                    if let Some(Component::Normal(first)) = rest.components().next() {
                        let name = first.to_str()?;
                        if crate::image::is_any_digest(name) && rest.components().count() > 1 {
                            return Some(name.to_string());
                        }
                    }
                }
            }
        }
        None
    }
}

/// `a/./b/../c` → `a/c`, without the file system (the parent may be gone already).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKSUM: &str = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";

    fn descriptor(parent: &str) -> String {
        format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=2\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"{parent}\"\n")
    }

    #[test]
    fn reads_the_hint_in_any_case_with_or_without_quotes() {
        assert_eq!(
            parent_hint(b"version=1\r\nparentFileNameHint=\"/a/b c.vmdk\"\r\n").as_deref(),
            Some("/a/b c.vmdk")
        );
        assert_eq!(
            parent_hint(b"  PARENTFILENAMEHINT = disk.vmdk\n").as_deref(),
            Some("disk.vmdk")
        );
        assert_eq!(parent_hint(b"parentFileNameHint=\"\"\n"), None);
        assert_eq!(parent_hint(b"createType=\"monolithicSparse\"\n"), None);
        // A sparse extent: binary header, then the embedded descriptor.
        let mut sparse = b"KDMV\x01\x00\x00\x00".to_vec();
        sparse.resize(512, 0);
        sparse.extend_from_slice(descriptor("../gold/x.vmdk").as_bytes());
        assert_eq!(parent_hint(&sparse).as_deref(), Some("../gold/x.vmdk"));
    }

    #[test]
    fn finds_clones_of_gold_and_clones_of_clones_whatever_their_folder_name() {
        let root = crate::sys::scratch::dir("dependants-scan");
        let (vms, gold) = (root.join("vms"), root.join("gold"));
        fs::create_dir_all(gold.join(CHECKSUM).join("box")).unwrap();
        fs::write(gold.join(CHECKSUM).join("box/disk.vmdk"), "base").unwrap();
        // The gold's own snapshot delta points inside the gold: the gold depends on nothing.
        fs::write(
            gold.join(CHECKSUM).join("box/disk-000001.vmdk"),
            descriptor("disk.vmdk"),
        )
        .unwrap();
        let original = "24a22119f66061eac0cc";
        fs::create_dir_all(vms.join(original)).unwrap();
        fs::write(
            vms.join(original).join("disk-000001-cl1.vmdk"),
            descriptor(
                &gold
                    .join(CHECKSUM)
                    .join("box/disk-000001.vmdk")
                    .display()
                    .to_string(),
            ),
        )
        .unwrap();
        // A clone of that clone, by a relative hint, in a folder no id names.
        fs::create_dir_all(vms.join("by hand/sub")).unwrap();
        fs::write(
            vms.join("by hand/sub/x-cl1.vmdk"),
            descriptor(&format!("../../{original}/disk-000001-cl1.vmdk")),
        )
        .unwrap();
        // A full clone (no hint) and a clone of a disk outside gold/ depend on nothing.
        fs::create_dir_all(vms.join("full")).unwrap();
        fs::write(
            vms.join("full/disk.vmdk"),
            "createType=\"monolithicSparse\"\n",
        )
        .unwrap();
        fs::create_dir_all(vms.join("elsewhere")).unwrap();
        fs::write(
            vms.join("elsewhere/d.vmdk"),
            descriptor("/Users/x/VMs/y.vmdk"),
        )
        .unwrap();
        // A cycle ends.
        fs::create_dir_all(vms.join("loop")).unwrap();
        fs::write(vms.join("loop/a.vmdk"), descriptor("b.vmdk")).unwrap();
        fs::write(vms.join("loop/b.vmdk"), descriptor("a.vmdk")).unwrap();

        let found = scan(&vms, &gold);
        assert_eq!(found.len(), 1, "{found:?}");
        let names: Vec<String> = found[CHECKSUM].iter().map(Dependant::name).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&original.to_string()), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("by hand")), "{names:?}");
        // A clone whose own parent is gone reads no gold any more.
        fs::remove_file(vms.join(original).join("disk-000001-cl1.vmdk")).unwrap();
        let found = scan(&vms, &gold);
        assert!(found.is_empty(), "{found:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
