//! Fault injection through the simulator at every vmrun command the server uses, as a table:
//! each row names the command, the fault and the documented outcome, and is checked against
//! the real server. Every row runs on a server of its own (its own data folder and simulator
//! state), a few rows at once, and the table is printed at the end with what each row got.
//!
//! Besides its own outcome, every row checks what must hold afterwards: the server answers,
//! a failed VM can still be deleted and leaves nothing behind, a refused DELETE leaves the VM
//! whole (record, folder, VMX, status true to the simulator) and a clean retry deletes it, and
//! a clean create after the fault succeeds (nothing poisoned).

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{request, FileServer};
use common::{gold_tar_gz, sha1_hex, Server, ServerOptions, TempDir};
use serde_json::{json, Value};

const FAIL_MSG: &str = "Insufficient permissions in the host operating system";
const EXIT0_MSG: &str = "The operation was canceled";
const IN_USE_MSG: &str = "The file is already in use";
const TOOLS_MSG: &str = "The VMware Tools are not running in the virtual machine: x";
const CORRUPT_MSG: &str = "Cannot read the virtual machine configuration file";
/// What the server says when it killed a hung vmrun.
const TIMEOUT_MSG: &str = "no answer within";
/// Seconds a hung command gets before the server kills it.
const HANG_LIMIT: &str = "1.5";
/// A hung command must end well within this, whatever the load.
const HANG_BOUND: Duration = Duration::from_secs(20);
/// A line VMware (and the simulator) cannot read: no `=`.
const BAD_LINE: &str = "this line is not a vmx setting\n";
/// Rows run at once, each with its own server.
const WORKERS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Fail,
    Hang,
    InUse,
    /// `The file is already in use` once: a retry succeeds.
    InUseOnce,
    FailExit0,
    Noise,
    Garbage,
    /// A bad line in the VMX the command reads (the gold VM's or the clone's).
    CorruptVmx,
    /// `getGuestIPAddress` keeps answering that VMware Tools are not running.
    ToolsNotRunning,
    /// Fusion's timestamped noise line before the answer.
    Stamp,
    /// The command does its work, then answers `Cannot connect to the virtual machine`.
    ConnectLost,
    /// `One of the parameters was invalid`: a product without linked clones.
    NoLinkedClones,
    /// VMware Tools never run, on any boot, with `--boot-timeout 1`: the boot watchdog.
    NeverBoots,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Fail => "fail",
            Fault::Hang => "hang",
            Fault::InUse => "in use",
            Fault::InUseOnce => "in use once",
            Fault::FailExit0 => "fail-exit0",
            Fault::Noise => "noise",
            Fault::Garbage => "garbage",
            Fault::CorruptVmx => "corrupt VMX",
            Fault::ToolsNotRunning => "Tools not running",
            Fault::Stamp => "timestamped noise",
            Fault::ConnectLost => "did it, then Cannot connect",
            Fault::NoLinkedClones => "One of the parameters was invalid",
            Fault::NeverBoots => "guest never boots (watchdog)",
        }
    }

    /// The simulator's fault rule (none for a corrupt VMX, which is a file edit).
    fn rule(self, command: &str) -> Option<String> {
        Some(match self {
            Fault::Fail => format!("{command} fail {FAIL_MSG}"),
            Fault::Hang => format!("{command} hang"),
            Fault::InUse => format!("{command} fail {IN_USE_MSG}"),
            Fault::InUseOnce => format!("{command} once fail {IN_USE_MSG}"),
            Fault::FailExit0 => format!("{command} fail-exit0 {EXIT0_MSG}"),
            Fault::Noise => format!("{command} noise"),
            Fault::Garbage => format!("{command} garbage"),
            Fault::ToolsNotRunning | Fault::NeverBoots => format!("{command} fail {TOOLS_MSG}"),
            Fault::Stamp => format!("{command} stamp"),
            Fault::ConnectLost => {
                format!("{command} after-fail Cannot connect to the virtual machine")
            }
            Fault::NoLinkedClones => format!("{command} fail One of the parameters was invalid"),
            Fault::CorruptVmx => return None,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Provisioning fails with this code and this text (vmrun's words) in the message.
    Fails(&'static str, &'static str),
    /// Running with an IP address.
    Ready,
    /// Running, no IP before `--ip-wait-timeout`.
    IpTimeout,
    /// DELETE answers this status, code and text; the VM stays whole.
    Refused(u16, &'static str, &'static str),
    /// DELETE answers 204 and the VM is gone.
    Deleted,
    /// `list` at start: the server starts, keeps its VMs' states and provisions; `warned`:
    /// it logged that it cannot tell which VMs run.
    Serves { warned: bool },
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Expect::Fails(code, needle) => format!("VM failed `{code}` ({needle:?})"),
            Expect::Ready => "VM ready".into(),
            Expect::IpTimeout => "VM running, phase ip-timeout".into(),
            Expect::Refused(status, code, needle) => {
                format!("DELETE {status} `{code}` ({needle:?}), VM kept whole")
            }
            Expect::Deleted => "DELETE 204, VM gone".into(),
            Expect::Serves { warned: true } => {
                "server starts and serves, warns it cannot tell what runs".into()
            }
            Expect::Serves { warned: false } => "server starts and serves".into(),
        }
    }

    fn matches(&self, got: &Got) -> bool {
        match (self, got) {
            (Expect::Fails(code, needle), Got::Vm(vm)) => {
                vm.status == "failed" && vm.code == *code && vm.message.contains(needle)
            }
            (Expect::Ready, Got::Vm(vm)) => vm.status == "running" && vm.phase == "ready",
            (Expect::IpTimeout, Got::Vm(vm)) => vm.status == "running" && vm.phase == "ip-timeout",
            (Expect::Refused(status, code, needle), Got::Delete(d)) => {
                d.status == *status && d.code == *code && d.message.contains(needle)
            }
            (Expect::Deleted, Got::Delete(d)) => d.status == 204,
            (Expect::Serves { warned }, Got::Served(s)) => {
                s.warned == *warned && s.old_status == "running" && s.new_vm == "ready"
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct VmGot {
    status: String,
    phase: String,
    code: String,
    message: String,
}

#[derive(Clone, Debug)]
struct DeleteGot {
    status: u16,
    code: String,
    message: String,
}

#[derive(Clone, Debug)]
struct ServedGot {
    warned: bool,
    old_status: String,
    new_vm: String,
}

#[derive(Clone, Debug)]
enum Got {
    Vm(VmGot),
    Delete(DeleteGot),
    Served(ServedGot),
    Panicked(String),
}

impl Got {
    fn describe(&self) -> String {
        match self {
            Got::Vm(vm) if vm.status == "failed" => {
                format!("VM failed `{}`: {}", vm.code, short(&vm.message))
            }
            Got::Vm(vm) => format!("VM {} (phase {})", vm.status, vm.phase),
            Got::Delete(d) if d.status == 204 => "DELETE 204".into(),
            Got::Delete(d) => format!("DELETE {} `{}`: {}", d.status, d.code, short(&d.message)),
            Got::Served(s) => format!(
                "served; warned: {}; old VM {}; new VM {}",
                s.warned, s.old_status, s.new_vm
            ),
            Got::Panicked(message) => format!("test panicked: {}", short(message)),
        }
    }
}

fn short(text: &str) -> String {
    let text = text.replace('\n', " ");
    if text.chars().count() > 140 {
        let cut: String = text.chars().take(140).collect();
        format!("{cut}…")
    } else {
        text
    }
}

struct Row {
    command: &'static str,
    fault: Fault,
    expect: Expect,
}

fn row(command: &'static str, fault: Fault, expect: Expect) -> Row {
    Row {
        command,
        fault,
        expect,
    }
}

/// The table: every vmrun command the server runs × every fault that applies to it.
fn table() -> Vec<Row> {
    use Expect::*;
    use Fault::*;
    let failed = Fails("vmrun-failed", FAIL_MSG);
    let timeout = Fails("vmrun-timeout", TIMEOUT_MSG);
    let locked = Fails("vm-locked", IN_USE_MSG);
    let exit0 = Fails("vmrun-failed", EXIT0_MSG);
    let garbage = Fails("vmrun-bad-output", "does not understand");
    let corrupt = Fails("vm-open-error", CORRUPT_MSG);
    let serves_warned = Serves { warned: true };
    let never_booted = Fails("boot-timeout", "nor within 1 s after a hard reset");
    vec![
        // `list`: at start (reconcile), every --reconcile-interval, and before each start
        // (stale lock check). None of these may keep the server from serving.
        row("list", Fail, serves_warned),
        row("list", Hang, serves_warned),
        row("list", InUse, serves_warned),
        row("list", FailExit0, serves_warned),
        row("list", Noise, Serves { warned: false }),
        row("list", Garbage, serves_warned),
        row("list", Stamp, Serves { warned: false }),
        // `listSnapshots` of a fresh gold VM.
        row("listSnapshots", Fail, failed),
        row("listSnapshots", Hang, timeout),
        row("listSnapshots", InUse, locked),
        row("listSnapshots", FailExit0, exit0),
        row("listSnapshots", Noise, Ready),
        row("listSnapshots", Garbage, garbage),
        row("listSnapshots", CorruptVmx, corrupt),
        row("listSnapshots", Stamp, Ready),
        // `snapshot`: the gold VM's base snapshot, made once.
        row("snapshot", Fail, failed),
        row("snapshot", Hang, timeout),
        row("snapshot", InUse, locked),
        row("snapshot", FailExit0, exit0),
        row("snapshot", Noise, Ready),
        row(
            "snapshot",
            Garbage,
            Fails("snapshot-missing", "does not list the snapshot"),
        ),
        row("snapshot", CorruptVmx, corrupt),
        // `clone`: the linked clone of the gold VM.
        row("clone", Fail, failed),
        row("clone", Hang, timeout),
        row("clone", InUse, locked),
        row("clone", InUseOnce, Ready),
        row("clone", FailExit0, exit0),
        row("clone", Noise, Ready),
        row("clone", Garbage, Fails("clone-missing", "does not exist")),
        row("clone", CorruptVmx, corrupt),
        row(
            "clone",
            NoLinkedClones,
            Fails("clone-unsupported", "Fusion Pro or Workstation Pro"),
        ),
        // `start` of the configured clone.
        row("start", Fail, failed),
        row("start", Hang, timeout),
        row("start", InUse, locked),
        row("start", FailExit0, exit0),
        row("start", Noise, Ready),
        // vmrun said nothing useful; the IP poll then finds the VM off.
        row(
            "start",
            Garbage,
            Fails("vm-not-powered-on", "is not powered on"),
        ),
        row("start", CorruptVmx, corrupt),
        // The VM did start: `list` says so, and it is not failed behind a running VM.
        row("start", ConnectLost, Ready),
        // `getGuestIPAddress`, polled until an address or --ip-wait-timeout.
        row("getGuestIPAddress", Fail, failed),
        row("getGuestIPAddress", Hang, timeout),
        row("getGuestIPAddress", InUse, locked),
        row("getGuestIPAddress", FailExit0, exit0),
        row("getGuestIPAddress", Noise, Ready),
        row("getGuestIPAddress", Garbage, garbage),
        row("getGuestIPAddress", ToolsNotRunning, IpTimeout),
        row("getGuestIPAddress", CorruptVmx, corrupt),
        row("getGuestIPAddress", Stamp, Ready),
        // No Tools and no lease within --boot-timeout: one reset hard, then boot-timeout.
        row("getGuestIPAddress", NeverBoots, never_booted),
        // `reset hard` of a guest that never boots (Tools never run in these rows).
        row("reset", Fail, Fails("boot-timeout", FAIL_MSG)),
        row("reset", Hang, Fails("boot-timeout", TIMEOUT_MSG)),
        row("reset", InUse, Fails("boot-timeout", IN_USE_MSG)),
        row("reset", FailExit0, Fails("boot-timeout", EXIT0_MSG)),
        row("reset", Noise, never_booted),
        row("reset", Stamp, never_booted),
        // `stop hard` during DELETE.
        row("stop", Fail, Refused(500, "vm-delete-error", FAIL_MSG)),
        row("stop", Hang, Refused(500, "vm-delete-error", TIMEOUT_MSG)),
        row("stop", InUse, Refused(409, "vm-locked", IN_USE_MSG)),
        row(
            "stop",
            FailExit0,
            Refused(500, "vm-delete-error", EXIT0_MSG),
        ),
        row("stop", Noise, Deleted),
        // The VM kept running; deleteVM then refuses to delete a running VM.
        row(
            "stop",
            Garbage,
            Refused(500, "vm-delete-error", "should not be powered on"),
        ),
        // `deleteVM` during DELETE, after a successful stop.
        row("deleteVM", Fail, Refused(500, "vm-delete-error", FAIL_MSG)),
        row(
            "deleteVM",
            Hang,
            Refused(500, "vm-delete-error", TIMEOUT_MSG),
        ),
        row("deleteVM", InUse, Refused(409, "vm-locked", IN_USE_MSG)),
        row(
            "deleteVM",
            FailExit0,
            Refused(500, "vm-delete-error", EXIT0_MSG),
        ),
        row("deleteVM", Noise, Deleted),
        // Success as far as vmrun's exit code goes; the folder goes with the record.
        row("deleteVM", Garbage, Deleted),
        // A VM vmrun cannot open cannot run either: its folder is removed all the same.
        row("deleteVM", CorruptVmx, Deleted),
    ]
}

/// Rows that take seconds by design run first, so the table finishes sooner.
fn is_slow(row: &Row) -> bool {
    matches!(row.fault, Fault::Hang | Fault::InUse | Fault::InUseOnce)
        || row.command == "list"
        || row.fault == Fault::CorruptVmx
}

/// What a row got, what went wrong afterwards, and how long it took.
type RowResult = (Got, Vec<String>, Duration);

struct Image {
    url: String,
    checksum: String,
}

#[test]
fn every_vmrun_command_under_every_fault() {
    let files = FileServer::start();
    let archive = gold_tar_gz("box");
    let image = Image {
        checksum: sha1_hex(&archive),
        url: files.add("/gold.tar.gz", archive),
    };
    let rows = table();
    assert!(rows.len() >= 40);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| !is_slow(&rows[i]));
    let results: Vec<Mutex<Option<RowResult>>> = rows.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = order.get(n) else { break };
                let started = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| run_row(&rows[i], &image)))
                    .unwrap_or_else(|panic| {
                        let text = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        (Got::Panicked(text), Vec::new())
                    });
                *results[i].lock().unwrap() = Some((outcome.0, outcome.1, started.elapsed()));
            });
        }
    });

    let mut report = String::from(
        "\n| # | command | fault | expected | got | ok |\n| - | - | - | - | - | - |\n",
    );
    let mut failures = Vec::new();
    for (i, (row, result)) in rows.iter().zip(&results).enumerate() {
        let (got, problems, took) = result.lock().unwrap().take().unwrap();
        let ok = row.expect.matches(&got) && problems.is_empty();
        report.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            row.command,
            row.fault.label(),
            row.expect.describe(),
            got.describe(),
            if ok { "yes" } else { "NO" },
        ));
        if !ok {
            failures.push(format!(
                "row {} ({} × {}, {:.1}s): expected {}, got {:?}; afterwards: {problems:?}",
                i + 1,
                row.command,
                row.fault.label(),
                took.as_secs_f64(),
                row.expect.describe(),
                got
            ));
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}\n{report}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn run_row(row: &Row, image: &Image) -> (Got, Vec<String>) {
    let dir = TempDir::new(&format!("fault-{}", row.command.to_lowercase()));
    let mut args: Vec<String> = Vec::new();
    if row.fault == Fault::Hang {
        let flag = match row.command {
            "list" => "--vmrun-timeout-list",
            "listSnapshots" | "snapshot" => "--vmrun-timeout-snapshot",
            "clone" => "--vmrun-timeout-clone",
            "start" | "reset" => "--vmrun-timeout-start",
            "getGuestIPAddress" => "--vmrun-timeout-ip",
            "stop" => "--vmrun-timeout-stop",
            "deleteVM" => "--vmrun-timeout-delete",
            other => panic!("no timeout for {other}"),
        };
        args.extend([flag.to_string(), HANG_LIMIT.to_string()]);
    }
    if row.fault == Fault::NeverBoots || row.command == "reset" {
        args.extend(["--boot-timeout", "1", "--ip-wait-timeout", "30"].map(String::from));
    } else if row.fault == Fault::ToolsNotRunning {
        args.extend(["--ip-wait-timeout".to_string(), "1".to_string()]);
    } else if row.command == "getGuestIPAddress" && row.fault != Fault::CorruptVmx {
        // One failed IP query is retried until the deadline; the row's fault lasts that long.
        args.extend(["--ip-wait-timeout".to_string(), "4".to_string()]);
    }
    let options = ServerOptions {
        env: Vec::new(),
        args,
    };
    let sim_state = dir.path().join("sim");
    let outcome = match row.command {
        "list" => startup_row(row, image, dir.path(), options),
        "stop" | "deleteVM" => delete_row(row, image, dir.path(), options),
        _ => provision_row(row, image, dir.path(), options),
    };
    kill_hung_simulators(&sim_state);
    outcome
}

fn create_body(image: &Image) -> Value {
    json!({
        "image": {"url": image.url, "checksum": image.checksum, "checksum_type": "sha1"},
        "headless": true
    })
}

fn create(server: &Server, image: &Image) -> String {
    let (status, vm) = server.create(&create_body(image));
    assert_eq!(status, 202, "create: {vm}");
    vm["id"].as_str().unwrap().to_string()
}

/// Waits until provisioning is over: failed, ready, or no IP in time.
fn settle(server: &Server, id: &str) -> Value {
    server.wait_for(id, "settled", |vm| {
        vm["status"] == "failed"
            || vm["progress"]["phase"] == "ready"
            || vm["progress"]["phase"] == "ip-timeout"
    })
}

fn vm_got(vm: &Value) -> VmGot {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    VmGot {
        status: text(&vm["status"]),
        phase: text(&vm["progress"]["phase"]),
        code: text(&vm["error"]["code"]),
        message: text(&vm["error"]["message"]),
    }
}

fn vm_dir(server: &Server, id: &str) -> PathBuf {
    server.data_dir.join("vms").join(id)
}

fn vmx_of(server: &Server, id: &str) -> PathBuf {
    vm_dir(server, id).join(format!("{id}.vmx"))
}

fn gold_vmx(server: &Server, image: &Image) -> PathBuf {
    server
        .data_dir
        .join("gold")
        .join(&image.checksum)
        .join("box/gold.vmx")
}

fn corrupt(vmx: &Path) {
    let mut text = fs::read_to_string(vmx).unwrap();
    text.push_str(BAD_LINE);
    fs::write(vmx, text).unwrap();
}

fn repair(vmx: &Path) {
    let text = fs::read_to_string(vmx).unwrap();
    fs::write(vmx, text.replace(BAD_LINE, "")).unwrap();
}

/// True if the simulator counts the VM as running.
fn sim_runs(server: &Server, id: &str) -> bool {
    server.sim(&["list"]).contains(id)
}

/// Polls `done` every 25 ms for up to 60 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

fn server_answers(server: &Server, problems: &mut Vec<String>) {
    let (status, list) = request("GET", &server.url("/vms"), None, &[]);
    if status != 200 || !list.is_array() {
        problems.push(format!("GET /vms answered {status}: {list}"));
    }
}

/// Deletes the VM and checks that nothing of it is left: record, folder, running VM.
fn delete_and_check_gone(server: &Server, id: &str, problems: &mut Vec<String>) {
    let (status, body) = server.delete_vm(id);
    if status != 204 {
        problems.push(format!("DELETE after the fault answered {status}: {body}"));
        return;
    }
    check_gone(server, id, problems);
}

fn check_gone(server: &Server, id: &str, problems: &mut Vec<String>) {
    let (status, _) = server.get_vm(id);
    if status != 404 {
        problems.push(format!("GET of the deleted VM answered {status}"));
    }
    if vm_dir(server, id).exists() {
        problems.push("the deleted VM's folder is still there".into());
    }
    if sim_runs(server, id) {
        problems.push("the deleted VM still runs".into());
    }
}

/// A fault while provisioning: create a VM, see how it ends; then delete it and check that
/// a clean create works.
fn provision_row(
    row: &Row,
    image: &Image,
    root: &Path,
    options: ServerOptions,
) -> (Got, Vec<String>) {
    let mut problems = Vec::new();
    let mut repair_path: Option<PathBuf> = None;
    let server = match (row.command, row.fault) {
        ("listSnapshots", Fault::CorruptVmx) => {
            // A gold folder someone else left (the original server did) is used as it is.
            let gold = root.join("data/gold").join(&image.checksum).join("box");
            fs::create_dir_all(&gold).unwrap();
            fs::write(gold.join("gold.vmx"), format!("{GOLD_VMX}{BAD_LINE}")).unwrap();
            fs::write(gold.join("disk.vmdk"), DISK).unwrap();
            repair_path = Some(gold.join("gold.vmx"));
            Server::start_with(root, options)
        }
        _ => Server::start_with(root, options),
    };
    let started = Instant::now();
    let id = match (row.command, row.fault) {
        ("listSnapshots", Fault::CorruptVmx) => create(&server, image),
        ("snapshot", Fault::CorruptVmx) => {
            // Corrupt the gold VMX after listSnapshots read it and before snapshot does.
            server.set_faults("snapshot delay 1500");
            let id = create(&server, image);
            wait_until("listSnapshots", || {
                server
                    .sim_calls()
                    .iter()
                    .any(|c| c["args"].to_string().contains("\"listSnapshots\""))
            });
            let vmx = gold_vmx(&server, image);
            corrupt(&vmx);
            repair_path = Some(vmx);
            id
        }
        ("clone", Fault::CorruptVmx) => {
            // The gold VM is published and snapshotted by a first VM, then corrupted.
            let first = create(&server, image);
            server.wait_ready(&first);
            let vmx = gold_vmx(&server, image);
            corrupt(&vmx);
            repair_path = Some(vmx);
            create(&server, image)
        }
        ("start", Fault::CorruptVmx) => {
            server.set_faults("start delay 1500");
            let id = create(&server, image);
            server.wait_for(&id, "starting", |vm| vm["progress"]["phase"] == "starting");
            corrupt(&vmx_of(&server, &id));
            id
        }
        ("getGuestIPAddress", Fault::CorruptVmx) => {
            // Tools not running keeps the server polling; then the VMX breaks.
            server.set_faults(&Fault::ToolsNotRunning.rule("getGuestIPAddress").unwrap());
            let id = create(&server, image);
            server.wait_for(&id, "waiting for its IP", |vm| {
                vm["progress"]["phase"] == "waiting-for-ip"
            });
            corrupt(&vmx_of(&server, &id));
            server.set_faults("");
            id
        }
        ("reset", fault) => {
            let tools = Fault::NeverBoots.rule("getGuestIPAddress").unwrap();
            server.set_faults(&format!("{}\n{tools}", fault.rule("reset").unwrap()));
            create(&server, image)
        }
        (command, fault) => {
            server.set_faults(&fault.rule(command).unwrap());
            create(&server, image)
        }
    };
    let vm = settle(&server, &id);
    let took = started.elapsed();
    if row.fault == Fault::Hang && took > HANG_BOUND {
        problems.push(format!(
            "a hung {} took {took:?} although its limit is {HANG_LIMIT} s",
            row.command
        ));
    }
    let got = Got::Vm(vm_got(&vm));
    if vm["status"] == "failed" {
        failed_vm_checks(&server, &id, &vm, &mut problems);
    }
    server_answers(&server, &mut problems);

    server.set_faults("");
    if let Some(path) = &repair_path {
        repair(path);
    }
    delete_and_check_gone(&server, &id, &mut problems);
    let next = create(&server, image);
    let vm = settle(&server, &next);
    if vm["progress"]["phase"] != "ready" {
        problems.push(format!(
            "a clean create after the fault did not get ready: {vm}"
        ));
    }
    server_answers(&server, &mut problems);
    (got, problems)
}

/// A failed VM is never left running, and one that has a vmware.log carries its last 40
/// lines (or all, when fewer) in `error.log_tail`.
fn failed_vm_checks(server: &Server, id: &str, vm: &Value, problems: &mut Vec<String>) {
    if sim_runs(server, id) {
        problems.push("the failed VM still runs".into());
    }
    let Ok(log) = fs::read_to_string(vm_dir(server, id).join("vmware.log")) else {
        if !vm["error"]["log_tail"].is_null() {
            problems.push(format!("a log_tail without a vmware.log: {vm}"));
        }
        return;
    };
    let lines: Vec<&str> = log.lines().collect();
    let want = &lines[lines.len().saturating_sub(40)..];
    let tail: Vec<&str> = vm["error"]["log_tail"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if tail != want {
        problems.push(format!(
            "error.log_tail is not the last lines of vmware.log: {:?}",
            vm["error"]["log_tail"]
        ));
    }
}

/// A fault while deleting a ready VM: the DELETE's answer; a refused DELETE must leave the VM
/// whole and true to the simulator, and a clean retry must delete it.
fn delete_row(row: &Row, image: &Image, root: &Path, options: ServerOptions) -> (Got, Vec<String>) {
    let mut problems = Vec::new();
    let server = Server::start_with(root, options);
    let id = create(&server, image);
    server.wait_ready(&id);
    match row.fault {
        Fault::CorruptVmx => corrupt(&vmx_of(&server, &id)),
        fault => server.set_faults(&fault.rule(row.command).unwrap()),
    }
    let started = Instant::now();
    let (status, body) = server.delete_vm(&id);
    if row.fault == Fault::Hang && started.elapsed() > HANG_BOUND {
        problems.push(format!(
            "a hung {} took {:?}",
            row.command,
            started.elapsed()
        ));
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let got = Got::Delete(DeleteGot {
        status,
        code: text(&body["code"]),
        message: text(&body["message"]),
    });
    server_answers(&server, &mut problems);
    if status == 204 {
        check_gone(&server, &id, &mut problems);
        return (got, problems);
    }
    let (status, vm) = server.get_vm(&id);
    if status != 200 {
        problems.push(format!("after a refused DELETE, GET answered {status}"));
    }
    if vm["progress"]["phase"] == "deleting" {
        problems.push("after a refused DELETE the VM still shows phase deleting".into());
    }
    for path in [
        vm_dir(&server, &id).join("osx-builder.json"),
        vmx_of(&server, &id),
    ] {
        if !path.exists() {
            problems.push(format!("after a refused DELETE {} is gone", path.display()));
        }
    }
    let runs = sim_runs(&server, &id);
    let want = if runs { "running" } else { "stopped" };
    if vm["status"] != want {
        problems.push(format!(
            "after a refused DELETE the VM shows status {} but the simulator has it {want}",
            vm["status"]
        ));
    }
    server.set_faults("");
    delete_and_check_gone(&server, &id, &mut problems);
    (got, problems)
}

/// A fault in `list` while the server starts (and in its periodic reconcile, and in the
/// stale-lock check before each start): it must start, keep its VMs' states, provision.
fn startup_row(
    row: &Row,
    image: &Image,
    root: &Path,
    options: ServerOptions,
) -> (Got, Vec<String>) {
    let mut problems = Vec::new();
    let before = Server::start(root);
    let old = create(&before, image);
    before.wait_ready(&old);
    before.kill();
    fs::write(
        root.join("sim/faults"),
        row.fault.rule(row.command).unwrap(),
    )
    .unwrap();
    let mut options = options;
    options
        .args
        .extend(["--reconcile-interval".to_string(), "0.3".to_string()]);
    let server = Server::start_with(root, options);
    const WARNING: &str = "cannot tell which VMs run";
    let warned = server.log().contains(WARNING);
    let old_status = server.get_vm(&old).1["status"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let next = create(&server, image);
    let vm = settle(&server, &next);
    let new_vm = match vm["status"].as_str() {
        Some("failed") => format!("failed {}", vm["error"]["code"]),
        _ => vm["progress"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    if warned {
        // Periodic reconciles that cannot list must not change what they cannot see.
        let seen = server.log().matches(WARNING).count();
        wait_until("two more reconciles", || {
            server.log().matches(WARNING).count() >= seen + 2
        });
        for id in [&old, &next] {
            let status = &server.get_vm(id).1["status"];
            if status != "running" {
                problems.push(format!(
                    "after reconciles that could not list, VM {id} shows {status}"
                ));
            }
        }
    }
    server_answers(&server, &mut problems);
    let got = Got::Served(ServedGot {
        warned,
        old_status,
        new_vm,
    });
    (got, problems)
}

/// Kills what a `hang` rule left running if a row ended before the server killed it (the
/// server kills hung calls at their limit, so normally nothing is left).
fn kill_hung_simulators(sim_state: &Path) {
    let Ok(text) = fs::read_to_string(sim_state.join("hang.pids")) else {
        return;
    };
    for pid in text
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if common::is_simulator(pid) {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

use common::{DISK_DESCRIPTOR as DISK, GOLD_VMX};
