//! The pool API's side in the service: declare, show, delete; and what `GET /pools` shows
//! of each pool, counted from the VM records at the time of asking.

use serde::Serialize;

use super::spec::{check_name, PoolSpec};
use super::{Pool, PoolCounts};
use crate::service::{Error, Service};
use crate::sys::fsutil;
use crate::vm::{Phase, Status, VmId};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PoolView {
    pub name: String,
    #[serde(flatten)]
    pub spec: PoolSpec,
    /// Declared with `--pool`: the API cannot change or delete it.
    pub from_settings: bool,
    /// Idle VMs of the spec, booted with an IP: what a matching create takes.
    pub ready: u64,
    /// VMs of the spec being provisioned for the pool.
    pub warming: u64,
    /// Idle VMs of an earlier spec, replaced one at a time.
    pub replacing: u64,
    /// Creates served from the pool since the server started.
    pub hits: u64,
    /// Creates that matched the pool's spec but found no idle VM.
    pub misses: u64,
    /// Every VM of the pool (ready, warming, being replaced), by id.
    pub vms: Vec<VmId>,
    /// Why the pool has fewer VMs than its size (capacity, drain, a failing image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What `PUT /pools/:name` did.
pub enum Declared {
    Created(PoolView),
    Updated(PoolView),
}

impl Service {
    pub fn pools(&self) -> Vec<PoolView> {
        let names: Vec<String> = self
            .fleet
            .pools
            .specs()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names
            .iter()
            .filter_map(|name| self.pool(name).ok())
            .collect()
    }

    pub fn pool(&self, name: &str) -> Result<PoolView, Error> {
        let (spec, from_settings, hits, misses, waiting) = {
            let registry = self.fleet.pools.registry();
            let pool = registry
                .pools
                .get(name)
                .ok_or_else(|| Error::PoolNotFound(name.to_string()))?;
            (
                pool.spec.clone(),
                pool.from_settings,
                pool.hits,
                pool.misses,
                pool.waiting.clone(),
            )
        };
        let mut view = PoolView {
            name: name.to_string(),
            spec,
            from_settings,
            ready: 0,
            warming: 0,
            replacing: 0,
            hits,
            misses,
            vms: Vec::new(),
            waiting,
        };
        let mut ids = Vec::new();
        self.store.for_each_pooled(|id, pool, _, phase| {
            if pool == name && phase != Phase::Deleting {
                ids.push(id);
            }
        });
        ids.sort();
        for id in ids {
            let Some(vm) = self.store.get(id) else {
                continue;
            };
            view.vms.push(id);
            let ready = vm.status == Status::Running
                && vm.progress.phase == Phase::Ready
                && !vm.ip_address.is_empty();
            let warming = vm.status == Status::Provisioning
                || (vm.status == Status::Running && vm.progress.phase == Phase::WaitingForIp);
            if !view.spec.made(&vm) {
                view.replacing += u64::from(ready || warming);
            } else if ready {
                view.ready += 1;
            } else if warming {
                view.warming += 1;
            }
        }
        Ok(view)
    }

    /// Declares the pool or changes its spec; the keeper fills it (or rolls it onto the
    /// new spec) from now on. Recorded on disk before this returns.
    pub fn put_pool(&self, name: &str, spec: PoolSpec) -> Result<Declared, Error> {
        check_name(name).map_err(|why| Error::invalid("invalid-pool-name", why))?;
        self.fleet.guard.check_image_url(&spec.image.url)?;
        let pools = &self.fleet.pools;
        let created = {
            let mut registry = pools.registry();
            let existing = registry.pools.get(name);
            if existing.is_some_and(|pool| pool.from_settings) {
                return Err(Error::PoolFromSettings(name.to_string()));
            }
            let created = existing.is_none();
            // Written under the registry's lock: two PUTs at once leave the disk and the
            // memory agreeing on the one that came last.
            pools.files.save(name, &spec).map_err(|e| {
                let what = format!("the pool could not be recorded: {e}");
                if fsutil::is_disk_full(&e) {
                    Error::DiskFull(what)
                } else {
                    Error::Internal(what)
                }
            })?;
            match registry.pools.get_mut(name) {
                Some(pool) => pool.spec = spec,
                None => {
                    registry
                        .pools
                        .insert(name.to_string(), Pool::new(spec, false));
                }
            }
            created
        };
        crate::info!(
            "warm pool {name} {}",
            if created { "declared" } else { "changed" }
        );
        pools.kick();
        let view = self.pool(name)?;
        Ok(if created {
            Declared::Created(view)
        } else {
            Declared::Updated(view)
        })
    }

    /// Forgets the pool and destroys its idle VMs as a DELETE does; VMs it handed out are
    /// their clients' and stay. Returns once they are gone.
    pub fn delete_pool(&self, name: &str) -> Result<(), Error> {
        let pools = &self.fleet.pools;
        {
            let mut registry = pools.registry();
            match registry.pools.get(name) {
                None => return Err(Error::PoolNotFound(name.to_string())),
                Some(pool) if pool.from_settings => {
                    return Err(Error::PoolFromSettings(name.to_string()))
                }
                Some(_) => {}
            }
            pools
                .files
                .remove(name)
                .map_err(|e| Error::Internal(format!("the pool could not be removed: {e}")))?;
            registry.pools.remove(name);
        }
        crate::info!("warm pool {name} deleted; destroying its idle VMs");
        let mut ids = Vec::new();
        self.store.for_each_pooled(|id, pool, _, _| {
            if pool == name {
                ids.push(id);
            }
        });
        for id in ids {
            // One a hand-out or the keeper holds is theirs to finish; the keeper destroys
            // what is left of a pool that no longer exists.
            if !pools.claim(id) {
                continue;
            }
            let deleted = self.delete(id);
            pools.unclaim(id);
            match deleted {
                Ok(()) | Err(Error::VmNotFound) => {}
                Err(err) => crate::warn!("vm={id} destroying it with its pool failed: {err}"),
            }
        }
        Ok(())
    }

    /// Each pool's counters for `/metrics`.
    pub fn pool_counts(&self) -> Vec<PoolCounts> {
        self.pools()
            .into_iter()
            .map(|view| PoolCounts {
                size: view.spec.size,
                ready: view.ready,
                warming: view.warming,
                hits: view.hits,
                misses: view.misses,
                name: view.name,
            })
            .collect()
    }
}
