//! Overhead per VM: with the simulator's delays at zero and the gold image cached (warmed by
//! one VM first), the time from `POST /vms` to `running` with an IP, split by step from the
//! server's log timestamps (ms) and the simulator's own `calls.log`, to show where the time
//! goes; the server's own share is everything but waiting on vmrun.
//!
//! `cargo bench --bench provision_overhead` (`OSXB_BENCH_VMS` VMs, one at a time; default 20).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::harness::{gold_tar_gz, http::FileServer, sha1_hex};
use common::{BenchServer, TempDir};
use serde_json::{json, Value};

fn main() {
    common::print_machine();
    let vms: usize = std::env::var("OSXB_BENCH_VMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20);

    let dir = TempDir::new("bench-overhead");
    let root = dir.path().canonicalize().unwrap();
    let (data, sim) = (root.join("data"), root.join("sim"));
    let files = FileServer::start();
    let archive = gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let server = common::start_server(&data, &sim, &[], &[]);
    let ip_poll = setting("--ip-poll-interval");
    println!("server settings: defaults (--ip-poll-interval {ip_poll}), simulator delays 0");
    let body = json!({
        "cpus": 2, "memory": 1024, "network_type": "nat", "headless": true,
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
    })
    .to_string();

    let warm = provision(&server, &body);
    println!(
        "warm-up VM (download, unpack, base snapshot): {:.0} ms",
        warm.total.as_secs_f64() * 1e3
    );

    let mut runs = Vec::new();
    for _ in 0..vms {
        runs.push(provision(&server, &body));
    }
    // The log and the call log are written as things happen; give the last lines a moment.
    thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let calls = sim_calls(&sim);

    let mut rows: Vec<Steps> = runs
        .iter()
        .map(|run| Steps::from_log(&log, &calls, run))
        .collect();
    rows.retain(|r| r.complete);
    println!(
        "{} VMs, one at a time, each from POST to GET showing running with an IP:",
        rows.len()
    );
    println!();
    println!(
        "{:<40} {:>9} {:>9}   of which vmrun ran (its own clock), mean ms",
        "step", "mean ms", "median"
    );
    let print = |name: &str, values: Vec<f64>, own: Option<Vec<f64>>| {
        let own = own.map(|o| format!("{:.1}", mean(&o))).unwrap_or_default();
        println!(
            "{name:<40} {:>9.1} {:>9.1}   {own}",
            mean(&values),
            median(values)
        );
    };
    let col = |f: fn(&Steps) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    print("POST → 202 (client)", col(|r| r.post_ms), None);
    print("queued → clone spawned", col(|r| r.queue_ms), None);
    print("clone", col(|r| r.clone_ms), Some(col(|r| r.clone_own_ms)));
    print(
        "VMX edit (clone done → start spawned)",
        col(|r| r.edit_ms),
        None,
    );
    print("start", col(|r| r.start_ms), Some(col(|r| r.start_own_ms)));
    print(
        "start done → first IP query spawned",
        col(|r| r.after_start_ms),
        None,
    );
    print(
        "first IP (queries until an address)",
        col(|r| r.ip_ms),
        Some(col(|r| r.ip_own_ms)),
    );
    print("IP known → GET shows it", col(|r| r.tail_ms), None);
    print(
        "total (client: POST sent → ready seen)",
        col(|r| r.total_ms),
        None,
    );
    println!();
    let vmrun_seen = col(|r| r.clone_ms + r.start_ms + r.ip_ms);
    let vmrun_own = col(|r| r.clone_own_ms + r.start_own_ms + r.ip_own_ms);
    let total = col(|r| r.total_ms);
    let server_share: Vec<f64> = total.iter().zip(&vmrun_seen).map(|(t, v)| t - v).collect();
    let spawn_share: Vec<f64> = vmrun_seen
        .iter()
        .zip(&vmrun_own)
        .map(|(s, o)| s - o)
        .collect();
    println!(
        "vmrun calls per VM: {:.1} (clone, start, getGuestIPAddress until an address)",
        rows.iter().map(|r| r.calls as f64).sum::<f64>() / rows.len() as f64
    );
    println!(
        "waiting on vmrun (spawn → exit seen by the server): mean {:.1} ms, of which vmrun's own run {:.1} ms and process start/exit/reaping {:.1} ms",
        mean(&vmrun_seen),
        mean(&vmrun_own),
        mean(&spawn_share)
    );
    println!(
        "server's own share (total − waiting on vmrun): mean {:.1} ms, median {:.1} ms (target < 10 ms)",
        mean(&server_share),
        median(server_share.clone())
    );
}

/// A setting's default, from `--help` (`--flag  ENV  default`).
fn setting(flag: &str) -> String {
    let out = std::process::Command::new(common::SERVER_BIN)
        .arg("--help")
        .output()
        .expect("osx-builder --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(flag))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_string()
}

struct Run {
    id: String,
    post: Duration,
    total: Duration,
}

/// POSTs one VM and polls it (every 0.2 ms) until it runs with an IP.
fn provision(server: &BenchServer, body: &str) -> Run {
    let started = Instant::now();
    let (status, reply) =
        common::request(server.addr, "POST", "/vms", Some(body.as_bytes())).expect("POST /vms");
    let post = started.elapsed();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&reply));
    let vm: Value = serde_json::from_slice(&reply).unwrap();
    let id = vm["id"].as_str().unwrap().to_string();
    let path = format!("/vms/{id}");
    let deadline = started + Duration::from_secs(60);
    loop {
        let (status, reply) = common::get(server.addr, &path).expect("GET /vms/:id");
        assert_eq!(status, 200);
        let vm: Value = serde_json::from_slice(&reply).unwrap();
        assert_ne!(vm["status"], "failed", "{vm}\n{}", server.log());
        if vm["status"] == "running" && vm["ip_address"] != "" {
            return Run {
                id,
                post,
                total: started.elapsed(),
            };
        }
        assert!(Instant::now() < deadline, "{vm}\n{}", server.log());
        thread::sleep(Duration::from_micros(200));
    }
}

/// One VM's steps, in milliseconds.
#[derive(Default)]
struct Steps {
    complete: bool,
    calls: usize,
    post_ms: f64,
    queue_ms: f64,
    clone_ms: f64,
    clone_own_ms: f64,
    edit_ms: f64,
    start_ms: f64,
    start_own_ms: f64,
    after_start_ms: f64,
    ip_ms: f64,
    ip_own_ms: f64,
    tail_ms: f64,
    total_ms: f64,
}

impl Steps {
    /// The VM's log lines run from `vm=<id> created` to `vm=<id> has IP`; VMs were made one
    /// at a time, so the clone line between them (it names the gold VM, not the clone) is
    /// this VM's.
    fn from_log(log: &str, calls: &[Value], run: &Run) -> Steps {
        let id = &run.id;
        let lines: Vec<(f64, &str)> = log.lines().filter_map(parse_line).collect();
        let Some(first) = lines
            .iter()
            .position(|(_, m)| *m == format!("vm={id} created"))
        else {
            return Steps::default();
        };
        let Some(last) = lines[first..]
            .iter()
            .position(|(_, m)| m.starts_with(&format!("vm={id} has IP")))
            .map(|n| first + n)
        else {
            return Steps::default();
        };
        // vmrun calls on the clone are logged as `vm=<id> vmrun ...`; the clone itself names
        // the gold VM and has no prefix.
        let vm_prefix = format!("vm={id} ");
        let strip = |m: &str| -> String { m.strip_prefix(&vm_prefix).unwrap_or(m).to_string() };
        let lines: Vec<(f64, String)> = lines[first..=last]
            .iter()
            .map(|(t, m)| (*t, strip(m)))
            .collect();
        let segment = &lines[..];
        let at = |pred: &dyn Fn(&str) -> bool| segment.iter().find(|(_, m)| pred(m)).map(|l| l.0);
        let after = |msg: &str| -> f64 {
            msg.rsplit_once(" after ")
                .and_then(|(_, rest)| rest.trim_end_matches(" ms").parse().ok())
                .unwrap_or(0.0)
        };
        let created = segment[0].0;
        let has_ip = segment[segment.len() - 1].0;
        let clone_run = at(&|m| m.starts_with("vmrun clone") && m.contains(": running"));
        let clone_ok = segment
            .iter()
            .find(|(_, m)| m.starts_with("vmrun clone") && m.contains(": ok after"));
        let start_run = at(&|m| m.starts_with("vmrun start") && m.contains(": running"));
        let start_ok = segment
            .iter()
            .find(|(_, m)| m.starts_with("vmrun start") && m.contains(": ok after"));
        let ip_run = at(&|m| m.starts_with("vmrun getGuestIPAddress") && m.contains(": running"));
        let ip_calls: Vec<&(f64, String)> = segment
            .iter()
            .filter(|(_, m)| m.starts_with("vmrun getGuestIPAddress") && m.contains(" after "))
            .collect();
        let (Some(clone_run), Some(clone_ok), Some(start_run), Some(start_ok), Some(ip_run), false) = (
            clone_run,
            clone_ok,
            start_run,
            start_ok,
            ip_run,
            ip_calls.is_empty(),
        ) else {
            return Steps::default();
        };
        let own = |command: &str| -> f64 {
            calls
                .iter()
                .filter(|c| {
                    let args = common::harness::sim_call_args(c);
                    args.contains(&command) && args.iter().any(|a| a.contains(id.as_str()))
                })
                .map(|c| {
                    c["t_end_ms"].as_f64().unwrap_or(0.0) - c["t_start_ms"].as_f64().unwrap_or(0.0)
                })
                .sum()
        };
        let total_ms = run.total.as_secs_f64() * 1e3;
        let post_ms = run.post.as_secs_f64() * 1e3;
        Steps {
            complete: true,
            calls: 2 + ip_calls.len(),
            post_ms,
            queue_ms: clone_run - created,
            clone_ms: after(&clone_ok.1),
            clone_own_ms: own("clone"),
            edit_ms: start_run - clone_ok.0,
            start_ms: after(&start_ok.1),
            start_own_ms: own("start"),
            after_start_ms: ip_run - start_ok.0,
            ip_ms: ip_calls.iter().map(|(_, m)| after(m)).sum(),
            ip_own_ms: own("getGuestIPAddress"),
            // POST → "created" is inside post_ms; the rest is after the IP is logged.
            tail_ms: total_ms - post_ms - (has_ip - created),
            total_ms,
        }
    }
}

/// `2026-11-24T17:00:00.123Z INFO  message` → (milliseconds, message).
fn parse_line(line: &str) -> Option<(f64, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let message = rest.get(6..)?;
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(y, mo, da) as f64;
    Some((
        (days * 86_400.0 + h * 3600.0 + mi * 60.0 + s) * 1e3,
        message,
    ))
}

/// Howard Hinnant's days-from-civil: day number of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn sim_calls(sim: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(sim.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
