//! The VM service: what the API's calls do, without HTTP. Creates record and queue, reads
//! answer from memory, deletes wait for the VM to be gone; `recover` makes the records agree
//! with the disk and with vmrun after a restart.

mod adopt;
pub(crate) mod drain;
mod error;
pub(crate) mod health;
mod host_facts;
pub(crate) mod leases;
pub(crate) mod long_poll;
pub(crate) mod metrics;
pub(crate) mod pools;
pub(crate) mod reaper;
pub(crate) mod reconcile;
pub(crate) mod retention;
#[cfg(test)]
mod tests;

pub use error::Error;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::vm::VmId;
use crossbeam_channel::Sender;

use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::image::gold::GoldCache;
use crate::image::gold::{ImageEntry, Prewarmed};
use crate::image::ImageSpec;
use crate::provision::tasks::{Task, Tasks};
use crate::provision::Job;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::capacity::{self, Limits};
use crate::vm::labels::VmFilter;
use crate::vm::store::Durability;
use crate::vm::CreateVm;
use crate::vm::{Phase, Progress, Status, Vm, VmStore};
use drain::{Drain, DrainState};
use health::Health;
use long_poll::Waiters;
use metrics::{Metrics, Snapshot, VmsByStatus};

pub struct Service {
    store: Arc<VmStore>,
    hypervisor: Arc<dyn Hypervisor>,
    tasks: Arc<Tasks>,
    jobs: Sender<Job>,
    /// Taken by creates, adoption and gold image removal: see [`Fleet::admission`].
    creating: Arc<Mutex<()>>,
    /// Admitted creates whose records are being written, not yet in the store: admission
    /// counts them, their idempotency keys find them, adoption leaves their folders alone.
    recording: Mutex<HashMap<VmId, Vm>>,
    /// Warm pool VMs being handed out, with their records to be: taken under `creating`,
    /// so that a create with the same idempotency key waits for the hand-out's answer
    /// instead of taking a second VM. Not counted by admission: they hold their places.
    handing: Mutex<HashMap<VmId, Vm>>,
    /// Signalled, with `creating` held, when a VM leaves `recording` or `handing`.
    recorded: Condvar,
    reported: Mutex<HashSet<PathBuf>>,
    fleet: Fleet,
}

/// What running one host of a fleet adds to the VM API: admission (capacity, drain),
/// leases, long polls, the image cache, health and metrics.
pub struct Fleet {
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Lease in seconds of a VM created without `ttl`.
    pub default_ttl: Option<u64>,
    pub drain: Drain,
    pub metrics: Arc<Metrics>,
    pub gold: Arc<GoldCache>,
    pub waiters: Waiters,
    /// Serialises the decisions that must see every VM record: a create (capacity, the
    /// idempotency key), adoption of a folder, removal of a gold image that no record
    /// names. Shared with [`GoldCache`].
    pub admission: Arc<Mutex<()>>,
    /// What clients may reach: local image folders, callback targets, VMX lines.
    pub guard: Arc<crate::guard::Guard>,
    /// VM records at once, of any status; 0 for no limit.
    pub max_records: u64,
    /// The warm pools and what their keeper and hand-outs share.
    pub pools: Arc<pools::Pools>,
}

/// `creating`, still held, and the object of the VM an idempotency key names, if any.
type Keyed<'a> = (MutexGuard<'a, ()>, Option<Arc<[u8]>>);

enum Admitted {
    New(Box<Vm>),
    Existing(Arc<[u8]>),
}

/// What a create did.
pub enum Created {
    New(Arc<[u8]>),
    /// The idempotency key named a VM that exists: this is its object.
    Existing(Arc<[u8]>),
}

impl Service {
    pub fn new(
        store: Arc<VmStore>,
        hypervisor: Arc<dyn Hypervisor>,
        tasks: Arc<Tasks>,
        jobs: Sender<Job>,
        fleet: Fleet,
    ) -> Self {
        Self {
            store,
            hypervisor,
            tasks,
            jobs,
            creating: fleet.admission.clone(),
            recording: Mutex::new(HashMap::new()),
            handing: Mutex::new(HashMap::new()),
            recorded: Condvar::new(),
            reported: Mutex::new(HashSet::new()),
            fleet,
        }
    }

    /// Hands out an idle VM of a warm pool that matches the request, or records the VM and
    /// queues it. With an idempotency key that an existing VM carries, returns that VM
    /// instead (`Created::Existing`): a coordinator that lost the answer to its POST can
    /// retry without leaking a second VM. A new VM is refused while draining or over
    /// capacity, before anything is recorded or downloaded.
    pub fn create(&self, request: CreateVm) -> Result<Created, Error> {
        self.create_as(request, None)
    }

    /// As [`Service::create`]; a VM provisioned from the start gets `id` when given (the
    /// fleet's front door chose it and claimed its slot under it). An `id` that names a VM
    /// already here is refused.
    pub fn create_as(&self, request: CreateVm, id: Option<VmId>) -> Result<Created, Error> {
        let asked = std::time::Instant::now();
        let guard = &self.fleet.guard;
        guard.check_image_url(&request.image.url)?;
        if let Some(url) = &request.callback_url {
            guard.check_callback_url(url)?;
        }
        self.hypervisor
            .check_available()
            .map_err(|e| Error::HypervisorMissing(e.code(), e.to_string()))?;
        self.check_fits_cached_gold(&request)?;
        let request = match self.hand_out(request, asked)? {
            pools::HandOut::Done(created) => return Ok(created),
            pools::HandOut::Cold(request) => *request,
        };
        self.create_cold_as(request, None, id)
    }

    /// A create below its gold image's minimum CPUs or memory (tart's config.json) is
    /// refused here when the image is cached; otherwise provisioning checks it once the
    /// image is here, before the clone.
    fn check_fits_cached_gold(&self, request: &CreateVm) -> Result<(), Error> {
        if !self.hypervisor.golds_have_minimums() {
            return Ok(());
        }
        let Some(gold) = self.fleet.gold.cached(&request.image.checksum) else {
            return Ok(());
        };
        match self
            .hypervisor
            .check_fits(gold.vm(), request.cpus, request.memory)
        {
            Err(err @ crate::hypervisor::HypervisorError::BelowMinimum { .. }) => {
                Err(Error::Invalid {
                    code: err.code(),
                    message: err.to_string(),
                })
            }
            // Anything else (an unreadable config.json) is the provisioning's to report.
            _ => Ok(()),
        }
    }

    /// A create provisioned from the start: a client's that no pool served, or (`pool`) a
    /// warm pool's own VM, recorded as belonging to it.
    fn create_cold(&self, request: CreateVm, pool: Option<&str>) -> Result<Created, Error> {
        self.create_cold_as(request, pool, None)
    }

    fn create_cold_as(
        &self,
        request: CreateVm,
        pool: Option<&str>,
        id: Option<VmId>,
    ) -> Result<Created, Error> {
        let vm = match self.admit(request, pool, id)? {
            Admitted::Existing(json) => return Ok(Created::Existing(json)),
            Admitted::New(vm) => *vm,
        };
        let id = vm.id;
        let pooled = vm.pool.is_some();
        // Outside `creating`: creates at once share one journal flush instead of each
        // waiting behind all the others'.
        let persisted = self.store.persist(&vm);
        let published = {
            // The VM leaves `recording` and enters the store in one step that admission
            // cannot see half done: it is counted once, never twice or not at all.
            let _creating = self.lock_creating();
            self.recording().remove(&id);
            let published = persisted.map(|recorded| {
                let json = recorded.json.clone();
                self.store.publish(vm, recorded);
                json
            });
            self.recorded.notify_all();
            published
        };
        let json = published.map_err(|e| {
            self.tasks.forget(id);
            store_error("the VM could not be recorded", e)
        })?;
        if pooled {
            crate::info!("vm={id} created for warm pool {}", pool.unwrap_or_default());
        } else {
            crate::info!("vm={id} created");
        }
        self.jobs
            .send(Job::Provision(id))
            .map_err(|_| Error::Internal("the provisioning pool has stopped".into()))?;
        Ok(Created::New(json))
    }

    /// Under `creating`: the VM the request's idempotency key already names, if any. A
    /// create or hand-out with the key that is still being recorded is waited for: its
    /// answer is this one's once it is durable (or, if its write fails, this one goes on).
    fn keyed<'a>(
        &'a self,
        mut creating: MutexGuard<'a, ()>,
        request: &CreateVm,
    ) -> Result<Keyed<'a>, Error> {
        let Some(key) = &request.name else {
            return Ok((creating, None));
        };
        loop {
            if let Some(vm) = self.store.find_by_name(key) {
                let differ = crate::guard::idempotency::differing_fields(&vm, request);
                if !differ.is_empty() {
                    return Err(Error::IdempotencyKeyReused(differ));
                }
                let json = self.store.json(vm.id).ok_or(Error::VmNotFound)?;
                return Ok((creating, Some(json)));
            }
            let is_key = |vm: &&Vm| vm.name.as_deref() == Some(key.as_str());
            let first = self.recording().values().find(is_key).cloned();
            let first = first.or_else(|| self.handing().values().find(is_key).cloned());
            let Some(first) = first else {
                return Ok((creating, None));
            };
            let differ = crate::guard::idempotency::differing_fields(&first, request);
            if !differ.is_empty() {
                return Err(Error::IdempotencyKeyReused(differ));
            }
            creating = self
                .recorded
                .wait(creating)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The decisions of a create, under `creating`: the idempotency key, the limits, drain.
    /// An admitted VM holds its place in `recording` until it is recorded or refused.
    fn admit(
        &self,
        request: CreateVm,
        pool: Option<&str>,
        id: Option<VmId>,
    ) -> Result<Admitted, Error> {
        let (creating, existing) = self.keyed(self.lock_creating(), &request)?;
        if let Some(json) = existing {
            return Ok(Admitted::Existing(json));
        }
        let recording = self.recording().len() as u64;
        let records = self.store.len() as u64 + recording;
        if self.fleet.max_records > 0 && records >= self.fleet.max_records {
            let shortage = capacity::Shortage::Records {
                count: records,
                limit: self.fleet.max_records,
            };
            crate::info!("create refused: {shortage}");
            return Err(Error::CapacityExhausted(shortage));
        }
        if let Some(since) = self.fleet.drain.since() {
            return Err(Error::Draining { since });
        }
        let admitted = capacity::check(
            self.fleet.limits,
            &self.store,
            self.hypervisor.running().snapshot().as_ref(),
            &self.fleet.data_dir,
            recording,
        );
        // The hypervisor's own refusal of a start, more recent than any listing.
        let admitted = match (admitted, self.hypervisor.running().host_full()) {
            (Ok(_), Some(message)) => Err(capacity::Shortage::Hypervisor { message }),
            (admitted, _) => admitted,
        };
        if let Err(shortage) = admitted {
            if matches!(shortage, capacity::Shortage::Disk { .. }) {
                // Unused gold images may be what fills the disk.
                self.fleet.gold.request_eviction();
            }
            crate::info!("create refused: {shortage}");
            return Err(Error::CapacityExhausted(shortage));
        }
        let id = match id {
            Some(id) if self.store.get(id).is_some() || self.recording().contains_key(&id) => {
                return Err(Error::invalid(
                    "vm-id-taken",
                    "the fleet placed this create under an id a VM here already has; retry the create",
                ));
            }
            Some(id) => id,
            None => VmId::new(),
        };
        let ttl = request.ttl.or(self.fleet.default_ttl);
        let now = crate::sys::time::rfc3339_now();
        let guestinfo_keys = request.guestinfo.keys();
        if !request.guestinfo.is_empty() {
            // Before the record is visible: a DELETE from then on forgets it with the task.
            self.tasks.get(id).hold_guestinfo(request.guestinfo);
        }
        let vm = Vm {
            id,
            image: Some(request.image),
            name: request.name,
            cpus: request.cpus,
            memory: request.memory,
            network_type: request.network_type,
            headless: request.headless,
            callback_url: request.callback_url,
            ip_address: String::new(),
            status: Status::Provisioning,
            guest_os: String::new(),
            error: None,
            progress: Progress::default(),
            created_at: now.clone(),
            updated_at: now,
            ttl,
            expires_at: ttl.map(|ttl| leases::expiry(crate::sys::time::now_ms(), ttl)),
            vmx_removed: Vec::new(),
            labels: request.labels,
            guestinfo_keys,
            keep: request.keep,
            ip_source: None,
            pool: pool.map(str::to_string),
        };
        self.recording().insert(id, vm.clone());
        drop(creating);
        Ok(Admitted::New(Box::new(vm)))
    }

    fn lock_creating(&self) -> MutexGuard<'_, ()> {
        self.creating.lock_unpoisoned()
    }

    /// Taken only under `creating`.
    fn recording(&self) -> MutexGuard<'_, HashMap<VmId, Vm>> {
        self.recording.lock_unpoisoned()
    }

    /// Taken only under `creating`.
    fn handing(&self) -> MutexGuard<'_, HashMap<VmId, Vm>> {
        self.handing.lock_unpoisoned()
    }

    /// Failed VMs last changed before `cutoff_ms` (Unix milliseconds), not being destroyed.
    pub fn failed_before(&self, cutoff_ms: i64) -> Vec<VmId> {
        self.store
            .records()
            .into_iter()
            .filter(|vm| vm.status == Status::Failed && vm.progress.phase != Phase::Deleting)
            .filter(|vm| {
                crate::sys::time::parse_rfc3339_ms(&vm.updated_at).is_some_and(|t| t < cutoff_ms)
            })
            .map(|vm| vm.id)
            .collect()
    }

    /// The VM's own log (VMware's `vmware.log`, tart's runner log), opened, with its length.
    pub fn vm_log(&self, id: VmId) -> Result<(std::fs::File, u64), Error> {
        if self.store.get(id).is_none() {
            return Err(Error::VmNotFound);
        }
        match self.hypervisor.open_log(&self.store.vm_ref(id)) {
            Ok(Some(opened)) => Ok(opened),
            Ok(None) => Err(Error::VmLogNotFound(id)),
            Err(err) => Err(Error::Internal(format!(
                "cannot read the log of VM {id}: {err}"
            ))),
        }
    }

    pub fn get(&self, id: VmId) -> Result<Arc<[u8]>, Error> {
        self.store.json(id).ok_or(Error::VmNotFound)
    }

    pub fn list(&self) -> Vec<Arc<[u8]>> {
        self.store.all_json()
    }

    /// `GET /vms` with `?label=` / `?status=`; decided on each VM's JSON, which a GET
    /// reads without waiting on a record's disk write.
    pub fn list_where(&self, filter: &VmFilter) -> Vec<Arc<[u8]>> {
        let mut all = self.store.all_json();
        if !filter.is_empty() {
            all.retain(|json| filter.matches_json(json));
        }
        all
    }

    /// Cancels provisioning, powers the VM off, has vmrun delete its files, removes its
    /// folder. Returns once all that is done.
    pub fn delete(&self, id: VmId) -> Result<(), Error> {
        if self.store.get(id).is_none() {
            return Err(Error::VmNotFound);
        }
        let task = self.tasks.get(id);
        task.cancel.cancel();
        self.destroy(id, &task)
    }

    /// The reaper's delete: destroys the VM if its lease is still over when the decision
    /// is taken; `Ok(false)` when a renew came first. The decision (setting the VM's cancel
    /// flag) is made under the record's lock, as a renew's check of that flag is, so a
    /// renew and a reap never both succeed.
    pub fn reap(&self, id: VmId, now_ms: i64) -> Result<bool, Error> {
        if self.store.get(id).is_none() {
            return Err(Error::VmNotFound);
        }
        let task = self.tasks.get(id);
        let mut claimed = false;
        self.store
            .update(id, Durability::MemoryOnly, |vm| {
                if leases::is_expired(vm, now_ms) {
                    task.cancel.cancel();
                    claimed = true;
                }
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !claimed {
            return Ok(false);
        }
        self.destroy(id, &task).map(|()| true)
    }

    /// VMs whose lease is over and that are not being destroyed, with their expiry.
    pub fn expired_leases(&self, now_ms: i64) -> Vec<(VmId, String)> {
        self.store
            .records()
            .into_iter()
            .filter(|vm| vm.progress.phase != Phase::Deleting && leases::is_expired(vm, now_ms))
            .map(|vm| (vm.id, vm.expires_at.unwrap_or_default()))
            .collect()
    }

    /// Extends the VM's lease to `ttl` seconds from now: the `ttl` given, else the VM's own,
    /// else the default. A VM without a lease gets one.
    pub fn renew(&self, id: VmId, ttl: Option<u64>) -> Result<Arc<[u8]>, Error> {
        let vm = self.store.get(id).ok_or(Error::VmNotFound)?;
        let ttl = ttl.or(vm.ttl).or(self.fleet.default_ttl).ok_or_else(|| {
            Error::invalid(
                "invalid-ttl",
                "this VM has no lease and the server no --default-ttl: send {\"ttl\": <seconds>}",
            )
        })?;
        let task = self.tasks.get(id);
        let now = crate::sys::time::now_ms();
        let mut deleting = false;
        let renewed = self
            .store
            .update(id, Durability::Disk, |vm| {
                if task.cancel.is_cancelled() || vm.progress.phase == Phase::Deleting {
                    deleting = true;
                } else {
                    vm.ttl = Some(ttl);
                    vm.expires_at = Some(leases::expiry(now, ttl));
                }
            })
            .map_err(|e| store_error("the lease could not be recorded", e))?
            .ok_or(Error::VmNotFound)?;
        if deleting {
            return Err(Error::VmDeleting);
        }
        crate::info!(
            "vm={id} lease renewed for {ttl} s, until {}",
            renewed.expires_at.unwrap_or_default()
        );
        self.store.json(id).ok_or(Error::VmNotFound)
    }

    /// `GET /vms/:id?wait=`: see [`Waiters::poll`].
    pub fn poll(
        &self,
        id: VmId,
        known: Option<&str>,
        wait: Duration,
        progress: bool,
    ) -> Result<crate::service::long_poll::Polled, Error> {
        self.fleet
            .waiters
            .poll(&self.store, id, known, wait, progress)
    }

    pub fn health(&self) -> Health {
        health::check(
            self.hypervisor.as_ref(),
            &self.fleet.data_dir,
            self.fleet.limits.min_free_disk,
            self.fleet.drain.since(),
            &self.fleet.gold.blocked(),
        )
    }

    /// Counts an answered request for `/metrics`.
    pub fn record_http_request(&self, method: &str, status: u16) {
        self.fleet.metrics.record_http_request(method, status);
    }

    /// The gold images: cached, downloading, and the original's archives.
    pub fn images(&self) -> Vec<ImageEntry> {
        self.fleet.gold.list()
    }

    pub fn image(&self, checksum: &str) -> Result<ImageEntry, Error> {
        self.fleet.gold.get(checksum).map_err(Error::from)
    }

    /// Downloads an image before any VM needs it (a local one only from allowed folders).
    pub fn prewarm(&self, spec: ImageSpec) -> Result<Prewarmed, Error> {
        self.fleet.guard.check_image_url(&spec.url)?;
        self.fleet.gold.prewarm(spec).map_err(Error::from)
    }

    /// Removes a gold image no VM depends on (or cancels its download).
    pub fn remove_image(&self, checksum: &str) -> Result<(), Error> {
        self.fleet.gold.remove(checksum).map_err(Error::from)
    }

    pub fn drain_state(&self) -> DrainState {
        DrainState {
            draining: self.fleet.drain.is_draining(),
            since: self.fleet.drain.since(),
            vms: self.store.len(),
        }
    }

    /// New VMs are refused from now on (the state survives a restart); existing ones run on.
    pub fn drain(&self) -> Result<DrainState, Error> {
        let drain = &self.fleet.drain;
        let was = drain.is_draining();
        let since = drain
            .start()
            .map_err(|e| Error::Internal(format!("cannot record the drain: {e}")))?;
        if !was {
            crate::warn!("draining since {since}: new VMs are refused, existing ones keep running");
        }
        Ok(self.drain_state())
    }

    pub fn undrain(&self) -> Result<DrainState, Error> {
        let drain = &self.fleet.drain;
        let was = drain.is_draining();
        drain
            .stop()
            .map_err(|e| Error::Internal(format!("cannot end the drain: {e}")))?;
        if was {
            crate::info!("drain ended: new VMs are accepted again");
        }
        Ok(self.drain_state())
    }

    /// `GET /metrics`: the counters, and the state in memory (no vmrun call).
    pub fn metrics_text(&self) -> String {
        let mut vms = VmsByStatus::default();
        for vm in self.store.records() {
            match vm.status {
                Status::Provisioning => vms.provisioning += 1,
                Status::Running => vms.running += 1,
                Status::Stopped => vms.stopped += 1,
                Status::Failed => vms.failed += 1,
            }
        }
        let running = self.hypervisor.running().snapshot();
        let snapshot = Snapshot {
            vms,
            capacity_used: capacity::used(&self.store, running.as_ref()),
            capacity_limit: u64::from(self.fleet.limits.max_vms),
            image_cache_bytes: self.fleet.gold.total_bytes(),
            draining: self.fleet.drain.is_draining(),
            long_polls_waiting: self.fleet.waiters.active() as u64,
            hypervisor_calls: self.hypervisor.call_counts(),
            pools: self.pool_counts(),
            pool_unmatched: self.fleet.pools.unmatched(),
        };
        self.fleet.metrics.render(&snapshot)
    }

    /// Powers off and removes a VM whose cancel flag is set; waits for its worker first,
    /// unless the worker runs vmrun on the gold VM for it: that call is not killed (a clone
    /// killed half way leaves the gold VM locked), the VM is deleted durably for every
    /// reader now, and the worker removes its files when the call ends.
    fn destroy(&self, id: VmId, task: &Task) -> Result<(), Error> {
        if let Some(buried) = task.hand_over(|| self.store.bury(id)) {
            buried.map_err(|e| store_error("the delete could not be recorded", e))?;
            crate::info!(
                "vm={id} deleted; {} works on its gold image for it, and its files go when that call ends",
                self.hypervisor.tool()
            );
            return Ok(());
        }
        let _busy = task.lock();
        let Some(before) = self.store.get(id) else {
            // Another DELETE finished first.
            return Err(Error::VmNotFound);
        };
        crate::info!("vm={id} deleting");
        self.update(id, |vm| vm.progress.phase = Phase::Deleting);
        if let Err(err) = self.destroy_files(id, &before) {
            // The VM is still there: show it as it was, not half-deleted, but powered on or
            // off as it now is: the stop may have gone through before deleteVM failed.
            let running = crate::hypervisor::running::runs_now(
                self.hypervisor.as_ref(),
                &self.store.vm_ref(id),
            );
            self.update_or_remember(id, |vm| {
                vm.progress.phase = before.progress.phase;
                match (vm.status, running) {
                    (Status::Running, Some(false)) => vm.status = Status::Stopped,
                    (Status::Stopped, Some(true)) => vm.status = Status::Running,
                    _ => {}
                }
            });
            crate::warn!("vm={id} delete failed: {err}");
            return Err(err);
        }
        self.store
            .remove(id)
            .map_err(|e| Error::DeleteFailed(format!("the VM's files are gone but {e}")))?;
        self.tasks.forget(id);
        crate::info!("vm={id} deleted");
        Ok(())
    }

    fn destroy_files(&self, id: VmId, before: &Vm) -> Result<(), Error> {
        let vm = self.store.vm_ref(id);
        if never_cloned(before) && !self.hypervisor.vm_exists(&vm) {
            // Deleted while it waited (for its image, for the gold VM): the hypervisor
            // never heard of it, and nothing is asked of it now.
            return Ok(());
        }
        // vmrun knows a running VM by its path even when its VMX was removed behind our
        // back: always ask for a stop, or such a VM would run on with no record.
        self.hypervisor
            .stop(&vm, true, &crate::sys::cancel::Cancel::new())
            .or_else(tolerate_unopenable)
            .map_err(delete_error)?;
        if !self.hypervisor.vm_exists(&vm) {
            // Failed before the clone, or removed: nothing of the hypervisor's is left.
            return Ok(());
        }
        // VMware can release its locks (and its "powered on" state) a moment after
        // power-off: Packer waits up to 120 s; this waits up to about a minute.
        let mut attempt = 0;
        loop {
            match self.hypervisor.delete_vm(&vm) {
                Ok(()) => return Ok(()),
                // Still listed as running: the stop did not take, and waiting will not help.
                Err(err @ HypervisorError::AlreadyRunning { .. })
                    if crate::hypervisor::running::runs_now(self.hypervisor.as_ref(), &vm)
                        != Some(false) =>
                {
                    return Err(delete_error(err));
                }
                Err(HypervisorError::VmLocked { .. } | HypervisorError::AlreadyRunning { .. })
                    if attempt < DELETE_RETRIES =>
                {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(500) * attempt.min(4));
                }
                Err(err) => return tolerate_unopenable(err).map_err(delete_error),
            }
        }
    }

    /// As `update`, but a record that cannot be written (read-only or damaged folder) is
    /// still changed in memory, carrying the write error: after a stop that went through,
    /// the API must say `stopped`, not what the stale file says.
    fn update_or_remember(&self, id: VmId, change: impl Fn(&mut Vm)) {
        let Err(err) = self.store.update(id, Durability::Disk, &change) else {
            return;
        };
        crate::error!("vm={id} {err}; the change is kept in memory only");
        let noted = self.store.update(id, Durability::MemoryOnly, |vm| {
            change(vm);
            vm.error = Some(crate::vm::VmError {
                code: "record-unwritable".into(),
                message: format!(
                    "{err}; until it can be written, this state is known to this server only"
                ),
                log_tail: None,
            });
        });
        if let Err(err) = noted {
            crate::error!("vm={id} {err}");
        }
    }

    fn update(&self, id: VmId, change: impl FnOnce(&mut Vm)) {
        if let Err(err) = self.store.update(id, Durability::Disk, change) {
            crate::error!("vm={id} {err}");
        }
    }
}

/// A full disk is the operator's to fix (507 `disk-full`), anything else is ours.
fn store_error(what: &str, e: crate::vm::store::StoreError) -> Error {
    if e.code() == "disk-full" {
        Error::DiskFull(format!("{what}: {e}"))
    } else {
        Error::Internal(format!("{what}: {e}"))
    }
}
/// A VM still provisioning that had not reached its clone: no vmrun call ever named it.
fn never_cloned(vm: &Vm) -> bool {
    vm.status == Status::Provisioning && vm.progress.phase.precedes_clone()
}

/// `deleteVM` retries while VMware still holds a VM it just powered off (about a minute).
const DELETE_RETRIES: u32 = 30;

/// A VMX that vmrun cannot open cannot be running either; its folder is removed all the same.
fn tolerate_unopenable(err: HypervisorError) -> Result<(), HypervisorError> {
    match err {
        HypervisorError::VmOpenError { .. } => Ok(()),
        other => Err(other),
    }
}

fn delete_error(err: HypervisorError) -> Error {
    match err {
        HypervisorError::VmLocked { .. } => Error::VmLocked(err.to_string()),
        HypervisorError::NotFound { .. } => Error::HypervisorMissing(err.code(), err.to_string()),
        other => Error::DeleteFailed(other.to_string()),
    }
}
