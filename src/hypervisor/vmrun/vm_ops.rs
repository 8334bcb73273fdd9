//! How VMware makes a VM of a gold image: one named snapshot on the gold VM, a linked clone
//! of it (retried while the gold is in use, the snapshot made again if someone deleted it),
//! and the clone's VMX edited (allow-list, cpus, memory, NIC, annotation, guestinfo); and
//! what VMware's files tell of a VM: its VMX at `vms/<id>/<id>.vmx` (the original's
//! layout), its MAC address, who holds a gold VM. Written once for [`super::Vmrun`] and the
//! in-memory fake of the service's tests, through [`Snapshots`].

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::hypervisor::vmrun::locks;
use crate::hypervisor::vmrun::vmx::{self, CloneSettings, Vmx};
use crate::hypervisor::vmrun::vmx_policy::{self, VmxVerdict};
use crate::hypervisor::{
    vm_log, Call, Configured, FoundVm, GoldVm, HypervisorError, LogTail, VmRef, VmSettings,
};
use crate::sys::cancel::Cancel;
use crate::sys::fsutil;
use crate::vm::guestinfo::GuestInfo;

/// The log VMware writes beside a running VM's VMX.
pub const VMWARE_LOG: &str = "vmware.log";

/// The name of the one snapshot made on every gold VM, which every linked clone names.
/// Cloning without `-snapshot` would add a new `Clone` snapshot to the gold VM each time.
pub const BASE_SNAPSHOT: &str = "osx-builder-base";

/// The snapshot and clone calls of vmrun.
pub trait Snapshots {
    fn list_snapshots(&self, vmx: &Path) -> Result<Vec<String>, HypervisorError>;
    fn snapshot(&self, vmx: &Path, name: &str) -> Result<(), HypervisorError>;
    fn clone_linked(
        &self,
        src: &Path,
        dst: &Path,
        snapshot: &str,
        clone_name: &str,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError>;
}

/// The VMX of one of the server's VMs: `vms/<id>/<id>.vmx`, the original's layout.
pub fn vmx_of(vm: &VmRef) -> PathBuf {
    vm.dir.join(format!("{}.vmx", vm.id))
}

/// How the running set knows the VM whose VMX vmrun lists: one of the server's
/// (`<id>/<id>.vmx`) by its folder, as [`VmRef::dir`] names it; any other by its VMX.
pub fn running_key(vmx: &Path) -> PathBuf {
    match (vmx.file_stem(), vmx.parent()) {
        (Some(stem), Some(dir)) if dir.file_name() == Some(stem) => dir.to_path_buf(),
        _ => vmx.to_path_buf(),
    }
}

/// What the VMX tells of a VM whose record is lost, or of one of the original Go server's
/// VMs (its image is base64 JSON in the `annotation`, as this server keeps it too).
pub fn find_vm(vm: &VmRef) -> Result<FoundVm, String> {
    let path = vmx_of(vm);
    let bytes = fs::read(&path).map_err(|e| format!("no readable {}.vmx: {e}", vm.id))?;
    let parsed = Vmx::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let number = |key: &str| parsed.get(key).and_then(|v| v.trim().parse::<u32>().ok());
    Ok(FoundVm {
        cpus: number("numvcpus"),
        memory_mb: number("memsize"),
        network_type: parsed.get("ethernet0.connectionType"),
        guest_os: parsed.get("guestOS").unwrap_or_default(),
        image: vmx::decode_annotation_image(&parsed),
    })
}

/// The MAC VMware wrote into the VMX at power-on (`ethernet0.generatedAddress`), or the
/// static one; `None` until there is one.
pub fn mac_address(vm: &VmRef) -> Option<String> {
    let bytes = fs::read(vmx_of(vm)).ok()?;
    let parsed = Vmx::parse(&bytes).ok()?;
    parsed
        .get("ethernet0.generatedAddress")
        .or_else(|| parsed.get("ethernet0.address"))
        .filter(|mac| !mac.is_empty())
}

/// Names what holds the gold VM after a clone failed "in use": the lock folder VMware left
/// beside it and the process that made it (locks of dead processes are removed), or the
/// VMware window that has it open.
pub fn gold_holder(gold: GoldVm<'_>, err: &HypervisorError) -> (PathBuf, String) {
    let held = gold
        .config
        .parent()
        .map(locks::remove_dead_locks_in)
        .unwrap_or_default();
    match held.first() {
        Some(lock) => (
            lock.path.clone(),
            format!(
                "every clone of this image fails ({err}); {} holds its gold VM: {}. Stop that process or close the gold VM in VMware; if no VMware or vmrun process runs, remove {} by hand. The next create tries again",
                lock.path.display(),
                lock.why,
                lock.path.display()
            ),
        ),
        None => (
            gold.config.to_path_buf(),
            format!(
                "every clone of this image fails ({err}); no lock file beside {} names its holder: close the gold VM in the VMware window that has it open (or quit VMware). The next create tries again",
                gold.config.display()
            ),
        ),
    }
}

/// Removes the gold VM's lock folders that dead processes left; the live ones, with who
/// holds each.
pub fn remove_dead_gold_locks(gold: GoldVm<'_>) -> Vec<(PathBuf, String)> {
    gold.config
        .parent()
        .map(locks::remove_dead_locks_in)
        .unwrap_or_default()
        .into_iter()
        .map(|held| (held.path, held.why))
        .collect()
}

/// Makes the base snapshot of the gold VM unless it has one.
pub fn prepare_gold(ops: &impl Snapshots, gold_vmx: &Path) -> Result<(), HypervisorError> {
    if ops
        .list_snapshots(gold_vmx)?
        .iter()
        .any(|s| s == BASE_SNAPSHOT)
    {
        return Ok(());
    }
    ops.snapshot(gold_vmx, BASE_SNAPSHOT)?;
    // Trusting a `snapshot` that printed something odd and did nothing would mark the gold
    // VM ready and fail every clone of it until a restart.
    if !ops
        .list_snapshots(gold_vmx)?
        .iter()
        .any(|s| s == BASE_SNAPSHOT)
    {
        return Err(HypervisorError::Refused {
            code: "snapshot-missing",
            message: format!(
                "vmrun snapshot {} reported success, but listSnapshots does not list the snapshot {BASE_SNAPSHOT}; check the gold VM in VMware, then create the VM again",
                gold_vmx.display()
            ),
        });
    }
    crate::info!(
        "made base snapshot {BASE_SNAPSHOT} of gold VM {}",
        gold_vmx.display()
    );
    Ok(())
}

/// Clones of one parent are serialised by the gold lock; "in use" can still come from a
/// VMware window holding the gold VM open, or from a lock a dead vmrun left (removed
/// before each try), so it is retried a few times. The clone itself is never cancelled:
/// killed half way, it would leave its lock on the gold VM. `cancel` ends the waits.
pub fn clone_vm(
    ops: &impl Snapshots,
    gold_vmx: &Path,
    vmx_path: &Path,
    name: &str,
    cancel: &Cancel,
) -> Result<(), HypervisorError> {
    let mut attempt = 0;
    let mut remade = false;
    loop {
        if let Some(dir) = gold_vmx.parent() {
            locks::remove_dead_locks_in(dir);
        }
        match ops.clone_linked(gold_vmx, vmx_path, BASE_SNAPSHOT, name, &Cancel::new()) {
            Err(HypervisorError::VmLocked { call, .. }) if attempt < 3 => {
                attempt += 1;
                crate::warn!("vm={name} gold VM in use, clone retry {attempt} of 3");
                sleep_unless_cancelled(Duration::from_secs(2 * attempt), cancel, call)?;
            }
            // Someone deleted the snapshot in Fusion, or restored the gold VM: make it
            // again (the caller holds the gold lock) rather than failing every clone.
            Err(err) if super::is_invalid_snapshot(&err) && !remade => {
                remade = true;
                crate::warn!(
                    "vm={name} the gold VM lost its snapshot {BASE_SNAPSHOT} ({err}); making it again"
                );
                match ops.snapshot(gold_vmx, BASE_SNAPSHOT) {
                    Ok(()) => {}
                    // vmrun has answered a clone with `Invalid snapshot name` while the
                    // snapshot was there: if it is listed, the clone is tried once more.
                    Err(exists) if super::is_snapshot_exists(&exists) => {
                        let listed = ops.list_snapshots(gold_vmx)?;
                        if !listed.iter().any(|s| s == BASE_SNAPSHOT) {
                            return Err(exists);
                        }
                        crate::warn!(
                            "vm={name} vmrun clone said the snapshot {BASE_SNAPSHOT} is invalid, but it exists and is listed; retrying the clone once"
                        );
                    }
                    Err(other) => return Err(other),
                }
            }
            Err(err) if super::is_invalid_parameters(&err) => {
                return Err(HypervisorError::Refused {
                    code: "clone-unsupported",
                    message: format!(
                        "{err}; linked clones need VMware Fusion Pro or Workstation Pro (Fusion without Pro and Player cannot make them)"
                    ),
                })
            }
            Err(err) => return Err(err),
            Ok(()) if !vmx_path.is_file() && !cancel.is_cancelled() => {
                return Err(HypervisorError::Refused {
                    code: "clone-missing",
                    message: format!(
                        "vmrun clone of {} reported success, but {} does not exist; check VMware and the free space of the data folder, then create the VM again",
                        gold_vmx.display(),
                        vmx_path.display()
                    ),
                })
            }
            Ok(()) => return Ok(()),
        }
    }
}

fn sleep_unless_cancelled(
    total: Duration,
    cancel: &Cancel,
    call: Call,
) -> Result<(), HypervisorError> {
    let end = Instant::now() + total;
    loop {
        if cancel.is_cancelled() {
            return Err(HypervisorError::Cancelled { call });
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// The clone's VMX is ours, not the image's: the allow-list runs before VMware starts it;
/// then the VM's settings go in.
pub fn configure(
    vm: &VmRef,
    gold_dir: &Path,
    strict: bool,
    settings: &VmSettings<'_>,
    guestinfo: &GuestInfo,
) -> Result<Configured, HypervisorError> {
    let vmx_path = &vmx_of(vm);
    let edit_failed = |what: &str, message: String| HypervisorError::Refused {
        code: "vmx-edit-failed",
        message: format!("{what} {}: {message}", vmx_path.display()),
    };
    let removed = match vmx_policy::enforce_vmx(vmx_path, Some(gold_dir), strict) {
        Ok(VmxVerdict::Cleaned(lines)) => lines,
        Ok(VmxVerdict::Refused(lines)) => {
            return Err(HypervisorError::Refused {
                code: "image-vmx-unsafe",
                message: vmx_policy::unsafe_vmx_message(&lines),
            })
        }
        Err(message) => return Err(edit_failed("checking", message)),
    };
    let guest_os = edit(vmx_path, &vm.id, settings, guestinfo)
        .map_err(|message| edit_failed("editing", message))?;
    Ok(Configured { guest_os, removed })
}

/// Applies the VM's settings to its freshly cloned VMX; returns its guest OS.
fn edit(
    vmx_path: &Path,
    name: &str,
    s: &VmSettings<'_>,
    guestinfo: &GuestInfo,
) -> Result<String, String> {
    let bytes = fs::read(vmx_path).map_err(|e| e.to_string())?;
    let mut vmx = Vmx::parse(&bytes).map_err(|e| e.to_string())?;
    vmx::configure_clone(
        &mut vmx,
        &CloneSettings {
            display_name: name,
            cpus: s.cpus,
            memory_mb: s.memory_mb,
            network_type: s.network_type,
        },
    )
    .map_err(|e| e.to_string())?;
    // The original Go server kept the image in the annotation; keeping it there lets either
    // server (and a person reading the VMX) tell where the VM came from.
    vmx::set_annotation_image(&mut vmx, &s.image).map_err(|e| e.to_string())?;
    vmx::set_guestinfo(&mut vmx, guestinfo).map_err(|e| e.to_string())?;
    if guestinfo.is_empty() {
        fsutil::write_atomic(vmx_path, &vmx.to_bytes())
    } else {
        // The VMX now holds secrets: readable by the user VMware runs as, no one else.
        fsutil::write_atomic_private(vmx_path, &vmx.to_bytes())
    }
    .map_err(|e| e.to_string())?;
    Ok(vmx.get("guestOS").unwrap_or_default())
}

/// `vmware.log` beside the VMX, opened, with its length.
pub fn open_log(vmx: &Path) -> std::io::Result<Option<(fs::File, u64)>> {
    vmx.parent()
        .map_or(Ok(None), |dir| vm_log::open_file(dir, VMWARE_LOG))
}

/// The last lines of `vmware.log`, once the clone exists.
pub fn log_tail(vmx: &Path) -> Option<LogTail> {
    let dir = vmx.parent()?;
    let lines = vmx
        .is_file()
        .then(|| vm_log::tail_file(dir, VMWARE_LOG, vm_log::TAIL_LINES))
        .flatten()?;
    Some(LogTail {
        path: dir.join(VMWARE_LOG),
        lines,
    })
}
