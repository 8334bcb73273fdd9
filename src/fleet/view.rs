//! The fleet as this host sees it: every host record and every host's slots, kept in memory
//! by one thread that reads them once and then follows etcd's watch. Placement reads this
//! map instead of asking etcd (a decision takes microseconds); the slot claim that follows
//! is checked by etcd itself, so a view a moment old costs a retry, never a wrong answer.

use std::collections::HashMap;
use std::sync::RwLock;

use super::etcd::{Event, Kv};
use super::record::{HostRecord, Keys, Slots};
use crate::sys::sync::RwLockUnpoisoned;

#[derive(Clone, Debug)]
pub struct Known<T> {
    pub value: T,
    pub mod_revision: i64,
    pub lease: i64,
}

#[derive(Default)]
pub struct View {
    hosts: RwLock<HashMap<String, Known<HostRecord>>>,
    slots: RwLock<HashMap<String, Known<Slots>>>,
}

/// What a batch of events changed that someone must act on.
#[derive(Default, Debug)]
pub struct Changes {
    /// Hosts whose record went (their lease ended, or they left): with the record they had.
    pub gone: Vec<Known<HostRecord>>,
}

impl View {
    pub fn hosts(&self) -> Vec<Known<HostRecord>> {
        let mut hosts: Vec<_> = self.hosts.read_unpoisoned().values().cloned().collect();
        hosts.sort_by(|a, b| a.value.name.cmp(&b.value.name));
        hosts
    }

    /// How many hosts are in the view, without copying their records (`/healthz`).
    pub fn host_count(&self) -> usize {
        self.hosts.read_unpoisoned().len()
    }

    pub fn host(&self, name: &str) -> Option<Known<HostRecord>> {
        self.hosts.read_unpoisoned().get(name).cloned()
    }

    /// With `f` under the read lock: placement reads every host without copying them.
    pub fn with_hosts<T>(
        &self,
        f: impl FnOnce(&HashMap<String, Known<HostRecord>>, &HashMap<String, Known<Slots>>) -> T,
    ) -> T {
        let hosts = self.hosts.read_unpoisoned();
        let slots = self.slots.read_unpoisoned();
        f(&hosts, &slots)
    }

    pub fn slots(&self, name: &str) -> Option<Known<Slots>> {
        self.slots.read_unpoisoned().get(name).cloned()
    }

    /// Replaces the hosts (`kind` `hosts`) or the slots with what a full read found.
    pub fn reset(&self, keys: &Keys, kind: &str, kvs: &[Kv]) -> Changes {
        let before: Vec<Known<HostRecord>> = if kind == "hosts" {
            let mut hosts = self.hosts.write_unpoisoned();
            hosts.drain().map(|(_, known)| known).collect()
        } else {
            self.slots.write_unpoisoned().clear();
            Vec::new()
        };
        for kv in kvs {
            self.put(keys, kv);
        }
        let hosts = self.hosts.read_unpoisoned();
        Changes {
            gone: before
                .into_iter()
                .filter(|k| !hosts.contains_key(&k.value.name))
                .collect(),
        }
    }

    pub fn apply(&self, keys: &Keys, events: &[Event]) -> Changes {
        let mut changes = Changes::default();
        for event in events {
            match event {
                Event::Put(kv) => self.put(keys, kv),
                Event::Delete { key, .. } => {
                    if let Some(name) = keys.name_in("hosts", key) {
                        if let Some(gone) = self.hosts.write_unpoisoned().remove(name) {
                            changes.gone.push(gone);
                        }
                    } else if let Some(name) = keys.name_in("slots", key) {
                        self.slots.write_unpoisoned().remove(name);
                    }
                }
            }
        }
        changes
    }

    /// A record that does not parse, or claims another host's name, is logged with its key
    /// and skipped.
    fn put(&self, keys: &Keys, kv: &Kv) {
        let shown = || String::from_utf8_lossy(&kv.key).into_owned();
        if let Some(name) = keys.name_in("hosts", &kv.key) {
            match serde_json::from_slice::<HostRecord>(&kv.value) {
                Ok(record) if record.name == name => {
                    self.hosts.write_unpoisoned().insert(
                        name.to_string(),
                        Known {
                            value: record,
                            mod_revision: kv.mod_revision,
                            lease: kv.lease,
                        },
                    );
                }
                Ok(record) => crate::warn!(
                    "fleet: skipped the host record {}: it claims the name {:?}",
                    shown(),
                    record.name
                ),
                Err(err) => crate::warn!("fleet: skipped the host record {}: {err}", shown()),
            }
        } else if let Some(name) = keys.name_in("slots", &kv.key) {
            match serde_json::from_slice::<Slots>(&kv.value) {
                Ok(slots) => {
                    self.slots.write_unpoisoned().insert(
                        name.to_string(),
                        Known {
                            value: slots,
                            mod_revision: kv.mod_revision,
                            lease: kv.lease,
                        },
                    );
                }
                Err(err) => crate::warn!("fleet: skipped the slots record {}: {err}", shown()),
            }
        }
    }
}
