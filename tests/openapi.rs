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

/// Whether the document's schema at `pointer` admits `value`.
fn documented(pointer: &str, value: &Value) -> bool {
    contract::validate(pointer, value).is_ok()
}

const CREATE: &str = "/components/schemas/CreateVm";

/// Issue 24, item 5: each place where the document and the server disagreed, asked of both.
#[test]
fn the_document_and_the_server_agree_on_what_is_accepted() {
    let w = World::start("openapi-agree", ServerOptions::default());
    let post = |body: &Value, headers: &[(&str, &str)]| {
        let text = body.to_string();
        http::call(
            "POST",
            &w.server.url("/vms"),
            Some(text.as_bytes()),
            headers,
        )
    };
    let with = |field: &str, value: Value| {
        let mut body = w.body();
        body[field] = value;
        body
    };

    // guestinfo and labels: in the document, and taken by the server.
    let full = {
        let mut body = with("guestinfo", json!({"name": "host-1"}));
        body["labels"] = json!({"project": "go"});
        body
    };
    assert!(documented(CREATE, &full), "{full}");
    let answer = post(&full, &[]);
    assert_eq!(answer.status, 202, "{}", answer.text());
    let vm = answer.json();
    assert_eq!(vm["labels"], json!({"project": "go"}));
    assert_eq!(vm["guestinfo_keys"], json!(["name"]));
    let id = vm["id"].as_str().unwrap().to_string();

    // Limits the server has are in the document, and what the document allows is taken.
    for (field, value, accepted) in [
        ("cpus", json!(64), true),
        ("cpus", json!(65), false),
        ("cpus", json!(0), true),
        ("cpus", json!(4.0), true),
        ("memory", json!(1_048_576), true),
        ("memory", json!(1_048_577), false),
        ("ttl", json!(600.0), true),
        ("ttl", json!(null), true),
        ("network_type", json!(""), true),
        ("callback_url", json!(""), true),
        ("name", json!("é".repeat(200)), true),
        ("name", json!("é".repeat(201)), false),
    ] {
        let body = with(field, value.clone());
        assert_eq!(
            documented(CREATE, &body),
            accepted,
            "document: {field} {value}"
        );
        let answer = post(&body, &[]);
        assert_eq!(
            answer.status == 202,
            accepted,
            "server: {field} {value}: {}",
            answer.text()
        );
    }
    for url in ["", "ftp://h/x", "http:///x", "http://h/a b", "file://rel/x"] {
        let mut body = w.body();
        body["image"]["url"] = json!(url);
        assert!(!documented(CREATE, &body), "document: url {url:?}");
        let answer = post(&body, &[]);
        assert_eq!(answer.status, 400, "{url:?}: {}", answer.text());
        assert_eq!(answer.json()["code"], "invalid-image-url");
    }
    // A checksum of another type's length: refused by both.
    let mut body = w.body();
    body["image"]["checksum_type"] = json!("MD5");
    assert!(!documented(CREATE, &body));
    assert_eq!(post(&body, &[]).json()["code"], "invalid-checksum");
    body["image"]["checksum"] = json!("0123456789ABCDEF0123456789abcdef");
    assert!(documented(CREATE, &body), "{body}");

    // Idempotency-Key: the 200 characters the README and `name` allow, in both.
    let key = "k".repeat(150);
    let answer = post(&w.body(), &[("Idempotency-Key", &key)]);
    assert_eq!(answer.status, 202, "{}", answer.text());
    let params = &contract::document()["paths"]["/vms"]["post"]["parameters"];
    let header = params
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    assert_eq!(header["schema"]["maxLength"], 200);
    let answer = post(&w.body(), &[("Idempotency-Key", &"k".repeat(201))]);
    assert_eq!(answer.json()["code"], "invalid-name");

    // The seed's `curl -d@create.json`: JSON text under the form type, as declared.
    let form = &contract::document()["paths"]["/vms"]["post"]["requestBody"]["content"]
        ["application/x-www-form-urlencoded"]["schema"];
    assert_eq!(form["type"], "string");
    assert_eq!(form["contentMediaType"], "application/json");
    let text = w.body().to_string();
    let answer = http::call(
        "POST",
        &w.server.url("/vms"),
        Some(text.as_bytes()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(answer.status, 202, "{}", answer.text());

    // Query values: JSON's number forms for `wait`, `progress=null` refused as documented.
    let vm_url = |query: &str| w.server.url(&format!("/vms/{id}{query}"));
    for query in ["?wait=1e-3", "?wait=0.0", "?wait=1E-2&progress=true"] {
        let answer = http::call("GET", &vm_url(query), None, &[]);
        assert_eq!(answer.status, 200, "{query}: {}", answer.text());
    }
    let unknown = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";
    let answer = http::call(
        "GET",
        &w.server.url(&format!("/vms/{unknown}?wait=1e2")),
        None,
        &[],
    );
    assert_eq!(answer.json()["code"], "vm-not-found", "{}", answer.text());
    let answer = http::call("GET", &vm_url("?progress=null"), None, &[]);
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["code"], "invalid-query");

    // The list's filters: an empty label refused by both, an empty status is provisioning.
    let label = &contract::document()["paths"]["/vms"]["get"]["parameters"][0];
    assert_eq!(label["name"], "label");
    assert!(!documented(
        "/paths/~1vms/get/parameters/0/schema",
        &json!([""])
    ));
    assert!(documented(
        "/paths/~1vms/get/parameters/0/schema",
        &json!(["k"])
    ));
    let answer = http::call("GET", &w.server.url("/vms?label="), None, &[]);
    assert_eq!(answer.json()["code"], "invalid-query");
    let answer = http::call("GET", &w.server.url("/vms?status="), None, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());

    // Renew: 0 is refused as the document says, a whole float is a whole number.
    let renew = |body: &str| {
        http::call(
            "POST",
            &w.server.url(&format!("/vms/{id}/renew")),
            Some(body.as_bytes()),
            &[],
        )
    };
    assert!(!documented("/components/schemas/Renew", &json!({"ttl": 0})));
    let answer = renew(r#"{"ttl": 0}"#);
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["code"], "invalid-ttl");
    assert!(documented(
        "/components/schemas/Renew",
        &json!({"ttl": 3600.0})
    ));
    let answer = renew(r#"{"ttl": 3600.0}"#);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["ttl"], 3600);

    // A pool name: the path parameter has the pattern the server checks.
    let name_schema = "/paths/~1pools~1{name}/parameters/0/schema";
    assert!(!documented(name_schema, &json!("a b")));
    assert!(documented(name_schema, &json!("macos-13")));
    let answer = http::call("GET", &w.server.url("/pools/a%20b"), None, &[]);
    assert_eq!(answer.json()["code"], "invalid-pool-name");
}

/// Issue 24: a 405 names the methods its path takes (`Allow`, RFC 9110), on every path of
/// the document, and they are exactly the document's.
#[test]
fn every_405_has_the_allow_header_of_its_path() {
    let w = World::start("openapi-allow", ServerOptions::default());
    let paths = contract::document()["paths"].as_object().unwrap();
    for (template, item) in paths {
        let path = template
            .replace("{id}", "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489")
            .replace("{checksum}", "5cf00d380e28d02f30efaceafef7c7c8bdedae33")
            .replace("{name}", "macos-13");
        let mut documented: Vec<String> = ["get", "put", "post", "delete", "patch"]
            .into_iter()
            .filter(|m| item[*m].is_object())
            .map(str::to_ascii_uppercase)
            .collect();
        if documented.iter().any(|m| m == "GET") {
            documented.push("HEAD".into());
        }
        for method in ["PATCH", "TRACE", "OPTIONS", "PUT"] {
            if documented.iter().any(|m| m == method) {
                continue;
            }
            let answer = http::call(method, &w.server.url(&path), None, &[]);
            assert_eq!(answer.status, 405, "{method} {path}: {}", answer.text());
            let allow = answer
                .header("Allow")
                .unwrap_or_else(|| panic!("{method} {path}: no Allow"));
            let mut allowed: Vec<String> = allow.split(", ").map(str::to_string).collect();
            allowed.sort();
            documented.sort();
            assert_eq!(allowed, documented, "{method} {path}");
        }
    }
}
