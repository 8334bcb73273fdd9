//! Real vmrun outputs (vmrun contract), each made by the simulator, through the real server:
//! the VM's final state and the vmrun calls made.

mod common;

use common::{ServerOptions, World};
use serde_json::Value;

fn world(tag: &str, env: &[(&str, &str)], args: &[&str]) -> World {
    World::start(
        tag,
        ServerOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        },
    )
}

/// The simulator's calls whose arguments include every one of `words`.
fn calls_with(w: &World, words: &[&str]) -> usize {
    w.server
        .sim_calls()
        .iter()
        .filter(|c| {
            let args: Vec<&str> = c["args"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
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
