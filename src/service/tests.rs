//! The service against the in-memory hypervisor: the races that the simulator's timing
//! makes hard to hit on purpose, each held at the exact point it needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::reconcile::Reconcile;
use super::{Created, Service};
use crate::app::{self, App};
use crate::config::{self, Command};
use crate::hypervisor::fake::{FakeHypervisor, Fault};
use crate::image::{ChecksumType, ImageSpec};
use crate::service::pools::spec::PoolSpec;
use crate::service::pools::view::PoolView;
use crate::service::Error;
use crate::vm::guestinfo::GuestInfo;
use crate::vm::labels::Labels;
use crate::vm::{CreateVm, NetworkType, VmId};

const DEMO_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/demo-image.tar.gz");

struct Harness {
    app: App,
    fake: Arc<FakeHypervisor>,
    dir: PathBuf,
    image: ImageSpec,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    fn new(extra: &[&str]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "osxb-service-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let images = dir.join("images");
        std::fs::create_dir_all(&images).expect("temp folder");
        let archive = images.join("demo-image.tar.gz");
        std::fs::copy(DEMO_IMAGE, &archive).expect("demo image");
        let checksum = hex(&Sha256::digest(
            std::fs::read(&archive).expect("demo image"),
        ));
        let mut args: Vec<String> = [
            "--data-dir",
            &dir.join("data").to_string_lossy(),
            "--file-image-dir",
            &images.to_string_lossy(),
            "--ip-poll-interval",
            "0.05",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = match config::parse(&args, &HashMap::new()) {
            Ok(Command::Serve(config)) => config,
            _ => panic!("settings {args:?} do not parse"),
        };
        std::fs::create_dir_all(&config.data_dir).expect("data folder");
        let fake = Arc::new(FakeHypervisor::new());
        let checked = app::check(&config).expect("settings");
        let trust = crate::tls::client_trust(None).expect("trust");
        let app = app::build(&config, checked, fake.clone(), trust).expect("server");
        Harness {
            app,
            fake,
            dir,
            image: ImageSpec {
                url: format!("file://{}", archive.display()),
                checksum,
                checksum_type: ChecksumType::Sha256,
            },
        }
    }

    fn service(&self) -> &Arc<Service> {
        &self.app.service
    }

    fn request(&self) -> CreateVm {
        CreateVm {
            image: self.image.clone(),
            cpus: 2,
            memory: 1024,
            network_type: NetworkType::Nat,
            headless: true,
            callback_url: None,
            name: None,
            ttl: None,
            guestinfo: GuestInfo::default(),
            labels: Labels::default(),
            keep: false,
        }
    }

    fn create(&self, request: CreateVm) -> VmId {
        match self.service().create(request) {
            Ok(Created::New(json)) => id_of(&json),
            Ok(Created::Existing(_)) => panic!("a new create answered an existing VM"),
            Err(err) => panic!("create refused: {err}"),
        }
    }

    fn status(&self, id: VmId) -> Option<String> {
        let json = self.service().get(id).ok()?;
        let vm: serde_json::Value = serde_json::from_slice(&json).ok()?;
        vm["status"].as_str().map(str::to_string)
    }

    /// Waits for the VM to be running with an address.
    fn running(&self, id: VmId) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let json = self.service().get(id).expect("the VM exists");
            let vm: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
            if vm["status"] == "running" && vm["ip_address"] != "" {
                return;
            }
            assert_ne!(vm["status"], "failed", "{vm}");
            assert!(Instant::now() < end, "not running in 30 s: {vm}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn vmx(&self, id: VmId) -> PathBuf {
        self.dir
            .join("data/vms")
            .join(id.to_string())
            .join(format!("{id}.vmx"))
    }
}

fn id_of(json: &[u8]) -> VmId {
    let vm: serde_json::Value = serde_json::from_slice(json).expect("JSON");
    vm["id"]
        .as_str()
        .and_then(VmId::parse)
        .expect("the VM has an id")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn started(fake: &FakeHypervisor, vmx: &Path) -> bool {
    let call = format!("start {}", vmx.display());
    fake.calls().contains(&call)
}

#[test]
fn a_delete_during_the_clone_answers_at_once_and_the_clone_goes_when_it_ends() {
    let h = Harness::new(&[]);
    h.fake.hold("clone");
    let id = h.create(h.request());
    assert!(
        h.fake.wait_until_held("clone", Duration::from_secs(30)),
        "the clone never began"
    );
    // The clone works on the gold VM: DELETE does not kill it, and answers at once.
    h.service().delete(id).expect("delete");
    assert_eq!(h.status(id), None, "the VM is still listed");
    assert!(matches!(h.service().delete(id), Err(Error::VmNotFound)));
    let folder = h.dir.join("data/vms").join(id.to_string());
    h.fake.release("clone");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while folder.exists() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(!folder.exists(), "the clone's folder stayed");
    assert!(!started(&h.fake, &h.vmx(id)), "{:?}", h.fake.calls());
    assert_eq!(h.status(id), None);
}

#[test]
fn a_delete_while_starting_leaves_no_vm_running() {
    let h = Harness::new(&[]);
    h.fake.hold("start");
    let id = h.create(h.request());
    assert!(h.fake.wait_until_held("start", Duration::from_secs(30)));
    h.service().delete(id).expect("delete");
    h.fake.release("start");
    assert!(!h.fake.is_running(&h.vmx(id)));
    assert_eq!(h.status(id), None);
}

#[test]
fn the_reconcile_follows_a_running_set_that_changes_behind_the_servers_back() {
    let h = Harness::new(&[]);
    let id = h.create(h.request());
    h.running(id);
    let vmx = h.vmx(id).canonicalize().expect("the clone's VMX");
    for (runs, status) in [
        (false, "stopped"),
        (true, "running"),
        (false, "stopped"),
        (false, "stopped"),
        (true, "running"),
    ] {
        h.fake.set_running_behind_the_back(&vmx, runs);
        h.service().reconcile(Reconcile::Periodic);
        assert_eq!(h.status(id).as_deref(), Some(status), "runs: {runs}");
    }
    // A listing that fails changes nothing: the record keeps what was last known.
    h.fake.set_running_behind_the_back(&vmx, false);
    h.fake.fail_next("list", Fault::Failed("boom".into()));
    h.service().reconcile(Reconcile::Periodic);
    assert_eq!(h.status(id).as_deref(), Some("running"));
}

#[test]
fn a_reap_and_a_renew_at_once_never_both_succeed() {
    let h = Harness::new(&[]);
    let ids: Vec<VmId> = (0..6)
        .map(|_| {
            let mut request = h.request();
            request.ttl = Some(1);
            h.create(request)
        })
        .collect();
    for id in &ids {
        h.running(*id);
    }
    let later = crate::sys::time::now_ms() + 60_000;
    let (mut reaped, mut renewed) = (0, 0);
    for id in ids {
        let barrier = Arc::new(Barrier::new(2));
        let (service, gate) = (h.service().clone(), barrier.clone());
        let reaper = thread::spawn(move || {
            gate.wait();
            service.reap(id, later)
        });
        barrier.wait();
        let renew = h.service().renew(id, Some(600));
        let reap = reaper.join().expect("reaper thread");
        match (reap, renew) {
            (Ok(true), Err(Error::VmDeleting | Error::VmNotFound)) => reaped += 1,
            (Ok(false), Ok(_)) => renewed += 1,
            // The renew came first and moved the expiry past `later`? It cannot: 600 s
            // from now is before now + 60 s only if the clock ran backwards.
            (reap, renew) => panic!("reap {reap:?} and renew {:?} of {id}", renew.map(drop)),
        }
        match h.status(id) {
            None => assert!(!h.fake.is_running(&h.vmx(id))),
            Some(status) => assert_eq!(status, "running"),
        }
    }
    assert_eq!(reaped + renewed, 6);
}

#[test]
fn concurrent_creates_fill_the_capacity_exactly() {
    let h = Harness::new(&["--max-vms", "3"]);
    // Provisioning stops before its first listing (just before the start): what is
    // listed until the release is the creates' doing.
    h.fake.hold("clone");
    let lists_before = list_calls(&h.fake);
    let barrier = Arc::new(Barrier::new(8));
    let answers: Vec<_> = (0..8)
        .map(|_| {
            let (service, gate, request) = (h.service().clone(), barrier.clone(), h.request());
            thread::spawn(move || {
                gate.wait();
                service.create(request).map(|created| match created {
                    Created::New(json) | Created::Existing(json) => id_of(&json),
                })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("create thread"))
        .collect();
    let admitted: Vec<VmId> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().copied())
        .collect();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(Error::CapacityExhausted(_))))
        .count();
    assert_eq!((admitted.len(), refused), (3, 5), "{answers:?}");
    // Admission counted without asking the hypervisor: creates never run a process.
    assert_eq!(list_calls(&h.fake), lists_before, "creates ran a listing");
    h.fake.release("clone");
    for id in &admitted {
        h.running(*id);
    }
    // A freed place is taken by the next create.
    h.service().delete(admitted[0]).expect("delete");
    h.create(h.request());
    assert!(matches!(
        h.service().create(h.request()),
        Err(Error::CapacityExhausted(_))
    ));
}

fn list_calls(fake: &FakeHypervisor) -> usize {
    fake.calls().iter().filter(|c| *c == "list").count()
}

impl Harness {
    /// Declares pool `name` of `size` VMs shaped as [`Harness::request`], keeps it warm,
    /// and waits until all of them are ready.
    fn warm_pool(&self, name: &str, size: u32) {
        crate::service::pools::start_keeper(self.service().clone());
        let spec = PoolSpec::from_create(&self.request(), size);
        self.service().put_pool(name, spec).expect("pool declared");
        self.pool_ready(name, u64::from(size));
    }

    fn pool_ready(&self, name: &str, ready: u64) -> PoolView {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let view = self.service().pool(name).expect("the pool exists");
            if view.ready == ready && view.warming == 0 {
                return view;
            }
            assert!(
                Instant::now() < end,
                "pool never had {ready} ready: {view:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn vm_of(json: &[u8]) -> serde_json::Value {
    serde_json::from_slice(json).expect("JSON")
}

#[test]
fn concurrent_hand_outs_give_each_create_its_own_running_vm_and_guestinfo() {
    let h = Harness::new(&[]);
    h.warm_pool("p", 2);
    let barrier = Arc::new(Barrier::new(2));
    let answers: Vec<serde_json::Value> = (0..2)
        .map(|n| {
            let (service, gate, mut request) = (h.service().clone(), barrier.clone(), h.request());
            request.guestinfo =
                GuestInfo::new(vec![("name".into(), format!("secret-{n}"))]).expect("guestinfo");
            request.name = Some(format!("key-{n}"));
            thread::spawn(move || {
                gate.wait();
                match service.create(request) {
                    Ok(Created::New(json)) => vm_of(&json),
                    Ok(Created::Existing(_)) => panic!("a new key answered an existing VM"),
                    Err(err) => panic!("create refused: {err}"),
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("create thread"))
        .collect();
    let mut ids = Vec::new();
    for vm in &answers {
        assert_eq!(vm["status"], "running", "{vm}");
        assert_ne!(vm["ip_address"], "", "{vm}");
        assert!(vm.get("pool").is_none(), "{vm}");
        assert_eq!(vm["guestinfo_keys"], serde_json::json!(["name"]));
        let id = id_of(vm.to_string().as_bytes());
        let n = &vm["name"].as_str().unwrap()["key-".len()..];
        let vars = h.fake.guest_vars(&h.vmx(id));
        assert_eq!(
            vars.get("name").map(String::as_str),
            Some(&*format!("secret-{n}"))
        );
        assert!(!vm.to_string().contains("secret-"), "{vm}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "one VM was handed out twice");
    let view = h.service().pool("p").expect("pool");
    assert_eq!((view.hits, view.misses), (2, 0));
    // The pool refills with new VMs; the handed-out ones are no longer its.
    let view = h.pool_ready("p", 2);
    assert!(ids.iter().all(|id| !view.vms.contains(id)), "{view:?}");
    // A retry with a key gets its VM back, and takes none from the pool.
    let mut retry = h.request();
    retry.name = Some("key-0".into());
    match h.service().create(retry) {
        Ok(Created::Existing(json)) => assert!(ids.contains(&id_of(&json))),
        _ => panic!("the retry did not answer its VM"),
    }
    assert_eq!(h.service().pool("p").expect("pool").hits, 2);
}

#[test]
fn a_create_that_fits_no_pool_is_provisioned_and_counted() {
    let h = Harness::new(&[]);
    h.warm_pool("p", 1);
    let mut other = h.request();
    other.cpus = 4;
    let json = match h.service().create(other) {
        Ok(Created::New(json)) => json,
        _ => panic!("create refused"),
    };
    let vm = vm_of(&json);
    assert_eq!(vm["status"], "", "provisioned from the start: {vm}");
    assert_eq!(h.service().fleet.pools.unmatched(), 1);
    let view = h.service().pool("p").expect("pool");
    assert_eq!((view.hits, view.misses, view.ready), (0, 0, 1));
}

#[test]
fn an_idle_vm_that_loses_its_address_is_replaced() {
    let h = Harness::new(&[]);
    h.warm_pool("p", 1);
    let first = h.service().pool("p").expect("pool").vms[0];
    h.fake.forget_address(&h.vmx(first));
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let view = h.service().pool("p").expect("pool");
        if view.ready == 1 && !view.vms.contains(&first) {
            break;
        }
        assert!(Instant::now() < end, "never replaced: {view:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(h.status(first), None, "the broken VM is destroyed");
}

#[test]
fn without_the_tool_a_create_is_refused_before_anything_is_recorded() {
    let h = Harness::new(&[]);
    h.fake.set_unavailable(true);
    assert!(matches!(
        h.service().create(h.request()),
        Err(Error::HypervisorMissing(_))
    ));
    assert!(
        h.service().list().is_empty(),
        "a refused create was recorded"
    );
    h.fake.set_unavailable(false);
    let id = h.create(h.request());
    h.running(id);
}

#[test]
fn a_delete_outlasts_vmware_holding_the_vm_and_a_vmx_it_cannot_open() {
    let h = Harness::new(&[]);
    let held = h.create(h.request());
    let unopenable = h.create(h.request());
    h.running(held);
    h.running(unopenable);
    // VMware still holds a VM it just powered off: the delete waits and tries again.
    h.fake.fail_next("deleteVM", Fault::Locked);
    h.service()
        .delete(held)
        .expect("delete of a VM VMware held for a moment");
    // A VMX vmrun cannot open cannot run either: its folder goes all the same.
    h.fake.fail_next("deleteVM", Fault::CannotOpen);
    h.service()
        .delete(unopenable)
        .expect("delete of an unopenable VM");
    for id in [held, unopenable] {
        assert_eq!(h.status(id), None);
        assert!(!h.dir.join("data/vms").join(id.to_string()).exists());
    }
    let deletes = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("deleteVM"))
        .count();
    assert_eq!(deletes, 3, "one retry of the held VM: {:?}", h.fake.calls());
}
