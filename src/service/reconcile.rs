//! Keeping records true to the machine, at start and every `--reconcile-interval`: VMs
//! powered off or on behind our back, folders that vanished, what a stop of the server left
//! half done (a start in flight, a delete acknowledged, provisioning interrupted), stale
//! VMware locks, folders no record knows (see `adopt.rs`).

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::Service;
use crate::hypervisor::{Ended, VmRef};
use crate::provision::Job;
use crate::vm::store::Durability;
use crate::vm::{Phase, Status, Vm, VmId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    Startup,
    Periodic,
}

impl Service {
    /// Brings the records in line with the machine. At start (`Startup`), also deals with
    /// what a stop left half done: provisioning that was interrupted is reported (not
    /// silently retried), a VM waiting for its IP is watched again, an acknowledged delete is
    /// finished, stale VMware locks are removed. Every time: one `vmrun list` updates
    /// running/stopped, a record whose folder vanished is failed, a VM folder no record
    /// knows is adopted or reported.
    pub fn reconcile(self: &Arc<Self>, when: Reconcile) {
        let running = crate::hypervisor::running::running_set(self.hypervisor.as_ref());
        for id in self.store.ids() {
            if self.tasks.is_busy(id) {
                continue;
            }
            let Some(mut vm) = self.store.get(id) else {
                continue;
            };
            let vm_ref = self.store.vm_ref(id);
            let runs = running
                .as_ref()
                .map(|set| set.contains(&crate::hypervisor::running::canonical(&vm_ref.dir)));
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
                    self.hypervisor.remove_stale_locks(&vm_ref, running);
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
            if has_vm && !self.hypervisor.vm_exists(&vm_ref) {
                if vm.error.is_none() {
                    self.files_missing(id, &self.hypervisor.vm_file(&vm_ref));
                }
                continue;
            }
            let Some(is_running) = runs else { continue };
            match (vm.status, is_running) {
                (Status::Running, false) => self.no_longer_running(&vm),
                (Status::Stopped, true) => {
                    crate::info!("vm={id} is running again");
                    self.update(id, |vm| vm.status = Status::Running);
                }
                (Status::Failed, true) => self.failed_but_running(&vm, &vm_ref),
                _ => {}
            }
        }
        self.adopt_orphans(running.as_ref());
        if when == Reconcile::Startup {
            crate::info!("recovered {} VMs", self.store.len());
        }
    }

    /// After each listing of the hypervisor (every `--list-interval`): a VM whose record
    /// says running and that the hypervisor no longer lists was powered off, or died,
    /// behind the server's back. Its record says so within seconds, not at the next
    /// reconcile. VMs a worker or a DELETE holds are theirs to judge.
    pub fn notice_stopped(&self) {
        let Some(running) = self.hypervisor.running().snapshot() else {
            return;
        };
        for id in self.store.ids_with_status(Status::Running) {
            let dir = self.store.vm_dir(id);
            if running.contains(&crate::hypervisor::running::canonical(&dir)) {
                continue;
            }
            let task = self.tasks.get(id);
            let Some(_busy) = task.try_lock() else {
                continue;
            };
            // Under the task: a DELETE or a worker may have just let it go, or started it.
            let Some(vm) = self.store.get(id) else {
                continue;
            };
            let still = vm.status == Status::Running && vm.progress.phase != Phase::Deleting;
            if still && self.hypervisor.running().contains(&dir) == Some(false) {
                self.no_longer_running(&vm);
            }
        }
    }

    /// A VM that the hypervisor no longer runs though its record says running: stopped
    /// when it was powered off; failed (`vm-died`, with its log's last lines) when its
    /// log says it died.
    fn no_longer_running(&self, vm: &Vm) {
        let id = vm.id;
        match self.hypervisor.ended(&self.store.vm_ref(id)) {
            Ended::PoweredOff => {
                crate::warn!("vm={id} is no longer running");
                self.update(id, |vm| vm.status = Status::Stopped);
            }
            Ended::Died { message, log_tail } => {
                crate::warn!(vm = id, code = "vm-died"; "died: {message}");
                let lines = log_tail.map(|tail| tail.lines);
                self.update(id, |vm| {
                    vm.fail("vm-died", message);
                    if let Some(error) = vm.error.as_mut() {
                        error.log_tail = lines;
                    }
                });
            }
        }
    }

    /// Someone removed the VM's files (Fusion's "Move to Trash", a clean-up script). The
    /// record says so until the VM is deleted; if the whole folder went, the record went
    /// with it and the change lives in memory only.
    fn files_missing(&self, id: VmId, file: &Path) {
        crate::warn!("vm={id} its file {} is gone", file.display());
        let durability = if self.store.vm_dir(id).exists() {
            Durability::Disk
        } else {
            Durability::MemoryOnly
        };
        let message = format!(
            "the VM's files are gone ({} is missing): someone removed them outside osx-builder; delete this VM",
            file.display()
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
        let began_ms = crate::sys::time::parse_rfc3339_ms(&vm.updated_at)?;
        let timeout = self.hypervisor.start_timeout() + START_GRACE;
        let left_ms = began_ms + timeout.as_millis() as i64 - crate::sys::time::now_ms();
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
            "vm={id} was at step starting when the server stopped and {} does not list it yet: waiting up to {secs} s for its start to end",
            self.hypervisor.running().listing()
        );
        let vm_ref = self.store.vm_ref(id);
        let running = loop {
            if task.cancel.is_cancelled() || self.store.get(id).is_none() {
                return;
            }
            let running = crate::hypervisor::running::running_set(self.hypervisor.as_ref());
            if let Some(set) = &running {
                if set.contains(&crate::hypervisor::running::canonical(&vm_ref.dir)) {
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
            self.hypervisor.remove_stale_locks(&vm_ref, running);
        }
        crate::warn!("vm={id} provisioning was interrupted at step starting and it never ran");
        self.update(id, |vm| {
            vm.fail(INTERRUPTED, interrupted_message(Phase::Starting))
        });
    }

    /// vmrun runs a VM whose record says it failed. A start that a stop of the server cut
    /// short and that went through after all is ours: the VM is running again. Anything
    /// else is stopped: a failed VM must not run on unseen, holding a slot and memory.
    fn failed_but_running(&self, vm: &Vm, vm_ref: &VmRef) {
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
        crate::warn!(
            "vm={id} is failed ({code}) but {} lists it running: stopping it hard",
            self.hypervisor.running().listing()
        );
        match self
            .hypervisor
            .stop(vm_ref, true, &crate::sys::cancel::Cancel::new())
        {
            Ok(()) => crate::info!("vm={id} stopped"),
            Err(err) => crate::warn!("vm={id} failed and still runs: stop hard failed: {err}"),
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
