//! The VM service: what the API's calls do, without HTTP. Creates record and queue, reads
//! answer from memory, deletes wait for the VM to be gone; `recover` makes the records agree
//! with the disk and with vmrun after a restart.

pub mod capacity;
pub mod drain;
mod error;
pub mod health;
pub mod leases;
pub mod long_poll;
pub mod metrics;
pub mod reconcile;
pub mod retention;
#[cfg(test)]
mod tests;

pub use error::Error;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::vm::VmId;
use crossbeam_channel::Sender;

use crate::api::auth::Auth;
use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::image::gold::GoldCache;
use crate::provision::tasks::{Task, Tasks};
use crate::provision::Job;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::labels::VmFilter;
use crate::vm::store::{Durability, RECORD_FILE};
use crate::vm::CreateVm;
use crate::vm::{Phase, Progress, Status, Vm, VmStore};
use capacity::Limits;
use drain::Drain;
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
    /// Signalled, with `creating` held, when a VM leaves `recording`.
    recorded: Condvar,
    reported: Mutex<HashSet<PathBuf>>,
    fleet: Fleet,
}

/// What running one host of a fleet adds to the VM API: admission (capacity, drain),
/// leases, long polls, the image cache, health, metrics and auth.
pub struct Fleet {
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Lease in seconds of a VM created without `ttl`.
    pub default_ttl: Option<u64>,
    pub drain: Drain,
    pub auth: Auth,
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
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    Startup,
    Periodic,
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
            recorded: Condvar::new(),
            reported: Mutex::new(HashSet::new()),
            fleet,
        }
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Records the VM and queues it. With an idempotency key that an existing VM carries,
    /// returns that VM instead (`Created::Existing`): a coordinator that lost the answer to
    /// its POST can retry without leaking a second VM. A new VM is refused while draining
    /// or over capacity, before anything is recorded or downloaded.
    pub fn create(&self, request: CreateVm) -> Result<Created, Error> {
        self.hypervisor
            .check_available()
            .map_err(|e| Error::HypervisorMissing(e.to_string()))?;
        let vm = match self.admit(request)? {
            Admitted::Existing(json) => return Ok(Created::Existing(json)),
            Admitted::New(vm) => *vm,
        };
        let id = vm.id;
        // Outside `creating`: creates at once wait on their fsyncs side by side (the file
        // system commits them together) instead of each behind all the others'.
        let persisted = self.store.persist(&vm);
        let published = {
            // The VM leaves `recording` and enters the store in one step that admission
            // cannot see half done: it is counted once, never twice or not at all.
            let _creating = self.lock_creating();
            self.recording().remove(&id);
            let published = persisted.inspect(|json| self.store.publish(vm, json.clone()));
            self.recorded.notify_all();
            published
        };
        let json = published.map_err(|e| {
            self.tasks.forget(id);
            store_error("the VM could not be recorded", e)
        })?;
        crate::info!("vm={id} created");
        self.jobs
            .send(Job::Provision(id))
            .map_err(|_| Error::Internal("the provisioning pool has stopped".into()))?;
        Ok(Created::New(json))
    }

    /// The decisions of a create, under `creating`: the idempotency key, the limits, drain.
    /// An admitted VM holds its place in `recording` until it is recorded or refused.
    fn admit(&self, request: CreateVm) -> Result<Admitted, Error> {
        let mut creating = self.lock_creating();
        if let Some(key) = &request.name {
            loop {
                if let Some(vm) = self.store.find_by_name(key) {
                    let differ = crate::guard::idempotency::differing_fields(&vm, &request);
                    if !differ.is_empty() {
                        return Err(Error::IdempotencyKeyReused(differ));
                    }
                    return self
                        .store
                        .json(vm.id)
                        .map(Admitted::Existing)
                        .ok_or(Error::VmNotFound);
                }
                let first = self
                    .recording()
                    .values()
                    .find(|vm| vm.name.as_deref() == Some(key.as_str()))
                    .cloned();
                let Some(first) = first else { break };
                let differ = crate::guard::idempotency::differing_fields(&first, &request);
                if !differ.is_empty() {
                    return Err(Error::IdempotencyKeyReused(differ));
                }
                // The first create with this key is still being recorded: its answer is
                // this one's once it is durable (or, if its write fails, this one tries).
                creating = self
                    .recorded
                    .wait(creating)
                    .unwrap_or_else(|p| p.into_inner());
            }
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
            self.hypervisor.as_ref(),
            &self.fleet.data_dir,
            recording,
        );
        if let Err(shortage) = admitted {
            if matches!(shortage, capacity::Shortage::Disk { .. }) {
                // Unused gold images may be what fills the disk.
                self.fleet.gold.request_eviction();
            }
            crate::info!("create refused: {shortage}");
            return Err(Error::CapacityExhausted(shortage));
        }
        let ttl = request.ttl.or(self.fleet.default_ttl);
        let now = crate::sys::log::rfc3339_now();
        let id = VmId::new();
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
            expires_at: ttl.map(|ttl| leases::expiry(leases::now_ms(), ttl)),
            vmx_removed: Vec::new(),
            labels: request.labels,
            guestinfo_keys,
            keep: request.keep,
            ip_source: None,
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

    /// Failed VMs last changed before `cutoff_ms` (Unix milliseconds), not being destroyed.
    pub fn failed_before(&self, cutoff_ms: i64) -> Vec<VmId> {
        self.store
            .records()
            .into_iter()
            .filter(|vm| vm.status == Status::Failed && vm.progress.phase != Phase::Deleting)
            .filter(|vm| leases::parse_rfc3339_ms(&vm.updated_at).is_some_and(|t| t < cutoff_ms))
            .map(|vm| vm.id)
            .collect()
    }

    /// The VM's `vmware.log`, opened, with its length.
    pub fn vm_log(&self, id: VmId) -> Result<(std::fs::File, u64), Error> {
        if self.store.get(id).is_none() {
            return Err(Error::VmNotFound);
        }
        match crate::hypervisor::vmware_log::open(&self.store.vm_dir(id)) {
            Ok(Some(opened)) => Ok(opened),
            Ok(None) => Err(Error::VmLogNotFound(id)),
            Err(err) => Err(Error::Internal(format!(
                "cannot read the vmware.log of VM {id}: {err}"
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
        let now = leases::now_ms();
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
        )
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
            vmrun_calls: self.hypervisor.call_counts(),
        };
        self.fleet.metrics.render(&snapshot)
    }

    /// Powers off and removes a VM whose cancel flag is set; waits for its worker first.
    fn destroy(&self, id: VmId, task: &Task) -> Result<(), Error> {
        let _busy = task.lock();
        let Some(before) = self.store.get(id) else {
            // Another DELETE finished first.
            return Err(Error::VmNotFound);
        };
        crate::info!("vm={id} deleting");
        self.update(id, |vm| vm.progress.phase = Phase::Deleting);
        if let Err(err) = self.destroy_files(id) {
            // The VM is still there: show it as it was, not half-deleted, but powered on or
            // off as it now is: the stop may have gone through before deleteVM failed.
            let vmx = reconcile::canonical(&self.store.vmx_path(id));
            let running =
                reconcile::running_set(self.hypervisor.as_ref()).map(|set| set.contains(&vmx));
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

    fn destroy_files(&self, id: VmId) -> Result<(), Error> {
        let vmx = self.store.vmx_path(id);
        // vmrun knows a running VM by its path even when its VMX was removed behind our
        // back: always ask it to stop, or such a VM would run on with no record.
        self.hypervisor
            .stop(&vmx, true, &crate::sys::cancel::Cancel::new())
            .or_else(tolerate_unopenable)
            .map_err(delete_error)?;
        if !vmx.exists() {
            // Failed before the clone, or removed: nothing of VMware's is left to delete.
            return Ok(());
        }
        // VMware can release its locks (and its "powered on" state) a moment after
        // power-off: Packer waits up to 120 s; this waits up to about a minute.
        let mut attempt = 0;
        loop {
            match self.hypervisor.delete_vm(&vmx) {
                Ok(()) => return Ok(()),
                // Still listed as running: the stop did not take, and waiting will not help.
                Err(err @ HypervisorError::AlreadyRunning { .. })
                    if reconcile::running_set(self.hypervisor.as_ref())
                        .is_none_or(|set| set.contains(&reconcile::canonical(&vmx))) =>
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

    /// Brings the records in line with the machine. At start (`Startup`), also deals with
    /// what a stop left half done: provisioning that was interrupted is reported (not
    /// silently retried), a VM waiting for its IP is watched again, an acknowledged delete is
    /// finished, stale VMware locks are removed. Every time: one `vmrun list` updates
    /// running/stopped, a record whose folder vanished is failed, a VM folder no record
    /// knows is adopted or reported.
    pub fn reconcile(self: &Arc<Self>, when: Reconcile) {
        let running = reconcile::running_set(self.hypervisor.as_ref());
        for id in self.store.ids() {
            if self.tasks.is_busy(id) {
                continue;
            }
            let Some(mut vm) = self.store.get(id) else {
                continue;
            };
            let vmx = self.store.vmx_path(id);
            let runs = running
                .as_ref()
                .map(|set| set.contains(&reconcile::canonical(&vmx)));
            if when == Reconcile::Startup {
                if let Some(deadline) = self.start_in_flight_until(&vm, runs) {
                    // Its locks are the start's own, and whether it runs is not known yet.
                    self.wait_out_start(id, deadline);
                    continue;
                }
                // First, before any recovery runs vmrun against the VM: locks VMware left
                // when it died with the host make start and deleteVM answer "in use", and a
                // VM interrupted mid-provisioning or mid-delete has them as much as any.
                if let (Some(false), Some(running)) = (runs, &running) {
                    reconcile::remove_locks_in(&self.store.vm_dir(id), running);
                }
                self.recover_interrupted(&vm, runs);
                match self.store.get(id) {
                    Some(now) => vm = now,
                    None => continue,
                }
            }
            if vm.progress.phase == Phase::Deleting || vm.status == Status::Provisioning {
                continue;
            }
            let has_vm = matches!(vm.status, Status::Running | Status::Stopped);
            if has_vm && !vmx.exists() {
                if vm.error.is_none() {
                    self.files_missing(id, &vmx);
                }
                continue;
            }
            let Some(is_running) = runs else { continue };
            match (vm.status, is_running) {
                (Status::Running, false) => {
                    crate::warn!("vm={id} is no longer running");
                    self.update(id, |vm| vm.status = Status::Stopped);
                }
                (Status::Stopped, true) => {
                    crate::info!("vm={id} is running again");
                    self.update(id, |vm| vm.status = Status::Running);
                }
                (Status::Failed, true) => self.failed_but_running(&vm, &vmx),
                _ => {}
            }
        }
        self.adopt_orphans(running.as_ref());
        if when == Reconcile::Startup {
            crate::info!("recovered {} VMs", self.store.len());
        }
    }

    /// Someone removed the VM's files (Fusion's "Move to Trash", a clean-up script). The
    /// record says so until the VM is deleted; if the whole folder went, the record went
    /// with it and the change lives in memory only.
    fn files_missing(&self, id: VmId, vmx: &Path) {
        crate::warn!("vm={id} its VMX {} is gone", vmx.display());
        let durability = if self.store.vm_dir(id).exists() {
            Durability::Disk
        } else {
            Durability::MemoryOnly
        };
        let message = format!(
            "the VM's files are gone ({} is missing): someone removed them outside osx-builder; delete this VM",
            vmx.display()
        );
        if let Err(err) = self
            .store
            .update(id, durability, |vm| vm.fail("files-missing", message))
        {
            crate::error!("vm={id} {err}");
        }
    }

    /// `runs`: whether `vmrun list` shows the VM running (`None`: vmrun could not tell).
    fn recover_interrupted(self: &Arc<Self>, vm: &Vm, runs: Option<bool>) {
        let id = vm.id;
        if vm.progress.phase == Phase::Deleting {
            let service = self.clone();
            thread::spawn(move || {
                if let Err(err) = service.delete(id) {
                    crate::warn!("vm={id} finishing an interrupted delete failed: {err}");
                }
            });
        } else if vm.status == Status::Provisioning
            && runs == Some(true)
            && vm.progress.phase == Phase::Starting
        {
            // vmrun outlived the server and the start went through: the VM is configured
            // and runs, so it is running (not a failed VM that runs unseen) and its IP is
            // watched as if the server had never stopped.
            crate::warn!("vm={id} was interrupted at step starting but runs; watching for its IP");
            self.update(id, |vm| {
                vm.status = Status::Running;
                vm.progress.phase = Phase::WaitingForIp;
            });
            let _ = self.jobs.send(Job::WatchIp(id));
        } else if vm.status == Status::Provisioning {
            let phase = vm.progress.phase;
            crate::warn!(
                "vm={id} provisioning was interrupted at step {}",
                phase.as_str()
            );
            self.update(id, |vm| vm.fail(INTERRUPTED, interrupted_message(phase)));
        } else if vm.status == Status::Running
            && vm.progress.phase == Phase::WaitingForIp
            && runs != Some(false)
        {
            // Not when it was powered off meanwhile: the IP query would fail the VM, which
            // the reconcile shows as stopped instead.
            let _ = self.jobs.send(Job::WatchIp(id));
        }
    }

    /// When a VM's record says its `vmrun start` was under way at the stop and vmrun does
    /// not list it running: until when that start, outliving the server, may still run (the
    /// record was written just before the start began; vmrun kills it at its timeout).
    fn start_in_flight_until(&self, vm: &Vm, runs: Option<bool>) -> Option<Instant> {
        if vm.status != Status::Provisioning
            || vm.progress.phase != Phase::Starting
            || runs == Some(true)
        {
            return None;
        }
        let began_ms = leases::parse_rfc3339_ms(&vm.updated_at)?;
        let timeout = self.hypervisor.start_timeout() + START_GRACE;
        let left_ms = began_ms + timeout.as_millis() as i64 - leases::now_ms();
        (left_ms > 0).then(|| Instant::now() + Duration::from_millis(left_ms as u64))
    }

    /// Watches a start that may still be in flight until vmrun lists the VM (then it runs
    /// and is watched for its IP, as if the server had never stopped) or the start's time
    /// is up (then it failed: its locks are stale and go, and the VM is `interrupted`).
    /// Holds the VM's task meanwhile: the reconcile leaves it alone, a DELETE takes over.
    fn wait_out_start(self: &Arc<Self>, id: VmId, deadline: Instant) {
        let service = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("start-wait-{id}"))
            .spawn(move || service.await_start(id, deadline));
        if let Err(err) = spawned {
            crate::error!("vm={id} cannot wait for its start: {err}");
        }
    }

    fn await_start(&self, id: VmId, deadline: Instant) {
        let task = self.tasks.get(id);
        let busy = task.lock();
        let secs = deadline.saturating_duration_since(Instant::now()).as_secs();
        crate::warn!(
            "vm={id} was at step starting when the server stopped and vmrun does not list it yet: waiting up to {secs} s for its start to end"
        );
        let vmx = self.store.vmx_path(id);
        let running = loop {
            if task.cancel.is_cancelled() || self.store.get(id).is_none() {
                return;
            }
            let running = reconcile::running_set(self.hypervisor.as_ref());
            if let Some(set) = &running {
                if set.contains(&reconcile::canonical(&vmx)) {
                    crate::warn!(
                        "vm={id} its interrupted start went through: running, watching for its IP"
                    );
                    self.update(id, |vm| {
                        vm.status = Status::Running;
                        vm.progress.phase = Phase::WaitingForIp;
                    });
                    drop(busy);
                    let _ = self.jobs.send(Job::WatchIp(id));
                    return;
                }
            }
            if Instant::now() >= deadline {
                break running;
            }
            thread::sleep(START_POLL);
        };
        if let Some(running) = &running {
            reconcile::remove_locks_in(&self.store.vm_dir(id), running);
        }
        crate::warn!("vm={id} provisioning was interrupted at step starting and it never ran");
        self.update(id, |vm| {
            vm.fail(INTERRUPTED, interrupted_message(Phase::Starting))
        });
    }

    /// vmrun runs a VM whose record says it failed. A start that a stop of the server cut
    /// short and that went through after all is ours: the VM is running again. Anything
    /// else is stopped: a failed VM must not run on unseen, holding a slot and memory.
    fn failed_but_running(&self, vm: &Vm, vmx: &Path) {
        let id = vm.id;
        let interrupted_start = vm.error.as_ref().is_some_and(|e| {
            e.code == INTERRUPTED && e.message == interrupted_message(Phase::Starting)
        });
        if interrupted_start {
            crate::warn!("vm={id} failed as interrupted at step starting, but runs: its start went through; running, watching for its IP");
            self.update(id, |vm| {
                vm.status = Status::Running;
                vm.progress.phase = Phase::WaitingForIp;
                vm.error = None;
            });
            let _ = self.jobs.send(Job::WatchIp(id));
            return;
        }
        if vm.keep {
            // Kept on purpose (`?keep=true`, `--keep-failed`): someone is to look at it.
            return;
        }
        let task = self.tasks.get(id);
        let _busy = task.lock();
        let code = vm.error.as_ref().map_or("", |e| e.code.as_str());
        crate::warn!("vm={id} is failed ({code}) but vmrun lists it running: stopping it hard");
        match self
            .hypervisor
            .stop(vmx, true, &crate::sys::cancel::Cancel::new())
        {
            Ok(()) => crate::info!("vm={id} stopped"),
            Err(err) => crate::warn!("vm={id} failed and still runs: stop hard failed: {err}"),
        }
    }

    /// Folders in `vms/` without a record: adopted when they hold `<id>.vmx`, otherwise
    /// reported once. Never deleted: they may be someone's work.
    fn adopt_orphans(&self, running: Option<&HashSet<PathBuf>>) {
        let Ok(entries) = std::fs::read_dir(self.store.root()) else {
            return;
        };
        // A create's folder appears before its map entry: under this lock such a folder's
        // VM is in `recording` until the store has it.
        let _creating = self.lock_creating();
        for entry in entries.flatten() {
            let dir = entry.path();
            // A delete on its way out (creates hold `creating`, as this does).
            if !dir.is_dir() || crate::vm::store::is_transient(&entry.file_name()) {
                continue;
            }
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(VmId::parse);
            // Checked now, not from a list taken before: a create may have just added it.
            if id.is_some_and(|id| {
                self.store.get(id).is_some() || self.recording().contains_key(&id)
            }) {
                continue;
            }
            if dir.join(RECORD_FILE).exists() {
                if !self.already_reported(&dir) {
                    crate::warn!(
                        "left alone: {} (its {RECORD_FILE} is not a valid record); fix or remove it by hand",
                        dir.display()
                    );
                }
                continue;
            }
            match reconcile::adopt(&dir, running) {
                Ok(vm) => {
                    let id = vm.id;
                    let watch = vm.progress.phase == Phase::WaitingForIp;
                    match self.store.insert(vm) {
                        Ok(_) => {
                            crate::info!("vm={id} adopted from {}", dir.display());
                            if watch {
                                let _ = self.jobs.send(Job::WatchIp(id));
                            }
                        }
                        Err(err) => crate::error!("vm={id} cannot adopt: {err}"),
                    }
                }
                Err(reason) => {
                    if !self.already_reported(&dir) {
                        crate::warn!(
                            "left alone: {} ({reason}); remove it by hand if it is not a VM you need",
                            dir.display()
                        );
                    }
                }
            }
        }
    }

    /// True if `dir` was reported before; remembers it otherwise.
    fn already_reported(&self, dir: &Path) -> bool {
        let mut reported = self.reported.lock_unpoisoned();
        !reported.insert(dir.to_path_buf())
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

const INTERRUPTED: &str = "interrupted";
/// Past the start timeout: vmrun's deadline kills the call a moment after it expires.
const START_GRACE: Duration = Duration::from_secs(2);
const START_POLL: Duration = Duration::from_millis(250);

fn interrupted_message(phase: Phase) -> String {
    format!(
        "the server stopped while this VM was at step {}; delete it and create another",
        phase.as_str()
    )
}

/// A full disk is the operator's to fix (507 `disk-full`), anything else is ours.
fn store_error(what: &str, e: crate::vm::store::StoreError) -> Error {
    if e.code() == "disk-full" {
        Error::DiskFull(format!("{what}: {e}"))
    } else {
        Error::Internal(format!("{what}: {e}"))
    }
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
        HypervisorError::NotFound { .. } => Error::HypervisorMissing(err.to_string()),
        other => Error::DeleteFailed(other.to_string()),
    }
}

/// Runs `reconcile(Periodic)` every `interval` on a thread of its own.
pub fn start_reconciler(service: Arc<Service>, interval: Duration) {
    let spawned = thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || loop {
            thread::sleep(interval);
            service.reconcile(Reconcile::Periodic);
        });
    if let Err(err) = spawned {
        crate::error!("cannot start the reconcile thread: {err}; states are checked only at start");
    }
}
