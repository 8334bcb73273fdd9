//! The VM service: what the API's calls do, without HTTP. Creates record and queue, reads
//! answer from memory, deletes wait for the VM to be gone; `recover` makes the records agree
//! with the disk and with vmrun after a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use uuid::Uuid;

use crate::api::create_body::CreateVm;
use crate::api::error::ApiError;
use crate::provision::tasks::Tasks;
use crate::provision::Job;
use crate::vm::store::Durability;
use crate::vm::{Phase, Progress, Status, Vm, VmStore};
use crate::vmrun::{Vmrun, VmrunError};

pub struct Service {
    store: Arc<VmStore>,
    vmrun: Vmrun,
    tasks: Arc<Tasks>,
    jobs: Sender<Job>,
}

impl Service {
    pub fn new(store: Arc<VmStore>, vmrun: Vmrun, tasks: Arc<Tasks>, jobs: Sender<Job>) -> Self {
        Self {
            store,
            vmrun,
            tasks,
            jobs,
        }
    }

    pub fn create(&self, request: CreateVm) -> Result<Arc<[u8]>, ApiError> {
        self.vmrun
            .check_available()
            .map_err(|e| ApiError::VmrunMissing(e.to_string()))?;
        let now = crate::log::rfc3339_now();
        let vm = Vm {
            id: Uuid::new_v4(),
            image: request.image,
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
        Ok(json)
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
            // The VM is still there: show it as it was, not half-deleted.
            self.update(id, |vm| vm.progress.phase = before.progress.phase);
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

    /// Brings the records in line with what happened while the server was down: one
    /// `vmrun list` says which VMs run. Provisioning that a restart interrupted is reported,
    /// not silently retried; a VM waiting for its IP is watched again; an acknowledged
    /// delete that did not finish is finished.
    pub fn recover(self: &Arc<Self>) {
        let running: Option<HashSet<PathBuf>> = match self.vmrun.list() {
            Ok(paths) => Some(paths.iter().map(|p| canonical(p)).collect()),
            Err(err) => {
                crate::warn!("cannot reconcile VM states with vmrun list: {err}");
                None
            }
        };
        for id in self.store.ids() {
            let Some(vm) = self.store.get(id) else {
                continue;
            };
            if vm.progress.phase == Phase::Deleting {
                let service = self.clone();
                thread::spawn(move || {
                    if let Err(err) = service.delete(id) {
                        crate::warn!("vm={id} resuming an interrupted delete failed: {err}");
                    }
                });
                continue;
            }
            let is_running = running
                .as_ref()
                .map(|set| set.contains(&canonical(&self.store.vmx_path(id))));
            match (vm.status, is_running) {
                (Status::Provisioning, _) => {
                    let phase = vm.progress.phase;
                    self.update(id, |vm| {
                        vm.fail(
                            "interrupted",
                            format!("the server stopped while this VM was at step {phase:?}; delete it and create another"),
                        )
                    });
                    crate::warn!("vm={id} provisioning was interrupted at {phase:?}");
                }
                (Status::Running, Some(false)) => {
                    self.update(id, |vm| vm.status = Status::Stopped);
                }
                (Status::Stopped, Some(true)) => {
                    self.update(id, |vm| vm.status = Status::Running);
                }
                _ => {}
            }
            let Some(vm) = self.store.get(id) else {
                continue;
            };
            if vm.status == Status::Running && vm.progress.phase == Phase::WaitingForIp {
                let _ = self.jobs.send(Job::WatchIp(id));
            }
        }
        crate::info!("recovered {} VMs", self.store.len());
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

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
