//! Leases through the real binary: `ttl` on create, `--default-ttl`, `expires_at`,
//! `POST /vms/:id/renew`, and the reaper destroying expired VMs as DELETE does.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, http::call_str, options, World};
use osx_builder::sys::time::parse_rfc3339_ms;
use serde_json::{json, Value};

fn ms(value: &Value) -> i64 {
    parse_rfc3339_ms(value.as_str().unwrap_or("")).unwrap_or_else(|| panic!("not a time: {value}"))
}

fn vmrun_deleted(world: &World, id: &str) -> bool {
    world.server.sim_calls().iter().any(|c| {
        let args = c["args"].to_string();
        args.contains("\"deleteVM\"") && args.contains(id)
    })
}

#[test]
fn an_expired_vm_is_destroyed_as_delete_does_and_logged() {
    let w = World::start("lease-expire", options(&[]));
    let mut body = w.body();
    body["ttl"] = json!(2);
    let (status, vm) = w.server.create(&body);
    assert_eq!(status, 202, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    assert_eq!(vm["ttl"], 2);
    let lease = ms(&vm["expires_at"]) - ms(&vm["created_at"]);
    assert!((1900..=3000).contains(&lease), "lease of {lease} ms: {vm}");

    w.server.wait_ready(&id);
    eventually("the expired VM to be gone", || {
        (w.server.get_vm(&id).0 == 404).then_some(())
    });
    assert!(vmrun_deleted(&w, &id), "destroyed through vmrun deleteVM");
    assert!(!w.server.data_dir.join("vms").join(&id).exists());
    // Logged once the destroy returns, which may be just after the GET saw it gone.
    let log = eventually("the reaper's log line", || {
        let log = w.server.log();
        log.contains(&format!("vm={id} destroyed: its lease expired"))
            .then_some(log)
    });
    assert!(log.contains(&format!("vm={id} lease expired at")), "{log}");
}

#[test]
fn a_renewed_vm_outlives_its_first_lease_and_a_vm_without_one_is_kept() {
    let w = World::start("lease-renew", options(&[]));
    let mut leased = w.body();
    leased["ttl"] = json!(3);
    let (status, before) = w.server.create(&leased);
    assert_eq!(status, 202, "{before}");
    let id = before["id"].as_str().unwrap().to_string();
    let created = Instant::now();

    // Renewed at once, while it is still being provisioned.
    let renewed = call_str(
        "POST",
        &w.server.url(&format!("/vms/{id}/renew")),
        Some(r#"{"ttl": 3600}"#),
        &[],
    );
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let vm = renewed.json();
    assert_eq!(vm["ttl"], 3600);
    assert!(
        ms(&vm["expires_at"]) >= ms(&before["expires_at"]) + 3_500_000,
        "{vm}"
    );
    assert!(w
        .server
        .wait_log(&format!("vm={id} lease renewed for 3600 s")));

    let plain = w.create(&w.body());
    w.server.wait_ready(&id);
    assert!(w.server.get_vm(&plain).1.get("expires_at").is_none());

    // Well past the first lease: both VMs are still there.
    let past = created + Duration::from_secs(5);
    while Instant::now() < past {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.server.get_vm(&id).0, 200);
    assert_eq!(w.server.get_vm(&plain).0, 200);

    // A renew without a body uses the VM's own ttl again.
    let again = call_str(
        "POST",
        &w.server.url(&format!("/vms/{id}/renew")),
        None,
        &[],
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(ms(&again.json()["expires_at"]) >= ms(&vm["expires_at"]));

    // A VM without a lease, and no default: the client must say how long.
    let refused = call_str(
        "POST",
        &w.server.url(&format!("/vms/{plain}/renew")),
        None,
        &[],
    );
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["code"], "invalid-ttl");
    let given = call_str(
        "POST",
        &w.server.url(&format!("/vms/{plain}/renew")),
        Some(r#"{"ttl": 60}"#),
        &[],
    );
    assert_eq!(given.status, 200);
    assert_eq!(given.json()["ttl"], 60);

    for (body, code) in [
        (r#"{"ttl": -1}"#, "invalid-ttl"),
        (r#"{"ttl": "soon"}"#, "invalid-ttl"),
        (r#"[60]"#, "invalid-body"),
        (r#"{"#, "invalid-json"),
    ] {
        let answer = call_str(
            "POST",
            &w.server.url(&format!("/vms/{id}/renew")),
            Some(body),
            &[],
        );
        assert_eq!(answer.json()["code"], code, "{body}: {}", answer.text());
    }
    let unknown = call_str(
        "POST",
        &w.server
            .url("/vms/282ee68a-2e4d-4bd7-9c0e-7f37e12fc489/renew"),
        None,
        &[],
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], "vm-not-found");
}

#[test]
fn the_default_ttl_applies_to_creates_without_one_and_survives_a_restart() {
    let w = World::start("lease-default", options(&["--default-ttl", "3"]));
    let id = w.create(&w.body());
    let (_, vm) = w.server.get_vm(&id);
    assert_eq!(vm["ttl"], 3);
    let mut longer = w.body();
    longer["ttl"] = json!(3600);
    let kept = w.create(&longer);

    // Killed at once, long before the lease ends. The lease is in the record: the next
    // server (without --default-ttl) still enforces it.
    let root = w.dir.path().to_path_buf();
    w.server.kill();
    let server = common::Server::start(&root);
    eventually("the VM to be reaped after the restart", || {
        (server.get_vm(&id).0 == 404).then_some(())
    });
    assert_eq!(
        server.get_vm(&kept).0,
        200,
        "a longer ttl wins over the default"
    );
    assert!(server.wait_log(&format!("vm={id} lease expired")));
}

#[test]
fn a_vm_still_provisioning_when_its_lease_ends_is_cancelled_and_destroyed() {
    let dir = common::TempDir::new("lease-early");
    let files = common::http::FileServer::start();
    // About ten seconds to download: far longer than the lease.
    let archive = common::gold_tar_gz_padded("box", 800_000);
    let checksum = common::sha1_hex(&archive);
    let url = files.add_with(
        "/slow.tar.gz",
        archive,
        common::http::Delivery::Trickle(Duration::from_millis(50)),
    );
    let server = common::Server::start(dir.path());
    let mut body = common::image_body(&url, &checksum);
    body["ttl"] = json!(1);
    let (status, vm) = server.create(&body);
    assert_eq!(status, 202, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    eventually("the provisioning VM to be reaped", || {
        (server.get_vm(&id).0 == 404).then_some(())
    });
    let log = server.log();
    assert!(
        log.contains(&format!("vm={id} provisioning cancelled")),
        "{log}"
    );
}
