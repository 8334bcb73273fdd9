//! Folders for the unit tests: each call gets a new, empty one under the system temp dir, so
//! tests that run at once (and reruns after a crash) never see each other's files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A new empty folder named after `tag`, this process and a counter.
pub(crate) fn dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "osxb-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a folder under the system temp dir");
    dir
}
