//! The `guestinfo` and `labels` fields of a create: objects of strings, checked by the
//! rules of [`crate::vm::guestinfo::check`]. A guestinfo value never appears in an error
//! message: only its key and size do.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::vm::guestinfo::GuestInfo;
use crate::vm::labels::{self, Labels};

pub fn guestinfo(fields: &Map<String, Value>) -> Result<GuestInfo, ApiError> {
    let invalid = |why: String| ApiError::invalid("invalid-guestinfo", format!("guestinfo: {why}"));
    let entries = strings(fields, "guestinfo").map_err(invalid)?;
    GuestInfo::new(entries).map_err(|e| invalid(e.to_string()))
}

pub fn labels(fields: &Map<String, Value>) -> Result<Labels, ApiError> {
    let invalid = |why: String| ApiError::invalid("invalid-labels", format!("labels: {why}"));
    let entries = strings(fields, "labels").map_err(invalid)?;
    labels::new(entries).map_err(|e| invalid(e.to_string()))
}

/// The field as key/value pairs in the order sent; absent or null is none.
fn strings(fields: &Map<String, Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    let map = match fields.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "must be an object of strings such as {{\"name\": \"host-1\"}}, got {}",
                kind(other)
            ))
        }
    };
    map.iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            other => Err(format!(
                "the value of key {:?} must be a string, got {}",
                key.chars().take(80).collect::<String>(),
                kind(other)
            )),
        })
        .collect()
}

/// The JSON type only: the value may be a secret sent in the wrong shape.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Map<String, Value> {
        match serde_json::from_str(text).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn absent_null_and_empty_are_none() {
        for text in [r#"{}"#, r#"{"guestinfo": null}"#, r#"{"guestinfo": {}}"#] {
            assert!(guestinfo(&fields(text)).unwrap().is_empty(), "{text}");
        }
        assert!(labels(&fields(r#"{"labels": null}"#)).unwrap().is_empty());
    }

    #[test]
    fn shapes_and_rules_are_named_and_secrets_never_echoed() {
        let cases = [
            (
                r#"{"guestinfo": "name=x"}"#,
                "invalid-guestinfo",
                "object of strings",
            ),
            (
                r#"{"guestinfo": {"name": 5}}"#,
                "invalid-guestinfo",
                "\"name\" must be a string",
            ),
            (
                r#"{"guestinfo": {"bad key": "hunter2"}}"#,
                "invalid-guestinfo",
                "\"bad key\"",
            ),
            (
                r#"{"guestinfo": {"nul": "hunter2\u0000"}}"#,
                "invalid-guestinfo",
                "\"nul\"",
            ),
            (r#"{"labels": ["a"]}"#, "invalid-labels", "an array"),
            (
                r#"{"labels": {"team": "a\nb"}}"#,
                "invalid-labels",
                "\"team\"",
            ),
            (r#"{"labels": {"a/b": "x"}}"#, "invalid-labels", "\"a/b\""),
        ];
        for (text, code, needle) in cases {
            let map = fields(text);
            let err = if code == "invalid-guestinfo" {
                guestinfo(&map).unwrap_err()
            } else {
                labels(&map).unwrap_err()
            };
            assert_eq!(err.code(), code, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
            assert!(!err.message().contains("hunter2"), "{}", err.message());
        }
    }
}
