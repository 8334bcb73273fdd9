//! One lock per gold image. vmrun refuses two clones of one parent at once ("The file is
//! already in use"), and the gold VM's base snapshot must be made once, before any clone.
//! Beside it, what keeps a gold image from being cloned until a person acts, for
//! `/healthz` and `GET /images/:checksum`: read without the lock, which a clone holds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::sys::sync::LockUnpoisoned;

/// What is known about one gold VM while holding its lock.
#[derive(Default)]
pub struct GoldState {
    /// Set once the hypervisor made the gold ready to clone (VMware: its base snapshot seen
    /// or made) in this process's lifetime.
    pub prepared: bool,
}

/// Why every clone of a gold image fails, and what a person is to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// The file (or lock folder) that holds the gold VM.
    pub file: PathBuf,
    pub message: String,
    pub since: String,
}

#[derive(Default)]
pub struct GoldLocks {
    map: Mutex<HashMap<String, Arc<Mutex<GoldState>>>>,
    blocked: Mutex<HashMap<String, Blocked>>,
}

impl GoldLocks {
    pub fn get(&self, checksum: &str) -> Arc<Mutex<GoldState>> {
        let mut map = self.map.lock_unpoisoned();
        map.entry(checksum.to_string()).or_default().clone()
    }

    /// Every clone of the image failed on `file`: said until a clone succeeds or the file
    /// is gone.
    pub fn block(&self, checksum: &str, file: PathBuf, message: String) {
        let mut blocked = self.blocked.lock_unpoisoned();
        let since = blocked
            .get(checksum)
            .filter(|b| b.file == file)
            .map(|b| b.since.clone())
            .unwrap_or_else(crate::sys::time::rfc3339_now);
        blocked.insert(
            checksum.to_string(),
            Blocked {
                file,
                message,
                since,
            },
        );
    }

    pub fn unblock(&self, checksum: &str) {
        self.blocked.lock_unpoisoned().remove(checksum);
    }

    /// The images still blocked, by checksum: one whose file a person removed is not.
    pub fn blocked(&self) -> Vec<(String, Blocked)> {
        let mut blocked = self.blocked.lock_unpoisoned();
        blocked.retain(|_, b| b.file.exists());
        let mut all: Vec<(String, Blocked)> = blocked
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
