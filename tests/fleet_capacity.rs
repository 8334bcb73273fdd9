//! Admission through the real binary: the VM limit (counting VMs vmrun lists that are not
//! ours), the free-disk floor, and drain. A refused create must cost nothing: no record,
//! no download, no vmrun clone.

mod common;

use common::sha1_hex;
use common::{eventually, http::call_str, image_body, options, World};
use serde_json::Value;

fn clone_calls(world: &World) -> usize {
    world
        .server
        .sim_calls()
        .iter()
        .filter(|c| c["args"].to_string().contains("\"clone\""))
        .count()
}

#[test]
fn over_the_vm_limit_a_create_is_refused_at_once_and_costs_nothing() {
    let w = World::start("cap-limit", options(&["--max-vms", "1"]));
    let first = w.create(&w.body());
    w.server.wait_ready(&first);

    // A second image, so that a download would show on the file server.
    let other = common::gold_tar_gz("other");
    let other_sum = sha1_hex(&other);
    let other_url = w.files.add("/other.tar.gz", other);
    let clones = clone_calls(&w);
    let answer = call_str(
        "POST",
        &w.server.url("/vms"),
        Some(&image_body(&other_url, &other_sum).to_string()),
        &[],
    );
    assert_eq!(answer.status, 503, "{}", answer.text());
    let err = answer.json();
    assert_eq!(err["code"], "capacity-exhausted");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("1 VMs in use") && message.contains("limit is 1"),
        "{message}"
    );
    assert_eq!(answer.header("Retry-After"), Some("60"));
    assert_eq!(w.vm_count(), 1, "no record for the refused VM");
    assert_eq!(w.files.hits("/other.tar.gz"), 0, "nothing downloaded");
    assert_eq!(clone_calls(&w), clones, "nothing cloned");
    assert!(!w.server.data_dir.join("gold").join(&other_sum).exists());

    let metrics = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
    assert_eq!(
        common::metric(&metrics, "osx_builder_capacity_used "),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        common::metric(&metrics, "osx_builder_capacity_limit "),
        Some(1.0)
    );

    // A delete frees the place.
    let (status, _) = w.server.delete_vm(&first);
    assert_eq!(status, 204);
    let second = w.create(&image_body(&other_url, &other_sum));
    w.server.wait_ready(&second);
}

#[test]
fn a_vm_vmrun_runs_that_is_not_ours_takes_a_place() {
    // Which VMs run is refreshed in the background (no create runs vmrun): often, here.
    let w = World::start(
        "cap-foreign",
        options(&["--max-vms", "2", "--list-interval", "0.2"]),
    );
    // Someone started a VM by hand in Fusion.
    let foreign = w.dir.path().join("by-hand");
    std::fs::create_dir_all(&foreign).unwrap();
    let vmx = foreign.join("mine.vmx");
    std::fs::write(&vmx, ".encoding = \"UTF-8\"\ndisplayName = \"mine\"\n").unwrap();
    w.server.sim(&["start", vmx.to_str().unwrap(), "nogui"]);
    assert!(w.server.sim(&["list"]).contains("mine.vmx"));

    let first = w.create(&w.body());
    w.server.wait_ready(&first);
    wait_capacity_used(&w, 2);
    let answer = call_str(
        "POST",
        &w.server.url("/vms"),
        Some(&w.body().to_string()),
        &[],
    );
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.json()["message"]
        .as_str()
        .unwrap()
        .contains("2 VMs in use"));

    // Once the stranger's VM stops, its place is free again.
    w.server.sim(&["stop", vmx.to_str().unwrap(), "hard"]);
    wait_capacity_used(&w, 1);
    let second = w.create(&w.body());
    w.server.wait_ready(&second);
}

#[test]
fn under_the_disk_floor_creates_are_refused_and_health_says_why() {
    // No disk has 1 EiB free.
    let w = World::start("cap-disk", options(&["--min-free-disk", "1048576TiB"]));
    let answer = call_str(
        "POST",
        &w.server.url("/vms"),
        Some(&w.body().to_string()),
        &[],
    );
    assert_eq!(answer.status, 503, "{}", answer.text());
    let err = answer.json();
    assert_eq!(err["code"], "capacity-exhausted");
    assert!(
        err["message"].as_str().unwrap().contains("--min-free-disk"),
        "{err}"
    );
    assert_eq!(answer.header("Retry-After"), Some("60"));
    assert_eq!(w.vm_count(), 0);
    assert_eq!(w.files.hits("/gold.tar.gz"), 0);

    let health = call_str("GET", &w.server.url("/healthz"), None, &[]);
    assert_eq!(health.status, 503);
    let body = health.json();
    assert_eq!(body["failing"], serde_json::json!(["disk"]), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("disk: "));
}

#[test]
fn drain_refuses_creates_keeps_vms_and_survives_a_restart() {
    let dir = common::TempDir::new("drain");
    let files = common::http::FileServer::start();
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let body = image_body(&url, &checksum).to_string();
    let server = common::Server::start(dir.path());
    let (_, vm) = server.create(&image_body(&url, &checksum));
    let id = vm["id"].as_str().unwrap().to_string();
    server.wait_ready(&id);

    let drained = call_str("POST", &server.url("/drain"), None, &[]);
    assert_eq!(drained.status, 200, "{}", drained.text());
    assert_eq!(drained.json()["draining"], true);
    assert_eq!(drained.json()["vms"], 1);
    let since = drained.json()["since"].clone();
    assert!(since.is_string());

    let refused = call_str("POST", &server.url("/vms"), Some(&body), &[]);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["code"], "draining");
    assert_eq!(refused.header("Retry-After"), Some("300"));
    // The VM there keeps running and answering.
    let vm = server.wait_ready(&id);
    assert_eq!(vm["status"], "running");
    let health = call_str("GET", &server.url("/healthz"), None, &[]);
    assert_eq!(
        health.status,
        200,
        "draining is not unhealthy: {}",
        health.text()
    );
    assert_eq!(health.json()["draining"], true);
    let metrics = call_str("GET", &server.url("/metrics"), None, &[]).text();
    assert_eq!(common::metric(&metrics, "osx_builder_draining "), Some(1.0));

    // A restart (the maintenance reboots the Mac) keeps the drain.
    assert!(server.terminate().success());
    let server = common::Server::start(dir.path());
    assert!(server.wait_log("draining since"));
    let state = call_str("GET", &server.url("/drain"), None, &[]);
    assert_eq!(state.json()["draining"], true);
    assert_eq!(state.json()["since"], since);
    let refused = call_str("POST", &server.url("/vms"), Some(&body), &[]);
    assert_eq!(refused.json()["code"], "draining");

    let undrained = call_str("POST", &server.url("/undrain"), None, &[]);
    assert_eq!(undrained.status, 200);
    assert_eq!(undrained.json()["draining"], false);
    let again = call_str("DELETE", &server.url("/drain"), None, &[]);
    assert_eq!(again.json()["draining"], false);
    let created = call_str("POST", &server.url("/vms"), Some(&body), &[]);
    assert_eq!(created.status, 202, "{}", created.text());
    let new_id = created.json()["id"].as_str().unwrap().to_string();
    server.wait_ready(&new_id);
    let metrics = call_str("GET", &server.url("/metrics"), None, &[]).text();
    assert_eq!(common::metric(&metrics, "osx_builder_draining "), Some(0.0));
    eventually("two VMs listed", || {
        let list: Value = call_str("GET", &server.url("/vms"), None, &[]).json();
        (list.as_array().map_or(0, Vec::len) == 2).then_some(())
    });
}

/// Waits until `/metrics` counts `want` VMs in use: the next background `vmrun list`.
fn wait_capacity_used(w: &World, want: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
        let used = text.lines().find_map(|l| {
            l.strip_prefix("osx_builder_capacity_used ")?
                .trim()
                .parse::<u64>()
                .ok()
        });
        if used == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "capacity used stayed {used:?}, not {want}\n{}",
            w.server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// `count` POST /vms of `body` released together; their status codes and bodies.
fn creates_at_once(w: &World, body: &Value, count: usize) -> Vec<(u16, Value)> {
    let gate = std::sync::Arc::new(std::sync::Barrier::new(count));
    let (url, body) = (w.server.url("/vms"), body.to_string());
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (gate, url, body) = (gate.clone(), url.clone(), body.clone());
            std::thread::spawn(move || {
                gate.wait();
                let answer = call_str("POST", &url, Some(&body), &[]);
                (answer.status, answer.json())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Creates record their VMs outside the admission lock, side by side: the places they
/// took must still be counted, so a burst fills the limit exactly, never past it.
#[test]
fn creates_at_once_fill_the_vm_limit_exactly() {
    let w = World::start("cap-burst", options(&["--max-vms", "3"]));
    // Slow vmrun: the admitted VMs stay provisioning, holding their places.
    w.server.set_faults("* delay 300\n");
    let answers = creates_at_once(&w, &w.body(), 16);
    let admitted = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(admitted, 3, "{answers:?}");
    for (status, body) in &answers {
        if *status != 202 {
            assert_eq!(*status, 503, "{body}");
            assert_eq!(body["code"], "capacity-exhausted", "{body}");
        }
    }
    assert_eq!(w.vm_count(), 3);
    let metrics = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
    assert_eq!(
        common::metric(&metrics, "osx_builder_capacity_used "),
        Some(3.0),
        "{metrics}"
    );
}

#[test]
fn creates_at_once_fill_the_record_limit_exactly() {
    let w = World::start("cap-burst-records", options(&["--max-records", "5"]));
    w.server.set_faults("* delay 300\n");
    let first = w.create(&w.body());
    let answers = creates_at_once(&w, &w.body(), 16);
    let admitted = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(admitted, 4, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(status, body)| *status == 202 || body["code"] == "capacity-exhausted"));
    assert_eq!(w.vm_count(), 5);
    // A delete frees a record's place for the next create.
    w.server.set_faults("");
    let (status, _) = w.server.delete_vm(&first);
    assert_eq!(status, 204);
    let answers = creates_at_once(&w, &w.body(), 4);
    assert_eq!(
        answers.iter().filter(|(status, _)| *status == 202).count(),
        1,
        "{answers:?}"
    );
}
