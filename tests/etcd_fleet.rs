//! A fleet of three hosts on a real 3-member etcd: membership, placement (pool first, then
//! the cached image), --max-vms held fleet-wide under concurrent creates through two front
//! doors, fleet-wide idempotency, and every VM call through a host that does not own it;
//! the fleet's `/metrics` on two hosts.

mod common;

use std::thread;
use std::time::Duration;

use common::fleet::{refused_start, wait_until, Fleet};
use common::http::{call_str, request};
use osx_builder::fleet::etcd::Client;
use serde_json::{json, Value};

#[test]
fn a_fleet_places_forwards_and_answers_for_every_vm() {
    let Some(fleet) = Fleet::start(3, &["--max-vms", "2"]) else {
        return;
    };

    // Membership: every host sees the three, with their URL and limits.
    let seen = fleet.hosts_seen_by(0);
    assert_eq!(seen["fleet"]["state"], "joined", "{seen}");
    let h1 = fleet.record(0, "h1").unwrap();
    assert_eq!(h1["url"], fleet.host(1).base, "{h1}");
    assert_eq!(h1["max_vms"], 2);
    assert_eq!(h1["hypervisor"], "vmware");

    // A second live host named h1 refuses to start.
    let args = fleet.args(1, &[]);
    let said = refused_start(&args);
    assert!(said.contains("a live host named h1"), "{said}");
    // Under another --etcd-prefix the name is free: another fleet on the same etcd, which
    // sees none of this one's hosts (nor they it).
    let mut other_fleet = args.clone();
    let at = other_fleet
        .iter()
        .position(|a| a == "--etcd-prefix")
        .unwrap();
    other_fleet[at + 1] = format!("{}other/", fleet.prefix);
    let other_fleet: Vec<&str> = other_fleet.iter().map(String::as_str).collect();
    let dir = common::TempDir::new("fleet-other-prefix");
    let other = common::Server::start_with(dir.path(), common::options(&other_fleet));
    // Its start line comes once it holds the fleet in view: it lists itself and places a
    // create at once, not a moment later.
    let alone = request("GET", &other.url("/hosts"), None, &[]).1;
    let (status, vm) = request(
        "POST",
        &other.url("/vms"),
        Some(&fleet.body().to_string()),
        &[],
    );
    assert_eq!((status, &vm["host"]), (202, &json!("h1")), "{vm}");
    let names: Vec<&str> = alone["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, ["h1"], "{alone}");
    assert_eq!(alone["hosts"][0]["url"], other.base, "{alone}");
    drop(other);
    fleet.wait_hosts(3);
    assert_eq!(fleet.record(0, "h1").unwrap()["url"], fleet.host(1).base);

    // Records that do not parse, or claim another host's name, are logged with their key
    // and skipped; no host minds them.
    let etcd = Client::new(
        fleet
            .cluster
            .endpoints()
            .split(',')
            .map(String::from)
            .collect(),
        None,
    );
    let key = |rest: &str| format!("{}{rest}", fleet.prefix);
    etcd.put(key("hosts/broken").as_bytes(), b"{not json", 0)
        .unwrap();
    let mut intruder = fleet.record(0, "h2").unwrap();
    intruder["name"] = json!("h1");
    intruder["url"] = json!("http://127.0.0.1:9");
    etcd.put(
        key("hosts/intruder").as_bytes(),
        intruder.to_string().as_bytes(),
        0,
    )
    .unwrap();
    let stray = "7d1e3b0c-55a4-4c38-9f0e-0d2b1c3a4e5f";
    etcd.put(key(&format!("vms/{stray}")).as_bytes(), b"[1,", 0)
        .unwrap();
    wait_until(
        "h0 to skip the bad records",
        Duration::from_secs(10),
        || {
            let log = fleet.host(0).log();
            log.contains(&format!(
                "fleet: skipped the host record {}: ",
                key("hosts/broken")
            )) && log.contains(&format!(
                "fleet: skipped the host record {}: it claims the name \"h1\"",
                key("hosts/intruder")
            ))
        },
    );
    assert_eq!(
        request(
            "GET",
            &fleet.host(0).url(&format!("/vms/{stray}")),
            None,
            &[]
        )
        .0,
        404
    );
    assert!(
        fleet
            .host(0)
            .log()
            .contains(&format!("fleet: skipped the directory entry of vm={stray}")),
        "{}",
        fleet.host(0).log()
    );
    for n in 0..3 {
        let seen = fleet.hosts_seen_by(n);
        assert_eq!(seen["hosts"].as_array().map(Vec::len), Some(3), "{seen}");
    }
    assert_eq!(fleet.record(2, "h1").unwrap()["url"], fleet.host(1).base);

    // The image cached on h1: a create at h0 goes there.
    fleet.prewarm_on(1);
    let (status, vm) = fleet.create_on(0, &fleet.body(), &[]);
    assert_eq!(status, 202, "{vm}");
    assert_eq!(vm["host"], "h1", "placed where the image is: {vm}");
    let cached_id = vm["id"].as_str().unwrap().to_string();

    // A warm pool on h2: a matching create at h0 takes its idle VM.
    let mut spec = fleet.body();
    spec["size"] = json!(1);
    let answer = call_str(
        "PUT",
        &fleet.host(2).url("/pools/p"),
        Some(&spec.to_string()),
        &[],
    );
    assert!(
        answer.status == 201 || answer.status == 200,
        "{}",
        answer.text()
    );
    wait_until(
        "h0 to see h2's idle pool VM",
        Duration::from_secs(30),
        || {
            fleet
                .record(0, "h2")
                .is_some_and(|r| r["pools"][0]["ready"].as_u64() == Some(1))
        },
    );
    let (status, vm) = fleet.create_on(0, &fleet.body(), &[]);
    assert_eq!(status, 202, "{vm}");
    assert_eq!(vm["host"], "h2", "placed where the pool is: {vm}");
    let pooled_id = vm["id"].as_str().unwrap().to_string();
    let placed = "osx_builder_fleet_placements_total{reason=";
    assert_eq!(metric_on(&fleet, 0, &format!("{placed}\"image\"}}")), 1.0);
    assert_eq!(metric_on(&fleet, 0, &format!("{placed}\"pool\"}}")), 1.0);

    // Any host answers for any VM: GET, long poll, renew, log, list, DELETE through h0
    // for a VM on h1.
    let get =
        |n: usize, id: &str| request("GET", &fleet.host(n).url(&format!("/vms/{id}")), None, &[]);
    let vm = wait_until_running(&fleet, 0, &cached_id);
    assert_eq!(vm["host"], "h1");
    let answer = call_str(
        "GET",
        &fleet.host(0).url(&format!("/vms/{cached_id}")),
        None,
        &[],
    );
    let etag = answer.header("ETag").unwrap().to_string();
    let started = std::time::Instant::now();
    let polled = call_str(
        "GET",
        &fleet.host(0).url(&format!("/vms/{cached_id}?wait=1")),
        None,
        &[("If-None-Match", &etag)],
    );
    assert_eq!(polled.status, 304, "{}", polled.text());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the long poll waited on the owner"
    );
    let log = call_str(
        "GET",
        &fleet.host(2).url(&format!("/vms/{cached_id}/log")),
        None,
        &[],
    );
    let own_log = call_str(
        "GET",
        &fleet.host(1).url(&format!("/vms/{cached_id}/log")),
        None,
        &[],
    );
    assert_eq!((log.status, own_log.status), (200, 200), "{}", log.text());
    assert!(
        log.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        log.headers
    );
    assert!(
        !own_log.body.is_empty()
            && log
                .body
                .starts_with(&own_log.body[..own_log.body.len().min(64)]),
        "{}",
        log.text()
    );
    let (status, renewed) = request(
        "POST",
        &fleet.host(2).url(&format!("/vms/{cached_id}/renew")),
        Some(r#"{"ttl": 600}"#),
        &[],
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["ttl"], 600);
    let (status, list) = request("GET", &fleet.host(0).url("/vms"), None, &[]);
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert!(
        ids.contains(&cached_id.as_str()) && ids.contains(&pooled_id.as_str()),
        "{list}"
    );
    let (_, only_h1) = request("GET", &fleet.host(0).url("/vms?host=h1"), None, &[]);
    assert!(
        only_h1
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["host"] == "h1"),
        "{only_h1}"
    );
    let (status, _) = request(
        "DELETE",
        &fleet.host(2).url(&format!("/vms/{cached_id}")),
        None,
        &[],
    );
    assert_eq!(status, 204);
    assert_eq!(get(0, &cached_id).0, 404);
    assert_eq!(get(1, &cached_id).0, 404);
    let (status, _) = request(
        "DELETE",
        &fleet.host(0).url(&format!("/vms/{pooled_id}")),
        None,
        &[],
    );
    assert_eq!(status, 204);

    // One idempotency key, retried through two front doors: one VM.
    let key = [("Idempotency-Key", "build-42")];
    let (first_status, first) = fleet.create_on(0, &fleet.body(), &key);
    let (second_status, second) = fleet.create_on(1, &fleet.body(), &key);
    assert_eq!(
        (first_status, second_status),
        (202, 202),
        "{first} {second}"
    );
    assert_eq!(first["id"], second["id"], "{first} {second}");
    let id = first["id"].as_str().unwrap().to_string();
    let (status, _) = request(
        "DELETE",
        &fleet.host(1).url(&format!("/vms/{id}")),
        None,
        &[],
    );
    assert_eq!(status, 204);
    let placed = || -> Vec<Option<u64>> {
        (0..3)
            .map(|n| {
                fleet
                    .record(0, &format!("h{n}"))
                    .and_then(|r| r["placed"].as_u64())
            })
            .collect()
    };
    // h2 keeps one slot: its pool refilled.
    let freed = wait_until_or("every slot to be free", Duration::from_secs(20), || {
        placed() == [Some(0), Some(0), Some(1)]
    });
    assert!(
        freed,
        "slots placed: {:?}; {}",
        placed(),
        fleet.hosts_seen_by(0)
    );

    // 2 front doors x 20 concurrent creates: --max-vms 2 holds on every host (h2 keeps
    // its pool VM: 5 places in all).
    let answers: Vec<(u16, Value)> = thread::scope(|scope| {
        let asks: Vec<_> = (0..40)
            .map(|n| {
                let fleet = &fleet;
                scope.spawn(move || fleet.create_on(n % 2, &fleet.body(), &[]))
            })
            .collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, v)| v)
        .collect();
    for (status, body) in &answers {
        assert!(*status == 202 || *status == 503, "{status} {body}");
        if *status == 503 {
            assert_eq!(body["code"], "capacity-exhausted", "{body}");
        }
    }
    for n in 0..3 {
        let name = format!("h{n}");
        let local = fleet.local_vms(n);
        let count = local.len();
        assert!(count <= 2, "{name} holds {count} VMs: {local:?}");
        let placed_here = created
            .iter()
            .filter(|v| v["host"] == name.as_str())
            .count();
        assert!(placed_here <= 2, "{name} got {placed_here} creates");
    }
    assert!(
        created.len() >= 4,
        "only {} creates were placed: {answers:?}",
        created.len()
    );
}

/// What host `n`'s `/metrics` says on the line that starts with `line_start`.
fn metric_on(fleet: &Fleet, n: usize, line_start: &str) -> f64 {
    let text = call_str("GET", &fleet.host(n).url("/metrics"), None, &[]).text();
    common::metric(&text, line_start).unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[test]
fn fleet_metrics_count_placements_forwards_the_lease_and_etcd() {
    let Some(mut fleet) = Fleet::start(2, &["--max-vms", "1"]) else {
        return;
    };
    // h0 drains: as a front door it places every create on h1, forwarded.
    assert_eq!(
        request("POST", &fleet.host(0).url("/drain"), None, &[]).0,
        200
    );
    wait_until("h0 to see itself draining", Duration::from_secs(10), || {
        fleet.record(0, "h0").is_some_and(|r| r["draining"] == true)
    });
    let (status, vm) = fleet.create_on(0, &fleet.body(), &[]);
    assert_eq!((status, &vm["host"]), (202, &json!("h1")), "{vm}");
    // h1 is full and h0 drains: refused.
    let (status, refusal) = fleet.create_on(0, &fleet.body(), &[]);
    assert_eq!(status, 503, "{refusal}");
    // Both drain: refused, saying so.
    let drain = |n: usize, path: &str| {
        assert_eq!(request("POST", &fleet.host(n).url(path), None, &[]).0, 200);
    };
    let seen_draining = |n: usize, draining: bool| {
        wait_until(
            &format!("h0 to see h{n} draining: {draining}"),
            Duration::from_secs(10),
            || {
                fleet
                    .record(0, &format!("h{n}"))
                    .is_some_and(|r| r["draining"] == draining)
            },
        );
    };
    drain(1, "/drain");
    seen_draining(1, true);
    let (status, refusal) = fleet.create_on(0, &fleet.body(), &[]);
    assert_eq!(
        (status, &refusal["code"]),
        (503, &json!("capacity-exhausted"))
    );
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .starts_with("every host of the fleet is draining"),
        "{refusal}"
    );
    drain(1, "/undrain");
    let id = vm["id"].as_str().unwrap();
    let deleted = request(
        "DELETE",
        &fleet.host(0).url(&format!("/vms/{id}")),
        None,
        &[],
    );
    assert_eq!(deleted.0, 204);
    let freed = wait_until_or("h0 to see h1's slot free", Duration::from_secs(10), || {
        fleet
            .record(0, "h1")
            .is_some_and(|r| r["placed"] == 0 && r["vms"] == 0)
    });
    assert!(
        freed,
        "{:?}\n{}",
        fleet.record(0, "h1"),
        fleet.host(1).log()
    );
    // h1 holds the image and h0 takes creates again: h1 comes first.
    fleet.prewarm_on(1);
    drain(0, "/undrain");
    seen_draining(0, false);
    seen_draining(1, false);
    // h1 dies: the create placed there is not forwarded (h0 still sees h1 until its lease
    // ends), so it is placed once more, on h0, under the same id: the client sees one VM.
    // Then h0 counts the host lost.
    fleet.hosts[1].take().unwrap().kill();
    let (status, vm) = fleet.create_on(0, &fleet.body(), &[]);
    assert_eq!((status, &vm["host"]), (202, &json!("h0")), "{vm}");
    let id = vm["id"].as_str().unwrap();
    let log = fleet.host(0).log();
    assert!(
        log.contains(&format!("vm={id} forwarding to h1 failed"))
            && log.contains("placing it once more elsewhere"),
        "{log}"
    );
    let local = fleet.local_vms(0);
    assert_eq!(
        local.iter().map(|v| &v["id"]).collect::<Vec<_>>(),
        [id],
        "{local:?}"
    );
    // h0 is full now and h1, dead, is still in the fleet until its lease ends: the one
    // host that could take the next create does not answer, and the refusal says so.
    let refused = call_str(
        "POST",
        &fleet.host(0).url("/vms"),
        Some(&fleet.body().to_string()),
        &[],
    );
    let refusal = refused.json();
    assert_eq!(
        (refused.status, &refusal["code"]),
        (503, &json!("fleet-unavailable")),
        "{refusal}"
    );
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("h1, the only host that could take this create, did not answer")
            && message.contains("retry in 5 s (Retry-After)"),
        "{refusal}"
    );
    assert_eq!(
        refused.header("Retry-After"),
        Some("5"),
        "{:?}",
        refused.headers
    );
    assert_eq!(fleet.local_vms(0).len(), 1);
    wait_until("h0 to count h1 lost", Duration::from_secs(15), || {
        metric_on(&fleet, 0, "osx_builder_fleet_hosts_lost_total ") == 1.0
    });
    // etcd gone: keepalives and requests fail, and say how.
    for n in 0..3 {
        fleet.cluster.kill_member(n);
    }
    wait_until("h0 to say degraded", Duration::from_secs(10), || {
        metric_on(&fleet, 0, "osx_builder_fleet_joined ") == 0.0
    });

    let text = call_str("GET", &fleet.host(0).url("/metrics"), None, &[]).text();
    let value =
        |line: &str| common::metric(&text, line).unwrap_or_else(|| panic!("no {line} in\n{text}"));
    let fleet_families = text
        .lines()
        .filter(|l| l.starts_with("# TYPE osx_builder_fleet_"))
        .count();
    assert_eq!(fleet_families, 12, "{text}");
    let eq = |line: &str, want: f64| assert_eq!(value(line), want, "{line}\n{text}");
    // The first create found no image on h1 (free slots); the last two found it there:
    // one was placed again on h0 when h1 did not answer, the other had nowhere else to
    // go (fleet-unavailable, not a refusal for capacity: all-full is the one of before).
    eq(r#"osx_builder_fleet_placements_total{reason="slots"}"#, 1.0);
    eq(r#"osx_builder_fleet_placements_total{reason="image"}"#, 2.0);
    eq(r#"osx_builder_fleet_placements_total{reason="retry"}"#, 1.0);
    eq(r#"osx_builder_fleet_placements_total{reason="pool"}"#, 0.0);
    eq(
        r#"osx_builder_fleet_refusals_total{reason="all-full"}"#,
        1.0,
    );
    eq(
        r#"osx_builder_fleet_refusals_total{reason="all-draining"}"#,
        1.0,
    );
    eq("osx_builder_fleet_placement_decision_seconds_count ", 5.0);
    eq(
        r#"osx_builder_fleet_placement_decision_seconds_bucket{le="+Inf"}"#,
        5.0,
    );
    eq("osx_builder_fleet_forwards_total ", 3.0);
    eq("osx_builder_fleet_forward_seconds_count ", 1.0);
    assert!(
        value("osx_builder_fleet_forward_seconds_sum ") > 0.0,
        "{text}"
    );
    // The dead host's port refuses (connect); a pooled connection to it breaks (broken).
    let failures = ["connect", "timeout", "tls", "broken", "refused"].map(|kind| {
        value(&format!(
            "osx_builder_fleet_forward_failures_total{{kind=\"{kind}\"}}"
        ))
    });
    assert_eq!(failures[0] + failures[3], 2.0, "{text}");
    assert_eq!(failures.iter().sum::<f64>(), 2.0, "{text}");
    eq("osx_builder_fleet_proxied_total ", 1.0);
    assert!(value(r#"osx_builder_fleet_lease_renewals_total{outcome="ok"}"#) >= 1.0);
    assert!(value(r#"osx_builder_fleet_lease_renewals_total{outcome="failed"}"#) >= 1.0);
    eq(
        r#"osx_builder_fleet_lease_renewals_total{outcome="expired"}"#,
        0.0,
    );
    assert!(value(r#"osx_builder_fleet_etcd_errors_total{kind="unreachable"}"#) >= 1.0);
    eq(
        r#"osx_builder_fleet_etcd_errors_total{kind="malformed"}"#,
        0.0,
    );
    let requests = value("osx_builder_fleet_etcd_request_seconds_count ");
    assert!(requests >= 10.0, "{text}");
    assert_eq!(
        value(r#"osx_builder_fleet_etcd_request_seconds_bucket{le="+Inf"}"#),
        requests
    );
    // Requests to a live loopback etcd take milliseconds: most are under 100 ms.
    assert!(
        value(r#"osx_builder_fleet_etcd_request_seconds_bucket{le="0.1"}"#) >= requests / 2.0,
        "{text}"
    );
}

fn wait_until_or(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let _ = what;
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_until_running(fleet: &Fleet, n: usize, id: &str) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("{id} to run"), Duration::from_secs(30), || {
        last = request("GET", &fleet.host(n).url(&format!("/vms/{id}")), None, &[]).1;
        assert_ne!(last["status"], "failed", "{last}");
        last["status"] == "running" && last["ip_address"] != ""
    });
    last
}

/// etcd's usual production set-up: TLS with client certificates. With --etcd-ca-file,
/// --etcd-cert and --etcd-key a host joins; without its certificate, or without the CA
/// that signed etcd's, it cannot, and stops saying so.
#[test]
fn a_host_reaches_etcd_over_tls_with_its_client_certificate() {
    let pki = common::pki::Pki::new();
    let pem = common::TempDir::new("etcd-tls");
    let write = |name: &str, text: &str| {
        let path = pem.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (member, client) = (pki.local(), pki.leaf(&["h0"], false));
    let ca = write("ca.pem", &pki.ca_pem);
    let tls = common::etcd::Tls {
        cert: write("etcd.pem", &member.cert),
        key: write("etcd-key.pem", &member.key),
        ca: ca.clone(),
    };
    let Some(cluster) = common::etcd::Cluster::start_with(1, Some(&tls)) else {
        return;
    };
    let endpoints = cluster.endpoints();
    assert!(endpoints.starts_with("https://"), "{endpoints}");
    let (cert, key) = (
        write("h0.pem", &client.cert),
        write("h0-key.pem", &client.key),
    );
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (path(&ca), path(&cert), path(&key));
    let fleet = [
        "--etcd",
        &endpoints,
        "--host-name",
        "h0",
        "--fleet-ttl",
        "3",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        fleet.iter().chain(extra).map(|s| s.to_string()).collect()
    };

    let root = common::TempDir::new("etcd-tls-h0");
    let args = with(&[
        "--etcd-ca-file",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
        "--fleet-optional",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = common::Server::start_with(root.path(), common::options(&args));
    let mut seen = Value::Null;
    wait_until("h0 to join over TLS", Duration::from_secs(20), || {
        seen = request("GET", &server.url("/hosts"), None, &[]).1;
        seen["fleet"]["state"] == "joined" && seen["hosts"][0]["name"] == "h0"
    });

    for (missing, extra) in [
        ("its client certificate", with(&["--etcd-ca-file", &ca])),
        (
            "the CA of etcd's certificate",
            with(&["--etcd-cert", &cert, "--etcd-key", &key]),
        ),
    ] {
        let said = refused_start(&extra);
        assert!(
            said.contains(&format!("cannot join the fleet at {endpoints}")),
            "without {missing}: {said}"
        );
    }
}
