//! The tart driver against the tart simulator, as the service drives it: a gold imported
//! as a local VM, a clone that never replaces a VM, configure (cpus, memory, the guest data
//! folder), a runner in its own session that outlives its caller, the IP, the two-VM limit
//! as a host limit, a locked keychain, a hung call killed, stop and delete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use osx_builder::hypervisor::tart::{Tart, TartSettings, TartTimeouts};
use osx_builder::hypervisor::{GoldVm, Hypervisor, IpAnswer, VmRef, VmSettings};
use osx_builder::sys::cancel::Cancel;
use osx_builder::vm::guestinfo::GuestInfo;

struct World {
    root: PathBuf,
    tart: Tart,
}

impl Drop for World {
    fn drop(&mut self) {
        // Runners are in sessions of their own: stop them, or they outlive the test.
        for id in ["a", "b", "c"] {
            let _ = self.tart.stop(&self.vm(id), true, &Cancel::new());
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A gold image as the image cache publishes it.
struct Gold {
    checksum: String,
    dir: PathBuf,
    config: PathBuf,
}

impl Gold {
    fn vm(&self) -> GoldVm<'_> {
        GoldVm {
            checksum: &self.checksum,
            dir: &self.dir,
            config: &self.config,
        }
    }
}

fn gold(root: &Path, sum: &str, os: &str) -> Gold {
    let dir = root.join("data/gold").join(sum).join("bundle");
    fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({"version": 1, "os": os, "arch": "arm64", "cpuCount": 4,
        "cpuCountMin": 2, "memorySize": 4u64 << 30, "memorySizeMin": 2u64 << 30,
        "macAddress": "aa:bb:cc:00:00:01", "diskFormat": "raw"});
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    fs::File::create(dir.join("disk.img"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    fs::write(dir.join("nvram.bin"), b"nv").unwrap();
    Gold {
        checksum: sum.to_string(),
        dir: root.join("data/gold").join(sum),
        config: dir.join("config.json"),
    }
}

impl World {
    fn new(name: &str, env: &[(&str, &str)]) -> World {
        let root = std::env::temp_dir().join(format!("tart-driver-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("data/vms")).unwrap();
        let wrapper = common::tart_wrapper(&root, env);
        let tart = Tart::new(TartSettings {
            path: wrapper,
            home: root.join("data/tart"),
            vms_dir: root.join("data/vms"),
            bridged_interface: "en0".into(),
            timeouts: TartTimeouts {
                start: Duration::from_secs(20),
                list: Duration::from_secs(5),
                other: Duration::from_secs(5),
                ..TartTimeouts::default()
            },
        });
        World { root, tart }
    }

    fn vm(&self, id: &str) -> VmRef {
        VmRef {
            id: id.to_string(),
            dir: self.root.join("data/vms").join(id),
        }
    }

    fn make(&self, id: &str, gold: &Gold, guestinfo: &GuestInfo, network: &str) {
        let cancel = Cancel::new();
        self.tart.prepare_gold(gold.vm()).unwrap();
        self.tart
            .clone_vm(gold.vm(), &self.vm(id), &cancel)
            .unwrap();
        let settings = VmSettings {
            cpus: 3,
            memory_mb: 3072,
            network_type: network,
            headless: true,
            image: serde_json::Value::Null,
        };
        let configured = self
            .tart
            .configure(&self.vm(id), gold.vm(), &settings, guestinfo)
            .unwrap();
        assert_eq!(configured.guest_os, "darwin");
    }

    fn run_record(&self, id: &str) -> serde_json::Value {
        let path = self
            .root
            .join(format!("data/tart/.sim/runs/osxb-{id}.json"));
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }
}

#[test]
fn a_vm_is_made_run_and_destroyed_through_tart() {
    let w = World::new(
        "life",
        &[("TART_SIM_IP_POLL_MS", "20"), ("TART_SIM_BOOT_MS", "200")],
    );
    w.tart.check_available().unwrap();
    let gold = gold(&w.root, &"a".repeat(64), "darwin");
    let secret = GuestInfo::new(vec![("token".into(), "s3cret".into())]).unwrap();
    w.make("a", &gold, &secret, "nat");
    let tart_vm = w.root.join("data/tart/vms/osxb-a/config.json");
    let config: serde_json::Value = serde_json::from_slice(&fs::read(tart_vm).unwrap()).unwrap();
    assert_eq!(
        (config["cpuCount"].as_u64(), config["memorySize"].as_u64()),
        (Some(3), Some(3072 << 20))
    );
    // An existing name is never overwritten.
    let err = w
        .tart
        .clone_vm(gold.vm(), &w.vm("a"), &Cancel::new())
        .unwrap_err();
    assert_eq!(err.code(), "clone-exists", "{err}");

    w.tart.start(&w.vm("a"), true, &Cancel::new()).unwrap();
    let record = w.run_record("a");
    let share = &record["dirs"][0];
    assert_eq!(share["name"], "osx-builder");
    assert_eq!(share["read_only"], true);
    let folder = PathBuf::from(share["path"].as_str().unwrap());
    assert_eq!(fs::read_to_string(folder.join("token")).unwrap(), "s3cret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&folder).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(record["graphics"], false);
    // The runner is in a session of its own.
    let pid = record["pid"].as_i64().unwrap() as libc::pid_t;
    assert_eq!(unsafe { libc::getsid(pid) }, pid);
    assert_eq!(w.tart.list_running().unwrap(), vec![w.vm("a").dir]);
    // Guest data written while the VM runs reaches the folder.
    w.tart
        .write_guest_data(&w.vm("a"), "handout", "v2")
        .unwrap();
    assert_eq!(fs::read_to_string(folder.join("handout")).unwrap(), "v2");

    let end = Instant::now() + Duration::from_secs(20);
    let address = loop {
        match w.tart.guest_ip(&w.vm("a"), &Cancel::new()).unwrap() {
            IpAnswer::Found(a, _) => break a,
            _ => assert!(Instant::now() < end, "no address"),
        }
    };
    assert!(address.starts_with("192.168.64."), "{address}");

    // A second start: already running.
    assert_eq!(
        w.tart
            .start(&w.vm("a"), true, &Cancel::new())
            .unwrap_err()
            .code(),
        "vm-already-running"
    );
    w.tart.stop(&w.vm("a"), true, &Cancel::new()).unwrap();
    assert!(w.tart.list_running().unwrap().is_empty());
    assert!(w
        .tart
        .log_tail(&w.vm("a"))
        .unwrap()
        .lines
        .iter()
        .any(|l| l == "Stopping VM..."));
    // Stopping again, and deleting twice, are not errors.
    w.tart.stop(&w.vm("a"), true, &Cancel::new()).unwrap();
    w.tart.delete_vm(&w.vm("a")).unwrap();
    w.tart.delete_vm(&w.vm("a")).unwrap();
    assert!(!w.root.join("data/tart/vms/osxb-a").exists());
    let calls = fs::read_to_string(w.root.join("data/tart/.sim/calls.log")).unwrap();
    assert!(calls.lines().all(|l| l.contains("\"no_auto_prune\":true")));
    assert!(
        !calls.contains("s3cret"),
        "values never on tart's command line"
    );
}

#[test]
fn the_third_macos_vm_is_a_host_limit_and_bridged_asks_arp() {
    let w = World::new("limit", &[]);
    let gold = gold(&w.root, &"b".repeat(64), "darwin");
    let none = GuestInfo::default();
    for id in ["a", "b", "c"] {
        w.make(
            id,
            &gold,
            &none,
            if id == "a" { "bridged" } else { "hostonly" },
        );
    }
    w.tart.start(&w.vm("a"), true, &Cancel::new()).unwrap();
    assert_eq!(w.run_record("a")["net"], "bridged:en0");
    w.tart.start(&w.vm("b"), true, &Cancel::new()).unwrap();
    assert_eq!(w.run_record("b")["net"], "host");
    let err = w.tart.start(&w.vm("c"), true, &Cancel::new()).unwrap_err();
    assert_eq!(err.code(), "host-vm-limit", "{err}");
    assert!(
        err.to_string().contains("exceeds the system limit"),
        "{err}"
    );
}

#[test]
fn a_locked_keychain_says_how_to_fix_the_mac_and_a_hung_call_is_killed() {
    let w = World::new("keychain", &[("TART_SIM_KEYCHAIN_LOCKED", "1")]);
    let gold = gold(&w.root, &"c".repeat(64), "darwin");
    w.make("a", &gold, &GuestInfo::default(), "nat");
    let err = w.tart.start(&w.vm("a"), true, &Cancel::new()).unwrap_err();
    assert_eq!(err.code(), "host-keychain-locked");
    assert!(err.to_string().contains("unlock-keychain"), "{err}");

    let hung = World::new("hung", &[("TART_SIM_FAULTS", "list hang")]);
    let started = Instant::now();
    let err = hung.tart.list_running().unwrap_err();
    assert_eq!(err.code(), "tart-timeout", "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let missing = Tart::new(TartSettings {
        path: w.root.join("no-tart"),
        ..w.tart.settings().clone()
    });
    assert_eq!(
        missing.check_available().unwrap_err().code(),
        "tart-not-found"
    );
}
