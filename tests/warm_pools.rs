//! Warm pools (issue 15) through the real binary and the simulator, whose guests take a
//! while to boot: a pool fills, concurrent creates each get their own running VM with an IP
//! in the 202 and their guestinfo in the running guest (and nowhere else), the pool refills,
//! capacity is shared with ordinary creates, a restart keeps the pool's VMs its own, a pool
//! rolls onto a new image without going empty, and a deleted pool takes only its idle VMs.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, http::call_str};
use common::{gold_tar_gz_padded, sha1_hex, Server, ServerOptions, World};
use serde_json::{json, Value};

/// Long enough that a hand-out and a cold create are told apart by the clock.
const BOOT_MS: &str = "1500";
const SECRET: &str = "pool-s3cret-value-42";

fn options(args: &[&str]) -> ServerOptions {
    ServerOptions {
        env: vec![("VMRUN_SIM_TOOLS_DELAY_MS".into(), BOOT_MS.into())],
        args: ["--list-interval", "0.5"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect(),
    }
}

fn spec(w: &World, size: u32) -> Value {
    let mut body = w.body();
    body["size"] = json!(size);
    body
}

fn put_pool(server: &Server, name: &str, body: &Value) -> (u16, Value) {
    let answer = call_str(
        "PUT",
        &server.url(&format!("/pools/{name}")),
        Some(&body.to_string()),
        &[],
    );
    (answer.status, answer.json())
}

fn pool(server: &Server, name: &str) -> Value {
    let answer = call_str("GET", &server.url(&format!("/pools/{name}")), None, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()
}

/// Waits until the pool has `ready` idle VMs and nothing else going on.
fn wait_ready(server: &Server, name: &str, ready: u64) -> Value {
    eventually(&format!("pool {name} with {ready} ready VMs"), || {
        let view = pool(server, name);
        (view["ready"] == ready && view["warming"] == 0 && view["replacing"] == 0).then_some(view)
    })
}

fn ids(view: &Value) -> Vec<String> {
    view["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

/// What the simulator recorded of the VM's `writeVariable` calls: (name, value).
fn guest_writes(server: &Server, id: &str) -> Vec<(String, String)> {
    let suffix = format!("{id}.vmx");
    for entry in std::fs::read_dir(server.sim_state.join("vms"))
        .unwrap()
        .flatten()
    {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let Ok(state) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if state["vmx"].as_str().is_some_and(|v| v.ends_with(&suffix)) {
            return state["writes"]
                .as_array()
                .map(|writes| {
                    writes
                        .iter()
                        .map(|w| {
                            (
                                w["name"].as_str().unwrap_or("").to_string(),
                                w["value"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
    }
    Vec::new()
}

fn metric(server: &Server, line_start: &str) -> Option<f64> {
    let text = call_str("GET", &server.url("/metrics"), None, &[]).text();
    common::metric(&text, line_start)
}

#[test]
fn a_pool_fills_and_concurrent_creates_each_get_a_running_vm_with_their_guestinfo() {
    let w = World::start("pool-handout", options(&[]));
    let (status, declared) = put_pool(&w.server, "p", &spec(&w, 2));
    assert_eq!(status, 201, "{declared}");
    assert_eq!(declared["size"], 2);
    let full = wait_ready(&w.server, "p", 2);
    let idle = ids(&full);
    assert_eq!(idle.len(), 2);
    let listed = call_str("GET", &w.server.url("/vms"), None, &[]).text();
    assert_eq!(listed.matches("\"pool\":\"p\"").count(), 2, "{listed}");

    let takers: Vec<_> = (0..2)
        .map(|n| {
            let url = w.server.url("/vms");
            let mut body = w.body();
            body["guestinfo"] = json!({"name": format!("{SECRET}-{n}")});
            body["labels"] = json!({"job": format!("j{n}")});
            thread::spawn(move || {
                let started = Instant::now();
                let answer = call_str("POST", &url, Some(&body.to_string()), &[]);
                (answer.status, answer.json(), started.elapsed())
            })
        })
        .collect();
    let answers: Vec<(u16, Value, Duration)> =
        takers.into_iter().map(|t| t.join().unwrap()).collect();
    let mut taken = Vec::new();
    for (status, vm, took) in &answers {
        assert_eq!(*status, 202, "{vm}");
        assert_eq!(vm["status"], "running", "{vm}");
        assert_ne!(vm["ip_address"], "", "{vm}");
        assert!(vm.get("pool").is_none(), "{vm}");
        assert_eq!(vm["guestinfo_keys"], json!(["name"]));
        assert!(
            *took < Duration::from_millis(1500),
            "a hand-out took {took:?}"
        );
        let id = vm["id"].as_str().unwrap().to_string();
        assert!(
            idle.contains(&id),
            "{id} was not one of the pool's {idle:?}"
        );
        // The guest got its own value, written at runtime (not through the VMX).
        let n = &vm["labels"]["job"].as_str().unwrap()[1..];
        assert_eq!(
            guest_writes(&w.server, &id),
            [("name".to_string(), format!("{SECRET}-{n}"))]
        );
        taken.push(id);
    }
    assert_ne!(taken[0], taken[1], "one VM handed out twice");

    // The pool refills with new VMs.
    let refilled = wait_ready(&w.server, "p", 2);
    assert!(
        ids(&refilled).iter().all(|id| !taken.contains(id)),
        "{refilled}"
    );
    assert_eq!(
        (refilled["hits"].as_u64(), refilled["misses"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        metric(&w.server, "osx_builder_pool_hits_total{pool=\"p\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&w.server, "osx_builder_pool_hand_out_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        metric(&w.server, "osx_builder_pool_ready{pool=\"p\"}"),
        Some(2.0)
    );

    // The values are in the guest only: no answer, log line or file of the server's.
    let list = call_str("GET", &w.server.url("/vms"), None, &[]).text();
    for text in [list, answers[0].1.to_string(), answers[1].1.to_string()] {
        assert!(!text.contains(SECRET), "{text}");
    }
    assert!(!w.server.log().contains(SECRET), "{}", w.server.log());
    assert_eq!(
        common::files_containing(&w.server.data_dir, SECRET),
        Vec::<String>::new()
    );

    // A create of another shape matches no pool: provisioned from the start.
    let mut other = w.body();
    other["cpus"] = json!(4);
    let (status, cold) = w.server.create(&other);
    assert_eq!(status, 202, "{cold}");
    assert_eq!(cold["status"], "", "{cold}");
    w.server.wait_ready(cold["id"].as_str().unwrap());
    assert_eq!(
        metric(&w.server, "osx_builder_pool_unmatched_total"),
        Some(1.0)
    );
    assert_eq!(pool(&w.server, "p")["misses"], 0);
}

#[test]
fn capacity_is_shared_with_ordinary_creates_and_a_short_pool_says_why() {
    let w = World::start("pool-capacity", options(&["--max-vms", "3"]));
    assert_eq!(put_pool(&w.server, "p", &spec(&w, 2)).0, 201);
    wait_ready(&w.server, "p", 2);
    let mut other = w.body();
    other["memory"] = json!(2048);
    let ordinary = w.create(&other);
    // Take one: its replacement would be a fourth VM.
    let (status, taken) = w.server.create(&w.body());
    assert_eq!((status, taken["status"].clone()), (202, json!("running")));
    let short = eventually("the pool to wait for capacity", || {
        let view = pool(&w.server, "p");
        view["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("capacity"))
            .then_some(view)
    });
    assert_eq!(short["ready"], 1, "{short}");
    // Nor can an ordinary create get past the pool's VMs.
    assert_eq!(w.server.create(&other).0, 503);
    // Logged once, not once a round.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.server.log().matches("warm pool p waits").count(),
        1,
        "{}",
        w.server.log()
    );
    // A place freed: the pool takes it.
    w.server.wait_ready(&ordinary);
    assert_eq!(w.server.delete_vm(&ordinary).0, 204);
    let full = wait_ready(&w.server, "p", 2);
    assert!(full.get("waiting").is_none(), "{full}");
    // Matching creates beyond the pool are misses, refused like any create when full.
    assert_eq!(w.server.create(&w.body()).0, 202);
    let (status, refused) = w.server.create(&w.body());
    assert_eq!(status, 202, "a ready VM is left: {refused}");
    let (status, refused) = w.server.create(&w.body());
    assert_eq!(
        (status, refused["code"].clone()),
        (503, json!("capacity-exhausted"))
    );
    assert_eq!(pool(&w.server, "p")["misses"], 1);
}

#[test]
fn after_a_restart_idle_vms_are_still_the_pools() {
    let w = World::start("pool-restart", options(&[]));
    assert_eq!(put_pool(&w.server, "p", &spec(&w, 2)).0, 201);
    let before = ids(&wait_ready(&w.server, "p", 2));
    let clones = |server: &Server| server.sim_calls_of("clone");
    let cloned = clones(&w.server);
    let create = w.body();
    let World {
        dir,
        files: _files,
        server,
        ..
    } = w;
    assert!(server.terminate().success());
    let server = Server::start_with(dir.path(), options(&[]));
    let after = wait_ready(&server, "p", 2);
    assert_eq!(ids(&after), before, "the pool's VMs changed: {after}");
    // The keeper's first round is done when it has checked them; still nothing new.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(clones(&server), cloned, "VMs were made again");
    assert_eq!(ids(&pool(&server, "p")), before);
    let (status, vm) = server.create(&create);
    assert_eq!(
        (status, vm["status"].clone()),
        (202, json!("running")),
        "{vm}"
    );
    assert!(before.contains(&vm["id"].as_str().unwrap().to_string()));
}

#[test]
fn a_deleted_pool_takes_its_idle_vms_and_leaves_handed_out_ones() {
    let w = World::start("pool-delete", options(&[]));
    assert_eq!(put_pool(&w.server, "p", &spec(&w, 2)).0, 201);
    let idle = ids(&wait_ready(&w.server, "p", 2));
    let (_, taken) = w.server.create(&w.body());
    let taken = taken["id"].as_str().unwrap().to_string();
    let answer = call_str("DELETE", &w.server.url("/pools/p"), None, &[]);
    assert_eq!(answer.status, 204, "{}", answer.text());
    for id in idle.iter().filter(|id| **id != taken) {
        eventually("the idle VM to be destroyed", || {
            (w.server.get_vm(id).0 == 404).then_some(())
        });
    }
    let (status, vm) = w.server.get_vm(&taken);
    assert_eq!((status, vm["status"].clone()), (200, json!("running")));
    assert_eq!(
        call_str("GET", &w.server.url("/pools/p"), None, &[]).status,
        404
    );
    assert_eq!(
        call_str("DELETE", &w.server.url("/pools/p"), None, &[]).status,
        404
    );
    // Nothing came back for the pool.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(w.vm_count(), 1);
}

#[test]
fn an_image_update_rolls_the_pool_without_leaving_it_empty() {
    let w = World::start("pool-roll", options(&[]));
    assert_eq!(put_pool(&w.server, "p", &spec(&w, 2)).0, 201);
    let old = ids(&wait_ready(&w.server, "p", 2));
    let archive = gold_tar_gz_padded("box2", 1024);
    let checksum = sha1_hex(&archive);
    let url = w.files.add("/gold2.tar.gz", archive);
    let mut new_spec = common::image_body(&url, &checksum);
    new_spec["size"] = json!(2);
    let (status, changed) = put_pool(&w.server, "p", &new_spec);
    assert_eq!(status, 200, "{changed}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = pool(&w.server, "p");
        let serving = view["ready"].as_u64().unwrap() + view["replacing"].as_u64().unwrap();
        assert!(serving >= 1, "the pool went empty during the roll: {view}");
        let now = ids(&view);
        if view["ready"] == 2 && view["replacing"] == 0 && now.iter().all(|id| !old.contains(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "never rolled: {view}");
        thread::sleep(Duration::from_millis(20));
    }
    for id in &old {
        eventually("an old VM to go", || {
            (w.server.get_vm(id).0 == 404).then_some(())
        });
    }
    let mut create = common::image_body(&url, &checksum);
    create["headless"] = json!(true);
    let (status, vm) = w.server.create(&create);
    assert_eq!(
        (status, vm["status"].clone()),
        (202, json!("running")),
        "{vm}"
    );
    assert_eq!(vm["image"]["checksum"], checksum);
}

#[test]
fn an_idle_vm_that_stops_is_replaced() {
    let w = World::start("pool-stop", options(&[]));
    assert_eq!(put_pool(&w.server, "p", &spec(&w, 1)).0, 201);
    let first = ids(&wait_ready(&w.server, "p", 1)).remove(0);
    let vmx = w.server.data_dir.join(format!("vms/{first}/{first}.vmx"));
    w.server.sim(&["stop", vmx.to_str().unwrap(), "hard"]);
    eventually("the stopped VM to be replaced", || {
        let view = pool(&w.server, "p");
        (view["ready"] == 1 && !ids(&view).contains(&first)).then_some(())
    });
    eventually("the stopped VM to be destroyed", || {
        (w.server.get_vm(&first).0 == 404).then_some(())
    });
}

#[test]
fn pool_specs_are_checked_as_creates_and_settings_pools_are_fixed() {
    let dir = common::TempDir::new("pool-settings");
    let files = common::http::FileServer::start();
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let mut body = common::image_body(&url, &checksum);
    body["size"] = json!(1);
    let file = dir.path().join("fixed.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let pool_arg = format!("fixed={}", file.display());
    let server = Server::start_with(dir.path(), options(&["--pool", &pool_arg]));
    let view = wait_ready(&server, "fixed", 1);
    assert_eq!(view["from_settings"], true);
    for method in ["PUT", "DELETE"] {
        let answer = call_str(
            method,
            &server.url("/pools/fixed"),
            Some(&body.to_string()),
            &[],
        );
        assert_eq!(answer.status, 409, "{method}: {}", answer.text());
        assert_eq!(answer.json()["code"], "pool-from-settings");
    }
    for (name, change, code) in [
        ("bad..name/x", json!({}), "invalid-pool-name"),
        (".hidden", json!({}), "invalid-pool-name"),
        ("p", json!({"size": 65}), "invalid-size"),
        ("p", json!({"size": null}), "invalid-size"),
        ("p", json!({"cpus": 1000}), "invalid-cpus"),
        ("p", json!({"network_type": "wifi"}), "invalid-network-type"),
        (
            "p",
            json!({"image": {"url": "ftp://x/y", "checksum": checksum, "checksum_type": "sha1"}}),
            "invalid-image-url",
        ),
        (
            "p",
            json!({"guestinfo": {"name": "x"}}),
            "invalid-guestinfo",
        ),
    ] {
        let mut bad = body.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let (status, answer) = put_pool(&server, name, &bad);
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{name} {change}: {answer}"
        );
    }
    assert_eq!(
        call_str("GET", &server.url("/pools"), None, &[])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
