//! Contract tests: each answer of the server that the integration tests receive through
//! [`super::http::call`] is checked against the OpenAPI document (src/api/openapi.json):
//! its status is one the operation lists, its documented headers are there, and its JSON
//! body validates against the operation's schema (JSON Schema 2020-12, as OpenAPI 3.1).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

use super::http::Answer;

const DOCUMENT: &str = include_str!("../../src/api/openapi.json");

pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(DOCUMENT).expect("openapi.json is JSON"))
}

/// Validators by JSON pointer into the document, built once each: the schema is the whole
/// document with a `$ref` to the pointer, so that every `#/components/...` resolves.
pub fn validate(pointer: &str, instance: &Value) -> Result<(), String> {
    static CACHE: OnceLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let validator = {
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache.entry(pointer.to_string()).or_insert_with(|| {
            let mut root = document().clone();
            // A URI fragment: the braces of path templates are percent-encoded.
            let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
            root["$ref"] = json!(format!("#{fragment}"));
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&root)
                .unwrap_or_else(|e| panic!("openapi.json: schema at {pointer}: {e}"));
            Box::leak(Box::new(validator))
        })
    };
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// `~` and `/` escaped as a JSON pointer wants them.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The document's path template that `path` is an instance of.
pub fn template(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    document()["paths"]
        .as_object()?
        .keys()
        .find(|t| {
            let want: Vec<&str> = t.split('/').collect();
            want.len() == parts.len()
                && want
                    .iter()
                    .zip(&parts)
                    .all(|(w, p)| w.starts_with('{') || w == p)
        })
        .map(String::as_str)
}

/// The request target of an http URL, and its path as the server routes it (no query, no
/// trailing slash).
fn target_and_path(url: &str) -> Option<(&str, &str)> {
    let target = url
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))?;
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    Some((target, path))
}

/// Panics, with what differs, when `answer` breaks the contract. Answers of other servers
/// (the tests' file servers) are told apart by their paths and bodies and skipped.
pub fn check(method: &str, url: &str, answer: &Answer) {
    let Some((target, path)) = target_and_path(url) else {
        return;
    };
    let body: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let is_error_body = body
        .as_ref()
        .is_some_and(|b| b.get("code").is_some() && b.get("message").is_some());
    let context = || {
        format!(
            "{method} {target} answered {}: {}",
            answer.status,
            answer.text()
        )
    };
    let Some(template) = template(path) else {
        // Not an endpoint: the server's 404/405 (or a transport refusal) is an Error.
        if is_error_body {
            let pointer = "/components/schemas/Error";
            if let Err(e) = validate(pointer, body.as_ref().unwrap()) {
                panic!("contract: {}: {e}", context());
            }
        }
        return;
    };
    let operation_method = if method == "HEAD" { "get" } else { method };
    let item = &document()["paths"][template];
    let lower = operation_method.to_ascii_lowercase();
    if !item[&lower].is_object() {
        // A method the path does not take: 405 (or a transport refusal before routing).
        if let Some(body) = &body {
            if let Err(e) = validate("/components/schemas/Error", body) {
                panic!("contract: {}: {e}", context());
            }
            let code = body["code"].as_str().unwrap_or("");
            assert!(
                answer.status != 405 || code == "method-not-allowed",
                "contract: {}",
                context()
            );
        }
        return;
    }
    let base = format!("/paths/{}/{lower}/responses", escape(template));
    let status = answer.status.to_string();
    let mut pointer = format!("{base}/{status}");
    let mut response = &document()["paths"][template][&lower]["responses"][&status];
    if let Some(target) = response["$ref"].as_str() {
        pointer = target.trim_start_matches('#').to_string();
        response = document()
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("openapi.json: dangling {target}"));
    }
    assert!(
        response.is_object(),
        "contract: status {status} is not documented for {lower} {template}: {}",
        context()
    );
    if let Some(headers) = response["headers"].as_object() {
        for name in headers.keys() {
            assert!(
                answer.header(name).is_some(),
                "contract: header {name} missing: {}",
                context()
            );
        }
    }
    let Some(content) = response["content"].as_object() else {
        assert!(
            answer.body.is_empty(),
            "contract: {status} of {lower} {template} has no body in the document: {}",
            context()
        );
        return;
    };
    if method == "HEAD" {
        return;
    }
    let Some((media, _)) = content.iter().next() else {
        return;
    };
    if !media.starts_with("application/json") {
        return;
    }
    let Some(body) = body else {
        panic!("contract: {} is not JSON", context());
    };
    let pointer = format!("{pointer}/content/{}/schema", escape(media));
    if let Err(e) = validate(&pointer, &body) {
        panic!("contract: {}: {e}", context());
    }
}

/// 400 codes the document cannot decide from a body alone: they depend on the server's
/// settings or state (`--file-image-dir`, `--callback-allow`, the server's own address, a VM
/// without a lease), on byte counts and key case the document states in words, or on a
/// query parameter or header that is not the body.
const NOT_FROM_THE_BODY: &[&str] = &[
    "invalid-image-url",
    "invalid-callback-url",
    "invalid-guestinfo",
    "invalid-labels",
    "invalid-keep",
    "invalid-request",
    "invalid-content-length",
    "invalid-chunked-body",
    "invalid-pool-name",
];

/// Panics when the server's verdict on a request's JSON body disagrees with the document:
/// a body the operation's schema admits answered 415, or 400 for a reason the body alone
/// decides; a body it forbids answered 2xx. Bodies of other content types (and requests
/// to other servers or to no operation) are not judged.
pub fn check_request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
    answer: &Answer,
) {
    let Some(body) = body else { return };
    let Some((target, path)) = target_and_path(url) else {
        return;
    };
    let Some(template) = template(path) else {
        return;
    };
    let lower = method.to_ascii_lowercase();
    let content = &document()["paths"][template][&lower]["requestBody"]["content"];
    if !content["application/json"].is_object() {
        return;
    }
    // Every type the server reads as JSON: the document's JSON and JSON-text types.
    let media = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map_or("application/json".to_string(), |(_, v)| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media != "application/json" && !content[media.as_str()].is_object() {
        return;
    }
    let Ok(instance) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let pointer = format!(
        "/paths/{}/{lower}/requestBody/content/application~1json/schema",
        escape(template)
    );
    let verdict = validate(&pointer, &instance);
    let code = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|b| b["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    let keyed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"));
    // A renew without a ttl of a VM without a lease: the state decides, not the body.
    let renew_needs_a_lease = template == "/vms/{id}/renew"
        && code == "invalid-ttl"
        && instance.get("ttl").is_none_or(Value::is_null);
    // cpus or memory below a cached tart gold image's minimum: the image decides.
    let below_the_golds_minimum = matches!(code.as_str(), "invalid-cpus" | "invalid-memory")
        && answer.text().contains("gold image's minimum");
    let body_decides = !(NOT_FROM_THE_BODY.contains(&code.as_str())
        || (keyed && code == "invalid-name")
        || renew_needs_a_lease
        || below_the_golds_minimum);
    match verdict {
        Ok(()) => assert!(
            !(answer.status == 415 || (answer.status == 400 && body_decides)),
            "contract: {method} {target} with a body the document admits answered {}: {}\nbody: {instance}",
            answer.status,
            answer.text()
        ),
        Err(why) => assert!(
            !(200..300).contains(&answer.status),
            "contract: {method} {target} with a body the document forbids ({why}) answered {}\nbody: {instance}",
            answer.status
        ),
    }
}
