//! A create served from a warm pool: an idle VM that is what the request asks for is taken
//! under `creating` (so one VM goes to one create, and a retry with the same idempotency key
//! waits for this answer), its record becomes the client's and is written to disk, the
//! request's guestinfo reaches the running guest through `writeVariable`, and only then is
//! the 202 sent, with the VM running and its IP in it.
//!
//! Only the choice and the claim happen under `creating`: the record's fsync and the vmrun
//! calls run outside it, so hand-outs at once do not queue behind each other's disk writes,
//! nor behind the keeper's creates.

use std::time::Instant;

use crate::hypervisor::HypervisorError;
use crate::service::{leases, store_error, Created, Error, Service};
use crate::vm::store::Durability;
use crate::vm::{CreateVm, Phase, Status, Vm, VmId};

/// What became of a create offered to the pools.
pub enum HandOut {
    /// Served: a pool's VM, or the VM its idempotency key names.
    Done(Created),
    /// No idle VM fits: provision it from the start.
    Cold(Box<CreateVm>),
}

impl Service {
    pub(in crate::service) fn hand_out(
        &self,
        request: CreateVm,
        asked: Instant,
    ) -> Result<HandOut, Error> {
        let pools = &self.fleet.pools;
        let specs = pools.specs();
        if specs.is_empty() {
            return Ok(HandOut::Cold(Box::new(request)));
        }
        let serving = specs
            .iter()
            .find(|(_, spec)| spec.matches(&request))
            .map(|(name, _)| name.clone());
        let entered = Instant::now();
        let creating = self.lock_creating();
        let (creating, existing) = self.keyed(creating, &request)?;
        if let Some(json) = existing {
            return Ok(HandOut::Done(Created::Existing(json)));
        }
        if self.fleet.drain.is_draining() {
            // The create refuses it: a hand-out is a new VM to the client as much.
            return Ok(HandOut::Cold(Box::new(request)));
        }
        let Some((before, pool)) = self.choose_idle(&request) else {
            drop(creating);
            match &serving {
                Some(name) => pools.count_miss(name),
                None => {
                    pools
                        .unmatched
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            return Ok(HandOut::Cold(Box::new(request)));
        };
        let id = before.id;
        let ttl = request.ttl.or(self.fleet.default_ttl);
        let now_ms = crate::sys::time::now_ms();
        let mut after = before.clone();
        take_over(&mut after, &request, ttl, now_ms);
        self.handing().insert(id, after);
        drop(creating);
        let chosen = Instant::now();

        let written = self.store.update(id, Durability::Disk, |vm| {
            take_over(vm, &request, ttl, now_ms)
        });
        let json = match written {
            Ok(Some(_)) => self.store.json(id),
            Ok(None) => None,
            Err(err) => {
                self.end_hand_out(id);
                return Err(store_error("the hand-out could not be recorded", err));
            }
        };
        let Some(json) = json else {
            // Deleted between the choice and the write: another VM, or a cold create.
            self.end_hand_out(id);
            return self.hand_out(request, asked);
        };
        let recorded = Instant::now();
        let vm_ref = self.store.vm_ref(id);
        let failed = request
            .guestinfo
            .iter()
            .find_map(|(name, value)| self.hypervisor.write_guest_data(&vm_ref, name, value).err());
        if let Some(err) = failed {
            self.give_back_broken(&before, &pool, &err);
            self.end_hand_out(id);
            pools.count_miss(&pool);
            return Ok(HandOut::Cold(Box::new(request)));
        }
        let told = Instant::now();
        self.end_hand_out(id);
        pools.count_hit(&pool);
        pools.kick();
        let took = asked.elapsed();
        self.fleet.metrics.observe_hand_out(took);
        // Where a slow hand-out spent its time: waiting for `creating`, the record's fsync,
        // or vmrun writing the guestinfo.
        let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1000.0;
        crate::info!(
            vm = id, duration_ms = took.as_millis();
            "handed out from warm pool {pool} in {:.1} ms (choice {:.1} ms, record {:.1} ms, guestinfo {:.1} ms)",
            took.as_secs_f64() * 1000.0,
            ms(entered, chosen),
            ms(chosen, recorded),
            ms(recorded, told)
        );
        if let Some(url) = request.callback_url {
            crate::callback::deliver_in_background(id, url, json.clone(), pools.callback.clone());
        }
        Ok(HandOut::Done(Created::New(json)))
    }

    /// Under `creating`: an idle, booted VM of any pool that is what `request` asks for
    /// (during a pool's roll onto a new spec, its VMs of the old spec still serve creates of
    /// the old spec), claimed for this hand-out; with its pool.
    fn choose_idle(&self, request: &CreateVm) -> Option<(Vm, String)> {
        let mut ready = Vec::new();
        self.store.for_each_pooled(|id, pool, status, phase| {
            if status == Status::Running && phase == Phase::Ready {
                ready.push((id, pool.to_string()));
            }
        });
        let running = self.hypervisor.running();
        let wanted = super::spec::PoolSpec::from_create(request, 0);
        for (id, pool) in ready {
            if self.fleet.pools.is_claimed(id) {
                continue;
            }
            let Some(vm) = self.store.get(id) else {
                continue;
            };
            let fits = !vm.ip_address.is_empty() && wanted.made(&vm);
            // Stopped behind our back since the last listing: the keeper replaces it.
            if !fits || running.contains(&self.store.vm_dir(id)) == Some(false) {
                continue;
            }
            if self.fleet.pools.claim(id) {
                return Some((vm, pool));
            }
        }
        None
    }

    /// The VM's guest could not be told its guestinfo: it goes back to its pool failed,
    /// without the client's key, labels or lease, and the keeper replaces it.
    fn give_back_broken(&self, before: &Vm, pool: &str, err: &HypervisorError) {
        let id = before.id;
        crate::warn!(
            "vm={id} hand-out from warm pool {pool} failed: writing its guestinfo: {err}; it is replaced and the create provisioned from the start"
        );
        let message =
            format!("writing the guestinfo of a create into the running guest failed: {err}");
        let restored = self.store.update(id, Durability::Disk, |vm| {
            *vm = before.clone();
            vm.fail("guestinfo-write-failed", message);
        });
        if let Err(err) = restored {
            crate::error!("vm={id} {err}");
        }
    }

    /// The hand-out of `id` is over, done or not: a create waiting on its key goes on.
    fn end_hand_out(&self, id: VmId) {
        let _creating = self.lock_creating();
        self.handing().remove(&id);
        self.fleet.pools.unclaim(id);
        self.recorded.notify_all();
    }
}

/// A pool's idle VM becomes the client's: what the create gives, as a create records it.
fn take_over(vm: &mut Vm, request: &CreateVm, ttl: Option<u64>, now_ms: i64) {
    vm.pool = None;
    vm.name = request.name.clone();
    // The same digest is the same bytes: the VM shows the image as this client named it,
    // which is also what a retry with its idempotency key is compared with.
    vm.image = Some(request.image.clone());
    vm.callback_url = request.callback_url.clone();
    vm.ttl = ttl;
    vm.expires_at = ttl.map(|ttl| leases::expiry(now_ms, ttl));
    vm.labels = request.labels.clone();
    vm.guestinfo_keys = request.guestinfo.keys();
    vm.keep = request.keep;
}
