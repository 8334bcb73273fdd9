//! One lock per gold image. vmrun refuses two clones of one parent at once ("The file is
//! already in use"), and the gold VM's base snapshot must be made once, before any clone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sys::sync::LockUnpoisoned;

/// What is known about one gold VM while holding its lock.
#[derive(Default)]
pub struct GoldState {
    /// Set once the base snapshot was seen or made in this process's lifetime.
    pub snapshot_ready: bool,
}

#[derive(Default)]
pub struct GoldLocks {
    map: Mutex<HashMap<String, Arc<Mutex<GoldState>>>>,
}

impl GoldLocks {
    pub fn get(&self, checksum: &str) -> Arc<Mutex<GoldState>> {
        let mut map = self.map.lock_unpoisoned();
        map.entry(checksum.to_string()).or_default().clone()
    }
}
