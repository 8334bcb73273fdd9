//! The original Go server's downloads: it saved each archive as `images/<checksum>/<name>`
//! and kept it forever, and it reads one only while `gold/<checksum>/` is missing or empty
//! (to unpack it). Once that gold image exists the archive is never read again: its bytes
//! are reclaimable. Our own downloads in `images/` are `.part` files, never folders.

use std::fs;
use std::path::{Path, PathBuf};

/// One `images/<checksum>/` folder of the original server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalArchive {
    pub checksum: String,
    pub dir: PathBuf,
    pub bytes: u64,
}

/// The original's archive folders under `images_root`, by checksum.
pub fn list(images_root: &Path) -> Vec<OriginalArchive> {
    let Ok(entries) = fs::read_dir(images_root) else {
        return Vec::new();
    };
    let mut found: Vec<OriginalArchive> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| {
            let checksum = entry.file_name().to_str()?.to_string();
            if !crate::image::is_any_digest(&checksum) {
                return None;
            }
            let dir = entry.path();
            let bytes = crate::sys::disk::dir_size(&dir).unwrap_or(0);
            Some(OriginalArchive {
                checksum,
                dir,
                bytes,
            })
        })
        .collect();
    found.sort_by(|a, b| a.checksum.cmp(&b.checksum));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_checksum_folders_only() {
        let root = std::env::temp_dir().join(format!("osxb-originals-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let sum = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";
        fs::create_dir_all(root.join(sum)).unwrap();
        fs::write(root.join(sum).join("box.tar.gz"), vec![0u8; 300]).unwrap();
        fs::create_dir_all(root.join("not-a-checksum")).unwrap();
        fs::write(root.join(format!("{sum}-1-0.part")), b"ours").unwrap();
        let found = list(&root);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].checksum, sum);
        assert!(found[0].bytes >= 300);
        fs::remove_dir_all(&root).unwrap();
    }
}
