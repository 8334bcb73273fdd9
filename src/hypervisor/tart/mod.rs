//! The tart driver (Apple Silicon Macs, Virtualization.framework through Cirrus Labs'
//! `tart`): the one place that runs tart. Every call has a deadline and its own process
//! group (killed whole when it hangs), sees `TART_HOME` (a folder of the server's data
//! folder, so its VMs never mix with a person's) and `TART_NO_AUTO_PRUNE`, and has tart's
//! stderr turned into typed errors (`errors`). `tart run` stays in the foreground for a VM's
//! whole life: it is started in its own session with its output in a log file of the VM's
//! folder (`runner`), so that VMs outlive the server.
//!
//! A VM of the server is the tart VM `osxb-<id>` (its record, runner log and guest folder
//! stay in its folder `vms/<id>/` of the data folder, with a mark of the clone, see
//! [`marker`]); a gold image is `osxb-gold-<checksum>`. Names without the prefix are a
//! person's own: never touched.

mod errors;
mod gold;
mod runner;

pub use gold::gold_vm_name;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hypervisor::guest_ip::IpSource;
use crate::hypervisor::process::{self, RunError};
use crate::hypervisor::running::RunningVms;
use crate::hypervisor::vm_log;
use crate::hypervisor::{
    Call, Configured, Ended, FoundVm, GoldVm, Hypervisor, HypervisorError, IpAnswer, LogTail,
    VmRef, VmSettings,
};
use crate::sys::cancel::Cancel;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::guestinfo::GuestInfo;

/// Prefix of every tart VM this server made.
pub const PREFIX: &str = "osxb-";
/// The folder of a VM's record that is shared read-only into its guest, one file per key.
pub const GUEST_DIR: &str = "guestinfo";
/// The share's name: a macOS guest sees it at `/Volumes/My Shared Files/osx-builder`.
pub const SHARE_NAME: &str = "osx-builder";
/// The runner's output, in the VM's record folder.
pub const RUN_LOG: &str = "tart-run.log";
/// How the VM is to be run, written at configure and read by start.
const RUN_FILE: &str = "tart-run.json";

/// Where tart is looked for when `--tart-path` is not given: the PATH, then Homebrew's.
pub const FALLBACK_PATHS: [&str; 2] = ["/opt/homebrew/bin/tart", "/usr/local/bin/tart"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TartTimeouts {
    pub clone: Duration,
    /// A pull of an OCI image: tens of gigabytes.
    pub pull: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub delete: Duration,
    pub list: Duration,
    pub ip_query: Duration,
    pub other: Duration,
}

impl Default for TartTimeouts {
    fn default() -> Self {
        let s = Duration::from_secs;
        TartTimeouts {
            clone: s(600),
            pull: s(3 * 3600),
            start: s(120),
            stop: s(60),
            delete: s(60),
            list: s(10),
            ip_query: s(15),
            other: s(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TartSettings {
    pub path: PathBuf,
    /// Given to tart as `TART_HOME`.
    pub home: PathBuf,
    /// The server's `vms/` folder: where a running `osxb-<id>` has its record.
    pub vms_dir: PathBuf,
    /// The host interface of `network_type: bridged` (`--net-bridged=`).
    pub bridged_interface: String,
    pub timeouts: TartTimeouts,
}

/// Where `--tart-path` points: a path with a folder is taken as it is; a bare name is looked
/// for on the PATH, then (for `tart`) in Homebrew's places, and stays bare when found
/// nowhere, so that the error names what was looked for.
pub fn resolve_path(given: &Path) -> PathBuf {
    if given.components().count() != 1 || given.is_absolute() {
        return given.to_path_buf();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(given))
            .find(|p| p.is_file())
    });
    let homebrew = || {
        (given == Path::new("tart"))
            .then(|| {
                FALLBACK_PATHS
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .flatten()
    };
    on_path
        .or_else(homebrew)
        .unwrap_or_else(|| given.to_path_buf())
}

#[derive(Debug, Clone)]
pub struct Tart {
    settings: Arc<TartSettings>,
    counts: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    running: Arc<RunningVms>,
}

/// The mark of a clone the server began, in the VM's folder: the driver stops and deletes
/// the tart VM of that name only when it is there (a name found taken is never its to
/// touch). It is `<id>.vmx`, the file name the original's layout gives a VM's folder, so that
/// folders made by earlier versions of this driver keep being known.
pub fn marker(vm: &VmRef) -> PathBuf {
    vm.dir.join(format!("{}.vmx", vm.id))
}

/// The tart name of the VM whose mark is `vm` ([`marker`]).
pub fn vm_name(vm: &Path) -> String {
    let stem = vm
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    format!("{PREFIX}{stem}")
}

/// How configure asked the VM to be run, and where it came from (for a record lost).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
struct RunSpec {
    network_type: String,
    headless: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<serde_json::Value>,
}

impl Tart {
    pub fn new(settings: TartSettings) -> Tart {
        Tart {
            settings: Arc::new(settings),
            counts: Arc::default(),
            running: Arc::new(RunningVms::listed_by("tart list")),
        }
    }

    pub fn settings(&self) -> &TartSettings {
        &self.settings
    }

    /// `tart --version`, for the start-up log.
    pub fn version(&self) -> Result<String, HypervisorError> {
        self.call("--version", None, &[], self.settings.timeouts.other, None)
            .map(|out| out.trim().to_string())
    }

    fn env(&self) -> [(&'static str, &OsStr); 2] {
        [
            ("TART_HOME", self.settings.home.as_os_str()),
            // Never let tart delete a cached image behind the server's back.
            ("TART_NO_AUTO_PRUNE", OsStr::new("1")),
        ]
    }

    /// Runs `tart COMMAND ARGS...`; its stdout on success.
    fn call(
        &self,
        command: &'static str,
        vm: Option<&str>,
        args: &[OsString],
        timeout: Duration,
        cancel: Option<&Cancel>,
    ) -> Result<String, HypervisorError> {
        self.call_as(command, vm, args, timeout, cancel, |done| {
            done.map(|out| (out, "ok"))
        })
    }

    /// Runs `tart COMMAND ARGS...` and lets `judge` read its stdout or its error as the
    /// command means it, with the outcome the call is logged and counted as: an answer
    /// such as `tart ip`'s "no IP address found" is no failure of tart.
    fn call_as<T>(
        &self,
        command: &'static str,
        vm: Option<&str>,
        args: &[OsString],
        timeout: Duration,
        cancel: Option<&Cancel>,
        judge: impl FnOnce(
            Result<String, HypervisorError>,
        ) -> Result<(T, &'static str), HypervisorError>,
    ) -> Result<T, HypervisorError> {
        let call = Call {
            tool: "tart",
            command,
            vm: vm.map(PathBuf::from),
        };
        let mut argv: Vec<OsString> = vec![command.into()];
        argv.extend(args.iter().cloned());
        let started = std::time::Instant::now();
        let outcome =
            process::run_with_env(&self.settings.path, &argv, &self.env(), timeout, cancel);
        let result = match outcome {
            Err(RunError::Spawn(source)) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(self.not_found("no such file".into()))
            }
            Err(RunError::Spawn(source) | RunError::Wait(source)) => Err(HypervisorError::Spawn {
                call,
                path: self.settings.path.clone(),
                source,
            }),
            Err(RunError::TimedOut) => Err(HypervisorError::Timeout {
                call,
                limit: timeout,
            }),
            Err(RunError::Cancelled) => Err(HypervisorError::Cancelled { call }),
            Ok(done) if done.code == Some(0) => {
                Ok(String::from_utf8_lossy(&done.stdout).into_owned())
            }
            Ok(done) => Err(errors::judge(
                call,
                done.code,
                &String::from_utf8_lossy(&done.stderr),
            )),
        };
        let result = judge(result);
        let outcome = match &result {
            Ok((_, outcome)) => *outcome,
            Err(err) => err.code(),
        };
        // Routine calls (list, ip) every few seconds: an idle host writes nothing at info.
        crate::debug!(
            "tart {command} {} -> {outcome} in {} ms",
            vm.unwrap_or(""),
            started.elapsed().as_millis()
        );
        *self
            .counts
            .lock_unpoisoned()
            .entry((command.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
        result.map(|(value, _)| value)
    }

    fn not_found(&self, problem: String) -> HypervisorError {
        HypervisorError::NotFound {
            tool: "tart",
            path: self.settings.path.clone(),
            problem,
        }
    }

    /// The names of this server's local tart VMs and whether each runs.
    fn list_ours(&self) -> Result<Vec<(String, bool)>, HypervisorError> {
        let parsed = self.list_json(&["--source", "local"])?;
        Ok(parsed
            .iter()
            .filter_map(|vm| {
                let name = vm.get("Name")?.as_str()?;
                let running = vm.get("Running").and_then(serde_json::Value::as_bool) == Some(true)
                    || vm.get("State").and_then(serde_json::Value::as_str) == Some("running");
                name.starts_with(PREFIX)
                    .then(|| (name.to_string(), running))
            })
            .collect())
    }

    /// The `config.json` of the local tart VM `name`.
    fn config_of(&self, name: &str) -> PathBuf {
        self.settings
            .home
            .join("vms")
            .join(name)
            .join("config.json")
    }

    fn exists(&self, name: &str) -> bool {
        let dir = self.settings.home.join("vms").join(name);
        dir.join("config.json").exists() || dir.exists()
    }

    fn read_run_spec(vm: &Path) -> Option<RunSpec> {
        vm.parent()
            .and_then(|dir| fs::read(dir.join(RUN_FILE)).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    fn run_spec(vm: &Path) -> RunSpec {
        Self::read_run_spec(vm).unwrap_or(RunSpec {
            network_type: "nat".into(),
            headless: true,
            image: None,
        })
    }
}

/// Whether the tart VM of the record `vm` is the server's: its clone was begun by the
/// server (the marker is written just before). A VM that bore the name already is not.
fn is_ours(vm: &Path) -> bool {
    vm.is_file()
}

/// Writes `value` as the file `name` of the VM's guest folder: the folder 0700, the file
/// 0600, replaced atomically so the guest never reads half a value.
fn write_guest_file(dir: &Path, name: &str, value: &str) -> std::io::Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a guestinfo key cannot name a file outside the folder",
        ));
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(value.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))
}

impl Hypervisor for Tart {
    fn kind(&self) -> &'static str {
        "tart"
    }

    fn tool(&self) -> &'static str {
        "tart"
    }

    fn describe(&self) -> Result<String, HypervisorError> {
        self.check_available()?;
        Ok(format!(
            "tart {} at {}, its VMs in TART_HOME={}",
            self.version()?,
            self.settings.path.display(),
            self.settings.home.display()
        ))
    }

    fn check_available(&self) -> Result<(), HypervisorError> {
        let path = &self.settings.path;
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => self.not_found("no such file".into()),
            _ => self.not_found(format!("cannot inspect it: {e}")),
        })?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(self.not_found("it is not an executable file".into()));
        }
        Ok(())
    }

    fn running(&self) -> &RunningVms {
        &self.running
    }

    /// The folders (`vms/<id>`) of this server's VMs that tart lists running.
    fn list_running(&self) -> Result<Vec<PathBuf>, HypervisorError> {
        let ticket = self.running.begin();
        let listed = self.list_ours().map(|vms| {
            vms.into_iter()
                .filter(|(_, running)| *running)
                .filter_map(|(name, _)| {
                    let id = name.strip_prefix(PREFIX)?;
                    (!id.starts_with("gold-")).then(|| self.settings.vms_dir.join(id))
                })
                .collect::<Vec<_>>()
        });
        match &listed {
            Ok(paths) => self.running.listed(ticket, paths),
            Err(err) => self.running.failed(ticket, err.code(), &err.to_string()),
        }
        listed
    }

    /// Imports the published gold folder as the local tart VM `osxb-gold-<checksum>`: hard
    /// links of its three files (no copy; a clone of it is copy-on-write and does not
    /// depend on it afterwards).
    fn prepare_gold(&self, gold: GoldVm<'_>) -> Result<(), HypervisorError> {
        let name = gold_vm_name(gold.checksum);
        let dst = self.settings.home.join("vms").join(&name);
        if dst.join("config.json").is_file()
            && dst.join("disk.img").is_file()
            && dst.join("nvram.bin").is_file()
        {
            return Ok(());
        }
        let src = gold.config.parent().unwrap_or(Path::new("/"));
        let refused = |e: std::io::Error| {
            HypervisorError::Refused {
            code: "gold-import-failed",
            message: format!(
                "cannot make the gold image {} a tart VM in {}: {e}; check the free space and permissions of the data folder",
                src.display(),
                dst.display()
            ),
        }
        };
        let staging = self
            .settings
            .home
            .join("tmp")
            .join(format!("{name}.import"));
        let _ = fs::remove_dir_all(&staging);
        gold::link_vm_files(src, &staging).map_err(refused)?;
        let _ = fs::remove_dir_all(&dst);
        fs::create_dir_all(dst.parent().unwrap_or(Path::new("/"))).map_err(refused)?;
        fs::rename(&staging, &dst).map_err(refused)
    }

    fn pull_gold(
        &self,
        repository: &str,
        digest: &str,
        into: &Path,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        self.pull_gold_vm(repository, digest, into, cancel)
    }

    fn remove_gold(&self, checksum: &str) -> Result<(), HypervisorError> {
        self.remove_gold_vm(checksum)
    }

    /// A tart clone is a copy-on-write copy: deleting its source breaks nothing.
    fn clones_need_gold(&self) -> bool {
        false
    }

    fn golds_have_minimums(&self) -> bool {
        true
    }

    /// `tart set` refuses less than the VM's `cpuCountMin` and `memorySizeMin` (bytes), but
    /// only after the clone: the gold's `config.json` (`gold`) says so before.
    fn check_fits(
        &self,
        gold: GoldVm<'_>,
        cpus: u32,
        memory_mb: u32,
    ) -> Result<(), HypervisorError> {
        gold::check_fits(gold.config, cpus, memory_mb)
    }

    /// `tart clone` overwrites an existing name without a word: a name that exists is
    /// refused instead.
    fn clone_vm(
        &self,
        gold: GoldVm<'_>,
        vm: &VmRef,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        let vm = &marker(vm);
        let name = vm_name(vm);
        if self.exists(&name) {
            return Err(HypervisorError::Refused {
                code: "clone-exists",
                message: format!(
                    "a tart VM named {name} exists already in {}; it was not replaced (tart clone would have overwritten it): delete it with `TART_HOME={} tart delete {name}` if it is a leftover",
                    self.settings.home.display(),
                    self.settings.home.display()
                ),
            });
        }
        // The mark, written before the clone: from here the name is the server's.
        if let Some(dir) = vm.parent() {
            fs::create_dir_all(dir)
                .and_then(|()| fs::write(vm, format!("# tart VM {name}\n")))
                .map_err(|e| HypervisorError::Refused {
                    code: "clone-failed",
                    message: format!("cannot write {}: {e}", vm.display()),
                })?;
        }
        let args: [OsString; 2] = [gold_vm_name(gold.checksum).into(), name.clone().into()];
        self.call(
            "clone",
            Some(&name),
            &args,
            self.settings.timeouts.clone,
            Some(cancel),
        )?;
        Ok(())
    }

    fn vm_file(&self, vm: &VmRef) -> PathBuf {
        marker(vm)
    }

    /// A folder with the mark and no record: its tart VM's `config.json` and the run spec
    /// written at configure say what it was made as.
    fn find_vm(&self, vm: &VmRef) -> Result<FoundVm, String> {
        let mark = marker(vm);
        if !mark.is_file() {
            return Err(format!(
                "no {} (the mark of a clone this server began)",
                mark.display()
            ));
        }
        let name = vm_name(&mark);
        let config = self.config_of(&name);
        let config: serde_json::Value = fs::read(&config)
            .map_err(|e| {
                format!(
                    "its tart VM {name} has no readable {}: {e}",
                    config.display()
                )
            })
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", config.display()))
            })?;
        let number = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
        let spec = Self::read_run_spec(&mark);
        Ok(FoundVm {
            cpus: number("cpuCount").and_then(|n| u32::try_from(n).ok()),
            memory_mb: number("memorySize").and_then(|n| u32::try_from(n >> 20).ok()),
            network_type: spec.as_ref().map(|s| s.network_type.clone()),
            guest_os: config
                .get("os")
                .and_then(|o| o.as_str())
                .unwrap_or_default()
                .to_string(),
            image: spec.and_then(|s| s.image),
        })
    }

    fn configure(
        &self,
        vm: &VmRef,
        _gold: GoldVm<'_>,
        settings: &VmSettings<'_>,
        guestinfo: &GuestInfo,
    ) -> Result<Configured, HypervisorError> {
        let vm = &marker(vm);
        let name = vm_name(vm);
        let args: [OsString; 5] = [
            name.clone().into(),
            "--cpu".into(),
            settings.cpus.to_string().into(),
            "--memory".into(),
            settings.memory_mb.to_string().into(),
        ];
        self.call(
            "set",
            Some(&name),
            &args,
            self.settings.timeouts.other,
            None,
        )?;
        let dir = vm.parent().unwrap_or(Path::new("/"));
        let failed = |e: std::io::Error| HypervisorError::Refused {
            code: "vm-config-failed",
            message: format!("cannot write the guest data folder of {name}: {e}"),
        };
        let guest = dir.join(GUEST_DIR);
        fs::create_dir_all(&guest).map_err(failed)?;
        fs::set_permissions(&guest, fs::Permissions::from_mode(0o700)).map_err(failed)?;
        for (key, value) in guestinfo.iter() {
            write_guest_file(&guest, key, value).map_err(failed)?;
        }
        let spec = RunSpec {
            network_type: settings.network_type.to_string(),
            headless: settings.headless,
            image: Some(settings.image.clone()),
        };
        fs::write(
            dir.join(RUN_FILE),
            serde_json::to_vec(&spec).unwrap_or_default(),
        )
        .map_err(failed)?;
        let guest_os = fs::read(self.config_of(&name))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c.get("os").and_then(|o| o.as_str()).map(str::to_string))
            .unwrap_or_default();
        Ok(Configured {
            guest_os,
            removed: Vec::new(),
        })
    }

    /// tart keeps no lock that outlives its runner: nothing goes stale.
    fn remove_stale_locks(&self, _vm: &VmRef, _running: &HashSet<PathBuf>) -> Vec<PathBuf> {
        Vec::new()
    }

    fn open_log(&self, vm: &VmRef) -> std::io::Result<Option<(File, u64)>> {
        vm_log::open_file(&vm.dir, RUN_LOG)
    }

    fn ended(&self, vm: &VmRef) -> Ended {
        let lines = vm_log::tail_file(&vm.dir, RUN_LOG, 400).unwrap_or_default();
        match runner::ended(&lines.join("\n")) {
            Ok(()) => Ended::PoweredOff,
            Err(message) => Ended::Died {
                message,
                log_tail: self.log_tail(vm),
            },
        }
    }

    fn log_tail(&self, vm: &VmRef) -> Option<LogTail> {
        let dir = &vm.dir;
        let lines = vm_log::tail_file(dir, RUN_LOG, vm_log::TAIL_LINES)?;
        (!lines.is_empty()).then(|| LogTail {
            path: dir.join(RUN_LOG),
            lines,
        })
    }

    fn start(
        &self,
        vm_ref: &VmRef,
        headless: bool,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        let vm = &marker(vm_ref);
        let spec = Self::run_spec(vm);
        runner::start(
            self,
            vm,
            headless && spec.headless,
            &spec.network_type,
            cancel,
        )?;
        self.running.changed(&vm_ref.dir, true);
        Ok(())
    }

    /// `tart stop` is a power-off (SIGINT to the runner, then SIGKILL): `hard` waits less.
    fn stop(&self, vm_ref: &VmRef, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        let vm = &marker(vm_ref);
        let name = vm_name(vm);
        if !is_ours(vm) {
            return Ok(());
        }
        let wait = if hard { 5 } else { 30 };
        let args: [OsString; 3] = [
            name.clone().into(),
            "--timeout".into(),
            wait.to_string().into(),
        ];
        match self.call(
            "stop",
            Some(&name),
            &args,
            self.settings.timeouts.stop,
            Some(cancel),
        ) {
            Ok(_)
            | Err(HypervisorError::NotPoweredOn { .. } | HypervisorError::VmOpenError { .. }) => {
                self.running.changed(&vm_ref.dir, false);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn hard_reset_words(&self) -> String {
        "tart stop then tart run (a hard reset)".into()
    }

    fn silent_guest_words(&self) -> &'static str {
        "no address for the guest from tart ip (no DHCP lease, or nothing in the ARP cache when bridged)"
    }

    fn reset(&self, vm: &VmRef, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError> {
        self.stop(vm, hard, cancel)?;
        runner::wait_stopped(self, &marker(vm), self.settings.timeouts.stop);
        self.start(vm, true, cancel)
    }

    fn delete_vm(&self, vm_ref: &VmRef) -> Result<(), HypervisorError> {
        let vm = &marker(vm_ref);
        let name = vm_name(vm);
        if !is_ours(vm) {
            return Ok(());
        }
        match self.call(
            "delete",
            Some(&name),
            &[name.clone().into()],
            self.settings.timeouts.delete,
            None,
        ) {
            Ok(_) | Err(HypervisorError::VmOpenError { .. }) => {
                self.running.changed(&vm_ref.dir, false);
                let _ = fs::remove_file(vm);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn guest_ip(&self, vm: &VmRef, cancel: &Cancel) -> Result<IpAnswer, HypervisorError> {
        ip(self, &marker(vm), None, cancel)
    }

    fn guest_ip_wait(
        &self,
        vm: &VmRef,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<IpAnswer, HypervisorError> {
        ip(self, &marker(vm), Some(limit), cancel)
    }

    /// A file in the VM's shared folder: the host may write it while the VM runs.
    fn write_guest_data(
        &self,
        vm_ref: &VmRef,
        name: &str,
        value: &str,
    ) -> Result<(), HypervisorError> {
        let vm = &marker(vm_ref);
        let dir = vm_ref.dir.join(GUEST_DIR);
        write_guest_file(&dir, name, value).map_err(|e| HypervisorError::Refused {
            code: "guestinfo-write-failed",
            message: format!(
                "cannot write the guest data file {name:?} of {}: {e}",
                vm_name(vm)
            ),
        })
    }

    fn start_timeout(&self) -> Duration {
        self.settings.timeouts.start
    }

    fn ip_query_timeout(&self) -> Duration {
        self.settings.timeouts.ip_query
    }

    fn call_counts(&self) -> Vec<(String, String, u64)> {
        self.counts
            .lock_unpoisoned()
            .iter()
            .map(|((command, outcome), n)| (command.clone(), outcome.clone(), *n))
            .collect()
    }

    fn remove_stray_golds(&self, published: &[String]) -> Vec<String> {
        self.remove_stray_gold_vms(published)
    }
}

/// `tart ip` with the resolver that fits the network: bridged VMs are not in the Mac's
/// DHCP leases, only in its ARP cache. "Nothing found" is no sign of the guest yet (the
/// boot watchdog stays armed); "is your VM running?" is a VM whose runner has gone.
fn ip(
    tart: &Tart,
    vm: &Path,
    wait: Option<Duration>,
    cancel: &Cancel,
) -> Result<IpAnswer, HypervisorError> {
    let name = vm_name(vm);
    let spec = Tart::run_spec(vm);
    let (resolver, source) = if spec.network_type == "bridged" {
        ("arp", IpSource::Arp)
    } else {
        ("dhcp", IpSource::DhcpLease)
    };
    let mut args: Vec<OsString> = vec![name.clone().into(), "--resolver".into(), resolver.into()];
    let timeout = match wait {
        Some(limit) => {
            let secs = limit.as_secs().max(1);
            args.push("--wait".into());
            args.push(secs.to_string().into());
            Duration::from_secs(secs) + tart.settings.timeouts.ip_query
        }
        None => tart.settings.timeouts.ip_query,
    };
    tart.call_as(
        "ip",
        Some(&name),
        &args,
        timeout,
        Some(cancel),
        |done| match done {
            Ok(out) => Ok(match out.trim() {
                "" => (IpAnswer::NoTools, NO_ADDRESS),
                address => (IpAnswer::Found(address.to_string(), source), "ok"),
            }),
            Err(HypervisorError::Failed { call, message })
                if message.starts_with("no IP address found") =>
            {
                if message.contains("is your VM running") {
                    Err(HypervisorError::NotPoweredOn { call, message })
                } else {
                    Ok((IpAnswer::NoTools, NO_ADDRESS))
                }
            }
            Err(err) => Err(err),
        },
    )
}

/// The outcome of a `tart ip` that found no address yet (logged and counted as such): the
/// guest has not booted or has no lease, an answer rather than a failure of tart.
const NO_ADDRESS: &str = "no-address";
