//! The fleet as this host sees it: every host record and every host's slots, kept in memory
//! by one thread that reads them once and then follows etcd's watch. Placement reads this
//! map instead of asking etcd (a decision takes microseconds); the slot claim that follows
//! is checked by etcd itself, so a view a moment old costs a retry, never a wrong answer.
//! A join reads both again while the watches run: each kind remembers the revision it holds,
//! so a read older than the view, or an event the read already holds, changes nothing.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use super::etcd::{Event, Kv};
use super::record::{HostRecord, Keys, Slots};
use crate::sys::sync::{LockUnpoisoned, RwLockUnpoisoned};

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
    /// Held while a read or a batch of events of the kind is applied.
    hosts_at: Mutex<Revisions>,
    slots_at: Mutex<Revisions>,
}

/// Of one kind: the revision of the last full read, and the newest the view holds.
#[derive(Default, Clone, Copy)]
struct Revisions {
    read: i64,
    held: i64,
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

    fn revisions(&self, kind: &str) -> &Mutex<Revisions> {
        if kind == "hosts" {
            &self.hosts_at
        } else {
            &self.slots_at
        }
    }

    /// The revision of the last full read of `kind`; 0 before the first.
    pub fn read_at(&self, kind: &str) -> i64 {
        self.revisions(kind).lock_unpoisoned().read
    }

    /// Replaces the hosts (`kind` `hosts`) or the slots with what a full read at `revision`
    /// found, unless the view holds a newer state already.
    pub fn reset(&self, keys: &Keys, kind: &str, kvs: &[Kv], revision: i64) -> Changes {
        let mut at = self.revisions(kind).lock_unpoisoned();
        if revision < at.held {
            return Changes::default();
        }
        *at = Revisions {
            read: revision,
            held: revision,
        };
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
            let (key, revision) = match event {
                Event::Put(kv) => (&kv.key, kv.mod_revision),
                Event::Delete { key, mod_revision } => (key, *mod_revision),
            };
            let kind = if keys.name_in("hosts", key).is_some() {
                "hosts"
            } else {
                "slots"
            };
            let mut at = self.revisions(kind).lock_unpoisoned();
            if revision <= at.read {
                continue;
            }
            at.held = at.held.max(revision);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host_kv(keys: &Keys, name: &str, revision: i64) -> Kv {
        let record = serde_json::json!({
            "name": name, "url": "http://x", "hypervisor": "vmware", "max_vms": 2,
            "vms": 0, "images": [], "draining": false, "version": "0"
        });
        Kv {
            key: keys.host(name).into_bytes(),
            value: record.to_string().into_bytes(),
            create_revision: revision,
            mod_revision: revision,
            lease: 1,
        }
    }

    fn names(view: &View) -> Vec<String> {
        view.hosts().into_iter().map(|k| k.value.name).collect()
    }

    #[test]
    fn a_join_read_and_the_watch_that_crosses_it_agree() {
        let keys = Keys {
            prefix: "/f/".into(),
        };
        let view = View::default();
        // The join reads at 10: a and b. The watch, still behind, delivers a's creation (5)
        // and c's put and delete (6, 7), all held by that read already: nothing changes.
        view.reset(
            &keys,
            "hosts",
            &[host_kv(&keys, "a", 5), host_kv(&keys, "b", 9)],
            10,
        );
        let c = host_kv(&keys, "c", 6);
        let stale = [
            Event::Put(host_kv(&keys, "a", 5)),
            Event::Put(c.clone()),
            Event::Delete {
                key: c.key.clone(),
                mod_revision: 7,
            },
        ];
        assert!(view.apply(&keys, &stale).gone.is_empty());
        assert_eq!(names(&view), ["a", "b"]);
        // After the read: applied.
        let gone = view.apply(
            &keys,
            &[
                Event::Put(host_kv(&keys, "d", 11)),
                Event::Delete {
                    key: keys.host("a").into_bytes(),
                    mod_revision: 12,
                },
            ],
        );
        assert_eq!(gone.gone.len(), 1);
        assert_eq!(names(&view), ["b", "d"]);
        // A read older than what the view holds (crossed by the watch) is dropped.
        view.reset(&keys, "hosts", &[host_kv(&keys, "a", 5)], 11);
        assert_eq!(names(&view), ["b", "d"]);
        assert_eq!(view.read_at("hosts"), 10);
        assert_eq!(view.read_at("slots"), 0);
    }
}
