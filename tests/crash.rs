//! Crash safety: the real server is killed with SIGKILL at many points of provisioning and
//! deletion, restarted on the same data folder, and every VM and folder is checked:
//!
//! - every VM acknowledged with 202 is there and is `running` (exactly when the simulator
//!   runs it), `stopped`, or `failed` with the code `interrupted` naming the step it was at;
//! - a VM whose DELETE was acknowledged (204) never comes back; one whose DELETE was in
//!   flight is either gone for good or whole, never half (folder without record or record
//!   without folder);
//! - no folder in `vms/` without a record, no `gold/.staging*`, no partial download in
//!   `images/`, no gold folder that is not complete;
//! - the simulator runs no VM that the server does not show as running.
//!
//! Each point is held open with the simulator's `delay` and `hang` faults (or an image
//! server that stalls mid-file) and the kill comes once the VM's `progress.phase` shows it there. vmrun calls in
//! flight at the kill either finish on their own (the server died, vmrun did not) or are
//! killed too (the host died): both are tried. Then seeded rounds kill at random moments to
//! catch what the phases miss. No test depends on when the kill lands to pass: the rules
//! above hold at every moment.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{Delivery, FileServer};
use common::{sha1_hex, Server, TempDir};
use serde_json::{json, Value};

/// The store's mark of a VM deleted while vmrun worked on its gold image (`src/vm/store.rs`).
const TOMBSTONE: &str = ".deleted-";

/// How long the simulator holds a step open for the kill.
const HOLD_MS: u64 = 1200;

#[derive(Clone)]
struct Image {
    url: String,
    checksum: String,
}

/// What the test knows about a VM it was told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Acknowledged with 202 and not deleted.
    Alive,
    /// DELETE answered 204: it must never come back.
    Deleted,
    /// DELETE was sent and got no answer before the kill: gone, or whole.
    DeleteInFlight,
}

/// What happens to the vmrun calls in flight when the server is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmrun {
    /// The server died, vmrun did not: each call runs to its end.
    Finishes,
    /// The host died: vmrun dies too.
    Dies,
}

/// One data folder and simulator state across kills and restarts.
struct Lab {
    dir: TempDir,
    files: FileServer,
    image: Image,
    server: Option<Server>,
    ledger: BTreeMap<String, Fate>,
    /// `(point, phase on disk at the kill)` for the closing summary.
    coverage: Vec<(String, String)>,
    /// Given to every server this lab starts.
    args: Vec<String>,
}

/// A start cut short by a kill is waited out for this long (plus a grace) by the restart:
/// short, so that a start that died with the host is settled soon.
const START_TIMEOUT: &str = "4";

impl Lab {
    fn new(tag: &str) -> Self {
        Self::with_args(tag, &["--vmrun-timeout-start", START_TIMEOUT])
    }

    fn with_args(tag: &str, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let dir = TempDir::new(&format!("crash-{tag}"));
        let files = FileServer::start();
        let archive = tar_gz(&[
            ("box/gold.vmx", GOLD_VMX.as_bytes()),
            ("box/disk.vmdk", DISK),
        ]);
        let image = Image {
            checksum: sha1_hex(&archive),
            url: files.add("/gold.tar.gz", archive),
        };
        let server = start_server(dir.path(), &args);
        Self {
            dir,
            files,
            image,
            server: Some(server),
            ledger: BTreeMap::new(),
            coverage: Vec::new(),
            args,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sim_state(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    /// A new image served at `name`, 4 KiB every 8 ms when `slow`.
    fn add_image(&self, name: &str, archive: Vec<u8>, slow: bool) -> Image {
        let checksum = sha1_hex(&archive);
        let delivery = if slow {
            Delivery::Trickle(Duration::from_millis(8))
        } else {
            Delivery::Whole
        };
        let url = self.files.add_with(&format!("/{name}"), archive, delivery);
        Image { url, checksum }
    }

    fn create(&mut self, image: &Image) -> String {
        let body = json!({
            "image": {"url": image.url, "checksum": image.checksum, "checksum_type": "sha1"},
            "headless": true
        });
        let (status, vm) = self.server().create(&body);
        assert_eq!(status, 202, "create: {vm}");
        let id = vm["id"].as_str().unwrap().to_string();
        self.ledger.insert(id.clone(), Fate::Alive);
        id
    }

    fn delete_now(&mut self, id: &str) {
        let (status, body) = self.server().delete_vm(id);
        assert_eq!(status, 204, "DELETE {id}: {body}");
        self.ledger.insert(id.to_string(), Fate::Deleted);
    }

    /// Sends DELETE on a thread of its own; its answer is collected by `settle_deletes`.
    fn delete_in_background(&self, id: &str) -> thread::JoinHandle<(String, Option<u16>)> {
        let url = self.server().url(&format!("/vms/{id}"));
        let id = id.to_string();
        thread::spawn(move || {
            let status = try_request("DELETE", &url, None).map(|(status, _)| status);
            (id, status)
        })
    }

    fn settle_deletes(&mut self, deletes: Vec<thread::JoinHandle<(String, Option<u16>)>>) {
        for handle in deletes {
            let (id, status) = handle.join().unwrap();
            match status {
                Some(204) => {
                    self.ledger.insert(id, Fate::Deleted);
                }
                // Refused before the kill: the VM must be as it was.
                Some(_) => {}
                None => {
                    self.ledger.insert(id, Fate::DeleteInFlight);
                }
            }
        }
    }

    /// Polls the VM until `done`, every few milliseconds (the kill should land soon after).
    fn wait_vm(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, vm) = self.server().get_vm(id);
            if status == 200 && done(&vm) {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "VM {id} never {what}: {vm}\n{}",
                self.server().log()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the VM shows `phase`; true then, false if it went past it first (or is
    /// gone): the kill goes ahead either way, and the rules hold either way.
    fn reach(&self, id: &str, phase: &str) -> bool {
        let target = phase_rank(phase);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, vm) = self.server().get_vm(id);
            let now = vm["progress"]["phase"].as_str().unwrap_or("");
            if status == 200 && now == phase {
                return true;
            }
            if status == 404 || phase_rank(now) > target {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "VM {id} never reached {phase}: {vm}\n{}",
                self.server().log()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL. Returns each VM's record as the disk holds it at that moment.
    fn kill(&mut self, point: &str, vmrun: Vmrun) -> HashMap<String, Value> {
        self.server.take().expect("server running").kill();
        match vmrun {
            Vmrun::Dies => kill_simulators(&self.sim_state(), &self.data()),
            Vmrun::Finishes => {}
        }
        wait_simulators(&self.sim_state(), &self.data());
        self.records(point)
    }

    /// Each known VM's record as the disk holds it (with the server dead: as at the kill).
    fn records(&mut self, point: &str) -> HashMap<String, Value> {
        let mut at_kill = HashMap::new();
        // A VM whose provisioning had not reached the clone has only its create's line in
        // the journal; the last line may be torn by the kill (its create was not answered).
        let journal =
            fs::read_to_string(self.data().join("vms").join(".journal")).unwrap_or_default();
        let journaled: HashMap<String, Value> = journal
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|line| {
                let record = line.get("create")?.clone();
                Some((record["id"].as_str()?.to_string(), record))
            })
            .collect();
        for id in self.ledger.keys() {
            let path = self.data().join("vms").join(id).join("osx-builder.json");
            let record = match fs::read(&path) {
                Ok(bytes) => Some(
                    serde_json::from_slice::<Value>(&bytes)
                        .unwrap_or_else(|e| panic!("torn record {}: {e}", path.display())),
                ),
                Err(_) => journaled.get(id).cloned(),
            };
            if let Some(record) = record {
                let phase = record["progress"]["phase"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if !matches!(phase.as_str(), "ready" | "ip-timeout" | "failed") {
                    self.coverage.push((point.to_string(), phase));
                }
                at_kill.insert(id.clone(), record);
            }
        }
        at_kill
    }

    /// Starts the server again on the same folders (without faults) and checks every rule.
    fn restart(&mut self, at_kill: &HashMap<String, Value>) {
        let _ = fs::remove_file(self.sim_state().join("faults"));
        let _ = fs::remove_dir_all(self.sim_state().join("faults-once"));
        self.server = Some(start_server(self.dir.path(), &self.args));
        self.check(at_kill);
    }

    /// SIGKILL of the server alone, at once: vmrun calls in flight run on while the new
    /// server starts (the restart comes before they end).
    fn kill_server_only(&mut self) {
        self.server.take().expect("server running").kill();
    }

    /// The rules of the file's header, for every VM and folder.
    fn check(&mut self, at_kill: &HashMap<String, Value>) {
        let server = self.server.as_ref().unwrap();
        let log = || server.log();
        // A start cut short may still run: the restart waits it out (up to the start
        // timeout) before it calls the VM running or failed.
        for id in self.ledger.keys() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, vm) = server.get_vm(id);
                let starting = vm["status"] == "" && vm["progress"]["phase"] == "starting";
                if status != 200 || !starting {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "an interrupted start of {id} was never settled: {vm}\n{}",
                    log()
                );
                thread::sleep(Duration::from_millis(25));
            }
        }
        // A DELETE cut short is finished by the restart: wait for it to settle either way.
        for (id, fate) in &self.ledger {
            if *fate == Fate::DeleteInFlight {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let (status, vm) = server.get_vm(id);
                    if status == 404 || vm["progress"]["phase"] != "deleting" {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "interrupted delete of {id} never finished: {vm}\n{}",
                        log()
                    );
                    thread::sleep(Duration::from_millis(25));
                }
            }
        }
        let running = sim_running(server);
        let vms_dir = self.data().join("vms");
        for (id, fate) in self.ledger.clone() {
            let (status, vm) = server.get_vm(&id);
            let dir = vms_dir.join(&id);
            let vmx = dir.join(format!("{id}.vmx"));
            let gone = status == 404;
            match fate {
                Fate::Deleted => {
                    assert!(gone, "VM {id} was deleted (204) but came back: {vm}");
                    assert!(!dir.exists(), "deleted VM {id} left {}", dir.display());
                    assert!(!running.contains(&id), "deleted VM {id} still runs");
                    continue;
                }
                Fate::DeleteInFlight if gone => {
                    assert!(!dir.exists(), "VM {id} is gone but its folder is not");
                    assert!(!running.contains(&id), "VM {id} is gone but still runs");
                    self.ledger.insert(id.clone(), Fate::Deleted);
                    continue;
                }
                Fate::DeleteInFlight => {
                    // Still there: it must be whole, and is an ordinary VM from now on.
                    self.ledger.insert(id.clone(), Fate::Alive);
                }
                Fate::Alive => {}
            }
            assert_eq!(status, 200, "acknowledged VM {id} is lost\n{}", log());
            assert!(
                dir.join("osx-builder.json").is_file(),
                "VM {id} is known but its record file is not on disk"
            );
            let before = at_kill.get(&id);
            let was = |key: &str| before.map(|r| r[key].clone()).unwrap_or(Value::Null);
            match vm["status"].as_str().unwrap() {
                "running" => {
                    assert!(
                        running.contains(&id),
                        "VM {id} shows running, vmrun disagrees: {vm}"
                    );
                    assert!(vmx.is_file(), "running VM {id} has no VMX");
                }
                "stopped" => {
                    assert!(
                        !running.contains(&id),
                        "VM {id} shows stopped but runs: {vm}"
                    );
                    assert!(vmx.is_file(), "stopped VM {id} has no VMX");
                }
                "failed" => {
                    assert!(
                        !running.contains(&id),
                        "VM {id} shows failed but runs (a leak): {vm}\n{}",
                        log()
                    );
                    if was("status") == "failed" {
                        assert_eq!(vm["error"], was("error"), "VM {id} changed its failure");
                    } else {
                        assert_eq!(vm["error"]["code"], "interrupted", "VM {id}: {vm}");
                        let phase = was("progress")["phase"].as_str().unwrap_or("").to_string();
                        let message = vm["error"]["message"].as_str().unwrap();
                        assert!(
                            message.contains(&format!("step {phase}")),
                            "VM {id} was at {phase} when killed: {message}"
                        );
                        assert!(
                            was("status") == "" || phase == "deleting",
                            "VM {id} had finished provisioning, yet restarts failed: {vm}"
                        );
                    }
                }
                other => panic!("VM {id} still shows status {other:?} after the restart: {vm}"),
            }
            if let Ok(bytes) = fs::read(&vmx) {
                if let Err(e) = osx_builder::hypervisor::vmrun::vmx::Vmx::parse(&bytes) {
                    panic!("VM {id}'s VMX is torn: {e}");
                }
            }
        }
        // Nothing in vms/ that the server does not know (a VM whose POST was cut short may
        // exist, whole, and is then an ordinary VM).
        for entry in fs::read_dir(&vms_dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".journal" {
                // The store's journal of new VMs, emptied by the start once each has a folder.
                assert_eq!(entry.metadata().unwrap().len(), 0, "{}", log());
                continue;
            }
            if let Some(id) = name.strip_prefix(TOMBSTONE) {
                // A VM deleted while vmrun worked on its gold image: its mark outlives its
                // folder for a while, so that a clone that outlived the server cannot bring
                // the folder back. The VM it names must be gone, folder and all.
                assert_eq!(server.get_vm(id).0, 404, "{name}\n{}", log());
                assert!(!vms_dir.join(id).exists(), "{name}: folder kept\n{}", log());
                continue;
            }
            let (status, vm) = server.get_vm(&name);
            assert_eq!(
                status,
                200,
                "{} in vms/ belongs to no VM the server knows\n{}",
                entry.path().display(),
                log()
            );
            assert!(
                entry.path().join("osx-builder.json").is_file(),
                "{name}: {vm}"
            );
            self.ledger.entry(name).or_insert(Fate::Alive);
        }
        // Every VM the simulator runs is one the server shows as running.
        for id in &running {
            let (status, vm) = server.get_vm(id);
            assert_eq!(
                (status, vm["status"].as_str()),
                (200, Some("running")),
                "the simulator runs {id}: {vm}"
            );
        }
        check_images(&self.data());
        let (status, list) = common::http::request("GET", &server.url("/vms"), None, &[]);
        assert_eq!(status, 200);
        let listed = list.as_array().unwrap().len();
        let alive = self.ledger.values().filter(|f| **f == Fate::Alive).count();
        assert_eq!(listed, alive, "GET /vms: {list}");
    }

    /// After the crash: the image cache is usable and a new VM gets ready.
    fn create_works(&mut self, image: &Image) {
        let id = self.create(image);
        self.server().wait_ready(&id);
    }

    /// Deletes every VM left and checks nothing is: no folder, no running VM.
    fn delete_all(&mut self) {
        for (id, fate) in self.ledger.clone() {
            if fate == Fate::Alive {
                self.delete_now(&id);
            }
        }
        // The store's journal stays, empty: every VM it recorded is gone. A VM deleted while
        // vmrun cloned it loses its folder when the clone ends; its tombstone may stay.
        let vms = self.data().join("vms");
        let left = || -> Vec<_> {
            fs::read_dir(&vms)
                .unwrap()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e))
                .filter(|(name, e)| match name.as_str() {
                    ".journal" => e.metadata().is_ok_and(|m| m.len() > 0),
                    name => name
                        .strip_prefix(TOMBSTONE)
                        .is_none_or(|id| vms.join(id).exists()),
                })
                .map(|(name, _)| name)
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !left().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let entries = left();
        assert!(entries.is_empty(), "left in vms/: {entries:?}");
        assert!(sim_running(self.server()).is_empty(), "VMs still run");
    }

    fn summary(&self) -> String {
        let mut by_point: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (point, phase) in &self.coverage {
            by_point.entry(point).or_default().insert(phase);
        }
        by_point
            .iter()
            .map(|(point, phases)| format!("{point}: killed at {phases:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    /// A test that failed half way must not leave hung simulators behind.
    fn drop(&mut self) {
        drop(self.server.take());
        kill_simulators(&self.sim_state(), &self.data());
    }
}

fn start_server(root: &Path, args: &[String]) -> Server {
    Server::start_with(
        root,
        common::ServerOptions {
            env: Vec::new(),
            args: args.to_vec(),
        },
    )
}

/// No staging folder, no partial download, every gold folder complete.
fn check_images(data: &Path) {
    if let Ok(entries) = fs::read_dir(data.join("images")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".part"), "partial download left: {name}");
        }
    }
    for entry in fs::read_dir(data.join("gold")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".staging"), "staging folder left: {name}");
        let mut vmx = Vec::new();
        find_files(&entry.path(), "vmx", &mut vmx);
        assert_eq!(vmx.len(), 1, "gold folder {name} holds {vmx:?}");
        let disk = vmx[0].with_file_name("disk.vmdk");
        assert!(
            disk.is_file(),
            "gold folder {name} has no disk beside its VMX"
        );
        let bytes = fs::read(&vmx[0]).unwrap();
        osx_builder::hypervisor::vmrun::vmx::Vmx::parse(&bytes).expect("gold VMX whole");
    }
}

fn find_files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// The ids of the VMs the simulator runs (VMX `<data>/vms/<id>/<id>.vmx`).
fn sim_running(server: &Server) -> BTreeSet<String> {
    let out = server.sim(&["list"]);
    assert!(out.starts_with("Total running VMs:"), "vmrun list: {out}");
    out.lines()
        .skip(1)
        .map(|line| {
            Path::new(line)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// An HTTP call that tolerates the server dying under it: `None` if no answer came.
fn try_request(method: &str, url: &str, body: Option<&str>) -> Option<(u16, Vec<u8>)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/')?);
    let mut stream = TcpStream::connect(authority).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ok()?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Some((status, rest))
}

/// The simulator processes working for this lab, found by their state folder (Linux) or by
/// the data folder on their command line.
fn simulators(sim_state: &Path, data: &Path) -> Vec<i32> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        let needle = format!("VMRUN_SIM_STATE={}\0", sim_state.display());
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
            if String::from_utf8_lossy(&environ).contains(&needle) {
                found.push(pid);
            }
        }
        return found;
    }
    let out = std::process::Command::new("ps")
        .args(["-axww", "-o", "pid=,command="])
        .output()
        .expect("ps");
    let data = data.display().to_string();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.contains(common::SIM_BIN) && line.contains(&data) {
            if let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse().ok()) {
                found.push(pid);
            }
        }
    }
    found
}

/// The host died: every vmrun of this lab dies, with what it started (its process group).
fn kill_simulators(sim_state: &Path, data: &Path) {
    let mut pids = simulators(sim_state, data);
    if let Ok(text) = fs::read_to_string(sim_state.join("hang.pids")) {
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    for pid in pids {
        if common::is_simulator(pid) {
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = fs::remove_file(sim_state.join("hang.pids"));
}

/// The server died, vmrun did not: waits for its calls to end.
fn wait_simulators(sim_state: &Path, data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !simulators(sim_state, data).is_empty() {
        assert!(Instant::now() < deadline, "vmrun calls never ended");
        thread::sleep(Duration::from_millis(20));
    }
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    for (path, body) in files {
        zip.start_file(*path, options).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Incompressible bytes, so that a trickled archive takes its time.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// xorshift64: seeded, so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// True once `file` is being written in a staging folder: the unpack is under way.
fn staging_has(data: &Path, file: &str) -> bool {
    fs::read_dir(data.join("gold"))
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(".staging")
                    && fs::metadata(e.path().join(file)).is_ok_and(|m| m.len() > 0)
            })
        })
        .unwrap_or(false)
}

fn part_file_has_bytes(data: &Path) -> bool {
    fs::read_dir(data.join("images"))
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".part")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
        .unwrap_or(false)
}

fn poll(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn killed_while_downloading_and_unpacking() {
    let mut lab = Lab::new("download");
    // Larger than the unpacker's 1 MiB buffer, so that a part of it is on disk.
    let pad = noise(1536 * 1024, 1);
    // A tar streams into gold/.staging-* as it downloads: a kill while the image server
    // stalls mid-file lands mid-unpack, with pad.bin partly written.
    let tar = tar_gz(&[
        ("vm/gold.vmx", GOLD_VMX.as_bytes()),
        ("vm/disk.vmdk", DISK),
        ("vm/pad.bin", &pad),
    ]);
    let stall = StallServer::start(tar.clone(), tar.len() * 7 / 8);
    let image = Image {
        url: stall.url.clone(),
        checksum: sha1_hex(&tar),
    };
    let a = lab.create(&image);
    let b = lab.create(&image);
    let data = lab.data();
    for id in [&a, &b] {
        assert!(lab.reach(id, "downloading"));
    }
    poll("the unpack under way", || staging_has(&data, "vm/pad.bin"));
    let at_kill = lab.kill("tar download", Vmrun::Dies);
    lab.restart(&at_kill);
    let fast = lab.add_image("stalled.tar.gz", tar, false);
    lab.create_works(&fast);

    // A zip is downloaded to images/*.part first.
    let zip = zip(&[
        ("z/gold.vmx", GOLD_VMX.as_bytes()),
        ("z/disk.vmdk", DISK),
        ("z/pad.bin", &pad),
    ]);
    let stall = StallServer::start(zip.clone(), zip.len() / 2);
    let image = Image {
        url: stall.url.clone(),
        checksum: sha1_hex(&zip),
    };
    let c = lab.create(&image);
    assert!(lab.reach(&c, "downloading"));
    poll("a partial download", || part_file_has_bytes(&data));
    let at_kill = lab.kill("zip download", Vmrun::Dies);
    lab.restart(&at_kill);
    let fast = lab.add_image("stalled.zip", zip, false);
    lab.create_works(&fast);
    lab.delete_all();
    println!("{}", lab.summary());
}

/// An image server that sends the first `cut` bytes of a file and then nothing, holding the
/// connection open until it is dropped: a download that stays in progress for as long as a
/// test needs (the server's read timeout is a minute).
struct StallServer {
    url: String,
    released: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallServer {
    fn start(bytes: Vec<u8>, cut: usize) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/image", listener.local_addr().unwrap());
        let released = std::sync::Arc::new(AtomicBool::new(false));
        let flag = released.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let (bytes, flag) = (bytes.clone(), flag.clone());
                thread::spawn(move || {
                    let _ = common::http::read_request_body(&mut stream);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&bytes[..cut]);
                    while !flag.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        });
        Self { url, released }
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag and ends.
        if let Some(addr) = self
            .url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
        {
            let _ = TcpStream::connect(addr);
        }
    }
}

/// A vmrun step held open by the simulator: kill once the VM shows `phase` and the call is
/// in flight, with vmrun dying too (hang) or finishing on its own (delay).
fn crash_at_vmrun_step(lab: &mut Lab, command: &str, phase: &str, vmrun: Vmrun) -> String {
    let rule = match vmrun {
        Vmrun::Dies => format!("{command} hang"),
        Vmrun::Finishes => format!("{command} delay {HOLD_MS}"),
    };
    lab.server().set_faults(&rule);
    let image = lab.image.clone();
    let id = lab.create(&image);
    if lab.reach(&id, phase) {
        let in_call = wait_call(lab, command);
        assert!(
            in_call || vmrun == Vmrun::Finishes,
            "vmrun {command} never ran"
        );
    } else {
        assert_eq!(vmrun, Vmrun::Finishes, "a hung {command} was passed");
    }
    let at_kill = lab.kill(&format!("{command} ({vmrun:?})"), vmrun);
    lab.restart(&at_kill);
    id
}

/// Waits (a bounded while) until a vmrun `command` of this lab is running, so that the kill
/// lands inside it. A `hang` runs until killed; a `delay` may, on a starved machine, end
/// first: then the kill lands after it, which the rules allow as well.
fn wait_call(lab: &Lab, command: &str) -> bool {
    let (sim_state, data) = (lab.sim_state(), lab.data());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let running = simulators(&sim_state, &data).iter().any(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|arg| arg == command.as_bytes()))
                // Without /proc, any vmrun of this lab counts.
                .unwrap_or(true)
        });
        if running {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The order of `progress.phase` values, to tell "not there yet" from "went past".
fn phase_rank(phase: &str) -> usize {
    const ORDER: [&str; 14] = [
        "queued",
        "downloading",
        "verifying",
        "unpacking",
        "publishing",
        "preparing-gold",
        "cloning",
        "configuring",
        "starting",
        "waiting-for-ip",
        "ready",
        "ip-timeout",
        "failed",
        "deleting",
    ];
    ORDER.iter().position(|p| *p == phase).unwrap_or(0)
}

#[test]
fn killed_while_snapshotting_and_cloning() {
    let mut lab = Lab::new("clone");
    let gold_vmx = lab
        .data()
        .join("gold")
        .join(&lab.image.checksum)
        .join("box/gold.vmx");
    for vmrun in [Vmrun::Dies, Vmrun::Finishes] {
        crash_at_vmrun_step(&mut lab, "snapshot", "preparing-gold", vmrun);
    }
    let image = lab.image.clone();
    lab.create_works(&image);
    // However many snapshot calls were cut short, the gold VM has its one base snapshot.
    let snapshots = lab
        .server()
        .sim(&["listSnapshots", gold_vmx.to_str().unwrap()]);
    assert_eq!(snapshots.trim(), "Total snapshots: 1\nosx-builder-base");
    for vmrun in [Vmrun::Dies, Vmrun::Finishes] {
        let id = crash_at_vmrun_step(&mut lab, "clone", "cloning", vmrun);
        if vmrun == Vmrun::Finishes {
            // vmrun finished the clone after the server died: the VM is whole, deletable.
            assert!(lab
                .data()
                .join("vms")
                .join(&id)
                .join(format!("{id}.vmx"))
                .is_file());
        }
    }
    lab.create_works(&image);
    lab.delete_all();
    println!("{}", lab.summary());
}

#[test]
fn killed_while_starting_or_waiting_for_the_ip() {
    let mut lab = Lab::new("start");
    // vmrun start died with the host, after VMware had made its lock folder: the restart
    // must clear the stale lock so that the VM can be deleted.
    let dead = crash_at_vmrun_step(&mut lab, "start", "starting", Vmrun::Dies);
    let (_, vm) = lab.server().get_vm(&dead);
    assert_eq!(vm["status"], "failed", "{vm}");
    // The start went through after the server died: the VM runs, so it is running.
    let alive = crash_at_vmrun_step(&mut lab, "start", "starting", Vmrun::Finishes);
    lab.server().wait_ready(&alive);

    // Waiting for the IP: the restart watches again.
    for vmrun in [Vmrun::Dies, Vmrun::Finishes] {
        let rule = match vmrun {
            Vmrun::Dies => "getGuestIPAddress hang".to_string(),
            Vmrun::Finishes => format!("getGuestIPAddress fail {TOOLS_MSG}"),
        };
        lab.server().set_faults(&rule);
        let image = lab.image.clone();
        let id = lab.create(&image);
        assert!(lab.reach(&id, "waiting-for-ip"));
        let at_kill = lab.kill(&format!("getGuestIPAddress ({vmrun:?})"), vmrun);
        lab.restart(&at_kill);
        lab.server().wait_ready(&id);
    }

    // Waiting for the IP, and powered off while the server was down: stopped, not failed.
    lab.server()
        .set_faults(&format!("getGuestIPAddress fail {TOOLS_MSG}"));
    let image = lab.image.clone();
    let off = lab.create(&image);
    assert!(lab.reach(&off, "waiting-for-ip"));
    let at_kill = lab.kill("getGuestIPAddress, then powered off", Vmrun::Finishes);
    let vmx = lab.data().join("vms").join(&off).join(format!("{off}.vmx"));
    let out = std::process::Command::new(common::SIM_BIN)
        .args(["stop", vmx.to_str().unwrap(), "hard"])
        .env("VMRUN_SIM_STATE", lab.sim_state())
        .output()
        .unwrap();
    assert!(out.status.success());
    lab.restart(&at_kill);
    // A VM made after the restart is ready long after anything queued at the restart ran.
    lab.create_works(&image);
    let (_, vm) = lab.server().get_vm(&off);
    assert_eq!(vm["status"], "stopped", "{vm}");
    lab.delete_all();
    println!("{}", lab.summary());
}

#[test]
fn killed_while_starting_leaves_a_stale_lock_that_the_restart_clears() {
    let mut lab = Lab::new("lock");
    lab.server().set_faults("start hang");
    let image = lab.image.clone();
    let id = lab.create(&image);
    assert!(lab.reach(&id, "starting"));
    assert!(wait_call(&lab, "start"));
    let at_kill = lab.kill("start (Dies)", Vmrun::Dies);
    // What VMware leaves when the host dies during a start.
    let lock = lab
        .data()
        .join("vms")
        .join(&id)
        .join(format!("{id}.vmx.lck"));
    fs::create_dir_all(&lock).unwrap();
    fs::write(lock.join("M31337.lck"), "").unwrap();
    lab.restart(&at_kill);
    assert!(!lock.exists(), "stale lock kept:\n{}", lab.server().log());
    let started = Instant::now();
    lab.delete_now(&id);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "DELETE retried a stale lock"
    );
    lab.delete_all();
}

/// The kill lands while `vmrun start` holds the VM's locks and has not booted it yet, and
/// the new server is up before the start ends: it must wait the start out, leave its locks
/// alone, and show the VM running once vmrun does. A start slower than the wait ends failed
/// `interrupted`, and the reconcile takes the VM back when it runs after all.
#[test]
fn killed_during_a_slow_start_the_restart_waits_it_out() {
    let mut lab = Lab::with_args(
        "slowstart",
        &[
            "--vmrun-timeout-start",
            START_TIMEOUT,
            "--reconcile-interval",
            "0.3",
        ],
    );
    let boot = lab.sim_state().join("start-boot-ms");
    for (boot_ms, outlives_the_wait) in [(2500, false), (9000, true)] {
        fs::write(&boot, boot_ms.to_string()).unwrap();
        let image = lab.image.clone();
        let id = lab.create(&image);
        assert!(lab.reach(&id, "starting"));
        assert!(wait_call(&lab, "start"));
        let lock = lab
            .data()
            .join("vms")
            .join(&id)
            .join(format!("{id}.vmx.lck"));
        poll("the start's lock", || lock.is_dir());
        let at_kill_phase = lab.server().get_vm(&id).1["progress"]["phase"].clone();
        lab.kill_server_only();
        lab.server = Some(start_server(lab.dir.path(), &lab.args));
        let server = lab.server();
        let (_, vm) = server.get_vm(&id);
        if at_kill_phase == "starting" && !sim_running(server).contains(&id) {
            assert_eq!(vm["status"], "", "decided before the start ended: {vm}");
            assert!(lock.is_dir(), "the in-flight start's lock was removed");
        }
        if outlives_the_wait {
            let vm = server.wait_failed(&id);
            assert_eq!(vm["error"]["code"], "interrupted", "{vm}");
            assert!(
                lab.server()
                    .wait_log(&format!("vm={id} failed as interrupted")),
                "{}",
                lab.server().log()
            );
        }
        lab.server()
            .wait_for(&id, "running again with an IP", |vm| {
                vm["status"] == "running" && vm["ip_address"] != ""
            });
        if !outlives_the_wait {
            // Past the wait the locks count as stale (nothing kills an orphaned vmrun at
            // its timeout), so only a start that ended within it keeps them for sure.
            assert!(lock.is_dir(), "a running VM lost its lock");
            assert!(
                !lab.server()
                    .log()
                    .contains(&format!("{id}.vmx.lck (its VM is not running)")),
                "{}",
                lab.server().log()
            );
        }
        lab.check(&HashMap::new());
    }
    fs::remove_file(&boot).unwrap();
    lab.delete_all();
}

#[test]
fn killed_while_editing_the_vmx() {
    // A long VMX (comment lines) makes the edit take long enough to be seen.
    let mut vmx = GOLD_VMX.to_string();
    for n in 0..150_000 {
        vmx.push_str(&format!(
            "# padding line {n} so that parsing and writing take a while\n"
        ));
    }
    let mut lab = Lab::new("vmx");
    let image = lab.add_image(
        "bigvmx.tar.gz",
        tar_gz(&[("b/gold.vmx", vmx.as_bytes()), ("b/disk.vmdk", DISK)]),
        false,
    );
    let mut hit = false;
    for _ in 0..4 {
        // Held at start if the kill misses the edit.
        lab.server().set_faults("start hang");
        let id = lab.create(&image);
        let vm = lab.wait_vm(&id, "configuring or later", |vm| {
            matches!(
                vm["progress"]["phase"].as_str(),
                Some("configuring" | "starting")
            )
        });
        let at_kill = lab.kill("vmx edit", Vmrun::Dies);
        hit |= vm["progress"]["phase"] == "configuring";
        lab.restart(&at_kill);
        if hit {
            break;
        }
    }
    println!("vmx edit: killed while configuring: {hit}");
    lab.create_works(&image);
    lab.delete_all();
    println!("{}", lab.summary());
}

#[test]
fn killed_while_deleting() {
    let mut lab = Lab::new("delete");
    for (command, vmrun) in [
        ("stop", Vmrun::Dies),
        ("stop", Vmrun::Finishes),
        ("deleteVM", Vmrun::Dies),
        ("deleteVM", Vmrun::Finishes),
    ] {
        let image = lab.image.clone();
        let gone = lab.create(&image);
        let victim = lab.create(&image);
        lab.server().wait_ready(&gone);
        lab.server().wait_ready(&victim);
        lab.delete_now(&gone);
        let rule = match vmrun {
            Vmrun::Dies => format!("{command} hang"),
            Vmrun::Finishes => format!("{command} delay {HOLD_MS}"),
        };
        lab.server().set_faults(&rule);
        let delete = lab.delete_in_background(&victim);
        if lab.reach(&victim, "deleting") {
            let in_call = wait_call(&lab, command);
            assert!(
                in_call || vmrun == Vmrun::Finishes,
                "vmrun {command} never ran"
            );
        }
        let at_kill = lab.kill(&format!("{command} ({vmrun:?})"), vmrun);
        lab.settle_deletes(vec![delete]);
        if vmrun == Vmrun::Dies {
            assert_eq!(lab.ledger[&victim], Fate::DeleteInFlight);
        }
        lab.restart(&at_kill);
        // Nothing stands in the way of the restart's delete: it must have finished it.
        assert_eq!(lab.ledger[&victim], Fate::Deleted, "{}", lab.server().log());
    }
    lab.delete_all();
    println!("{}", lab.summary());
}

/// Creates at once write their records side by side, outside the admission lock: killed
/// as soon as the first is acknowledged, with the others anywhere between admission and
/// their answer, every acknowledged VM comes back and no folder is left half made.
#[test]
fn killed_while_creates_at_once_are_recorded() {
    let mut lab = Lab::new("creates-at-once");
    lab.server().set_faults("* delay 300\n");
    let url = lab.server().url("/vms");
    let body = json!({
        "image": {"url": lab.image.url, "checksum": lab.image.checksum, "checksum_type": "sha1"},
        "headless": true
    })
    .to_string();
    let gate = std::sync::Arc::new(std::sync::Barrier::new(16));
    let (answered, answers) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (gate, url, body, answered) =
                (gate.clone(), url.clone(), body.clone(), answered.clone());
            thread::spawn(move || {
                gate.wait();
                let _ = answered.send(try_request("POST", &url, Some(&body)));
            })
        })
        .collect();
    let first = answers.recv().unwrap();
    lab.kill_server_only();
    kill_simulators(&lab.sim_state(), &lab.data());
    wait_simulators(&lab.sim_state(), &lab.data());
    for thread in threads {
        thread.join().unwrap();
    }
    let mut acknowledged = 0;
    for answer in std::iter::once(first).chain(answers.try_iter()) {
        if let Some((202, reply)) = answer {
            // `try_request` keeps the headers: the body follows the blank line.
            let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let vm: Value = serde_json::from_slice(&reply[at..]).unwrap();
            lab.ledger
                .insert(vm["id"].as_str().unwrap().to_string(), Fate::Alive);
            acknowledged += 1;
        }
    }
    assert!(acknowledged >= 1, "the kill came after the first 202");
    eprintln!("{acknowledged} of 16 creates acknowledged before the kill");
    let at_kill = lab.records("creates at once");
    lab.restart(&at_kill);
    lab.delete_all();
}

#[test]
fn killed_at_random_moments() {
    let seed = std::env::var("OSXB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a5_u64);
    let mut rng = Rng(seed);
    let mut lab = Lab::new("random");
    for round in 0..10 {
        // vmrun a little slow, so that kills land inside calls as well as between them.
        let mut faults = String::new();
        for command in [
            "snapshot",
            "clone",
            "start",
            "getGuestIPAddress",
            "stop",
            "deleteVM",
        ] {
            faults.push_str(&format!("{command} delay {}\n", rng.below(400)));
        }
        lab.server().set_faults(&faults);
        let pad = noise(32 * 1024 + rng.below(128 * 1024) as usize, rng.next());
        let files: [(&str, &[u8]); 3] = [
            ("r/gold.vmx", GOLD_VMX.as_bytes()),
            ("r/disk.vmdk", DISK),
            ("r/pad.bin", &pad),
        ];
        let image = match rng.below(4) {
            0 => lab.add_image(&format!("r{round}.tar.gz"), tar_gz(&files), true),
            1 => lab.add_image(&format!("r{round}.zip"), zip(&files), true),
            _ => lab.image.clone(),
        };
        for _ in 0..1 + rng.below(3) {
            lab.create(&image);
        }
        let alive: Vec<String> = lab
            .ledger
            .iter()
            .filter(|(_, f)| **f == Fate::Alive)
            .map(|(id, _)| id.clone())
            .collect();
        let mut deletes = Vec::new();
        for _ in 0..rng.below(3) {
            if alive.is_empty() {
                break;
            }
            let id = &alive[rng.below(alive.len() as u64) as usize];
            if deletes.len() < 2 {
                thread::sleep(Duration::from_millis(rng.below(300)));
                deletes.push(lab.delete_in_background(id));
            }
        }
        let pause = rng.below(1200);
        thread::sleep(Duration::from_millis(pause));
        eprintln!(
            "round {round}: kill after {pause} ms: {:?}",
            lab.ledger
                .keys()
                .map(|id| lab.server().get_vm(id).1["progress"]["phase"].to_string())
                .collect::<Vec<_>>()
        );
        let vmrun = if rng.below(2) == 0 {
            Vmrun::Dies
        } else {
            Vmrun::Finishes
        };
        let at_kill = lab.kill(&format!("random round {round} ({vmrun:?})"), vmrun);
        lab.settle_deletes(deletes);
        lab.restart(&at_kill);
    }
    lab.delete_all();
    println!("seed {seed:#x}\n{}", lab.summary());
}

const TOOLS_MSG: &str = "The VMware Tools are not running in the virtual machine: x";

use common::GOLD_VMX;
const DISK: &[u8] = common::DISK_DESCRIPTOR.as_bytes();

/// A create's record is first a line of `vms/.journal`; its folder is written when its
/// provisioning reaches the clone. Killed while VMs wait in the provisioning queue (their
/// records only lines) and after one of them was deleted: the restart gives each
/// acknowledged VM its folder and brings back none that was deleted.
#[test]
fn killed_while_new_vms_are_only_journal_lines() {
    let dir = TempDir::new("crash-journal");
    let files = FileServer::start();
    let archive = common::gold_tar_gz("box");
    let image = common::image_body(
        &files.add("/gold.tar.gz", archive.clone()),
        &sha1_hex(&archive),
    );
    // One provisioning thread, held by the first VM's slow vmrun calls: the others queue.
    let options = || {
        common::options_env(
            &[("VMRUN_SIM_FAULTS", "* delay 3000")],
            &["--provision-threads", "1"],
        )
    };
    let server = Server::start_with(dir.path(), options());
    let ids: Vec<String> = (0..4)
        .map(|_| {
            let (status, vm) = server.create(&image);
            assert_eq!(status, 202, "{vm}");
            vm["id"].as_str().unwrap().to_string()
        })
        .collect();
    let vms = server.data_dir.join("vms");
    let journal = vms.join(".journal");
    let queued = &ids[2..];
    for id in queued {
        assert!(!vms.join(id).exists(), "{id} has a folder while it waits");
    }
    assert!(fs::metadata(&journal).unwrap().len() > 0);
    let deleted = &ids[3];
    assert_eq!(server.delete_vm(deleted).0, 204, "{}", server.log());
    server.kill();
    kill_simulators(&dir.path().join("sim"), &dir.path().join("data"));

    let server = Server::start_with(dir.path(), options());
    assert!(
        server.wait_log("recovered"),
        "the restart says what it recovered:\n{}",
        server.log()
    );
    for id in &ids[..3] {
        let (status, vm) = server.get_vm(id);
        assert_eq!(status, 200, "{id} was acknowledged and is lost: {vm}");
        assert!(vms.join(id).join("osx-builder.json").is_file(), "{id}");
    }
    assert_eq!(server.get_vm(deleted).0, 404, "a deleted VM came back");
    assert!(!vms.join(deleted).exists());
    assert_eq!(fs::metadata(&journal).unwrap().len(), 0);
    for id in &ids[..3] {
        assert_eq!(server.delete_vm(id).0, 204, "{}", server.log());
    }
}
