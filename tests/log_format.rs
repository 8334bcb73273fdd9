//! `--log-format json`: every line the server writes in a run that creates, fails, polls,
//! refuses and deletes VMs is one JSON object with `ts`, `level` and `msg`, and the events
//! that have them carry `vm`, `image`, `command`, `code` and `duration_ms`.

mod common;

use common::http;
use common::{ServerOptions, World};
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
            matches!(line["level"].as_str(), Some("info" | "warn" | "error")),
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
        format!(r#"{{"ts":"{ts}","level":"debug","msg":"m"}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":"vm=abc m"}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":"m","extra":1}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":"m","duration_ms":"3"}}"#),
        format!(r#"{{"ts":"{ts}","level":"info","msg":""}}"#),
        r#"{"ts":"yesterday","level":"info","msg":"m"}"#.to_string(),
    ] {
        assert!(json_to_text(&bad).is_err(), "{bad}");
    }
}
