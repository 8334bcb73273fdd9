//! Runs the built tart simulator as the server will (a child process per call, `run` kept in
//! the foreground) and checks it keeps the tart contract: the lock on `config.json`, signals,
//! the two-VM limit, `ip` and its lease, clone's silent overwrite, OCI pulls, the switches.

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SIM: &str = env!("CARGO_BIN_EXE_tart-sim");
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Out {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

struct Home {
    root: PathBuf,
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A tart VM folder with the three files; the disk sparse with 4 KiB of data at 1 MiB.
pub fn make_vm(dir: &Path, os: &str, mac: &str) {
    fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "version": 1, "os": os, "arch": "arm64", "cpuCount": 4, "cpuCountMin": 2,
        "memorySize": 8u64 << 30, "memorySizeMin": 4u64 << 30, "macAddress": mac,
        "display": {"width": 1024, "height": 768}, "diskFormat": "raw",
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let disk = fs::File::create(dir.join("disk.img")).unwrap();
    disk.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_at(&disk, &[7u8; 4096], 1 << 20).unwrap();
    fs::write(dir.join("nvram.bin"), b"nvram").unwrap();
}

impl Home {
    fn new(name: &str) -> Home {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root =
            std::env::temp_dir().join(format!("tart-sim-{name}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(root.join("home/vms")).unwrap();
        Home { root }
    }

    fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    fn vm(&self, name: &str, os: &str, mac: &str) {
        make_vm(&self.home().join("vms").join(name), os, mac);
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(SIM);
        for (key, _) in std::env::vars() {
            if key.starts_with("TART_") {
                command.env_remove(key);
            }
        }
        command
            .env("TART_HOME", self.home())
            .args(args)
            .envs(env.iter().copied());
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.process_group(0);
        command
    }

    fn tart(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let child = self.command(args, env).spawn().unwrap();
        wait(child)
    }

    fn run(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut args = vec!["run", "--no-graphics"];
        args.extend_from_slice(extra);
        args.push(name);
        let child = self.command(&args, env).spawn().unwrap();
        self.until(|| self.running(name), &format!("{name} runs"));
        child
    }

    fn list(&self) -> serde_json::Value {
        let out = self.tart(&["list", "--format", "json"], &[]);
        assert_eq!(out.code, Some(0), "{out:?}");
        serde_json::from_str(&out.stdout).unwrap()
    }

    fn running(&self, name: &str) -> bool {
        self.list()
            .as_array()
            .unwrap()
            .iter()
            .any(|vm| vm["Name"] == name && vm["Running"] == true)
    }

    fn until(&self, mut check: impl FnMut() -> bool, what: &str) {
        let end = Instant::now() + DEADLINE;
        while !check() {
            assert!(Instant::now() < end, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait(mut child: Child) -> Out {
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "tart-sim did not return");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Out {
        stdout,
        stderr,
        code: status.code().or(status.signal().map(|s| -s)),
    }
}

#[test]
fn errors_exit_codes_and_words() {
    let home = Home::new("errors");
    assert_eq!(home.tart(&["--version"], &[]).stdout, "2.32.1\n");
    let out = home.tart(&["list", "--format", "json"], &[]);
    assert_eq!(out.stdout.trim(), "[]");
    for args in [
        vec!["ip", "nope"],
        vec!["get", "nope", "--format", "json"],
        vec!["delete", "nope"],
    ] {
        let out = home.tart(&args, &[]);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr, "the specified VM \"nope\" does not exist\n");
    }
    let out = home.tart(&["run", "--no-graphics", "nope"], &[]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(1), "Error: the specified VM \"nope\" does not exist\n")
    );
    home.vm("gold", "darwin", "aa:00:00:00:00:01");
    let out = home.tart(&["clone", "gold", "a/b"], &[]);
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(out.stderr.starts_with("Error: "), "{out:?}");
    let out = home.tart(&["stop", "gold"], &[]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(2), "VM \"gold\" is not running\n")
    );
    let out = home.tart(&["set", "gold", "--cpu", "1"], &[]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("2 CPU cores at minimum"), "{out:?}");
    let out = home.tart(
        &["get", "gold", "--format", "json"],
        &[("TART_SIM_GC_FAIL", "1")],
    );
    assert_eq!(out.code, Some(0));
    assert!(
        out.stderr
            .starts_with("Failed to perform garbage collection: "),
        "{out:?}"
    );
    let out = home.tart(&["ip", "gold"], &[("TART_SIM_IP_POLL_MS", "10")]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(1), "no IP address found, is your VM running?\n")
    );
}

#[test]
fn clone_copies_sparse_gets_a_new_mac_and_overwrites_silently() {
    let home = Home::new("clone");
    home.vm("gold", "darwin", "aa:00:00:00:00:01");
    let out = home.tart(&["clone", "gold", "vm1"], &[]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(0), "", "")
    );
    let vm1 = home.home().join("vms/vm1");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(vm1.join("config.json")).unwrap()).unwrap();
    assert_ne!(config["macAddress"], "aa:00:00:00:00:01");
    let meta = fs::metadata(vm1.join("disk.img")).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20,
        "not sparse"
    );
    fs::write(vm1.join("marker"), b"mine").unwrap();
    let out = home.tart(&["clone", "gold", "vm1"], &[]);
    assert_eq!(out.code, Some(0));
    assert!(
        !vm1.join("marker").exists(),
        "clone overwrites an existing name without a word"
    );
    let out = home.tart(&["set", "vm1", "--cpu", "3", "--memory", "5000"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let got: serde_json::Value =
        serde_json::from_str(&home.tart(&["get", "vm1", "--format", "json"], &[]).stdout).unwrap();
    assert_eq!(
        (got["CPU"].as_u64(), got["Memory"].as_u64()),
        (Some(3), Some(5000))
    );
}

#[test]
fn run_holds_the_lock_and_signals_end_it_as_tart_says() {
    let home = Home::new("run");
    home.vm("a", "darwin", "aa:00:00:00:00:0a");
    let fast = [("TART_SIM_IP_POLL_MS", "20"), ("TART_SIM_BOOT_MS", "300")];
    let started = Instant::now();
    let runner = home.run("a", &["--dir=guestinfo:/tmp/x:ro", "--net-host"], &[]);
    let out = home.tart(&["run", "--no-graphics", "a"], &[]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(2), "VM \"a\" is already running!\n")
    );
    let out = home.tart(&["delete", "a"], &[]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(1), "VM \"a\" is running\n")
    );
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(home.home().join(".sim/runs/a.json")).unwrap()).unwrap();
    assert_eq!(
        record["dirs"][0],
        serde_json::json!({"name": "guestinfo", "path": "/tmp/x", "read_only": true})
    );
    assert_eq!(record["net"], "host");
    let out = home.tart(&["ip", "a", "--wait", "5"], &fast);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("192.168.64."), "{out:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the boot delay"
    );
    let address = out.stdout.clone();
    let out = home.tart(&["stop", "a"], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let ran = wait(runner);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (Some(0), "Stopping VM...\n")
    );
    assert!(!home.running("a"));
    // The lease outlives the VM: ip answers, list tells the truth.
    assert_eq!(home.tart(&["ip", "a"], &fast).stdout, address);
    // SIGTERM and SIGKILL are not handled: the runner dies and the VM with it.
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let runner = home.run("a", &[], &[]);
        unsafe { libc::kill(runner.id() as i32, signal) };
        assert_eq!(wait(runner).code, Some(-signal));
        home.until(|| !home.running("a"), "the VM dies with its runner");
    }
    // The guest powers off, or the VM crashes, behind everyone's back.
    for (how, code, words) in [
        ("shutdown", 0, "guest has stopped the virtual machine"),
        ("crash", 1, "stopped unexpectedly"),
    ] {
        let runner = home.run("a", &[], &[]);
        fs::create_dir_all(home.home().join(".sim/control")).unwrap();
        fs::write(home.home().join(".sim/control/a"), how).unwrap();
        let ran = wait(runner);
        assert_eq!(ran.code, Some(code), "{ran:?}");
        assert!(
            format!("{}{}", ran.stdout, ran.stderr).contains(words),
            "{ran:?}"
        );
    }
    // A VM that ignores SIGINT is killed after the timeout.
    let runner = home.run("a", &[], &[("TART_SIM_IGNORE_SIGINT", "1")]);
    assert_eq!(
        home.tart(&["stop", "a", "--timeout", "0"], &[]).code,
        Some(0)
    );
    assert_eq!(wait(runner).code, Some(-libc::SIGKILL));
}

/// `TART_SIM_BOOT_JITTER_MS` (read by `run`): the lease says how much longer this boot
/// takes, at most the spread, and `ip` finds no address before then.
#[test]
fn boot_jitter_delays_the_lease_by_what_it_records() {
    let home = Home::new("jitter");
    home.vm("a", "linux", "aa:00:00:00:00:0b");
    let fast = [("TART_SIM_IP_POLL_MS", "10"), ("TART_SIM_BOOT_MS", "50")];
    let lease_path = home.home().join(".sim/leases/aa-00-00-00-00-0b.json");
    // A boot at least 100 ms longer than TART_SIM_BOOT_MS (three in four are): one that an
    // ip ignoring the jitter would answer too early.
    let (runner, lease) = (0..40)
        .find_map(|_| {
            // The runner writes the lease just after it holds the VM: wait for this run's.
            let _ = fs::remove_file(&lease_path);
            let runner = home.run("a", &[], &[("TART_SIM_BOOT_JITTER_MS", "400")]);
            let read = || -> Option<serde_json::Value> {
                serde_json::from_slice(&fs::read(&lease_path).ok()?).ok()
            };
            home.until(|| read().is_some(), "the run's lease");
            let lease = read().unwrap();
            let jitter = lease["jitter_ms"].as_u64().unwrap();
            assert!(jitter <= 400, "{lease}");
            if jitter >= 100 {
                return Some((runner, lease));
            }
            unsafe { libc::kill(runner.id() as i32, libc::SIGINT) };
            assert_eq!(wait(runner).code, Some(0));
            None
        })
        .expect("a jitter of 100 ms or more in 40 boots");
    let out = home.tart(&["ip", "a", "--wait", "5"], &fast);
    let answered_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(out.code, Some(0), "{out:?}");
    let ready =
        lease["started_at_ms"].as_u64().unwrap() + 50 + lease["jitter_ms"].as_u64().unwrap();
    assert!(
        answered_ms >= ready,
        "answered at {answered_ms}, ready at {ready}: {lease}"
    );
    unsafe { libc::kill(runner.id() as i32, libc::SIGINT) };
    assert_eq!(wait(runner).code, Some(0));
}

#[test]
fn third_macos_vm_is_refused_and_linux_vms_do_not_count() {
    let home = Home::new("limit");
    for (name, os, mac) in [
        ("a", "darwin", "aa:00:00:00:00:01"),
        ("b", "darwin", "aa:00:00:00:00:02"),
        ("c", "darwin", "aa:00:00:00:00:03"),
        ("l", "linux", "aa:00:00:00:00:04"),
    ] {
        home.vm(name, os, mac);
    }
    let a = home.run("a", &[], &[]);
    let b = home.run("b", &[], &[]);
    let out = home.tart(&["run", "--no-graphics", "c"], &[]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            Some(1),
            "The number of VMs exceeds the system limit (other running VMs: a, b)\n"
        )
    );
    let l = home.run("l", &[], &[]);
    let out = home.tart(
        &["run", "--no-graphics", "c"],
        &[("TART_SIM_KEYCHAIN_LOCKED", "1")],
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("The virtual machine failed to start."),
        "{out:?}"
    );
    for child in [a, b, l] {
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        assert_eq!(wait(child).code, Some(0));
    }
}

#[test]
fn oci_pull_pinned_listing_escaped_and_pruning() {
    let home = Home::new("oci");
    let registry = home.root.join("registry");
    let digest = format!("sha256:{}", "ab".repeat(32));
    make_vm(
        &registry.join("ghcr.io/org/macos/manifests").join(&digest),
        "darwin",
        "aa:00:00:00:00:05",
    );
    fs::create_dir_all(registry.join("ghcr.io/org/macos/tags")).unwrap();
    fs::write(registry.join("ghcr.io/org/macos/tags/15"), &digest).unwrap();
    let reg = registry.to_str().unwrap();
    let pinned = format!("ghcr.io/org/macos@{digest}");
    let out = home.tart(&["pull", &pinned], &[("TART_SIM_REGISTRY", reg)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = home.tart(&["list", "--format", "json"], &[]);
    assert!(
        out.stdout.contains("ghcr.io\\/org\\/macos@sha256:"),
        "{}",
        out.stdout
    );
    let other = format!("ghcr.io/org/macos@sha256:{}", "cd".repeat(32));
    let out = home.tart(&["pull", &other], &[("TART_SIM_REGISTRY", reg)]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("manifest unknown"), "{out:?}");
    let out = home.tart(&["clone", &pinned, "vm"], &[("TART_SIM_REGISTRY", reg)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(home.home().join("vms/vm/config.json")).unwrap()).unwrap();
    assert_eq!(
        config["macAddress"], "aa:00:00:00:00:05",
        "an OCI clone keeps the image's MAC"
    );
    // A pull by tag with pruning on deletes the other cached images unless told not to.
    let prune = [
        ("TART_SIM_REGISTRY", reg),
        ("TART_SIM_PRUNE", "1"),
        ("TART_NO_AUTO_PRUNE", "1"),
    ];
    make_vm(
        &registry.join("ghcr.io/org/linux/manifests").join(&digest),
        "linux",
        "aa:00:00:00:00:06",
    );
    assert_eq!(
        home.tart(&["pull", &format!("ghcr.io/org/linux@{digest}")], &prune)
            .code,
        Some(0)
    );
    assert!(home
        .home()
        .join("cache/OCIs/ghcr.io/org/macos")
        .join(&digest)
        .is_dir());
    assert_eq!(
        home.tart(&["pull", "ghcr.io/org/macos:15"], &prune[..2])
            .code,
        Some(0)
    );
    assert!(!home
        .home()
        .join("cache/OCIs/ghcr.io/org/linux")
        .join(&digest)
        .exists());
    let calls = fs::read_to_string(home.home().join(".sim/calls.log")).unwrap();
    assert!(calls.lines().any(|l| l.contains("\"no_auto_prune\":true")));
}

/// As tart: a pull files the image under the digest of the manifest served, and a digest
/// asked for that the served manifest does not have is only a symlink to it.
#[test]
fn a_manifest_of_another_digest_is_filed_under_its_own_and_deletes_clean_up() {
    use sha2::Digest;
    let home = Home::new("oci-mismatch");
    let registry = home.root.join("registry");
    let asked = format!("sha256:{}", "ee".repeat(32));
    let served: String = sha2::Sha256::digest(b"{\"layers\": []}")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let source = registry.join("ghcr.io/org/macos/manifests").join(&asked);
    make_vm(&source, "darwin", "aa:00:00:00:00:07");
    fs::write(source.join("manifest.json"), b"{\"layers\": []}").unwrap();
    let reg = [("TART_SIM_REGISTRY", registry.to_str().unwrap())];
    let pinned = format!("ghcr.io/org/macos@{asked}");
    assert_eq!(home.tart(&["pull", &pinned], &reg).code, Some(0));
    let names: Vec<String> = home
        .tart(&["list", "--format", "json", "--source", "oci"], &[])
        .stdout
        .parse::<serde_json::Value>()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            format!("ghcr.io/org/macos:{asked}"),
            format!("ghcr.io/org/macos@sha256:{served}")
        ]
    );
    let by_served = format!("ghcr.io/org/macos@sha256:{served}");
    assert_eq!(home.tart(&["delete", &by_served], &[]).code, Some(0));
    // The name asked for pointed at it: gone with it.
    let out = home.tart(&["list", "--format", "json", "--source", "oci"], &[]);
    assert_eq!(out.stdout.trim(), "[]", "{out:?}");
    let out = home.tart(&["delete", &pinned], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
}

#[test]
fn a_hung_call_ends_only_when_its_group_is_killed() {
    let home = Home::new("hang");
    let child = home
        .command(&["list"], &[("TART_SIM_FAULTS", "list hang")])
        .spawn()
        .unwrap();
    let pids = home.home().join(".sim/hang.pids");
    home.until(
        || fs::read_to_string(&pids).is_ok_and(|t| t.ends_with('\n')),
        "hang.pids written",
    );
    unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
    assert_eq!(wait(child).code, Some(-libc::SIGKILL));
    let out = home.tart(&["get", "x"], &[("TART_SIM_FAULTS", "get@x fail 1 boom")]);
    assert_eq!((out.code, out.stderr.as_str()), (Some(1), "boom\n"));
}

#[test]
fn dead_boots_get_no_lease_until_they_are_used_up() {
    let home = Home::new("dead");
    home.vm("a", "darwin", "aa:00:00:00:00:0b");
    let env = [("TART_SIM_DEAD_BOOTS", "1"), ("TART_SIM_IP_POLL_MS", "20")];
    for (boot, answers) in [(1, false), (2, true)] {
        let runner = home.run("a", &[], &env);
        home.until(|| home.running("a"), "the VM runs");
        let out = home.tart(&["ip", "a", "--wait", "1"], &env);
        assert_eq!(out.code == Some(0), answers, "boot {boot}: {out:?}");
        if !answers {
            assert_eq!(out.stderr, "no IP address found\n", "{out:?}");
        }
        assert_eq!(home.tart(&["stop", "a"], &[]).code, Some(0));
        wait(runner);
    }
}
