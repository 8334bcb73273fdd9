//! Drives the real vmrun driver against small fake `vmrun` shell scripts written at test time,
//! one behaviour per script: errors in their several shapes, hangs, noise, answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use osx_builder::hypervisor::vmrun::{
    HypervisorError, IpAnswer, Timeouts, ToolsState, Vmrun, VmrunSettings,
};
use osx_builder::hypervisor::{Hypervisor, VmRef};

/// How the driver's calls name the VM whose VMX is `vmx` (`<dir>/<id>/<id>.vmx`).
fn vm_of(vmx: &Path) -> VmRef {
    VmRef {
        id: vmx.file_stem().unwrap().to_string_lossy().into_owned(),
        dir: vmx.parent().unwrap().to_path_buf(),
    }
}
use osx_builder::sys::cancel::Cancel;

/// A directory under the system temp dir, removed on drop together with any process whose
/// pid a script left in a `*.pid` file there.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "osx-builder-vmrun-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    /// Writes an executable `#!/bin/sh` script. The file is written by a child shell, not by
    /// this process: a file this (multi-threaded) process held open for writing could be
    /// inherited by another test's fork and make exec fail with "Text file busy".
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.join(name);
        let text = format!("#!/bin/sh\nD=\"$(dirname \"$0\")\"\n{body}\n");
        let status = Command::new("/bin/sh")
            .args([
                "-c",
                "printf '%s' \"$2\" > \"$1\" && chmod 755 \"$1\"",
                "sh",
            ])
            .arg(&path)
            .arg(&text)
            .status()
            .unwrap();
        assert!(status.success());
        path
    }

    fn vmrun(&self, name: &str, body: &str) -> Vmrun {
        let mut settings = VmrunSettings::new(self.script(name, body));
        settings.host_type = None;
        Vmrun::new(settings)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn pid(&self, name: &str) -> Option<i32> {
        self.read(name).trim().parse().ok()
    }

    fn vmx(&self) -> PathBuf {
        self.dir.join("vm").join("vm.vmx")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pid") {
                    if let Some(pid) = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<i32>().ok())
                    {
                        if is_alive(pid) {
                            // SAFETY: signals one process this test's script started.
                            unsafe {
                                libc::kill(pid, libc::SIGKILL);
                            }
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Alive and not a zombie: a killed orphan stays a zombie until whatever adopted it reaps it.
fn is_alive(pid: i32) -> bool {
    let output = Command::new("ps")
        .args(["-o", "stat=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&output.stdout);
    let stat = stat.trim();
    !stat.is_empty() && !stat.starts_with('Z')
}

fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    condition()
}

fn with_timeouts(vmrun: &Vmrun, change: impl FnOnce(&mut Timeouts)) -> Vmrun {
    let mut settings = vmrun.settings().clone();
    change(&mut settings.timeouts);
    Vmrun::new(settings)
}

#[test]
fn an_error_line_with_exit_255_is_a_typed_error_naming_call_and_vmrun_text() {
    let s = Scratch::new();
    let vmrun = s.vmrun(
        "vmrun",
        "echo 'Error: The file is already in use'; exit 255",
    );
    let err = vmrun
        .start(&vm_of(&s.vmx()), true, &Cancel::new())
        .unwrap_err();
    assert_eq!(err.code(), "vm-locked");
    let message = err.to_string();
    assert!(message.contains("vmrun start"), "{message}");
    assert!(
        message.contains(&s.vmx().display().to_string()),
        "{message}"
    );
    assert!(message.contains("The file is already in use"), "{message}");
}

#[test]
fn an_error_line_with_exit_zero_is_still_a_failure() {
    let s = Scratch::new();
    let vmrun = s.vmrun("vmrun", "echo 'Error: Unknown error'; exit 0");
    let err = vmrun.delete_vm(&vm_of(&s.vmx())).unwrap_err();
    assert_eq!(err.code(), "vmrun-failed");
    assert_eq!(err.vmrun_message(), Some("Unknown error"));
}

#[test]
fn noise_before_the_error_and_on_stderr_follows_the_message() {
    let s = Scratch::new();
    let vmrun = s.vmrun(
        "vmrun",
        "echo '[AppLoader] Use shipped Linux kernel AIO access library.' >&2\n\
         echo 'Warning: program compiled against libxml 212 using older 209'\n\
         echo 'Error: Cannot open VM: /x.vmx, The virtual machine cannot be found'\n\
         exit 255",
    );
    let err = vmrun
        .start(&vm_of(&s.vmx()), false, &Cancel::new())
        .unwrap_err();
    assert_eq!(err.code(), "vm-open-error");
    // The Error line leads; the other lines follow in vmrun's words (issue 12).
    assert_eq!(
        err.vmrun_message(),
        Some(
            "Cannot open VM: /x.vmx, The virtual machine cannot be found (vmrun also printed: \
             Warning: program compiled against libxml 212 using older 209 / [AppLoader] Use \
             shipped Linux kernel AIO access library.)"
        )
    );
}

#[test]
fn a_nonzero_exit_without_an_error_line_reports_code_and_output() {
    let s = Scratch::new();
    let vmrun = s.vmrun("vmrun", "echo 'segfault in libfoo' >&2; exit 3");
    let err = vmrun.snapshot(&s.vmx(), "base").unwrap_err();
    assert_eq!(err.code(), "vmrun-failed");
    let message = err.vmrun_message().unwrap();
    assert!(message.contains("code 3"), "{message}");
    assert!(message.contains("segfault in libfoo"), "{message}");
}

#[test]
fn arguments_follow_the_contract() {
    let s = Scratch::new();
    let script = s.script("vmrun", "printf '%s\\n' \"$@\" > \"$D/args\"");
    let mut settings = VmrunSettings::new(&script);
    settings.host_type = Some("ws".into());
    let vmrun = Vmrun::new(settings);
    let cancel = Cancel::new();
    let src = Path::new("/gold/abc/My Gold.vmx");
    let dst = Path::new("/vms/id 1/id 1.vmx");
    let args = || {
        s.read("args")
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    vmrun
        .clone_linked(src, dst, "osx builder base", "id 1", &cancel)
        .unwrap();
    assert_eq!(
        args(),
        [
            "-T",
            "ws",
            "clone",
            "/gold/abc/My Gold.vmx",
            "/vms/id 1/id 1.vmx",
            "linked",
            "-snapshot=osx builder base",
            "-cloneName=id 1"
        ]
    );
    vmrun.start(&vm_of(dst), true, &cancel).unwrap();
    assert_eq!(args(), ["-T", "ws", "start", "/vms/id 1/id 1.vmx", "nogui"]);
    vmrun.start(&vm_of(dst), false, &cancel).unwrap();
    assert_eq!(args(), ["-T", "ws", "start", "/vms/id 1/id 1.vmx", "gui"]);
    vmrun.stop(&vm_of(dst), true, &cancel).unwrap();
    assert_eq!(args(), ["-T", "ws", "stop", "/vms/id 1/id 1.vmx", "hard"]);
    vmrun.stop(&vm_of(dst), false, &cancel).unwrap();
    assert_eq!(args(), ["-T", "ws", "stop", "/vms/id 1/id 1.vmx", "soft"]);
    vmrun.delete_vm(&vm_of(dst)).unwrap();
    assert_eq!(args(), ["-T", "ws", "deleteVM", "/vms/id 1/id 1.vmx"]);
    vmrun.snapshot(src, "osx builder base").unwrap();
    assert_eq!(
        args(),
        [
            "-T",
            "ws",
            "snapshot",
            "/gold/abc/My Gold.vmx",
            "osx builder base"
        ]
    );

    // Without a host type no -T is passed, and the answer-printing commands reach vmrun too.
    let mut settings = VmrunSettings::new(&script);
    settings.host_type = None;
    let bare = Vmrun::new(settings);
    bare.delete_vm(&vm_of(dst)).unwrap();
    assert_eq!(args(), ["deleteVM", "/vms/id 1/id 1.vmx"]);
    // The script prints nothing, which is no valid answer to these.
    assert_eq!(bare.list_running().unwrap_err().code(), "vmrun-bad-output");
    assert_eq!(args(), ["list"]);
    assert_eq!(
        bare.guest_ip(&vm_of(dst), &cancel).unwrap_err().code(),
        "vmrun-bad-output"
    );
    assert_eq!(args(), ["getGuestIPAddress", "/vms/id 1/id 1.vmx"]);
    assert_eq!(
        bare.tools_state(dst).unwrap_err().code(),
        "vmrun-bad-output"
    );
    assert_eq!(args(), ["checkToolsState", "/vms/id 1/id 1.vmx"]);
    assert_eq!(
        bare.list_snapshots(dst).unwrap_err().code(),
        "vmrun-bad-output"
    );
    assert_eq!(args(), ["listSnapshots", "/vms/id 1/id 1.vmx"]);
}

#[test]
fn a_hung_vmrun_times_out_and_its_whole_process_group_is_killed() {
    let s = Scratch::new();
    // `list` answers (a start lists first, to clear stale locks); `start` hangs.
    let vmrun = s.vmrun(
        "vmrun",
        "if [ \"$1\" = list ]; then echo 'Total running VMs: 0'; exit 0; fi\n\
         echo $$ > \"$D/vmrun.pid\"\n\
         sleep 1000 &\n\
         echo $! > \"$D/child.pid\"\n\
         exec sleep 1000",
    );
    // Long enough for the shell to write both pid files even on a loaded machine.
    let limit = Duration::from_secs(3);
    let vmrun = with_timeouts(&vmrun, |t| t.start = limit);

    let started = Instant::now();
    let err = vmrun
        .start(&vm_of(&s.vmx()), true, &Cancel::new())
        .unwrap_err();
    let elapsed = started.elapsed();

    assert_eq!(err.code(), "vmrun-timeout");
    assert!(matches!(err, HypervisorError::Timeout { limit: l, .. } if l == limit));
    assert!(err.to_string().contains("3 s"), "{err}");
    assert!(elapsed >= limit, "returned after {elapsed:?}");
    assert!(
        elapsed < limit + Duration::from_secs(30),
        "returned after {elapsed:?}"
    );

    let vmrun_pid = s.pid("vmrun.pid").expect("the script wrote its pid");
    let child_pid = s
        .pid("child.pid")
        .expect("the script wrote its child's pid");
    assert!(
        wait_until(Duration::from_secs(20), || !is_alive(vmrun_pid)),
        "vmrun {vmrun_pid} survived"
    );
    assert!(
        wait_until(Duration::from_secs(20), || !is_alive(child_pid)),
        "vmrun's child {child_pid} survived"
    );
    assert_eq!(
        vmrun.call_counts(),
        [
            ("list".into(), "ok".into(), 1),
            ("start".into(), "vmrun-timeout".into(), 1)
        ]
    );
}

#[test]
fn cancelling_kills_the_call_long_before_its_deadline() {
    let s = Scratch::new();
    let vmrun = s.vmrun(
        "vmrun",
        "echo $$ > \"$D/vmrun.pid\"\n\
         sleep 1000 &\n\
         echo $! > \"$D/child.pid\"\n\
         exec sleep 1000",
    );
    let cancel = Cancel::new();
    let canceller = {
        let cancel = cancel.clone();
        let s_dir = s.dir.clone();
        thread::spawn(move || {
            // Cancel once the script is surely running, so its child is killed too.
            wait_until(Duration::from_secs(30), || {
                std::fs::read_to_string(s_dir.join("child.pid"))
                    .is_ok_and(|t| t.trim().parse::<i32>().is_ok())
            });
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let err = vmrun.stop(&vm_of(&s.vmx()), true, &cancel).unwrap_err();
    canceller.join().unwrap();
    assert_eq!(err.code(), "vmrun-cancelled");
    // The stop deadline is 60 s; the call must end well before it.
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let child_pid = s.pid("child.pid").unwrap();
    assert!(wait_until(Duration::from_secs(20), || !is_alive(child_pid)));
}

#[test]
fn a_call_cancelled_beforehand_never_runs_vmrun() {
    let s = Scratch::new();
    let vmrun = s.vmrun("vmrun", "touch \"$D/ran\"");
    let cancel = Cancel::new();
    cancel.cancel();
    let err = vmrun.start(&vm_of(&s.vmx()), true, &cancel).unwrap_err();
    assert_eq!(err.code(), "vmrun-cancelled");
    assert!(!s.dir.join("ran").exists());
    // The same script does run when not cancelled, so the check above can fail.
    vmrun.start(&vm_of(&s.vmx()), true, &Cancel::new()).unwrap();
    assert!(s.dir.join("ran").exists());
}

#[test]
fn a_process_left_holding_the_output_open_does_not_hang_the_call() {
    let s = Scratch::new();
    // The background sleep inherits stdout and keeps the pipe open after vmrun exits.
    let vmrun = s.vmrun(
        "vmrun",
        "sleep 60 &\n\
         echo $! > \"$D/child.pid\"\n\
         echo 'Total running VMs: 1'\n\
         echo '/vms/a/a.vmx'\n\
         exit 0",
    );
    let vmrun = with_timeouts(&vmrun, |t| t.list = Duration::from_secs(120));
    let started = Instant::now();
    let running = vmrun.list_running().unwrap();
    // A VM laid out as the server's (`<id>/<id>.vmx`) is known by its folder.
    assert_eq!(running, [PathBuf::from("/vms/a")]);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn lots_of_output_on_both_pipes_does_not_block_vmrun() {
    let s = Scratch::new();
    // Far more than a pipe buffer holds on either stream, before the verdict.
    let vmrun = s.vmrun(
        "vmrun",
        "i=0\n\
         while [ $i -lt 20000 ]; do echo \"noise line $i ................................\"; \
         echo \"stderr line $i ................................\" >&2; i=$((i+1)); done\n\
         echo 'Error: The virtual machine should not be powered on. It is already running.'\n\
         exit 255",
    );
    let vmrun = with_timeouts(&vmrun, |t| t.delete = Duration::from_secs(120));
    let err = vmrun.delete_vm(&vm_of(&s.vmx())).unwrap_err();
    assert_eq!(err.code(), "vm-already-running");
}

#[test]
fn list_output() {
    let s = Scratch::new();
    let three = s.vmrun(
        "three",
        "printf 'Total running VMs: 3\\n/vms/a/a.vmx\\n/Users/ci/Virtual Machines/b.vmx\\n/Users/ci/Virtual Machines/c.vmwarevm/c.vmx\\n'",
    );
    // The server's VMs by their folders, as `VmRef::dir` names them; any other by its VMX.
    assert_eq!(
        three.list_running().unwrap(),
        [
            PathBuf::from("/vms/a"),
            PathBuf::from("/Users/ci/Virtual Machines/b.vmx"),
            PathBuf::from("/Users/ci/Virtual Machines/c.vmwarevm/c.vmx")
        ]
    );
    let none = s.vmrun("none", "echo 'Total running VMs: 0'");
    assert!(none.list_running().unwrap().is_empty());

    let short = s.vmrun("short", "printf 'Total running VMs: 2\\n/vms/a/a.vmx\\n'");
    let err = short.list_running().unwrap_err();
    assert_eq!(err.code(), "vmrun-bad-output");
    assert!(err.to_string().contains("/vms/a/a.vmx"), "{err}");
    let header = s.vmrun("header", "printf 'Running: 0\\n'");
    assert_eq!(
        header.list_running().unwrap_err().code(),
        "vmrun-bad-output"
    );
}

#[test]
fn stop_of_a_vm_that_is_off_succeeds() {
    let s = Scratch::new();
    let vmx = s.vmx();
    let vmrun = s.vmrun(
        "vmrun",
        "echo \"Error: The virtual machine is not powered on: $2\"; exit 255",
    );
    vmrun.stop(&vm_of(&vmx), true, &Cancel::new()).unwrap();
    assert_eq!(
        vmrun.call_counts(),
        [("stop".into(), "not-powered-on".into(), 1)]
    );
    // Other commands still see it as an error.
    let err = vmrun.guest_ip(&vm_of(&vmx), &Cancel::new()).unwrap_err();
    assert_eq!(err.code(), "vm-not-powered-on");
}

#[test]
fn guest_ip_answers() {
    let s = Scratch::new();
    let vmx = s.vmx();
    let cancel = Cancel::new();
    let ip = |name: &str, body: &str| s.vmrun(name, body).guest_ip(&vm_of(&vmx), &cancel);

    let addr = |text: &str| IpAnswer::Address(text.to_string());
    assert_eq!(
        ip("v4", "echo 192.168.123.147").unwrap(),
        addr("192.168.123.147")
    );
    assert_eq!(ip("v6", "echo fd00::5").unwrap(), addr("fd00::5"));
    assert_eq!(ip("unknown", "echo unknown").unwrap(), IpAnswer::NoAddress);
    assert_eq!(
        ip(
            "tools",
            "echo \"Error: The VMware Tools are not running in the virtual machine: $2\"; exit 255"
        )
        .unwrap(),
        IpAnswer::NoTools
    );
    assert_eq!(
        ip(
            "ws",
            "echo \"Error: Unable to get the IP address\"; exit 255"
        )
        .unwrap(),
        IpAnswer::NoTools
    );
    // Unusable answers are returned as printed: the IP watch judges them.
    assert_eq!(
        ip("zoned", "echo 'fe80::1%en0'").unwrap(),
        addr("fe80::1%en0")
    );
    // -wait past its limit is "no address yet", and the process group is gone.
    let waiting = s.vmrun("wait", "sleep 30");
    let started = std::time::Instant::now();
    assert_eq!(
        waiting
            .guest_ip_wait(&vm_of(&vmx), std::time::Duration::from_millis(300), &cancel)
            .unwrap(),
        IpAnswer::NoTools
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let err = ip("garbage", "echo 'Please wait'").unwrap_err();
    assert_eq!(err.code(), "vmrun-bad-output");
    assert!(err.to_string().contains("Please wait"), "{err}");
}

#[test]
fn tools_state_and_snapshots() {
    let s = Scratch::new();
    let vmx = s.vmx();
    assert_eq!(
        s.vmrun("running", "echo running")
            .tools_state(&vmx)
            .unwrap(),
        ToolsState::Running
    );
    assert_eq!(
        s.vmrun("installed", "echo installed")
            .tools_state(&vmx)
            .unwrap(),
        ToolsState::Installed
    );
    assert_eq!(
        s.vmrun(
            "snaps",
            "printf 'Total snapshots: 2\\nosx-builder-base\\nmy snap\\n'"
        )
        .list_snapshots(&vmx)
        .unwrap(),
        ["osx-builder-base", "my snap"]
    );
    let exists = s.vmrun(
        "exists",
        "echo 'Error: A snapshot with the name already exists'; exit 255",
    );
    let err = exists.snapshot(&vmx, "osx-builder-base").unwrap_err();
    assert_eq!(err.code(), "vmrun-failed");
    assert_eq!(
        err.vmrun_message(),
        Some("A snapshot with the name already exists")
    );
}

#[test]
fn clone_errors_are_typed() {
    let s = Scratch::new();
    let cancel = Cancel::new();
    let running = s.vmrun(
        "running",
        "echo 'Error: The virtual machine should not be powered on. It is already running.'; exit 255",
    );
    let err = running
        .clone_linked(&s.vmx(), Path::new("/vms/b/b.vmx"), "base", "b", &cancel)
        .unwrap_err();
    assert_eq!(err.code(), "vm-already-running");
    assert!(err.to_string().contains("vmrun clone"), "{err}");
}

#[test]
fn availability_check_names_the_path_and_the_setting() {
    let s = Scratch::new();
    let check = |path: &Path| Vmrun::new(VmrunSettings::new(path)).check_available();

    let missing = s.dir.join("no-such-vmrun");
    let err = check(&missing).unwrap_err();
    assert_eq!(err.code(), "vmrun-not-found");
    let message = err.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("VMWARE_VMRUN_PATH"), "{message}");

    assert_eq!(check(&s.dir).unwrap_err().code(), "vmrun-not-found");

    let plain = s.dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let err = check(&plain).unwrap_err();
    assert_eq!(err.code(), "vmrun-not-found");
    assert!(err.to_string().contains("not executable"), "{err}");

    check(&s.script("vmrun", "exit 0")).unwrap();
}

#[test]
fn calling_a_missing_vmrun_is_a_not_found_error() {
    let s = Scratch::new();
    let vmrun = Vmrun::new(VmrunSettings::new(s.dir.join("no-such-vmrun")));
    let err = vmrun.list_running().unwrap_err();
    assert_eq!(err.code(), "vmrun-not-found");
    assert_eq!(
        vmrun.call_counts(),
        [("list".into(), "vmrun-not-found".into(), 1)]
    );
}

#[test]
fn calls_are_counted_by_command_and_outcome_across_clones() {
    let s = Scratch::new();
    let vmx = s.vmx();
    let vmrun = s.vmrun(
        "vmrun",
        "case \"$1\" in\n\
         list) echo 'Total running VMs: 0' ;;\n\
         start) echo 'Error: The file is already in use'; exit 255 ;;\n\
         esac",
    );
    let shared = vmrun.clone();
    vmrun.list_running().unwrap();
    shared.list_running().unwrap();
    assert!(vmrun.start(&vm_of(&vmx), true, &Cancel::new()).is_err());
    thread::spawn(move || shared.delete_vm(&vm_of(&vmx)).unwrap())
        .join()
        .unwrap();
    assert_eq!(
        vmrun.call_counts(),
        [
            ("deleteVM".into(), "ok".into(), 1),
            // The two above and the start's own, which clears stale locks first.
            ("list".into(), "ok".into(), 3),
            ("start".into(), "vm-locked".into(), 1),
        ]
    );
}
