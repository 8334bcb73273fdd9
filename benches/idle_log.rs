//! `cargo bench --bench idle_log`: what an idle host writes to its log. Two servers, one at
//! `--log-level info` (the default) and one at `debug` (the reference: every routine vmrun
//! call, as every level wrote before `--log-level`), each with a warm pool of 2 booted, idle
//! VMs and the default intervals (`vmrun list` every 3 s, reconcile every 60 s, the pool
//! keeper's IP check of each idle VM every 10 s). Once both pools are ready, counts the lines
//! and bytes each writes for `-- --minutes N` (default 10), and prints them per day.
//! The target: at most a handful of lines at info.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::harness::http::FileServer;
use common::harness::{gold_tar_gz, sha1_hex};
use common::{print_machine, request, BenchServer, TempDir};
use serde_json::{json, Value};

fn minutes() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0)
}

fn ready(server: &BenchServer) -> bool {
    let (_, body) = request(server.addr, "GET", "/pools/idle", None).expect("the server answers");
    let pool: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    pool["ready"] == 2 && server.log().matches(" provisioned in ").count() == 2
}

fn main() {
    let minutes = minutes();
    print_machine();
    println!("two servers, a warm pool of 2 idle VMs each, default intervals, {minutes} min\n");
    let dir = TempDir::new("bench-idle-log");
    let files = FileServer::start();
    let archive = gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let spec = json!({
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
        "headless": true,
        "size": 2,
    });
    let servers: Vec<(&str, BenchServer)> = ["info", "debug"]
        .into_iter()
        .map(|level| {
            let root = dir.path().join(level);
            let server = common::start_server(
                &root.join("data"),
                &root.join("sim"),
                &["--log-level", level, "--min-free-disk", "0"],
                &[],
            );
            let body = spec.to_string();
            let (status, answer) =
                request(server.addr, "PUT", "/pools/idle", Some(body.as_bytes()))
                    .expect("the server answers");
            assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
            (level, server)
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(120);
    while !servers.iter().all(|(_, server)| ready(server)) {
        assert!(Instant::now() < end, "the pools did not fill");
        thread::sleep(Duration::from_millis(50));
    }
    let before: Vec<String> = servers.iter().map(|(_, s)| s.raw_log()).collect();
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(minutes * 60.0));
    let took = started.elapsed().as_secs_f64();
    let per_day = 86_400.0 / took;
    let mut written = Vec::new();
    for ((level, server), before) in servers.iter().zip(&before) {
        let log = server.raw_log();
        let new = &log[before.len()..];
        let lines = new.lines().count();
        println!(
            "--log-level {level:<5}  {lines:>6} lines, {:>9} bytes in {:.1} min; per day {:>9.0} lines, {:>7.2} MB",
            new.len(),
            took / 60.0,
            lines as f64 * per_day,
            new.len() as f64 * per_day / 1e6
        );
        if *level == "info" {
            for line in new.lines().take(10) {
                println!("    {line}");
            }
        }
        written.push(new.len());
    }
    println!(
        "\ninfo writes {:.4} of what debug writes (target: at most a handful of lines at info)",
        written[0] as f64 / written[1].max(1) as f64
    );
}
