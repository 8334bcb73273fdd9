//! The etcd gateway client against a real 3-member etcd: create-if-absent, compare-and-swap,
//! leases that end and take their keys, a watch that sees them go, and a member killed.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Cluster;
use osx_builder::fleet::etcd::{watch_prefix, Client, Event, WatchEnd};

#[test]
fn the_gateway_client_against_a_real_cluster() {
    let Some(mut cluster) = Cluster::start(3) else {
        return;
    };
    let endpoints: Vec<String> = cluster.endpoints().split(',').map(String::from).collect();
    let client = Client::new(endpoints, None);
    client.health().unwrap();

    // Create-if-absent: one winner; the loser sees the winner's value.
    assert!(client
        .create_if_absent(b"/t/a", b"first", 0)
        .unwrap()
        .is_none());
    let lost = client
        .create_if_absent(b"/t/a", b"second", 0)
        .unwrap()
        .unwrap();
    assert_eq!(lost.value, b"first");

    // Compare-and-swap on the mod revision: a stale revision loses.
    let kv = client.get(b"/t/a").unwrap().unwrap();
    assert!(client
        .put_if(b"/t/a", kv.mod_revision, b"swapped", 0)
        .unwrap()
        .is_none());
    let stale = client
        .put_if(b"/t/a", kv.mod_revision, b"late", 0)
        .unwrap()
        .unwrap();
    assert_eq!(stale.value, b"swapped");
    assert!(!client.delete_if(b"/t/a", kv.mod_revision).unwrap());

    // A key on a lease goes when the lease ends; the watch sees the delete.
    let (lease, ttl) = client.grant(2).unwrap();
    assert_eq!(ttl, 2);
    client.put(b"/t/leased", b"x", lease).unwrap();
    assert_eq!(client.keepalive(lease).unwrap(), Some(2));
    let (all, revision) = client.range_prefix(b"/t/").unwrap();
    assert_eq!(all.len(), 2);
    let mut next = revision + 1;
    let started = Instant::now();
    let mut deleted = false;
    while !deleted && started.elapsed() < Duration::from_secs(20) {
        let end = watch_prefix(&client, b"/t/", &mut next, &mut |events| {
            deleted = events
                .iter()
                .any(|e| matches!(e, Event::Delete { key, .. } if key == b"/t/leased"));
            !deleted
        });
        assert!(
            matches!(end, WatchEnd::Stopped | WatchEnd::Closed(_)),
            "{end:?}"
        );
    }
    assert!(deleted, "the leased key was never deleted");
    assert_eq!(client.keepalive(lease).unwrap(), None);

    // One member killed: every call still answers, through the others.
    cluster.kill_member(0);
    assert!(client.create_if_absent(b"/t/b", b"1", 0).unwrap().is_none());
    assert_eq!(client.get(b"/t/b").unwrap().unwrap().value, b"1");
}
