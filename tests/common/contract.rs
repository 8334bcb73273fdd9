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

/// Panics, with what differs, when `answer` breaks the contract. Answers of other servers
/// (the tests' file servers) are told apart by their paths and bodies and skipped.
pub fn check(method: &str, url: &str, answer: &Answer) {
    let Some(target) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
    else {
        return;
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
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
