//! The one place that runs vmrun.
//!
//! Every call gets a deadline, runs in its own process group (killed whole on expiry or
//! cancellation), is logged when it starts and ends, is counted by outcome, and has its
//! output turned into values or typed errors by `output`.

pub(crate) mod dependants;
pub(crate) mod locks;
mod output;
pub(crate) mod vm_ops;
pub mod vmx;
pub(crate) mod vmx_policy;

pub use crate::hypervisor::{Call, HypervisorError, IpAnswer};
pub use output::{is_invalid_parameters, is_invalid_snapshot, is_snapshot_exists, ToolsState};

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config;
use crate::hypervisor::process::{self, RunError};
use crate::hypervisor::running::{running_set, RunningVms};
use crate::hypervisor::{Configured, Ended, FoundVm, GoldVm, LogTail, VmRef, VmSettings};
use crate::sys::cancel::Cancel;
use crate::sys::log::{self, Fields, Level};
use crate::sys::sync::LockUnpoisoned;
use crate::vm::guestinfo::GuestInfo;
use output::Exit;
use std::collections::HashSet;

pub const DEFAULT_VMRUN_PATH: &str = match config::VMRUN_PATH.platform() {
    Some(path) => path,
    None => panic!("--vmrun-path has a default on every platform"),
};

/// Packer passes `-T ws` on Linux; on macOS vmrun works out the host itself.
pub const DEFAULT_HOST_TYPE: Option<&str> = config::VMRUN_HOST_TYPE.platform();

/// Deadlines per command: vmrun can hang, and these are what tools in the field use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub clone: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub delete: Duration,
    pub list: Duration,
    pub ip_query: Duration,
    /// `snapshot` and `listSnapshots`: both work on the gold VM's snapshot file, and
    /// `--vmrun-timeout-snapshot` is documented to cover both.
    pub snapshot: Duration,
    /// `checkToolsState` and `writeVariable`.
    pub other: Duration,
}

impl Timeouts {
    /// The settings' defaults (`--vmrun-timeout-*`).
    pub const DEFAULT: Timeouts = Timeouts {
        clone: config::VMRUN_TIMEOUT_CLONE.seconds(),
        start: config::VMRUN_TIMEOUT_START.seconds(),
        stop: config::VMRUN_TIMEOUT_STOP.seconds(),
        delete: config::VMRUN_TIMEOUT_DELETE.seconds(),
        list: config::VMRUN_TIMEOUT_LIST.seconds(),
        ip_query: config::VMRUN_TIMEOUT_IP.seconds(),
        snapshot: config::VMRUN_TIMEOUT_SNAPSHOT.seconds(),
        // checkToolsState and writeVariable have no setting of their own: they answer at
        // once or hang.
        other: Duration::from_secs(60),
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmrunSettings {
    pub path: PathBuf,
    /// Passed as `-T <host_type>` before the command (`fusion`, `ws`, `player`).
    pub host_type: Option<String>,
    pub timeouts: Timeouts,
    /// `--strict-vmx`: fail a VM whose clone's VMX has lines the allow-list refuses,
    /// rather than removing them.
    pub strict_vmx: bool,
}

impl VmrunSettings {
    /// vmrun at `path` with this platform's host type and the default timeouts.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VmrunSettings {
            path: path.into(),
            host_type: DEFAULT_HOST_TYPE.map(str::to_string),
            timeouts: Timeouts::default(),
            strict_vmx: false,
        }
    }
}

impl Default for VmrunSettings {
    fn default() -> Self {
        VmrunSettings::new(DEFAULT_VMRUN_PATH)
    }
}

/// Runs vmrun. Cheap to clone; clones share the call counters.
#[derive(Debug, Clone)]
pub struct Vmrun {
    settings: Arc<VmrunSettings>,
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    /// What every call here has shown of which VMs run: see [`RunningVms`].
    running: Arc<RunningVms>,
}

/// How a successful call ended, for the log line and the counters.
const OK: &str = "ok";

impl Vmrun {
    pub fn new(settings: VmrunSettings) -> Self {
        Vmrun {
            settings: Arc::new(settings),
            counts: Arc::default(),
            running: Arc::default(),
        }
    }

    pub fn settings(&self) -> &VmrunSettings {
        &self.settings
    }

    pub fn tools_state(&self, vmx: &Path) -> Result<ToolsState, HypervisorError> {
        let timeout = self.settings.timeouts.other;
        self.call(
            "checkToolsState",
            Some(vmx),
            &[],
            timeout,
            None,
            |call, stdout| {
                output::parse_tools_state(stdout)
                    .map(|state| (state, OK))
                    .map_err(|problem| bad_output(call, problem, stdout))
            },
        )
    }

    fn call<T>(
        &self,
        command: &'static str,
        vmx: Option<&Path>,
        args: &[OsString],
        timeout: Duration,
        cancel: Option<&Cancel>,
        on_success: impl FnOnce(&Call, &str) -> Result<(T, &'static str), HypervisorError>,
    ) -> Result<T, HypervisorError> {
        let result = self.call_raw(command, vmx, args, timeout, cancel);
        self.finish(result, on_success, Err)
    }

    /// Runs vmrun and judges its exit; the caller turns that into a value with `finish`.
    fn call_raw(
        &self,
        command: &'static str,
        vmx: Option<&Path>,
        args: &[OsString],
        timeout: Duration,
        cancel: Option<&Cancel>,
    ) -> RawResult {
        let call = Call {
            tool: "vmrun",
            command,
            vm: vmx.map(Path::to_path_buf),
        };
        let mut argv: Vec<OsString> = Vec::with_capacity(args.len() + 4);
        if let Some(host) = &self.settings.host_type {
            argv.push("-T".into());
            argv.push(host.into());
        }
        argv.push(command.into());
        if let Some(vmx) = vmx {
            argv.push(vmx.into());
        }
        argv.extend(args.iter().cloned());

        // A clone names its VM in the destination, the first argument after the source.
        let vm = [vmx, args.first().map(Path::new)]
            .into_iter()
            .flatten()
            .map(vm_id)
            .find(|id| !id.is_empty())
            .unwrap_or_default();
        crate::debug!(vm = &vm, command = command; "{call}: running (limit {} s)", timeout.as_secs_f64());
        let started = Instant::now();
        let outcome = match process::run(&self.settings.path, &argv, timeout, cancel) {
            Ok(finished) => {
                let stdout = String::from_utf8_lossy(&finished.stdout).into_owned();
                let stderr = String::from_utf8_lossy(&finished.stderr);
                if !finished.output_complete {
                    crate::warn!(
                        vm = &vm, command = command;
                        "{call}: exited but a process it started still holds its output open; \
                         judging the output read so far"
                    );
                }
                let exit = Exit {
                    code: finished.code,
                    signal: finished.signal,
                };
                output::judge(&call, exit, &stdout, &stderr).map(|()| stdout)
            }
            Err(RunError::Spawn(source)) => Err(match source.kind() {
                std::io::ErrorKind::NotFound => HypervisorError::NotFound {
                    tool: "vmrun",
                    path: self.settings.path.clone(),
                    problem: "no such file".to_string(),
                },
                _ => HypervisorError::Spawn {
                    call: call.clone(),
                    path: self.settings.path.clone(),
                    source,
                },
            }),
            Err(RunError::Wait(source)) => Err(HypervisorError::Failed {
                call: call.clone(),
                message: format!("could not wait for vmrun to finish: {source}"),
            }),
            Err(RunError::TimedOut) => Err(HypervisorError::Timeout {
                call: call.clone(),
                limit: timeout,
            }),
            Err(RunError::Cancelled) => Err(HypervisorError::Cancelled { call: call.clone() }),
        };
        RawResult {
            call,
            vm,
            started,
            outcome,
        }
    }

    /// Turns a finished call into the method's result, then logs and counts that result.
    fn finish<T>(
        &self,
        raw: RawResult,
        on_success: impl FnOnce(&Call, &str) -> Result<(T, &'static str), HypervisorError>,
        on_error: impl FnOnce(HypervisorError) -> Result<(T, &'static str), HypervisorError>,
    ) -> Result<T, HypervisorError> {
        let RawResult {
            call,
            vm,
            started,
            outcome,
        } = raw;
        let result = match outcome {
            Ok(stdout) => on_success(&call, &stdout),
            Err(err) => on_error(err),
        };
        let millis = started.elapsed().as_millis();
        let routine = is_routine(call.command);
        let label = match &result {
            Ok((_, label)) => {
                let level = if routine { Level::Debug } else { Level::Info };
                log::write_with(
                    level,
                    Fields::new()
                        .vm(&vm)
                        .command(call.command)
                        .duration_ms(millis),
                    format_args!("{call}: {label} after {millis} ms"),
                );
                *label
            }
            Err(err) => {
                let text = err.to_string();
                let prefix = format!("{call}: ");
                let detail = text.strip_prefix(&prefix).unwrap_or(&text);
                let level = if routine { Level::Debug } else { Level::Warn };
                log::write_with(
                    level,
                    Fields::new()
                        .vm(&vm)
                        .command(call.command)
                        .code(err.code())
                        .duration_ms(millis),
                    format_args!("{call}: {} after {millis} ms: {detail}", err.code()),
                );
                err.code()
            }
        };
        self.count(call.command, label);
        result.map(|(value, _)| value)
    }

    fn count(&self, command: &str, outcome: &str) {
        let mut counts = self.counts.lock_unpoisoned();
        *counts
            .entry((command.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
    }
}

struct RawResult {
    call: Call,
    /// The VM's id when the call is about one of our VMs (empty otherwise), for the log.
    vm: String,
    started: Instant,
    /// stdout on success.
    outcome: Result<String, HypervisorError>,
}

/// The calls the server makes over and over on its own (the background `vmrun list`, IP
/// and Tools queries while a VM boots or idles in a pool, the gold VM's snapshot list before
/// each clone, a guest variable read): logged at debug, success or failure. Whoever makes
/// them logs what their outcome means once (a VM's IP, its failure, `vmrun list` failing
/// and answering again), so an idle host writes nothing at info.
fn is_routine(command: &str) -> bool {
    matches!(
        command,
        "list" | "getGuestIPAddress" | "checkToolsState" | "listSnapshots" | "readVariable"
    )
}

fn ip_answer(call: &Call, stdout: &str) -> Result<(IpAnswer, &'static str), HypervisorError> {
    match output::parse_ip(stdout) {
        Ok(Some(ip)) => Ok((IpAnswer::Address(ip), OK)),
        Ok(None) => Ok((IpAnswer::NoAddress, "no-address-yet")),
        Err(problem) => Err(bad_output(call, problem, stdout)),
    }
}

/// For commands that print nothing on success.
fn no_answer(_: &Call, _: &str) -> Result<((), &'static str), HypervisorError> {
    Ok(((), OK))
}

fn bad_output(call: &Call, problem: String, stdout: &str) -> HypervisorError {
    HypervisorError::BadOutput {
        call: call.clone(),
        problem,
        output: output::shorten(stdout),
    }
}

/// `vm=<id> ` for the VMX of one of our VMs (`vms/<id>/<id>.vmx`), so that a VM's log
/// lines, its vmrun calls included, can be found by its id; empty for other files.
fn vm_id(vmx: &Path) -> String {
    vmx.file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(crate::vm::VmId::parse)
        .map(|id| id.to_string())
        .unwrap_or_default()
}

impl Vmrun {
    pub fn list_snapshots(&self, vmx: &Path) -> Result<Vec<String>, HypervisorError> {
        let timeout = self.settings.timeouts.snapshot;
        self.call(
            "listSnapshots",
            Some(vmx),
            &[],
            timeout,
            None,
            |call, stdout| {
                output::parse_snapshots(stdout)
                    .map(|names| (names, OK))
                    .map_err(|problem| bad_output(call, problem, stdout))
            },
        )
    }

    pub fn snapshot(&self, vmx: &Path, name: &str) -> Result<(), HypervisorError> {
        let timeout = self.settings.timeouts.snapshot;
        self.call(
            "snapshot",
            Some(vmx),
            &[name.into()],
            timeout,
            None,
            no_answer,
        )
    }

    /// Makes `dst` a linked clone of `src` at its snapshot `snapshot`. The snapshot is always
    /// named: without one vmrun adds a new `Clone` snapshot to the parent on every call.
    pub fn clone_linked(
        &self,
        src: &Path,
        dst: &Path,
        snapshot: &str,
        clone_name: &str,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        let call = Call {
            tool: "vmrun",
            command: "clone",
            vm: Some(src.to_path_buf()),
        };
        if snapshot.trim().is_empty() {
            return Err(HypervisorError::InvalidArgument {
                call,
                problem: "a linked clone needs a snapshot name, or vmrun adds a new snapshot to \
                          the parent on every clone"
                    .to_string(),
            });
        }
        if clone_name.trim().is_empty() {
            return Err(HypervisorError::InvalidArgument {
                call,
                problem: "the clone needs a name, or VMware calls it `Clone of ...`".to_string(),
            });
        }
        let args: [OsString; 4] = [
            dst.into(),
            "linked".into(),
            format!("-snapshot={snapshot}").into(),
            format!("-cloneName={clone_name}").into(),
        ];
        let timeout = self.settings.timeouts.clone;
        self.call("clone", Some(src), &args, timeout, Some(cancel), no_answer)
    }
}

impl vm_ops::Snapshots for Vmrun {
    fn list_snapshots(&self, vmx: &Path) -> Result<Vec<String>, HypervisorError> {
        Vmrun::list_snapshots(self, vmx)
    }

    fn snapshot(&self, vmx: &Path, name: &str) -> Result<(), HypervisorError> {
        Vmrun::snapshot(self, vmx, name)
    }

    fn clone_linked(
        &self,
        src: &Path,
        dst: &Path,
        snapshot: &str,
        clone_name: &str,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        Vmrun::clone_linked(self, src, dst, snapshot, clone_name, cancel)
    }
}

impl super::Hypervisor for Vmrun {
    /// Checks that the configured vmrun is an executable file, so a missing VMware install
    /// is reported once at startup rather than on every VM.
    fn check_available(&self) -> Result<(), HypervisorError> {
        let path = &self.settings.path;
        let not_found = |problem: String| HypervisorError::NotFound {
            tool: "vmrun",
            path: path.clone(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found("no such file".to_string()),
            _ => not_found(format!("cannot inspect it: {e}")),
        })?;
        if !meta.is_file() {
            return Err(not_found("it is not a file".to_string()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(not_found("it is not executable".to_string()));
        }
        Ok(())
    }

    /// Which VMs run, as the last `vmrun list` and our own starts and stops since say.
    fn running(&self) -> &RunningVms {
        &self.running
    }

    /// The running VMs: the server's by their folders, others by their VMX paths.
    fn list_running(&self) -> Result<Vec<PathBuf>, HypervisorError> {
        let timeout = self.settings.timeouts.list;
        let ticket = self.running.begin();
        let listed = self.call("list", None, &[], timeout, None, |call, stdout| {
            output::parse_list(stdout)
                .map(|paths| {
                    (
                        paths
                            .iter()
                            .map(|p| vm_ops::running_key(p))
                            .collect::<Vec<_>>(),
                        OK,
                    )
                })
                .map_err(|problem| bad_output(call, problem, stdout))
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

    fn remove_dead_gold_locks(&self, gold: GoldVm<'_>) -> Vec<(PathBuf, String)> {
        vm_ops::remove_dead_gold_locks(gold)
    }

    fn vm_file(&self, vm: &VmRef) -> PathBuf {
        vm_ops::vmx_of(vm)
    }

    fn find_vm(&self, vm: &VmRef) -> Result<FoundVm, String> {
        vm_ops::find_vm(vm)
    }

    fn mac_address(&self, vm: &VmRef) -> Option<String> {
        vm_ops::mac_address(vm)
    }

    fn configure(
        &self,
        vm: &VmRef,
        gold: GoldVm<'_>,
        settings: &VmSettings<'_>,
        guestinfo: &GuestInfo,
    ) -> Result<Configured, HypervisorError> {
        vm_ops::configure(vm, gold.dir, self.settings.strict_vmx, settings, guestinfo)
    }

    /// VMware leaves lock folders behind when the host or its process dies, and then
    /// refuses to start the VM with "The file is already in use".
    fn remove_stale_locks(&self, vm: &VmRef, running: &HashSet<PathBuf>) -> Vec<PathBuf> {
        locks::remove_locks_in(&vm.dir, running)
    }

    fn open_log(&self, vm: &VmRef) -> std::io::Result<Option<(std::fs::File, u64)>> {
        vm_ops::open_log(&vm_ops::vmx_of(vm))
    }

    fn log_tail(&self, vm: &VmRef) -> Option<LogTail> {
        vm_ops::log_tail(&vm_ops::vmx_of(vm))
    }

    /// Powers the VM on. Returns when it begins to boot, not when the guest is up.
    /// Clears the VM's stale `.lck` folders first (VMware's alone: it refuses a start with
    /// "The file is already in use" while one is left from a crash), unless `list` shows the
    /// VM running or cannot tell.
    fn start(&self, vm: &VmRef, headless: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        // A start cancelled beforehand runs no vmrun at all, not even the listing.
        if !cancel.is_cancelled() {
            if let Some(running) = running_set(self) {
                self.remove_stale_locks(vm, &running);
            }
        }
        let vmx = &vm_ops::vmx_of(vm);
        let mode = if headless { "nogui" } else { "gui" };
        let timeout = self.settings.timeouts.start;
        self.call(
            "start",
            Some(vmx),
            &[mode.into()],
            timeout,
            Some(cancel),
            no_answer,
        )?;
        self.running.changed(&vm.dir, true);
        Ok(())
    }

    /// Powers the VM off; `hard` does not need VMware Tools (a `soft` stop can hang without
    /// them). A VM that is already off counts as stopped.
    fn stop(&self, vm: &VmRef, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        let mode = if hard { "hard" } else { "soft" };
        let timeout = self.settings.timeouts.stop;
        let result = self.call_raw("stop", Some(vmx), &[mode.into()], timeout, Some(cancel));
        self.finish(
            result,
            |_, _| Ok(((), OK)),
            |err| match err {
                HypervisorError::NotPoweredOn { .. } => Ok(((), "not-powered-on")),
                other => Err(other),
            },
        )?;
        self.running.changed(&vm.dir, false);
        Ok(())
    }

    /// Reboots the VM; `hard` does not need VMware Tools (a guest hung at boot has none).
    fn reset(&self, vm: &VmRef, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        let mode = if hard { "hard" } else { "soft" };
        let timeout = self.settings.timeouts.start;
        self.call(
            "reset",
            Some(vmx),
            &[mode.into()],
            timeout,
            Some(cancel),
            no_answer,
        )
    }

    /// Deletes VMware's files of the VM (not other files in its folder).
    fn delete_vm(&self, vm: &VmRef) -> Result<(), HypervisorError> {
        let timeout = self.settings.timeouts.delete;
        let vmx = &vm_ops::vmx_of(vm);
        self.call("deleteVM", Some(vmx), &[], timeout, None, no_answer)?;
        self.running.changed(&vm.dir, false);
        Ok(())
    }

    /// What VMware Tools report as the guest's IP address, as vmrun printed it (the caller
    /// judges whether it is usable). Never passes `-wait`, which blocks with no limit of its
    /// own: see [`Vmrun::guest_ip_wait`].
    fn guest_ip(&self, vm: &VmRef, cancel: &Cancel) -> Result<IpAnswer, HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        let timeout = self.settings.timeouts.ip_query;
        let result = self.call_raw("getGuestIPAddress", Some(vmx), &[], timeout, Some(cancel));
        self.finish(result, ip_answer, |err| {
            if output::is_tools_not_running(&err) {
                Ok((IpAnswer::NoTools, "tools-not-running"))
            } else {
                Err(err)
            }
        })
    }

    /// `getGuestIPAddress -wait`, killed after `limit`: on Fusion, after `start nogui`, the
    /// call without `-wait` can go on answering that Tools are not running while this one
    /// gets the address. Running out of time is "no address yet", not a failure.
    fn guest_ip_wait(
        &self,
        vm: &VmRef,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<IpAnswer, HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        let result = self.call_raw(
            "getGuestIPAddress",
            Some(vmx),
            &["-wait".into()],
            limit,
            Some(cancel),
        );
        self.finish(result, ip_answer, |err| match err {
            HypervisorError::Timeout { .. } => Ok((IpAnswer::NoTools, "no-address-within-limit")),
            err if output::is_tools_not_running(&err) => {
                Ok((IpAnswer::NoTools, "tools-not-running"))
            }
            other => Err(other),
        })
    }

    /// `writeVariable VMX guestVar NAME VALUE`. The value reaches vmrun's argument list only:
    /// the log line of the call names the command and the VM, never its arguments.
    fn write_guest_data(&self, vm: &VmRef, name: &str, value: &str) -> Result<(), HypervisorError> {
        let vmx = &vm_ops::vmx_of(vm);
        let timeout = self.settings.timeouts.other;
        let args: [OsString; 3] = ["guestVar".into(), name.into(), value.into()];
        self.call("writeVariable", Some(vmx), &args, timeout, None, no_answer)
    }

    fn kind(&self) -> &'static str {
        "vmware"
    }

    /// A VMware VM powered off behind the server's back (Fusion's window, `vmrun stop`, a
    /// guest shutdown) is stopped: vmware.log tells a crash from those only in words that
    /// vary by version.
    fn ended(&self, _vm: &VmRef) -> Ended {
        Ended::PoweredOff
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

    /// vmrun prints its version only in its usage text: the path is what says which.
    fn describe(&self) -> Result<String, HypervisorError> {
        self.check_available()?;
        Ok(format!("vmrun at {}", self.settings.path.display()))
    }

    fn start_timeout(&self) -> Duration {
        self.settings.timeouts.start
    }

    fn ip_query_timeout(&self) -> Duration {
        self.settings.timeouts.ip_query
    }

    /// Calls so far, by command and outcome (`ok`, another success label such as
    /// `not-powered-on`, or an error code), sorted.
    fn call_counts(&self) -> Vec<(String, String, u64)> {
        let counts = self.counts.lock_unpoisoned();
        counts
            .iter()
            .map(|((command, outcome), n)| (command.clone(), outcome.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Hypervisor;

    #[test]
    fn calls_on_our_vms_are_logged_with_their_id() {
        let id = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";
        assert_eq!(vm_id(Path::new(&format!("/d/vms/{id}/{id}.vmx"))), id);
        assert_eq!(vm_id(Path::new("/d/gold/abc/box/gold.vmx")), "");
        assert_eq!(
            vm_id(Path::new("/d/282ee68a2e4d4bd79c0e7f37e12fc489.vmx")),
            ""
        );
        assert_eq!(vm_id(Path::new("-snapshot=osx-builder-base")), "");
    }

    #[test]
    fn the_driver_can_be_shared_between_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Vmrun>();
    }

    #[test]
    fn a_linked_clone_without_a_snapshot_is_refused_before_running_anything() {
        // The path does not exist: reaching vmrun would give vmrun-not-found instead.
        let vmrun = Vmrun::new(VmrunSettings::new("/nonexistent/vmrun"));
        let cancel = Cancel::new();
        for (snapshot, name) in [("", "x"), ("  ", "x"), ("base", "")] {
            let err = vmrun
                .clone_linked(
                    Path::new("/g/g.vmx"),
                    Path::new("/v/v.vmx"),
                    snapshot,
                    name,
                    &cancel,
                )
                .unwrap_err();
            assert_eq!(
                err.code(),
                "vmrun-invalid-argument",
                "{snapshot:?} {name:?}"
            );
        }
        assert!(vmrun.call_counts().is_empty());
    }
}
