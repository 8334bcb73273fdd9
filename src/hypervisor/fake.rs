//! A hypervisor in memory, for unit tests of the service: VMs run when started and stop
//! when stopped, a started VM has an address at once, and a test can hold any command at
//! its start (to act while it is in flight), make the next call of a command fail, or change
//! which VMs run behind the server's back.
//!
//! It keeps files as VMware would where the server reads them: a clone is the gold VMX
//! copied to the clone's path, a deleted VM's VMX is removed. Everything else (snapshots,
//! which VMs run, addresses) lives only here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::running::RunningVms;
use super::vmrun::vm_ops;
use super::{
    Call, Configured, FoundVm, GoldVm, Hypervisor, HypervisorError, IpAnswer, LogTail, VmRef,
    VmSettings,
};
use crate::sys::cancel::Cancel;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::guestinfo::GuestInfo;

/// What a command made to fail answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The VM's files are in use (`VmLocked`).
    Locked,
    /// VMware cannot open the VMX (`VmOpenError`).
    CannotOpen,
    /// Any other failure, with this message.
    Failed(String),
}

#[derive(Debug, Default)]
pub struct FakeHypervisor {
    state: Mutex<State>,
    changed: Condvar,
    running: RunningVms,
}

#[derive(Debug, Default)]
struct State {
    running: BTreeSet<PathBuf>,
    snapshots: HashMap<PathBuf, Vec<String>>,
    /// Commands that wait at their start until released (or cancelled).
    held: BTreeSet<&'static str>,
    /// Calls waiting at a hold now, by command.
    waiting: BTreeMap<&'static str, usize>,
    faults: HashMap<&'static str, VecDeque<Fault>>,
    /// Every call, as `command path`, in order.
    calls: Vec<String>,
    counts: BTreeMap<(String, String), u64>,
    addresses: HashMap<PathBuf, String>,
    /// `writeVariable guestVar` of each running VM, as the guest would read them; gone at
    /// power-off, as VMware's are.
    guest_vars: HashMap<PathBuf, BTreeMap<String, String>>,
    unavailable: bool,
}

impl FakeHypervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls of `command` wait at their start until [`FakeHypervisor::release`].
    pub fn hold(&self, command: &'static str) {
        self.state().held.insert(command);
    }

    pub fn release(&self, command: &'static str) {
        self.state().held.remove(command);
        self.changed.notify_all();
    }

    /// Waits until a call of `command` waits at its hold; false after `limit`.
    pub fn wait_until_held(&self, command: &'static str, limit: Duration) -> bool {
        let state = self.state();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, limit, |s| {
                s.waiting.get(command).copied().unwrap_or(0) == 0
            })
            .unwrap_or_else(|p| p.into_inner());
        state.waiting.get(command).copied().unwrap_or(0) > 0
    }

    /// The next call of `command` fails with `fault` (queued: one fault per call).
    pub fn fail_next(&self, command: &'static str, fault: Fault) {
        self.state()
            .faults
            .entry(command)
            .or_default()
            .push_back(fault);
    }

    /// The tool is missing: every call fails as a missing vmrun does.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// The VM runs (or stops) without the server doing it: Fusion's window, a crash.
    pub fn set_running_behind_the_back(&self, vmx: &Path, runs: bool) {
        let mut state = self.state();
        if runs {
            state.running.insert(vmx.to_path_buf());
        } else {
            state.running.remove(vmx);
        }
    }

    pub fn is_running(&self, vmx: &Path) -> bool {
        self.state().running.contains(vmx)
    }

    /// The guest variables written to the VM at `vmx` since it last started.
    pub fn guest_vars(&self, vmx: &Path) -> BTreeMap<String, String> {
        self.state()
            .guest_vars
            .get(vmx)
            .cloned()
            .unwrap_or_default()
    }

    /// The VM's guest no longer reports an address (its network went away).
    pub fn forget_address(&self, vmx: &Path) {
        self.state().addresses.remove(vmx);
    }

    /// Every call so far, as `command path`.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }

    /// Logs and counts the call, waits at a hold, then answers a queued fault if any.
    fn enter(
        &self,
        command: &'static str,
        vmx: Option<&Path>,
        cancel: Option<&Cancel>,
    ) -> Result<(), HypervisorError> {
        let call = Call {
            tool: "vmrun",
            command,
            vm: vmx.map(Path::to_path_buf),
        };
        let mut state = self.state();
        state.calls.push(match vmx {
            Some(vmx) => format!("{command} {}", vmx.display()),
            None => command.to_string(),
        });
        if state.unavailable {
            return Err(HypervisorError::NotFound {
                tool: "vmrun",
                path: PathBuf::from("fake-vmrun"),
                problem: "no such file".into(),
            });
        }
        if state.held.contains(command) {
            *state.waiting.entry(command).or_default() += 1;
            self.changed.notify_all();
            while state.held.contains(command) && !cancel.is_some_and(Cancel::is_cancelled) {
                state = self
                    .changed
                    .wait_timeout(state, Duration::from_millis(10))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            *state.waiting.entry(command).or_default() -= 1;
        }
        if cancel.is_some_and(Cancel::is_cancelled) {
            count(&mut state, command, "vmrun-cancelled");
            return Err(HypervisorError::Cancelled { call });
        }
        let fault = state.faults.get_mut(command).and_then(VecDeque::pop_front);
        let Some(fault) = fault else {
            count(&mut state, command, "ok");
            return Ok(());
        };
        let err = match fault {
            Fault::Locked => HypervisorError::VmLocked {
                call,
                message: "The file is already in use".into(),
            },
            Fault::CannotOpen => HypervisorError::VmOpenError {
                call,
                message: "Cannot open VM".into(),
            },
            Fault::Failed(message) => HypervisorError::Failed { call, message },
        };
        count(&mut state, command, err.code());
        Err(err)
    }
}

fn count(state: &mut State, command: &str, outcome: &str) {
    *state
        .counts
        .entry((command.to_string(), outcome.to_string()))
        .or_default() += 1;
}

impl vm_ops::Snapshots for FakeHypervisor {
    fn list_snapshots(&self, vmx: &Path) -> Result<Vec<String>, HypervisorError> {
        self.enter("listSnapshots", Some(vmx), None)?;
        Ok(self.state().snapshots.get(vmx).cloned().unwrap_or_default())
    }

    fn snapshot(&self, vmx: &Path, name: &str) -> Result<(), HypervisorError> {
        self.enter("snapshot", Some(vmx), None)?;
        self.state()
            .snapshots
            .entry(vmx.to_path_buf())
            .or_default()
            .push(name.to_string());
        Ok(())
    }

    fn clone_linked(
        &self,
        src: &Path,
        dst: &Path,
        snapshot: &str,
        _clone_name: &str,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        self.enter("clone", Some(src), Some(cancel))?;
        let call = || Call {
            tool: "vmrun",
            command: "clone",
            vm: Some(src.to_path_buf()),
        };
        let has_snapshot = self
            .state()
            .snapshots
            .get(src)
            .is_some_and(|names| names.iter().any(|n| n == snapshot));
        if !has_snapshot {
            return Err(HypervisorError::Failed {
                call: call(),
                message: format!("Invalid snapshot name '{snapshot}'"),
            });
        }
        let copied = dst
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::copy(src, dst));
        copied.map(drop).map_err(|e| HypervisorError::Failed {
            call: call(),
            message: format!("cannot write the clone: {e}"),
        })
    }
}

impl Hypervisor for FakeHypervisor {
    fn check_available(&self) -> Result<(), HypervisorError> {
        if self.state().unavailable {
            return Err(HypervisorError::NotFound {
                tool: "vmrun",
                path: PathBuf::from("fake-vmrun"),
                problem: "no such file".into(),
            });
        }
        Ok(())
    }

    fn running(&self) -> &RunningVms {
        &self.running
    }

    fn list_running(&self) -> Result<Vec<PathBuf>, HypervisorError> {
        let ticket = self.running.begin();
        let listed = self.enter("list", None, None).map(|()| {
            let state = self.state();
            state
                .running
                .iter()
                .map(|vmx| vm_ops::running_key(vmx))
                .collect::<Vec<_>>()
        });
        match &listed {
            Ok(paths) => self.running.listed(ticket, paths),
            Err(err) => self.running.failed(ticket, err.code(), &err.to_string()),
        }
        listed
    }

    fn prepare_gold(&self, gold: GoldVm<'_>) -> Result<(), HypervisorError> {
        vm_ops::prepare_gold(self, gold.config)
    }

    fn clone_vm(
        &self,
        gold: GoldVm<'_>,
        vm: &VmRef,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        vm_ops::clone_vm(self, gold.config, &vm_ops::vmx_of(vm), &vm.id, cancel)
    }

    fn gold_holder(&self, gold: GoldVm<'_>, err: &HypervisorError) -> (PathBuf, String) {
        vm_ops::gold_holder(gold, err)
    }

    fn vm_file(&self, vm: &VmRef) -> PathBuf {
        vm_ops::vmx_of(vm)
    }

    fn find_vm(&self, vm: &VmRef) -> Result<FoundVm, String> {
        vm_ops::find_vm(vm)
    }

    fn configure(
        &self,
        vm: &VmRef,
        gold: GoldVm<'_>,
        settings: &VmSettings<'_>,
        guestinfo: &GuestInfo,
    ) -> Result<Configured, HypervisorError> {
        vm_ops::configure(vm, gold.dir, false, settings, guestinfo)
    }

    fn remove_stale_locks(&self, vm: &VmRef, running: &HashSet<PathBuf>) -> Vec<PathBuf> {
        super::vmrun::locks::remove_locks_in(&vm.dir, running)
    }

    fn open_log(&self, vm: &VmRef) -> std::io::Result<Option<(std::fs::File, u64)>> {
        vm_ops::open_log(&vm_ops::vmx_of(vm))
    }

    fn log_tail(&self, vm: &VmRef) -> Option<LogTail> {
        vm_ops::log_tail(&vm_ops::vmx_of(vm))
    }

    fn start(&self, vm: &VmRef, _headless: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        self.enter("start", Some(vmx), Some(cancel))?;
        let mut state = self.state();
        if state.running.contains(vmx) {
            return Err(HypervisorError::AlreadyRunning {
                call: Call {
                    tool: "vmrun",
                    command: "start",
                    vm: Some(vmx.to_path_buf()),
                },
                message: "The virtual machine should not be powered on. It is already running."
                    .into(),
            });
        }
        state.running.insert(vmx.to_path_buf());
        let n = state.addresses.len() + 2;
        state
            .addresses
            .insert(vmx.to_path_buf(), format!("192.168.64.{n}"));
        drop(state);
        self.running.changed(&vm.dir, true);
        Ok(())
    }

    fn stop(&self, vm: &VmRef, _hard: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        self.enter("stop", Some(vmx), Some(cancel))?;
        let mut state = self.state();
        state.running.remove(vmx);
        state.guest_vars.remove(vmx);
        drop(state);
        self.running.changed(&vm.dir, false);
        Ok(())
    }

    fn reset(&self, vm: &VmRef, _hard: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        self.enter("reset", Some(&vm_ops::vmx_of(vm)), Some(cancel))
    }

    fn delete_vm(&self, vm: &VmRef) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        self.enter("deleteVM", Some(vmx), None)?;
        let call = || Call {
            tool: "vmrun",
            command: "deleteVM",
            vm: Some(vmx.to_path_buf()),
        };
        if self.state().running.contains(vmx) {
            return Err(HypervisorError::AlreadyRunning {
                call: call(),
                message: "The virtual machine should not be powered on. It is already running."
                    .into(),
            });
        }
        match std::fs::remove_file(vmx) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(HypervisorError::VmOpenError {
                    call: call(),
                    message: "Cannot open VM".into(),
                })
            }
            Err(e) => Err(HypervisorError::Failed {
                call: call(),
                message: e.to_string(),
            }),
        }
    }

    fn guest_ip(&self, vm: &VmRef, cancel: &Cancel) -> Result<IpAnswer, HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        self.enter("getGuestIPAddress", Some(vmx), Some(cancel))?;
        let state = self.state();
        if !state.running.contains(vmx) {
            return Err(HypervisorError::NotPoweredOn {
                call: Call {
                    tool: "vmrun",
                    command: "getGuestIPAddress",
                    vm: Some(vmx.to_path_buf()),
                },
                message: "The virtual machine is not powered on".into(),
            });
        }
        Ok(state
            .addresses
            .get(vmx)
            .map_or(IpAnswer::NoAddress, |ip| IpAnswer::Address(ip.clone())))
    }

    fn guest_ip_wait(
        &self,
        vm: &VmRef,
        _limit: Duration,
        cancel: &Cancel,
    ) -> Result<IpAnswer, HypervisorError> {
        self.guest_ip(vm, cancel)
    }

    fn write_guest_data(&self, vm: &VmRef, name: &str, value: &str) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        self.enter("writeVariable", Some(vmx), None)?;
        let mut state = self.state();
        if !state.running.contains(vmx) {
            return Err(HypervisorError::NotPoweredOn {
                call: Call {
                    tool: "vmrun",
                    command: "writeVariable",
                    vm: Some(vmx.to_path_buf()),
                },
                message: "The virtual machine is not powered on".into(),
            });
        }
        state
            .guest_vars
            .entry(vmx.to_path_buf())
            .or_default()
            .insert(name.to_string(), value.to_string());
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "fake"
    }

    fn ended(&self, _vm: &VmRef) -> super::Ended {
        super::Ended::PoweredOff
    }

    fn tool(&self) -> &'static str {
        "vmrun"
    }

    fn hard_reset_words(&self) -> String {
        "vmrun reset hard".into()
    }

    fn silent_guest_words(&self) -> &'static str {
        "no VMware Tools and no DHCP lease"
    }

    fn describe(&self) -> Result<String, HypervisorError> {
        Ok("in memory".into())
    }

    fn start_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn ip_query_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn call_counts(&self) -> Vec<(String, String, u64)> {
        self.state()
            .counts
            .iter()
            .map(|((command, outcome), n)| (command.clone(), outcome.clone(), *n))
            .collect()
    }
}
