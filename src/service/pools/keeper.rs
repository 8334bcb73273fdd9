//! The keeper: one thread that, every second and whenever a hand-out or the API wakes it,
//! brings each pool to `size` idle VMs booted with an IP. New VMs are created as a client's
//! create is (admission, capacity, the same provisioning workers); VMs that fail, stop, or
//! lose their IP while idle are destroyed as a DELETE does and replaced; a pool whose spec
//! changed is rolled one VM at a time, an old one going only once a new one is ready, so a
//! pool that had a ready VM keeps one throughout. What the keeper cannot do (capacity,
//! drain, a failing image) is the pool's `waiting` reason, logged when it changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::spec::PoolSpec;
use crate::hypervisor::IpAnswer;
use crate::service::{Error, Service};
use crate::sys::cancel::Cancel;
use crate::vm::{Phase, Status, Vm, VmId};

/// Between rounds when nothing wakes the keeper.
const TICK: Duration = Duration::from_secs(1);
/// Between checks that an idle VM still runs and has its address (one vmrun call each).
const HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// After a pool VM fails, the next is tried this long later, doubling up to `MAX_BACKOFF`:
/// an image that cannot boot must not be cloned in a loop.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the keeper remembers between rounds.
#[derive(Default)]
struct Memory {
    /// When each idle VM was last found healthy.
    checked: HashMap<VmId, Instant>,
    /// Per pool: failures in a row, and until when no new VM is tried (with why).
    backoff: HashMap<String, Backoff>,
    /// Failed VMs already counted against their pool's backoff.
    counted: HashSet<VmId>,
}

struct Backoff {
    failures: u32,
    until: Instant,
    why: String,
}

/// How an idle VM of a pool stands.
enum Standing {
    Ready,
    Warming,
    /// To be destroyed: why, and the failure when it failed.
    Broken(String, Option<String>),
    /// Being handed out or destroyed: someone else's.
    Busy,
}

/// Starts the keeper on a thread of its own.
pub fn start_keeper(service: Arc<Service>) {
    let spawned = thread::Builder::new()
        .name("pool-keeper".into())
        .spawn(move || {
            let mut memory = Memory::default();
            // Ends with the server: when nothing but this thread holds the service (a
            // test's server dropped), there is nothing left to keep warm.
            while Arc::strong_count(&service) > 1 {
                service.keep_pools(&mut memory);
                service.fleet.pools.sleep(TICK);
            }
        });
    if let Err(err) = spawned {
        crate::error!("cannot start the warm pool keeper: {err}; pools are not kept warm");
    }
}

impl Service {
    fn keep_pools(self: &Arc<Self>, memory: &mut Memory) {
        let specs: HashMap<String, PoolSpec> = self.fleet.pools.specs().into_iter().collect();
        let mut members: HashMap<String, Vec<Vm>> = HashMap::new();
        let mut ids = Vec::new();
        self.store
            .for_each_pooled(|id, pool, _, _| ids.push((id, pool.to_string())));
        for (id, pool) in ids {
            if let Some(vm) = self.store.get(id) {
                members.entry(pool).or_default().push(vm);
            }
        }
        memory
            .checked
            .retain(|id, _| members.values().flatten().any(|vm| vm.id == *id));
        for (pool, vms) in &members {
            if !specs.contains_key(pool) {
                for vm in vms {
                    self.destroy_pooled(vm.id, pool, "its pool was deleted");
                }
            }
        }
        for (name, spec) in &specs {
            let vms = members.remove(name).unwrap_or_default();
            self.keep_pool(name, spec, vms, memory);
        }
    }

    fn keep_pool(self: &Arc<Self>, name: &str, spec: &PoolSpec, vms: Vec<Vm>, memory: &mut Memory) {
        let size = spec.size as usize;
        let (mut fresh_ready, mut fresh_warming) = (Vec::new(), Vec::new());
        let (mut stale_ready, mut stale_warming) = (Vec::new(), Vec::new());
        for vm in &vms {
            let standing = match self.standing(vm) {
                Standing::Ready if !self.still_healthy(vm, memory) => {
                    Standing::Broken("it stopped or lost its IP address while idle".into(), None)
                }
                other => other,
            };
            let fresh = spec.made(vm);
            match standing {
                Standing::Busy => {}
                Standing::Broken(why, failure) => {
                    if let Some(failure) = failure {
                        if memory.counted.insert(vm.id) {
                            note_failure(memory, name, failure);
                        }
                    }
                    self.destroy_pooled(vm.id, name, &why);
                }
                Standing::Ready if fresh => fresh_ready.push(vm.id),
                Standing::Warming if fresh => fresh_warming.push(vm.id),
                Standing::Ready => stale_ready.push(vm.id),
                Standing::Warming => stale_warming.push(vm.id),
            }
        }
        memory
            .counted
            .retain(|id| vms.iter().any(|vm| vm.id == *id));
        if !fresh_ready.is_empty() {
            memory.backoff.remove(name);
        }
        // An old VM still booting serves nobody: it goes at once.
        for id in stale_warming {
            self.destroy_pooled(id, name, "the pool's spec changed");
        }
        let have = fresh_ready.len() + fresh_warming.len();
        let mut waiting = None;
        if have > size {
            let excess = fresh_warming.iter().chain(&fresh_ready).take(have - size);
            for id in excess {
                self.destroy_pooled(*id, name, "the pool is smaller now");
            }
        }
        let mut started = 0;
        if have < size {
            match memory.backoff.get(name) {
                Some(backoff) if backoff.until > Instant::now() => {
                    waiting = Some(backoff.why.clone());
                }
                _ => {
                    while have + started < size {
                        match self.create_cold(spec.request(), Some(name)) {
                            Ok(_) => started += 1,
                            Err(err) => {
                                let ready = fresh_ready.len() + stale_ready.len();
                                if matches!(err, Error::CapacityExhausted(_)) && ready >= 2 {
                                    // Room for the new spec, and a ready VM is left.
                                    if let Some(id) = stale_ready.pop() {
                                        self.destroy_pooled(id, name, "the pool's spec changed");
                                    }
                                }
                                waiting = Some(waiting_reason(&err));
                                break;
                            }
                        }
                    }
                }
            }
        }
        // The roll: one old VM goes per round once a new one is ready to take its place.
        if size == 0 {
            for id in &stale_ready {
                self.destroy_pooled(*id, name, "the pool is empty now");
            }
        } else if !stale_ready.is_empty()
            && !fresh_ready.is_empty()
            && have + started + stale_ready.len() > size
        {
            if let Some(id) = stale_ready.first() {
                self.destroy_pooled(*id, name, "the pool's spec changed");
            }
        }
        self.fleet.pools.set_waiting(name, waiting);
    }

    fn standing(&self, vm: &Vm) -> Standing {
        if self.fleet.pools.is_claimed(vm.id) || vm.progress.phase == Phase::Deleting {
            return Standing::Busy;
        }
        match vm.status {
            Status::Provisioning => Standing::Warming,
            Status::Running if vm.progress.phase == Phase::IpTimeout => Standing::Broken(
                "no IP address appeared before --ip-wait-timeout".into(),
                Some("its VM found no IP address before --ip-wait-timeout".into()),
            ),
            Status::Running if vm.progress.phase == Phase::Ready && !vm.ip_address.is_empty() => {
                if self
                    .hypervisor
                    .running()
                    .contains(&self.store.vm_dir(vm.id))
                    == Some(false)
                {
                    Standing::Broken("it stopped while idle".into(), None)
                } else {
                    Standing::Ready
                }
            }
            Status::Running => Standing::Warming,
            Status::Stopped => Standing::Broken("it stopped while idle".into(), None),
            Status::Failed => {
                let error = vm
                    .error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .unwrap_or_default();
                Standing::Broken(format!("it failed ({error})"), Some(error))
            }
        }
    }

    /// Every `HEALTH_INTERVAL`: the guest still answers with the address it was handed
    /// out with. A VM that lost it would give a client a VM it cannot reach.
    fn still_healthy(&self, vm: &Vm, memory: &mut Memory) -> bool {
        if memory
            .checked
            .get(&vm.id)
            .is_some_and(|at| at.elapsed() < HEALTH_INTERVAL)
        {
            return true;
        }
        let vm_ref = self.store.vm_ref(vm.id);
        let healthy = match self.hypervisor.guest_ip(&vm_ref, &Cancel::new()) {
            Ok(IpAnswer::Address(ip) | IpAnswer::Found(ip, _)) => ip.trim() == vm.ip_address,
            Ok(IpAnswer::NoAddress | IpAnswer::NoTools) => false,
            Err(crate::hypervisor::HypervisorError::NotPoweredOn { .. }) => false,
            // vmrun itself is failing: not this VM's fault; asked again next round.
            Err(_) => return true,
        };
        if healthy {
            memory.checked.insert(vm.id, Instant::now());
        }
        healthy
    }

    /// Destroys a pool's VM as a DELETE does, on a thread of its own (vmrun stop and
    /// deleteVM take seconds on a real host; the other pools need not wait).
    fn destroy_pooled(self: &Arc<Self>, id: VmId, pool: &str, why: &str) {
        let pools = &self.fleet.pools;
        if !pools.claim(id) {
            return;
        }
        crate::info!("vm={id} warm pool {pool}: destroying it: {why}");
        let service = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("pool-destroy-{id}"))
            .spawn(move || {
                if let Err(err) = service.delete(id) {
                    crate::warn!("vm={id} destroying a warm pool VM failed: {err}; tried again");
                }
                service.fleet.pools.unclaim(id);
                service.fleet.pools.kick();
            });
        if let Err(err) = spawned {
            crate::error!("vm={id} cannot start a thread to destroy it: {err}");
            pools.unclaim(id);
        }
    }
}

fn note_failure(memory: &mut Memory, pool: &str, failure: String) {
    let failures = memory.backoff.get(pool).map_or(0, |b| b.failures) + 1;
    let delay = FIRST_BACKOFF
        .saturating_mul(1 << (failures - 1).min(16))
        .min(MAX_BACKOFF);
    let at = crate::sys::time::now_ms() + delay.as_millis() as i64;
    let why = format!(
        "its last VM failed ({failure}); {failures} failure(s) in a row, the next VM is tried at {}",
        crate::sys::time::rfc3339(at.div_euclid(1000), at.rem_euclid(1000) as u32)
    );
    memory.backoff.insert(
        pool.to_string(),
        Backoff {
            failures,
            until: Instant::now() + delay,
            why,
        },
    );
}

fn waiting_reason(err: &Error) -> String {
    match err {
        Error::CapacityExhausted(shortage) => format!("capacity: {shortage}"),
        Error::Draining { since } => format!("the host is draining since {since}"),
        other => other.to_string(),
    }
}
