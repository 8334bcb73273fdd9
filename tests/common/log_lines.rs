//! The server's stderr as the tests read it, in either log format.
//!
//! `OSX_BUILDER_LOG_FORMAT=json cargo test --release --test '*'` runs every integration test
//! with each server logging JSON (the variable is the server's own setting, inherited by every
//! server a test starts). Each line is then checked against what the README promises a log
//! shipper, and turned back into the text line the server would have written, so that the
//! assertions on log text hold in both modes and a line that breaks the format fails the test
//! that caused it.

use serde_json::Value;

/// The fields a JSON line may have beside `ts`, `level` and `msg`.
const FIELDS: [&str; 4] = ["vm", "image", "command", "code"];

/// Whether a server started with `args` and `env` (on top of this process's environment) logs
/// JSON: a `--log-format` flag wins over the variable, as in the server.
pub fn server_logs_json(args: &[String], env: &[(String, String)]) -> bool {
    if let Some(flag) = args.windows(2).rev().find(|w| w[0] == "--log-format") {
        return flag[1] == "json";
    }
    let from_env = env
        .iter()
        .rev()
        .find(|(key, _)| key == "OSX_BUILDER_LOG_FORMAT")
        .map(|(_, value)| value.clone())
        .or_else(|| std::env::var("OSX_BUILDER_LOG_FORMAT").ok());
    from_env.as_deref().map(str::trim) == Some("json")
}

/// True when this test run asked every server for JSON logs.
pub fn json_run() -> bool {
    server_logs_json(&[], &[])
}

/// The text line the server writes for JSON line `line`, or what is wrong with `line`.
pub fn json_to_text(line: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("not a JSON object: {line}"))?;
    let text = |key: &str| object.get(key).and_then(Value::as_str);
    let ts = text("ts").ok_or_else(|| format!("no \"ts\" string: {line}"))?;
    // 2026-11-24T17:00:00.123Z: UTC with milliseconds, as the text format has it.
    let ts_ok = ts.len() == 24
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.';
    if !ts_ok {
        return Err(format!(
            "\"ts\" is not an RFC 3339 UTC time with milliseconds: {line}"
        ));
    }
    let label = match text("level") {
        Some("debug") => "DEBUG",
        Some("info") => "INFO ",
        Some("warn") => "WARN ",
        Some("error") => "ERROR",
        _ => {
            return Err(format!(
                "\"level\" is not debug, info, warn or error: {line}"
            ))
        }
    };
    let msg = text("msg")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("no \"msg\" text: {line}"))?;
    if msg.starts_with("vm=") {
        return Err(format!("the VM id is in \"msg\", not in \"vm\": {line}"));
    }
    for (key, value) in object {
        let fine = match key.as_str() {
            "ts" | "level" | "msg" => true,
            "duration_ms" => value.is_u64(),
            key if FIELDS.contains(&key) => value.as_str().is_some_and(|v| !v.is_empty()),
            _ => false,
        };
        if !fine {
            return Err(format!(
                "field {key:?} is not one the README lists, or has the wrong type: {line}"
            ));
        }
    }
    Ok(match text("vm") {
        Some(vm) => format!("{ts} {label} vm={vm} {msg}"),
        None => format!("{ts} {label} {msg}"),
    })
}

/// Whole stderr of a server run that exited, as text lines. In a JSON run every line must be a
/// valid JSON line; a test reading a server's stderr directly goes through this.
pub fn stderr_text(stderr: &[u8], json: bool) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    if !json {
        return stderr.into_owned();
    }
    let mut text = String::new();
    for line in stderr.lines() {
        match json_to_text(line) {
            Ok(line) => text.push_str(&line),
            Err(problem) => panic!("the server broke the JSON log format: {problem}"),
        }
        text.push('\n');
    }
    text
}
