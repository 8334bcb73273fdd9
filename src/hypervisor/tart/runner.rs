//! `tart run`: in a session of its own (a restart of the server, or launchd reaping its
//! process group, never powers a VM off), stdin from /dev/null, stdout and stderr appended
//! to the VM's `tart-run.log`. It prints nothing on a normal start, so a start has
//! succeeded when the VM runs (a process holds the lock on its `config.json`, which is all
//! `tart list` looks at); a runner that exits first failed, and its log says why.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{vm_name, Tart, GUEST_DIR, RUN_LOG, SHARE_NAME};
use crate::hypervisor::{Call, HypervisorError};
use crate::sys::cancel::Cancel;

/// Starts the server's line before each run in the runner's log.
pub const RUN_MARKER: &str = "--- osx-builder: ";

/// How long a runner must live with its VM running before the start counts.
const START_SETTLE: Duration = Duration::from_secs(1);

/// How often a start looks at the runner and the VM's lock: no process, so often is cheap.
const START_POLL: Duration = Duration::from_millis(20);

pub fn start(
    tart: &Tart,
    vm: &Path,
    headless: bool,
    network_type: &str,
    cancel: &Cancel,
) -> Result<(), HypervisorError> {
    let name = vm_name(vm);
    let began = Instant::now();
    let call = Call {
        tool: "tart",
        command: "run",
        vm: Some(name.clone().into()),
    };
    // A runner that finds its VM running exits at once, but the lock would call that a
    // successful start.
    if runs(tart, &name) {
        return Err(HypervisorError::AlreadyRunning {
            call,
            message: format!("VM \"{name}\" is already running!"),
        });
    }
    let dir = vm.parent().unwrap_or(Path::new("/"));
    let mut args: Vec<OsString> = vec!["run".into()];
    if headless {
        args.push("--no-graphics".into());
    }
    let guest = dir.join(GUEST_DIR);
    if guest.is_dir() {
        let mut share = OsString::from(format!("--dir={SHARE_NAME}:"));
        share.push(guest.as_os_str());
        share.push(":ro");
        args.push(share);
    }
    match network_type {
        "bridged" => args.push(format!("--net-bridged={}", tart.settings.bridged_interface).into()),
        "hostonly" => args.push("--net-host".into()),
        _ => {}
    }
    args.push(name.clone().into());
    let log_path = dir.join(RUN_LOG);
    let spawn_error = |source: std::io::Error| HypervisorError::Spawn {
        call: call.clone(),
        path: tart.settings.path.clone(),
        source,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(spawn_error)?;
    // Each run's lines follow a line of ours, so that how a run ended is read from its
    // own lines, not an earlier run's.
    {
        use std::io::Write;
        let mut marker = &log;
        let _ = writeln!(
            marker,
            "{RUN_MARKER}tart {} at {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            crate::sys::time::rfc3339_now()
        );
    }
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err_log = log.try_clone().map_err(spawn_error)?;
    let mut command = Command::new(&tart.settings.path);
    command
        .args(&args)
        .envs(tart.env().iter().copied())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of ours; it makes the
    // runner the leader of a new session, out of the server's process group.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(tart.not_found("no such file".into()))
        }
        Err(e) => return Err(spawn_error(e)),
    };
    let deadline = Instant::now() + tart.settings.timeouts.start;
    let mut seen: Option<Instant> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let new =
                String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..]).into_owned();
            return Err(super::errors::judge(call, status.code(), &new));
        }
        // tart takes the VM's lock before the framework starts it, so a start that fails
        // (the two-VM limit, a locked keychain) runs for a moment: the runner must outlive
        // that moment.
        let listed_since = if runs(tart, &name) {
            *seen.get_or_insert_with(Instant::now)
        } else {
            seen = None;
            Instant::now()
        };
        if seen.is_some() && listed_since.elapsed() >= START_SETTLE {
            // Reaped by a thread of its own while the server runs; after a restart the
            // runner is init's child, and the VM goes on.
            let _ = thread::Builder::new()
                .name("tart-runner".into())
                .spawn(move || {
                    let _ = child.wait();
                });
            // As every other tart call is (benches/provision_overhead reads it).
            crate::debug!(
                "tart run {name} -> ok in {} ms",
                began.elapsed().as_millis()
            );
            return Ok(());
        }
        if cancel.is_cancelled() || Instant::now() >= deadline {
            // SAFETY: SIGINT to the runner we started: tart powers the VM off and exits.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
            return Err(if cancel.is_cancelled() {
                HypervisorError::Cancelled { call }
            } else {
                HypervisorError::Timeout {
                    call,
                    limit: tart.settings.timeouts.start,
                }
            });
        }
        thread::sleep(START_POLL);
    }
}

/// How the last run in the runner's log `text` ended, tart's words deciding: a guest
/// shutdown or a stop (SIGINT) is a power-off; an error, or no word at all (SIGKILL,
/// SIGTERM and SIGHUP end tart and the VM with it), a death.
pub fn ended(text: &str) -> Result<(), String> {
    let run = text.rsplit(RUN_MARKER).next().unwrap_or(text);
    // The marker's own line is what follows the marker.
    let lines: Vec<&str> = run.lines().skip(1).collect();
    let last = lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty() && !l.starts_with("Failed to perform garbage collection"));
    match last {
        Some("guest has stopped the virtual machine" | "Stopping VM...") => Ok(()),
        Some(_) => Err(format!(
            "tart run ended behind the server's back: {}",
            super::errors::message(&lines.join("\n"))
        )),
        None => Err(
            "tart run ended behind the server's back without a word: its process was killed (SIGKILL, SIGTERM or SIGHUP end tart and its VM with it), or the Mac's Virtualization framework ended it"
                .into(),
        ),
    }
}

/// Whether the tart VM `name` runs: whether a process holds a lock on its `config.json`,
/// as tart itself decides for `list` (see the contract), without a `tart list` process
/// (80 ms on a real Mac, polled through every start).
fn runs(tart: &Tart, name: &str) -> bool {
    let config = tart
        .settings
        .home
        .join("vms")
        .join(name)
        .join("config.json");
    File::open(config).is_ok_and(|file| locked(&file))
}

/// Whether another process holds an fcntl lock that a read lock on the whole of `file`
/// would meet (tart's runner holds a write lock). A test, not a lock: nothing is taken,
/// and the server holds no lock of its own that closing `file` could drop.
fn locked(file: &File) -> bool {
    // SAFETY: flock is plain old data; all-zero is a valid value, filled in below.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_RDLCK as libc::c_short;
    probe.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a descriptor that lives as long as `file`, and a live flock the kernel fills.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
    rc == 0 && probe.l_type != libc::F_UNLCK as libc::c_short
}

/// Waits (up to `limit`) until the VM no longer runs: a stop that ended in SIGKILL returns
/// before the lock goes.
pub fn wait_stopped(tart: &Tart, vm: &Path, limit: Duration) {
    let name = vm_name(vm);
    let end = Instant::now() + limit;
    while Instant::now() < end && runs(tart, &name) {
        thread::sleep(START_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_run_of_the_log_says_how_it_ended() {
        let run = |body: &str| format!("{RUN_MARKER}tart run osxb-a at t\n{body}");
        let earlier = run("Stopping VM...\n");
        for (log, powered_off) in [
            (run("guest has stopped the virtual machine\n"), true),
            (run("Stopping VM...\nFailed to perform garbage collection: x\n"), true),
            // A run killed after an earlier one stopped cleanly: the earlier words do
            // not speak for it.
            (format!("{earlier}{}", run("")), false),
            (run("Error Domain=VZErrorDomain Code=2 \"The virtual machine stopped unexpectedly.\"\n"), false),
        ] {
            assert_eq!(ended(&log).is_ok(), powered_off, "{log}");
        }
        let died = ended(&run("")).unwrap_err();
        assert!(died.contains("without a word"), "{died}");
        let crashed = ended(&run("boom\n")).unwrap_err();
        assert!(crashed.ends_with("boom"), "{crashed}");
    }
}
