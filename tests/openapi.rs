//! `GET /openapi.json` serves the document, and the contract check that every test's
//! answers pass through refuses answers that break it.

mod common;

use common::contract;
use common::http::{self, Answer};
use common::{ServerOptions, World};
use serde_json::{json, Value};

fn refused(method: &str, url: &str, answer: &Answer) -> bool {
    std::panic::catch_unwind(|| contract::check(method, url, answer)).is_err()
}

#[test]
fn the_server_serves_the_document_and_the_check_catches_broken_answers() {
    let w = World::start("openapi", ServerOptions::default());
    let answer = http::call("GET", &w.server.url("/openapi.json"), None, &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("Content-Type"),
        Some("application/json; charset=utf-8")
    );
    let served: Value = answer.json();
    let file: Value = serde_json::from_str(include_str!("../src/api/openapi.json")).unwrap();
    assert_eq!(served, file);
    assert_eq!(
        http::call("POST", &w.server.url("/openapi.json"), Some(b"{}"), &[]).status,
        405
    );

    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    let url = w.server.url(&format!("/vms/{id}"));
    let good = http::call("GET", &url, None, &[]);
    assert!(!refused("GET", &url, &good));
    let with = |vm: &Value, status: u16, headers: &[(&str, &str)]| Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: serde_json::to_vec(vm).unwrap(),
    };
    let etag = [("ETag", "\"x\"")];
    assert!(!refused("GET", &url, &with(&vm, 200, &etag)));
    // Each of these breaks the contract in one way.
    let mut bad_status = vm.clone();
    bad_status["status"] = json!("booting");
    let mut extra = vm.clone();
    extra["surprise"] = json!(1);
    let mut no_error = vm.clone();
    no_error["status"] = json!("failed");
    let mut lease_half = vm.clone();
    lease_half["ttl"] = json!(60);
    let mut bad_memory = vm.clone();
    bad_memory["memory"] = json!(1023);
    for broken in [bad_status, extra, no_error, lease_half, bad_memory] {
        assert!(refused("GET", &url, &with(&broken, 200, &etag)), "{broken}");
    }
    assert!(refused("GET", &url, &with(&vm, 200, &[])), "ETag missing");
    assert!(
        refused("GET", &url, &with(&vm, 418, &etag)),
        "undocumented status"
    );
    let wrong_code = json!({"code": "no-such-vm", "message": "x"});
    assert!(refused("GET", &url, &with(&wrong_code, 404, &[])));
    let right_code = json!({"code": "vm-not-found", "message": "x"});
    assert!(!refused("GET", &url, &with(&right_code, 404, &[])));
}
