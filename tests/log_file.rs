//! `--log-file`: the server appends its log to the file and, on SIGHUP, reopens it by its
//! path, as newsyslog expects of a server it rotates the log of (rename, then signal the pid
//! in the lock file). A reopen that fails keeps the old file and the server up; SIGHUP
//! without a log file is harmless.

mod common;

use std::path::Path;

use common::{eventually, http, log_lines, options, Server, TempDir};

fn hangup(server: &Server) {
    // SAFETY: kill(2) on the pid of a child this test started and still holds.
    let sent = unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP {}", server.pid());
}

/// The file as text lines; in a JSON run each line must be a valid JSON log line.
fn text_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    log_lines::stderr_text(&bytes, log_lines::json_run())
}

fn wait_file(path: &Path, needle: &str) -> String {
    eventually(&format!("{needle:?} in {}", path.display()), || {
        Some(text_of(path)).filter(|text| text.contains(needle))
    })
}

fn post(server: &Server, path: &str) {
    let (status, body) = http::request("POST", &server.url(path), None, &[]);
    assert_eq!(status, 200, "POST {path}: {body}");
}

#[test]
fn a_rotated_log_file_is_reopened_on_sighup() {
    let dir = TempDir::new("log-file");
    let path = dir.path().join("logs/osx-builder.log");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = path.display().to_string();
    // Info: the simulator's routine vmrun calls (debug) would fill the file meanwhile.
    let server = Server::start_with(
        dir.path(),
        options(&["--log-file", &file, "--log-level", "info"]),
    );
    wait_file(&path, "listening on");
    // The milestones go to stderr too (launchd's StandardErrorPath); the rest does not.
    // (The harness learns the port before it keeps the line: wait for it.)
    assert!(server.wait_log("listening on"), "{}", server.log());
    post(&server, "/drain");
    wait_file(&path, "draining since");
    assert!(!server.log().contains("draining since"), "{}", server.log());

    let rotated = dir.path().join("logs/osx-builder.log.0");
    std::fs::rename(&path, &rotated).unwrap();
    hangup(&server);
    wait_file(&path, "SIGHUP: reopened the log file");
    post(&server, "/undrain");
    let new = wait_file(&path, "drain ended");
    let old = text_of(&rotated);
    assert!(
        old.contains("listening on") && old.contains("draining since"),
        "{old}"
    );
    assert!(
        !old.contains("drain ended") && !old.contains("reopened"),
        "{old}"
    );
    assert!(
        !new.contains("listening on") && !new.contains("draining since"),
        "{new}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o7022, 0, "mode {mode:o}");
}

#[test]
fn a_reopen_that_fails_keeps_the_old_file_and_the_server_up() {
    let dir = TempDir::new("log-file-gone");
    let folder = dir.path().join("logs");
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("osx-builder.log").display().to_string();
    let server = Server::start_with(
        dir.path(),
        options(&["--log-file", &file, "--log-level", "info"]),
    );
    // The folder gone (permissions would not stop a test run as root): the old file is
    // still at hand under the folder's new name.
    let moved = dir.path().join("moved");
    std::fs::rename(&folder, &moved).unwrap();
    hangup(&server);
    assert!(
        server.wait_log("cannot reopen the log file"),
        "{}",
        server.log()
    );
    let old = moved.join("osx-builder.log");
    wait_file(&old, "cannot reopen the log file");
    let (status, body) = http::request("GET", &server.url("/healthz"), None, &[]);
    assert_eq!(status, 200, "{body}");
    post(&server, "/drain");
    let text = wait_file(&old, "draining since");
    assert_eq!(
        text.matches("cannot reopen the log file").count(),
        1,
        "{text}"
    );
    assert!(!folder.exists());
}

#[test]
fn sighup_without_a_log_file_is_harmless() {
    let dir = TempDir::new("log-file-none");
    let server = Server::start_with(dir.path(), options(&[]));
    hangup(&server);
    assert!(
        server.wait_log("SIGHUP: no --log-file to reopen"),
        "{}",
        server.log()
    );
    let (status, body) = http::request("GET", &server.url("/healthz"), None, &[]);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_log_file_that_cannot_be_opened_stops_the_start() {
    let dir = TempDir::new("log-file-bad");
    let file = dir.path().join("missing/osx-builder.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_osx-builder"))
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--log-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = log_lines::stderr_text(&out.stderr, log_lines::json_run());
    assert!(
        stderr.contains(&format!("cannot open the log file {}", file.display()))
            && stderr.contains("No such file or directory"),
        "{stderr}"
    );
}
