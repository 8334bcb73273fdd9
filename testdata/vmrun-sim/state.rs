//! The state folder (`VMRUN_SIM_STATE`): per-VM power state, the call log, fault bookkeeping.
//! Many simulator processes run at once, so every file is either replaced atomically
//! (temp + rename), appended in one write, or created with `create_new` as a lock.

use crate::error::SimError;
use crate::paths::VmPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const STATE_ENV: &str = "VMRUN_SIM_STATE";

/// A lock file older than this belongs to a simulator that was killed mid-command.
const STALE_LOCK: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub vmx: String,
    pub running: bool,
    pub started_at_ms: u64,
    #[serde(default)]
    pub mode: String,
    /// The `.lck` folders made at start, removed again at power-off.
    #[serde(default)]
    pub locks: Vec<PathBuf>,
    /// `guestVar`s while running: the VMX's `guestinfo.*` at power-on, plus writes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub guest_vars: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub guest_env: BTreeMap<String, String>,
    /// Every `writeVariable` since power-on, in order, values included: this is the
    /// guest's side, where a test checks what reached the guest and when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<VariableWrite>,
    /// Power-ons and resets so far (see `VMRUN_SIM_DEAD_BOOTS`).
    #[serde(default)]
    pub boots: u32,
    /// When the last `stop`/`suspend` powered the VM off (see `VMRUN_SIM_POWEROFF_LAG_MS`).
    #[serde(default)]
    pub stopped_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub struct VariableWrite {
    /// `guestVar`, `guestEnv` or `runtimeConfig`.
    pub kind: String,
    pub name: String,
    pub value: String,
    pub at_ms: u64,
}

/// A `VMRUN_SIM_*` switch that is on when set to `1`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn from_env() -> Result<StateDir, SimError> {
        let root = match std::env::var_os(STATE_ENV) {
            Some(value) if !value.is_empty() => PathBuf::from(value),
            _ => return Err(SimError::NoStateDir),
        };
        let vms = root.join("vms");
        fs::create_dir_all(&vms).map_err(|e| SimError::io("create", &vms, e))?;
        Ok(StateDir { root })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn vm_file(&self, vm: &VmPath) -> PathBuf {
        self.root.join("vms").join(format!("{}.json", vm.key))
    }

    pub fn load(&self, vm: &VmPath) -> Result<Option<VmState>, SimError> {
        let file = self.vm_file(vm);
        match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SimError::Sim(format!("corrupt state file {}: {e}", file.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SimError::io("read", &file, e)),
        }
    }

    pub fn save(&self, vm: &VmPath, state: &VmState) -> Result<(), SimError> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| SimError::Sim(format!("cannot encode state: {e}")))?;
        write_atomic(&self.vm_file(vm), &bytes)
    }

    pub fn remove(&self, vm: &VmPath) -> Result<(), SimError> {
        let file = self.vm_file(vm);
        match fs::remove_file(&file) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(SimError::io("remove", &file, e)),
            _ => Ok(()),
        }
    }

    pub fn all(&self) -> Result<Vec<VmState>, SimError> {
        let dir = self.root.join("vms");
        let listing = fs::read_dir(&dir).map_err(|e| SimError::io("list", &dir, e))?;
        let mut states = Vec::new();
        for entry in listing.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let bytes = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    // Dropped by a concurrent deleteVM between listing and reading.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(SimError::io("read", &path, e)),
                };
                let state: VmState = serde_json::from_slice(&bytes).map_err(|e| {
                    SimError::Sim(format!("corrupt state file {}: {e}", path.display()))
                })?;
                states.push(state);
            }
        }
        Ok(states)
    }

    /// Serialises changes to one VM's state across processes.
    pub fn lock_vm(&self, vm: &VmPath) -> Result<FileLock, SimError> {
        let file = self.root.join("vms").join(format!("{}.lock", vm.key));
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match FileLock::try_take(&file)? {
                Some(lock) => return Ok(lock),
                None if Instant::now() > deadline => return Err(SimError::InUse),
                None => {
                    if is_stale(&file) {
                        let _ = fs::remove_file(&file);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// One JSON line per invocation; O_APPEND and a single write keep concurrent lines whole.
    pub fn append_call(&self, record: &serde_json::Value) -> Result<(), SimError> {
        let file = self.root.join("calls.log");
        let mut line = record.to_string();
        line.push('\n');
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .map_err(|e| SimError::io("open", &file, e))?;
        log.write_all(line.as_bytes())
            .map_err(|e| SimError::io("append to", &file, e))
    }
}

fn is_stale(file: &Path) -> bool {
    fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age > STALE_LOCK)
}

/// A file created with `create_new`, removed when dropped (also on error paths).
pub struct FileLock {
    path: PathBuf,
}

impl FileLock {
    /// `Ok(None)` when another process holds it.
    pub fn try_take(path: &Path) -> Result<Option<FileLock>, SimError> {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut file) => {
                let _ = writeln!(file, "{}", std::process::id());
                Ok(Some(FileLock {
                    path: path.to_path_buf(),
                }))
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(SimError::io("create", path, e)),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), now_ms()));
    fs::write(&tmp, bytes).map_err(|e| SimError::io("write", &tmp, e))?;
    // VMware rewrites a running VM's VMX in place: the file keeps its mode (a 0600 VMX that
    // holds guestinfo secrets stays 0600).
    if let Ok(meta) = fs::metadata(path) {
        let _ = fs::set_permissions(&tmp, meta.permissions());
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SimError::io("replace", path, e)
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `VMRUN_SIM_*_MS` variable: unset or empty means `default`.
pub fn env_ms(name: &str, default: u64) -> Result<u64, SimError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().map_err(|_| {
            SimError::Sim(format!(
                "{name} must be a number of milliseconds, got '{value}'"
            ))
        }),
        _ => Ok(default),
    }
}
