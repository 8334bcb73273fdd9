//! Operating a host through the real binary: `/healthz`, `/metrics` (checked with
//! `promtool` when it is installed), the bearer token, signed callbacks and the log lines.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http::call_str, options, CallbackReceiver, World};
use common::{Server, ServerOptions, TempDir};
use osx_builder::callback::signing;
use serde_json::{json, Value};

/// The value of the sample whose line starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn healthz_is_ok_with_vmrun_and_names_vmrun_when_it_is_missing() {
    let w = World::start("ops-health", options(&[]));
    let health = call_str("GET", &w.server.url("/healthz"), None, &[]);
    assert_eq!(health.status, 200, "{}", health.text());
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["failing"], json!([]));
    for check in ["vmrun", "data_dir", "disk"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    assert!(body["checks"]["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(body["draining"], false);
    let head = call_str("HEAD", &w.server.url("/healthz"), None, &[]);
    assert_eq!(head.status, 200);

    let dir = TempDir::new("ops-health-novmrun");
    let broken = Server::start_with(
        dir.path(),
        ServerOptions {
            env: Vec::new(),
            args: vec!["--vmrun-path".into(), "/nonexistent/vmrun".into()],
        },
    );
    let health = call_str("GET", &broken.url("/healthz"), None, &[]);
    assert_eq!(health.status, 503, "{}", health.text());
    let body = health.json();
    assert_eq!(body["status"], "failing");
    assert_eq!(body["code"], "unhealthy");
    assert_eq!(body["failing"], json!(["vmrun"]), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/vmrun"),
        "{body}"
    );
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    let w = World::start("ops-metrics", options(&["--max-vms", "3"]));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    // A failing VM too: its error code is an outcome.
    let mut bad = w.body();
    bad["image"]["url"] = json!(w.files.base.clone() + "/missing.tar.gz");
    bad["image"]["checksum"] = json!(common::sha1_hex(b"no such image"));
    let failed = w.create(&bad);
    w.server.wait_failed(&failed);
    let _ = call_str("GET", &w.server.url("/nope"), None, &[]);
    // An outcome is counted just after the VM's record shows it: wait rather than race.
    common::eventually("both outcomes counted", || {
        let text = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
        (text.matches("osx_builder_provisions_total{").count() == 2).then_some(())
    });

    let answer = call_str("GET", &w.server.url("/metrics"), None, &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = answer.text();
    let expect = |prefix: &str, check: &dyn Fn(f64) -> bool| {
        let value = sample(&text, prefix).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        assert!(check(value), "{prefix} = {value}\n{text}");
    };
    expect(r#"osx_builder_provisions_total{outcome="ok"}"#, &|v| {
        v == 1.0
    });
    let failed_vm = w.server.get_vm(&failed).1;
    let code = failed_vm["error"]["code"].as_str().unwrap().to_string();
    expect(
        &format!(r#"osx_builder_provisions_total{{outcome="{code}"}}"#),
        &|v| v == 1.0,
    );
    expect(r#"osx_builder_vms{status="running"}"#, &|v| v == 1.0);
    expect(r#"osx_builder_vms{status="failed"}"#, &|v| v == 1.0);
    expect("osx_builder_capacity_used", &|v| v == 1.0);
    expect("osx_builder_capacity_limit", &|v| v == 3.0);
    expect("osx_builder_image_cache_bytes", &|v| v > 0.0);
    expect("osx_builder_draining", &|v| v == 0.0);
    expect(
        r#"osx_builder_vmrun_calls_total{command="clone",outcome="ok"}"#,
        &|v| v == 1.0,
    );
    expect(
        r#"osx_builder_vmrun_calls_total{command="start",outcome="ok"}"#,
        &|v| v == 1.0,
    );
    expect("osx_builder_clone_seconds_count", &|v| v == 1.0);
    expect("osx_builder_boot_to_ip_seconds_count", &|v| v == 1.0);
    expect("osx_builder_image_download_seconds_count", &|v| v == 1.0);
    expect(
        r#"osx_builder_http_requests_total{method="POST",status="202"}"#,
        &|v| v == 2.0,
    );
    expect(
        r#"osx_builder_http_requests_total{method="GET",status="404"}"#,
        &|v| v >= 1.0,
    );

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => eprintln!(
            "note: promtool is not installed; the format is checked by the parser tests in src/metrics.rs"
        ),
    }
}

#[test]
fn a_vm_without_an_ip_in_time_is_its_own_provisioning_outcome() {
    let w = World::start(
        "ops-iptimeout",
        ServerOptions {
            env: vec![("VMRUN_SIM_IP_DELAY_MS".into(), "600000".into())],
            args: vec!["--ip-wait-timeout".into(), "0.5".into()],
        },
    );
    let id = w.create(&w.body());
    w.server.wait_for(&id, "ip-timeout", |vm| {
        vm["progress"]["phase"] == "ip-timeout"
    });
    // Counted just after the phase is recorded: wait for it rather than race it.
    let text = common::eventually("the ip-timeout outcome", || {
        let text = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
        sample(
            &text,
            r#"osx_builder_provisions_total{outcome="ip-timeout"}"#,
        )
        .is_some()
        .then_some(text)
    });
    assert_eq!(
        sample(
            &text,
            r#"osx_builder_provisions_total{outcome="ip-timeout"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"osx_builder_provisions_total{outcome="ok"}"#),
        None
    );
    assert_eq!(
        sample(&text, "osx_builder_boot_to_ip_seconds_count"),
        Some(0.0)
    );
}

#[test]
fn with_a_token_every_endpoint_but_healthz_wants_it() {
    let dir = TempDir::new("ops-token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-for-tests\n").unwrap();
    let w = World::start(
        "ops-token",
        options(&["--token-file", token_file.to_str().unwrap()]),
    );
    let good = [("Authorization", "Bearer s3cret-token-for-tests")];
    for (method, path) in [
        ("GET", "/vms"),
        ("POST", "/vms"),
        ("GET", "/vms/282ee68a-2e4d-4bd7-9c0e-7f37e12fc489"),
        ("GET", "/images"),
        ("GET", "/metrics"),
        ("POST", "/drain"),
        ("GET", "/no-such-endpoint"),
    ] {
        for headers in [
            vec![],
            vec![("Authorization", "Bearer wrong")],
            vec![("Authorization", "Basic czNjcmV0")],
        ] {
            let answer = call_str(method, &w.server.url(path), Some("{}"), &headers);
            assert_eq!(answer.status, 401, "{method} {path} {headers:?}");
            assert_eq!(answer.json()["code"], "unauthorized");
            assert_eq!(
                answer.header("WWW-Authenticate"),
                Some("Bearer realm=\"osx-builder\"")
            );
        }
    }
    assert_eq!(w.vm_count(), 0, "and the count itself needs the token");
    let draining = call_str("GET", &w.server.url("/drain"), None, &good);
    assert_eq!(
        draining.json()["draining"],
        false,
        "the refused POST /drain did nothing"
    );
    assert_eq!(
        call_str("GET", &w.server.url("/healthz"), None, &[]).status,
        200
    );

    let created = call_str(
        "POST",
        &w.server.url("/vms"),
        Some(&w.body().to_string()),
        &good,
    );
    assert_eq!(created.status, 202, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let listed = call_str("GET", &w.server.url("/vms"), None, &good);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().as_array().unwrap().len(), 1);
    let fetched = call_str("GET", &w.server.url(&format!("/vms/{id}")), None, &good);
    assert_eq!(fetched.status, 200);
    assert!(!w.server.log().contains("s3cret-token-for-tests"));
}

#[test]
fn a_token_setting_that_cannot_work_stops_the_server() {
    let dir = TempDir::new("ops-token-bad");
    let out = Command::new(common::SERVER_BIN)
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--token-file"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = common::log_lines::stderr_text(&out.stderr, common::log_lines::json_run());
    assert!(stderr.contains("cannot read the token file"), "{stderr}");
    let out = Command::new(common::SERVER_BIN)
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--callback-secret", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = common::log_lines::stderr_text(&out.stderr, common::log_lines::json_run());
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
}

#[test]
fn callbacks_are_signed_and_verify_with_the_shared_secret() {
    let secret = "a-callback-secret-of-32-characters";
    let w = World::start("ops-signed", options(&["--callback-secret", secret]));
    let receiver = CallbackReceiver::start();
    let mut body = w.body();
    body["callback_url"] = json!(receiver.url);
    let id = w.create(&body);
    let received = receiver.wait_for_raw(1);
    let callback = &received[0];
    let vm: Value = serde_json::from_slice(&callback.body).unwrap();
    assert_eq!(vm["id"], id.as_str());

    let timestamp = callback.header(signing::TIMESTAMP_HEADER);
    let signature = callback.header(signing::SIGNATURE_HEADER);
    assert!(signature.starts_with("sha256="), "{:?}", callback.headers);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tolerance = Duration::from_secs(300);
    signing::verify(
        secret.as_bytes(),
        timestamp,
        signature,
        &callback.body,
        now,
        tolerance,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A forgery fails: another secret, or a changed body.
    assert!(signing::verify(
        b"another secret!!",
        timestamp,
        signature,
        &callback.body,
        now,
        tolerance
    )
    .is_err());
    let mut changed = callback.body.clone();
    changed.push(b' ');
    assert_eq!(
        signing::verify(
            secret.as_bytes(),
            timestamp,
            signature,
            &changed,
            now,
            tolerance
        ),
        Err(signing::SignatureError::Mismatch)
    );

    // The README's shell recipe, where openssl is installed.
    if Command::new("openssl").arg("version").output().is_ok() {
        let dir = TempDir::new("ops-signed-sh");
        std::fs::write(dir.path().join("body.json"), &callback.body).unwrap();
        let recipe = r#"case "$TS" in ''|*[!0-9]*) echo "bad timestamp" >&2; exit 1;; esac
expected="sha256=$({ printf '%s.' "$TS"; cat body.json; } | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)"
age=$(( $(date +%s) - TS ))
if [ "$expected" = "$SIG" ] && [ "${age#-}" -le 300 ]; then echo verified; else echo "forged or stale" >&2; exit 1; fi"#;
        let out = Command::new("sh")
            .arg("-c")
            .arg(recipe)
            .current_dir(dir.path())
            .env("SECRET", secret)
            .env("TS", timestamp)
            .env("SIG", signature)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "verified",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn log_lines_name_the_vm() {
    let w = World::start("ops-log", options(&[]));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    assert_eq!(w.server.delete_vm(&id).0, 204);
    // The log is read from stderr by a thread of its own: the last line can come after the 204.
    w.server.wait_log(&format!("vm={id} deleted"));
    let log = w.server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    for event in [
        "created",
        "vmrun clone",
        "vmrun start",
        "has IP",
        "provisioned in",
        "vmrun deleteVM",
        "deleted",
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("vm={id} {event}")))
            .unwrap_or_else(|| panic!("no `vm={id} {event}` line in\n{log}"));
        // Time (RFC 3339, UTC), level, then the event.
        let mut parts = line.split_whitespace();
        let time = parts.next().unwrap();
        assert!(
            osx_builder::sys::time::parse_rfc3339_ms(time).is_some(),
            "{line}"
        );
        assert!(
            ["DEBUG", "INFO", "WARN", "ERROR"].contains(&parts.next().unwrap()),
            "{line}"
        );
    }
}
