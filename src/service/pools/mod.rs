//! Warm pools: VMs of one spec kept booted, with an IP, idle, so that a create asking for
//! exactly that spec gets a running VM in its 202 instead of waiting out a boot.
//!
//! - `spec`: what a pool keeps, and which creates it serves; pool names.
//! - `files`: pools declared through the API, on disk (those of `--pool` are not written).
//! - `handout`: a create taking an idle VM: once only, its guestinfo written before the 202.
//! - `keeper`: the thread that keeps each pool full, replaces VMs that break, rolls a pool
//!   onto a new spec one VM at a time, and says why a pool waits.
//! - `view`: what `GET /pools` shows.
//!
//! A pool's VMs are ordinary VM records (listed, counted against `--max-vms`, provisioned
//! by the same workers) whose `pool` names it; a hand-out clears that, and from then on the
//! VM is the client's like any other.

pub(crate) mod files;
mod handout;
mod keeper;
pub(crate) mod spec;
pub(crate) mod view;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::callback::CallbackSettings;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::VmId;
use files::PoolFiles;
pub use handout::HandOut;
pub use keeper::start_keeper;
use spec::PoolSpec;

/// What the hand-outs, the keeper and the API share.
pub struct Pools {
    files: PoolFiles,
    registry: Mutex<Registry>,
    /// Wakes the keeper early: a hand-out took a VM, a pool was declared or changed.
    wake: Condvar,
    /// A handed-out VM's callback fires at once, as it would when provisioning ends.
    callback: CallbackSettings,
    /// Creates that matched no pool while at least one pool was declared.
    unmatched: AtomicU64,
}

#[derive(Default)]
struct Registry {
    pools: BTreeMap<String, Pool>,
    /// VMs a hand-out or the keeper is taking out of their pool: nobody else may.
    claimed: HashSet<VmId>,
    /// A wake-up the keeper has not seen yet.
    kicked: bool,
}

struct Pool {
    spec: PoolSpec,
    /// From `--pool`: the API cannot change or delete it.
    from_settings: bool,
    hits: u64,
    misses: u64,
    /// Why the pool has fewer VMs than its size, as the keeper last found it.
    waiting: Option<String>,
}

impl Pool {
    fn new(spec: PoolSpec, from_settings: bool) -> Self {
        Self {
            spec,
            from_settings,
            hits: 0,
            misses: 0,
            waiting: None,
        }
    }
}

/// Counters of one pool, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub name: String,
    pub size: u32,
    pub ready: u64,
    pub warming: u64,
    pub hits: u64,
    pub misses: u64,
}

impl Pools {
    /// The pools of the settings (`from_settings`), then those on disk under `data_dir`; a
    /// pool on disk with a settings pool's name is ignored (the settings win, and say so).
    pub fn load(
        data_dir: &std::path::Path,
        from_settings: Vec<(String, PoolSpec)>,
        callback: CallbackSettings,
    ) -> Self {
        let files = PoolFiles::new(data_dir);
        let mut pools: BTreeMap<String, Pool> = from_settings
            .into_iter()
            .map(|(name, spec)| (name, Pool::new(spec, true)))
            .collect();
        for (name, spec) in files.load() {
            if pools.contains_key(&name) {
                crate::warn!(
                    "warm pool {name}: --pool defines it, so the spec declared through the API is ignored"
                );
                continue;
            }
            pools.insert(name, Pool::new(spec, false));
        }
        if !pools.is_empty() {
            let names: Vec<&str> = pools.keys().map(String::as_str).collect();
            crate::info!("warm pools: {}", names.join(", "));
        }
        Self {
            files,
            registry: Mutex::new(Registry {
                pools,
                ..Registry::default()
            }),
            wake: Condvar::new(),
            callback,
            unmatched: AtomicU64::new(0),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock_unpoisoned()
    }

    /// The spec of each pool, by name.
    pub fn specs(&self) -> Vec<(String, PoolSpec)> {
        self.registry()
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), pool.spec.clone()))
            .collect()
    }

    /// Takes `id` out of its pool for the caller alone; false when someone else has.
    fn claim(&self, id: VmId) -> bool {
        self.registry().claimed.insert(id)
    }

    fn unclaim(&self, id: VmId) {
        self.registry().claimed.remove(&id);
    }

    fn is_claimed(&self, id: VmId) -> bool {
        self.registry().claimed.contains(&id)
    }

    fn kick(&self) {
        self.registry().kicked = true;
        self.wake.notify_all();
    }

    /// Waits for a kick or `limit`, whichever comes first.
    fn sleep(&self, limit: Duration) {
        let registry = self.registry();
        let (mut registry, _) = self
            .wake
            .wait_timeout_while(registry, limit, |r| !r.kicked)
            .unwrap_or_else(|p| p.into_inner());
        registry.kicked = false;
    }

    /// Records why a pool waits (`None`: it does not); logs a change, once.
    fn set_waiting(&self, name: &str, waiting: Option<String>) {
        let mut registry = self.registry();
        let Some(pool) = registry.pools.get_mut(name) else {
            return;
        };
        if pool.waiting == waiting {
            return;
        }
        match &waiting {
            Some(why) => crate::warn!("warm pool {name} waits: {why}"),
            None => crate::info!("warm pool {name} no longer waits"),
        }
        pool.waiting = waiting;
    }

    fn count_hit(&self, name: &str) {
        if let Some(pool) = self.registry().pools.get_mut(name) {
            pool.hits += 1;
        }
    }

    fn count_miss(&self, name: &str) {
        if let Some(pool) = self.registry().pools.get_mut(name) {
            pool.misses += 1;
        }
    }

    /// Creates that matched no pool while at least one was declared.
    pub fn unmatched(&self) -> u64 {
        self.unmatched.load(Ordering::Relaxed)
    }
}
