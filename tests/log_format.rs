//! `--log-format json`: every line the server writes in a run that creates, fails, polls,
//! refuses and deletes VMs is one JSON object with `ts`, `level` and `msg`, and the events
//! that have them carry `vm`, `image`, `command`, `code` and `duration_ms`.
//!
//! `--log-level`: at `info` an idle host writes nothing on its own, and the start says which
//! settings differ from their defaults, secrets hidden.

mod common;

use std::time::Instant;

use common::http;
use common::{eventually, options, options_env, ServerOptions, World};
use serde_json::Value;

#[test]
fn every_line_of_a_json_run_parses_with_its_fields() {
    let options = ServerOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..ServerOptions::default()
    };
    let w = World::start("log-json", options);
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let mut bad = w.body();
    bad["image"]["checksum"] = Value::from("0".repeat(40));
    let failed = w.create(&bad);
    w.server.wait_failed(&failed);
    let (status, _) = http::request("POST", &w.server.url("/vms"), Some("{"), &[]);
    assert_eq!(status, 415);
    assert_eq!(w.server.delete_vm(&id).0, 204);
    assert!(w.server.wait_log(&format!("vm={id} deleted")));
    let log = w.server.raw_log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() > 10, "{log}");
    for line in &lines {
        let ts = line["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(ts.ends_with('Z') && ts.len() == 24, "{line}");
        assert!(
            matches!(
                line["level"].as_str(),
                Some("debug" | "info" | "warn" | "error")
            ),
            "{line}"
        );
        assert!(
            line["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{line}"
        );
        assert!(!line["msg"].as_str().unwrap().starts_with("vm="), "{line}");
        for key in ["vm", "image", "command", "code"] {
            assert!(line.get(key).is_none_or(Value::is_string), "{line}");
        }
        assert!(line.get("duration_ms").is_none_or(Value::is_u64), "{line}");
    }
    let find = |what: &str, test: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|l| test(l))
            .unwrap_or_else(|| panic!("no line with {what}:\n{log}"))
            .clone()
    };
    // A vmrun call on our VM: its id, the command and how long it took.
    let clone = find("a finished clone", &|l| {
        l["command"] == "clone" && l.get("duration_ms").is_some()
    });
    assert_eq!(clone["vm"], id.as_str(), "{clone}");
    // The failed VM: its id and the code.
    let failure = find("the failure", &|l| {
        l["vm"] == failed.as_str() && l["level"] == "warn" && l.get("code").is_some()
    });
    assert_eq!(failure["code"], "checksum-mismatch", "{failure}");
    // The image download: its checksum and duration.
    let download = find("a finished download", &|l| {
        l["image"] == w.checksum.as_str() && l.get("duration_ms").is_some()
    });
    assert_eq!(download["level"], "info", "{download}");
    // Lines about a VM that give no fields at the call site still carry it as a field.
    find("the delete", &|l| {
        l["vm"] == id.as_str() && l["msg"] == "deleted"
    });
}

/// The harness's reading of JSON lines, which a JSON test run relies on
/// (`OSX_BUILDER_LOG_FORMAT=json cargo test --release --test '*'`): a good line turns into the
/// server's text line, and each way of breaking the format is caught.
#[test]
fn the_harness_turns_json_lines_into_text_lines_and_catches_bad_ones() {
    use common::log_lines::json_to_text;
    let ts = "2026-11-24T17:00:00.123Z";
    let line = format!(
        r#"{{"ts":"{ts}","level":"warn","msg":"failed: x","vm":"abc","code":"c","duration_ms":3}}"#
    );
    assert_eq!(
        json_to_text(&line).unwrap(),
        format!("{ts} WARN  vm=abc failed: x")
    );
    let plain = format!(r#"{{"ts":"{ts}","level":"info","msg":"listening on http://x"}}"#);
    assert_eq!(
        json_to_text(&plain).unwrap(),
        format!("{ts} INFO  listening on http://x")
    );
    for bad in [
        format!("{ts} INFO  text"),
        format!(r#"{{"ts":"{ts}","level":"trace","msg":"m"}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":"vm=abc m"}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":"m","extra":1}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":"m","duration_ms":"3"}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":""}}"#),
        r#"{"ts":"yesterday","level":"info","msg":"m"}"#.to_string(),
    ] {
        assert!(json_to_text(&bad).is_err(), "{bad}");
    }
}

/// A host with a warm pool of 2 booted, idle VMs, at `--log-level info`: once the pool is
/// ready, nothing is written while many `vmrun list` calls (every 0.1 s here instead of 3 s),
/// reconciles (every 0.5 s instead of 60 s) and the pool keeper's IP checks of both idle VMs
/// (every 10 s) run. The start-up line names the settings given, the secret only as `(set)`.
#[test]
fn an_idle_host_with_a_warm_pool_writes_nothing_at_info() {
    let secret = "a-callback-secret-nobody-may-read";
    let w = World::start(
        "log-idle",
        options(&[
            "--log-level",
            "info",
            "--list-interval",
            "0.1",
            "--reconcile-interval",
            "0.5",
            "--callback-secret",
            secret,
        ]),
    );
    let mut spec = w.body();
    spec["size"] = Value::from(2);
    let (status, pool) = http::request(
        "PUT",
        &w.server.url("/pools/demo"),
        Some(&spec.to_string()),
        &[],
    );
    assert_eq!(status, 201, "{pool}");
    eventually("the pool's 2 VMs ready", || {
        let (_, pool) = http::request("GET", &w.server.url("/pools/demo"), None, &[]);
        (pool["ready"] == 2).then_some(())
    });
    // A VM's last line of its provisioning may follow the IP the pool counts.
    eventually("both VMs' provisioning logged", || {
        (w.server.log().matches(" provisioned in ").count() == 2).then_some(())
    });
    let started = Instant::now();
    let before = w.server.log();
    let (lists, ip_checks) = (
        w.server.sim_calls_of("list"),
        w.server.sim_calls_of("getGuestIPAddress"),
    );
    eventually("100 lists and an IP check of each idle VM", || {
        (w.server.sim_calls_of("list") >= lists + 100
            && w.server.sim_calls_of("getGuestIPAddress") >= ip_checks + 2)
            .then_some(())
    });
    let log = w.server.log();
    let written: Vec<&str> = log[before.len()..].lines().collect();
    eprintln!(
        "idle at info for {:.1} s: {} lines, {} vmrun list and {} IP checks",
        started.elapsed().as_secs_f64(),
        written.len(),
        w.server.sim_calls_of("list") - lists,
        w.server.sim_calls_of("getGuestIPAddress") - ip_checks
    );
    assert!(
        written.is_empty(),
        "an idle host wrote:\n{}",
        written.join("\n")
    );
    assert!(!log.contains(" DEBUG "), "{log}");

    let start = log
        .lines()
        .find(|line| line.contains("settings other than the defaults: "))
        .unwrap_or_else(|| panic!("no start-up line of settings:\n{log}"));
    for given in [
        "--list-interval=0.1",
        "--reconcile-interval=0.5",
        "--callback-secret=(set)",
        "--port=0",
    ] {
        assert!(start.contains(given), "{given} missing: {start}");
    }
    assert!(!log.contains(secret), "the secret is in the log:\n{log}");
    // `--log-level info` was given, but it is the default.
    for default in ["--log-level", "--max-waiters"] {
        assert!(!start.contains(default), "a default is listed: {start}");
    }
}

/// `--log-level warn` leaves out a VM's life; `debug` (the tests' own level) adds every
/// routine vmrun call, which `info` leaves out.
#[test]
fn the_log_level_chooses_which_lines_are_written() {
    let quiet = World::start("log-warn", options(&["--log-level", "warn"]));
    let id = quiet.create(&quiet.body());
    quiet.server.wait_ready(&id);
    assert_eq!(quiet.server.delete_vm(&id).0, 204);
    let log = quiet.server.log();
    assert!(!log.contains(" DEBUG "), "{log}");
    // Only the start-up lines: what it was given, which hypervisor, where it listens.
    let info: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(info.len(), 3, "{log}");
    assert!(info[0].contains("starting; settings other than the defaults: "));
    assert!(info[1].contains("hypervisor vmware: vmrun at "));
    assert!(info[2].contains("listening on "));

    let chatty = World::start("log-debug", options(&["--log-level", "debug"]));
    let id = chatty.create(&chatty.body());
    chatty.server.wait_ready(&id);
    let log = chatty.server.log();
    for routine in ["DEBUG vmrun list: ok after", "getGuestIPAddress"] {
        assert!(log.contains(routine), "{routine} missing:\n{log}");
    }
    assert!(log.contains(&format!("INFO  vm={id} vmrun clone")), "{log}");
}

/// vmrun missing is said when the server starts and once by the failing `vmrun list`, not at
/// every list (every 0.1 s here); when vmrun appears, one line says the list answers again.
#[test]
fn a_missing_vmrun_is_said_when_it_starts_and_when_it_ends() {
    let dir = common::TempDir::new("log-no-vmrun");
    let vmrun = dir.path().join("vmrun");
    let w = World::start(
        "log-no-vmrun",
        options_env(
            &[("VMWARE_VMRUN_PATH", vmrun.to_str().unwrap())],
            &["--log-level", "info", "--list-interval", "0.1"],
        ),
    );
    // `/metrics` counts the lists that found no vmrun.
    eventually("20 lists without vmrun", || {
        let metrics = http::call("GET", &w.server.url("/metrics"), None, &[]).text();
        let lists = common::metric(
            &metrics,
            r#"osx_builder_vmrun_calls_total{command="list",outcome="vmrun-not-found"}"#,
        )?;
        (lists >= 20.0).then_some(())
    });
    let log = w.server.log();
    assert_eq!(log.matches("vmrun not found at").count(), 2, "{log}");
    std::os::unix::fs::symlink(common::SIM_BIN, &vmrun).unwrap();
    assert!(w.server.wait_log("vmrun list: answers again"));
    let log = w.server.log();
    assert_eq!(log.matches("vmrun not found at").count(), 3, "{log}");
}
