//! `tart run` (the VM lives exactly as long as this process holds the lock on its
//! `config.json`) and `tart stop` (SIGINT to that process, then SIGKILL).

use crate::error::TartError;
use crate::home::{self, env_flag, env_ms, now_ms, Home};
use crate::{ip, lock};
use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static SIGINT_SEEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINT_SEEN.store(true, Ordering::SeqCst);
}

pub const KEYCHAIN_ERROR: &str = "Error Domain=VZErrorDomain Code=1 \"The virtual machine failed to start.\" UserInfo={NSLocalizedFailure=Internal Virtualization error., NSLocalizedFailureReason=The virtual machine failed to start.}";
pub const CRASH_ERROR: &str = "Error Domain=VZErrorDomain Code=2 \"The virtual machine stopped unexpectedly.\" UserInfo={NSLocalizedFailure=Internal Virtualization error.}";

struct RunArgs {
    name: String,
    dirs: Vec<Value>,
    net: String,
    graphics: bool,
}

fn parse(args: &[String]) -> Result<RunArgs, TartError> {
    let mut parsed = RunArgs {
        name: String::new(),
        dirs: Vec::new(),
        net: "nat".into(),
        graphics: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--no-graphics" {
            parsed.graphics = false;
        } else if arg == "--net-softnet" {
            parsed.net = "softnet".into();
        } else if arg == "--net-host" {
            parsed.net = "host".into();
        } else if let Some(interface) = arg.strip_prefix("--net-bridged=") {
            parsed.net = format!("bridged:{interface}");
        } else if arg == "--dir" || arg.starts_with("--dir=") {
            let spec = match arg.strip_prefix("--dir=") {
                Some(spec) => spec.to_string(),
                None => it.next().cloned().unwrap_or_default(),
            };
            parsed.dirs.push(dir_spec(&spec)?);
        } else if arg.starts_with('-') {
            return Err(TartError::usage(&format!("Unknown option '{arg}'")));
        } else if parsed.name.is_empty() {
            parsed.name = arg.clone();
        } else {
            return Err(TartError::usage(&format!("Unexpected argument '{arg}'")));
        }
    }
    if parsed.name.is_empty() {
        return Err(TartError::usage("Missing expected argument '<name>'"));
    }
    let unnamed = parsed.dirs.iter().filter(|d| d["name"] == "").count();
    if parsed.dirs.len() > 1 && unnamed > 0 {
        return Err(TartError::usage(
            "invalid --dir syntax: when sharing several directories, each must be named (NAME:PATH)",
        ));
    }
    Ok(parsed)
}

/// `[NAME:]PATH[:ro]`.
fn dir_spec(spec: &str) -> Result<Value, TartError> {
    let (rest, read_only) = match spec.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (spec, false),
    };
    let (name, path) = match rest.split_once(':') {
        Some((name, path)) => (name, path),
        None => ("", rest),
    };
    if path.is_empty() {
        return Err(TartError::usage(&format!("invalid --dir syntax: '{spec}'")));
    }
    Ok(json!({"name": name, "path": path, "read_only": read_only}))
}

/// Serialises the check of the limit between runs starting at once, as the framework does.
fn start_lock(home: &Home) -> Result<File, TartError> {
    let path = home.sim("run.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TartError::io("open", &path, e))?;
    // SAFETY: a valid descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    Ok(file)
}

pub fn run(home: &Home, args: &[String]) -> Result<(), TartError> {
    let args = parse(args)?;
    let name = &args.name;
    // Before the lock is taken: a SIGINT that comes once the VM is listed must be handled.
    if !env_flag("TART_SIM_IGNORE_SIGINT") {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    } else {
        // SAFETY: ignoring a signal is always sound.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    }
    if !home.exists(name) || name.contains('/') {
        return Err(TartError::one(format!(
            "Error: the specified VM \"{name}\" does not exist"
        )));
    }
    let config_path = home.config_path(name);
    // Read before the lock is taken: closing any descriptor of the file would drop it.
    let mut config = home::read_config(&config_path)?;
    if env_flag("TART_SIM_KEYCHAIN_LOCKED") {
        return Err(TartError::one(KEYCHAIN_ERROR));
    }
    let serial = start_lock(home)?;
    let mut file = home::open_config(&config_path)?;
    if !lock::try_lock(&file) {
        return Err(TartError {
            code: 2,
            text: format!("VM \"{name}\" is already running!"),
        });
    }
    let others: Vec<String> = home
        .local_names()
        .into_iter()
        .filter(|other| other != name && home.runner(other).is_some())
        .collect();
    let darwin = |n: &str| {
        home::read_config(&home.config_path(n)).is_ok_and(|c| c.get("os") != Some(&json!("linux")))
    };
    let is_darwin = config.get("os") != Some(&json!("linux"));
    let running_macs: Vec<&String> = others.iter().filter(|n| darwin(n)).collect();
    if is_darwin && running_macs.len() as u64 >= env_ms("TART_SIM_VM_LIMIT", 2) {
        let list: Vec<&str> = running_macs.iter().map(|s| s.as_str()).collect();
        return Err(TartError::one(format!(
            "The number of VMs exceeds the system limit (other running VMs: {})",
            list.join(", ")
        )));
    }
    let mac = config
        .get("macAddress")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let clash = others.iter().any(|other| {
        home::read_config(&home.config_path(other))
            .is_ok_and(|c| c.get("macAddress").and_then(Value::as_str) == Some(mac.as_str()))
    });
    let mac = if clash || mac.is_empty() {
        println!("Resetting VM to assign a new MAC address...");
        let fresh = home::random_mac();
        config.insert("macAddress".into(), fresh.clone().into());
        let bytes = home::config_bytes(&config);
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(&bytes));
        written.map_err(|e| TartError::io("write", &config_path, e))?;
        fresh
    } else {
        mac
    };
    let started_at_ms = now_ms();
    let record = json!({
        "pid": std::process::id(),
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
        "dirs": args.dirs,
        "net": args.net,
        "graphics": args.graphics,
        "started_at_ms": started_at_ms,
        "mac": mac,
    });
    let runs = home.sim("runs");
    let _ = fs::create_dir_all(&runs);
    let _ = fs::write(runs.join(format!("{name}.json")), record.to_string());
    // A guest that hangs at boot never asks for a lease.
    if home.count_boot(name) > env_ms("TART_SIM_DEAD_BOOTS", 0) {
        ip::grant_lease(home, &mac, name, &args.net, started_at_ms);
    }
    drop(serial);

    let exit_after = std::env::var("TART_SIM_RUN_EXIT_AFTER_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let control = home.sim("control").join(name);
    let result = loop {
        std::thread::sleep(Duration::from_millis(20));
        if SIGINT_SEEN.load(Ordering::SeqCst) {
            println!("Stopping VM...");
            break Ok(());
        }
        let mut ending = None;
        if let Ok(text) = fs::read_to_string(&control) {
            let _ = fs::remove_file(&control);
            ending = Some(text.trim().to_string());
        } else if exit_after.is_some_and(|ms| now_ms() >= started_at_ms + ms) {
            ending = Some(std::env::var("TART_SIM_RUN_EXIT").unwrap_or_else(|_| "shutdown".into()));
        }
        match ending.as_deref() {
            Some("crash") => break Err(TartError::one(CRASH_ERROR)),
            Some(_) => {
                println!("guest has stopped the virtual machine");
                break Ok(());
            }
            None => {}
        }
    };
    ip::end_lease_run(home, &mac);
    drop(file);
    result
}

/// `tart stop NAME [--timeout N]`: SIGINT, wait up to N seconds, then SIGKILL without
/// waiting for the lock to go.
pub fn stop(home: &Home, args: &[String]) -> Result<(), TartError> {
    let mut name = None;
    let mut timeout = 30u64;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--timeout" || arg.starts_with("--timeout=") {
            let text = match arg.strip_prefix("--timeout=") {
                Some(v) => v.to_string(),
                None => it.next().cloned().unwrap_or_default(),
            };
            timeout = text.parse().map_err(|_| {
                TartError::usage(&format!(
                    "The value '{text}' is invalid for '--timeout <timeout>'"
                ))
            })?;
        } else if arg.starts_with('-') {
            return Err(TartError::usage(&format!("Unknown option '{arg}'")));
        } else {
            name = Some(arg.clone());
        }
    }
    let Some(name) = name else {
        return Err(TartError::usage("Missing expected argument '<name>'"));
    };
    home.require(&name)?;
    let Some(pid) = home.runner(&name) else {
        return Err(TartError::not_running(&name));
    };
    // SAFETY: signalling a pid; at worst it has gone (ESRCH).
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = now_ms() + timeout * 1000;
    while now_ms() < deadline {
        if home.runner(&name).is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}
