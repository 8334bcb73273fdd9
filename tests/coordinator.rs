//! What a coordinator of Go's buildlets needs, through the real binary: guestinfo written
//! into the clone's VMX before it starts and nowhere else, a long poll that waits for the
//! answer, and labels to find its VMs by, after a restart too.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::http::Delivery;
use common::{gold_tar_gz_padded, sha1_hex, CallbackReceiver, Server, TempDir};
use common::{http::call_str, options, World};
use serde_json::{json, Value};

/// A secret shaped like what the coordinator sends: a PEM key, with characters VMX quoting
/// must escape.
const KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nMIIEv9Zq\"quoted\"|piped|Xk41\n-----END PRIVATE KEY-----\n";
const NAME: &str = "host-darwin-amd64-13-s3cretname";

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> common::http::Answer {
    call_str("GET", &server.url(path), None, headers)
}

fn list(server: &Server, query: &str) -> Vec<String> {
    let answer = get(server, &format!("/vms{query}"), &[]);
    assert_eq!(answer.status, 200, "{query}: {}", answer.text());
    let mut ids: Vec<String> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Stops the world's server cleanly; its folder and file server stay for a restart.
fn stop(w: World) -> (TempDir, common::http::FileServer) {
    let World {
        dir, files, server, ..
    } = w;
    assert!(server.terminate().success());
    (dir, files)
}

#[test]
fn guestinfo_reaches_the_guest_and_nothing_else() {
    let w = World::start("coord-guestinfo", options(&[]));
    let callbacks = CallbackReceiver::start();
    let mut body = w.body();
    body["guestinfo"] = json!({"name": NAME, "key-host-darwin-amd64-13": KEY});
    body["labels"] = json!({"project": "go", "host-type": "host-darwin-amd64-13"});
    body["callback_url"] = json!(callbacks.url);
    let (status, created) = w.server.create(&body);
    assert_eq!(status, 202, "{created}");
    assert_eq!(
        created["guestinfo_keys"],
        json!(["key-host-darwin-amd64-13", "name"])
    );
    assert_eq!(created["labels"]["project"], "go");
    let id = created["id"].as_str().unwrap().to_string();
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["guestinfo_keys"], created["guestinfo_keys"]);
    assert_eq!(vm["labels"], created["labels"]);

    // In the VMX, quoted as VMware quotes, and mode 0600: it holds secrets.
    let vmx_path = w.server.data_dir.join(format!("vms/{id}/{id}.vmx"));
    let vmx = std::fs::read_to_string(&vmx_path).unwrap();
    assert!(
        vmx.contains(&format!("guestinfo.name = \"{NAME}\"\n")),
        "{vmx}"
    );
    assert!(
        vmx.contains("guestinfo.key-host-darwin-amd64-13 = \"-----BEGIN PRIVATE KEY-----|0AMIIEv9Zq|22quoted|22|7Cpiped|7CXk41|0A-----END PRIVATE KEY-----|0A\"\n"),
        "{vmx}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&vmx_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");

    // The guest sees them: the simulator takes guest variables from the VMX at power-on,
    // so this also shows the VMX was written before the start.
    let vmx_arg = vmx_path.to_str().unwrap();
    assert_eq!(
        w.server.sim(&["readVariable", vmx_arg, "guestVar", "name"]),
        format!("{NAME}\n")
    );
    assert_eq!(
        w.server.sim(&[
            "readVariable",
            vmx_arg,
            "guestVar",
            "key-host-darwin-amd64-13"
        ]),
        format!("{KEY}\n")
    );

    // Nowhere else: answers, list, callback, log, and every file of ours but the VMX.
    let bodies = callbacks.wait_for(1);
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["labels"]["project"], "go");
    assert_eq!(bodies[0]["guestinfo_keys"], created["guestinfo_keys"]);
    let progress = get(&w.server, &format!("/vms/{id}?wait=0&progress=true"), &[]);
    let answers = [
        created.to_string(),
        vm.to_string(),
        get(&w.server, "/vms", &[]).text(),
        progress.text(),
        bodies[0].to_string(),
    ];
    let check_absent = |server: &Server, what: &str| {
        for secret in [NAME, "MIIEv9Zq"] {
            for answer in &answers {
                assert!(!answer.contains(secret), "{what}: {answer}");
            }
            assert!(
                !server.log().contains(secret),
                "{what}: log:\n{}",
                server.log()
            );
            let holders: Vec<String> = common::files_containing(&server.data_dir, secret)
                .into_iter()
                .filter(|f| !f.ends_with(&format!("{id}.vmx")))
                .collect();
            assert!(holders.is_empty(), "{what}: {holders:?}");
        }
    };
    check_absent(&w.server, "running");

    // After a restart: keys and labels still shown, values still nowhere.
    let (dir, _files) = stop(w);
    let server = Server::start(dir.path());
    let (status, again) = server.get_vm(&id);
    assert_eq!(status, 200);
    assert_eq!(again["guestinfo_keys"], created["guestinfo_keys"]);
    assert_eq!(again["labels"], created["labels"]);
    assert!(!again.to_string().contains(NAME));
    check_absent(&server, "restarted");
}

#[test]
fn bad_guestinfo_and_labels_are_refused_naming_the_key() {
    let w = World::start("coord-invalid", options(&[]));
    let many: serde_json::Map<String, Value> =
        (0..65).map(|n| (format!("k{n:02}"), json!("v"))).collect();
    let big = "s3cret".repeat(700);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "guestinfo",
            json!("name=x"),
            "invalid-guestinfo",
            "object of strings",
        ),
        (
            "guestinfo",
            json!({"name": 7}),
            "invalid-guestinfo",
            "\"name\"",
        ),
        (
            "guestinfo",
            json!({"bad key": "s3cret"}),
            "invalid-guestinfo",
            "\"bad key\"",
        ),
        (
            "guestinfo",
            json!({"guestinfo/x": "s3cret"}),
            "invalid-guestinfo",
            "\"guestinfo/x\"",
        ),
        (
            "guestinfo",
            json!({"": "s3cret"}),
            "invalid-guestinfo",
            "\"\"",
        ),
        (
            "guestinfo",
            json!({"k".repeat(129): "s3cret"}),
            "invalid-guestinfo",
            "kkkk",
        ),
        (
            "guestinfo",
            Value::Object(many.clone()),
            "invalid-guestinfo",
            "\"k64\"",
        ),
        (
            "guestinfo",
            json!({"big": big}),
            "invalid-guestinfo",
            "\"big\"",
        ),
        (
            "guestinfo",
            json!({"nul": "s3cret\u{0}"}),
            "invalid-guestinfo",
            "\"nul\"",
        ),
        (
            "guestinfo",
            json!({"Name": "s3cret", "name": "s3cret"}),
            "invalid-guestinfo",
            "\"name\"",
        ),
        ("labels", json!([1]), "invalid-labels", "object of strings"),
        (
            "labels",
            json!({"team": true}),
            "invalid-labels",
            "\"team\"",
        ),
        ("labels", json!({"a=b": "x"}), "invalid-labels", "\"a=b\""),
        ("labels", Value::Object(many), "invalid-labels", "\"k64\""),
        (
            "labels",
            json!({"team": "x".repeat(4097)}),
            "invalid-labels",
            "\"team\"",
        ),
        (
            "labels",
            json!({"team": "a\nb"}),
            "invalid-labels",
            "\"team\"",
        ),
    ];
    for (field, value, code, needle) in cases {
        let mut body = w.body();
        body[field] = value;
        let (status, err) = w.server.create(&body);
        assert_eq!(status, 400, "{field}: {err}");
        assert_eq!(err["code"], code, "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle}: {message}");
        assert!(message.starts_with(field), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
    // The total (64 KiB) cannot be passed within the body limit (also 64 KiB): the unit
    // tests of `guestinfo::check` cover it.
    assert_eq!(w.vm_count(), 0);
    assert!(!w.server.log().contains("s3cret"), "{}", w.server.log());
}

/// A gold image of 3 MiB served 4 KiB every 5 ms: the download reports progress for about
/// four seconds.
fn slow_world(tag: &str, env: &[(&str, &str)]) -> World {
    World::start(tag, common::options_env(env, &[]))
}

fn slow_body(w: &World, path: &str) -> Value {
    let archive = gold_tar_gz_padded("box", 3 << 20);
    let checksum = sha1_hex(&archive);
    let url = w
        .files
        .add_with(path, archive, Delivery::Trickle(Duration::from_millis(5)));
    common::image_body(&url, &checksum)
}

#[test]
fn one_long_poll_answers_with_the_ip() {
    let w = slow_world("coord-one-poll", &[("VMRUN_SIM_TOOLS_DELAY_MS", "3000")]);
    let id = w.create(&slow_body(&w, "/slow.tar.gz"));
    let started = Instant::now();
    let answer = get(&w.server, &format!("/vms/{id}?wait=60"), &[]);
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let vm = answer.json();
    assert_eq!(vm["status"], "running", "{vm}\n{}", w.server.log());
    assert_ne!(vm["ip_address"], "", "{vm}");
    assert_eq!(vm["progress"]["phase"], "ready");
    // It waited through the download and the Tools delay, not for the whole minute.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(55), "{took:?}");
    assert!(
        w.server.log().contains(&format!("vm={id} has IP")),
        "{}",
        w.server.log()
    );
    // Its tag names the answer: a wait on it runs out with 304.
    let tag = answer.header("ETag").unwrap().to_string();
    let again = get(
        &w.server,
        &format!("/vms/{id}?wait=1"),
        &[("If-None-Match", &tag)],
    );
    assert_eq!(again.status, 304);
}

#[test]
fn progress_answers_come_at_most_once_a_second() {
    let w = slow_world("coord-progress", &[("VMRUN_SIM_TOOLS_DELAY_MS", "1000")]);
    let id = w.create(&slow_body(&w, "/slow.tar.gz"));
    let mut tag: Option<String> = None;
    let mut answers: Vec<(Duration, Value)> = Vec::new();
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        let headers: Vec<(&str, &str)> = tag
            .as_deref()
            .map(|t| ("If-None-Match", t))
            .into_iter()
            .collect();
        let answer = get(
            &w.server,
            &format!("/vms/{id}?wait=30&progress=true"),
            &headers,
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        tag = answer.header("ETag").map(str::to_string);
        let vm = answer.json();
        answers.push((asked.elapsed(), vm.clone()));
        if vm["ip_address"] != "" || vm["status"] == "failed" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{vm}");
    }
    let last = &answers.last().unwrap().1;
    assert_eq!(last["status"], "running", "{last}");
    let summary: Vec<String> = answers
        .iter()
        .map(|(took, vm)| {
            format!(
                "{took:?} {} {} {}",
                vm["progress"]["phase"], vm["progress"]["bytes_downloaded"], vm["status"]
            )
        })
        .collect();
    let downloading: Vec<&(Duration, Value)> = answers
        .iter()
        .filter(|(_, vm)| vm["progress"]["phase"] == "downloading")
        .collect();
    assert!(
        downloading.len() >= 2,
        "the slow download was seen in progress: {summary:#?}"
    );
    // Each answer that only moved the progress waited out the second; status, IP and
    // errors may come sooner, and there are only a few of those.
    let quick: Vec<_> = answers
        .iter()
        .filter(|(took, _)| *took < Duration::from_millis(990))
        .collect();
    for (took, vm) in &downloading[1..] {
        assert!(
            *took >= Duration::from_millis(990),
            "{took:?}: {}: {summary:#?}",
            vm["progress"]
        );
    }
    assert!(quick.len() <= 3, "{summary:#?}");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        (answers.len() as f64) <= seconds + 3.0,
        "{} answers in {seconds:.1} s: {summary:#?}",
        answers.len()
    );
    eprintln!("progress answers: {summary:#?}");
}

/// A VM folder as the original Go server left it: 20 hex digits, image in the annotation.
fn go_server_vm(data: &Path) -> String {
    let id = "c8a934d72293a7d31baf";
    let dir = data.join("vms").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let image = r#"{"url":"http://127.0.0.1:1/old.tar.gz","checksum":"5cf00d380e28d02f30efaceafef7c7c8bdedae33","checksum_type":"sha1"}"#;
    let vmx = format!(
        ".encoding = \"UTF-8\"\ndisplayName = \"{id}\"\nnumvcpus = \"2\"\nmemsize = \"1024\"\nguestOS = \"darwin14-64\"\nethernet0.present = \"TRUE\"\nethernet0.connectionType = \"nat\"\nannotation = \"{}\"\n",
        osx_builder::hypervisor::vmrun::vmx::base64_encode(image.as_bytes())
    );
    std::fs::write(dir.join(format!("{id}.vmx")), vmx).unwrap();
    id.to_string()
}

#[test]
fn labels_and_status_filter_the_list_after_a_restart_too() {
    let w = World::start("coord-filters", options(&[]));
    let create = |labels: Value| {
        let mut body = w.body();
        body["labels"] = labels;
        w.create(&body)
    };
    let go_a = create(json!({"project": "go", "pool": "darwin-13"}));
    let go_b = create(json!({"project": "go", "pool": "darwin 14"}));
    let other = create(json!({"project": "other"}));
    let plain = create(Value::Null);
    let mut bad = w.body();
    bad["image"]["checksum"] = json!("0000000000000000000000000000000000000000");
    bad["labels"] = json!({"project": "go", "pool": "broken"});
    let failed = w.create(&bad);
    for id in [&go_a, &go_b, &other, &plain] {
        w.server.wait_ready(id);
    }
    w.server.wait_failed(&failed);
    let sorted = |ids: &[&String]| {
        let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        ids.sort();
        ids
    };
    let check = |server: &Server, adopted: Option<&str>| {
        let mut everyone = vec![&go_a, &go_b, &other, &plain, &failed];
        let adopted_id = adopted.map(str::to_string);
        if let Some(id) = &adopted_id {
            everyone.push(id);
        }
        assert_eq!(list(server, ""), sorted(&everyone));
        assert_eq!(
            list(server, "?label=project=go"),
            sorted(&[&go_a, &go_b, &failed])
        );
        assert_eq!(
            list(server, "?label=project=go&label=pool=darwin%2014"),
            sorted(&[&go_b])
        );
        assert_eq!(
            list(server, "?label=project=go&label=pool=darwin+14"),
            sorted(&[&go_b])
        );
        assert_eq!(
            list(server, "?label=project=go&label=pool=nope"),
            Vec::<String>::new()
        );
        assert_eq!(
            list(server, "?label=pool"),
            sorted(&[&go_a, &go_b, &failed])
        );
        assert_eq!(list(server, "?status=failed"), sorted(&[&failed]));
        assert_eq!(
            list(server, "?status=running&label=project=go"),
            sorted(&[&go_a, &go_b])
        );
        assert_eq!(
            list(server, "?status=running&status=failed&label=project=go"),
            sorted(&[&go_a, &go_b, &failed])
        );
        assert_eq!(list(server, "?status=provisioning"), Vec::<String>::new());
        let stopped: Vec<&String> = adopted_id.iter().collect();
        assert_eq!(list(server, "?status=stopped"), sorted(&stopped));
        let bad = get(server, "/vms?status=ready", &[]);
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json()["code"], "invalid-query");
    };
    check(&w.server, None);

    let (dir, _files) = stop(w);
    let adopted = go_server_vm(&dir.path().join("data"));
    let server = Server::start(dir.path());
    check(&server, Some(&adopted));
    let (status, vm) = server.get_vm(&adopted);
    assert_eq!(status, 200, "{}", server.log());
    assert!(vm.get("labels").is_none(), "{vm}");
    assert!(vm.get("guestinfo_keys").is_none(), "{vm}");
    let (_, labelled) = server.get_vm(&go_a);
    assert_eq!(labelled["labels"]["pool"], "darwin-13");
}

#[test]
fn a_restart_before_the_clone_fails_the_vm_and_loses_its_guestinfo() {
    let dir = TempDir::new("coord-restart");
    let files = common::http::FileServer::start();
    let archive = gold_tar_gz_padded("box", 3 << 20);
    let checksum = sha1_hex(&archive);
    // Slow enough that the server is stopped mid-download.
    let url = files.add_with(
        "/slow.tar.gz",
        archive,
        Delivery::Trickle(Duration::from_millis(20)),
    );
    let server = Server::start(dir.path());
    let mut body = common::image_body(&url, &checksum);
    body["guestinfo"] = json!({"name": NAME});
    let (status, created) = server.create(&body);
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    server.wait_for(&id, "downloading", |vm| {
        vm["progress"]["phase"] == "downloading"
    });
    server.kill();
    let server = Server::start(dir.path());
    let vm = server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "interrupted", "{vm}");
    assert_eq!(vm["guestinfo_keys"], json!(["name"]));
    assert!(common::files_containing(&server.data_dir, NAME).is_empty());
    assert!(!server.log().contains(NAME));
}
