//! Record and reality agree, one server per data folder, and a data folder that is
//! read-only or full degrades instead of blinding the server. After each case: vmrun's
//! running set equals the records that say `running`.
//!
//! The read-only and full-disk cases mount a small tmpfs as the data folder: they need
//! root (or CAP_SYS_ADMIN) and say "skipped" without it.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{request, FileServer};
use common::{gold_tar_gz, options, sha1_hex, Server, ServerOptions, TempDir, World};
use serde_json::{json, Value};

/// The ids of the VMs the simulator runs.
fn sim_running(server: &Server) -> BTreeSet<String> {
    let out = server.sim(&["list"]);
    assert!(out.starts_with("Total running VMs:"), "vmrun list: {out}");
    out.lines()
        .skip(1)
        .filter_map(|line| Path::new(line).file_stem()?.to_str().map(str::to_string))
        .collect()
}

/// The ids of the VMs whose record says `running`.
fn records_running(server: &Server) -> BTreeSet<String> {
    let (status, list) = request("GET", &server.url("/vms"), None, &[]);
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .filter(|vm| vm["status"] == "running")
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_records_match_vmrun(server: &Server) {
    assert_eq!(
        sim_running(server),
        records_running(server),
        "vmrun's running set and the running records differ\n{}",
        server.log()
    );
}

fn poll(what: &str, server: &Server, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_second_server_on_one_data_folder_refuses_to_start_naming_the_first() {
    let world = World::start("second", ServerOptions::default());
    let id = world.create(&world.body());
    world.server.wait_ready(&id);
    let mut second = Command::new(common::SERVER_BIN)
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(&world.server.data_dir)
        .env("VMWARE_VMRUN_PATH", common::SIM_BIN)
        .env("VMRUN_SIM_STATE", &world.server.sim_state)
        .env("OSX_BUILDER_VMRUN_HOST_TYPE", "ws")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let stderr = common::log_lines::stderr_text(stderr.as_bytes(), common::log_lines::json_run());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", world.server.pid())),
        "the message names the holder: {stderr}"
    );
    assert!(stderr.contains("--data-dir"), "{stderr}");
    // The first is untouched: its VM still runs and shows so.
    let (_, vm) = world.server.get_vm(&id);
    assert_eq!(vm["status"], "running", "{vm}");
    assert_records_match_vmrun(&world.server);
    // Once the first is gone (even killed), the folder is free again.
    let World {
        dir,
        server,
        files: _files,
        ..
    } = world;
    server.kill();
    let server = Server::start(dir.path());
    assert_eq!(server.get_vm(&id).1["status"], "running");
    assert_records_match_vmrun(&server);
}

#[test]
fn a_failed_vm_that_runs_is_stopped_by_the_reconcile() {
    let world = World::start("failedruns", options(&["--reconcile-interval", "0.2"]));
    // VMware cannot read the VM while it runs: a failure the IP watch does not wait out
    // ("not powered on" is believed only when `list` agrees, and here it would not).
    world.server.set_faults(
        "getGuestIPAddress fail Cannot open VM: x.vmx, The virtual machine cannot be found",
    );
    let id = world.create(&world.body());
    let vm = world.server.wait_failed(&id);
    assert!(vm["error"]["code"].is_string(), "{vm}");
    // The failure itself stops it (issue 12); someone then starts it behind our back.
    assert!(!sim_running(&world.server).contains(&id));
    let vmx = world
        .server
        .data_dir
        .join("vms")
        .join(&id)
        .join(format!("{id}.vmx"));
    world.server.sim(&["start", vmx.to_str().unwrap(), "nogui"]);
    assert!(sim_running(&world.server).contains(&id));
    poll("the failed VM to be stopped", &world.server, || {
        !sim_running(&world.server).contains(&id)
    });
    assert!(
        world.server.wait_log(&format!("vm={id} is failed") as &str),
        "{}",
        world.server.log()
    );
    let (_, after) = world.server.get_vm(&id);
    assert_eq!(after["error"], vm["error"], "the failure is kept: {after}");
    assert_records_match_vmrun(&world.server);
    world.server.set_faults("");
    let (status, _) = world.server.delete_vm(&id);
    assert_eq!(status, 204);
}

/// A tmpfs mounted at `root/data`, unmounted on drop.
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(root: &Path, size: &str) -> Option<Self> {
        let path = root.join("data");
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Self { path })
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A server whose data folder is a fresh tmpfs, with one VM ready.
struct OnTmpfs {
    server: Server,
    id: String,
    body: Value,
    checksum: String,
    _files: FileServer,
    mount: Mount,
    dir: TempDir,
}

impl OnTmpfs {
    fn start(tag: &str, size: &str) -> Option<Self> {
        let dir = TempDir::new(tag);
        let mount = Mount::tmpfs(dir.path(), size)?;
        let files = FileServer::start();
        let archive = gold_tar_gz("box");
        let checksum = sha1_hex(&archive);
        let url = files.add("/gold.tar.gz", archive);
        let server = Server::start(dir.path());
        let body = common::image_body(&url, &checksum);
        let (_, vm) = server.create(&body);
        let id = vm["id"].as_str().unwrap().to_string();
        server.wait_ready(&id);
        Some(Self {
            server,
            id,
            body,
            checksum,
            _files: files,
            mount,
            dir,
        })
    }
}

#[test]
fn a_read_only_data_folder_degrades_and_never_blinds() {
    // Bound in this order so that they drop in reverse: server, mount, then its folder.
    let Some(OnTmpfs {
        dir,
        mount,
        _files: _keep_files,
        server,
        id,
        checksum,
        body: _,
    }) = OnTmpfs::start("readonly", "64m")
    else {
        return;
    };
    server.kill();
    // What a crash left, then the disk went read-only (a remount after an I/O error).
    let data = dir.path().join("data");
    let staging = data.join(format!("gold/.staging-{checksum}-1-1"));
    let deleting = data.join("vms/.deleting-6ba7b810-9dad-41d1-80b4-00c04fd430c8");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&deleting).unwrap();
    mount.remount("ro");

    let server = Server::start(dir.path());
    let (status, vm) = server.get_vm(&id);
    assert_eq!(
        (status, vm["status"].as_str()),
        (200, Some("running")),
        "{vm}"
    );
    assert!(staging.is_dir() && deleting.is_dir(), "leftovers wait");
    assert!(
        server.wait_log("left for a later start"),
        "{}",
        server.log()
    );
    let (status, health) = request("GET", &server.url("/healthz"), None, &[]);
    assert_eq!(status, 503, "{health}");
    assert!(
        health["failing"]
            .as_array()
            .unwrap()
            .contains(&json!("data_dir")),
        "{health}"
    );
    assert_records_match_vmrun(&server);

    // The stop goes through; the files cannot go, nor can the record be written: the VM is
    // shown stopped, with the write error, and vmrun agrees.
    let (status, err) = server.delete_vm(&id);
    assert_ne!(status, 204, "{err}");
    assert!(!sim_running(&server).contains(&id), "the stop went through");
    let (_, vm) = server.get_vm(&id);
    assert_eq!(vm["status"], "stopped", "{vm}\n{}", server.log());
    assert_eq!(vm["error"]["code"], "record-unwritable", "{vm}");
    assert_records_match_vmrun(&server);

    // Writable again: the next start clears the leftovers and the locks the read-only
    // stop could not remove, and the delete goes through.
    mount.remount("rw");
    server.kill();
    let server = Server::start(dir.path());
    assert!(!staging.exists() && !deleting.exists());
    assert_eq!(server.get_vm(&id).1["status"], "stopped");
    assert_records_match_vmrun(&server);
    let (status, _) = server.delete_vm(&id);
    assert_eq!(status, 204, "{}", server.log());
    assert_records_match_vmrun(&server);
    drop(server);
}

fn stray_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.starts_with(".creating-") {
            out.push(entry.path());
        }
        if entry.file_type().unwrap().is_dir() {
            stray_files(&entry.path(), out);
        }
    }
}

#[test]
fn a_full_disk_answers_disk_full_and_leaves_no_temp_file() {
    // Bound in this order so that they drop in reverse: server, mount, then its folder.
    let Some(OnTmpfs {
        dir,
        mount: _keep_mount,
        _files: _keep_files,
        server,
        id,
        body,
        checksum: _,
    }) = OnTmpfs::start("enospc", "8m")
    else {
        return;
    };
    // Fill the disk to the last byte.
    let filler = dir.path().join("data/filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    while std::io::Write::write_all(&mut file, &chunk[..1]).is_ok() {}
    drop(file);

    let (status, err) = server.create(&body);
    assert_eq!(
        (status, err["code"].as_str()),
        (507, Some("disk-full")),
        "{err}"
    );
    let (status, err) = request(
        "POST",
        &server.url(&format!("/vms/{id}/renew")),
        Some(&json!({"ttl": 600}).to_string()),
        &[],
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (507, Some("disk-full")),
        "{err}"
    );
    let mut strays = Vec::new();
    stray_files(&dir.path().join("data"), &mut strays);
    assert!(strays.is_empty(), "left behind: {strays:?}");
    assert_records_match_vmrun(&server);
    let _: Value = server.get_vm(&id).1;

    std::fs::remove_file(&filler).unwrap();
    let (status, renewed) = request(
        "POST",
        &server.url(&format!("/vms/{id}/renew")),
        Some(&json!({"ttl": 600}).to_string()),
        &[],
    );
    assert_eq!(status, 200, "{renewed}");
    let (status, _) = server.delete_vm(&id);
    assert_eq!(status, 204);
}

#[test]
fn the_size_of_a_gold_image_is_measured_once_at_publication() {
    let world = World::start("goldsize", ServerOptions::default());
    let id = world.create(&world.body());
    world.server.wait_ready(&id);
    let images = || {
        let (status, list) = request("GET", &world.server.url("/images"), None, &[]);
        assert_eq!(status, 200, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .find(|image| image["checksum"] == world.checksum.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{list}"))
    };
    let before = images();
    let size = before["size_bytes"].as_u64().unwrap();
    assert!(size > 0, "{before}");
    assert!(before["file_count"].as_u64().unwrap() >= 2, "{before}");
    let gold = world.server.data_dir.join("gold").join(&world.checksum);
    let usage: Value =
        serde_json::from_slice(&std::fs::read(gold.join("osx-builder-image.json")).unwrap())
            .unwrap();
    assert_eq!(usage["size_bytes"].as_u64(), Some(size), "{usage}");
    // A file added behind the server's back is not seen: GET /images walks nothing.
    std::fs::write(gold.join("extra.bin"), vec![1u8; 1 << 20]).unwrap();
    assert_eq!(images()["size_bytes"].as_u64(), Some(size));
    let (status, metrics) = request("GET", &world.server.url("/metrics"), None, &[]);
    assert_eq!(status, 200, "{metrics}");
}
