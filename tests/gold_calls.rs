//! vmrun calls on a gold VM (snapshot, clone) are never killed half way: a DELETE during one
//! answers at once and its VM's clone goes when the call ends; a VM waiting for the gold
//! VM leaves the queue at once; locks a dead vmrun left beside a gold VM are cleared, live
//! ones never; a clone that loses its snapshot for a moment is retried once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::request;
use common::{eventually, options_env, sim_call_args, Server, World, SIM_BIN};
use serde_json::{json, Value};

/// Long enough to DELETE during, short enough for CI.
const CLONE_MS: &str = "1500";

fn gold_vmx(world: &World) -> PathBuf {
    world
        .server
        .data_dir
        .join("gold")
        .join(&world.checksum)
        .join("box/gold.vmx")
}

/// The simulator's lock beside a gold VMX while a clone of it runs.
fn clone_lock(gold_vmx: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sim-clone-lock", gold_vmx.display()))
}

fn phase(server: &Server, id: &str) -> String {
    let (_, vm) = server.get_vm(id);
    vm["progress"]["phase"].as_str().unwrap_or("").to_string()
}

/// Every simulator call that names the VM `id` (its VMX or its clone's destination).
fn calls_naming(server: &Server, id: &str) -> Vec<Value> {
    server
        .sim_calls()
        .into_iter()
        .filter(|c| sim_call_args(c).iter().any(|a| a.contains(id)))
        .collect()
}

/// A `vmrun clone` of the gold VM run by hand, as another tool (or a vmrun the server
/// started before it died) would: it holds the gold VM's clone lock while it runs.
fn foreign_clone(server: &Server, gold: &Path, dst: &Path, clone_ms: u64) -> Child {
    let child = Command::new(SIM_BIN)
        .args(["clone", gold.to_str().unwrap(), dst.to_str().unwrap()])
        .args(["linked", "-snapshot=osx-builder-base"])
        .env("VMRUN_SIM_STATE", &server.sim_state)
        .env("VMRUN_SIM_CLONE_MS", clone_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the foreign clone's lock", || {
        clone_lock(gold).exists().then_some(())
    });
    child
}

/// SIGKILL, as a crash or the OOM killer would: the simulator leaves its lock behind.
fn kill_hard(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Makes the gold VM (one VM, ready), then a second VM whose clone of it is running now;
/// returns the gold VMX and the second VM's id.
fn clone_in_flight(world: &World) -> (PathBuf, String) {
    let first = world.create(&world.body());
    world.server.wait_ready(&first);
    let gold = gold_vmx(world);
    let id = world.create(&world.body());
    eventually("the clone to run", || {
        (phase(&world.server, &id) == "cloning" && clone_lock(&gold).exists()).then_some(())
    });
    (gold, id)
}

/// DELETE, which must answer 204 within `limit`; after it the VM is unknown.
fn delete_at_once(server: &Server, id: &str, limit: Duration) {
    let asked = Instant::now();
    let (status, body) = server.delete_vm(id);
    let answered = asked.elapsed();
    assert_eq!(status, 204, "{body}");
    assert!(answered < limit, "DELETE took {answered:?}");
    assert_eq!(server.get_vm(id).0, 404);
}

#[test]
fn a_delete_during_the_clone_answers_at_once_and_the_gold_image_stays_usable() {
    let world = World::start(
        "gold-delete",
        options_env(&[("VMRUN_SIM_CLONE_MS", CLONE_MS)], &[]),
    );
    let server = &world.server;
    let (gold, doomed) = clone_in_flight(&world);
    delete_at_once(server, &doomed, Duration::from_millis(500));
    let listed = common::http::request("GET", &server.url("/vms"), None, &[]).1;
    assert!(!listed.to_string().contains(&doomed), "{listed}");

    // The clone was not killed: it ends on its own and its folder goes after it.
    let folder = server.data_dir.join("vms").join(&doomed);
    eventually("the deleted VM's folder to go", || {
        (!folder.exists() && !clone_lock(&gold).exists()).then_some(())
    });
    let clones = server
        .sim_calls()
        .into_iter()
        .filter(|c| {
            sim_call_args(c).contains(&"clone")
                && sim_call_args(c).iter().any(|a| a.contains(&doomed))
        })
        .collect::<Vec<_>>();
    assert_eq!(clones.len(), 1, "{clones:?}");
    assert_eq!(clones[0]["exit"], 0, "the clone was cut short: {clones:?}");
    assert!(
        server.wait_log(&format!("vm={doomed} deleted")),
        "{}",
        server.log()
    );

    // The next create of the image is not held up by anything the delete left.
    let started = Instant::now();
    let next = world.create(&world.body());
    server.wait_ready(&next);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the next create took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_server_killed_between_the_204_and_the_clean_up_removes_the_clone_on_restart() {
    let world = World::start(
        "gold-delete-crash",
        options_env(
            &[("VMRUN_SIM_CLONE_MS", CLONE_MS)],
            &["--reconcile-interval", "0.3"],
        ),
    );
    let (gold, doomed) = clone_in_flight(&world);
    delete_at_once(&world.server, &doomed, Duration::from_millis(500));
    let World {
        dir,
        files: _files,
        server,
        url,
        checksum,
    } = world;
    // The server dies before the clone ends; the clone (its own process group) runs on.
    server.kill();
    let server = Server::start_with(
        dir.path(),
        options_env(
            &[("VMRUN_SIM_CLONE_MS", CLONE_MS)],
            &["--reconcile-interval", "0.3"],
        ),
    );
    assert_eq!(server.get_vm(&doomed).0, 404, "{}", server.log());
    let folder = server.data_dir.join("vms").join(&doomed);
    eventually("the deleted VM's folder to go after the restart", || {
        (!folder.exists() && !clone_lock(&gold).exists()).then_some(())
    });
    // Reconciles after the clone ended do not bring it back.
    let next = {
        let (status, vm) = server.create(&common::image_body(&url, &checksum));
        assert_eq!(status, 202, "{vm}");
        vm["id"].as_str().unwrap().to_string()
    };
    server.wait_ready(&next);
    assert_eq!(server.get_vm(&doomed).0, 404, "{}", server.log());
    assert!(!folder.exists());
}

#[test]
fn a_stale_gold_lock_is_cleared_on_the_next_create_and_on_restart_a_live_one_is_not() {
    let world = World::start("gold-stale", options_env(&[], &[]));
    let first = world.create(&world.body());
    world.server.wait_ready(&first);
    let gold = gold_vmx(&world);
    let scratch = world.dir.path().join("foreign");

    // A vmrun clone SIGKILLed mid-way: its lock stays, its process is gone.
    let dead = foreign_clone(&world.server, &gold, &scratch.join("a/a.vmx"), 60_000);
    kill_hard(dead);
    assert!(clone_lock(&gold).exists());
    let started = Instant::now();
    let second = world.create(&world.body());
    world.server.wait_ready(&second);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(!clone_lock(&gold).exists());

    // A live clone's lock is left alone: the create retries "in use", then fails, and the
    // server says which file blocks the image and what to do, until a clone goes through.
    let live = foreign_clone(&world.server, &gold, &scratch.join("b/b.vmx"), 60_000);
    let third = world.create(&world.body());
    let failed = world.server.wait_failed(&third);
    assert_eq!(failed["error"]["code"], "vm-locked", "{failed}");
    assert!(clone_lock(&gold).exists(), "a live lock was removed");
    let lock_name = clone_lock(&gold).display().to_string();
    let image_url = world.server.url(&format!("/images/{}", world.checksum));
    let (status, image) = request("GET", &image_url, None, &[]);
    assert_eq!(status, 200, "{image}");
    assert_eq!(image["blocked"]["file"], lock_name.as_str(), "{image}");
    let message = image["blocked"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is running") && message.contains("remove"),
        "{message}"
    );
    let (status, health) = request("GET", &world.server.url("/healthz"), None, &[]);
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["failing"], json!(["gold_images"]), "{health}");
    let said = health["checks"]["gold_images"]["message"].as_str().unwrap();
    assert!(
        said.contains(&lock_name) && said.contains(&world.checksum),
        "{said}"
    );
    kill_hard(live);
    let fourth = world.create(&world.body());
    world.server.wait_ready(&fourth);
    assert!(request("GET", &image_url, None, &[])
        .1
        .get("blocked")
        .is_none());
    let (status, health) = request("GET", &world.server.url("/healthz"), None, &[]);
    assert_eq!(status, 200, "{health}");

    // A restart clears what a vmrun that died meanwhile left.
    let dead = foreign_clone(&world.server, &gold, &scratch.join("c/c.vmx"), 60_000);
    let World {
        dir,
        files: _files,
        server,
        ..
    } = world;
    server.kill();
    kill_hard(dead);
    assert!(clone_lock(&gold).exists());
    let server = Server::start_with(dir.path(), options_env(&[], &[]));
    eventually("the restart to clear the stale gold lock", || {
        (!clone_lock(&gold).exists()).then_some(())
    });
    assert!(
        server.wait_log("stale"),
        "the clearing is not logged:\n{}",
        server.log()
    );
}

#[test]
fn a_delete_of_a_vm_queued_behind_another_clone_answers_at_once_and_runs_nothing() {
    let world = World::start(
        "gold-queued",
        options_env(&[("VMRUN_SIM_CLONE_MS", "3000")], &[]),
    );
    let server = &world.server;
    let (_, cloning) = clone_in_flight(&world);
    let queued = world.create(&world.body());
    delete_at_once(server, &queued, Duration::from_millis(300));
    server.wait_ready(&cloning);
    let next = world.create(&world.body());
    server.wait_ready(&next);
    assert_eq!(
        calls_naming(server, &queued),
        Vec::<Value>::new(),
        "vmrun ran for a VM deleted while it waited"
    );
    assert!(!server.data_dir.join("vms").join(&queued).exists());
}

#[test]
fn a_clone_that_does_not_see_the_listed_snapshot_is_retried_once() {
    let world = World::start(
        "gold-snapshot-quirk",
        options_env(&[("VMRUN_SIM_CLONE_MISSES_SNAPSHOT", "1")], &[]),
    );
    let server = &world.server;
    let id = world.create(&world.body());
    server.wait_ready(&id);
    let clones: Vec<Value> = calls_naming(server, &id)
        .into_iter()
        .filter(|c| sim_call_args(c).contains(&"clone"))
        .collect();
    assert_eq!(clones.len(), 2, "{clones:?}");
    assert_eq!(
        (clones[0]["exit"].clone(), clones[1]["exit"].clone()),
        (255.into(), 0.into())
    );
    assert!(
        server.wait_log("retrying the clone once"),
        "{}",
        server.log()
    );
    // Once per gold VM: a second VM clones at the first try.
    let again = world.create(&world.body());
    server.wait_ready(&again);
    let clones = calls_naming(server, &again)
        .into_iter()
        .filter(|c| sim_call_args(c).contains(&"clone"))
        .count();
    assert_eq!(clones, 1);
}
