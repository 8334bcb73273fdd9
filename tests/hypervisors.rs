//! The server on each hypervisor: VMware through `vmrun-sim`, tart through `tart-sim`.
//! `--hypervisor` chooses the driver, and the start-up log, `/healthz` and a create name
//! what is missing when its tool is.

mod common;

use common::http;
use common::scenarios;
use common::{options, Hv, Server, TempDir, World};
use serde_json::Value;

/// Each scenario of `common::scenarios` as two tests, `vmware::NAME` and `tart::NAME`:
/// the same requests and assertions on each hypervisor.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod vmware {
            $(#[test]
            fn $scenario() {
                super::scenarios::$scenario(super::Hv::Vmware);
            })*
        }
        mod tart {
            $(#[test]
            fn $scenario() {
                super::scenarios::$scenario(super::Hv::Tart);
            })*
        }
    };
}

on_both!(
    create_run_delete,
    powered_off_behind_its_back,
    restart_adopts_running_vms,
    a_lost_record_is_adopted,
    capacity,
    guestinfo_cold_and_pooled,
    boot_watchdog_resets_once,
    leases_callbacks_idempotency_drain,
    metrics_health_and_cli,
    killed_while_starting,
    faults,
    images,
);

#[test]
fn tart_is_chosen_and_named_with_its_version_and_two_vms_by_default() {
    let dir = TempDir::new("hv-tart-named");
    let data = dir.path().join("data");
    let args: Vec<String> = Hv::Tart.args();
    // As an operator starts it: no --max-vms, so tart's default applies.
    let server = Server::launch(&data, &Hv::Tart.sim_state(dir.path()), &args, &[]);
    assert!(
        server.wait_log("hypervisor tart: tart 2.32.1 at "),
        "{}",
        server.log()
    );
    assert!(server
        .log()
        .contains(&format!("TART_HOME={}", data.join("tart").display())));
    let health = common::eventually("tart list to answer", || {
        let (status, health) = http::request("GET", &server.url("/healthz"), None, &[]);
        (status == 200).then_some(health)
    });
    assert_eq!(health["hypervisor"], "tart");
    assert!(health["checks"].get("vmrun").is_none(), "{health}");
    let check = health["checks"]["tart"]["message"].as_str().unwrap();
    assert!(check.starts_with("tart list answered"), "{check}");
    let (_, metrics) = http::request_raw("GET", &server.url("/metrics"), None, &[]);
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert_eq!(
        common::metric(&metrics, "osx_builder_capacity_limit"),
        Some(2.0),
        "{metrics}"
    );
}

#[test]
fn a_missing_tool_is_named_at_start_in_healthz_and_on_create() {
    for hv in [Hv::Vmware, Hv::Tart] {
        let dir = TempDir::new("hv-missing");
        let missing = dir.path().join("no-such-tool");
        let missing = missing.to_str().unwrap();
        let opts = match hv {
            Hv::Vmware => common::options_env(&[("VMWARE_VMRUN_PATH", missing)], &[]),
            Hv::Tart => options(&["--tart-path", missing]),
        };
        let server = Server::start_with(dir.path(), opts.on(hv));
        let tool = hv.tool();
        assert!(
            server.wait_log(&format!("{tool} not found at {missing}")),
            "{}",
            server.log()
        );
        assert!(server.log().contains("every create will fail"));
        let (status, health) = http::request("GET", &server.url("/healthz"), None, &[]);
        assert_eq!(status, 503, "{health}");
        assert_eq!(health["hypervisor"], hv.name());
        assert_eq!(health["failing"], serde_json::json!([tool]), "{health}");
        let (status, error) = server.create(&common::image_body(
            "http://127.0.0.1:9/x.tar.gz",
            &"a".repeat(40),
        ));
        assert_eq!(status, 500, "{error}");
        assert_eq!(error["code"], format!("{tool}-not-found"));
        let hint = match hv {
            Hv::Vmware => "VMWARE_VMRUN_PATH",
            Hv::Tart => "brew install cirruslabs/cli/tart",
        };
        assert!(error["message"].as_str().unwrap().contains(hint), "{error}");
    }
}

/// A `tart run` that ends behind the server's back is seen within seconds: a crash and a
/// killed runner fail the VM `vm-died` with tart's last lines; the runner log is served.
#[test]
fn tart_a_runner_that_dies_behind_the_servers_back_is_seen() {
    let w = World::start(
        "hv-tart-died",
        scenarios::quick(Hv::Tart, &["--list-interval", "0.3"]),
    );
    let crashed = w.create(&w.body());
    let killed = w.create(&w.body());
    for id in [&crashed, &killed] {
        w.server.wait_ready(id);
    }
    scenarios::tell_runner(&w.server.sim_state, &crashed, "crash");
    let record: Value = serde_json::from_slice(
        &std::fs::read(w.server.sim_state.join(format!("runs/osxb-{killed}.json"))).unwrap(),
    )
    .unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let vm = w.server.wait_failed(&crashed);
    assert_eq!(vm["error"]["code"], "vm-died", "{vm}");
    let message = vm["error"]["message"].as_str().unwrap();
    assert!(message.contains("stopped unexpectedly"), "{message}");
    let tail = vm["error"]["log_tail"].as_array().unwrap();
    assert!(
        tail.iter()
            .any(|l| l.as_str().unwrap().contains("VZErrorDomain")),
        "{vm}"
    );
    let vm = w.server.wait_failed(&killed);
    assert_eq!(vm["error"]["code"], "vm-died", "{vm}");
    assert!(
        vm["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without a word"),
        "{vm}"
    );
    let log = http::call(
        "GET",
        &w.server.url(&format!("/vms/{crashed}/log")),
        None,
        &[],
    );
    assert_eq!(log.status, 200);
    assert!(
        log.text().contains("stopped unexpectedly"),
        "{}",
        log.text()
    );
    // A failed VM is deleted as any other.
    for id in [&crashed, &killed] {
        assert_eq!(w.server.delete_vm(id).0, 204);
    }
}

/// tart refuses a third macOS VM (no --max-vms here): the VM is not failed but waits for
/// a slot, creates meanwhile get `503 capacity-exhausted` with tart's words, and it starts
/// once a VM is deleted.
#[test]
fn tart_the_third_macos_vm_waits_for_a_slot() {
    let w = World::start("hv-tart-third", scenarios::quick(Hv::Tart, &[]));
    let ids: Vec<String> = (0..2).map(|_| w.create(&w.body())).collect();
    for id in &ids {
        w.server.wait_ready(id);
    }
    let third = w.create(&w.body());
    let vm = w.server.wait_for(&third, "waiting for a slot", |vm| {
        vm["progress"]["phase"] == "waiting-for-slot"
    });
    assert_eq!(vm["status"], "", "{vm}");
    let (status, error) = w.server.create(&w.body());
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["code"], "capacity-exhausted");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("exceeds the system limit"), "{message}");
    assert_eq!(w.server.delete_vm(&ids[0]).0, 204);
    let vm = w.server.wait_ready(&third);
    assert_eq!(vm["status"], "running");
    assert!(w.server.log().contains("a slot freed: started"));
}

/// A headless Mac on macOS 15+ with its login keychain locked: every start fails with the
/// framework's words; the VM fails `host-keychain-locked` saying how to fix the Mac.
#[test]
fn tart_a_locked_keychain_fails_the_vm_with_the_fix() {
    let w = World::start(
        "hv-tart-keychain",
        common::options_env(&[("TART_SIM_KEYCHAIN_LOCKED", "1")], &[]).on(Hv::Tart),
    );
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "host-keychain-locked", "{vm}");
    let message = vm["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("The virtual machine failed to start")
            && message.contains("security unlock-keychain"),
        "{message}"
    );
    assert!(Hv::Tart.running(&w.server).is_empty());
    assert_eq!(w.server.delete_vm(&id).0, 204);
    assert!(!w
        .server
        .data_dir
        .join(format!("tart/vms/osxb-{id}"))
        .exists());
}

/// tart clone overwrites an existing name without a word: a name found taken fails the VM
/// `clone-exists`, and that VM is neither replaced, stopped nor deleted.
#[test]
fn tart_an_existing_clone_name_is_never_overwritten() {
    let dir = TempDir::new("hv-tart-taken");
    let files = http::FileServer::start();
    let archive = common::tart_gold_tar_gz("box", "darwin");
    let checksum = common::sha1_hex(&archive);
    // Slow enough to make the name taken before the clone.
    let url = files.add_with(
        "/gold.tar.gz",
        archive,
        http::Delivery::Trickle(std::time::Duration::from_millis(300)),
    );
    let server = Server::start_with(dir.path(), scenarios::quick(Hv::Tart, &[]));
    let (status, vm) = server.create(&common::image_body(&url, &checksum));
    assert_eq!(status, 202, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    let theirs = server.data_dir.join(format!("tart/vms/osxb-{id}"));
    std::fs::create_dir_all(&theirs).unwrap();
    for (file, body) in [
        (
            "config.json",
            &b"{\"version\":1,\"os\":\"linux\",\"macAddress\":\"aa:bb:cc:dd:ee:ff\"}"[..],
        ),
        ("disk.img", b"theirs"),
        ("nvram.bin", b"theirs"),
    ] {
        std::fs::write(theirs.join(file), body).unwrap();
    }
    let vm = server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "clone-exists", "{vm}");
    assert!(
        vm["error"]["message"]
            .as_str()
            .unwrap()
            .contains("was not replaced"),
        "{vm}"
    );
    assert_eq!(server.delete_vm(&id).0, 204);
    assert_eq!(std::fs::read(theirs.join("disk.img")).unwrap(), b"theirs");
}

/// `network_type` picks tart's network (bridged: `--net-bridged=` the interface setting,
/// its address from the ARP cache; hostonly: `--net-host`); `headless: false` opens
/// tart's window (no `--no-graphics`).
#[test]
fn tart_networks_and_the_window() {
    let w = World::start(
        "hv-tart-net",
        scenarios::quick(Hv::Tart, &["--tart-bridge-interface", "en7"]),
    );
    let run = |id: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(w.server.sim_state.join(format!("runs/osxb-{id}.json"))).unwrap(),
        )
        .unwrap()
    };
    let mut body = w.body();
    body["network_type"] = "bridged".into();
    body["headless"] = false.into();
    let bridged = w.create(&body);
    let vm = w.server.wait_ready(&bridged);
    assert_eq!(vm["ip_source"], "arp", "{vm}");
    assert!(vm["ip_address"].as_str().unwrap().starts_with("192.168.1."));
    let record = run(&bridged);
    assert_eq!(
        (record["net"].as_str(), record["graphics"].as_bool()),
        (Some("bridged:en7"), Some(true))
    );
    body["network_type"] = "hostonly".into();
    body["headless"] = true.into();
    let host = w.create(&body);
    let vm = w.server.wait_ready(&host);
    assert_eq!(vm["ip_source"], "dhcp-lease", "{vm}");
    let record = run(&host);
    assert_eq!(
        (record["net"].as_str(), record["graphics"].as_bool()),
        (Some("host"), Some(false))
    );
}

/// A create on tart spawns no `tart list`: the clean-up of VMware's stale `.lck` folders
/// before a start is the vmrun driver's (its start still lists), and tart's start sees the
/// VM run by the lock on its `config.json`, as `tart list` itself does.
#[test]
fn tart_a_create_lists_nothing_vmware_still_clears_locks() {
    for hv in [Hv::Tart, Hv::Vmware] {
        let w = World::start(
            "hv-no-list",
            scenarios::quick(
                hv,
                &["--list-interval", "3600", "--reconcile-interval", "3600"],
            ),
        );
        // The first VM brings the image and follows the start-up's listings.
        let first = w.create(&w.body());
        w.server.wait_ready(&first);
        let before = w.server.sim_calls_of("list");
        let id = w.create(&w.body());
        w.server.wait_ready(&id);
        let lists = w.server.sim_calls_of("list") - before;
        match hv {
            Hv::Tart => assert_eq!(lists, 0, "{:#?}", w.server.sim_calls()),
            Hv::Vmware => assert!(lists >= 1, "{:#?}", w.server.sim_calls()),
        }
    }
}

/// A create asking for less memory than the gold's `memorySizeMin` (tart's `config.json`;
/// the test image's is 1 GiB) fails `invalid-memory` naming the minimum, and nothing is
/// cloned; one that asks enough runs.
#[test]
fn tart_below_the_golds_minimum_fails_before_the_clone_or_at_once_when_cached() {
    let w = World::start("hv-tart-min", scenarios::quick(Hv::Tart, &[]));
    let mut body = w.body();
    body["memory"] = 512.into();
    let id = w.create(&body);
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "invalid-memory", "{vm}");
    let message = vm["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("memory 512 is below the gold image's minimum of 1024 MB"),
        "{message}"
    );
    assert_eq!(w.server.sim_calls_of("clone"), 0, "{message}");
    assert!(!w
        .server
        .data_dir
        .join(format!("tart/vms/osxb-{id}"))
        .exists());
    body["memory"] = 1024.into();
    let fits = w.create(&body);
    w.server.wait_ready(&fits);
    // Now that the image is cached, the same mistake is refused at once: no VM is made.
    let vms = w.vm_count();
    body["memory"] = 512.into();
    let (status, answer) = w.server.create(&body);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "invalid-memory", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("memory 512 is below the gold image's minimum of 1024 MB"),
        "{message}"
    );
    assert_eq!(w.vm_count(), vms);
}

/// `tart ip` with no address yet ("no IP address found", exit 1) is an answer, logged and
/// counted as `no-address`, not a failure of tart.
#[test]
fn tart_no_address_yet_is_logged_and_counted_as_such() {
    let w = World::start(
        "hv-tart-noip",
        common::options_env(
            &[("TART_SIM_IP_POLL_MS", "20"), ("TART_SIM_BOOT_MS", "2500")],
            &["--ip-poll-interval", "0.2"],
        )
        .on(Hv::Tart),
    );
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let log = w.server.log();
    assert!(
        log.contains(&format!("tart ip osxb-{id} -> no-address in")),
        "{log}"
    );
    assert!(
        !log.contains(&format!("tart ip osxb-{id} -> tart-failed")),
        "{log}"
    );
    let (_, metrics) = http::request_raw("GET", &w.server.url("/metrics"), None, &[]);
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let ip = "osx_builder_vmrun_calls_total{command=\"ip\",outcome=";
    assert!(
        common::metric(&metrics, &format!("{ip}\"no-address\"}}")).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&format!("{ip}\"tart-failed\"")),
        "{metrics}"
    );
}
