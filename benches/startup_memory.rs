//! Memory and start-up: idle RSS, RSS with 1,000 VM records, and the time from starting the
//! process with 1,000 records on disk to its first successful `GET /vms/:id`.
//!
//! `cargo bench --bench startup_memory` (`OSXB_BENCH_STARTS` start-ups, default 10). The
//! records are written as a previous run would have left them (see `write_fleet`); the
//! page cache is warm, as on a server restarted by launchd.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{fmt_duration, mib, Bench, TempDir};
use osx_builder::vm::Vm;

const VMS: usize = 1000;

fn main() {
    common::print_machine();
    let starts: usize = std::env::var("OSXB_BENCH_STARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(10);

    // Idle: no records at all.
    let dir = TempDir::new("bench-idle");
    let root = dir.path().canonicalize().unwrap();
    let idle = common::start_server(&root.join("data"), &root.join("sim"), &[], &[]);
    idle.first_ok("/vms", Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    let (idle_rss, idle_hwm) = idle.rss_kib();
    let idle_threads = idle.threads();
    drop(idle);

    let dir = TempDir::new("bench-startup");
    let root = dir.path().canonicalize().unwrap();
    let (data, sim) = (root.join("data"), root.join("sim"));
    let ids = common::write_fleet(&data, &sim, VMS);
    let path = format!("/vms/{}", ids[VMS / 2]);

    let mut listening = Vec::new();
    let mut serving = Vec::new();
    let mut list_ms = Vec::new();
    let mut loaded = None;
    for n in 0..starts {
        let server = common::start_server(&data, &sim, &[], &[]);
        let first = server.first_ok(&path, Duration::from_secs(30));
        listening.push(server.listening_after);
        serving.push(first);
        if let Some(ms) = vmrun_list_ms(&server.log()) {
            list_ms.push(ms);
        }
        if n == 0 {
            let (status, body) = common::get(server.addr, "/vms").expect("GET /vms");
            assert_eq!(status, 200);
            let all: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            let running = all.iter().filter(|vm| vm["status"] == "running").count();
            assert_eq!(all.len(), VMS, "{}", server.log());
            thread::sleep(Duration::from_secs(1));
            let (rss, hwm) = server.rss_kib();
            loaded = Some((rss, hwm, server.threads(), running, body.len()));
        }
    }

    // The floors: starting a process of this binary that does nothing, and reading and
    // parsing the 1,000 records in this process.
    let mut spawn_only = Vec::new();
    for _ in 0..starts {
        let t = Instant::now();
        let out = std::process::Command::new(common::SERVER_BIN)
            .arg("--version")
            .output()
            .expect("osx-builder --version");
        assert!(out.status.success());
        spawn_only.push(t.elapsed());
    }
    let mut parse_only = Vec::new();
    for _ in 0..starts {
        let t = Instant::now();
        let mut n = 0;
        for entry in std::fs::read_dir(data.join("vms")).unwrap() {
            let dir = entry.unwrap().path();
            let bytes = std::fs::read(dir.join("osx-builder.json")).unwrap();
            let vm: Vm = serde_json::from_slice(&bytes).unwrap();
            n += usize::from(vm.id != osx_builder::vm::VmId::default());
        }
        assert_eq!(n, VMS);
        parse_only.push(t.elapsed());
    }

    println!();
    println!(
        "idle (no VMs):          RSS {} (peak {}), {idle_threads} threads",
        mib(idle_rss),
        mib(idle_hwm)
    );
    if let Some((rss, hwm, threads, running, list_bytes)) = loaded {
        println!(
            "with {VMS} VM records:  RSS {} (peak {}), {threads} threads; {running} running after reconcile; GET /vms is {} KiB",
            mib(rss),
            mib(hwm),
            list_bytes / 1024
        );
        println!(
            "per VM record:          {:.1} KiB of RSS",
            rss.saturating_sub(idle_rss) as f64 / VMS as f64
        );
    }
    println!();
    println!("start-up with {VMS} records on disk, {starts} starts (min / median / max):");
    print_row("spawn → first 200 to GET /vms/:id", &mut serving);
    print_row("spawn → \"listening\" logged", &mut listening);
    if !list_ms.is_empty() {
        let mut list: Vec<Duration> = list_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        print_row("  of which `vmrun list` (reconcile)", &mut list);
    }
    print_row("floor: spawn `osx-builder --version`", &mut spawn_only);
    print_row("floor: read + parse 1,000 records", &mut parse_only);
    println!("target: under 200 ms to serving");
}

fn print_row(name: &str, values: &mut [Duration]) {
    values.sort_unstable();
    println!(
        "  {name:<40} {:>9} {:>9} {:>9}",
        fmt_duration(values[0]),
        fmt_duration(values[values.len() / 2]),
        fmt_duration(values[values.len() - 1])
    );
}

/// `vmrun list: ok after N ms` from the server's log.
fn vmrun_list_ms(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains("vmrun list: ok after"))?
        .rsplit_once(" after ")?
        .1
        .trim_end_matches(" ms")
        .parse()
        .ok()
}
