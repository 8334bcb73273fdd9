//! `TART_HOME`: local VMs in `vms/<name>/` (`config.json`, `disk.img`, `nvram.bin`), OCI
//! images in `cache/OCIs/`, scratch in `tmp/`, and the simulator's bookkeeping in `.sim/`.
//! Also the commands that only touch a VM's files: `set` and `delete`.

use crate::error::TartError;
use crate::lock;
use serde_json::{Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const VM_FILES: [&str; 3] = ["config.json", "disk.img", "nvram.bin"];

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

pub fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (b[0] & 0xfc) | 0x02,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn from_env() -> Result<Home, TartError> {
        let root = match std::env::var_os("TART_HOME") {
            Some(home) => PathBuf::from(home),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".tart"),
                None => {
                    return Err(TartError::one(
                        "tart-sim: neither TART_HOME nor HOME is set",
                    ))
                }
            },
        };
        for sub in ["vms", "cache/OCIs", "tmp", ".sim"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| TartError::io("create", &dir, e))?;
        }
        Ok(Home { root })
    }

    pub fn sim(&self, name: &str) -> PathBuf {
        self.root.join(".sim").join(name)
    }

    /// Counts one more boot of the VM `name` (kept in `.sim/boots/<name>`); returns the
    /// count with it. Runs are serialised by the start lock while this is called.
    pub fn count_boot(&self, name: &str) -> u64 {
        let dir = self.sim("boots");
        let _ = fs::create_dir_all(&dir);
        let path = dir.join(name);
        let count = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let _ = fs::write(&path, count.to_string());
        count
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.root.join("vms").join(name)
    }

    pub fn config_path(&self, name: &str) -> PathBuf {
        self.vm_dir(name).join("config.json")
    }

    /// A folder is a VM only with all three files (tart's `list` skips others).
    pub fn exists(&self, name: &str) -> bool {
        is_vm_dir(&self.vm_dir(name))
    }

    pub fn require(&self, name: &str) -> Result<(), TartError> {
        if name.is_empty() || name.contains('/') || !self.exists(name) {
            return Err(TartError::missing(name));
        }
        Ok(())
    }

    pub fn runner(&self, name: &str) -> Option<i32> {
        lock::holder(&self.config_path(name))
    }

    pub fn local_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join("vms"))
            .map(|dir| {
                dir.flatten()
                    .filter(|e| is_vm_dir(&e.path()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn append_call(&self, record: &Value) {
        let path = self.sim("calls.log");
        let line = format!("{record}\n");
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

pub fn is_vm_dir(dir: &Path) -> bool {
    VM_FILES.iter().all(|f| dir.join(f).is_file())
}

pub fn read_config(path: &Path) -> Result<Map<String, Value>, TartError> {
    let text = fs::read_to_string(path).map_err(|e| TartError::io("read", path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TartError::one(format!(
            "Failed to parse VM configuration {}",
            path.display()
        ))),
    }
}

pub fn config_bytes(config: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec_pretty(config).unwrap_or_default()
}

/// Rewrites `config.json` in place (never by rename: the runner's lock is on the file).
pub fn write_config_in_place(path: &Path, config: &Map<String, Value>) -> Result<(), TartError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| TartError::io("open", path, e))?;
    file.write_all(&config_bytes(config))
        .map_err(|e| TartError::io("write", path, e))
}

pub fn number(config: &Map<String, Value>, key: &str) -> u64 {
    config.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `tart set NAME [--cpu N] [--memory MB] [--disk-size GB] [--random-mac] [--random-serial]`.
pub fn set(home: &Home, args: &[String]) -> Result<(), TartError> {
    let mut name = None;
    let (mut cpu, mut memory, mut disk) = (None, None, None);
    let mut random_mac_wanted = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<u64, TartError> {
            let text = inline
                .clone()
                .or_else(|| it.next().cloned())
                .unwrap_or_default();
            text.parse::<u64>().map_err(|_| {
                TartError::usage(&format!(
                    "The value '{text}' is invalid for '{flag} <{}>'",
                    &flag[2..]
                ))
            })
        };
        match flag {
            "--cpu" => cpu = Some(value(flag)?),
            "--memory" => memory = Some(value(flag)?),
            "--disk-size" => disk = Some(value(flag)?),
            "--random-mac" => random_mac_wanted = true,
            "--random-serial" => {}
            f if f.starts_with('-') => {
                return Err(TartError::usage(&format!("Unknown option '{f}'")))
            }
            _ if name.is_none() => name = Some(arg.clone()),
            _ => return Err(TartError::usage(&format!("Unexpected argument '{arg}'"))),
        }
    }
    let Some(name) = name else {
        return Err(TartError::usage("Missing expected argument '<name>'"));
    };
    home.require(&name)?;
    let path = home.config_path(&name);
    let mut config = read_config(&path)?;
    if let Some(cpu) = cpu {
        let min = number(&config, "cpuCountMin");
        if cpu < min {
            return Err(TartError::one(format!(
                "VM should have {min} CPU cores at minimum (requested: {cpu})"
            )));
        }
        config.insert("cpuCount".into(), cpu.into());
    }
    if let Some(mb) = memory {
        let min = number(&config, "memorySizeMin") / (1024 * 1024);
        if mb < min {
            return Err(TartError::one(format!(
                "VM should have {min} megabytes of memory at minimum (requested: {mb})"
            )));
        }
        config.insert("memorySize".into(), (mb * 1024 * 1024).into());
    }
    if random_mac_wanted {
        config.insert("macAddress".into(), random_mac().into());
    }
    if let Some(gb) = disk {
        let disk_path = home.vm_dir(&name).join("disk.img");
        let file = OpenOptions::new()
            .write(true)
            .open(&disk_path)
            .map_err(|e| TartError::io("open", &disk_path, e))?;
        let want = gb * 1_000_000_000;
        let have = file.metadata().map(|m| m.len()).unwrap_or(0);
        if want < have {
            return Err(TartError::one(format!(
                "the new disk size ({gb} GB) is smaller than the current one; disks only grow"
            )));
        }
        file.set_len(want)
            .map_err(|e| TartError::io("resize", &disk_path, e))?;
    }
    write_config_in_place(&path, &config)
}

/// `tart delete NAME...`: each in turn; the first failure ends the command.
pub fn delete(home: &Home, args: &[String]) -> Result<(), TartError> {
    if args.is_empty() {
        return Err(TartError::usage("Missing expected argument '<name> ...'"));
    }
    for name in args {
        if name.contains('/') {
            crate::clone::delete_oci(home, name)?;
            continue;
        }
        home.require(name)?;
        if home.runner(name).is_some() {
            return Err(TartError::one(format!("VM \"{name}\" is running")));
        }
        let dir = home.vm_dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(TartError::missing(name)),
            Err(e) => return Err(TartError::io("delete", &dir, e)),
        }
    }
    Ok(())
}

/// Opens `config.json` for the runner: read and write, so that the lock can be a write lock.
pub fn open_config(path: &Path) -> Result<File, TartError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| TartError::io("open", path, e))
}
