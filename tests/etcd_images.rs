//! Images and hosts across a fleet of three on a real 3-member etcd: pre-warm on N hosts and
//! on all (through the API and `osx-builder image prewarm --hosts`), `GET /images` naming
//! the hosts that hold each image, `osx-builder host list`, a host with no disk room (h2,
//! whose --min-free-disk is larger than any disk) never chosen to download and named as the
//! reason of a refusal, one idempotency key under two tokens, the slot of a create its host
//! refused freed at once, the list's filters applied to the VMs of a host that died, and
//! such a VM, deleted, destroyed by its host when it comes back.

mod common;

use std::process::Output;
use std::time::Duration;

use common::fleet::{wait_until, Fleet};
use common::http::request;
use serde_json::{json, Value};

/// The client binary with `args`, against `server`.
fn client(server: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--server", server]);
    common::client_bare(&all)
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn prewarm_body(fleet: &Fleet, hosts: Value) -> String {
    json!({"url": fleet.url, "checksum": fleet.checksum, "checksum_type": "sha1", "hosts": hosts})
        .to_string()
}

/// The entry of the fleet's image in `GET /images` on host `n`.
fn image_on(fleet: &Fleet, n: usize) -> Value {
    let (status, list) = request("GET", &fleet.host(n).url("/images"), None, &[]);
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["checksum"] == fleet.checksum.as_str())
        .cloned()
        .unwrap_or(Value::Null)
}

fn holders(image: &Value) -> Vec<&str> {
    image["hosts"]
        .as_array()
        .map(|h| h.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn images_and_hosts_across_the_fleet() {
    let roomy: &[&str] = &["--max-vms", "1"];
    let no_room: &[&str] = &["--max-vms", "1", "--min-free-disk", "1000TiB"];
    let Some(mut fleet) = Fleet::start_each(&[roomy, roomy, no_room]) else {
        return;
    };
    wait_until(
        "h0 to see h2 without disk room",
        Duration::from_secs(20),
        || {
            fleet.record(0, "h2").is_some_and(|r| r["disk_room"] == 0)
                && fleet
                    .record(0, "h0")
                    .is_some_and(|r| r["disk_room"].as_u64() > Some(0))
        },
    );

    // `host list`: a row per host, -q the names, --json the server's answer.
    let base = fleet.host(0).base.clone();
    let out = client(&base, &["host", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.starts_with("NAME"), "{table}");
    for name in ["h0", "h1", "h2"] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{table}"
        );
    }
    assert!(table.contains("0/1"), "{table}");
    let out = client(&base, &["host", "list", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "h0\nh1\nh2\n",
        "{}",
        show(&out)
    );
    let out = client(&base, &["host", "list", "--json"]);
    let answer: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", show(&out)));
    assert_eq!(answer["host"], "h0");
    assert_eq!(
        answer["hosts"].as_array().map(Vec::len),
        Some(3),
        "{answer}"
    );

    // Nothing cached anywhere yet.
    assert_eq!(image_on(&fleet, 0), Value::Null);

    // On one host, through h2 (no disk room): a host with room is chosen.
    let (status, report) = request(
        "POST",
        &fleet.host(2).url("/images"),
        Some(&prewarm_body(&fleet, json!(1))),
        &[],
    );
    assert!(status == 202 || status == 200, "{status} {report}");
    assert_eq!(report["requested"], 1);
    let asked = report["hosts"].as_array().unwrap();
    assert_eq!(asked.len(), 1, "{report}");
    let first = asked[0]["host"].as_str().unwrap().to_string();
    assert!(first == "h0" || first == "h1", "{report}");
    assert!(asked[0]["image"]["state"].is_string(), "{report}");
    // h2 learns from the records that `first` holds it.
    wait_until(
        "h2 to list the image held elsewhere",
        Duration::from_secs(20),
        || {
            let image = image_on(&fleet, 2);
            image["state"] == "remote" && holders(&image) == [first.as_str()]
        },
    );
    // The same request again: the host that holds it counts, nothing new is downloaded.
    let (status, again) = request(
        "POST",
        &fleet.host(1).url("/images"),
        Some(&prewarm_body(&fleet, json!(1))),
        &[],
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["hosts"][0]["host"], first.as_str(), "{again}");
    assert_eq!(again["hosts"][0]["image"]["state"], "ready", "{again}");

    // On all, with the command line: every host is asked, h2 refuses (no disk room).
    let out = client(
        &base,
        &[
            "image",
            "prewarm",
            "--image-url",
            &fleet.url,
            "--checksum",
            &fleet.checksum,
            "--hosts",
            "all",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "h2 refused: {}", show(&out));
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", show(&out)));
    let asked: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["host"].as_str())
        .collect();
    assert_eq!(asked.len(), 3, "{report}");
    assert_eq!(asked[0], first, "the holder first: {report}");
    let h2 = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "h2")
        .unwrap();
    assert_eq!(h2["status"], 503, "{report}");
    assert_eq!(h2["error"]["code"], "capacity-exhausted", "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 3 hosts refused"), "{}", show(&out));
    wait_until(
        "h0 and h1 to hold the image",
        Duration::from_secs(20),
        || holders(&image_on(&fleet, 0)) == ["h0", "h1"],
    );
    // The local detail stays: h0 holds it, its size and state are its own.
    let image = image_on(&fleet, 0);
    assert_eq!(image["state"], "ready", "{image}");
    assert!(image["size_bytes"].as_u64() > Some(0), "{image}");
    let out = client(&fleet.host(2).base, &["image", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("HOSTS") && table.contains("remote") && table.contains("h0,h1"),
        "{}",
        show(&out)
    );
    let (status, one) = request(
        "GET",
        &fleet.host(2).url(&format!("/images/{}", fleet.checksum)),
        None,
        &[],
    );
    assert_eq!((status, &one["state"]), (200, &json!("remote")), "{one}");

    // Every host that could take it drains: the only one asked refuses, the answer is 502
    // with each refusal. Then a bad scope is named.
    for n in 0..2 {
        assert_eq!(
            request("POST", &fleet.host(n).url("/drain"), None, &[]).0,
            200
        );
    }
    wait_until(
        "h2 to see h0 and h1 draining",
        Duration::from_secs(20),
        || {
            (0..2).all(|n| {
                fleet
                    .record(2, &format!("h{n}"))
                    .is_some_and(|r| r["draining"] == true)
            })
        },
    );
    let (status, failed) = request(
        "POST",
        &fleet.host(2).url("/images"),
        Some(&prewarm_body(&fleet, json!("all"))),
        &[],
    );
    assert_eq!(status, 502, "{failed}");
    assert_eq!(failed["code"], "prewarm-failed", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("h2: capacity-exhausted"),
        "{failed}"
    );
    for n in 0..2 {
        assert_eq!(
            request("POST", &fleet.host(n).url("/undrain"), None, &[]).0,
            200
        );
    }
    let (status, bad) = request(
        "POST",
        &fleet.host(0).url("/images"),
        Some(&prewarm_body(&fleet, json!(0))),
        &[],
    );
    assert_eq!(
        (status, &bad["code"]),
        (400, &json!("invalid-hosts")),
        "{bad}"
    );
    wait_until(
        "h2 to see h0 and h1 open again",
        Duration::from_secs(20),
        || {
            (0..2).all(|n| {
                fleet
                    .record(2, &format!("h{n}"))
                    .is_some_and(|r| r["draining"] == false)
            })
        },
    );

    // A create its host refuses (file:// images are off there): its slot is free at once,
    // not a minute later.
    let mut local_image = fleet.body();
    local_image["image"]["url"] = json!("file:///var/tmp/nowhere.tar.gz");
    local_image["image"]["checksum"] = json!("0123456789abcdef0123456789abcdef01234567");
    let (status, refused) = fleet.create_on(2, &local_image, &[]);
    assert_eq!(
        (status, &refused["code"]),
        (400, &json!("invalid-image-url")),
        "{refused}"
    );
    let placed = |n: usize| -> Vec<Option<u64>> {
        (0..3)
            .map(|h| {
                fleet
                    .record(n, &format!("h{h}"))
                    .and_then(|r| r["placed"].as_u64())
            })
            .collect()
    };
    wait_until(
        "the refused create's slot to be free",
        Duration::from_secs(5),
        || placed(2) == [Some(0); 3],
    );

    // One idempotency key under two tokens: two VMs; retried under the first token through
    // another front door: the first VM.
    let key = "build-7";
    let mut team_a = fleet.body();
    team_a["labels"] = json!({"team": "a"});
    let mut team_b = fleet.body();
    team_b["labels"] = json!({"team": "b"});
    let as_a = [("Idempotency-Key", key), ("Authorization", "Bearer team-a")];
    let as_b = [("Idempotency-Key", key), ("Authorization", "Bearer team-b")];
    let (status, a) = fleet.create_on(0, &team_a, &as_a);
    assert_eq!(status, 202, "{a}");
    let (status, b) = fleet.create_on(1, &team_b, &as_b);
    assert_eq!(status, 202, "{b}");
    assert_ne!(a["id"], b["id"], "two tokens, one key: two VMs: {a} {b}");
    assert_eq!(b["labels"]["team"], "b", "{b}");
    let (status, again) = fleet.create_on(2, &team_a, &as_a);
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], a["id"], "{again}");
    let a_host = a["host"].as_str().unwrap().to_string();
    let b_host = b["host"].as_str().unwrap().to_string();
    assert_ne!(a_host, b_host, "--max-vms 1: {a} {b}");
    assert!(a_host != "h2" && b_host != "h2", "h2 has no room: {a} {b}");
    // One slot each, none left behind by the retry.
    wait_until(
        "one slot taken on h0 and h1",
        Duration::from_secs(5),
        || placed(2) == [Some(1), Some(1), Some(0)],
    );

    // h0 and h1 are full, h2 has a slot but neither the image nor room for it: the refusal
    // says so.
    let (status, refusal) = fleet.create_on(2, &fleet.body(), &[]);
    assert_eq!(status, 503, "{refusal}");
    assert_eq!(refusal["code"], "capacity-exhausted", "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("none of them has disk room"),
        "{refusal}"
    );

    // The host of team a's VM dies: that VM reads host-lost, and the list's filters apply
    // to it as to the living.
    let dead: usize = a_host[1..].parse().unwrap();
    fleet.hosts[dead].take().unwrap().kill();
    let a_id = a["id"].as_str().unwrap().to_string();
    let b_id = b["id"].as_str().unwrap().to_string();
    wait_until(
        "team a's VM to read host-lost",
        Duration::from_secs(20),
        || {
            let vm = request(
                "GET",
                &fleet.host(2).url(&format!("/vms/{a_id}")),
                None,
                &[],
            )
            .1;
            vm["error"]["code"] == "host-lost"
        },
    );
    let ids = |query: &str| -> Vec<String> {
        let (status, list) = request(
            "GET",
            &fleet.host(2).url(&format!("/vms?{query}")),
            None,
            &[],
        );
        assert_eq!(status, 200, "{query}: {list}");
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|vm| vm["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(ids(""), both);
    assert_eq!(ids("status=failed"), [a_id.as_str()]);
    assert!(!ids("status=running&status=provisioning").contains(&a_id));
    assert_eq!(ids("label=team=a"), [a_id.as_str()]);
    assert_eq!(ids("label=team%3Db"), [b_id.as_str()]);
    assert_eq!(ids(&format!("host={a_host}")), [a_id.as_str()]);
    assert_eq!(
        ids(&format!("host={a_host}&status=running")),
        Vec::<String>::new()
    );
    assert_eq!(ids(&format!("host={b_host}")), [b_id.as_str()]);
    assert_eq!(ids("pool=p"), Vec::<String>::new());

    // Deleted while its host is gone, the VM is gone for good: its host, back on the same
    // folder, destroys it instead of running it on.
    let a_on_h2 = fleet.host(2).url(&format!("/vms/{a_id}"));
    let on_h2 = |method: &str| request(method, &a_on_h2, None, &[]).0;
    assert_eq!(on_h2("DELETE"), 204);
    assert_eq!(on_h2("GET"), 404);
    assert_eq!(ids(""), [b_id.as_str()]);
    fleet.hosts[dead] = Some(fleet.launch(dead, roomy));
    fleet.wait_hosts(3);
    wait_until(
        "the dead host, back, to destroy the deleted VM",
        Duration::from_secs(20),
        || {
            let (_, local) = request(
                "GET",
                &fleet.host(dead).url("/vms"),
                None,
                &[("X-OSX-Builder-Forwarded-By", "test")],
            );
            local.as_array().is_some_and(Vec::is_empty)
        },
    );
    assert_eq!(on_h2("GET"), 404);
    assert!(
        fleet.host(dead).log().contains("destroying it"),
        "{}",
        fleet.host(dead).log()
    );
}

/// A server without --etcd: `host list` says it is not part of a fleet; a pre-warm with
/// `hosts` is its own, answered as ever.
#[test]
fn a_lone_server_has_no_hosts_and_prewarms_alone() {
    let world = common::World::start("lone-hosts", common::ServerOptions::default());
    let base = world.server.base.clone();
    let out = client(&base, &["host", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not part of a fleet"), "{}", show(&out));
    assert!(out.stdout.is_empty(), "{}", show(&out));
    let mut body = world.body()["image"].clone();
    body["hosts"] = json!(2);
    let (status, entry) = request(
        "POST",
        &world.server.url("/images"),
        Some(&body.to_string()),
        &[],
    );
    assert!(status == 200 || status == 202, "{status} {entry}");
    assert!(
        entry["state"].is_string() && entry.get("hosts").is_none(),
        "{entry}"
    );
    let out = client(&base, &["image", "list"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("HOSTS"),
        "{}",
        show(&out)
    );
}
