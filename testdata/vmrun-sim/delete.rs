//! `deleteVM VMX`: removes the files VMware made for the VM and nothing else in its folder.

use crate::args::{too_many, vmx_and_rest};
use crate::error::SimError;
use crate::paths::{lck_dir, VmPath};
use crate::state::{env_ms, now_ms, StateDir};

/// For this long after a `stop`, `deleteVM` still answers that the VM is powered on: VMware
/// releases the VM a moment after power-off.
pub const POWEROFF_LAG_ENV: &str = "VMRUN_SIM_POWEROFF_LAG_MS";
use crate::vmx;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub fn delete_vm(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("deleteVM", args)?;
    if !rest.is_empty() {
        return Err(too_many("deleteVM"));
    }
    let vm = VmPath::new(vmx_arg)?;
    let config = vmx::load(&vm)?;
    let _guard = state.lock_vm(&vm)?;
    let lag = env_ms(POWEROFF_LAG_ENV, 0)?;
    if state
        .load(&vm)?
        .is_some_and(|s| s.running || now_ms().saturating_sub(s.stopped_at_ms) < lag)
    {
        return Err(SimError::PoweredOn);
    }
    let vmx_lock = lck_dir(&vm.abs);
    if vmx_lock.exists() {
        return Err(SimError::InUse);
    }

    let dir = vm.dir();
    let mut files: Vec<PathBuf> = ["vmxf", "vmsd", "nvram", "vmss", "vmem"]
        .iter()
        .map(|ext| vm.sibling(ext))
        .collect();
    for key in ["nvram", "extendedConfigFile"] {
        if let Some(value) = config.get(key) {
            files.push(vmx::resolve(&dir, value));
        }
    }
    let mut lock_dirs = vec![vmx_lock];
    for (_, value) in config.disks() {
        let disk = vmx::resolve(&dir, &value);
        lock_dirs.push(lck_dir(&disk));
        if let Some(delta) = delta_of(&disk) {
            files.push(delta);
        }
        files.push(disk);
    }
    files.extend(vmware_logs(&dir));
    for file in &files {
        remove_file(file)?;
    }
    for lock in &lock_dirs {
        match fs::remove_dir_all(lock) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(SimError::io("remove", lock, e))
            }
            _ => {}
        }
    }
    // The VMX goes last, so that a failure above leaves a VM that can be deleted again.
    remove_file(&vm.abs)?;
    state.remove(&vm)?;
    Ok(String::new())
}

/// `disk.vmdk` -> `disk-cl1.vmdk` beside it.
fn delta_of(disk: &Path) -> Option<PathBuf> {
    let stem = disk.file_stem()?.to_string_lossy();
    Some(disk.with_file_name(format!("{stem}-cl1.vmdk")))
}

/// `vmware.log`, `vmware-0.log`...: VMware's own logs, not any `.log` a user put there.
fn vmware_logs(dir: &Path) -> Vec<PathBuf> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    listing
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with("vmware") && n.ends_with(".log"))
        })
        .collect()
}

fn remove_file(path: &Path) -> Result<(), SimError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(SimError::io("remove", path, e)),
        _ => Ok(()),
    }
}
