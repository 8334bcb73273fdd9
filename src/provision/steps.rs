//! The steps of provisioning one VM, each recorded in the VM's `progress.phase` before it
//! runs, so that a failure (or a crash) says where it happened.

use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use crate::vm::VmId;

use super::tasks::Task;
use super::{Job, Provisioner};
use crate::hypervisor::{Call, GoldVm, HypervisorError, VmRef, VmSettings};
use crate::image::gold_locks::GoldState;
use crate::image::{ImageError, ImagePhase, ImageProgress};
use crate::sys::cancel::Cancel;
use crate::vm::guestinfo::GuestInfo;
use crate::vm::store::Durability;
use crate::vm::{Phase, Status, Vm};

/// Why provisioning stopped early.
pub enum Stop {
    /// DELETE asked for it; DELETE owns the record from here.
    Cancelled,
    Failed {
        code: String,
        message: String,
    },
}

impl Stop {
    pub(super) fn failed(code: &str, message: impl Into<String>) -> Self {
        Self::Failed {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<HypervisorError> for Stop {
    fn from(err: HypervisorError) -> Self {
        match err {
            HypervisorError::Cancelled { .. } => Stop::Cancelled,
            other => Stop::failed(other.code(), other.to_string()),
        }
    }
}

impl From<ImageError> for Stop {
    fn from(err: ImageError) -> Self {
        match err {
            ImageError::Cancelled => Stop::Cancelled,
            other => Stop::failed(other.code(), format!("gold image: {other}")),
        }
    }
}

impl Provisioner {
    pub fn run(&self, job: Job) {
        let id = match job {
            Job::Provision(id) | Job::WatchIp(id) => id,
        };
        let task = self.tasks.get(id);
        let _busy = task.lock();
        if task.cancel.is_cancelled() {
            return;
        }
        let Some(vm) = self.store.get(id) else {
            return;
        };
        let started = Instant::now();
        let result = match job {
            // Taken out of the task whatever happens next, so the values go when this ends.
            Job::Provision(_) => self.provision(&vm, &task, task.take_guestinfo()),
            // Restarted mid-wait: when it booted is unknown, so no boot-to-IP time.
            Job::WatchIp(_) => self.watch_ip(&vm, &task.cancel, None),
        };
        if task.is_handed() {
            self.remove_handed(id);
            return;
        }
        match result {
            Ok(()) => {
                // A VM that never reported an IP runs, but is not what was asked for.
                let timed_out = self
                    .store
                    .get(id)
                    .is_some_and(|vm| vm.progress.phase == Phase::IpTimeout);
                self.metrics
                    .record_provision(if timed_out { "ip-timeout" } else { "ok" });
                crate::info!(
                    vm = id, duration_ms = started.elapsed().as_millis();
                    "provisioned in {:.1}s",
                    started.elapsed().as_secs_f64()
                )
            }
            Err(Stop::Cancelled) => {
                crate::info!("vm={id} provisioning cancelled");
                return;
            }
            Err(Stop::Failed { code, message }) => {
                self.metrics.record_provision(&code);
                crate::warn!(vm = id, code = &code; "failed: {code}: {message}");
                self.fail_vm(id, &code, message);
            }
        }
        self.fire_callback(id);
    }

    fn provision(&self, vm: &Vm, task: &Task, guestinfo: Option<GuestInfo>) -> Result<(), Stop> {
        let cancel = &task.cancel;
        let id = vm.id;
        let guestinfo = guestinfo.unwrap_or_default();
        if guestinfo.keys() != vm.guestinfo_keys {
            return Err(Stop::failed(
                "guestinfo-lost",
                "this VM's guestinfo is no longer held (the server restarted before the VM was configured); delete it and create another",
            ));
        }
        let Some(image) = &vm.image else {
            return Err(Stop::failed(
                "no-image",
                "this VM has no image to provision from; delete it",
            ));
        };
        self.hypervisor.check_available()?;
        // A cached image is not downloaded: recording that phase would cost a durable
        // write (two fsyncs) for a step that takes microseconds. A download that is not
        // cached waits for a `--max-downloads` slot first (the image's own progress says when
        // it has one): until then the VM is queued, not downloading.
        if self.images.lookup(&image.checksum).is_none() {
            self.set_phase(id, Phase::QueuedDownload);
        }
        let mut last_phase = Phase::QueuedDownload;
        let gold = self
            .images
            .ensure(image, cancel, &mut |progress: &ImageProgress| {
                let phase = image_phase(progress.phase);
                let durability = if phase == last_phase {
                    Durability::MemoryOnly
                } else {
                    Durability::Disk
                };
                last_phase = phase;
                self.record_with(id, durability, |vm| {
                    vm.progress.phase = phase;
                    vm.progress.bytes_downloaded = progress.bytes_done;
                    vm.progress.bytes_total = progress.bytes_total;
                });
            })
            .map_err(|err| match err {
                // The download was cancelled, not this VM (DELETE /images): it fails.
                ImageError::Cancelled if !cancel.is_cancelled() => {
                    Stop::failed(err.code(), format!("gold image: {err}"))
                }
                other => Stop::from(other),
            })?;
        self.gold.touch(&gold, image);
        check(cancel)?;
        // The create was admitted before the image was here to say what it needs.
        self.hypervisor.check_fits(gold.vm(), vm.cpus, vm.memory)?;

        let vm_ref = self.store.vm_ref(id);
        {
            let lock = self.gold_locks.get(&gold.checksum);
            // A VM waiting here has run nothing yet: a DELETE takes it out of the queue.
            let mut gold_state = lock_unless_cancelled(&lock, cancel)?;
            if !task.enter_gold() {
                return Err(Stop::Cancelled);
            }
            // From here until the end of the block, vmrun works on the gold VM: a DELETE
            // no longer kills it, but hands this VM's removal to this worker.
            let _gold_work = GoldWork(task);
            if !gold_state.prepared {
                self.set_phase(id, Phase::PreparingGold);
                self.hypervisor.prepare_gold(gold.vm())?;
                gold_state.prepared = true;
            }
            check(cancel)?;
            self.set_phase(id, Phase::Cloning);
            // The clone goes into the VM's folder. Until the first durable change of its
            // record (the phase above, unless that write failed) the record was only a line
            // of the store's journal, and the folder did not exist.
            self.store
                .settle(id)
                .map_err(|e| Stop::failed(e.code(), e.to_string()))?;
            let cloning = Instant::now();
            // Never cancelled: killed half way, it would leave its lock on the gold VM.
            let cloned = self.hypervisor.clone_vm(gold.vm(), &vm_ref, cancel);
            self.note_gold_blocked(gold.vm(), &cloned);
            cloned?;
            self.metrics.observe_clone(cloning.elapsed());
        }
        check(cancel)?;

        self.set_phase(id, Phase::Configuring);
        let image = serde_json::to_value(&vm.image)
            .map_err(|e| Stop::failed("vmx-edit-failed", e.to_string()))?;
        let settings = VmSettings {
            cpus: vm.cpus,
            memory_mb: vm.memory,
            network_type: vm.network_type.as_str(),
            headless: vm.headless,
            image,
        };
        let configured = self
            .hypervisor
            .configure(&vm_ref, gold.vm(), &settings, &guestinfo)?;
        if !configured.removed.is_empty() {
            crate::warn!(
                "vm={id} removed {} VMX line(s) that reach outside the VM: {}",
                configured.removed.len(),
                configured.removed.join("; ")
            );
        }
        check(cancel)?;

        // One durable write for both: each costs two fsyncs.
        self.record(id, |vm| {
            vm.guest_os = configured.guest_os;
            if !configured.removed.is_empty() {
                vm.vmx_removed = configured.removed;
            }
            vm.progress.phase = Phase::Starting;
        });
        let started = self.start_when_a_slot_frees(vm, &vm_ref, cancel);
        if let Err(err) = started {
            // A start has been seen to fail while the VM did start: only the listing tells,
            // and a running VM behind a failed record would hold a place.
            let runs = crate::hypervisor::running::running_set(self.hypervisor.as_ref())
                .map(|set| set.contains(&crate::hypervisor::running::canonical(&vm_ref.dir)));
            match (&err, runs) {
                (HypervisorError::Cancelled { .. }, _) => return Err(Stop::Cancelled),
                (_, Some(true)) => {
                    crate::warn!(
                        "vm={id} {err}; but the hypervisor lists it running, so it started"
                    );
                }
                // `fail_vm` stops it (phase `starting`), unless it is to be kept.
                _ => return Err(Stop::from(err)),
            }
        }
        let booted = Instant::now();
        self.record(id, |vm| {
            vm.status = Status::Running;
            vm.progress.phase = Phase::WaitingForIp;
        });
        self.watch_ip(vm, cancel, Some(booted))
    }

    /// Starts the VM. A start the hypervisor refuses for the host's own limit (tart: a
    /// third macOS VM) is not a failure of this VM: it waits in phase `waiting-for-slot`
    /// (creates meanwhile get 503 capacity-exhausted, see admission) and starts when a VM
    /// stops, trying again every [`SLOT_RETRY`] for VMs the server does not see; after
    /// `--ip-wait-timeout` it fails `host-vm-limit`.
    fn start_when_a_slot_frees(
        &self,
        vm: &Vm,
        vm_ref: &VmRef,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        let running = self.hypervisor.running();
        let give_up = Instant::now() + self.settings.ip_wait_timeout;
        let mut waiting = false;
        loop {
            match self.hypervisor.start(vm_ref, vm.headless, cancel) {
                Err(HypervisorError::HostLimit { call, message }) => {
                    running.note_host_full(&message);
                    if Instant::now() >= give_up {
                        return Err(HypervisorError::HostLimit { call, message });
                    }
                    if !waiting {
                        waiting = true;
                        crate::warn!(
                            "vm={} {}: waiting for a slot",
                            vm.id,
                            HypervisorError::HostLimit {
                                call,
                                message: message.clone()
                            }
                        );
                        self.set_phase(vm.id, Phase::WaitingForSlot);
                    }
                    let retry = Instant::now() + SLOT_RETRY;
                    while Instant::now() < retry && running.host_full().is_some() {
                        if cancel.is_cancelled() {
                            return Err(HypervisorError::Cancelled {
                                call: Call {
                                    tool: self.hypervisor.tool(),
                                    command: "start",
                                    vm: Some(vm_ref.dir.clone()),
                                },
                            });
                        }
                        thread::sleep(GOLD_WAIT_POLL * 20);
                    }
                }
                other => {
                    if waiting && other.is_ok() {
                        crate::info!("vm={} a slot freed: started", vm.id);
                    }
                    return other;
                }
            }
        }
    }

    /// Says on `/images/:checksum` and `/healthz` that the image cannot be cloned while
    /// something holds its gold VM, naming what; a clone that went through clears it.
    fn note_gold_blocked(&self, gold: GoldVm<'_>, cloned: &Result<(), HypervisorError>) {
        match cloned {
            Ok(()) => self.gold_locks.unblock(gold.checksum),
            Err(err @ HypervisorError::VmLocked { .. }) => {
                let (file, message) = self.hypervisor.gold_holder(gold, err);
                crate::error!("gold image {} is blocked: {message}", gold.checksum);
                self.gold_locks.block(gold.checksum, file, message);
            }
            Err(_) => {}
        }
    }

    /// A VM deleted while vmrun worked on its gold VM: its clone (never started) and its
    /// folder go now that the call is over.
    fn remove_handed(&self, id: VmId) {
        let vm_ref = self.store.vm_ref(id);
        if self.hypervisor.vm_exists(&vm_ref) {
            if let Err(err) = self.hypervisor.delete_vm(&vm_ref) {
                crate::warn!("vm={id} {err}; its folder is removed all the same");
            }
        }
        match self.store.remove(id) {
            Ok(()) => crate::info!("vm={id} deleted: its gold call is over and its files are gone"),
            Err(err) => crate::error!(
                "vm={id} was deleted, but {err}; its folder is removed at the next start"
            ),
        }
        self.tasks.forget(id);
    }

    fn fire_callback(&self, id: VmId) {
        let Some(vm) = self.store.get(id) else {
            return;
        };
        let (Some(url), Some(body)) = (vm.callback_url.clone(), self.store.json(id)) else {
            return;
        };
        crate::callback::deliver_in_background(id, url, body, self.settings.callback.clone());
    }

    pub(super) fn set_phase(&self, id: VmId, phase: Phase) {
        self.record(id, |vm| vm.progress.phase = phase);
    }

    pub(super) fn record(&self, id: VmId, change: impl FnOnce(&mut Vm)) {
        self.record_with(id, Durability::Disk, change);
    }

    fn record_with(&self, id: VmId, durability: Durability, change: impl FnOnce(&mut Vm)) {
        // A record that cannot be written (disk full) is still right in memory; the next
        // durable write or the restart's reconcile catches up.
        if let Err(err) = self.store.update(id, durability, change) {
            crate::error!("vm={id} {err}");
        }
    }
}

fn image_phase(phase: ImagePhase) -> Phase {
    match phase {
        ImagePhase::Downloading => Phase::Downloading,
        ImagePhase::QueuedDownload => Phase::QueuedDownload,
        ImagePhase::Unpacking => Phase::Unpacking,
        ImagePhase::Verifying => Phase::Verifying,
        ImagePhase::Publishing => Phase::Publishing,
    }
}

/// Leaves the gold call when dropped, whichever way the block ends.
struct GoldWork<'a>(&'a Task);

impl Drop for GoldWork<'_> {
    fn drop(&mut self) {
        self.0.leave_gold();
    }
}

/// The gold lock, or `Stop::Cancelled` as soon as a DELETE comes while waiting for it.
fn lock_unless_cancelled<'a>(
    lock: &'a Mutex<GoldState>,
    cancel: &Cancel,
) -> Result<MutexGuard<'a, GoldState>, Stop> {
    loop {
        match lock.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Ok(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => {
                check(cancel)?;
                thread::sleep(GOLD_WAIT_POLL);
            }
        }
    }
}

/// How often a VM waiting for a slot tries its start again when no VM of the server's
/// stopped (a VM the server does not see may have).
const SLOT_RETRY: Duration = Duration::from_secs(5);

/// How often a VM waiting for its gold VM looks at its cancel flag and the lock.
const GOLD_WAIT_POLL: Duration = Duration::from_millis(5);

pub(super) fn check(cancel: &Cancel) -> Result<(), Stop> {
    if cancel.is_cancelled() {
        Err(Stop::Cancelled)
    } else {
        Ok(())
    }
}

pub(super) fn sleep_unless_cancelled(total: Duration, cancel: &Cancel) -> Result<(), Stop> {
    let end = Instant::now() + total;
    loop {
        check(cancel)?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}
