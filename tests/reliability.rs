//! Never lose or leak a VM: idempotent creates, adoption of the original server's VMs,
//! reconcile, stale locks, a disk too small for the image.

mod common;

use common::http::{request, Delivery, FileServer};
use common::{gold_tar_gz_padded, options, sha1_hex, Server, ServerOptions, TempDir, World};
use serde_json::{json, Value};

fn body(url: &str, checksum: &str) -> Value {
    json!({"image": {"url": url, "checksum": checksum, "checksum_type": "sha1"}, "headless": true})
}

fn count_vms(server: &Server) -> usize {
    let (_, list) = request("GET", &server.url("/vms"), None, &[]);
    list.as_array().unwrap().len()
}

#[test]
fn a_retried_create_with_the_same_key_gets_the_same_vm() {
    let World {
        dir,
        files: _files,
        server,
        url,
        checksum,
    } = World::start("idem", ServerOptions::default());
    let text = body(&url, &checksum).to_string();
    let headers = [("Idempotency-Key", "build-42")];
    let (s1, first) = request("POST", &server.url("/vms"), Some(&text), &headers);
    let (s2, second) = request("POST", &server.url("/vms"), Some(&text), &headers);
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["name"], "build-42");
    let mut named = body(&url, &checksum);
    named["name"] = json!("build-43");
    let (_, third) = server.create(&named);
    let (_, fourth) = server.create(&named);
    assert_eq!(third["id"], fourth["id"]);
    assert_ne!(third["id"], first["id"]);
    assert_eq!(count_vms(&server), 2);
    // Keys survive a restart: the retry may come after one.
    server.kill();
    let server = Server::start(dir.path());
    let (_, again) = request("POST", &server.url("/vms"), Some(&text), &headers);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(count_vms(&server), 2);
    let (status, err) = request(
        "POST",
        &server.url("/vms"),
        Some(&text),
        &[("Idempotency-Key", &"k".repeat(300))],
    );
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid-name")));
}

/// Retries that race the first create (its record is written outside the admission lock)
/// wait for it and get its VM: one VM, one id, every answer for a durable record.
#[test]
fn retries_at_once_with_one_key_make_one_vm() {
    let world = World::start("idem-burst", ServerOptions::default());
    let server = &world.server;
    server.set_faults("* delay 300\n");
    let text = body(&world.url, &world.checksum).to_string();
    let gate = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (gate, url, text) = (gate.clone(), server.url("/vms"), text.clone());
            std::thread::spawn(move || {
                gate.wait();
                request("POST", &url, Some(&text), &[("Idempotency-Key", "build-7")])
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let first = &answers[0].1;
    for (status, vm) in &answers {
        assert_eq!(*status, 202, "{vm}");
        assert_eq!(vm["id"], first["id"], "{answers:?}");
    }
    assert_eq!(count_vms(server), 1);
    let id = first["id"].as_str().unwrap();
    // Durable when answered: a line of the journal until provisioning gives it its folder.
    let vms = server.data_dir.join("vms");
    let record = vms.join(id).join("osx-builder.json");
    let journal = std::fs::read_to_string(vms.join(".journal")).unwrap_or_default();
    assert!(
        record.is_file() || journal.contains(id),
        "vm {id} is neither in the journal nor in its folder"
    );
    common::eventually("the VM's folder", || record.is_file().then_some(()));
}

#[test]
fn vms_of_the_original_go_server_are_adopted_and_strangers_left_alone() {
    let dir = TempDir::new("adopt");
    let vms = dir.path().join("data/vms");
    let id = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
    std::fs::create_dir_all(vms.join(id)).unwrap();
    let image = r#"{"url":"http://127.0.0.1:1/old.tar.gz","checksum":"5cf00d380e28d02f30efaceafef7c7c8bdedae33","checksum_type":"sha1"}"#;
    let vmx = format!(
        ".encoding = \"UTF-8\"\ndisplayName = \"{id}\"\nnumvcpus = \"2\"\nmemsize = \"1024\"\nguestOS = \"darwin14-64\"\nethernet0.present = \"TRUE\"\nethernet0.connectionType = \"hostonly\"\nannotation = \"{}\"\n",
        osx_builder::hypervisor::vmrun::vmx::base64_encode(image.as_bytes())
    );
    let vmx_path = vms.join(id).join(format!("{id}.vmx"));
    std::fs::write(&vmx_path, vmx).unwrap();
    std::fs::create_dir_all(vms.join("not-a-vm")).unwrap();
    std::fs::write(vms.join("not-a-vm/notes.txt"), "keep me").unwrap();

    let server = Server::start(dir.path());
    let (status, vm) = server.get_vm(id);
    assert_eq!(status, 200, "{}", server.log());
    assert_eq!(vm["status"], "stopped");
    assert_eq!(vm["network_type"], "hostonly");
    assert_eq!(vm["guest_os"], "darwin14-64");
    assert_eq!(vm["image"]["url"], "http://127.0.0.1:1/old.tar.gz");
    assert!(vms.join("not-a-vm/notes.txt").exists());
    assert!(server.log().contains("left alone"), "{}", server.log());
    // An adopted VM is destroyed like any other.
    let (status, _) = server.delete_vm(id);
    assert_eq!(status, 204);
    assert!(!vms.join(id).exists());
}

#[test]
fn reconcile_notices_vms_stopped_or_removed_behind_its_back() {
    let World {
        dir: _dir,
        files: _files,
        server,
        url,
        checksum,
    } = World::start("reconcile", options(&["--reconcile-interval", "0.2"]));
    let (_, a) = server.create(&body(&url, &checksum));
    let (_, b) = server.create(&body(&url, &checksum));
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    server.wait_ready(&a);
    server.wait_ready(&b);
    let vmx = server
        .data_dir
        .join("vms")
        .join(&a)
        .join(format!("{a}.vmx"));
    server.sim(&["stop", vmx.to_str().unwrap(), "hard"]);
    server.wait_for(&a, "stopped", |vm| vm["status"] == "stopped");
    server.sim(&["start", vmx.to_str().unwrap(), "nogui"]);
    server.wait_for(&a, "running again", |vm| vm["status"] == "running");

    let b_vmx = server
        .data_dir
        .join("vms")
        .join(&b)
        .join(format!("{b}.vmx"));
    server.sim(&["stop", b_vmx.to_str().unwrap(), "hard"]);
    std::fs::remove_dir_all(server.data_dir.join("vms").join(&b)).unwrap();
    let vm = server.wait_for(&b, "failed", |vm| vm["status"] == "failed");
    assert_eq!(vm["error"]["code"], "files-missing");
    let (status, _) = server.delete_vm(&b);
    assert_eq!(status, 204);
}

#[test]
fn stale_locks_are_removed_at_start_and_live_ones_kept() {
    let World {
        dir,
        files: _files,
        server,
        url,
        checksum,
    } = World::start("locks", ServerOptions::default());
    let (_, a) = server.create(&body(&url, &checksum));
    let (_, b) = server.create(&body(&url, &checksum));
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    server.wait_ready(&a);
    server.wait_ready(&b);
    server.kill();
    // A crash left `a` powered off with its lock folder behind; `b` still runs.
    let vms = dir.path().join("data/vms");
    let a_vmx = vms.join(&a).join(format!("{a}.vmx"));
    let out = std::process::Command::new(common::SIM_BIN)
        .args(["stop", a_vmx.to_str().unwrap(), "hard"])
        .env("VMRUN_SIM_STATE", dir.path().join("sim"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stale = vms.join(&a).join(format!("{a}.vmx.lck"));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("M31337.lck"), "").unwrap();
    let live = vms.join(&b).join(format!("{b}.vmx.lck"));
    assert!(live.exists(), "the simulator keeps a lock while b runs");

    let server = Server::start(dir.path());
    assert!(!stale.exists(), "stale lock kept");
    assert!(live.exists(), "live lock removed");
    assert!(
        server.log().contains("removed stale VMware lock"),
        "{}",
        server.log()
    );
    assert_eq!(server.get_vm(&a).1["status"], "stopped");
    assert_eq!(server.get_vm(&b).1["status"], "running");
}

#[test]
fn an_image_larger_than_the_free_disk_fails_with_disk_full() {
    let dir = TempDir::new("diskfull");
    let files = FileServer::start();
    // Big enough for the free-space check, which runs once the format is known.
    let archive = gold_tar_gz_padded("", 64 * 1024);
    let checksum = sha1_hex(&archive);
    // 1 EiB: no disk has that much free.
    let url = files.add_with("/huge.tar.gz", archive, Delivery::ClaimLength(1 << 60));
    let server = Server::start(dir.path());
    let (_, vm) = server.create(&body(&url, &checksum));
    let vm = server.wait_failed(vm["id"].as_str().unwrap());
    assert_eq!(vm["error"]["code"], "disk-full", "{vm}");
    let gold = server.data_dir.join("gold");
    let leftovers: Vec<_> = std::fs::read_dir(&gold)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "left in gold/: {leftovers:?}");
    let (status, _) = request("GET", &server.url("/vms"), None, &[]);
    assert_eq!(status, 200);
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    // As under launchd, which starts daemons with a soft limit of 256.
    let dir = TempDir::new("nofile");
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if limit.rlim_max < 1024 {
        println!("skipped: the hard limit here is {}", limit.rlim_max);
        return;
    }
    let lowered = libc::rlimit {
        rlim_cur: 256,
        rlim_max: limit.rlim_max,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) };
    let server = Server::start(dir.path());
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let Ok(limits) = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())) else {
        println!("skipped: no /proc on this system");
        return;
    };
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(soft > 256 && soft >= limit.rlim_max.min(10_240), "{line}");
}
