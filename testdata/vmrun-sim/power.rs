//! Power commands: list, start, stop, reset, suspend.

use crate::args::{optional_word, too_many, vmx_and_rest};
use crate::boot;
use crate::error::SimError;
use crate::paths::{lck_dir, VmPath};
use crate::state::{env_flag, now_ms, StateDir, VmState};
use crate::vmx;
use std::fs;
use std::path::{Path, PathBuf};

/// The real vmrun goes on listing a running VM whose VMX was removed behind its back.
pub const LIST_REMOVED_ENV: &str = "VMRUN_SIM_LIST_REMOVED";

pub fn list(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    if !args.is_empty() {
        return Err(too_many("list"));
    }
    let list_removed = env_flag(LIST_REMOVED_ENV);
    let mut running: Vec<VmState> = state
        .all()?
        .into_iter()
        .filter(|s| s.running && (list_removed || Path::new(&s.vmx).is_file()))
        .collect();
    running.sort_by(|a, b| (a.started_at_ms, &a.vmx).cmp(&(b.started_at_ms, &b.vmx)));
    let mut out = format!("Total running VMs: {}\n", running.len());
    for vm in running {
        out.push_str(&vm.vmx);
        out.push('\n');
    }
    Ok(out)
}

pub fn start(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("start", args)?;
    let mode = optional_word("start", rest, &["gui", "nogui"])?.unwrap_or("gui");
    let vm = VmPath::new(vmx_arg)?;
    let mut config = vmx::load(&vm)?;
    let _guard = state.lock_vm(&vm)?;
    let before = state.load(&vm)?;
    if before.as_ref().is_some_and(|s| s.running) {
        return Ok(String::new());
    }
    let boots = before.map_or(0, |s| s.boots) + 1;
    let mut files = vec![vm.abs.clone()];
    let dir = vm.dir();
    files.extend(config.disks().iter().map(|(_, v)| vmx::resolve(&dir, v)));
    let locks: Vec<PathBuf> = files.iter().map(|f| lck_dir(f)).collect();
    // Not ours (our own are gone once our state says stopped): another process holds the VM.
    if locks.iter().any(|l| l.exists()) {
        return Err(SimError::InUse);
    }
    for (index, lock) in locks.iter().enumerate() {
        if let Err(e) = make_lock(lock) {
            remove_locks(&locks[..index]);
            return Err(e);
        }
    }
    boot_delay(state);
    state.save(
        &vm,
        &VmState {
            vmx: vm.abs.to_string_lossy().into_owned(),
            running: true,
            started_at_ms: now_ms(),
            mode: mode.to_string(),
            locks,
            guest_vars: crate::variables::from_vmx(&config),
            guest_env: Default::default(),
            writes: Vec::new(),
            boots,
            stopped_at_ms: 0,
        },
    )?;
    boot::assign_mac(&vm, &mut config)?;
    boot::write_log(&vm, boots, "start", mode)?;
    Ok(String::new())
}

/// VMware takes the VM's locks early in a start and lists the VM as running only once it
/// boots: `start-boot-ms` in the state folder holds that window open (a `delay` fault sleeps
/// before the locks are taken).
fn boot_delay(state: &StateDir) {
    let ms = fs::read_to_string(state.path("start-boot-ms"))
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    if let Some(ms) = ms {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn make_lock(lock: &Path) -> Result<(), SimError> {
    fs::create_dir_all(lock).map_err(|e| SimError::io("create", lock, e))?;
    let file = lock.join(format!("M{}.lck", std::process::id()));
    fs::write(&file, format!("vmrun-sim {}\n", std::process::id()))
        .map_err(|e| SimError::io("write", &file, e))
}

fn remove_locks(locks: &[PathBuf]) {
    for lock in locks {
        let _ = fs::remove_dir_all(lock);
    }
}

pub fn stop(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("stop", args)?;
    optional_word("stop", rest, &["hard", "soft"])?;
    let vm = VmPath::new(vmx_arg)?;
    let _guard = state.lock_vm(&vm)?;
    power_off(state, &vm)
}

pub fn suspend(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("suspend", args)?;
    optional_word("suspend", rest, &["hard", "soft"])?;
    let vm = VmPath::new(vmx_arg)?;
    vmx::load(&vm)?;
    let _guard = state.lock_vm(&vm)?;
    power_off(state, &vm)
}

/// Stopping works from the state alone, even if the VMX has become unreadable: a caller must
/// always be able to power a VM off.
fn power_off(state: &StateDir, vm: &VmPath) -> Result<String, SimError> {
    match state.load(vm)? {
        Some(mut running) if running.running => {
            remove_locks(&running.locks);
            running.running = false;
            running.locks.clear();
            running.guest_vars.clear();
            running.guest_env.clear();
            running.stopped_at_ms = now_ms();
            state.save(vm, &running)?;
            if vm.is_file() {
                boot::write_power_off(vm)?;
            }
            Ok(String::new())
        }
        _ if !vm.is_file() => Err(SimError::NotFound(vm.given.clone())),
        _ => Err(SimError::NotPoweredOn(vm.given.clone())),
    }
}

pub fn reset(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("reset", args)?;
    optional_word("reset", rest, &["hard", "soft"])?;
    let vm = VmPath::new(vmx_arg)?;
    vmx::load(&vm)?;
    let _guard = state.lock_vm(&vm)?;
    match state.load(&vm)? {
        Some(mut running) if running.running => {
            // A reboot: Tools and the guest's address come back only after the delays again.
            running.started_at_ms = now_ms();
            running.boots += 1;
            state.save(&vm, &running)?;
            boot::write_log(&vm, running.boots, "reset", &running.mode)?;
            Ok(String::new())
        }
        _ => Err(SimError::NotPoweredOn(vm.given.clone())),
    }
}
