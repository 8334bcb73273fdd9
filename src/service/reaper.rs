//! The lease reaper: a thread that destroys each VM whose lease is over, exactly as DELETE
//! does, unless a renew comes first ([`Service::reap`] decides under the record's lock).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::service::{Error, Service};
use crate::sys::sync::LockUnpoisoned;
use crate::sys::time::now_ms;
use crate::vm::VmId;

/// How often the reaper looks for expired leases: a lease ends within this of its time.
pub const REAP_TICK: Duration = Duration::from_secs(1);
/// After a failed destroy (the VM's files are locked, say), the reaper tries again this
/// much later rather than every tick.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Starts the reaper thread. Each expired VM is destroyed on a thread of its own, so one
/// slow destroy (vmrun waiting on a lock) does not hold back the others.
pub fn start(service: Arc<Service>) {
    let reaper = Arc::new(Reaper {
        service,
        busy: Mutex::new(HashSet::new()),
        retry_at: Mutex::new(HashMap::new()),
    });
    let spawned = thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            thread::sleep(REAP_TICK);
            reaper.tick();
        });
    if let Err(err) = spawned {
        crate::error!("cannot start the lease reaper: {err}; expired VMs are not destroyed");
    }
}

struct Reaper {
    service: Arc<Service>,
    /// VMs being destroyed now.
    busy: Mutex<HashSet<VmId>>,
    /// VMs whose destroy failed, and when to try again.
    retry_at: Mutex<HashMap<VmId, Instant>>,
}

impl Reaper {
    fn tick(self: &Arc<Self>) {
        for (id, expires_at) in self.service.expired_leases(now_ms()) {
            let due = !matches!(self.retry_at.lock_unpoisoned().get(&id), Some(at) if Instant::now() < *at);
            if !due || !self.busy.lock_unpoisoned().insert(id) {
                continue;
            }
            let reaper = self.clone();
            let spawned = thread::Builder::new()
                .name(format!("reap-{id}"))
                .spawn(move || {
                    reaper.reap(id, &expires_at);
                    reaper.busy.lock_unpoisoned().remove(&id);
                });
            if let Err(err) = spawned {
                crate::error!("vm={id} cannot start a thread to destroy it: {err}");
                self.busy.lock_unpoisoned().remove(&id);
            }
        }
    }

    fn reap(&self, id: VmId, expires_at: &str) {
        crate::info!("vm={id} lease expired at {expires_at}; destroying it");
        match self.service.reap(id, now_ms()) {
            Ok(true) => {
                self.retry_at.lock_unpoisoned().remove(&id);
                crate::info!("vm={id} destroyed: its lease expired");
            }
            Ok(false) => crate::info!("vm={id} was renewed meanwhile; kept"),
            Err(Error::VmNotFound) => {
                self.retry_at.lock_unpoisoned().remove(&id);
            }
            Err(err) => {
                self.retry_at
                    .lock_unpoisoned()
                    .insert(id, Instant::now() + RETRY_AFTER_FAILURE);
                crate::warn!(
                    "vm={id} destroying the expired VM failed: {err}; retrying in {} s",
                    RETRY_AFTER_FAILURE.as_secs()
                );
            }
        }
    }
}
