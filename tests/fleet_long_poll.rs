//! Long polls through the real binary: `GET /vms/:id?wait=` answers on a change or at the
//! end of the wait, with `ETag` / `If-None-Match`, and never takes every HTTP thread.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::ServerOptions;
use common::{http::call_str, options, World};

fn get(world: &World, id: &str, query: &str, headers: &[(&str, &str)]) -> common::http::Answer {
    call_str(
        "GET",
        &world.server.url(&format!("/vms/{id}{query}")),
        None,
        headers,
    )
}

#[test]
fn a_long_poll_answers_when_the_vm_changes_and_one_poll_replaces_many() {
    // The IP comes three seconds after the start: polls would take dozens of GETs.
    let w = World::start(
        "poll-change",
        ServerOptions {
            env: vec![("VMRUN_SIM_IP_DELAY_MS".into(), "3000".into())],
            args: Vec::new(),
        },
    );
    let id = w.create(&w.body());
    let mut answers = 0;
    let started = Instant::now();
    let vm = loop {
        let answer = get(&w, &id, "?wait=30", &[]);
        assert_eq!(answer.status, 200, "{}", answer.text());
        answers += 1;
        let vm = answer.json();
        if vm["ip_address"] != "" {
            break vm;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{vm}");
    };
    assert_eq!(vm["status"], "running");
    // Only state changes (running with an IP, here) end a wait: an answer or two, not
    // the dozens a poll every 100 ms would take (tests/coordinator.rs asserts one).
    assert!(answers < 30, "{answers} answers");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the IP was answered when it came, not at the end of a wait: {:?}",
        started.elapsed()
    );
}

#[test]
fn etags_answer_304_and_a_wait_on_a_settled_vm_runs_out() {
    let w = World::start("poll-etag", options(&[]));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let first = get(&w, &id, "", &[]);
    let tag = first.header("ETag").expect("an ETag").to_string();
    assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
    assert_eq!(get(&w, &id, "", &[]).header("ETag"), Some(tag.as_str()));

    let same = get(&w, &id, "", &[("If-None-Match", &tag)]);
    assert_eq!(same.status, 304);
    assert!(same.body.is_empty());
    assert_eq!(same.header("ETag"), Some(tag.as_str()));

    // A stale tag: the current object at once, whatever the wait.
    let started = Instant::now();
    let stale = get(
        &w,
        &id,
        "?wait=60",
        &[("If-None-Match", "\"0000000000000000\"")],
    );
    assert_eq!(stale.status, 200);
    assert!(started.elapsed() < Duration::from_secs(30));

    // Nothing changes on a settled VM: the wait runs out, 304 with the tag, 200 without.
    let started = Instant::now();
    let unchanged = get(&w, &id, "?wait=1", &[("If-None-Match", &tag)]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(unchanged.status, 304);
    let started = Instant::now();
    let plain = get(&w, &id, "?wait=1", &[]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["id"], id.as_str());

    // A renew changes the object: a waiter hears of it.
    let waiter = {
        let url = w.server.url(&format!("/vms/{id}?wait=60"));
        let tag = tag.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let answer = call_str("GET", &url, None, &[("If-None-Match", &tag)]);
            (answer.status, answer.json(), started.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(300));
    let renewed = call_str(
        "POST",
        &w.server.url(&format!("/vms/{id}/renew")),
        Some(r#"{"ttl": 600}"#),
        &[],
    );
    assert_eq!(renewed.status, 200);
    let (status, vm, took) = waiter.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(vm["ttl"], 600);
    assert!(took < Duration::from_secs(30), "{took:?}");

    // A delete ends a wait: the waiter sees the VM being destroyed (or already gone).
    let waiter = {
        let url = w.server.url(&format!("/vms/{id}?wait=60"));
        thread::spawn(move || call_str("GET", &url, None, &[]))
    };
    thread::sleep(Duration::from_millis(300));
    assert_eq!(w.server.delete_vm(&id).0, 204);
    assert_deleting_or_gone(&waiter.join().unwrap());

    for bad in ["?wait=abc", "?wait=-1", "?wait="] {
        let answer = get(&w, &id, bad, &[]);
        assert_eq!(answer.json()["code"], "invalid-wait", "{bad}");
    }
}

#[test]
fn waiters_never_take_every_http_thread() {
    // Three HTTP threads: at most two long polls wait, the third answers at once, and a
    // plain GET still finds a thread.
    let w = World::start(
        "poll-cap",
        options(&["--http-threads", "3", "--max-waiters", "8"]),
    );
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let url = w.server.url(&format!("/vms/{id}?wait=60"));
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || call_str("GET", &url, None, &[]))
        })
        .collect();
    common::eventually("two long polls waiting", || {
        let metrics = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
        metrics
            .lines()
            .any(|l| l == "osx_builder_long_polls_waiting 2")
            .then_some(())
    });
    let started = Instant::now();
    let third = call_str("GET", &url, None, &[]);
    assert_eq!(third.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "past the cap a wait answers at once: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(w.server.get_vm(&id).0, 200);
    assert_eq!(w.vm_count(), 1);
    assert!(started.elapsed() < Duration::from_secs(30));
    // The waiters end with the change a delete makes.
    assert_eq!(w.server.delete_vm(&id).0, 204);
    for waiter in waiters {
        assert_deleting_or_gone(&waiter.join().unwrap());
    }
}

fn assert_deleting_or_gone(answer: &common::http::Answer) {
    let vm = answer.json();
    match answer.status {
        200 => assert_eq!(vm["progress"]["phase"], "deleting", "{vm}"),
        404 => assert_eq!(vm["code"], "vm-not-found"),
        other => panic!("{other}: {vm}"),
    }
}
