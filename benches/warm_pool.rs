//! `cargo bench --bench warm_pool`: a create until its VM runs with an IP, served from a
//! warm pool versus provisioned from the start, with guests that take 5 s to boot
//! (`VMRUN_SIM_TOOLS_DELAY_MS`; on tart `TART_SIM_BOOT_MS`). Each pool sample is one `POST /vms` whose 202 already says
//! running with an IP, taken while the keeper refills the pool behind it (the realistic
//! case: a CI burst drains a pool). Each cold sample is a POST, then polls until the VM
//! runs with an IP. Prints p50 and p99 of both and their ratio; the target is a pool p99
//! under 50 ms.
//!
//! `-- --samples N` (default 40), `-- --size N` (pool size, default 10), `-- --boot-ms N`,
//! `-- --hypervisor tart`: tart-sim with a real tart's delays (`common::TART_DELAYS`) and
//! Linux guests, so that ten idle VMs fit (the pretend Mac, like a real one, runs at most two
//! macOS VMs; a hand-out does the same work whatever the guest).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::harness::http::FileServer;
use common::harness::{gold_tar_gz, sha1_hex, tart_gold_tar_gz};
use common::{arg, percentiles_line, print_machine, request, BenchServer, Hv, TempDir};
use serde_json::{json, Value};

fn call(server: &BenchServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let (status, reply) =
        request(server.addr, method, path, bytes.as_deref()).expect("the server answers");
    (
        status,
        serde_json::from_slice(&reply).unwrap_or(Value::Null),
    )
}

fn ready(server: &BenchServer) -> u64 {
    call(server, "GET", "/pools/bench", None).1["ready"]
        .as_u64()
        .unwrap_or(0)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn line(name: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    percentiles_line(&format!("{name:<10}"), samples)
}

fn main() {
    let samples = arg("--samples", 40) as usize;
    let size = arg("--size", 10);
    let boot_ms = arg("--boot-ms", 5000).to_string();
    let hv = common::hypervisor_arg();
    print_machine();
    match hv {
        Hv::Vmware => println!("VMware (vmrun-sim)"),
        Hv::Tart => println!(
            "tart (tart-sim, delays '{}', assumed, not measured on a Mac; Linux guests)",
            common::tart_delays()
        ),
    }
    println!("guest boot {boot_ms} ms, pool size {size}, {samples} samples each\n");

    let dir = TempDir::new("bench-warm-pool");
    let files = FileServer::start();
    let archive = match hv {
        Hv::Vmware => gold_tar_gz("box"),
        Hv::Tart => tart_gold_tar_gz("box", "linux"),
    };
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let threads = (samples + size as usize + 4).to_string();
    let server = common::start_server_on(
        hv,
        dir.path(),
        &[
            "--max-vms",
            "0",
            "--min-free-disk",
            "0",
            "--provision-threads",
            &threads,
            "--ip-poll-interval",
            "0.25",
        ],
        &[(common::boot_env(hv), &boot_ms)],
    );
    let create = json!({
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
        "headless": true,
        "guestinfo": {"name": "bench"},
    });
    let mut spec = create.clone();
    spec.as_object_mut().unwrap().remove("guestinfo");
    spec["size"] = json!(size);
    let (status, answer) = call(&server, "PUT", "/pools/bench", Some(&spec));
    assert_eq!(status, 201, "{answer}");
    let fill = Duration::from_secs(120);
    wait_until("the pool to fill", fill, || ready(&server) == size);

    let mut from_pool = Vec::new();
    while from_pool.len() < samples {
        // Drain the pool as a burst would, one create after another; refilled between.
        wait_until("the pool to refill", fill, || ready(&server) == size);
        for _ in 0..size.min((samples - from_pool.len()) as u64) {
            let started = Instant::now();
            let (status, vm) = call(&server, "POST", "/vms", Some(&create));
            let took = started.elapsed();
            assert_eq!(status, 202, "{vm}");
            assert!(
                vm["status"] == "running" && vm["ip_address"] != "",
                "not from the pool: {vm}"
            );
            from_pool.push(took);
        }
    }

    // The server's own account of each hand-out, by step: what the outliers waited on.
    let log = server.log();
    let mut steps: Vec<(&str, Vec<Duration>)> = ["in", "choice", "record", "guestinfo"]
        .iter()
        .map(|name| (*name, Vec::new()))
        .collect();
    for entry in log
        .lines()
        .filter(|l| l.contains("handed out from warm pool"))
    {
        for (name, values) in &mut steps {
            let needle = format!("{name} ");
            let value = entry
                .split(needle.as_str())
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(ms) = value {
                values.push(Duration::from_secs_f64(ms / 1000.0));
            }
        }
    }

    // Cold: another shape, so no pool serves it; all at once, as a burst.
    let mut cold_body = create.clone();
    cold_body["cpus"] = json!(4);
    let server = std::sync::Arc::new(server);
    let cold_threads: Vec<_> = (0..samples)
        .map(|_| {
            let (server, body) = (server.clone(), cold_body.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let (status, vm) = call(&server, "POST", "/vms", Some(&body));
                assert_eq!(status, 202, "{vm}");
                let path = format!("/vms/{}", vm["id"].as_str().unwrap());
                loop {
                    let (_, vm) = call(&server, "GET", &path, None);
                    if vm["status"] == "running" && vm["ip_address"] != "" {
                        return started.elapsed();
                    }
                    assert_ne!(vm["status"], "failed", "{vm}");
                    thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    let mut cold: Vec<Duration> = cold_threads
        .into_iter()
        .map(|t| t.join().expect("cold create"))
        .collect();

    println!("hand-out as the server timed it (log lines):");
    for (name, values) in &mut steps {
        let label = if *name == "in" { "total" } else { name };
        line(label, values);
    }
    println!("\nPOST /vms -> running with an IP");
    let (pool_p50, pool_p99) = line("warm pool", &mut from_pool);
    let (cold_p50, cold_p99) = line("cold", &mut cold);
    println!(
        "ratio cold/pool: p50 {:.0}x, p99 {:.0}x",
        cold_p50.as_secs_f64() / pool_p50.as_secs_f64(),
        cold_p99.as_secs_f64() / pool_p99.as_secs_f64()
    );
    println!(
        "target: pool p99 < 50 ms: {}",
        if pool_p99 < Duration::from_millis(50) {
            "PASS"
        } else {
            "MISS"
        }
    );
}
