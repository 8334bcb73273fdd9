//! Drain: a host under maintenance refuses new VMs while the ones it has keep running.
//!
//! The state is a marker file in the data folder, so a drain survives a restart: the
//! maintenance that asked for it (an OS update, a disk swap) often restarts the server.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::sys::sync::LockUnpoisoned;

/// `<data>/draining`; its content is the time the drain began.
pub const MARKER: &str = "draining";

/// Whether the host drains, since when, and how many VMs are still on it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainState {
    pub draining: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// VMs still on the host: maintenance can begin when it reaches 0.
    pub vms: usize,
}

pub struct Drain {
    marker: PathBuf,
    /// `Some(time it began)` while draining.
    since: Mutex<Option<String>>,
}

impl Drain {
    /// Reads the marker left by an earlier run, if any.
    pub fn load(data_dir: &Path) -> Self {
        let marker = data_dir.join(MARKER);
        let since = match fs::read_to_string(&marker) {
            Ok(text) => {
                let since = text.trim().to_string();
                Some(if since.is_empty() {
                    crate::sys::time::rfc3339_now()
                } else {
                    since
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                // Refusing creates on a marker we cannot read is the safe side of a
                // maintenance someone started.
                crate::warn!("cannot read {}: {e}; draining", marker.display());
                Some(crate::sys::time::rfc3339_now())
            }
        };
        Self {
            marker,
            since: Mutex::new(since),
        }
    }

    /// `Some(time it began)` while draining.
    pub fn since(&self) -> Option<String> {
        self.lock().clone()
    }

    pub fn is_draining(&self) -> bool {
        self.lock().is_some()
    }

    /// Starts draining (again: the first time is kept); returns when it began. The marker
    /// is on disk before the state changes, so a drain that was acknowledged survives.
    pub fn start(&self) -> io::Result<String> {
        let mut since = self.lock();
        if let Some(since) = since.as_ref() {
            return Ok(since.clone());
        }
        let now = crate::sys::time::rfc3339_now();
        crate::sys::fsutil::write_atomic(&self.marker, format!("{now}\n").as_bytes())?;
        *since = Some(now.clone());
        Ok(now)
    }

    /// Stops draining; a no-op when not draining.
    pub fn stop(&self) -> io::Result<()> {
        let mut since = self.lock();
        match fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *since = None;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Option<String>> {
        self.since.lock_unpoisoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_through_its_marker() {
        let dir = std::env::temp_dir().join(format!("osxb-drain-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let drain = Drain::load(&dir);
        assert!(!drain.is_draining());
        let since = drain.start().unwrap();
        assert_eq!(drain.start().unwrap(), since, "the first start is kept");
        let again = Drain::load(&dir);
        assert_eq!(again.since(), Some(since));
        again.stop().unwrap();
        again.stop().unwrap();
        assert!(!again.is_draining());
        assert!(!Drain::load(&dir).is_draining());
        fs::remove_dir_all(&dir).unwrap();
    }
}
