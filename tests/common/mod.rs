//! Shared harness of the integration tests: a temp data folder, the real server binary
//! pointed at the vmrun simulator, a loopback HTTP server for images and a callback
//! receiver. Everything listens on 127.0.0.1 only.
#![allow(dead_code)]

pub mod archives;
pub mod contract;
pub mod etcd;
pub mod fleet;
pub mod http;
pub mod log_lines;
pub mod pki;
pub mod scenarios;
pub mod tls_relay;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_osx-builder");
pub const SIM_BIN: &str = env!("CARGO_BIN_EXE_vmrun-sim");
pub const TART_SIM_BIN: &str = env!("CARGO_BIN_EXE_tart-sim");

/// `dir/tart`: a script that runs the tart simulator with the switches `env`. The switches
/// reach the simulator through it because the driver passes the server's environment on,
/// and tests share one process.
pub fn tart_wrapper(dir: &Path, env: &[(&str, &str)]) -> PathBuf {
    let wrapper = dir.join("tart");
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in env {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!("exec '{TART_SIM_BIN}' \"$@\"\n"));
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// Which hypervisor a test's server runs: VMware through `vmrun-sim`, or tart through
/// `tart-sim` (its state in the server's `TART_HOME`, `data/tart/.sim`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hv {
    #[default]
    Vmware,
    Tart,
}

impl Hv {
    pub fn name(self) -> &'static str {
        match self {
            Hv::Vmware => "vmware",
            Hv::Tart => "tart",
        }
    }

    /// The tool `/healthz` names its check after.
    pub fn tool(self) -> &'static str {
        match self {
            Hv::Vmware => "vmrun",
            Hv::Tart => "tart",
        }
    }

    /// The hypervisor a server's flags choose (the last `--hypervisor` wins).
    pub fn of(args: &[String]) -> Hv {
        let mut hv = Hv::Vmware;
        for pair in args.windows(2) {
            if pair[0] == "--hypervisor" {
                hv = if pair[1] == "tart" {
                    Hv::Tart
                } else {
                    Hv::Vmware
                };
            }
        }
        for arg in args {
            match arg.as_str() {
                "--hypervisor=tart" => hv = Hv::Tart,
                "--hypervisor=vmware" => hv = Hv::Vmware,
                _ => {}
            }
        }
        hv
    }

    /// The server's flags that choose this hypervisor (VMware's simulator is set through
    /// the environment by [`Server::launch`]).
    pub fn args(self) -> Vec<String> {
        match self {
            Hv::Vmware => Vec::new(),
            Hv::Tart => ["--hypervisor", "tart", "--tart-path", TART_SIM_BIN]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Where the simulator of a server whose test folder is `root` keeps its state:
    /// `faults` and `calls.log` there are what the tests write and read.
    pub fn sim_state(self, root: &Path) -> PathBuf {
        match self {
            Hv::Vmware => root.join("sim"),
            Hv::Tart => root.join("data/tart/.sim"),
        }
    }

    /// A small gold image of this hypervisor as a tar.gz under `top/`.
    pub fn gold_tar_gz(self, top: &str) -> Vec<u8> {
        match self {
            Hv::Vmware => gold_tar_gz(top),
            Hv::Tart => tart_gold_tar_gz(top, "darwin"),
        }
    }
}

/// A tart VM folder (`config.json`, a sparse-looking `disk.img`, `nvram.bin`) as a tar.gz
/// under `top/`, of the guest `os` (`darwin` or `linux`).
pub fn tart_gold_tar_gz(top: &str, os: &str) -> Vec<u8> {
    let config = serde_json::json!({
        "version": 1, "os": os, "arch": "arm64", "cpuCount": 2, "cpuCountMin": 1,
        "memorySize": 4u64 << 30, "memorySizeMin": 1u64 << 30,
        "macAddress": "aa:bb:cc:00:00:01", "display": {"width": 1024, "height": 768},
        "diskFormat": "raw"
    })
    .to_string();
    let disk = vec![0u8; 4096];
    tar_gz_of(
        top,
        &[
            ("config.json", config.as_bytes()),
            ("disk.img", &disk),
            ("nvram.bin", b"nvram"),
        ],
    )
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "osxb-{tag}-{}-{n}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        kill_tart_runners(&self.0.join("data/tart"));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tart run` processes live in sessions of their own and outlive the server by design:
/// a test's ones (named in the simulator's `runs/` of `tart_home`) are killed when it ends.
pub fn kill_tart_runners(tart_home: &Path) {
    let Ok(entries) = std::fs::read_dir(tart_home.join(".sim/runs")) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(record) = std::fs::read(entry.path()) else {
            continue;
        };
        let Some(pid) = serde_json::from_slice::<Value>(&record)
            .ok()
            .and_then(|r| r["pid"].as_i64())
        else {
            continue;
        };
        // The pid may have been reused since: only a tart-sim of this home is killed.
        let home = tart_home.to_string_lossy().into_owned();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ours = is_process(pid as i32, "tart-sim")
            && (environ.is_empty() || String::from_utf8_lossy(&environ).contains(&home));
        if ours {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The lines every test gold VMX shares: a macOS guest with one disk and one NIC.
macro_rules! gold_vmx_head {
    () => {
        "\
.encoding = \"UTF-8\"
config.version = \"8\"
virtualHW.version = \"19\"
displayName = \"gold\"
guestOS = \"darwin21-64\"
memsize = \"2048\"
numvcpus = \"1\"
scsi0.present = \"TRUE\"
scsi0:0.present = \"TRUE\"
scsi0:0.fileName = \"disk.vmdk\"
ethernet0.present = \"TRUE\"
"
    };
}

/// A gold VMX with a single NAT NIC, for tests that build their own archives.
pub const GOLD_VMX: &str = concat!(gold_vmx_head!(), "ethernet0.connectionType = \"nat\"\n");

/// The text of the gold VM's disk (the simulator only reads its name).
pub const DISK_DESCRIPTOR: &str = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n";

/// A small gold VM as a tar.gz: `<top>/gold.vmx` and its disk.
pub fn gold_tar_gz(top: &str) -> Vec<u8> {
    gold_tar_gz_padded(top, 0)
}

/// The same with `pad` bytes of incompressible data in an extra file, so that a trickled
/// download takes long enough to be caught in progress.
pub fn gold_tar_gz_padded(top: &str, pad: usize) -> Vec<u8> {
    let vmx = concat!(
        gold_vmx_head!(),
        "ethernet0.connectionType = \"bridged\"
ethernet0.virtualDev = \"e1000e\"
ethernet0.addressType = \"generated\"
ethernet0.generatedAddress = \"00:0c:29:aa:bb:cc\"
ethernet1.present = \"TRUE\"
ethernet1.connectionType = \"hostonly\"
"
    );
    let padding = noise(pad, 1);
    let mut files = vec![
        ("gold.vmx", vmx.as_bytes()),
        ("disk.vmdk", DISK_DESCRIPTOR.as_bytes()),
    ];
    if pad > 0 {
        files.push(("padding.bin", &padding));
    }
    tar_gz_of(top, &files)
}

/// Deterministic bytes that do not compress away (as a real disk image's compressed blocks
/// do not); `seed` makes each run of them, and so an archive's checksum, different.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::Digest;
    format!("{:x}", sha1::Sha1::digest(bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// The real osx-builder binary, running against the simulator.
pub struct Server {
    child: Child,
    pub base: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub sim_state: PathBuf,
    /// stderr as text lines: a JSON line is checked and turned into its text form.
    pub log: Arc<Mutex<String>>,
    /// stderr as the server wrote it.
    raw_log: Arc<Mutex<String>>,
    /// JSON lines that broke the format (a JSON run only); the test fails when the server goes.
    bad_lines: Arc<Mutex<Vec<String>>>,
    /// Reads stderr until the pipe ends.
    reader: thread::JoinHandle<()>,
    pub spawned_at: Instant,
    /// From spawn to the "listening on" log line.
    pub listening_after: Duration,
}

#[derive(Default)]
pub struct ServerOptions {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl ServerOptions {
    /// The same options on `hypervisor` (its flags first: a test's own flags win).
    pub fn on(mut self, hypervisor: Hv) -> Self {
        let mut args = hypervisor.args();
        args.append(&mut self.args);
        self.args = args;
        self
    }

    /// The hypervisor these options choose.
    pub fn hypervisor(&self) -> Hv {
        Hv::of(&self.args)
    }
}

/// Server options of command-line flags only.
pub fn options(args: &[&str]) -> ServerOptions {
    options_env(&[], args)
}

/// Server options of environment variables (the simulator's switches among them) and flags.
pub fn options_env(env: &[(&str, &str)], args: &[&str]) -> ServerOptions {
    ServerOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every file under `root` whose bytes contain `needle`.
pub fn files_containing(root: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// The value of the first `/metrics` line of `text` that starts with `line_start`.
pub fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The arguments of one call in the simulator's `calls.log`.
pub fn sim_call_args(call: &Value) -> Vec<&str> {
    call["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// True if `pid` is a live vmrun-sim (a pid may have been reused since it was written).
pub fn is_simulator(pid: i32) -> bool {
    is_process(pid, "vmrun-sim")
}

/// True if `pid` is a live process whose command line contains `name`.
pub fn is_process(pid: i32, name: &str) -> bool {
    let out = Command::new("ps")
        .args(["-o", "command=", "-p", &pid.to_string()])
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains(name),
        Err(_) => std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(name))
            .unwrap_or(false),
    }
}

impl Server {
    pub fn start(root: &Path) -> Self {
        Self::start_with(root, ServerOptions::default())
    }

    /// Starts the server with its data under `root/data` and the simulator's state under
    /// `root/sim` (tart's: `root/data/tart/.sim`); both survive a restart with the same root.
    pub fn start_with(root: &Path, options: ServerOptions) -> Self {
        let hypervisor = options.hypervisor();
        let mut args: Vec<String> = Vec::new();
        args.extend(
            [
                "--ip-poll-interval",
                "0.05",
                "--provision-threads",
                "8",
                // No capacity limits unless a test sets them (a later flag wins): CI disks can
                // have less free space than the floor.
                "--max-vms",
                "0",
                "--min-free-disk",
                "0",
            ]
            .map(String::from),
        );
        args.extend(options.args);
        let data = root.join("data");
        let sim = hypervisor.sim_state(root);
        Self::launch(&data, &sim, &args, &options.env)
    }

    /// Starts the server as an operator would, with its own defaults: only
    /// `--port 0 --bind 127.0.0.1 --data-dir <data_dir>`, vmrun = the simulator with its
    /// state in `sim_state`, the log at debug, then `args` (a later flag wins) and `env`. The benchmarks start
    /// it this way.
    pub fn launch(
        data_dir: &Path,
        sim_state: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Self {
        std::fs::create_dir_all(sim_state).unwrap();
        let mut command = Command::new(SERVER_BIN);
        command
            .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("VMWARE_VMRUN_PATH", SIM_BIN)
            .env("VMRUN_SIM_STATE", sim_state)
            .env("OSX_BUILDER_VMRUN_HOST_TYPE", "ws")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Tests read the routine vmrun calls in the log (which reconcile ran, which call
        // failed): debug, unless this run or the test asks for another level.
        if std::env::var_os("OSX_BUILDER_LOG_LEVEL").is_none() {
            command.env("OSX_BUILDER_LOG_LEVEL", "debug");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let spawned_at = Instant::now();
        let mut child = command.spawn().expect("start osx-builder");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let raw_log = Arc::new(Mutex::new(String::new()));
        let bad_lines = Arc::new(Mutex::new(Vec::new()));
        let json = log_lines::server_logs_json(args, env);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let (log, raw_log, bad_lines) = (log.clone(), raw_log.clone(), bad_lines.clone());
            let echo = std::env::var_os("OSXB_TEST_LOG").is_some()
                || std::env::var_os("OSXB_BENCH_LOG").is_some();
            thread::spawn(move || {
                for raw in BufReader::new(stderr).lines() {
                    let Ok(raw) = raw else { break };
                    if echo {
                        eprintln!("[server] {raw}");
                    }
                    {
                        let mut raw_log = raw_log.lock().unwrap();
                        raw_log.push_str(&raw);
                        raw_log.push('\n');
                    }
                    let line = if json {
                        log_lines::json_to_text(&raw).unwrap_or_else(|problem| {
                            bad_lines.lock().unwrap().push(problem);
                            raw.clone()
                        })
                    } else {
                        raw
                    };
                    for scheme in ["http", "https"] {
                        let marker = format!("listening on {scheme}://");
                        if let Some(rest) = line.split(&marker).nth(1) {
                            let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                            let _ = tx.send((scheme, addr, spawned_at.elapsed()));
                        }
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let started = rx.recv_timeout(Duration::from_secs(60));
        let Some((scheme, addr, listening_after, parsed)) =
            started.ok().and_then(|(scheme, addr, after)| {
                Some((scheme, addr.clone(), after, addr.parse().ok()?))
            })
        else {
            let _ = child.kill();
            panic!("server did not start: {}", log.lock().unwrap());
        };
        Self {
            child,
            base: format!("{scheme}://{addr}"),
            addr: parsed,
            data_dir: data_dir.to_path_buf(),
            sim_state: sim_state.to_path_buf(),
            log,
            raw_log,
            bad_lines,
            reader,
            spawned_at,
            listening_after,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// stderr byte for byte: JSON lines stay JSON.
    pub fn raw_log(&self) -> String {
        self.raw_log.lock().unwrap().clone()
    }

    /// True once the log has a line containing `needle`: the log is read from the server's
    /// stderr by a thread of its own, so a line can arrive after the answer it follows.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up, as after a crash or power loss.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }

    pub fn set_faults(&self, faults: &str) {
        std::fs::write(self.sim_state.join("faults"), faults).unwrap();
    }

    /// The simulator's own answer, as a person with vmrun would see it.
    pub fn sim(&self, args: &[&str]) -> String {
        let out = Command::new(SIM_BIN)
            .args(args)
            .env("VMRUN_SIM_STATE", &self.sim_state)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sim_calls(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.sim_state.join("calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many of the simulator's calls so far have `command` among their arguments.
    pub fn sim_calls_of(&self, command: &str) -> usize {
        self.sim_calls()
            .iter()
            .filter(|c| sim_call_args(c).contains(&command))
            .count()
    }

    pub fn create(&self, body: &Value) -> (u16, Value) {
        http::request("POST", &self.url("/vms"), Some(&body.to_string()), &[])
    }

    pub fn get_vm(&self, id: &str) -> (u16, Value) {
        http::request("GET", &self.url(&format!("/vms/{id}")), None, &[])
    }

    pub fn delete_vm(&self, id: &str) -> (u16, Value) {
        http::request("DELETE", &self.url(&format!("/vms/{id}")), None, &[])
    }

    /// Polls until `done` accepts the VM object or the deadline passes.
    pub fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, vm) = self.get_vm(id);
            assert_eq!(status, 200, "GET {id}: {vm}");
            if done(&vm) {
                return vm;
            }
            if Instant::now() > deadline {
                panic!(
                    "VM {id} never became {what}: {vm}\nserver log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn wait_ready(&self, id: &str) -> Value {
        self.wait_for(id, "running with an IP", |vm| {
            assert_ne!(vm["status"], "failed", "VM failed: {vm}");
            vm["status"] == "running" && vm["ip_address"] != ""
        })
    }

    pub fn wait_failed(&self, id: &str) -> Value {
        self.wait_for(id, "failed", |vm| vm["status"] == "failed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The last lines may still be in the pipe; a vmrun the server started can hold it
        // open, so the wait is bounded.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.reader.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let bad = self.bad_lines.lock().unwrap();
        if !bad.is_empty() && !thread::panicking() {
            panic!(
                "the server broke the JSON log format in {} line(s):\n{}",
                bad.len(),
                bad.join("\n")
            );
        }
    }
}

/// The binary as a client with exactly `args`, none of the client's variables from this
/// environment.
pub fn client_bare(args: &[&str]) -> std::process::Output {
    std::process::Command::new(SERVER_BIN)
        .args(args)
        .env_remove("OSX_BUILDER_URL")
        .env_remove("OSX_BUILDER_TOKEN")
        .env_remove("OSX_BUILDER_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the client")
}

/// A server and a gold image it can fetch over loopback.
pub struct World {
    pub dir: TempDir,
    pub files: http::FileServer,
    pub server: Server,
    pub url: String,
    pub checksum: String,
}

impl World {
    pub fn start(tag: &str, options: ServerOptions) -> Self {
        let dir = TempDir::new(tag);
        let files = http::FileServer::start();
        let archive = options.hypervisor().gold_tar_gz("box");
        let checksum = sha1_hex(&archive);
        let url = files.add("/gold.tar.gz", archive);
        let server = Server::start_with(dir.path(), options);
        Self {
            dir,
            files,
            server,
            url,
            checksum,
        }
    }

    pub fn body(&self) -> Value {
        image_body(&self.url, &self.checksum)
    }

    /// Creates a VM and returns its id; panics unless the answer is 202.
    pub fn create(&self, body: &Value) -> String {
        let (status, vm) = self.server.create(body);
        assert_eq!(status, 202, "{vm}\n{}", self.server.log());
        vm["id"].as_str().unwrap().to_string()
    }

    pub fn vm_count(&self) -> usize {
        let (_, list) = http::request("GET", &self.server.url("/vms"), None, &[]);
        list.as_array().map_or(0, Vec::len)
    }
}

/// The smallest create body: the image, headless.
pub fn image_body(url: &str, checksum: &str) -> Value {
    serde_json::json!({
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
        "headless": true
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` after a minute.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

/// A received request (a callback): its headers and the body byte for byte (for signatures).
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Keeps every POST it receives.
pub struct CallbackReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Every POST seen, answered or refused.
    pub attempts: Arc<AtomicU64>,
}

impl CallbackReceiver {
    pub fn start() -> Self {
        Self::start_failing(0)
    }

    /// Answers the first `failures` POSTs with 503 (not kept), then 200.
    pub fn start_failing(failures: u64) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let attempts = Arc::new(AtomicU64::new(0));
        let (sink, seen) = (received.clone(), attempts.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (sink, seen) = (sink.clone(), seen.clone());
                thread::spawn(move || {
                    let Some(request) = http::read_request(&mut stream) else {
                        return;
                    };
                    if seen.fetch_add(1, Ordering::SeqCst) < failures {
                        let _ = stream.write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    }
                    sink.lock().unwrap().push(request);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Self {
            url,
            received,
            attempts,
        }
    }

    /// The JSON bodies received so far, once there are `count` or after 30 s.
    pub fn wait_for(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let bodies: Vec<Value> = self
                .received
                .lock()
                .unwrap()
                .iter()
                .filter_map(|r| serde_json::from_slice(&r.body).ok())
                .collect();
            if bodies.len() >= count || Instant::now() > deadline {
                return bodies;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The callbacks as received, headers and bytes, once there are `count`.
    pub fn wait_for_raw(&self, count: usize) -> Vec<Received> {
        eventually("callbacks", || {
            let received = self.received.lock().unwrap().clone();
            (received.len() >= count).then_some(received)
        })
    }
}

pub fn read_all(stream: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Server options allowing `file://` images under `dir` (off by default: see README,
/// "Security").
pub fn file_images_under(dir: &Path) -> ServerOptions {
    ServerOptions {
        args: vec!["--file-image-dir".into(), dir.display().to_string()],
        ..ServerOptions::default()
    }
}

/// A gold VM as a tar.gz of `files` (name, contents) under `top/` (at the root when `top`
/// is empty).
pub fn tar_gz_of(top: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let path = if top.is_empty() {
            name.to_string()
        } else {
            format!("{top}/{name}")
        };
        builder.append_data(&mut header, path, *body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}
