//! The steps of provisioning one VM, each recorded in the VM's `progress.phase` before it
//! runs, so that a failure (or a crash) says where it happened.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::vm::VmId;

use super::{Job, Provisioner, BASE_SNAPSHOT};
use crate::hypervisor::vmx::{self, CloneSettings, Vmx};
use crate::hypervisor::HypervisorError;
use crate::image::{ImageError, ImagePhase, ImageProgress};
use crate::sys::cancel::Cancel;
use crate::sys::fsutil;
use crate::sys::sync::LockUnpoisoned;
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
            Job::Provision(_) => self.provision(&vm, &task.cancel, task.take_guestinfo()),
            // Restarted mid-wait: when it booted is unknown, so no boot-to-IP time.
            Job::WatchIp(_) => self.watch_ip(&vm, &task.cancel, None),
        };
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

    fn provision(
        &self,
        vm: &Vm,
        cancel: &Cancel,
        guestinfo: Option<GuestInfo>,
    ) -> Result<(), Stop> {
        let id = vm.id;
        let guestinfo = guestinfo.unwrap_or_default();
        if guestinfo.keys() != vm.guestinfo_keys {
            return Err(Stop::failed(
                "guestinfo-lost",
                "this VM's guestinfo is no longer held (the server restarted before its VMX was written); delete it and create another",
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
        // write (two fsyncs) for a step that takes microseconds.
        if self.images.lookup(&image.checksum).is_none() {
            self.set_phase(id, Phase::Downloading);
        }
        let mut last_phase = Phase::Downloading;
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

        let vmx_path = self.store.vmx_path(id);
        {
            let lock = self.gold_locks.get(&gold.checksum);
            let mut gold_state = lock.lock_unpoisoned();
            if !gold_state.snapshot_ready {
                self.set_phase(id, Phase::Snapshotting);
                let snapshots = self.hypervisor.list_snapshots(&gold.vmx)?;
                if !snapshots.iter().any(|s| s == BASE_SNAPSHOT) {
                    self.hypervisor.snapshot(&gold.vmx, BASE_SNAPSHOT)?;
                    // Trusting a `snapshot` that printed something odd and did nothing would
                    // mark the gold VM ready and fail every clone of it until a restart.
                    if !self
                        .hypervisor
                        .list_snapshots(&gold.vmx)?
                        .iter()
                        .any(|s| s == BASE_SNAPSHOT)
                    {
                        return Err(Stop::failed(
                            "snapshot-missing",
                            format!(
                                "vmrun snapshot {} reported success, but listSnapshots does not list the snapshot {BASE_SNAPSHOT}; check the gold VM in VMware, then create the VM again",
                                gold.vmx.display()
                            ),
                        ));
                    }
                    crate::info!(
                        "vm={id} made base snapshot {BASE_SNAPSHOT} of gold image {}",
                        gold.checksum
                    );
                }
                gold_state.snapshot_ready = true;
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
            self.clone_with_retry(&gold.vmx, &vmx_path, &id.to_string(), cancel)?;
            self.metrics.observe_clone(cloning.elapsed());
        }
        check(cancel)?;
        if !vmx_path.is_file() {
            return Err(Stop::failed(
                "clone-missing",
                format!(
                    "vmrun clone of {} reported success, but {} does not exist; check VMware and the free space of the data folder, then create the VM again",
                    gold.vmx.display(),
                    vmx_path.display()
                ),
            ));
        }

        self.set_phase(id, Phase::Configuring);
        self.enforce_vmx(id, &vmx_path, &gold.dir)?;
        let guest_os = configure(&vmx_path, vm, &guestinfo).map_err(|message| {
            Stop::failed(
                "vmx-edit-failed",
                format!("editing {}: {message}", vmx_path.display()),
            )
        })?;
        check(cancel)?;

        // One durable write for both: each costs two fsyncs.
        self.record(id, |vm| {
            vm.guest_os = guest_os;
            vm.progress.phase = Phase::Starting;
        });
        crate::hypervisor::locks::remove_stale_locks(self.hypervisor.as_ref(), &vmx_path);
        if let Err(err) = self.hypervisor.start(&vmx_path, vm.headless, cancel) {
            // `Cannot connect to the virtual machine` has come while the VM did start: only
            // `list` tells, and a running VM behind a failed record would hold a place.
            let runs = crate::hypervisor::locks::running_set(self.hypervisor.as_ref())
                .map(|set| set.contains(&crate::hypervisor::locks::canonical(&vmx_path)));
            match (&err, runs) {
                (HypervisorError::Cancelled { .. }, _) => return Err(Stop::Cancelled),
                (_, Some(true)) => {
                    crate::warn!("vm={id} {err}; but vmrun lists it running, so it started");
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

    /// The clone's VMX is ours, not the image's: the allow-list runs before VMware starts it.
    fn enforce_vmx(&self, id: VmId, vmx_path: &Path, gold_dir: &Path) -> Result<(), Stop> {
        let strict = self.settings.strict_vmx;
        match crate::guard::enforce_vmx(vmx_path, Some(gold_dir), strict) {
            Ok(crate::guard::VmxVerdict::Cleaned(lines)) if lines.is_empty() => Ok(()),
            Ok(crate::guard::VmxVerdict::Cleaned(lines)) => {
                crate::warn!(
                    "vm={id} removed {} VMX line(s) that reach outside the VM: {}",
                    lines.len(),
                    lines.join("; ")
                );
                self.record(id, |vm| vm.vmx_removed = lines);
                Ok(())
            }
            Ok(crate::guard::VmxVerdict::Refused(lines)) => Err(Stop::failed(
                "image-vmx-unsafe",
                crate::guard::unsafe_vmx_message(&lines),
            )),
            Err(message) => Err(Stop::failed(
                "vmx-edit-failed",
                format!("checking {}: {message}", vmx_path.display()),
            )),
        }
    }

    /// Clones of one parent are serialised by the gold lock; "in use" can still come from a
    /// VMware window holding the gold VM open, so it is retried a few times.
    fn clone_with_retry(
        &self,
        gold_vmx: &Path,
        vmx_path: &Path,
        name: &str,
        cancel: &Cancel,
    ) -> Result<(), Stop> {
        let mut attempt = 0;
        let mut remade = false;
        loop {
            match self
                .hypervisor
                .clone_linked(gold_vmx, vmx_path, BASE_SNAPSHOT, name, cancel)
            {
                Err(HypervisorError::VmLocked { .. }) if attempt < 3 => {
                    attempt += 1;
                    crate::warn!("vm={name} gold VM in use, clone retry {attempt} of 3");
                    sleep_unless_cancelled(Duration::from_secs(2 * attempt), cancel)?;
                }
                // Someone deleted the snapshot in Fusion, or restored the gold VM: make it
                // again (the caller holds the gold lock) rather than failing every clone.
                Err(err) if crate::hypervisor::vmrun::is_invalid_snapshot(&err) && !remade => {
                    remade = true;
                    crate::warn!(
                        "vm={name} the gold VM lost its snapshot {BASE_SNAPSHOT} ({err}); making it again"
                    );
                    self.hypervisor.snapshot(gold_vmx, BASE_SNAPSHOT)?;
                }
                Err(err) if crate::hypervisor::vmrun::is_invalid_parameters(&err) => {
                    return Err(Stop::failed(
                        "clone-unsupported",
                        format!(
                            "{err}; linked clones need VMware Fusion Pro or Workstation Pro (Fusion without Pro and Player cannot make them)"
                        ),
                    ))
                }
                other => return other.map_err(Stop::from),
            }
        }
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

/// Applies the VM's settings to its freshly cloned VMX; returns its guest OS.
fn configure(vmx_path: &Path, vm: &Vm, guestinfo: &GuestInfo) -> Result<String, String> {
    let bytes = fs::read(vmx_path).map_err(|e| e.to_string())?;
    let mut vmx = Vmx::parse(&bytes).map_err(|e| e.to_string())?;
    let name = vm.id.to_string();
    vmx::configure_clone(
        &mut vmx,
        &CloneSettings {
            display_name: &name,
            cpus: vm.cpus,
            memory_mb: vm.memory,
            network_type: vm.network_type.as_str(),
        },
    )
    .map_err(|e| e.to_string())?;
    // The original Go server kept the image in the annotation; keeping it there lets either
    // server (and a person reading the VMX) tell where the VM came from.
    let image = serde_json::to_value(&vm.image).map_err(|e| e.to_string())?;
    vmx::set_annotation_image(&mut vmx, &image).map_err(|e| e.to_string())?;
    guestinfo.apply(&mut vmx).map_err(|e| e.to_string())?;
    if guestinfo.is_empty() {
        fsutil::write_atomic(vmx_path, &vmx.to_bytes())
    } else {
        // The VMX now holds secrets: readable by the user VMware runs as, no one else.
        fsutil::write_atomic_private(vmx_path, &vmx.to_bytes())
    }
    .map_err(|e| e.to_string())?;
    Ok(vmx.get("guestOS").unwrap_or_default())
}

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
