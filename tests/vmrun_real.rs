//! Real vmrun outputs (vmrun contract), each made by the simulator, through the real server:
//! the VM's final state and the vmrun calls made.

mod common;

use common::World;
use serde_json::Value;

fn world(tag: &str, env: &[(&str, &str)], args: &[&str]) -> World {
    World::start(tag, common::options_env(env, args))
}

/// The simulator's calls whose arguments include every one of `words`.
fn calls_with(w: &World, words: &[&str]) -> usize {
    w.server
        .sim_calls()
        .iter()
        .filter(|c| {
            let args = common::sim_call_args(c);
            words.iter().all(|word| args.contains(word))
        })
        .count()
}

fn vmx_of(w: &World, id: &str) -> std::path::PathBuf {
    w.server
        .data_dir
        .join("vms")
        .join(id)
        .join(format!("{id}.vmx"))
}

fn sim_ip(w: &World, id: &str) -> String {
    let vmx = vmx_of(w, id);
    w.server
        .sim(&["getGuestIPAddress", vmx.to_str().unwrap()])
        .trim()
        .to_string()
}

#[test]
fn unusable_answers_and_glitches_are_not_yet() {
    let w = world("real-ip", &[], &[]);
    w.server.set_faults(
        "getGuestIPAddress once print 0 169.254.247.160\n\
         getGuestIPAddress once print 0 fe80::1%en0\n\
         getGuestIPAddress once fail Unknown error\n\
         getGuestIPAddress once print 255 Error: Unable to get the IP address\n\
         getGuestIPAddress once print 0 build-mac.local\n\
         getGuestIPAddress once print 0 127.0.0.1\n",
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["ip_address"], sim_ip(&w, &id));
    assert!(calls_with(&w, &["getGuestIPAddress"]) >= 7);
}

#[test]
fn fusion_nogui_address_comes_through_wait() {
    let w = world("real-wait", &[("VMRUN_SIM_IP_NEEDS_WAIT", "1")], &[]);
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["ip_address"], sim_ip(&w, &id));
    assert!(calls_with(&w, &["getGuestIPAddress", "-wait"]) >= 1);
}

#[test]
fn a_start_that_says_it_failed_but_runs_is_ready() {
    let w = world("real-start", &[], &[]);
    w.server
        .set_faults("start after-fail Cannot connect to the virtual machine");
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["status"], "running");
    assert!(w
        .server
        .log()
        .contains("Cannot connect to the virtual machine"));
}

#[test]
fn a_failed_start_leaves_no_vm_running() {
    let w = world("real-start-fail", &[], &[]);
    w.server.set_faults(
        "start print 255 Unable to connect to host.\\nError: The specified version was not found",
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    let message = vm["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("The specified version was not found"),
        "{message}"
    );
    assert!(message.contains("Unable to connect to host."), "{message}");
    assert!(!w.server.sim(&["list"]).contains(&id));
}

#[test]
fn a_lost_gold_snapshot_is_made_again() {
    let w = world("real-snapshot", &[], &[]);
    let first = w.create(&w.body());
    w.server.wait_ready(&first);
    let vmsd = w
        .server
        .data_dir
        .join("gold")
        .join(&w.checksum)
        .join("box/gold.vmsd");
    std::fs::remove_file(&vmsd).unwrap();
    let second = w.create(&w.body());
    w.server.wait_ready(&second);
    assert_eq!(calls_with(&w, &["snapshot"]), 2);
}

#[test]
fn clones_without_pro_fail_clone_unsupported() {
    let w = world("real-clone", &[], &[]);
    w.server
        .set_faults("clone fail One of the parameters was invalid");
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "clone-unsupported");
    assert!(vm["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Fusion Pro"));
}

#[test]
fn delete_waits_out_vmware_releasing_the_vm() {
    let w = world("real-lag", &[("VMRUN_SIM_POWEROFF_LAG_MS", "1500")], &[]);
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let (status, body) = w.server.delete_vm(&id);
    assert_eq!(status, 204, "{body}");
    assert!(calls_with(&w, &["deleteVM"]) >= 2);
}

#[test]
fn delete_stops_a_vm_whose_vmx_was_removed() {
    let w = world("real-gone", &[("VMRUN_SIM_LIST_REMOVED", "1")], &[]);
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let vmx = vmx_of(&w, &id);
    std::fs::remove_file(&vmx).unwrap();
    let (status, body) = w.server.delete_vm(&id);
    assert_eq!(status, 204, "{body}");
    assert!(calls_with(&w, &["stop", "hard"]) >= 1);
    // The simulator is asked directly, with the same switch: nothing of the VM runs.
    let listed = std::process::Command::new(common::SIM_BIN)
        .arg("list")
        .env("VMRUN_SIM_STATE", w.dir.path().join("sim"))
        .env("VMRUN_SIM_LIST_REMOVED", "1")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&id));
}

#[test]
fn noise_before_listing_headers_is_skipped() {
    let w = world("real-stamp", &[], &[]);
    w.server.set_faults("list stamp\nlistSnapshots stamp");
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let (status, health) = common::http::request("GET", &w.server.url("/healthz"), None, &[]);
    assert_eq!(status, 200, "{health}");
}

/// The MAC VMware (the simulator) wrote into the VM's VMX at power-on.
fn generated_mac(w: &World, id: &str) -> String {
    let vmx = vmx_of(w, id);
    let text = std::fs::read_to_string(vmx).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ethernet0.generatedAddress = \""))
        .map(|rest| rest.trim_end_matches('"').to_string())
        .expect("no ethernet0.generatedAddress")
}

fn lease_world(
    tag: &str,
) -> (
    World,
    common::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let leases = common::TempDir::new(&format!("{tag}-leases"));
    let isc = leases.path().join("vmnet-dhcpd-vmnet8.leases");
    let apple = leases.path().join("dhcpd_leases");
    let w = world(
        tag,
        &[("VMRUN_SIM_TOOLS_DELAY_MS", "600000")],
        &[
            "--dhcp-leases",
            isc.to_str().unwrap(),
            "--dhcp-leases-apple",
            apple.to_str().unwrap(),
        ],
    );
    (w, leases, isc, apple)
}

fn ready_by_lease(w: &World, id: &str, ip: &str) {
    let vm = w.server.wait_ready(id);
    assert_eq!(vm["ip_address"], ip);
    assert_eq!(vm["ip_source"], "dhcp-lease");
}

#[test]
fn without_tools_the_newest_valid_isc_lease_of_the_mac_is_the_address() {
    let (w, _leases, isc, _) = lease_world("real-isc");
    let id = w.create(&w.body());
    w.server.wait_for(&id, "waiting for its IP", |vm| {
        vm["progress"]["phase"] == "waiting-for-ip"
    });
    let mac = generated_mac(&w, &id).to_uppercase();
    std::fs::write(
        &isc,
        format!(
            "lease 192.168.64.20 {{\n starts 1 2001/01/01 00:00:00;\n ends 1 2001/01/01 00:30:00;\n hardware ethernet {mac};\n}}\n\
             lease 192.168.64.21 {{\n starts 1 2020/01/01 00:00:00;\n ends 1 2099/01/01 00:00:00;\n hardware ethernet {mac};\n}}\n\
             lease 192.168.64.22 {{\n starts 1 2010/01/01 00:00:00;\n ends 1 2099/01/01 00:00:00;\n hardware ethernet {mac};\n}}\n\
             lease 192.168.64.23 {{\n starts 1 2025/01/01 00:00:00;\n ends 1 2099/01/01 00:00:00;\n hardware ethernet 00:0c:29:00:00:02;\n}}\n"
        ),
    )
    .unwrap();
    ready_by_lease(&w, &id, "192.168.64.21");
}

#[test]
fn without_tools_an_apple_lease_of_the_mac_is_the_address() {
    let (w, _leases, _, apple) = lease_world("real-apple");
    let id = w.create(&w.body());
    w.server.wait_for(&id, "waiting for its IP", |vm| {
        vm["progress"]["phase"] == "waiting-for-ip"
    });
    // Apple writes octets without leading zeros.
    let mac: Vec<String> = generated_mac(&w, &id)
        .split(':')
        .map(|o| format!("{:x}", u8::from_str_radix(o, 16).unwrap()))
        .collect();
    let mac = mac.join(":");
    std::fs::write(
        &apple,
        format!(
            "{{\n\tname=other\n\tip_address=192.168.2.9\n\thw_address=1,0:c:29:0:0:2\n\tlease=0x7fffffff\n}}\n\
             {{\n\tname=mac\n\tip_address=192.168.2.10\n\thw_address=1,{mac}\n\tlease=0x7fffffff\n}}\n\
             {{\n\tname=mac\n\tip_address=192.168.2.11\n\thw_address=1,{mac}\n\tlease=0x3b9aca00\n}}\n"
        ),
    )
    .unwrap();
    ready_by_lease(&w, &id, "192.168.2.10");
}

#[test]
fn an_address_from_tools_says_so() {
    let w = world("real-source", &[], &[]);
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["ip_source"], "tools");
}

/// The VM's `vmware.log` as the simulator (VMware) wrote it, line by line.
fn vmware_log(w: &World, id: &str) -> Vec<String> {
    let path = w.server.data_dir.join("vms").join(id).join("vmware.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn log_tail(vm: &Value) -> Vec<String> {
    vm["error"]["log_tail"]
        .as_array()
        .unwrap_or_else(|| panic!("no error.log_tail: {vm}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// A guest whose first boot hangs: one Tools-less, lease-less `--boot-timeout`, one
/// `reset hard`, and the second boot comes up.
#[test]
fn the_boot_watchdog_resets_a_hung_guest_once_and_it_boots() {
    let w = world(
        "boot-reset",
        &[("VMRUN_SIM_DEAD_BOOTS", "1")],
        &["--boot-timeout", "1"],
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["ip_address"], sim_ip(&w, &id));
    assert_eq!(calls_with(&w, &["reset", "hard"]), 1);
    assert_eq!(calls_with(&w, &["start"]), 1);
    assert!(w.server.wait_log("retrying once with vmrun reset hard"));
    assert!(vmware_log(&w, &id)
        .iter()
        .any(|l| l.contains("VMX_PowerOn: boot 2 (reset, nogui)")));
}

/// Both boots hang: `boot-timeout`, the VM stopped (the simulator has it off) and its
/// place freed under `--max-vms 1`; the last 40 lines of its vmware.log in the VM, the
/// callback and the server log.
#[test]
fn a_guest_that_never_boots_fails_boot_timeout_stopped_with_its_log_tail() {
    let callbacks = common::CallbackReceiver::start();
    let w = world(
        "boot-fail",
        &[("VMRUN_SIM_DEAD_BOOTS", "9")],
        &[
            "--boot-timeout",
            "1",
            "--ip-wait-timeout",
            "60",
            "--max-vms",
            "1",
        ],
    );
    let mut body = w.body();
    body["callback_url"] = callbacks.url.clone().into();
    let id = w.create(&body);
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "boot-timeout", "{vm}");
    let message = vm["error"]["message"].as_str().unwrap();
    assert!(message.contains("after a hard reset"), "{message}");
    assert!(message.contains("--headless-retry-gui"), "{message}");
    assert_eq!(calls_with(&w, &["reset", "hard"]), 1);
    assert!(calls_with(&w, &["stop", "hard"]) >= 1);
    assert!(!w.server.sim(&["list"]).contains(&id));
    assert!(vm.get("keep").is_none(), "{vm}");
    let tail = log_tail(&vm);
    let lines = vmware_log(&w, &id);
    assert_eq!(tail.len(), 40);
    assert_eq!(tail[..], lines[lines.len() - 40..]);
    // Read after the stop: VMware's power-off lines are its end.
    assert!(tail[39].ends_with("| vmx| I005: VMX exit (0)."), "{tail:?}");
    let posted = callbacks.wait_for(1);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["error"]["log_tail"], vm["error"]["log_tail"]);
    assert!(w.server.wait_log(&format!("vmware.log| {}", tail[39])));
    // Its place is free: the next create is admitted, not refused capacity-exhausted.
    let (status, answer) = w.server.create(&w.body());
    assert_eq!(status, 202, "{answer}");
}

/// Fusion's headless caveat: a VM powered on nogui never boots, a reset does not help, a
/// start with a window does (`--headless-retry-gui`).
#[test]
fn headless_retry_gui_boots_a_headless_vm_with_a_window() {
    let w = world(
        "boot-gui",
        &[("VMRUN_SIM_NOGUI_NEVER_BOOTS", "1")],
        &["--boot-timeout", "1", "--headless-retry-gui"],
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["ip_address"], sim_ip(&w, &id));
    assert_eq!(calls_with(&w, &["start", "nogui"]), 1);
    assert_eq!(calls_with(&w, &["start", "gui"]), 1);
    assert_eq!(calls_with(&w, &["stop", "hard"]), 1);
    assert_eq!(calls_with(&w, &["reset"]), 0);
    assert!(w
        .server
        .wait_log("stop hard then start gui (--headless-retry-gui)"));
}

#[test]
fn without_headless_retry_gui_a_reset_does_not_help_a_headless_vm() {
    let w = world(
        "boot-nogui",
        &[("VMRUN_SIM_NOGUI_NEVER_BOOTS", "1")],
        &["--boot-timeout", "1"],
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "boot-timeout", "{vm}");
    assert_eq!(calls_with(&w, &["reset", "hard"]), 1);
    assert_eq!(calls_with(&w, &["start", "gui"]), 0);
    assert!(!w.server.sim(&["list"]).contains(&id));
}

/// `?keep=true`: the failed VM is left running as it is, and holds its place.
#[test]
fn keep_true_leaves_a_failed_vm_running() {
    let w = world(
        "boot-keep",
        &[("VMRUN_SIM_DEAD_BOOTS", "9")],
        &[
            "--boot-timeout",
            "1",
            "--max-vms",
            "1",
            "--reconcile-interval",
            "0.2",
        ],
    );
    let (status, vm) = common::http::request(
        "POST",
        &w.server.url("/vms?keep=true"),
        Some(&w.body().to_string()),
        &[],
    );
    assert_eq!(status, 202, "{vm}");
    assert_eq!(vm["keep"], true);
    let id = vm["id"].as_str().unwrap().to_string();
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "boot-timeout");
    assert_eq!(vm["keep"], true);
    assert_eq!(log_tail(&vm).len(), 40);
    assert_eq!(calls_with(&w, &["stop"]), 0);
    assert!(w.server.sim(&["list"]).contains(&id));
    assert!(w.server.wait_log("left running for inspection (keep=true)"));
    let (status, answer) = w.server.create(&w.body());
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], "capacity-exhausted");
    // A later reconcile leaves it running too.
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(w.server.sim(&["list"]).contains(&id));
    let (status, body) = w.server.delete_vm(&id);
    assert_eq!(status, 204, "{body}");
    assert!(!w.server.sim(&["list"]).contains(&id));
    let (status, body) = common::http::request(
        "POST",
        &w.server.url("/vms?keep=maybe"),
        Some(&w.body().to_string()),
        &[],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid-keep");
}

/// `--keep-failed 2`: a VM that fails while running stays running, with a lease that ends
/// it two seconds after its failure.
#[test]
fn keep_failed_keeps_a_failed_vm_running_until_its_lease_ends() {
    let w = world(
        "boot-keep-failed",
        &[("VMRUN_SIM_DEAD_BOOTS", "9")],
        &[
            "--boot-timeout",
            "1",
            "--keep-failed",
            "2",
            "--reconcile-interval",
            "0.2",
        ],
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "boot-timeout");
    assert_eq!(vm["keep"], true);
    assert!(vm["expires_at"].is_string(), "{vm}");
    assert!(w.server.sim(&["list"]).contains(&id));
    assert!(w
        .server
        .wait_log("left running for inspection for 2 s (--keep-failed)"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while w.server.get_vm(&id).0 != 404 {
        assert!(std::time::Instant::now() < deadline, "never destroyed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!w.server.sim(&["list"]).contains(&id));
}

/// A VM that fails in the IP wait (every query fails) is stopped and carries its log too.
#[test]
fn a_vm_failing_its_ip_wait_is_stopped_with_its_log_tail() {
    let w = world("ip-fail-stop", &[], &["--ip-wait-timeout", "1.5"]);
    w.server
        .set_faults("getGuestIPAddress fail Insufficient permissions in the host operating system");
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "vmrun-failed", "{vm}");
    assert!(!w.server.sim(&["list"]).contains(&id));
    let lines = vmware_log(&w, &id);
    assert_eq!(log_tail(&vm)[..], lines[lines.len() - 40..]);
}

#[test]
fn get_vm_log_streams_the_whole_vmware_log() {
    let w = world("vm-log", &[], &[]);
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let url = w.server.url(&format!("/vms/{id}/log"));
    let answer = common::http::call("GET", &url, None, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    let path = w.server.data_dir.join("vms").join(&id).join("vmware.log");
    assert_eq!(answer.body, std::fs::read(&path).unwrap());
    let head = common::http::call("HEAD", &url, None, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(answer.body.len().to_string().as_str())
    );

    // Large: streamed from the file, so the server's peak memory stays far below its size.
    let big: u64 = 128 << 20;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        let line = b"2024-05-01T10:00:00.123Z| vmx| I005: Tools: [AppStatus] Last heartbeat value 0 (never)\n";
        let block: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
        for _ in 0..(big >> 20) {
            file.write_all(&block).unwrap();
        }
    }
    let answer = common::http::call("GET", &url, None, &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len() as u64, big);
    let peak_kib = peak_rss_kib(w.server.pid());
    println!(
        "server peak RSS {peak_kib} KiB after answering a {} KiB vmware.log",
        big >> 10
    );
    assert!(
        peak_kib < (big >> 10) / 2,
        "the server peaked at {peak_kib} KiB answering a {} KiB log",
        big >> 10
    );
    drop(answer);

    // A link is not VMware's log; a VM with none is 404 with a code; unknown VMs are 404.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(w.dir.path().join("secret"), "not for you\n").unwrap();
    std::os::unix::fs::symlink(w.dir.path().join("secret"), &path).unwrap();
    let (status, body) = common::http::request("GET", &url, None, &[]);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "vm-log-not-found");
    std::fs::remove_file(&path).unwrap();
    let (status, body) = common::http::request("GET", &url, None, &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("vm-log-not-found"))
    );
    let (status, body) = common::http::request(
        "GET",
        &w.server
            .url("/vms/282ee68a-2e4d-4bd7-9c0e-7f37e12fc489/log"),
        None,
        &[],
    );
    assert_eq!((status, body["code"].as_str()), (404, Some("vm-not-found")));
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}
