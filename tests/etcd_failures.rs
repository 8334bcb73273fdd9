//! A fleet when things break: a host SIGKILLed (its VMs read host-lost from the others
//! within TTL + 2 s; it restarts, destroys what the fleet declared lost, and its slot is
//! used again), a host SIGSTOPped past its TTL and continued (cut off, then rejoins), one
//! etcd member killed (nothing changes), and all of etcd stopped then back.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{refused_start, wait_until, Fleet, TTL};
use common::http::{call_str, request};
use serde_json::Value;

fn get(fleet: &Fleet, n: usize, path: &str) -> (u16, Value) {
    request("GET", &fleet.host(n).url(path), None, &[])
}

/// One VM on each host (--max-vms 1): id by host.
fn one_each(fleet: &Fleet) -> Vec<String> {
    let mut ids = vec![String::new(); 3];
    for _ in 0..3 {
        let (status, vm) = request(
            "POST",
            &fleet.host(0).url("/vms"),
            Some(&fleet.body().to_string()),
            &[],
        );
        assert_eq!(status, 202, "{vm}");
        let host: usize = vm["host"].as_str().unwrap()[1..].parse().unwrap();
        ids[host] = vm["id"].as_str().unwrap().to_string();
    }
    assert!(ids.iter().all(|id| !id.is_empty()), "{ids:?}");
    ids
}

fn wait_until_or(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn standing(fleet: &Fleet, n: usize) -> String {
    let (_, health) = get(fleet, n, "/healthz");
    health["fleet"]["state"].as_str().unwrap_or("").to_string()
}

#[test]
fn hosts_die_and_come_back_and_etcd_goes_away() {
    let Some(mut fleet) = Fleet::start(3, &["--max-vms", "1"]) else {
        return;
    };
    let ids = one_each(&fleet);
    // A first start is a join, never a rejoin: nothing was there to reconcile.
    for n in 0..3 {
        let log = fleet.host(n).log();
        assert!(
            log.contains(&format!("fleet: h{n} registered at ")),
            "{log}"
        );
        assert!(
            !log.contains("rejoined") && !log.contains("joined with"),
            "{log}"
        );
    }

    // SIGKILL h2: its VM reads failed host-lost from h0 within TTL + 2 s.
    let killed_at = Instant::now();
    fleet.hosts[2].take().unwrap().kill();
    let mut last = Value::Null;
    let lost_after = wait_until_or(Duration::from_secs(TTL + 10), || {
        last = get(&fleet, 0, &format!("/vms/{}", ids[2])).1;
        last["status"] == "failed" && last["error"]["code"] == "host-lost"
    })
    .unwrap_or_else(|| {
        panic!(
            "h2's VM never read host-lost from h0: {last}\nhosts: {}\nh0 log:\n{}",
            fleet.hosts_seen_by(0),
            fleet.host(0).log()
        )
    });
    let lost_after = killed_at.elapsed().max(lost_after);
    eprintln!("SIGKILL -> host-lost visible after {lost_after:?} (fleet ttl {TTL} s)");
    assert!(lost_after <= Duration::from_secs(TTL + 2), "{lost_after:?}");
    // Every host is full or gone: the fleet says so, and when to try again.
    let refused = call_str(
        "POST",
        &fleet.host(1).url("/vms"),
        Some(&fleet.body().to_string()),
        &[],
    );
    let refusal = refused.json();
    assert_eq!(refused.status, 503, "{refusal}");
    assert_eq!(refusal["code"], "capacity-exhausted");
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("is full (--max-vms)")),
        "{refusal}"
    );
    assert!(
        refused
            .header("Retry-After")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|secs| secs > 0),
        "{:?}",
        refused.headers
    );

    // h2 restarts on its folder: it destroys the VM the fleet declared lost, and its slot
    // takes the next create.
    fleet.hosts[2] = Some(fleet.launch(2, &["--max-vms", "1"]));
    fleet.wait_hosts(3);
    wait_until("h2 to destroy its lost VM", Duration::from_secs(20), || {
        fleet.local_vms(2).is_empty()
    });
    let mut placed = Value::Null;
    wait_until(
        "a create to land on h2 again",
        Duration::from_secs(20),
        || {
            let (status, vm) = request(
                "POST",
                &fleet.host(0).url("/vms"),
                Some(&fleet.body().to_string()),
                &[],
            );
            placed = vm;
            status == 202
        },
    );
    assert_eq!(placed["host"], "h2", "{placed}");
    // Back after a crash is a join with what was on disk, not a rejoin.
    let log = fleet.host(2).log();
    assert!(
        log.contains("fleet: h2 joined with 1 VM(s) of its own; 1 of them the fleet had declared lost are being destroyed"),
        "{log}"
    );
    assert!(!log.contains("rejoined"), "{log}");

    // SIGSTOP h1 past its TTL: the fleet counts it lost; SIGCONT: it finds its lease gone,
    // says so, rejoins and destroys the VM the fleet declared lost.
    let pid = fleet.host(1).pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_until(
        "h1 VM to read host-lost",
        Duration::from_secs(TTL + 20),
        || get(&fleet, 0, &format!("/vms/{}", ids[1])).1["error"]["code"] == "host-lost",
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Right after SIGCONT h1 still says `joined` (it has not yet heard that its lease is
    // gone): wait for the way back from the partition itself.
    wait_until("h1 to rejoin", Duration::from_secs(20), || {
        standing(&fleet, 1) == "joined"
            && fleet
                .host(1)
                .log()
                .contains("joined as h1 (was partitioned)")
    });
    let log = fleet.host(1).log();
    assert!(
        log.contains("fleet: partitioned: the lease of h1 ended while it was cut off from etcd"),
        "{log}"
    );
    assert!(
        log.contains("fleet: h1 rejoined; 1 VM(s) the fleet had declared lost are being destroyed"),
        "{log}"
    );
    wait_until("h1 to destroy its lost VM", Duration::from_secs(20), || {
        fleet.local_vms(1).is_empty()
    });

    // One etcd member killed: creates and reads go on as before.
    fleet.cluster.kill_member(0);
    let (status, vm) = request(
        "DELETE",
        &fleet.host(1).url(&format!("/vms/{}", ids[0])),
        None,
        &[],
    );
    assert_eq!(status, 204, "{vm}");
    let mut made = Value::Null;
    wait_until(
        "a create with one etcd member down",
        Duration::from_secs(20),
        || {
            let (status, vm) = request(
                "POST",
                &fleet.host(2).url("/vms"),
                Some(&fleet.body().to_string()),
                &[],
            );
            made = vm;
            status == 202
        },
    );
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(get(&fleet, 2, &format!("/vms/{id}")).0, 200);
    assert_eq!(
        (0..3).map(|n| standing(&fleet, n)).collect::<Vec<_>>(),
        ["joined"; 3]
    );

    // All of etcd stopped: each host serves its own VMs, says the fleet is degraded, and
    // takes creates for itself.
    for n in 1..3 {
        fleet.cluster.kill_member(n);
    }
    wait_until(
        "every host to say the fleet is degraded",
        Duration::from_secs(20),
        || (0..3).all(|n| standing(&fleet, n) == "degraded"),
    );
    let (status, own) = get(&fleet, 0, &format!("/vms/{id}"));
    let owner = made["host"].as_str().unwrap()[1..]
        .parse::<usize>()
        .unwrap();
    assert_eq!(
        get(&fleet, owner, &format!("/vms/{id}")).0,
        200,
        "{own} {status}"
    );
    // h2 holds a VM and `made` is on h0 or h1: the other one of these has its slot free
    // and takes a create for itself; but none that a front door placed on it (it cannot
    // know whether the fleet still counts it).
    let empty = 1 - owner;
    assert!(owner < 2, "{made}");
    let (status, refused) = request(
        "POST",
        &fleet.host(empty).url("/vms"),
        Some(&fleet.body().to_string()),
        &[
            ("X-OSX-Builder-Forwarded-By", "h2"),
            (
                "X-OSX-Builder-Placed-Id",
                "5b1c0f1e-6a0e-4b7e-9c3a-2f4d8e6a1b2c",
            ),
        ],
    );
    assert_eq!(
        (status, &refused["code"]),
        (503, &Value::from("fleet-unavailable")),
        "{refused}"
    );
    assert!(fleet.local_vms(empty).is_empty());
    let (status, alone) = request(
        "POST",
        &fleet.host(empty).url("/vms"),
        Some(&fleet.body().to_string()),
        &[],
    );
    assert_eq!(status, 202, "{alone}");
    assert_eq!(alone["host"], format!("h{empty}"), "{alone}");
    let alone_id = alone["id"].as_str().unwrap().to_string();

    // etcd back: every host rejoins, and nothing is lost: the VM made alone is answered
    // for by the others too.
    for n in 0..3 {
        fleet.cluster.start_member(n);
    }
    fleet.cluster.wait_healthy();
    wait_until("every host to rejoin", Duration::from_secs(30), || {
        (0..3).all(|n| standing(&fleet, n) == "joined")
    });
    assert_eq!(get(&fleet, 2, &format!("/vms/{id}")).0, 200);
    wait_until(
        "the VM made while etcd was down to be known fleet-wide",
        Duration::from_secs(10),
        || {
            let (status, vm) = get(&fleet, 2, &format!("/vms/{alone_id}"));
            status == 200 && vm["host"] == format!("h{empty}")
        },
    );
}

/// An etcd that does not answer at start: the server stops and says what to do; with
/// --fleet-optional it serves alone (`degraded`), takes creates for itself, and joins once
/// etcd answers, with the VM it made meanwhile (a first join: not logged as a rejoin).
#[test]
fn an_etcd_silent_at_start_stops_the_server_unless_the_fleet_is_optional() {
    let Some(mut cluster) = common::etcd::Cluster::start(3) else {
        return;
    };
    let endpoints = cluster.endpoints();
    for n in 0..3 {
        cluster.kill_member(n);
    }
    let fleet_args = [
        "--etcd",
        &endpoints,
        "--host-name",
        "h0",
        "--fleet-ttl",
        "3",
        "--etcd-prefix",
        "/silent/",
    ];
    let said = refused_start(&fleet_args);
    assert!(
        said.contains(&format!("cannot join the fleet at {endpoints}"))
            && said.contains("set --fleet-optional"),
        "{said}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let advertised = format!("http://localhost:{port}");
    let mut args = fleet_args.to_vec();
    args.extend([
        "--fleet-optional",
        "--port",
        &port,
        "--advertise-url",
        &advertised,
    ]);
    let dir = common::TempDir::new("fleet-silent-etcd");
    let server = common::Server::start_with(dir.path(), common::options(&args));
    let health = request("GET", &server.url("/healthz"), None, &[]).1;
    assert_eq!(health["fleet"]["state"], "degraded", "{health}");
    assert!(
        server.log().contains("serving alone (--fleet-optional)"),
        "{}",
        server.log()
    );
    let files = common::http::FileServer::start();
    let archive = common::gold_tar_gz("box");
    let url = files.add("/gold.tar.gz", archive.clone());
    let body = common::image_body(&url, &common::sha1_hex(&archive));
    let (status, vm) = request("POST", &server.url("/vms"), Some(&body.to_string()), &[]);
    assert_eq!(
        (status, &vm["host"]),
        (202, &serde_json::json!("h0")),
        "{vm}"
    );

    for n in 0..3 {
        cluster.start_member(n);
    }
    cluster.wait_healthy();
    wait_until("h0 to join", Duration::from_secs(20), || {
        request("GET", &server.url("/healthz"), None, &[]).1["fleet"]["state"] == "joined"
    });
    // Joined means the fleet is in its view already: it lists itself, and a create is
    // placed (on it), right away.
    let hosts = request("GET", &server.url("/hosts"), None, &[]).1;
    let names: Vec<&Value> = hosts["hosts"]
        .as_array()
        .map(|h| h.iter().map(|h| &h["name"]).collect())
        .unwrap_or_default();
    assert_eq!(names, ["h0"], "{hosts}");
    let (status, second) = request("POST", &server.url("/vms"), Some(&body.to_string()), &[]);
    assert_eq!(
        (status, &second["host"]),
        (202, &serde_json::json!("h0")),
        "{second}"
    );
    let mut hosts = Value::Null;
    wait_until(
        "h0's slots to hold its two VMs",
        Duration::from_secs(10),
        || {
            hosts = request("GET", &server.url("/hosts"), None, &[]).1;
            hosts["hosts"][0]["placed"] == 2 && hosts["hosts"][0]["vms"] == 2
        },
    );
    assert_eq!(hosts["hosts"][0]["url"], advertised.as_str(), "{hosts}");
    let log = server.log();
    assert!(log.contains("fleet: joined as h0 (was degraded)"), "{log}");
    assert!(
        log.contains("fleet: h0 joined with 1 VM(s) of its own; 0 of them"),
        "{log}"
    );
    assert!(!log.contains("rejoined"), "{log}");
}
