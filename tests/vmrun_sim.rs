//! Runs the built vmrun simulator as the server will (a child process per call) and checks it
//! keeps the vmrun contract: outputs, errors, traps, concurrency and fault switches.

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SIM: &str = env!("CARGO_BIN_EXE_vmrun-sim");
/// Generous: only a broken simulator gets near it, however loaded the machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One test's world: a state folder and a folder of VMs, removed at the end.
struct Sandbox {
    root: PathBuf,
}

#[derive(Debug)]
struct Run {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

impl Run {
    /// Success: exit 0, empty stderr; returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {self:?}");
        assert_eq!(self.stderr, "", "stderr must stay empty: {self:?}");
        &self.stdout
    }

    /// vmrun's failure: one `Error:` line on stdout, empty stderr, exit 255; returns the message.
    fn err(&self) -> &str {
        assert_eq!(self.code, Some(255), "expected failure: {self:?}");
        assert_eq!(self.stderr, "", "stderr must stay empty: {self:?}");
        assert_eq!(self.stdout.lines().count(), 1, "one line: {self:?}");
        self.stdout
            .strip_prefix("Error: ")
            .and_then(|m| m.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("not an Error line: {self:?}"))
    }
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let root = std::env::temp_dir().join(format!(
            "vmrun-sim-test-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(root.join("state")).unwrap();
        fs::create_dir_all(root.join("vms")).unwrap();
        Sandbox { root }
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(SIM);
        for (key, _) in std::env::vars() {
            if key.starts_with("VMRUN_SIM_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .env("VMRUN_SIM_STATE", self.state())
            .envs(env.iter().copied())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run_command(self.command(args, env))
    }

    /// A valid VM `vms/<name>/<name>.vmx` with one disk, `disk.vmdk`.
    fn vm(&self, name: &str) -> PathBuf {
        let dir = self.root.join("vms").join(name);
        fs::create_dir_all(&dir).unwrap();
        let vmx = dir.join(format!("{name}.vmx"));
        fs::write(
            &vmx,
            format!(
                "#!/usr/bin/vmware\n.encoding = \"UTF-8\"\nconfig.version = \"8\"\n\
                 displayName = \"{name}\"\n# a comment\n\nmemsize = \"2048\"\n\
                 msg.autoAnswer = \"TRUE\"\nscsi0:0.present = \"TRUE\"\n\
                 scsi0:0.fileName = \"disk.vmdk\"\n"
            ),
        )
        .unwrap();
        fs::write(dir.join("disk.vmdk"), format!("DISK OF {name}")).unwrap();
        vmx
    }

    fn write_faults(&self, rules: &str) {
        fs::write(self.state().join("faults"), rules).unwrap();
    }

    fn calls(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.state().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("calls.log line is JSON"))
            .collect()
    }

    fn list(&self) -> Vec<String> {
        let run = self.run(&["list"]);
        let mut lines = run.ok().lines().map(str::to_string);
        let header = lines.next().expect("a header line");
        let paths: Vec<String> = lines.collect();
        assert_eq!(header, format!("Total running VMs: {}", paths.len()));
        paths
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Processes left by `hang` faults are ours: end them by id.
        if let Ok(pids) = fs::read_to_string(self.state().join("hang.pids")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", pid])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn run_command(mut command: Command) -> Run {
    let child = command.spawn().expect("spawn vmrun-sim");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => {
            let output = output.expect("wait for vmrun-sim");
            Run {
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                code: output.status.code(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
            panic!("vmrun-sim {command:?} did not finish within {DEADLINE:?}");
        }
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn lck(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lck", path.display()))
}

/// The `M<digits>.lck` files of a lock folder.
fn lock_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix('M')
                .and_then(|n| n.strip_suffix(".lck"))
                .is_some_and(|digits| {
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                })
        })
        .collect()
}

fn snapshots(sandbox: &Sandbox, vmx: &Path) -> Vec<String> {
    let run = sandbox.run(&["listSnapshots", s(vmx)]);
    let mut lines = run.ok().lines().map(str::to_string);
    let header = lines.next().expect("a header line");
    let names: Vec<String> = lines.collect();
    assert_eq!(header, format!("Total snapshots: {}", names.len()));
    names
}

fn vmx_value(vmx: &Path, key: &str) -> Option<String> {
    fs::read_to_string(vmx).unwrap().lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().trim_matches('"').to_string())
    })
}

#[test]
fn list_prints_the_count_then_absolute_paths_of_running_vms() {
    let sandbox = Sandbox::new("list");
    assert_eq!(sandbox.run(&["list"]).ok(), "Total running VMs: 0\n");
    let alpha = sandbox.vm("alpha");
    let beta = sandbox.vm("beta");
    sandbox.run(&["start", s(&alpha)]).ok();
    // Relative to the current folder (the sandbox root): listed as an absolute path.
    sandbox.run(&["start", "vms/beta/beta.vmx", "nogui"]).ok();
    let listed = sandbox.list();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&s(&alpha).to_string()), "{listed:?}");
    assert!(listed.contains(&s(&beta).to_string()), "{listed:?}");

    fs::remove_file(&beta).unwrap();
    assert_eq!(sandbox.list(), vec![s(&alpha).to_string()]);
}

#[test]
fn leading_host_and_credential_flags_are_accepted() {
    let sandbox = Sandbox::new("flags");
    let vm = sandbox.vm("flags");
    let flags = ["-T", "ws", "-gu", "user", "-gp", "pass", "-vp", "secret"];
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["start", s(&vm), "nogui"]);
    sandbox.run(&args).ok();
    assert_eq!(
        sandbox.run(&["-T", "fusion", "list"]).ok(),
        format!("Total running VMs: 1\n{}\n", s(&vm))
    );
    assert!(sandbox
        .run(&["-T", "nonsense", "list"])
        .err()
        .contains("nonsense"));
    sandbox.run(&["-T"]).err();
}

#[test]
fn start_makes_lock_folders_and_stop_removes_them() {
    let sandbox = Sandbox::new("locks");
    let vm = sandbox.vm("locks");
    let disk = vm.with_file_name("disk.vmdk");
    assert_eq!(sandbox.run(&["start", s(&vm), "nogui"]).ok(), "");
    for folder in [lck(&vm), lck(&disk)] {
        assert!(folder.is_dir(), "{} must exist", folder.display());
        assert_eq!(lock_files(&folder).len(), 1, "{}", folder.display());
    }
    let state: Vec<serde_json::Value> = fs::read_dir(sandbox.state().join("vms"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
        .collect();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0]["running"], true);
    assert_eq!(state[0]["mode"], "nogui");
    assert_eq!(state[0]["vmx"], s(&vm));
    assert!(state[0]["started_at_ms"].as_u64().unwrap() > 0);

    // Already running: silent success.
    assert_eq!(sandbox.run(&["start", s(&vm)]).ok(), "");
    assert_eq!(sandbox.run(&["stop", s(&vm), "hard"]).ok(), "");
    assert!(!lck(&vm).exists() && !lck(&disk).exists());
    assert_eq!(
        sandbox.run(&["stop", s(&vm), "soft"]).err(),
        format!("The virtual machine is not powered on: {}", s(&vm))
    );
    assert!(sandbox.list().is_empty());
    sandbox.run(&["start", s(&vm), "gui"]).ok();
    assert_eq!(sandbox.list(), vec![s(&vm).to_string()]);
    sandbox.run(&["start", s(&vm), "headless"]).err();
}

#[test]
fn a_lock_of_another_process_makes_the_vm_in_use() {
    let sandbox = Sandbox::new("foreign-lock");
    let vm = sandbox.vm("foreign");
    fs::create_dir_all(lck(&vm)).unwrap();
    fs::write(lck(&vm).join("M4242.lck"), "").unwrap();
    assert_eq!(
        sandbox.run(&["start", s(&vm)]).err(),
        "The file is already in use"
    );
    assert_eq!(
        sandbox.run(&["deleteVM", s(&vm)]).err(),
        "The file is already in use"
    );
    assert!(sandbox.list().is_empty());

    fs::remove_dir_all(lck(&vm)).unwrap();
    let disk_lock = lck(&vm.with_file_name("disk.vmdk"));
    fs::create_dir_all(&disk_lock).unwrap();
    assert_eq!(
        sandbox.run(&["start", s(&vm)]).err(),
        "The file is already in use"
    );
    fs::remove_dir_all(&disk_lock).unwrap();
    sandbox.run(&["start", s(&vm)]).ok();
}

#[test]
fn missing_and_corrupt_vmx_files_cannot_be_opened() {
    let sandbox = Sandbox::new("corrupt");
    let missing = sandbox.root.join("vms/none/none.vmx");
    assert_eq!(
        sandbox.run(&["start", s(&missing)]).err(),
        format!(
            "Cannot open VM: {}, The virtual machine cannot be found",
            s(&missing)
        )
    );
    let good = "\
.encoding = \"UTF-8\"\ndisplayName = \"x\"\nscsi0:0.fileName = \"disk.vmdk\"\n";
    let cases = [
        ("bom", format!("\u{feff}{good}")),
        ("no-equals", format!("{good}memsize 2048\n")),
        ("unquoted", format!("{good}memsize = 2048\n")),
        ("stray-quote", format!("{good}annotation = \"a\"b\"\n")),
        (
            "case-twins",
            format!("{good}msg.autoanswer = \"TRUE\"\nmsg.autoAnswer = \"TRUE\"\n"),
        ),
        ("duplicate", format!("{good}displayName = \"y\"\n")),
    ];
    for (name, text) in cases {
        let vm = sandbox.vm(name);
        fs::write(&vm, text).unwrap();
        let expected = format!(
            "Cannot open VM: {}, Cannot read the virtual machine configuration file",
            s(&vm)
        );
        let dst = sandbox.root.join(format!("vms/{name}-clone/c.vmx"));
        assert_eq!(sandbox.run(&["start", s(&vm)]).err(), expected, "{name}");
        assert_eq!(
            sandbox.run(&["clone", s(&vm), s(&dst), "linked"]).err(),
            expected,
            "{name}"
        );
        assert_eq!(
            sandbox.run(&["snapshot", s(&vm), "base"]).err(),
            expected,
            "{name}"
        );
        assert_eq!(
            sandbox.run(&["getGuestIPAddress", s(&vm)]).err(),
            expected,
            "{name}"
        );
        assert!(!dst.exists(), "{name}");
    }
    assert!(sandbox.list().is_empty());
}

#[test]
fn linked_clone_without_snapshot_adds_a_clone_snapshot_every_time() {
    let sandbox = Sandbox::new("trap");
    let gold = sandbox.vm("gold");
    for n in 1..=2 {
        let dst = sandbox.root.join(format!("vms/c{n}/c{n}.vmx"));
        assert_eq!(
            sandbox.run(&["clone", s(&gold), s(&dst), "linked"]).ok(),
            ""
        );
        assert_eq!(snapshots(&sandbox, &gold), vec!["Clone"; n]);
        assert_eq!(
            vmx_value(&dst, "displayName").unwrap(),
            format!("Clone of {}", s(&gold))
        );
        assert_eq!(
            vmx_value(&dst, "scsi0:0.fileName").unwrap(),
            "disk-cl1.vmdk"
        );
        let delta = fs::read_to_string(dst.with_file_name("disk-cl1.vmdk")).unwrap();
        let hint = format!(
            "parentFileNameHint=\"{}\"",
            s(&gold.with_file_name("disk.vmdk"))
        );
        assert!(delta.lines().any(|l| l == hint), "{delta}");
        // The rest of the VMX is kept.
        assert_eq!(vmx_value(&dst, "memsize").unwrap(), "2048");
    }
    let vmsd = fs::read_to_string(gold.with_extension("vmsd")).unwrap();
    for line in [
        ".encoding = \"UTF-8\"",
        "snapshot.numSnapshots = \"2\"",
        "snapshot.lastUID = \"2\"",
        "snapshot0.displayName = \"Clone\"",
        "snapshot1.displayName = \"Clone\"",
    ] {
        assert!(vmsd.lines().any(|l| l == line), "{line} in {vmsd}");
    }
    let clones: Vec<_> = sandbox
        .calls()
        .into_iter()
        .filter(|c| c["args"][0] == "clone")
        .collect();
    assert_eq!(clones.len(), 2);
    assert!(clones.iter().all(|c| c["exit"] == 0));
}

#[test]
fn clone_with_a_named_snapshot_in_both_forms_leaves_the_parent_alone() {
    let sandbox = Sandbox::new("named-snapshot");
    let gold = sandbox.vm("gold");
    sandbox.run(&["snapshot", s(&gold), "base"]).ok();
    let one = sandbox.root.join("vms/one/one.vmx");
    let two = sandbox.root.join("vms/two/two.vmx");
    let args_one = [
        "clone",
        s(&gold),
        s(&one),
        "linked",
        "-snapshot=base",
        "-cloneName=first",
    ];
    sandbox.run(&args_one).ok();
    let args_two = [
        "clone",
        s(&gold),
        s(&two),
        "linked",
        "-snapshot",
        "base",
        "-cloneName",
        "second vm",
    ];
    sandbox.run(&args_two).ok();
    assert_eq!(snapshots(&sandbox, &gold), vec!["base"]);
    assert_eq!(vmx_value(&one, "displayName").unwrap(), "first");
    assert_eq!(vmx_value(&two, "displayName").unwrap(), "second vm");
    assert!(two.with_file_name("disk-cl1.vmdk").is_file());

    let three = sandbox.root.join("vms/three/three.vmx");
    assert_eq!(
        sandbox
            .run(&["clone", s(&gold), s(&three), "linked", "-snapshot=nope"])
            .err(),
        "Invalid snapshot name 'nope'"
    );
    assert!(!three.exists());
    assert_eq!(snapshots(&sandbox, &gold), vec!["base"]);
    // The clone lock went away with the failed clone.
    assert!(!PathBuf::from(format!("{}.sim-clone-lock", s(&gold))).exists());
    sandbox
        .run(&["clone", s(&gold), s(&three), "linked", "-snapshot", "base"])
        .ok();
    sandbox
        .run(&["clone", s(&gold), s(&three), "linked", "-snapshot"])
        .err();
}

#[test]
fn full_clone_copies_the_disks() {
    let sandbox = Sandbox::new("full");
    let gold = sandbox.vm("gold");
    let dst = sandbox.root.join("vms/full/full.vmx");
    sandbox.run(&["clone", s(&gold), s(&dst), "full"]).ok();
    assert_eq!(
        fs::read_to_string(dst.with_file_name("disk-cl1.vmdk")).unwrap(),
        "DISK OF gold"
    );
    assert!(snapshots(&sandbox, &gold).is_empty());
    sandbox.run(&["clone", s(&gold), s(&dst), "copy"]).err();
}

#[test]
fn clone_refuses_a_running_source_an_existing_destination_and_a_missing_disk() {
    let sandbox = Sandbox::new("clone-refusals");
    let gold = sandbox.vm("gold");
    let dst = sandbox.root.join("vms/c/c.vmx");
    sandbox.run(&["start", s(&gold)]).ok();
    assert_eq!(
        sandbox.run(&["clone", s(&gold), s(&dst), "linked"]).err(),
        "The virtual machine should not be powered on. It is already running."
    );
    assert!(!dst.exists());
    sandbox.run(&["stop", s(&gold)]).ok();

    let taken = sandbox.vm("taken");
    assert_eq!(
        sandbox.run(&["clone", s(&gold), s(&taken), "linked"]).err(),
        "The virtual machine cannot be cloned because the destination already exists"
    );
    let missing = sandbox.root.join("vms/none/none.vmx");
    assert_eq!(
        sandbox
            .run(&["clone", s(&missing), s(&dst), "linked"])
            .err(),
        format!(
            "Cannot open VM: {}, The virtual machine cannot be found",
            s(&missing)
        )
    );
    fs::remove_file(gold.with_file_name("disk.vmdk")).unwrap();
    assert!(sandbox
        .run(&["clone", s(&gold), s(&dst), "full"])
        .err()
        .starts_with("Cannot open the disk"));
    assert!(!dst.exists());
}

#[test]
fn a_second_clone_of_the_same_parent_meanwhile_finds_it_in_use() {
    let sandbox = Sandbox::new("clone-overlap");
    let gold = sandbox.vm("gold");
    sandbox.run(&["snapshot", s(&gold), "base"]).ok();
    let lock = PathBuf::from(format!("{}.sim-clone-lock", s(&gold)));
    let slow_dst = sandbox.root.join("vms/slow/slow.vmx");
    let slow = sandbox
        .command(
            &["clone", s(&gold), s(&slow_dst), "linked", "-snapshot=base"],
            &[("VMRUN_SIM_CLONE_MS", "3000")],
        )
        .spawn()
        .unwrap();
    wait_for("the clone lock", || lock.exists());
    let other = sandbox.root.join("vms/other/other.vmx");
    assert_eq!(
        sandbox
            .run(&["clone", s(&gold), s(&other), "linked", "-snapshot=base"])
            .err(),
        "The file is already in use"
    );
    let output = slow.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(slow_dst.is_file());
    assert!(!lock.exists());
    sandbox
        .run(&["clone", s(&gold), s(&other), "linked", "-snapshot=base"])
        .ok();
}

#[test]
fn concurrent_clones_of_one_parent_never_overlap() {
    let sandbox = Sandbox::new("clone-race");
    let gold = sandbox.vm("gold");
    sandbox.run(&["snapshot", s(&gold), "base"]).ok();
    let runs: Vec<Run> = thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|n| {
                let sandbox = &sandbox;
                let gold = &gold;
                scope.spawn(move || {
                    let dst = sandbox.root.join(format!("vms/r{n}/r{n}.vmx"));
                    sandbox.run_env(
                        &["clone", s(gold), s(&dst), "linked", "-snapshot=base"],
                        &[("VMRUN_SIM_CLONE_MS", "200")],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in runs.iter().filter(|r| r.code != Some(0)) {
        assert_eq!(run.err(), "The file is already in use");
    }
    let done: Vec<(u64, u64)> = sandbox
        .calls()
        .iter()
        .filter(|c| c["args"][0] == "clone" && c["exit"] == 0)
        .map(|c| {
            (
                c["t_start_ms"].as_u64().unwrap(),
                c["t_end_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!done.is_empty());
    assert_eq!(
        done.len(),
        runs.iter().filter(|r| r.code == Some(0)).count()
    );
    // A process may start while another is releasing the lock, so whole calls can touch; the
    // 200 ms each spends holding the lock cannot, so any two successful clones span 400 ms.
    for (n, first) in done.iter().enumerate() {
        assert!(first.1 - first.0 >= 200, "{done:?}");
        for second in &done[n + 1..] {
            let span = first.1.max(second.1) - first.0.min(second.0);
            assert!(span >= 400, "clones overlapped: {done:?}");
        }
    }
    assert_eq!(snapshots(&sandbox, &gold), vec!["base"]);
}

#[test]
fn many_concurrent_invocations_keep_the_state_whole() {
    let sandbox = Sandbox::new("concurrency");
    let vms: Vec<PathBuf> = (0..12).map(|n| sandbox.vm(&format!("vm{n}"))).collect();
    let parallel = |command: &'static str| {
        thread::scope(|scope| {
            for vm in &vms {
                let sandbox = &sandbox;
                scope.spawn(move || sandbox.run(&[command, s(vm)]).ok().to_string());
            }
        })
    };
    parallel("start");
    let mut listed = sandbox.list();
    listed.sort();
    let mut expected: Vec<String> = vms.iter().map(|v| s(v).to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    parallel("stop");
    assert!(sandbox.list().is_empty());
    // Every invocation left exactly one whole line (the parser panics on a torn one).
    assert_eq!(sandbox.calls().len(), 12 + 1 + 12 + 1);
}

#[test]
fn the_guest_address_appears_after_the_tools_and_ip_delays() {
    const TOOLS_MS: u64 = 1500;
    const IP_MS: u64 = 3000;
    let sandbox = Sandbox::new("ip-sequence");
    let vm = sandbox.vm("ip");
    let env = [
        ("VMRUN_SIM_TOOLS_DELAY_MS", "1500"),
        ("VMRUN_SIM_IP_DELAY_MS", "3000"),
    ];
    let s0 = now_ms();
    sandbox.run(&["start", s(&vm), "nogui"]).ok();
    let s1 = now_ms();
    let tools_error = format!(
        "Error: The VMware Tools are not running in the virtual machine: {}\n",
        s(&vm)
    );
    // (answer kind, call start, call end)
    let mut seen: Vec<(u8, u64, u64)> = Vec::new();
    let address = loop {
        let a = now_ms();
        let ip = sandbox.run_env(&["getGuestIPAddress", s(&vm)], &env);
        let tools = sandbox.run_env(&["checkToolsState", s(&vm)], &env);
        let b = now_ms();
        let kind = if ip.stdout == tools_error {
            assert_eq!(ip.code, Some(255));
            // Tools may have come up between the two calls, never gone down.
            assert!(
                ["installed\n", "running\n"].contains(&tools.ok()),
                "{tools:?}"
            );
            0
        } else if ip.ok() == "unknown\n" {
            assert_eq!(tools.ok(), "running\n");
            1
        } else {
            break ip.stdout.trim().to_string();
        };
        seen.push((kind, a, b));
        assert!(b - s0 < DEADLINE.as_millis() as u64, "no address: {seen:?}");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(now_ms() - s0 >= IP_MS);
    // Each answer is the one its timing allows (the VM's start lies between s0 and s1).
    for (kind, a, b) in &seen {
        assert!(
            a.saturating_sub(s1) < IP_MS,
            "unknown/error after the IP delay: {seen:?}"
        );
        if *kind == 1 {
            assert!(b - s0 >= TOOLS_MS, "Tools ran too early: {seen:?}");
        } else {
            assert!(
                a.saturating_sub(s1) < TOOLS_MS,
                "Tools ran too late: {seen:?}"
            );
        }
    }
    let kinds: Vec<u8> = seen.iter().map(|k| k.0).collect();
    assert!(
        kinds.windows(2).all(|w| w[0] <= w[1]),
        "went backwards: {kinds:?}"
    );
    assert_eq!(kinds.first(), Some(&0), "first the Tools error: {kinds:?}");
    assert!(kinds.contains(&1), "then unknown: {kinds:?}");
    check_address(&address);
    // Stable per VM.
    sandbox.run(&["stop", s(&vm)]).ok();
    sandbox.run(&["start", s(&vm)]).ok();
    assert_eq!(
        sandbox.run(&["getGuestIPAddress", s(&vm)]).ok().trim(),
        address
    );
}

fn check_address(address: &str) {
    let octets: Vec<u8> = address
        .split('.')
        .map(|o| {
            o.parse()
                .unwrap_or_else(|_| panic!("not an IPv4: {address}"))
        })
        .collect();
    assert_eq!(octets.len(), 4, "{address}");
    assert_eq!(&octets[..2], &[172, 16], "{address}");
    assert!(![0, 1, 255].contains(&octets[3]), "{address}");
}

#[test]
fn wait_blocks_until_the_address_exists() {
    let sandbox = Sandbox::new("ip-wait");
    let vm = sandbox.vm("wait");
    let env = [
        ("VMRUN_SIM_TOOLS_DELAY_MS", "300"),
        ("VMRUN_SIM_IP_DELAY_MS", "700"),
    ];
    let before = now_ms();
    sandbox.run(&["start", s(&vm)]).ok();
    let waited = sandbox.run_env(&["getGuestIPAddress", s(&vm), "-wait"], &env);
    assert!(now_ms() - before >= 700);
    let address = waited.ok().trim().to_string();
    check_address(&address);
    assert_eq!(waited.stdout, format!("{address}\n"));
    assert_eq!(
        sandbox.run_env(&["getGuestIPAddress", s(&vm)], &env).ok(),
        waited.stdout
    );
}

#[test]
fn guest_queries_of_a_vm_that_is_off() {
    let sandbox = Sandbox::new("ip-off");
    let vm = sandbox.vm("off");
    let off = format!("The virtual machine is not powered on: {}", s(&vm));
    assert_eq!(sandbox.run(&["getGuestIPAddress", s(&vm)]).err(), off);
    assert_eq!(
        sandbox.run(&["getGuestIPAddress", s(&vm), "-wait"]).err(),
        off
    );
    assert_eq!(
        sandbox.run(&["checkToolsState", s(&vm)]).ok(),
        "installed\n"
    );
    assert_eq!(sandbox.run(&["reset", s(&vm), "hard"]).err(), off);
    assert_eq!(sandbox.run(&["suspend", s(&vm)]).err(), off);
}

#[test]
fn guest_variables_start_as_the_vmx_guestinfo_at_power_on() {
    let sandbox = Sandbox::new("vars");
    let vm = sandbox.vm("vars");
    let mut text = fs::read_to_string(&vm).unwrap();
    text.push_str("guestinfo.name = \"host-1\"\nGuestInfo.Key = \"a|0Ab|22c|7C\"\n");
    fs::write(&vm, &text).unwrap();
    let off = format!("The virtual machine is not powered on: {}", s(&vm));
    assert_eq!(
        sandbox
            .run(&["readVariable", s(&vm), "guestVar", "name"])
            .err(),
        off
    );
    assert_eq!(
        sandbox
            .run(&["writeVariable", s(&vm), "guestVar", "name", "x"])
            .err(),
        off
    );
    sandbox.run(&["start", s(&vm), "nogui"]).ok();
    // Edits of the VMX after power-on do not reach the guest.
    fs::write(&vm, text.replace("host-1", "host-2")).unwrap();
    let read = |name: &str| {
        sandbox
            .run(&["readVariable", s(&vm), "guestVar", name])
            .ok()
            .to_string()
    };
    assert_eq!(read("name"), "host-1\n");
    assert_eq!(read("Key"), "a\nb\"c|\n");
    assert_eq!(read("unset"), "\n");
    sandbox
        .run(&["writeVariable", s(&vm), "guestVar", "token", "t 1"])
        .ok();
    assert_eq!(read("token"), "t 1\n");
    assert_eq!(
        sandbox
            .run(&["readVariable", s(&vm), "runtimeConfig", "memsize"])
            .ok(),
        "2048\n"
    );
    assert!(sandbox
        .run(&["readVariable", s(&vm), "bogus", "x"])
        .err()
        .contains("guestVar, runtimeConfig or guestEnv"));
    // Gone with the power.
    sandbox.run(&["stop", s(&vm), "hard"]).ok();
    sandbox.run(&["start", s(&vm)]).ok();
    assert_eq!(read("token"), "\n");
    assert_eq!(read("name"), "host-2\n");
}

#[test]
fn reset_restarts_the_tools_timer_and_suspend_powers_off() {
    let sandbox = Sandbox::new("reset");
    let vm = sandbox.vm("reset");
    sandbox.run(&["start", s(&vm)]).ok();
    thread::sleep(Duration::from_millis(1100));
    let env = [("VMRUN_SIM_TOOLS_DELAY_MS", "1000")];
    check_address(
        sandbox
            .run_env(&["getGuestIPAddress", s(&vm)], &env)
            .ok()
            .trim(),
    );
    let before_reset = now_ms();
    sandbox.run(&["reset", s(&vm), "soft"]).ok();
    let answer = sandbox.run_env(&["getGuestIPAddress", s(&vm)], &env);
    // Conclusive only if the machine did not stall for the whole delay.
    if now_ms() - before_reset < 1000 {
        assert_eq!(
            answer.err(),
            format!(
                "The VMware Tools are not running in the virtual machine: {}",
                s(&vm)
            )
        );
    }
    sandbox.run(&["suspend", s(&vm)]).ok();
    assert!(sandbox.list().is_empty());
    assert!(!lck(&vm).exists());
}

#[test]
fn snapshots_are_named_once_and_listed_in_order() {
    let sandbox = Sandbox::new("snapshots");
    let vm = sandbox.vm("snap");
    assert!(snapshots(&sandbox, &vm).is_empty());
    sandbox.run(&["snapshot", s(&vm), "base"]).ok();
    sandbox.run(&["snapshot", s(&vm), "second one"]).ok();
    assert_eq!(
        sandbox.run(&["snapshot", s(&vm), "base"]).err(),
        "A snapshot with the name already exists"
    );
    assert_eq!(
        sandbox.run(&["listSnapshots", s(&vm)]).ok(),
        "Total snapshots: 2\nbase\nsecond one\n"
    );
    let vmsd = fs::read_to_string(vm.with_extension("vmsd")).unwrap();
    assert!(vmsd.contains("snapshot.numSnapshots = \"2\""), "{vmsd}");
    assert!(
        vmsd.contains("snapshot1.displayName = \"second one\""),
        "{vmsd}"
    );
    sandbox.run(&["snapshot", s(&vm)]).err();
}

#[test]
fn delete_vm_removes_vmware_files_only() {
    let sandbox = Sandbox::new("delete");
    let gold = sandbox.vm("gold");
    sandbox.run(&["snapshot", s(&gold), "base"]).ok();
    let clone = sandbox.root.join("vms/c/c.vmx");
    sandbox
        .run(&["clone", s(&gold), s(&clone), "linked", "-snapshot=base"])
        .ok();
    let dir = clone.parent().unwrap().to_path_buf();
    for name in ["c.vmxf", "c.nvram", "vmware.log", "vmware-0.log"] {
        fs::write(dir.join(name), "vmware's").unwrap();
    }
    let foreign = ["notes.txt", "build.log", "meta.json", "other.vmdk"];
    for name in foreign {
        fs::write(dir.join(name), "not vmware's").unwrap();
    }
    sandbox.run(&["start", s(&clone)]).ok();
    assert_eq!(
        sandbox.run(&["deleteVM", s(&clone)]).err(),
        "The virtual machine should not be powered on. It is already running."
    );
    sandbox.run(&["stop", s(&clone)]).ok();
    assert_eq!(sandbox.run(&["deleteVM", s(&clone)]).ok(), "");

    let mut left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = foreign.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected);
    // The parent is untouched.
    assert_eq!(
        fs::read_to_string(gold.with_file_name("disk.vmdk")).unwrap(),
        "DISK OF gold"
    );
    assert_eq!(snapshots(&sandbox, &gold), vec!["base"]);
    assert_eq!(
        sandbox.run(&["deleteVM", s(&clone)]).err(),
        format!(
            "Cannot open VM: {}, The virtual machine cannot be found",
            s(&clone)
        )
    );

    sandbox.run(&["deleteVM", s(&gold)]).ok();
    assert!(!gold.exists() && !gold.with_extension("vmsd").exists());
    assert!(!gold.with_file_name("disk.vmdk").exists());
    let state_files = fs::read_dir(sandbox.state().join("vms")).unwrap().count();
    assert_eq!(state_files, 0, "deleteVM drops the VM's state");
}

#[test]
fn unknown_commands_and_missing_arguments_are_error_lines() {
    let sandbox = Sandbox::new("usage");
    assert_eq!(
        sandbox.run(&["frobnicate", "x.vmx"]).err(),
        "Unrecognized command: frobnicate"
    );
    for args in [
        &[][..],
        &["start"][..],
        &["stop"][..],
        &["clone", "a.vmx", "b.vmx"][..],
        &["snapshot", "a.vmx"][..],
        &["getGuestIPAddress"][..],
        &["list", "extra"][..],
        &["deleteVM", "a.vmx", "extra"][..],
    ] {
        sandbox.run(args).err();
    }
}

#[test]
fn the_state_folder_is_required() {
    let sandbox = Sandbox::new("no-state");
    let mut command = sandbox.command(&["list"], &[]);
    command.env_remove("VMRUN_SIM_STATE");
    assert_eq!(run_command(command).err(), "VMRUN_SIM_STATE is not set");
}

#[test]
fn every_call_is_logged_with_its_arguments_and_exit_code() {
    let sandbox = Sandbox::new("calls");
    let vm = sandbox.vm("calls");
    sandbox.run(&["-T", "ws", "start", s(&vm), "nogui"]).ok();
    sandbox.run(&["bogus"]).err();
    let calls = sandbox.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0]["args"],
        serde_json::json!(["-T", "ws", "start", s(&vm), "nogui"])
    );
    assert_eq!(calls[0]["exit"], 0);
    assert_eq!(calls[1]["args"], serde_json::json!(["bogus"]));
    assert_eq!(calls[1]["exit"], 255);
    for call in &calls {
        assert!(call["pid"].as_u64().unwrap() > 0);
        assert!(call["t_end_ms"].as_u64().unwrap() >= call["t_start_ms"].as_u64().unwrap());
    }
}

#[test]
fn fault_fail_and_fail_exit0_are_read_on_every_call() {
    let sandbox = Sandbox::new("fault-fail");
    let vm = sandbox.vm("f");
    sandbox.write_faults("# injected\nstart fail Unknown error\n");
    assert_eq!(sandbox.run(&["start", s(&vm)]).err(), "Unknown error");
    assert!(sandbox.list().is_empty());

    sandbox.write_faults("start fail-exit0 The operation was canceled\n");
    let run = sandbox.run(&["start", s(&vm)]);
    assert_eq!(run.ok(), "Error: The operation was canceled\n");
    assert!(sandbox.list().is_empty());

    fs::remove_file(sandbox.state().join("faults")).unwrap();
    sandbox.run(&["start", s(&vm)]).ok();
    assert_eq!(sandbox.list().len(), 1);

    sandbox.write_faults("* fail everything is broken\n");
    assert_eq!(sandbox.run(&["list"]).err(), "everything is broken");
    sandbox.write_faults("start explode\n");
    assert!(sandbox
        .run(&["list"])
        .err()
        .starts_with("vmrun-sim: bad fault rule"));
}

#[test]
fn fault_once_fires_for_exactly_one_call_even_concurrently() {
    let sandbox = Sandbox::new("fault-once");
    sandbox.write_faults("list once fail boom\n");
    let runs: Vec<Run> = thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| sandbox.run(&["list"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<&Run> = runs.iter().filter(|r| r.code != Some(0)).collect();
    assert_eq!(failed.len(), 1, "{runs:?}");
    assert_eq!(failed[0].err(), "boom");
    assert!(sandbox.list().is_empty());
}

#[test]
fn fault_match_on_the_vmx_path() {
    let sandbox = Sandbox::new("fault-match");
    let alpha = sandbox.vm("alpha");
    let beta = sandbox.vm("beta");
    sandbox.write_faults("start@alpha fail no alpha\nclone@/wanted/ fail no wanted clone\n");
    assert_eq!(sandbox.run(&["start", s(&alpha)]).err(), "no alpha");
    sandbox.run(&["start", s(&beta)]).ok();
    sandbox.run(&["stop", s(&beta)]).ok();
    let wanted = sandbox.root.join("vms/wanted/w.vmx");
    let fine = sandbox.root.join("vms/fine/f.vmx");
    assert_eq!(
        sandbox.run(&["clone", s(&beta), s(&wanted), "full"]).err(),
        "no wanted clone"
    );
    sandbox.run(&["clone", s(&beta), s(&fine), "full"]).ok();
}

#[test]
fn fault_noise_precedes_the_normal_answer() {
    let sandbox = Sandbox::new("fault-noise");
    sandbox.write_faults("* noise\n");
    let run = sandbox.run(&["list"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(
        run.stdout,
        "Warning: program compiled against libxml 212 using older 209\nTotal running VMs: 0\n"
    );
    assert_eq!(
        run.stderr,
        "[AppLoader] Use shipped Linux kernel AIO access library.\n"
    );
    let missing = sandbox.root.join("vms/none/none.vmx");
    let run = sandbox.run(&["start", s(&missing)]);
    assert_eq!(run.code, Some(255));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(lines[0].starts_with("Warning:"));
    assert!(lines[1].starts_with("Error: Cannot open VM:"));
}

#[test]
fn fault_rules_from_the_environment_delay_and_garbage() {
    let sandbox = Sandbox::new("fault-env");
    let faults = [(
        "VMRUN_SIM_FAULTS",
        "list delay 300; checkToolsState garbage",
    )];
    let before = Instant::now();
    assert_eq!(
        sandbox.run_env(&["list"], &faults).ok(),
        "Total running VMs: 0\n"
    );
    assert!(before.elapsed() >= Duration::from_millis(300));
    let vm = sandbox.vm("g");
    let junk = sandbox.run_env(&["checkToolsState", s(&vm)], &faults);
    let text = junk.ok();
    assert!(!text.is_empty());
    assert!(!text.starts_with("Error:"));
    assert!(!["running\n", "installed\n", "unknown\n"].contains(&text));
    // Without the variable, no faults.
    assert_eq!(
        sandbox.run(&["checkToolsState", s(&vm)]).ok(),
        "installed\n"
    );
}

#[test]
fn fault_hang_ends_only_when_the_whole_process_group_is_killed() {
    let sandbox = Sandbox::new("fault-hang");
    sandbox.write_faults("stop hang\n");
    let vm = sandbox.vm("h");
    let mut command = sandbox.command(&["stop", s(&vm), "hard"], &[]);
    command.process_group(0);
    let mut child = command.spawn().unwrap();
    let sim_pid = child.id();
    let pids_file = sandbox.state().join("hang.pids");
    wait_for("the hang's child", || {
        fs::read_to_string(&pids_file).is_ok_and(|text| {
            text.lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.len() == 2 && fields[0] == sim_pid.to_string()
            })
        })
    });
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        let _ = tx.send(rest);
    });

    // Killing the simulator alone leaves its child holding stdout open.
    let kill = |target: String| {
        let status = Command::new("kill")
            .args(["-s", "KILL", "--", &target])
            .status()
            .unwrap();
        assert!(status.success(), "kill {target}");
    };
    kill(sim_pid.to_string());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the hang must leave a child that keeps stdout open"
    );
    // The group (its id is the simulator's pid) ends the child too: stdout closes.
    kill(format!("-{sim_pid}"));
    let rest = rx
        .recv_timeout(DEADLINE)
        .expect("stdout closes once the group is dead");
    assert!(rest.is_empty());
    // A hung call never finished, so it logged nothing.
    assert!(sandbox.calls().is_empty());
}
