//! The swap: the original Go server ran on this host, it is stopped and this binary starts on
//! the same data folder. The fixture lays the folder out as the original did (read from its
//! source, c4milo/osx-builder: config/config.go, vms/vm.go, vms/image.go,
//! pkg/vmware/fusion7.go and vmx.go):
//! - `gold/<checksum>/`: the archive unpacked as it is (its .vmx at the top);
//! - `images/<checksum>/<last part of the URL>`: the downloaded archive, kept;
//! - `vms/<id>/<id>.vmx`, id = 20 lowercase hex digits (10 random bytes, `%x`): made by
//!   `vmrun clone GOLD.vmx VM.vmx linked` (no snapshot), then rewritten with every key
//!   lowercased and sorted, `displayname` = id, `annotation` = base64 of the image JSON,
//!   `numvcpus`, `memsize` rounded up to a multiple of 4, `msg.autoanswer`, and one e1000 NIC;
//!   then `vmrun start VM.vmx nogui|gui`.
//!
//! The simulator holds those VMs as running, as a host mid-build would.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{call, request, FileServer};
use common::{gold_tar_gz, sha1_hex, Server, ServerOptions, TempDir, DISK_DESCRIPTOR, SIM_BIN};
use serde_json::{json, Value};

struct OriginalVm {
    id: &'static str,
    cpus: u32,
    memory: u32,
    network: &'static str,
    /// How the annotation's base64 is written.
    annotation: Annotation,
}

#[derive(Clone, Copy)]
enum Annotation {
    /// Go's `base64.StdEncoding`, what the original wrote.
    Padded,
    /// The same without `=` (written by other tools that read the original's VMs).
    Unpadded,
    /// As Fusion keeps it after someone edited the VM's notes: line breaks `|0A`.
    LineBreaks,
}

const ORIGINALS: [OriginalVm; 3] = [
    OriginalVm {
        id: "24a22119f66061eac0cc",
        cpus: 2,
        memory: 1024,
        network: "nat",
        annotation: Annotation::Padded,
    },
    OriginalVm {
        id: "c8a934d72293a7d31baf",
        cpus: 4,
        memory: 2046,
        network: "bridged",
        annotation: Annotation::Unpadded,
    },
    OriginalVm {
        id: "0f1e2d3c4b5a69788796",
        cpus: 1,
        memory: 512,
        network: "hostonly",
        annotation: Annotation::LineBreaks,
    },
];

/// A data folder the original left, with the archive served at `files`.
struct Swap {
    dir: TempDir,
    files: FileServer,
    url: String,
    checksum: String,
}

impl Swap {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sim_state(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    fn gold_dir(&self) -> PathBuf {
        self.data().join("gold").join(&self.checksum)
    }

    fn start(&self, args: &[&str]) -> Server {
        Server::start_with(
            self.dir.path(),
            ServerOptions {
                args: args.iter().map(|s| s.to_string()).collect(),
                ..ServerOptions::default()
            },
        )
    }

    fn sim(&self, args: &[&str]) -> String {
        let out = Command::new(SIM_BIN)
            .args(args)
            .env("VMRUN_SIM_STATE", self.sim_state())
            .output()
            .unwrap();
        assert!(out.status.success(), "vmrun-sim {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn vmx(&self, id: &str) -> PathBuf {
        self.data().join("vms").join(id).join(format!("{id}.vmx"))
    }

    fn body(&self) -> Value {
        common::image_body(&self.url, &self.checksum)
    }
}

/// The original's data folder with `vms` made and running.
fn original_host(tag: &str, vms: &[OriginalVm]) -> Swap {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(dir.path().join("sim")).unwrap();
    let files = FileServer::start();
    let archive = gold_tar_gz("");
    let checksum = sha1_hex(&archive);
    let url = files.add("/box/osx-10.10.tar.gz", archive.clone());
    let swap = Swap {
        dir,
        files,
        url,
        checksum,
    };
    // Unpacked where the original unpacked it, and the archive where it downloaded it.
    let gold = swap.gold_dir();
    std::fs::create_dir_all(&gold).unwrap();
    std::fs::write(gold.join("gold.vmx"), common::GOLD_VMX).unwrap();
    std::fs::write(gold.join("disk.vmdk"), DISK_DESCRIPTOR).unwrap();
    let images = swap.data().join("images").join(&swap.checksum);
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("osx-10.10.tar.gz"), &archive).unwrap();
    for vm in vms {
        let vmx = swap.vmx(vm.id);
        std::fs::create_dir_all(vmx.parent().unwrap()).unwrap();
        let gold_vmx = gold.join("gold.vmx");
        swap.sim(&[
            "clone",
            gold_vmx.to_str().unwrap(),
            vmx.to_str().unwrap(),
            "linked",
        ]);
        let image = json!({"url": swap.url, "checksum": swap.checksum, "checksum_type": "sha1"});
        original_set_info(&vmx, vm, &image.to_string());
        swap.sim(&["start", vmx.to_str().unwrap(), "nogui"]);
    }
    swap
}

/// What the original's `SetInfo` did to a fresh clone's VMX.
fn original_set_info(vmx: &Path, vm: &OriginalVm, image_json: &str) {
    let text = std::fs::read_to_string(vmx).unwrap();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split('=').collect();
        if parts.len() != 2 {
            continue;
        }
        keys.insert(
            parts[0].trim().to_lowercase(),
            parts[1].trim().trim_matches('"').to_string(),
        );
    }
    let padded = base64(image_json.as_bytes());
    let annotation = match vm.annotation {
        Annotation::Padded => padded,
        Annotation::Unpadded => padded.trim_end_matches('=').to_string(),
        Annotation::LineBreaks => {
            let (head, tail) = padded.split_at(padded.len() / 2);
            format!("{head}|0A{tail}|0A")
        }
    };
    keys.insert("displayname".into(), vm.id.into());
    keys.insert("annotation".into(), annotation);
    keys.insert("numvcpus".into(), vm.cpus.to_string());
    keys.insert("memsize".into(), ((vm.memory + 3) & !3).to_string());
    keys.insert("msg.autoanswer".into(), "true".into());
    keys.retain(|k, _| !k.starts_with("ethernet"));
    keys.insert("ethernet0.present".into(), "true".into());
    keys.insert("ethernet0.startconnected".into(), "true".into());
    keys.insert("ethernet0.virtualdev".into(), "e1000".into());
    keys.insert("ethernet0.connectiontype".into(), vm.network.into());
    let mut out = String::new();
    for (key, value) in keys {
        out.push_str(&format!("{key} = \"{value}\"\n"));
    }
    std::fs::write(vmx, out).unwrap();
}

/// Go's `base64.StdEncoding.EncodeToString`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = call("GET", &server.url("/metrics"), None, &[]).text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn wait_until(what: &str, server: &Server, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > deadline {
            panic!("never {what}\nserver log:\n{}", server.log());
        }
        thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn the_originals_vms_are_adopted_and_their_gold_kept_until_the_last_clone_goes() {
    let swap = original_host("dropin-swap", &ORIGINALS);
    let server = swap.start(&[]);

    for vm in &ORIGINALS {
        let got = server.wait_ready(vm.id);
        assert_eq!(got["id"], vm.id, "{got}");
        assert_eq!(got["image"]["checksum"], swap.checksum.as_str(), "{got}");
        assert_eq!(got["image"]["url"], swap.url.as_str(), "{got}");
        assert_eq!(got["image"]["checksum_type"], "sha1", "{got}");
        assert_eq!(got["cpus"], vm.cpus, "{got}");
        assert_eq!(got["memory"], (vm.memory + 3) & !3, "{got}");
        assert_eq!(got["network_type"], vm.network, "{got}");
        assert_eq!(got["status"], "running", "{got}");
        assert!(
            got["ip_address"].as_str().unwrap().starts_with("172.16."),
            "{got}"
        );
    }
    let (status, list) = request("GET", &server.url("/vms"), None, &[]);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(metric(&server, "osx_builder_capacity_used"), 3.0);
    let answer = call(
        "GET",
        &server.url(&format!("/vms/{}", ORIGINALS[0].id)),
        None,
        &[],
    );
    assert_eq!(
        answer.header("Content-Type"),
        Some("application/json; charset=utf-8")
    );

    // GET /images: the image, the VMs that depend on it, found from the records and from
    // the disks, and the original's archive as reclaimable.
    let (status, image) = request(
        "GET",
        &server.url(&format!("/images/{}", swap.checksum)),
        None,
        &[],
    );
    assert_eq!(status, 200, "{image}");
    let archive_len = std::fs::metadata(
        swap.data()
            .join("images")
            .join(&swap.checksum)
            .join("osx-10.10.tar.gz"),
    )
    .unwrap()
    .len();
    assert!(
        image["reclaimable_bytes"].as_u64().unwrap() >= archive_len,
        "{image}"
    );
    for vm in &ORIGINALS {
        for field in ["vms", "linked_clones"] {
            assert!(
                image[field].as_array().unwrap().contains(&json!(vm.id)),
                "{field}: {image}"
            );
        }
    }

    // A new VM of the same image clones the gold the original left: no download.
    let (status, created) = server.create(&swap.body());
    assert_eq!(status, 202, "{created}");
    let ours = created["id"].as_str().unwrap().to_string();
    server.wait_ready(&ours);
    assert_eq!(swap.files.hits("/box/osx-10.10.tar.gz"), 0);

    let image_url = server.url(&format!("/images/{}", swap.checksum));
    let (status, err) = request("DELETE", &image_url, None, &[]);
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["code"], "image-in-use", "{err}");
    for id in ORIGINALS.iter().map(|vm| vm.id).chain([ours.as_str()]) {
        assert!(err["message"].as_str().unwrap().contains(id), "{id}: {err}");
    }

    for vm in &ORIGINALS {
        let (status, body) = server.delete_vm(vm.id);
        assert_eq!(status, 204, "{body}\n{}", server.log());
        assert!(!swap.vmx(vm.id).parent().unwrap().exists());
        assert!(!server.sim(&["list"]).contains(vm.id));
        let (status, _) = server.get_vm(vm.id);
        assert_eq!(status, 404);
    }
    let (status, err) = request("DELETE", &image_url, None, &[]);
    assert_eq!(status, 409, "{err}");
    assert!(err["message"].as_str().unwrap().contains(&ours), "{err}");
    assert_eq!(server.delete_vm(&ours).0, 204);
    let (status, body) = request("DELETE", &image_url, None, &[]);
    assert_eq!(status, 204, "{body}");
    assert!(!swap.gold_dir().exists());
}

#[test]
fn eviction_under_a_tiny_budget_or_the_disk_floor_leaves_a_gold_that_clones_read() {
    let swap = original_host("dropin-evict", &ORIGINALS[..1]);
    let archive = swap.data().join("images").join(&swap.checksum);
    let server = swap.start(&["--cache-budget", "1"]);
    assert!(server.wait_log(&format!("gold image {} is not evicted", swap.checksum)));
    assert!(swap.gold_dir().join("gold.vmx").exists());
    // The original's archive of it goes: nothing reads it again.
    assert!(server.wait_log("removed the original server's archive"));
    assert!(!archive.exists());
    server.terminate();

    let server = swap.start(&["--min-free-disk", "1048576TiB"]);
    assert!(server.wait_log(&format!("gold image {} is not evicted", swap.checksum)));
    assert!(swap.gold_dir().join("gold.vmx").exists());
    server.wait_ready(ORIGINALS[0].id);
    // Logged once, not at every pass.
    server.terminate();
}

#[test]
fn a_clone_folder_no_record_knows_protects_the_gold_it_reads() {
    let swap = original_host("dropin-stranger", &[]);
    // Made by hand: no id for a name, no annotation, but its disk reads the gold.
    let stranger = swap.data().join("vms").join("copied by hand");
    std::fs::create_dir_all(&stranger).unwrap();
    let gold_vmx = swap.gold_dir().join("gold.vmx");
    swap.sim(&[
        "clone",
        gold_vmx.to_str().unwrap(),
        stranger.join("build.vmx").to_str().unwrap(),
        "linked",
    ]);
    let server = swap.start(&["--cache-budget", "1"]);
    assert!(server.wait_log(&format!("gold image {} is not evicted", swap.checksum)));
    assert!(server.log().contains("left alone"), "{}", server.log());
    let image_url = server.url(&format!("/images/{}", swap.checksum));
    let (status, err) = request("DELETE", &image_url, None, &[]);
    assert_eq!(status, 409, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("copied by hand"),
        "{err}"
    );
    assert!(gold_vmx.exists());
    std::fs::remove_dir_all(&stranger).unwrap();
    let (status, body) = request("DELETE", &image_url, None, &[]);
    assert_eq!(status, 204, "{body}");
}

fn list_calls(server: &Server) -> usize {
    server.sim_calls_of("list")
}

#[test]
fn creates_health_and_metrics_run_no_vmrun_and_a_failing_list_is_said() {
    let swap = original_host("dropin-no-spawn", &[]);
    // A VM someone runs by hand outside the data folder: no record counts it, only vmrun.
    let by_hand = swap.dir.path().join("elsewhere").join("hand.vmx");
    std::fs::create_dir_all(by_hand.parent().unwrap()).unwrap();
    let gold_vmx = swap.gold_dir().join("gold.vmx");
    let by_hand = by_hand.to_str().unwrap();
    swap.sim(&["clone", gold_vmx.to_str().unwrap(), by_hand, "linked"]);
    swap.sim(&["start", by_hand, "nogui"]);
    // Every vmrun call slow, and lists far apart: a request that ran one would show.
    let server = swap.start(&["--max-vms", "1", "--list-interval", "600"]);
    server.set_faults("* delay 300\n");
    let before = list_calls(&server);
    for _ in 0..10 {
        let (status, err) = server.create(&swap.body());
        assert_eq!(status, 503, "{err}");
        assert_eq!(err["code"], "capacity-exhausted", "{err}");
        assert_eq!(call("GET", &server.url("/healthz"), None, &[]).status, 200);
        assert_eq!(metric(&server, "osx_builder_capacity_used"), 1.0);
    }
    assert_eq!(list_calls(&server), before, "{:?}", server.sim_calls());

    // When vmrun list fails, admission counts the records alone and says so.
    server.set_faults("list fail Unknown error\n");
    let server_after = swap_restart(server, &swap, &["--max-vms", "1", "--list-interval", "0.2"]);
    assert!(server_after.wait_log("admission counts VM records alone"));
    let health = call("GET", &server_after.url("/healthz"), None, &[]);
    assert_eq!(health.status, 503, "{}", health.text());
    let health = health.json();
    assert!(
        health["checks"]["vmrun"]["message"]
            .as_str()
            .unwrap()
            .contains("records alone"),
        "{health}"
    );
    // The VM run by hand is not seen now: the records alone leave room.
    let (status, vm) = server_after.create(&swap.body());
    assert_eq!(status, 202, "{vm}");
    // A persisting failure is said once, however many lists meet it (one each 0.2 s).
    let lists = server_after.sim_calls_of("list");
    wait_until("three more failed lists", &server_after, || {
        server_after.sim_calls_of("list") >= lists + 3
    });
    let failing = "admission counts VM records alone (VMs";
    assert_eq!(
        server_after.log().matches(failing).count(),
        1,
        "{}",
        server_after.log()
    );
    server_after.set_faults("");
    assert!(server_after.wait_log("vmrun list: answers again"));
    wait_until("healthy again", &server_after, || {
        call("GET", &server_after.url("/healthz"), None, &[]).status == 200
    });
}

fn swap_restart(server: Server, swap: &Swap, args: &[&str]) -> Server {
    server.terminate();
    swap.start(args)
}

#[test]
fn capacity_stays_exact_when_vms_start_and_stop_behind_the_servers_back() {
    let swap = original_host("dropin-behind", &ORIGINALS[..1]);
    let server = swap.start(&["--max-vms", "2", "--list-interval", "0.2"]);
    let adopted = swap.vmx(ORIGINALS[0].id);
    server.wait_ready(ORIGINALS[0].id);
    assert_eq!(metric(&server, "osx_builder_capacity_used"), 1.0);
    let (status, created) = server.create(&swap.body());
    assert_eq!(status, 202, "{created}");
    let ours = created["id"].as_str().unwrap().to_string();
    server.wait_ready(&ours);
    assert_eq!(metric(&server, "osx_builder_capacity_used"), 2.0);
    assert_eq!(server.create(&swap.body()).0, 503);

    // Someone powers the adopted VM off in Fusion: its place is free at the next list,
    // before any reconcile (every 60 s) changes its record.
    swap.sim(&["stop", adopted.to_str().unwrap(), "hard"]);
    wait_until("counting 1", &server, || {
        metric(&server, "osx_builder_capacity_used") == 1.0
    });
    let (status, created) = server.create(&swap.body());
    assert_eq!(status, 202, "{created}");
    let third = created["id"].as_str().unwrap().to_string();
    server.wait_ready(&third);
    assert_eq!(metric(&server, "osx_builder_capacity_used"), 2.0);

    // And on again: three run, over the limit, and creates are refused.
    swap.sim(&["start", adopted.to_str().unwrap(), "nogui"]);
    wait_until("counting 3", &server, || {
        metric(&server, "osx_builder_capacity_used") == 3.0
    });
    assert_eq!(server.create(&swap.body()).0, 503);
    // A delete frees its place at once, without waiting for a list.
    assert_eq!(server.delete_vm(&third).0, 204);
    assert_eq!(metric(&server, "osx_builder_capacity_used"), 2.0);
}
