//! What this host counts of its part in the fleet, appended to `/metrics` as
//! `osx_builder_fleet_*`: where its creates went and why, the refusals, the forwards to the
//! hosts placement chose, its lease, and its requests to etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::etcd::{EtcdStats, LATENCY_BUCKETS};
use super::placement::{Reason, Refusal};
use crate::sys::prometheus::{header, render_histogram, sample, Counters, Histogram};
use crate::sys::sync::LockUnpoisoned;

/// Ranking the view's hosts is in memory: microseconds for a few hosts, about a
/// millisecond for a thousand; more means the ranking waited for the view's lock.
const DECISION_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// Placements counted by why the host was chosen; `retry` is a second placement after a
/// forward failed.
const PLACED: &[&str] = &["pool", "image", "slots", "retry"];
/// `Refusal::label`s, and `hosts-refused`: every host tried answered 503 itself (it filled
/// up or was cut off after the view was read).
const REFUSED: &[&str] = &[
    "no-hosts",
    "all-draining",
    "all-full",
    "no-disk-room",
    "hosts-refused",
];
/// `refused`: the host answered 503; the others got no answer (see `forward::PeerError`).
const FORWARD_FAILED: &[&str] = &["connect", "timeout", "tls", "broken", "refused"];
/// `failed`: etcd did not answer (this host serves alone); `expired`: etcd no longer knew
/// the lease (the fleet counted this host lost).
const RENEWED: &[&str] = &["ok", "failed", "expired"];

pub struct FleetMetrics {
    placements: Counters,
    refusals: Counters,
    decision: Mutex<Histogram>,
    forwards: AtomicU64,
    forward_failures: Counters,
    forward_latency: Mutex<Histogram>,
    proxied: AtomicU64,
    renewals: Counters,
    hosts_lost: AtomicU64,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        Self {
            placements: Counters::new("reason", PLACED),
            refusals: Counters::new("reason", REFUSED),
            decision: Mutex::new(Histogram::new(DECISION_BUCKETS)),
            forwards: AtomicU64::new(0),
            forward_failures: Counters::new("kind", FORWARD_FAILED),
            forward_latency: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            proxied: AtomicU64::new(0),
            renewals: Counters::new("outcome", RENEWED),
            hosts_lost: AtomicU64::new(0),
        }
    }
}

impl FleetMetrics {
    /// A create placed on a host for `reason` (`None`: placed again after a forward failed).
    pub fn placed(&self, reason: Option<Reason>) {
        self.placements.add(reason.map_or("retry", Reason::as_str));
    }

    pub fn refused(&self, why: &Refusal) {
        self.refusals.add(why.label());
    }

    /// Hosts answered 503 to every forward of a create.
    pub fn hosts_refused(&self) {
        self.refusals.add("hosts-refused");
    }

    pub fn observe_decision(&self, took: Duration) {
        self.decision.lock_unpoisoned().observe(took.as_secs_f64());
    }

    pub fn forwarding(&self) {
        self.forwards.fetch_add(1, Ordering::Relaxed);
    }

    /// A forward that got an answer (of any status), and how long it took.
    pub fn forwarded(&self, took: Duration) {
        self.forward_latency
            .lock_unpoisoned()
            .observe(took.as_secs_f64());
    }

    pub fn forward_failed(&self, kind: &str) {
        self.forward_failures.add(kind);
    }

    pub fn proxied(&self) {
        self.proxied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn renewal(&self, outcome: &str) {
        self.renewals.add(outcome);
    }

    pub fn host_lost(&self) {
        self.hosts_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// The `osx_builder_fleet_*` families, with etcd's from `etcd` and whether this host
    /// is `joined`.
    pub fn render(&self, etcd: &EtcdStats, joined: bool) -> String {
        let mut out = String::new();
        let name = |n: &str| format!("osx_builder_fleet_{n}");
        self.placements.render(
            &mut out,
            &name("placements_total"),
            "Creates this front door placed, by why the host was chosen (retry: placed again after a forward failed).",
        );
        self.refusals.render(
            &mut out,
            &name("refusals_total"),
            "Creates this front door refused with 503 capacity-exhausted, by why.",
        );
        let histogram = name("placement_decision_seconds");
        header(
            &mut out,
            &histogram,
            "histogram",
            "Time to rank the fleet's hosts for a create (in memory, before the slot is claimed in etcd).",
        );
        render_histogram(&mut out, &histogram, &self.decision.lock_unpoisoned());
        let counters = [
            (
                "forwards_total",
                "Creates forwarded to the host placement chose.",
                self.forwards.load(Ordering::Relaxed),
            ),
            (
                "proxied_total",
                "Calls about a VM relayed to the host that owns it.",
                self.proxied.load(Ordering::Relaxed),
            ),
            (
                "hosts_lost_total",
                "Other hosts seen leaving the fleet (their lease ended).",
                self.hosts_lost.load(Ordering::Relaxed),
            ),
        ];
        for (family, help, value) in counters {
            let family = name(family);
            header(&mut out, &family, "counter", help);
            sample(&mut out, &family, &[], value);
        }
        self.forward_failures.render(
            &mut out,
            &name("forward_failures_total"),
            "Forwarded creates that failed, by kind: connect, timeout, tls, broken (no answer), refused (the host answered 503).",
        );
        let histogram = name("forward_seconds");
        header(
            &mut out,
            &histogram,
            "histogram",
            "Time from sending a forwarded create to its host's answer.",
        );
        render_histogram(
            &mut out,
            &histogram,
            &self.forward_latency.lock_unpoisoned(),
        );
        self.renewals.render(
            &mut out,
            &name("lease_renewals_total"),
            "Keepalives of this host's lease, by outcome: ok, failed (etcd did not answer), expired (etcd no longer knew the lease).",
        );
        etcd.errors.render(
            &mut out,
            &name("etcd_errors_total"),
            "Requests to etcd that failed, by kind: unreachable (no member answered), refused (etcd answered an error), malformed.",
        );
        let histogram = name("etcd_request_seconds");
        header(
            &mut out,
            &histogram,
            "histogram",
            "Time of each request to etcd, failed ones included (watch streams are not requests).",
        );
        render_histogram(&mut out, &histogram, &etcd.latency.lock_unpoisoned());
        let gauge = name("joined");
        header(
            &mut out,
            &gauge,
            "gauge",
            "1 while this host is a joined member of the fleet.",
        );
        sample(&mut out, &gauge, &[], u8::from(joined));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::prometheus::check::{parse, value_of};

    #[test]
    fn every_refusal_has_its_series() {
        let all = [
            Refusal::NoHosts,
            Refusal::AllDraining,
            Refusal::AllFull,
            Refusal::NoDiskRoom,
        ];
        for refusal in &all {
            // A new refusal stops compiling here until it is in `all` (and so in REFUSED).
            match refusal {
                Refusal::NoHosts
                | Refusal::AllDraining
                | Refusal::AllFull
                | Refusal::NoDiskRoom => {}
            }
            assert!(REFUSED.contains(&refusal.label()), "{}", refusal.label());
        }
    }

    #[test]
    fn every_family_is_well_formed_and_counts_what_happened() {
        let metrics = FleetMetrics::default();
        let etcd = EtcdStats::default();
        let empty = metrics.render(&etcd, false);
        let parsed = parse(&empty).unwrap_or_else(|e| panic!("{e}\n{empty}"));
        // Every series is there before anything happened.
        let refusals = "osx_builder_fleet_refusals_total";
        assert_eq!(
            value_of(&parsed, refusals, &[("reason", "all-draining")]),
            Some(0.0)
        );
        assert_eq!(parsed.types.len(), 12, "{:?}", parsed.types);

        metrics.placed(Some(Reason::Image));
        metrics.placed(Some(Reason::Image));
        metrics.placed(None);
        metrics.refused(&Refusal::AllFull);
        metrics.hosts_refused();
        metrics.observe_decision(Duration::from_micros(300));
        metrics.forwarding();
        metrics.forwarded(Duration::from_millis(4));
        metrics.forward_failed("connect");
        metrics.renewal("ok");
        metrics.renewal("expired");
        etcd.errors.add("unreachable");
        etcd.latency.lock_unpoisoned().observe(0.002);
        etcd.latency.lock_unpoisoned().observe(3.0);
        let text = metrics.render(&etcd, true);
        let e = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let value = |name: &str, labels: &[(&str, &str)]| value_of(&e, name, labels);
        let placements = "osx_builder_fleet_placements_total";
        assert_eq!(value(placements, &[("reason", "image")]), Some(2.0));
        assert_eq!(value(placements, &[("reason", "retry")]), Some(1.0));
        assert_eq!(value(placements, &[("reason", "pool")]), Some(0.0));
        assert_eq!(value(refusals, &[("reason", "all-full")]), Some(1.0));
        assert_eq!(value(refusals, &[("reason", "hosts-refused")]), Some(1.0));
        let decision = "osx_builder_fleet_placement_decision_seconds_bucket";
        assert_eq!(value(decision, &[("le", "0.00025")]), Some(0.0));
        assert_eq!(value(decision, &[("le", "0.0005")]), Some(1.0));
        assert_eq!(value("osx_builder_fleet_forwards_total", &[]), Some(1.0));
        assert_eq!(
            value(
                "osx_builder_fleet_forward_seconds_bucket",
                &[("le", "0.005")]
            ),
            Some(1.0)
        );
        let failures = "osx_builder_fleet_forward_failures_total";
        assert_eq!(value(failures, &[("kind", "connect")]), Some(1.0));
        assert_eq!(value(failures, &[("kind", "timeout")]), Some(0.0));
        let renewals = "osx_builder_fleet_lease_renewals_total";
        assert_eq!(value(renewals, &[("outcome", "ok")]), Some(1.0));
        assert_eq!(value(renewals, &[("outcome", "expired")]), Some(1.0));
        assert_eq!(value(renewals, &[("outcome", "failed")]), Some(0.0));
        let errors = "osx_builder_fleet_etcd_errors_total";
        assert_eq!(value(errors, &[("kind", "unreachable")]), Some(1.0));
        let latency = "osx_builder_fleet_etcd_request_seconds";
        assert_eq!(
            value(&format!("{latency}_bucket"), &[("le", "0.0025")]),
            Some(1.0)
        );
        assert_eq!(
            value(&format!("{latency}_bucket"), &[("le", "2.5")]),
            Some(1.0)
        );
        assert_eq!(value(&format!("{latency}_count"), &[]), Some(2.0));
        assert_eq!(value("osx_builder_fleet_joined", &[]), Some(1.0));
    }
}
