//! The API in a fleet: creates placed through the front door, calls about another host's
//! VMs relayed to it (or answered from the directory when it is gone), `GET /hosts`, and
//! `host` in every VM object. None of it runs without `--etcd`.

use std::sync::Arc;

use tiny_http::Request;

use super::action::header;
use super::answer::Answer;
use super::error::ApiError;
use crate::fleet::forward::{Relayed, FORWARDED_BY, PLACED_ID};
use crate::fleet::front::{Listing, Located, Outcome, Request as FleetRequest};
use crate::fleet::node::with_host;
use crate::fleet::Node;
use crate::service::Created;
use crate::vm::labels::VmFilter;
use crate::vm::{CreateVm, VmId};

/// A request another host relayed: answered from this host only, never relayed on.
pub fn is_relayed(request: &Request) -> bool {
    header(request, FORWARDED_BY).is_some()
}

/// Headers a relayed call carries as the client sent them.
fn passed_on(request: &Request, names: &[&'static str]) -> Vec<(&'static str, String)> {
    names
        .iter()
        .filter_map(|name| header(request, name).map(|v| (*name, v.to_string())))
        .collect()
}

pub fn create(
    node: &Node,
    request: &Request,
    create: CreateVm,
    body: &[u8],
) -> Result<Answer, ApiError> {
    if is_relayed(request) {
        let id = header(request, PLACED_ID).and_then(VmId::parse);
        let created = node.create_placed(create, id)?;
        return Ok(created_answer(node, created));
    }
    let url = request.url();
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let relay = FleetRequest {
        body,
        query,
        headers: passed_on(
            request,
            &["Authorization", "Idempotency-Key", "Content-Type"],
        ),
    };
    Ok(match node.create(create, &relay)? {
        Outcome::Local(created) => created_answer(node, created),
        Outcome::Relayed(answer) => relayed(answer),
    })
}

fn created_answer(node: &Node, created: Created) -> Answer {
    let (Created::New(json) | Created::Existing(json)) = created;
    Answer::json(202, Arc::from(with_host(&json, &node.name)))
}

pub fn relayed(answer: Relayed) -> Answer {
    let content_type = match answer.content_type.as_deref() {
        Some(kind) if kind.starts_with("text/plain") => "text/plain; charset=utf-8",
        _ => super::answer::JSON,
    };
    let status = answer.status;
    let mut out = Answer::json(status, Arc::from(answer.body));
    out.content_type = (status != 204 && status != 304).then_some(content_type);
    out.headers = answer.headers;
    out
}

/// A call about a VM this host does not hold: relayed to its owner, or answered from the
/// directory when its owner left the fleet. `None`: the fleet does not know it either.
pub fn elsewhere(
    node: &Node,
    request: &Request,
    id: VmId,
    body: Option<&[u8]>,
) -> Result<Option<Answer>, ApiError> {
    if is_relayed(request) {
        return Ok(None);
    }
    let method = request.method().as_str().to_string();
    match node.locate(id)? {
        Located::Unknown => Ok(None),
        Located::Remote(url) => {
            let headers = passed_on(request, &["Authorization", "If-None-Match", "Content-Type"]);
            let answer = node.relay(&url, &method, request.url(), headers, body)?;
            Ok(Some(relayed(answer)))
        }
        Located::Lost(vm) => match method.as_str() {
            "GET" | "HEAD" if !request.url().contains("/log") => {
                // Final: its tag never changes, so a long poll on it answers at once.
                let body = serde_json::to_vec(&vm).unwrap_or_default();
                let tag = crate::fleet::placement::fnv(&body);
                let etag = format!("\"{tag:016x}-{:016x}\"", u64::MAX);
                Ok(Some(
                    Answer::json(200, Arc::from(body)).with_header("ETag", etag),
                ))
            }
            "DELETE" => {
                node.forget(id)?;
                Ok(Some(Answer::empty(204)))
            }
            _ => Err(ApiError::VmNotFound),
        },
    }
}

/// `GET /vms` across the fleet (`host=` narrows it to one host): the other hosts filter
/// their own, the filter is applied here to the VMs of hosts that left.
pub fn list(node: &Node, request: &Request, local: Vec<Arc<[u8]>>, filter: &VmFilter) -> Answer {
    if is_relayed(request) {
        let items: Vec<Vec<u8>> = local.iter().map(|j| with_host(j, &node.name)).collect();
        return Answer::json(200, super::server::join_array(&items));
    }
    let url = request.url();
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let host = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("host="))
        .filter(|h| !h.is_empty());
    let asked = Listing {
        query,
        host,
        filter,
        authorization: header(request, "Authorization").map(str::to_string),
    };
    Answer::json(200, super::server::join_array(&node.list(local, &asked)))
}

/// A local VM object with its host.
pub fn local_vm(node: Option<&Node>, answer: Answer) -> Answer {
    match node {
        Some(node) if answer.status == 200 || answer.status == 202 => Answer {
            body: Arc::from(with_host(&answer.body, &node.name)),
            ..answer
        },
        _ => answer,
    }
}

pub fn hosts(node: Option<&Node>) -> Result<Answer, ApiError> {
    let node = node.ok_or(ApiError::FleetOff)?;
    let body = serde_json::json!({
        "host": node.name,
        "fleet": node.standing(),
        "hosts": node.hosts(),
    });
    Ok(Answer::json_value(200, &body))
}
