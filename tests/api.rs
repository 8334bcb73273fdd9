//! The seed's API end to end: the real binary, the vmrun simulator, images over loopback.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::http::{request, request_raw, FileServer};
use common::{gold_tar_gz, sha1_hex, CallbackReceiver, Server, ServerOptions, TempDir, World};
use serde_json::{json, Value};

fn create_body(url: &str, checksum: &str) -> Value {
    json!({
        "cpus": 2,
        "memory": 1000,
        "network_type": "nat",
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
        "headless": true
    })
}

fn options(env: &[(&str, &str)], args: &[&str]) -> ServerOptions {
    common::options_env(env, args)
}

#[test]
fn seed_flow_create_poll_callback_delete() {
    let w = World::start(
        "seed",
        options(
            &[
                ("VMRUN_SIM_TOOLS_DELAY_MS", "300"),
                ("VMRUN_SIM_IP_DELAY_MS", "600"),
            ],
            &[],
        ),
    );
    let receiver = CallbackReceiver::start();
    let mut body = create_body(&w.url, &w.checksum);
    body["callback_url"] = json!(receiver.url);
    let (status, vm) = w.server.create(&body);
    assert_eq!(status, 202, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(vm["status"], "");
    assert_eq!(vm["ip_address"], "");
    assert_eq!(vm["cpus"], 2);
    assert_eq!(vm["memory"], 1000);
    assert_eq!(vm["headless"], true);
    assert_eq!(vm["image"]["checksum"], w.checksum.as_str());

    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["progress"]["phase"], "ready");
    assert_eq!(vm["guest_os"], "darwin21-64");
    let ip = vm["ip_address"].as_str().unwrap().to_string();

    let callbacks = receiver.wait_for(1);
    assert_eq!(callbacks.len(), 1, "one callback");
    assert_eq!(callbacks[0]["id"], id.as_str());
    assert_eq!(callbacks[0]["ip_address"], ip.as_str());
    assert_eq!(callbacks[0]["status"], "running");

    // The clone's VMX carries the request, and every other line of the gold VMX.
    let vm_dir = w.server.data_dir.join("vms").join(&id);
    let vmx = std::fs::read_to_string(vm_dir.join(format!("{id}.vmx"))).unwrap();
    for line in [
        "numvcpus = \"2\"".to_string(),
        "memsize = \"1000\"".to_string(),
        format!("displayName = \"{id}\""),
        "ethernet0.connectionType = \"nat\"".to_string(),
        "guestOS = \"darwin21-64\"".to_string(),
        "ethernet0.virtualDev = \"e1000e\"".to_string(),
    ] {
        assert!(vmx.contains(&line), "{line} missing from\n{vmx}");
    }
    assert!(!vmx.contains("ethernet1"), "second NIC kept:\n{vmx}");
    assert!(!vmx.contains("00:0c:29:aa:bb:cc"), "gold MAC kept:\n{vmx}");
    assert!(vmx.to_lowercase().contains("msg.autoanswer = \"true\""));
    assert!(vmx.contains("uuid.action = \"create\""));

    // Every clone named the base snapshot; started headless.
    let calls = w.server.sim_calls();
    let clones: Vec<&Value> = calls
        .iter()
        .filter(|c| c["args"].to_string().contains("\"clone\""))
        .collect();
    assert_eq!(clones.len(), 1);
    assert!(
        clones[0]["args"]
            .to_string()
            .contains("-snapshot=osx-builder-base"),
        "{}",
        clones[0]
    );
    let starts: Vec<&Value> = calls
        .iter()
        .filter(|c| c["args"].to_string().contains("\"start\""))
        .collect();
    assert!(starts[0]["args"].to_string().contains("nogui"));

    let (status, listed) = request("GET", &w.server.url("/vms"), None, &[]);
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let (status, _) = w.server.delete_vm(&id);
    assert_eq!(status, 204);
    let (status, err) = w.server.get_vm(&id);
    assert_eq!(status, 404);
    assert_eq!(err["code"], "vm-not-found");
    assert!(!vm_dir.exists(), "VM folder left behind");
    assert!(!w.server.sim(&["list"]).contains(&id), "VM still running");
    let (status, _) = w.server.delete_vm(&id);
    assert_eq!(status, 404);
}

#[test]
fn six_concurrent_creates_share_one_download_and_one_snapshot() {
    let w = World::start("six", options(&[("VMRUN_SIM_CLONE_MS", "150")], &[]));
    let ids: Vec<String> = (0..6)
        .map(|_| {
            let base = w.server.base.clone();
            let body = create_body(&w.url, &w.checksum);
            thread::spawn(move || {
                let (status, vm) =
                    request("POST", &format!("{base}/vms"), Some(&body.to_string()), &[]);
                assert_eq!(status, 202, "{vm}");
                vm["id"].as_str().unwrap().to_string()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for id in &ids {
        w.server.wait_ready(id);
    }
    assert_eq!(w.files.hits("/gold.tar.gz"), 1, "one download");
    let gold_vmx = w
        .server
        .data_dir
        .join("gold")
        .join(&w.checksum)
        .join("box/gold.vmx");
    let snapshots = w.server.sim(&["listSnapshots", gold_vmx.to_str().unwrap()]);
    assert_eq!(
        snapshots.trim(),
        "Total snapshots: 1\nosx-builder-base",
        "{snapshots}"
    );
    // Clones of the one gold VM never overlapped in time.
    let mut clones: Vec<(u64, u64)> = w
        .server
        .sim_calls()
        .iter()
        .filter(|c| c["args"].to_string().contains("\"clone\""))
        .map(|c| {
            (
                c["t_start_ms"].as_u64().unwrap(),
                c["t_end_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(clones.len(), 6);
    clones.sort();
    for pair in clones.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "clones overlapped: {pair:?}");
    }
    assert!(!w.server.log().contains("already in use"));
    let running = w.server.sim(&["list"]);
    assert!(running.starts_with("Total running VMs: 6"), "{running}");
}

#[test]
fn invalid_requests_get_the_documented_status_and_code() {
    let w = World::start("valid", ServerOptions::default());
    let good = create_body(&w.url, &w.checksum);
    let with = |key: &str, value: Value| {
        let mut b = good.clone();
        b[key] = value;
        b.to_string()
    };
    let with_image = |key: &str, value: Value| {
        let mut b = good.clone();
        b["image"][key] = value;
        b.to_string()
    };
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("{\"image\": ".into(), 415, "invalid-json", "line 1 column"),
        ("[]".into(), 400, "invalid-body", "JSON object"),
        ("{}".into(), 400, "invalid-image", "image is required"),
        (
            with("network_type", json!("wifi")),
            400,
            "invalid-network-type",
            "bridged, nat, hostonly",
        ),
        (
            with_image("checksum_type", json!("crc32")),
            400,
            "invalid-checksum-type",
            "md5, sha1, sha256, sha512",
        ),
        (
            with_image("checksum", json!("abc")),
            400,
            "invalid-checksum",
            "40 hex digits",
        ),
        (
            with_image("url", json!("ftp://127.0.0.1/x")),
            400,
            "invalid-image-url",
            "http://, https:// or file://",
        ),
        (
            with("cpus", json!(-2)),
            400,
            "invalid-cpus",
            "positive whole number",
        ),
        (with("cpus", json!(4096)), 400, "invalid-cpus", "1 to 64"),
        (
            with("memory", json!(-1)),
            400,
            "invalid-memory",
            "positive whole number",
        ),
        (with("memory", json!(1e12)), 400, "invalid-memory", "memory"),
        (
            with("callback_url", json!("gopher://x")),
            400,
            "invalid-callback-url",
            "http:// or https://",
        ),
        (
            with("headless", json!("yes")),
            400,
            "invalid-headless",
            "true or false",
        ),
    ];
    for (body, status, code, needle) in &cases {
        let (got, err) = request("POST", &w.server.url("/vms"), Some(body), &[]);
        assert_eq!(got, *status, "{body}: {err}");
        assert_eq!(err["code"], *code, "{body}: {err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    // Unsupported media type, body too large, unknown paths and methods.
    let (status, err) = request(
        "POST",
        &w.server.url("/vms"),
        Some("<xml/>"),
        &[("Content-Type", "application/xml")],
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (415, Some("unsupported-media-type"))
    );
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let (status, err) = request("POST", &w.server.url("/vms"), Some(&huge), &[]);
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("body-too-large"))
    );
    let (status, err) = request("GET", &w.server.url("/nope"), None, &[]);
    assert_eq!((status, err["code"].as_str()), (404, Some("not-found")));
    let (status, err) = request("PUT", &w.server.url("/vms"), None, &[]);
    assert_eq!(
        (status, err["code"].as_str()),
        (405, Some("method-not-allowed"))
    );
    for id in [
        "..",
        "..%2F..%2Fetc",
        "c8a934d72293a7d31baf",
        &"f".repeat(5000),
    ] {
        let (status, err) = w.server.get_vm(id);
        assert_eq!(
            (status, err["code"].as_str()),
            (404, Some("vm-not-found")),
            "{id}"
        );
    }
    // Defaults and the applied memory are shown; curl -d's form content type works.
    let body = json!({"image": good["image"].clone(), "memory": 513}).to_string();
    let (status, vm) = request(
        "POST",
        &w.server.url("/vms"),
        Some(&body),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(status, 202, "{vm}");
    assert_eq!(
        (vm["cpus"].as_u64(), vm["memory"].as_u64()),
        (Some(2), Some(516))
    );
    assert_eq!(vm["network_type"], "nat");
    let (status, _) = request_raw("GET", &w.server.url("/vms"), None, &[]);
    assert_eq!(status, 200);
}

fn create_and_fail(w: &World) -> Value {
    let (status, vm) = w.server.create(&create_body(&w.url, &w.checksum));
    assert_eq!(status, 202, "{vm}");
    w.server.wait_failed(vm["id"].as_str().unwrap())
}

#[test]
fn vmrun_failures_fail_the_vm_with_vmruns_message() {
    // A failing IP query is retried until --ip-wait-timeout (issue 17), then fails the VM.
    let w = World::start("fail", options(&[], &["--ip-wait-timeout", "3"]));
    for (fault, code, needle) in [
        (
            "clone fail Insufficient permissions in the host operating system",
            "vmrun-failed",
            "Insufficient permissions",
        ),
        (
            "start fail Cannot open VM: x, Cannot read the virtual machine configuration file",
            "vm-open-error",
            "configuration file",
        ),
        (
            "start fail-exit0 The operation was canceled",
            "vmrun-failed",
            "The operation was canceled",
        ),
        (
            "getGuestIPAddress fail Unknown error",
            "vmrun-failed",
            "Unknown error",
        ),
    ] {
        w.server.set_faults(fault);
        let vm = create_and_fail(&w);
        assert_eq!(vm["error"]["code"], code, "{fault}: {vm}");
        let message = vm["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{fault}: {message}");
        let (status, _) = request("GET", &w.server.url("/vms"), None, &[]);
        assert_eq!(status, 200);
    }
}

#[test]
fn hung_vmrun_is_killed_at_its_timeout() {
    let w = World::start(
        "hang",
        options(
            &[],
            &[
                "--vmrun-timeout-clone",
                "1",
                "--vmrun-timeout-start",
                "1",
                "--vmrun-timeout-ip",
                "1",
                // A hung IP query is retried until this deadline (issue 17), then fails.
                "--ip-wait-timeout",
                "3",
            ],
        ),
    );
    for fault in ["clone hang", "start hang", "getGuestIPAddress hang"] {
        w.server.set_faults(fault);
        let started = Instant::now();
        let vm = create_and_fail(&w);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{fault} took {:?}",
            started.elapsed()
        );
        assert_eq!(vm["error"]["code"], "vmrun-timeout", "{fault}: {vm}");
        let (status, _) = request("GET", &w.server.url("/vms"), None, &[]);
        assert_eq!(status, 200);
    }
}

#[test]
fn a_vm_being_provisioned_can_be_deleted() {
    let w = World::start(
        "cancel",
        options(&[("VMRUN_SIM_TOOLS_DELAY_MS", "600000")], &[]),
    );
    let (_, vm) = w.server.create(&create_body(&w.url, &w.checksum));
    let id = vm["id"].as_str().unwrap().to_string();
    w.server.wait_for(&id, "waiting for its IP", |vm| {
        vm["progress"]["phase"] == "waiting-for-ip"
    });
    let started = Instant::now();
    let (status, _) = w.server.delete_vm(&id);
    assert_eq!(status, 204);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!w.server.data_dir.join("vms").join(&id).exists());
    assert!(w.server.sim(&["list"]).starts_with("Total running VMs: 0"));
}

#[test]
fn delete_of_a_locked_vm_is_a_409() {
    let w = World::start("locked", ServerOptions::default());
    let (_, vm) = w.server.create(&create_body(&w.url, &w.checksum));
    let id = vm["id"].as_str().unwrap().to_string();
    w.server.wait_ready(&id);
    w.server
        .set_faults("deleteVM fail The file is already in use");
    let (status, err) = w.server.delete_vm(&id);
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("vm-locked")),
        "{err}"
    );
    w.server.set_faults("");
    let (status, _) = w.server.delete_vm(&id);
    assert_eq!(status, 204);
}

#[test]
fn state_survives_a_restart() {
    let dir = TempDir::new("restart");
    let files = FileServer::start();
    let archive = gold_tar_gz("");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let server = Server::start(dir.path());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, vm) = server.create(&create_body(&url, &checksum));
        ids.push(vm["id"].as_str().unwrap().to_string());
    }
    let before: Vec<Value> = ids.iter().map(|id| server.wait_ready(id)).collect();
    // One VM is powered off behind the server's back while it is down.
    server.kill();
    let stopped_vmx = dir
        .path()
        .join("data/vms")
        .join(&ids[2])
        .join(format!("{}.vmx", ids[2]));
    let out = std::process::Command::new(common::SIM_BIN)
        .args(["stop", stopped_vmx.to_str().unwrap(), "hard"])
        .env("VMRUN_SIM_STATE", dir.path().join("sim"))
        .output()
        .unwrap();
    assert!(out.status.success());

    let server = Server::start(dir.path());
    for (n, id) in ids.iter().enumerate() {
        let (status, vm) = server.get_vm(id);
        assert_eq!(status, 200);
        assert_eq!(vm["ip_address"], before[n]["ip_address"]);
        let want = if n == 2 { "stopped" } else { "running" };
        assert_eq!(vm["status"], want, "{vm}");
    }
    assert_eq!(
        files.hits("/gold.tar.gz"),
        1,
        "gold image reused after restart"
    );
    let (_, vm) = server.create(&create_body(&url, &checksum));
    server.wait_ready(vm["id"].as_str().unwrap());
    assert_eq!(files.hits("/gold.tar.gz"), 1);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}

#[test]
fn missing_vmrun_is_reported_at_start_and_on_create() {
    let dir = TempDir::new("novmrun");
    let server = Server::start_with(
        dir.path(),
        options(&[("VMWARE_VMRUN_PATH", "/nonexistent/vmrun")], &[]),
    );
    assert!(
        server.log().contains("/nonexistent/vmrun"),
        "{}",
        server.log()
    );
    let (status, err) = server.create(&create_body("http://127.0.0.1:9/x.tar.gz", &"a".repeat(40)));
    assert_eq!(
        (status, err["code"].as_str()),
        (500, Some("vmrun-not-found")),
        "{err}"
    );
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("VMWARE_VMRUN_PATH"));
}

#[test]
fn callbacks_are_retried_after_a_5xx_and_sent_on_failure_with_the_id() {
    // One provisioning thread: a callback that held it would hold every VM behind it.
    let w = World::start("callback", options(&[], &["--provision-threads", "1"]));
    let receiver = CallbackReceiver::start_failing(2);
    let mut body = create_body(&w.url, &w.checksum);
    body["callback_url"] = json!(receiver.url);
    let (_, vm) = w.server.create(&body);
    let id = vm["id"].as_str().unwrap().to_string();
    w.server.wait_ready(&id);
    // Backoff is 1 s then 2 s: the third attempt lands after about 3 s.
    let callbacks = receiver.wait_for(1);
    assert_eq!(callbacks.len(), 1, "{}", w.server.log());
    assert_eq!(
        receiver.attempts.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert_eq!(
        callbacks[0]["ip_address"],
        w.server.get_vm(&id).1["ip_address"]
    );

    w.server.set_faults("start fail The operation was canceled");
    let receiver = CallbackReceiver::start();
    body["callback_url"] = json!(receiver.url);
    let (_, vm) = w.server.create(&body);
    let id = vm["id"].as_str().unwrap().to_string();
    let callbacks = receiver.wait_for(1);
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0]["id"], id.as_str());
    assert_eq!(callbacks[0]["status"], "failed");
    assert_eq!(callbacks[0]["error"]["code"], "vmrun-failed");

    // A receiver that takes the connection and never answers (10 s callback timeout, 3
    // retries) never holds the provisioning worker.
    w.server.set_faults("");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    body["callback_url"] = json!(format!("http://{}/cb", silent.local_addr().unwrap()));
    let started = Instant::now();
    let ids: Vec<String> = (0..3)
        .map(|_| w.server.create(&body).1["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        w.server.wait_ready(id);
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn help_version_and_bad_settings() {
    let run = |args: &[&str]| {
        std::process::Command::new(common::SERVER_BIN)
            .args(args)
            .env_remove("PORT")
            .output()
            .unwrap()
    };
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--port",
        "PORT",
        "12345",
        "VMWARE_VMRUN_PATH",
        "--data-dir",
        "--vmrun-timeout-clone",
        "--provision-threads",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    let version = run(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("osx-builder {}", env!("CARGO_PKG_VERSION"))
    );
    let bad = run(&["--port", "eighty"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = common::log_lines::stderr_text(&bad.stderr, common::log_lines::json_run());
    assert!(stderr.contains("--port / PORT"), "{stderr}");
}
