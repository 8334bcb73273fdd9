//! Polling: `GET /vms/:id` of one running VM among 1,000, at 32 keep-alive connections, against
//! nginx answering the same JSON bytes from a file in the same run.
//!
//! `cargo bench --bench polling`: five rounds of 10 s per server (`OSXB_BENCH_ROUNDS`,
//! `OSXB_BENCH_SECONDS`), each round nginx then osx-builder, medians reported: the
//! machine may be shared, and short interleaved rounds let a burst of other work spoil
//! a pair or two, not the result.
//! The 1,000 VMs are records written to disk before the server starts, with the simulator's
//! state saying they run: the restart's reconcile (one `vmrun list`) keeps them `running`.

mod common;

use std::time::Duration;

use common::{fmt_duration, mib, Bench, LoadResult, Nginx, TempDir};

const VMS: usize = 1000;
const CONNECTIONS: usize = 32;

fn main() {
    common::print_machine();
    let seconds: u64 = std::env::var("OSXB_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let run = Duration::from_secs(seconds);
    let rounds: usize = std::env::var("OSXB_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let warmup = Duration::from_secs(1);

    let dir = TempDir::new("bench-polling");
    let root = dir.path().canonicalize().unwrap();
    let (data, sim) = (root.join("data"), root.join("sim"));
    let ids = common::write_fleet(&data, &sim, VMS);
    let server = common::start_server(&data, &sim, &[], &[]);

    let (status, list) = common::get(server.addr, "/vms").expect("GET /vms");
    assert_eq!(status, 200);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&list).unwrap();
    let running = list.iter().filter(|vm| vm["status"] == "running").count();
    println!(
        "VMs known to the server: {} ({running} running after the restart's reconcile)",
        list.len()
    );

    let id = ids[VMS / 2];
    let path = format!("/vms/{id}");
    let (status, body) = common::get(server.addr, &path).expect("GET one VM");
    assert_eq!(status, 200);
    println!("polled: GET {path} ({} bytes of JSON)", body.len());

    let reference = Nginx::find().map(|binary| {
        let www = root.join("www");
        std::fs::create_dir_all(www.join("vms")).unwrap();
        std::fs::write(www.join("vms").join(id.to_string()), &body).unwrap();
        let nginx_dir = root.join("nginx");
        std::fs::create_dir_all(&nginx_dir).unwrap();
        let nginx = Nginx::start(&binary, &nginx_dir, &www);
        let (status, same) = common::get(nginx.addr, &path).expect("GET from nginx");
        assert_eq!(
            (status, &same),
            (200, &body),
            "nginx must answer the same bytes"
        );
        println!(
            "reference: {} (worker_processes {}, access_log off, keep-alive), same {} bytes",
            binary.display(),
            nginx.workers,
            same.len()
        );
        nginx
    });
    if reference.is_none() {
        println!("reference: nginx not found (apt-get install nginx-light); no ratio");
    }

    let tool = if common::which("wrk").is_some() {
        "wrk"
    } else {
        "the Rust keep-alive client (wrk not found)"
    };
    println!(
        "load: {tool}, {CONNECTIONS} connections, {}s warm-up then {}s measured per server",
        warmup.as_secs(),
        run.as_secs()
    );

    let mut pairs = Vec::new();
    for round in 1..=rounds {
        let theirs = reference.as_ref().map(|nginx| {
            common::load(nginx.addr, &path, CONNECTIONS, warmup);
            let r = common::load(nginx.addr, &path, CONNECTIONS, run);
            println!("{}", r.line(&format!("nginx, round {round}")));
            r
        });
        common::load(server.addr, &path, CONNECTIONS, warmup);
        let ours = common::load(server.addr, &path, CONNECTIONS, run);
        println!("{}", ours.line(&format!("osx-builder, round {round}")));
        pairs.push((ours, theirs));
    }

    let (rss, hwm) = server.rss_kib();
    println!(
        "osx-builder after the load: RSS {} (peak {}), {} threads",
        mib(rss),
        mib(hwm),
        server.threads()
    );

    // The machine may be shared: each round pairs the two servers under the same
    // conditions, and the median round is the one reported.
    let ours: Vec<LoadResult> = pairs.iter().map(|(o, _)| o.clone()).collect();
    let ours = median(&ours);
    println!();
    println!("{}", ours.line("osx-builder (median)"));
    if reference.is_some() {
        let theirs: Vec<LoadResult> = pairs.iter().filter_map(|(_, t)| t.clone()).collect();
        let theirs = median(&theirs);
        let mut ratios: Vec<f64> = pairs
            .iter()
            .filter_map(|(o, t)| t.as_ref().map(|t| o.requests_per_sec / t.requests_per_sec))
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!("{}", theirs.line("nginx (median)"));
        println!(
            "ratio of requests/s: {:.2} (median of the rounds' ratios {}; target >= 0.50)",
            ratios[ratios.len() / 2],
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "p99: {} vs nginx {} (target < 5 ms)",
            fmt_duration(ours.p99),
            fmt_duration(theirs.p99)
        );
    } else {
        println!("p99 {} (target < 5 ms)", fmt_duration(ours.p99));
    }
}

/// Each figure's median over the rounds (requests/s, p50 and p99 separately).
fn median(runs: &[LoadResult]) -> LoadResult {
    let pick = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    LoadResult {
        tool: runs[0].tool,
        requests: runs.iter().map(|r| r.requests).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
        requests_per_sec: pick(runs.iter().map(|r| r.requests_per_sec).collect()),
        p50: Duration::from_secs_f64(pick(runs.iter().map(|r| r.p50.as_secs_f64()).collect())),
        p99: Duration::from_secs_f64(pick(runs.iter().map(|r| r.p99.as_secs_f64()).collect())),
    }
}
