//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Two kinds of numbers: events counted as they happen (provisions, HTTP requests, durations)
//! live in [`Metrics`]; state that the server already keeps elsewhere (VMs by status, capacity,
//! cache size, vmrun's own call counters) is passed in a [`Snapshot`] at render time, so there
//! is one source of truth for each number.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::sys::prometheus::{header, render_histogram, sample, Histogram};
use crate::sys::sync::LockUnpoisoned;

/// Image downloads are multi-gigabyte archives over whatever link a build Mac has: seconds on
/// a LAN mirror, hours over the internet.
const DOWNLOAD_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// A linked clone is a small delta disk: well under a second normally, minutes when the disk
/// is slow or vmrun waits on a lock (the contract's clone deadline is 120 s).
const CLONE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// macOS boots and VMware Tools report an address in tens of seconds to a few minutes; ten
/// minutes is where a provisioning gives up.
const BOOT_TO_IP_BUCKETS: &[f64] = &[
    5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0,
];

/// A hand-out answers from memory and one record write: milliseconds; a second means
/// something waited (the disk, a lock) that must not.
const HAND_OUT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A per-pool family of `/metrics`: name, type, help, and the number it shows.
type PoolFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::service::pools::PoolCounts) -> u64,
);

/// HTTP methods we label as themselves; anything else is `other`, so that a client inventing
/// methods cannot create unbounded series.
const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Counters and histograms updated by the server's threads. Each update takes a mutex for the
/// time of a map insert or a few additions; updates happen per request or per provisioning
/// step, far too rarely for contention to matter, and a mutex gives `render` a consistent view
/// (a histogram's buckets always add up to its count).
#[derive(Debug)]
pub struct Metrics {
    provisions: Mutex<BTreeMap<String, u64>>,
    http_requests: Mutex<BTreeMap<(String, u16), u64>>,
    image_download: Mutex<Histogram>,
    clone: Mutex<Histogram>,
    boot_to_ip: Mutex<Histogram>,
    hand_out: Mutex<Histogram>,
}

/// State owned by other parts of the server, read when `/metrics` is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub vms: VmsByStatus,
    pub capacity_used: u64,
    pub capacity_limit: u64,
    pub image_cache_bytes: u64,
    pub draining: bool,
    /// Long polls (`GET /vms/:id?wait=`) waiting now, each holding an HTTP thread.
    pub long_polls_waiting: u64,
    /// `Hypervisor::call_counts()` of the tool that runs the VMs: (command, outcome, count).
    pub hypervisor_calls: Vec<(String, String, u64)>,
    /// Each warm pool's size, idle VMs and creates served or not.
    pub pools: Vec<crate::service::pools::PoolCounts>,
    /// Creates that matched no pool while pools were declared.
    pub pool_unmatched: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsByStatus {
    pub provisioning: u64,
    pub running: u64,
    pub stopped: u64,
    pub failed: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            provisions: Mutex::new(BTreeMap::new()),
            http_requests: Mutex::new(BTreeMap::new()),
            image_download: Mutex::new(Histogram::new(DOWNLOAD_BUCKETS)),
            clone: Mutex::new(Histogram::new(CLONE_BUCKETS)),
            boot_to_ip: Mutex::new(Histogram::new(BOOT_TO_IP_BUCKETS)),
            hand_out: Mutex::new(Histogram::new(HAND_OUT_BUCKETS)),
        }
    }

    /// One provisioning finished: `ok`, or the error code it failed with.
    pub fn record_provision(&self, outcome: &str) {
        *self
            .provisions
            .lock_unpoisoned()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub fn record_http_request(&self, method: &str, status: u16) {
        let method = KNOWN_METHODS
            .iter()
            .find(|known| known.eq_ignore_ascii_case(method))
            .copied()
            .unwrap_or("other");
        *self
            .http_requests
            .lock_unpoisoned()
            .entry((method.to_string(), status))
            .or_default() += 1;
    }

    pub fn observe_image_download(&self, took: Duration) {
        self.image_download
            .lock_unpoisoned()
            .observe(took.as_secs_f64());
    }

    pub fn observe_clone(&self, took: Duration) {
        self.clone.lock_unpoisoned().observe(took.as_secs_f64());
    }

    /// From `vmrun start` returning to the first IP address seen.
    pub fn observe_boot_to_ip(&self, took: Duration) {
        self.boot_to_ip
            .lock_unpoisoned()
            .observe(took.as_secs_f64());
    }

    /// From a create's arrival to its answer with a warm pool's VM.
    pub fn observe_hand_out(&self, took: Duration) {
        self.hand_out.lock_unpoisoned().observe(took.as_secs_f64());
    }

    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();

        let vms = snapshot.vms;
        header(
            &mut out,
            "osx_builder_vms",
            "gauge",
            "VMs known to this server, by status.",
        );
        for (status, count) in [
            ("provisioning", vms.provisioning),
            ("running", vms.running),
            ("stopped", vms.stopped),
            ("failed", vms.failed),
        ] {
            sample(&mut out, "osx_builder_vms", &[("status", status)], count);
        }

        let gauges = [
            (
                "osx_builder_capacity_used",
                "VMs counted against the capacity limit.",
                snapshot.capacity_used,
            ),
            (
                "osx_builder_capacity_limit",
                "Maximum number of VMs this host runs at once.",
                snapshot.capacity_limit,
            ),
            (
                "osx_builder_image_cache_bytes",
                "Bytes on disk used by cached gold images.",
                snapshot.image_cache_bytes,
            ),
            (
                "osx_builder_draining",
                "1 while the server refuses new VMs for maintenance, else 0.",
                u64::from(snapshot.draining),
            ),
            (
                "osx_builder_long_polls_waiting",
                "Long polls waiting for a VM to change, each holding an HTTP thread.",
                snapshot.long_polls_waiting,
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            sample(&mut out, name, &[], value);
        }

        let name = "osx_builder_provisions_total";
        header(
            &mut out,
            name,
            "counter",
            "Provisionings finished, by outcome (ok or the error code).",
        );
        for (outcome, count) in self.provisions.lock_unpoisoned().iter() {
            sample(&mut out, name, &[("outcome", outcome)], count);
        }

        let name = "osx_builder_vmrun_calls_total";
        header(
            &mut out,
            name,
            "counter",
            "Calls of the hypervisor's tool (vmrun, or tart on tart), by command and outcome; the name is kept from the VMware-only versions.",
        );
        // Sorted here too: the format does not require it, but stable output diffs well.
        let mut calls: Vec<_> = snapshot.hypervisor_calls.iter().collect();
        calls.sort();
        for (command, outcome, count) in calls {
            sample(
                &mut out,
                name,
                &[("command", command), ("outcome", outcome)],
                count,
            );
        }

        let pool_families: [PoolFamily; 5] = [
            (
                "osx_builder_pool_size",
                "gauge",
                "Idle VMs each warm pool keeps.",
                |p| u64::from(p.size),
            ),
            (
                "osx_builder_pool_ready",
                "gauge",
                "Idle VMs of each warm pool booted with an IP, ready to hand out.",
                |p| p.ready,
            ),
            (
                "osx_builder_pool_warming",
                "gauge",
                "VMs being provisioned for each warm pool.",
                |p| p.warming,
            ),
            (
                "osx_builder_pool_hits_total",
                "counter",
                "Creates served from each warm pool.",
                |p| p.hits,
            ),
            (
                "osx_builder_pool_misses_total",
                "counter",
                "Creates that matched a warm pool's spec but found no idle VM.",
                |p| p.misses,
            ),
        ];
        for (name, kind, help, value) in pool_families {
            header(&mut out, name, kind, help);
            for pool in &snapshot.pools {
                sample(&mut out, name, &[("pool", &pool.name)], value(pool));
            }
        }
        let name = "osx_builder_pool_unmatched_total";
        header(
            &mut out,
            name,
            "counter",
            "Creates that matched no warm pool while pools were declared (provisioned from the start).",
        );
        sample(&mut out, name, &[], snapshot.pool_unmatched);

        let name = "osx_builder_http_requests_total";
        header(
            &mut out,
            name,
            "counter",
            "HTTP requests answered, by method and status code.",
        );
        for ((method, status), count) in self.http_requests.lock_unpoisoned().iter() {
            let status = status.to_string();
            sample(
                &mut out,
                name,
                &[("method", method), ("status", &status)],
                count,
            );
        }

        let histograms = [
            (
                "osx_builder_image_download_seconds",
                "Time to download, verify and unpack a gold image.",
                &self.image_download,
            ),
            (
                "osx_builder_clone_seconds",
                "Time to make a linked clone of a gold image.",
                &self.clone,
            ),
            (
                "osx_builder_boot_to_ip_seconds",
                "Time from starting a VM to its first IP address.",
                &self.boot_to_ip,
            ),
            (
                "osx_builder_pool_hand_out_seconds",
                "Time from a create's arrival to its answer with a warm pool's VM, guestinfo written.",
                &self.hand_out,
            ),
        ];
        for (name, help, histogram) in histograms {
            header(&mut out, name, "histogram", help);
            render_histogram(&mut out, name, &histogram.lock_unpoisoned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::prometheus::check::{parse, value_of};
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn busy_metrics() -> (Metrics, Snapshot) {
        let metrics = Metrics::new();
        metrics.record_provision("ok");
        metrics.record_provision("ok");
        metrics.record_provision("image-checksum-mismatch");
        metrics.record_http_request("GET", 200);
        metrics.record_http_request("get", 200);
        metrics.record_http_request("POST", 202);
        metrics.record_http_request("BREW", 405);
        metrics.observe_clone(Duration::from_millis(300));
        metrics.observe_clone(Duration::from_secs(3));
        metrics.observe_clone(Duration::from_secs(500));
        metrics.observe_image_download(Duration::from_secs(90));
        metrics.observe_boot_to_ip(Duration::from_secs(42));
        let snapshot = Snapshot {
            vms: VmsByStatus {
                provisioning: 1,
                running: 2,
                stopped: 0,
                failed: 3,
            },
            capacity_used: 3,
            capacity_limit: 2,
            image_cache_bytes: 40_000_000_000,
            draining: true,
            long_polls_waiting: 2,
            hypervisor_calls: vec![
                ("start".into(), "ok".into(), 4),
                ("list".into(), "ok".into(), 10),
                ("stop".into(), "not-powered-on".into(), 1),
            ],
            pools: vec![crate::service::pools::PoolCounts {
                name: "macos-13".into(),
                size: 2,
                ready: 1,
                warming: 1,
                hits: 5,
                misses: 2,
            }],
            pool_unmatched: 3,
        };
        metrics.observe_hand_out(Duration::from_millis(3));
        (metrics, snapshot)
    }

    #[test]
    fn an_empty_registry_renders_well_formed_output() {
        let text = Metrics::new().render(&Snapshot::default());
        let exposition = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            value_of(&exposition, "osx_builder_vms", &[("status", "failed")]),
            Some(0.0)
        );
        assert_eq!(
            value_of(&exposition, "osx_builder_draining", &[]),
            Some(0.0)
        );
        assert_eq!(
            value_of(&exposition, "osx_builder_clone_seconds_count", &[]),
            Some(0.0)
        );
        assert_eq!(
            value_of(
                &exposition,
                "osx_builder_clone_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(0.0)
        );
    }

    #[test]
    fn every_family_is_declared_once_with_its_type() {
        let (metrics, snapshot) = busy_metrics();
        let text = metrics.render(&snapshot);
        let exposition = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let expected = [
            ("osx_builder_vms", "gauge"),
            ("osx_builder_capacity_used", "gauge"),
            ("osx_builder_capacity_limit", "gauge"),
            ("osx_builder_image_cache_bytes", "gauge"),
            ("osx_builder_draining", "gauge"),
            ("osx_builder_long_polls_waiting", "gauge"),
            ("osx_builder_provisions_total", "counter"),
            ("osx_builder_vmrun_calls_total", "counter"),
            ("osx_builder_http_requests_total", "counter"),
            ("osx_builder_pool_size", "gauge"),
            ("osx_builder_pool_ready", "gauge"),
            ("osx_builder_pool_warming", "gauge"),
            ("osx_builder_pool_hits_total", "counter"),
            ("osx_builder_pool_misses_total", "counter"),
            ("osx_builder_pool_unmatched_total", "counter"),
            ("osx_builder_image_download_seconds", "histogram"),
            ("osx_builder_clone_seconds", "histogram"),
            ("osx_builder_boot_to_ip_seconds", "histogram"),
            ("osx_builder_pool_hand_out_seconds", "histogram"),
        ];
        assert_eq!(
            exposition.types.len(),
            expected.len(),
            "{:?}",
            exposition.types
        );
        for (name, kind) in expected {
            assert_eq!(
                exposition.types.get(name).map(String::as_str),
                Some(kind),
                "{name}"
            );
        }
    }

    #[test]
    fn counters_and_gauges_carry_the_recorded_numbers() {
        let (metrics, snapshot) = busy_metrics();
        let e = parse(&metrics.render(&snapshot)).unwrap();
        let provisions = "osx_builder_provisions_total";
        assert_eq!(value_of(&e, provisions, &[("outcome", "ok")]), Some(2.0));
        assert_eq!(
            value_of(&e, provisions, &[("outcome", "image-checksum-mismatch")]),
            Some(1.0)
        );
        let http = "osx_builder_http_requests_total";
        assert_eq!(
            value_of(&e, http, &[("method", "GET"), ("status", "200")]),
            Some(2.0)
        );
        assert_eq!(
            value_of(&e, http, &[("method", "POST"), ("status", "202")]),
            Some(1.0)
        );
        assert_eq!(
            value_of(&e, http, &[("method", "other"), ("status", "405")]),
            Some(1.0)
        );
        let calls = "osx_builder_vmrun_calls_total";
        assert_eq!(
            value_of(&e, calls, &[("command", "list"), ("outcome", "ok")]),
            Some(10.0)
        );
        assert_eq!(
            value_of(
                &e,
                calls,
                &[("command", "stop"), ("outcome", "not-powered-on")]
            ),
            Some(1.0)
        );
        for (status, count) in [
            ("provisioning", 1.0),
            ("running", 2.0),
            ("stopped", 0.0),
            ("failed", 3.0),
        ] {
            assert_eq!(
                value_of(&e, "osx_builder_vms", &[("status", status)]),
                Some(count)
            );
        }
        let pool = [("pool", "macos-13")];
        for (name, want) in [
            ("osx_builder_pool_size", 2.0),
            ("osx_builder_pool_ready", 1.0),
            ("osx_builder_pool_warming", 1.0),
            ("osx_builder_pool_hits_total", 5.0),
            ("osx_builder_pool_misses_total", 2.0),
        ] {
            assert_eq!(value_of(&e, name, &pool), Some(want), "{name}");
        }
        assert_eq!(
            value_of(&e, "osx_builder_pool_unmatched_total", &[]),
            Some(3.0)
        );
        assert_eq!(
            value_of(
                &e,
                "osx_builder_pool_hand_out_seconds_bucket",
                &[("le", "0.005")]
            ),
            Some(1.0)
        );
        assert_eq!(value_of(&e, "osx_builder_capacity_used", &[]), Some(3.0));
        assert_eq!(value_of(&e, "osx_builder_capacity_limit", &[]), Some(2.0));
        assert_eq!(
            value_of(&e, "osx_builder_image_cache_bytes", &[]),
            Some(4e10)
        );
        assert_eq!(value_of(&e, "osx_builder_draining", &[]), Some(1.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let (metrics, snapshot) = busy_metrics();
        let e = parse(&metrics.render(&snapshot)).unwrap();
        let bucket = |le: &str| value_of(&e, "osx_builder_clone_seconds_bucket", &[("le", le)]);
        // Observed: 0.3 s, 3 s and 500 s (past the last finite bound of 300).
        assert_eq!(bucket("0.25"), Some(0.0));
        assert_eq!(bucket("0.5"), Some(1.0));
        assert_eq!(bucket("2.5"), Some(1.0));
        assert_eq!(bucket("5"), Some(2.0));
        assert_eq!(bucket("300"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(
            value_of(&e, "osx_builder_clone_seconds_count", &[]),
            Some(3.0)
        );
        let sum = value_of(&e, "osx_builder_clone_seconds_sum", &[]).unwrap();
        assert!((sum - 503.3).abs() < 1e-9, "{sum}");
        let download = |le: &str| {
            value_of(
                &e,
                "osx_builder_image_download_seconds_bucket",
                &[("le", le)],
            )
        };
        assert_eq!(download("60"), Some(0.0));
        assert_eq!(download("120"), Some(1.0));
        assert_eq!(download("14400"), Some(1.0));
        let boot = |le: &str| value_of(&e, "osx_builder_boot_to_ip_seconds_bucket", &[("le", le)]);
        assert_eq!(boot("30"), Some(0.0));
        assert_eq!(boot("45"), Some(1.0));
    }

    #[test]
    fn a_value_on_a_bound_falls_in_that_bucket() {
        // `le` means less than or equal.
        let metrics = Metrics::new();
        metrics.observe_clone(Duration::from_secs(1));
        let e = parse(&metrics.render(&Snapshot::default())).unwrap();
        let bucket = |le: &str| value_of(&e, "osx_builder_clone_seconds_bucket", &[("le", le)]);
        assert_eq!(bucket("0.5"), Some(0.0));
        assert_eq!(bucket("1"), Some(1.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        let weird = "quote\" backslash\\ newline\n end";
        metrics.record_provision(weird);
        let snapshot = Snapshot {
            hypervisor_calls: vec![("a\\b".into(), "c\"d\ne".into(), 7)],
            ..Snapshot::default()
        };
        let text = metrics.render(&snapshot);
        assert!(
            text.contains(
                r#"osx_builder_provisions_total{outcome="quote\" backslash\\ newline\n end"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"osx_builder_vmrun_calls_total{command="a\\b",outcome="c\"d\ne"} 7"#),
            "{text}"
        );
        let e = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            value_of(&e, "osx_builder_provisions_total", &[("outcome", weird)]),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &e,
                "osx_builder_vmrun_calls_total",
                &[("command", "a\\b"), ("outcome", "c\"d\ne")]
            ),
            Some(7.0)
        );
    }

    #[test]
    fn the_parser_rejects_what_it_should() {
        // The checks above are only as good as this parser: show that it can fail.
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\n";
        assert!(parse(good).is_ok());
        let bad = [
            ("no trailing newline", good.trim_end()),
            ("no TYPE", "# HELP a_total A.\na_total 1\n"),
            ("no HELP", "# TYPE a_total counter\na_total 1\n"),
            ("raw quote", "# HELP a A.\n# TYPE a gauge\na{x=\"q\"\"} 1\n"),
            ("bad escape", "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n"),
            ("inf spelling", "# HELP a A.\n# TYPE a gauge\na inf\n"),
            ("split family", "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na 2\n"),
            (
                "not cumulative",
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            ),
            (
                "+Inf != count",
                "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            ),
            ("no +Inf", "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"),
            ("duplicate", "# HELP a A.\n# TYPE a gauge\na 1\na 2\n"),
        ];
        for (why, text) in bad {
            assert!(parse(text).is_err(), "accepted ({why}): {text:?}");
        }
    }

    #[test]
    fn updates_from_many_threads_all_count() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        metrics.record_http_request("GET", 200);
                        metrics.observe_boot_to_ip(Duration::from_secs(20));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let e = parse(&metrics.render(&Snapshot::default())).unwrap();
        let http = "osx_builder_http_requests_total";
        assert_eq!(
            value_of(&e, http, &[("method", "GET"), ("status", "200")]),
            Some(8000.0)
        );
        assert_eq!(
            value_of(&e, "osx_builder_boot_to_ip_seconds_count", &[]),
            Some(8000.0)
        );
        assert_eq!(
            value_of(&e, "osx_builder_boot_to_ip_seconds_sum", &[]),
            Some(160_000.0)
        );
    }

    #[test]
    fn promtool_accepts_the_output() {
        let available = Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !available {
            eprintln!("note: promtool not on PATH, skipped `promtool check metrics` (the parser tests still ran)");
            return;
        }
        let (metrics, mut snapshot) = busy_metrics();
        metrics.record_provision("odd \"outcome\"\\\nwith escapes");
        snapshot
            .hypervisor_calls
            .push(("clone".into(), "vm-locked".into(), 2));
        for text in [
            metrics.render(&snapshot),
            Metrics::new().render(&Snapshot::default()),
        ] {
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool check metrics: {}\nstdout: {}\nstderr: {}\ninput:\n{text}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
