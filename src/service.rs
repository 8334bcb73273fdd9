//! The VM service: what the API's calls do, without HTTP. Creates record and queue, reads
//! answer from memory, deletes wait for the VM to be gone; `recover` makes the records agree
//! with the disk and with vmrun after a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use uuid::Uuid;

use crate::api::create_body::CreateVm;
use crate::api::error::ApiError;
use crate::provision::tasks::Tasks;
use crate::provision::Job;
use crate::reconcile;
use crate::vm::store::{Durability, RECORD_FILE};
use crate::vm::{Phase, Progress, Status, Vm, VmStore};
use crate::vmrun::{Vmrun, VmrunError};

pub struct Service {
    store: Arc<VmStore>,
    vmrun: Vmrun,
    tasks: Arc<Tasks>,
    jobs: Sender<Job>,
    creating: Mutex<()>,
    reported: Mutex<HashSet<PathBuf>>,
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
    pub fn new(store: Arc<VmStore>, vmrun: Vmrun, tasks: Arc<Tasks>, jobs: Sender<Job>) -> Self {
        Self {
            store,
            vmrun,
            tasks,
            jobs,
            creating: Mutex::new(()),
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// Records the VM and queues it. With an idempotency key that an existing VM carries,
    /// returns that VM instead (`Created::Existing`): a coordinator that lost the answer to
    /// its POST can retry without leaking a second VM.
    pub fn create(&self, request: CreateVm) -> Result<Created, ApiError> {
        self.vmrun
            .check_available()
            .map_err(|e| ApiError::VmrunMissing(e.to_string()))?;
        // Held across lookup and insert so that two retries racing each other make one VM.
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = &request.name {
            if let Some(json) = self.find_by_name(key) {
                return Ok(Created::Existing(json));
            }
        }
        let now = crate::log::rfc3339_now();
        let vm = Vm {
            id: Uuid::new_v4(),
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
        };
        let id = vm.id;
        let json = self
            .store
            .insert(vm)
            .map_err(|e| ApiError::Internal(format!("the VM could not be recorded: {e}")))?;
        crate::info!("vm={id} created");
        self.jobs
            .send(Job::Provision(id))
            .map_err(|_| ApiError::Internal("the provisioning pool has stopped".into()))?;
        Ok(Created::New(json))
    }

    fn find_by_name(&self, key: &str) -> Option<Arc<[u8]>> {
        self.store.ids().into_iter().find_map(|id| {
            let vm = self.store.get(id)?;
            if vm.name.as_deref() == Some(key) && vm.progress.phase != Phase::Deleting {
                self.store.json(id)
            } else {
                None
            }
        })
    }

    pub fn get(&self, id: Uuid) -> Result<Arc<[u8]>, ApiError> {
        self.store.json(id).ok_or(ApiError::VmNotFound)
    }

    pub fn list(&self) -> Vec<Arc<[u8]>> {
        self.store.all_json()
    }

    /// Cancels provisioning, powers the VM off, has vmrun delete its files, removes its
    /// folder. Returns once all that is done.
    pub fn delete(&self, id: Uuid) -> Result<(), ApiError> {
        if self.store.get(id).is_none() {
            return Err(ApiError::VmNotFound);
        }
        let task = self.tasks.get(id);
        task.cancel.cancel();
        let _busy = task.lock();
        let Some(before) = self.store.get(id) else {
            // Another DELETE finished first.
            return Err(ApiError::VmNotFound);
        };
        crate::info!("vm={id} deleting");
        self.update(id, |vm| vm.progress.phase = Phase::Deleting);
        if let Err(err) = self.destroy_files(id) {
            // The VM is still there: show it as it was, not half-deleted, but powered on or
            // off as it now is: the stop may have gone through before deleteVM failed.
            let vmx = reconcile::canonical(&self.store.vmx_path(id));
            let running = reconcile::running_set(&self.vmrun).map(|set| set.contains(&vmx));
            self.update(id, |vm| {
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
            .map_err(|e| ApiError::VmDeleteError(format!("the VM's files are gone but {e}")))?;
        self.tasks.forget(id);
        crate::info!("vm={id} deleted");
        Ok(())
    }

    fn destroy_files(&self, id: Uuid) -> Result<(), ApiError> {
        let vmx = self.store.vmx_path(id);
        if !vmx.exists() {
            // Failed before the clone: there is nothing of VMware's to remove.
            return Ok(());
        }
        self.vmrun
            .stop(&vmx, true, &crate::cancel::Cancel::new())
            .or_else(tolerate_unopenable)
            .map_err(delete_error)?;
        // VMware can release its locks a moment after power-off.
        let mut attempt = 0;
        loop {
            match self.vmrun.delete_vm(&vmx) {
                Ok(()) => return Ok(()),
                Err(VmrunError::VmLocked { .. }) if attempt < 5 => {
                    attempt += 1;
                    thread::sleep(Duration::from_secs(1));
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
        let running = reconcile::running_set(&self.vmrun);
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
    fn files_missing(&self, id: Uuid, vmx: &Path) {
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
            let phase = vm.progress.phase.as_str();
            crate::warn!("vm={id} provisioning was interrupted at step {phase}");
            self.update(id, |vm| {
                vm.fail(
                    "interrupted",
                    format!("the server stopped while this VM was at step {phase}; delete it and create another"),
                )
            });
        } else if vm.status == Status::Running
            && vm.progress.phase == Phase::WaitingForIp
            && runs != Some(false)
        {
            // Not when it was powered off meanwhile: the IP query would fail the VM, which
            // the reconcile shows as stopped instead.
            let _ = self.jobs.send(Job::WatchIp(id));
        }
    }

    /// Folders in `vms/` without a record: adopted when they hold `<id>.vmx`, otherwise
    /// reported once. Never deleted: they may be someone's work.
    fn adopt_orphans(&self, running: Option<&HashSet<PathBuf>>) {
        let Ok(entries) = std::fs::read_dir(self.store.root()) else {
            return;
        };
        // A create makes the folder, then the record, then the map entry: without this lock
        // a folder caught in between would look like an orphan.
        let _creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.flatten() {
            let dir = entry.path();
            // A delete on its way out (creates hold `creating`, as this does).
            if !dir.is_dir() || crate::vm::store::is_transient(&entry.file_name()) {
                continue;
            }
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Uuid::try_parse(n).ok());
            // Checked now, not from a list taken before: a create may have just added it.
            if id.is_some_and(|id| self.store.get(id).is_some()) {
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
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        !reported.insert(dir.to_path_buf())
    }

    fn update(&self, id: Uuid, change: impl FnOnce(&mut Vm)) {
        if let Err(err) = self.store.update(id, Durability::Disk, change) {
            crate::error!("vm={id} {err}");
        }
    }
}

/// A VMX that vmrun cannot open cannot be running either; its folder is removed all the same.
fn tolerate_unopenable(err: VmrunError) -> Result<(), VmrunError> {
    match err {
        VmrunError::VmOpenError { .. } => Ok(()),
        other => Err(other),
    }
}

fn delete_error(err: VmrunError) -> ApiError {
    match err {
        VmrunError::VmLocked { .. } => ApiError::VmLocked(err.to_string()),
        VmrunError::NotFound { .. } => ApiError::VmrunMissing(err.to_string()),
        other => ApiError::VmDeleteError(other.to_string()),
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
