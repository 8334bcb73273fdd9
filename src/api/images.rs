//! `GET /images`, `GET /images/:checksum`, `POST /images`, `DELETE /images/:checksum`. In a
//! fleet an image also says which hosts hold it (`hosts`), images only other hosts hold are
//! listed as `remote`, and a pre-warm with `hosts` goes to every host or to N of them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::answer::Answer;
use super::error::ApiError;
use crate::fleet::forward::Relayed;
use crate::fleet::images::{Answered, HostAnswer, Scope};
use crate::fleet::Node;
use crate::image::gold::Prewarmed;
use crate::image::ImageSpec;
use crate::service::Service;

pub fn list(service: &Service, node: Option<&Node>) -> Answer {
    let Some(node) = node else {
        return Answer::json_value(200, &service.images());
    };
    let mut holders = node.image_holders();
    let mut out: Vec<Value> = service
        .images()
        .into_iter()
        .map(|entry| {
            let hosts = holders.remove(&entry.checksum).unwrap_or_default();
            with_hosts(serde_json::to_value(entry).unwrap_or_default(), hosts)
        })
        .collect();
    out.extend(
        holders
            .into_iter()
            .map(|(checksum, hosts)| remote(&checksum, hosts)),
    );
    Answer::json_value(200, &out)
}

pub fn get(service: &Service, node: Option<&Node>, checksum: &str) -> Result<Answer, ApiError> {
    let local = service.image(checksum);
    let Some(node) = node else {
        return Ok(Answer::json_value(200, &local?));
    };
    let hosts = node
        .image_holders()
        .remove(&checksum.to_ascii_lowercase())
        .unwrap_or_default();
    let entry = match local {
        Ok(entry) => with_hosts(serde_json::to_value(entry).unwrap_or_default(), hosts),
        Err(_) if !hosts.is_empty() => remote(&checksum.to_ascii_lowercase(), hosts),
        Err(err) => return Err(err.into()),
    };
    Ok(Answer::json_value(200, &entry))
}

fn with_hosts(mut entry: Value, hosts: Vec<String>) -> Value {
    entry["hosts"] = json!(hosts);
    entry
}

/// An image this host does not hold and others do.
fn remote(checksum: &str, hosts: Vec<String>) -> Value {
    json!({"checksum": checksum, "state": "remote", "hosts": hosts})
}

/// 200 when the image is cached already, 202 when a download runs.
pub fn prewarm(service: &Service, spec: ImageSpec) -> Result<Answer, ApiError> {
    Ok(match service.prewarm(spec)? {
        Prewarmed::Ready(entry) => Answer::json_value(200, &entry),
        Prewarmed::Started(entry) => Answer::json_value(202, &entry),
    })
}

/// `POST /images` with `hosts`: each host asked and its answer. 202 when a download runs
/// on one of them, 200 when none runs and one holds the image ready, 502 `prewarm-failed`
/// when every host asked refused.
pub fn prewarm_fleet(
    node: &Node,
    spec: ImageSpec,
    scope: Scope,
    authorization: Option<String>,
) -> Result<Answer, ApiError> {
    let checksum = spec.checksum.clone();
    let answers = node.prewarm(spec, scope, authorization)?;
    let hosts: Vec<(u16, Value)> = answers.into_iter().map(host_entry).collect();
    let status = if hosts.iter().any(|(s, _)| *s == 202) {
        202
    } else if hosts.iter().any(|(s, _)| *s == 200) {
        200
    } else {
        502
    };
    let requested = match scope {
        Scope::All => json!("all"),
        Scope::Hosts(n) => json!(n),
    };
    let mut body = json!({
        "checksum": checksum,
        "requested": requested,
        "hosts": hosts.iter().map(|(_, h)| h).collect::<Vec<_>>(),
    });
    if status == 502 {
        let why: Vec<String> = hosts
            .iter()
            .map(|(_, h)| {
                format!(
                    "{}: {}: {}",
                    h["host"].as_str().unwrap_or(""),
                    h["error"]["code"].as_str().unwrap_or(""),
                    h["error"]["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        body["code"] = json!("prewarm-failed");
        body["message"] = json!(format!(
            "no host asked took the pre-warm: {}",
            why.join("; ")
        ));
    }
    Ok(Answer::json_value(status, &body))
}

/// One host's line of a fleet pre-warm: its status, and its image entry or its error.
fn host_entry(HostAnswer { host, answer }: HostAnswer) -> (u16, Value) {
    let (status, outcome) = match answer {
        Answered::Local(local) => match *local {
            Ok(Prewarmed::Ready(entry)) => (200, Ok(json!(entry))),
            Ok(Prewarmed::Started(entry)) => (202, Ok(json!(entry))),
            Err(err) => {
                let err = ApiError::from(err);
                (err.status(), Err((err.code().to_string(), err.message())))
            }
        },
        Answered::Relayed(Relayed { status, body, .. }) => {
            let parsed = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            match status {
                200 | 202 => (status, Ok(parsed)),
                _ => {
                    let text = |field: &str| parsed[field].as_str().map(str::to_string);
                    let code = text("code").unwrap_or_else(|| format!("http-{status}"));
                    let message = text("message").unwrap_or_else(|| {
                        String::from_utf8_lossy(&body).chars().take(300).collect()
                    });
                    (status, Err((code, message)))
                }
            }
        }
        Answered::Unreachable(why) => (
            502,
            Err((
                "host-unreachable".to_string(),
                format!("the host {host} did not answer: {why}"),
            )),
        ),
    };
    let mut line = BTreeMap::from([("host", json!(host)), ("status", json!(status))]);
    match outcome {
        Ok(image) => line.insert("image", image),
        Err((code, message)) => line.insert("error", json!({"code": code, "message": message})),
    };
    (status, json!(line))
}

pub fn delete(service: &Service, checksum: &str) -> Result<Answer, ApiError> {
    service.remove_image(checksum)?;
    Ok(Answer::empty(204))
}
