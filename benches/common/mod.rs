//! Shared pieces of the benchmarks: the real release binary against the vmrun simulator
//! (started as the integration tests start it, but with the process id at hand for RSS), a
//! fleet of VM records written straight to disk, a load generator (wrk when installed, else a
//! keep-alive Rust client) and nginx as the reference static server. Everything listens on
//! 127.0.0.1 only, and every load run is bounded in time.
#![allow(dead_code)]

/// The integration tests' harness: temp folders, gold archives, checksums, a tiny client.
#[path = "../../tests/common/mod.rs"]
pub mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use osx_builder::image::{ChecksumType, ImageSpec};
use osx_builder::vm::VmId;
use osx_builder::vm::{NetworkType, Phase, Progress, Status, Vm};

// Not every bench uses each.
#[allow(unused_imports)]
pub use harness::{Hv, TempDir, SERVER_BIN};

/// The machine the figures were taken on, printed first by every benchmark.
pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown memory".into());
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // Other work on the machine moves every figure: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    println!("machine: {cores} cores, {cpu}, {memory}; load average {load} at the start");
    println!("server:  {SERVER_BIN}");
}

/// The osx-builder binary, running against the simulator.
/// The benchmarks' server is the integration tests' server, started with its own defaults.
pub type BenchServer = harness::Server;

/// What a benchmark starts and reads of a server beyond what the tests need.
pub trait Bench {
    /// (VmRSS, VmHWM) in KiB, from /proc.
    fn rss_kib(&self) -> (u64, u64);
    fn threads(&self) -> u64;
    /// Waits for the first 200 to `GET path`, polling as fast as a client could; returns the
    /// time since the spawn.
    fn first_ok(&self, path: &str, deadline: Duration) -> Duration;
}

/// `--port 0 --bind 127.0.0.1 --data-dir <data>`, vmrun = the simulator with its state in
/// `sim`, then `args` (a later flag wins), `OSXB_BENCH_SERVER_ARGS` and `env`.
pub fn start_server(data: &Path, sim: &Path, args: &[&str], env: &[(&str, &str)]) -> BenchServer {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(extra_server_args());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    harness::Server::launch(data, sim, &all, &env)
}

impl Bench for harness::Server {
    fn rss_kib(&self) -> (u64, u64) {
        rss_kib(self.pid())
    }

    fn threads(&self) -> u64 {
        proc_status_field(self.pid(), "Threads:").unwrap_or(0)
    }

    fn first_ok(&self, path: &str, deadline: Duration) -> Duration {
        let end = Instant::now() + deadline;
        loop {
            if let Ok((200, _)) = get(self.addr, path) {
                return self.spawned_at.elapsed();
            }
            assert!(Instant::now() < end, "no 200 for {path}:\n{}", self.log());
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// `--hypervisor vmware|tart` among the benchmark's own arguments (`cargo bench --bench NAME
/// -- --hypervisor tart`); VMware when not given.
pub fn hypervisor_arg() -> Hv {
    Hv::of(&std::env::args().collect::<Vec<_>>())
}

/// The costs of a real tart on an Apple Silicon Mac, as the simulator's fault rules: about
/// 30 ms to start any tart process (a Swift binary), an APFS clone of the disk 200 ms more,
/// `list` 40 ms more (it reads every VM's folder), `run` 150 ms more before it holds the
/// VM's lock, `stop` 500 ms more (the power-off). Assumed from tart's design, not measured
/// on a Mac; `OSXB_BENCH_TART_FAULTS` replaces them (empty for none).
pub const TART_DELAYS: &str =
    "* delay 30; clone delay 200; list delay 40; run delay 150; stop delay 500";

/// The variable of `hv`'s simulator that makes a started guest take `ms` to have an IP.
pub fn boot_env(hv: Hv) -> &'static str {
    match hv {
        Hv::Vmware => "VMRUN_SIM_TOOLS_DELAY_MS",
        Hv::Tart => "TART_SIM_BOOT_MS",
    }
}

/// The tart simulator's delays for this run: [`TART_DELAYS`] or `OSXB_BENCH_TART_FAULTS`.
pub fn tart_delays() -> String {
    std::env::var("OSXB_BENCH_TART_FAULTS").unwrap_or_else(|_| TART_DELAYS.to_string())
}

/// [`start_server`] on `hv`, its data in `root/data` and its simulator's state where the
/// tests keep it; tart's simulator runs with [`tart_delays`].
pub fn start_server_on(hv: Hv, root: &Path, args: &[&str], env: &[(&str, &str)]) -> BenchServer {
    let hv_args = hv.args();
    let mut all: Vec<&str> = hv_args.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    let delays = tart_delays();
    let mut env = env.to_vec();
    if hv == Hv::Tart {
        env.push(("TART_SIM_FAULTS", &delays));
    }
    start_server(&root.join("data"), &hv.sim_state(root), &all, &env)
}

/// `OSXB_BENCH_SERVER_ARGS="--http-threads 4"`: settings to try without editing a bench.
fn extra_server_args() -> Vec<String> {
    std::env::var("OSXB_BENCH_SERVER_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

pub fn rss_kib(pid: u32) -> (u64, u64) {
    (
        proc_status_field(pid, "VmRSS:").unwrap_or(0),
        proc_status_field(pid, "VmHWM:").unwrap_or(0),
    )
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One GET on a fresh connection: status and body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    request(addr, "GET", path, None)
}

/// One request on a fresh connection (`Connection: close`): status and body; a server that
/// is not there yet is an error, not a panic.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let answer = harness::http::try_call(method, &format!("http://{addr}{path}"), body, &[])?;
    Ok((answer.status, answer.body))
}

/// FNV-1a, as the simulator keys its per-VM state files.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// `n` VMs that a previous run of the server left: for each a record
/// (`<data>/vms/<id>/osx-builder.json`, status running, phase ready, an IP), a VMX, and the
/// simulator's state saying it runs, so that the restart's `vmrun list` keeps them running.
/// Written directly (no fsync): making 1,000 VMs through the API would take minutes of
/// simulated clones and measure nothing this benchmark is about.
pub fn write_fleet(data: &Path, sim: &Path, n: usize) -> Vec<VmId> {
    let vms = data.join("vms");
    let sim_vms = sim.join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    std::fs::create_dir_all(&sim_vms).unwrap();
    let vms = vms.canonicalize().unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = VmId::new();
        let created = osx_builder::sys::time::rfc3339(1_795_539_600 + i as i64, 0);
        let vm = Vm {
            id,
            image: Some(ImageSpec {
                url: "http://127.0.0.1:1/boxes/macos-13.tar.gz".into(),
                checksum: "5cf00d380e28d02f30efaceafef7c7c8bdedae33".into(),
                checksum_type: ChecksumType::Sha1,
            }),
            name: None,
            ttl: None,
            expires_at: None,
            vmx_removed: Vec::new(),
            labels: Default::default(),
            guestinfo_keys: Vec::new(),
            ip_source: None,
            keep: false,
            pool: None,
            cpus: 2,
            memory: 1024,
            network_type: NetworkType::Nat,
            headless: true,
            callback_url: None,
            ip_address: format!("172.16.{}.{}", i / 250, 2 + i % 250),
            status: Status::Running,
            guest_os: "darwin21-64".into(),
            error: None,
            progress: Progress {
                phase: Phase::Ready,
                bytes_downloaded: 0,
                bytes_total: None,
            },
            created_at: created.clone(),
            updated_at: created,
        };
        let dir = vms.join(id.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("osx-builder.json"),
            serde_json::to_vec(&vm).unwrap(),
        )
        .unwrap();
        let vmx = dir.join(format!("{id}.vmx"));
        std::fs::write(
            &vmx,
            format!(".encoding = \"UTF-8\"\ndisplayName = \"{id}\"\nguestOS = \"darwin21-64\"\n"),
        )
        .unwrap();
        let vmx_text = vmx.to_string_lossy().into_owned();
        let state = serde_json::json!({
            "vmx": vmx_text,
            "running": true,
            "started_at_ms": now_ms,
            "mode": "nogui",
            "locks": [],
        });
        std::fs::write(
            sim_vms.join(format!("{:016x}.json", fnv64(vmx_text.as_bytes()))),
            state.to_string(),
        )
        .unwrap();
        ids.push(id);
    }
    ids
}

/// A free port on 127.0.0.1 for a server that cannot be told `--port 0`.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn wait_for_port(addr: SocketAddr, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// nginx from the distribution, run as this user with a configuration in a temp folder,
/// answering every GET with the file at the same path under its root.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub workers: String,
}

impl Nginx {
    pub fn find() -> Option<PathBuf> {
        which("nginx").or_else(|| {
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/bin/nginx",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        })
    }

    /// Serves `root`; `dir` holds its configuration, pid file, logs and temp folders.
    pub fn start(binary: &Path, dir: &Path, root: &Path) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = dir.display();
        let workers = "auto";
        let config = format!(
            "worker_processes {workers};\n\
             daemon off;\n\
             master_process on;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n\
               server {{\n\
                 listen {addr};\n\
                 root {};\n\
                 default_type application/json;\n\
                 location / {{ }}\n\
               }}\n\
             }}\n",
            root.display()
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let nginx = Self {
            child,
            addr,
            workers: workers.into(),
        };
        if !wait_for_port(addr, Duration::from_secs(10)) {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            panic!("nginx did not start on {addr}: {log}");
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What one load run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub tool: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl LoadResult {
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>9.0} req/s   p50 {:>7}   p99 {:>7}   ({} requests, {} errors, {})",
            self.requests_per_sec,
            fmt_duration(self.p50),
            fmt_duration(self.p99),
            self.requests,
            self.errors,
            self.tool
        )
    }
}

/// GETs `path` on `connections` keep-alive connections for `duration`: wrk when it is on
/// the PATH, else the Rust client below.
pub fn load(addr: SocketAddr, path: &str, connections: usize, duration: Duration) -> LoadResult {
    match which("wrk") {
        Some(wrk) => load_wrk(&wrk, addr, path, connections, duration),
        None => load_rust(addr, path, connections, duration),
    }
}

fn load_wrk(
    wrk: &Path,
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let threads = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(connections);
    let out = Command::new(wrk)
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{}s", duration.as_secs().max(1)),
            &format!("http://{addr}{path}"),
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = parse_wrk(&text);
    parsed.unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"))
}

/// Reads `Requests/sec`, the 50% and 99% latency lines, the request count and the error
/// lines of `wrk --latency`.
pub fn parse_wrk(text: &str) -> Option<LoadResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut errors = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_wrk_duration(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_wrk_duration(v.trim());
        } else if line.contains("requests in") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(LoadResult {
        tool: "wrk",
        requests: requests?,
        errors,
        requests_per_sec: rps?,
        p50: p50?,
        p99: p99?,
    })
}

fn parse_wrk_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// A load client for machines without wrk: one thread per keep-alive connection, each
/// sending the next GET when the previous answer is read.
pub fn load_rust(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            let stop = stop.clone();
            thread::spawn(move || keep_alive_loop(addr, &request, &stop))
        })
        .collect();
    thread::sleep(duration);
    stop.store(true, Ordering::SeqCst);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut l, e) = worker.join().unwrap();
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    LoadResult {
        tool: "rust keep-alive client",
        requests: latencies.len() as u64,
        errors,
        requests_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

fn keep_alive_loop(addr: SocketAddr, request: &[u8], stop: &AtomicBool) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buf = vec![0u8; 64 * 1024];
    'connect: while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            errors += 1;
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            if stream.write_all(request).is_err() {
                errors += 1;
                continue 'connect;
            }
            match read_one_response(&mut stream, &mut buf) {
                Some(200) => latencies.push(sent.elapsed()),
                Some(_) => errors += 1,
                None => {
                    errors += 1;
                    continue 'connect;
                }
            }
        }
    }
    (latencies, errors)
}

/// Reads one response with a Content-Length body; returns its status.
fn read_one_response(stream: &mut TcpStream, buf: &mut [u8]) -> Option<u16> {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())?;
            let mut have = filled - end - 4;
            while have < length {
                let n = stream.read(&mut buf[..]).ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
            }
            return Some(status);
        }
        if filled == buf.len() {
            return None;
        }
    }
}

/// `-- NAME N` on the bench's command line, else `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bare cost of one fsync on this disk: a new small file written and flushed.
pub fn fsync_once(root: &Path, n: usize) -> Duration {
    let started = Instant::now();
    let mut file = std::fs::File::create(root.join(format!("fsync-{n}"))).unwrap();
    file.write_all(&[b' '; 450]).unwrap();
    file.sync_all().unwrap();
    started.elapsed()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `samples` and prints `label`, their count, p50, p99 and max on one line; returns
/// (p50, p99).
pub fn percentiles_line(label: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(samples, 50.0), percentile(samples, 99.0));
    println!(
        "{label} n={:<4} p50 {:>9}  p99 {:>9}  max {:>9}",
        samples.len(),
        fmt_duration(p50),
        fmt_duration(p99),
        fmt_duration(*samples.last().unwrap_or(&Duration::ZERO))
    );
    (p50, p99)
}

pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
