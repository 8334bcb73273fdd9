//! `GET /vms/:id` with its long poll and entity tag, and `POST /vms/:id/renew`.

use crate::vm::VmId;
use serde_json::Value;

use super::answer::Answer;
use super::create_body::parse_ttl;
use super::error::ApiError;
use super::query;
use crate::service::long_poll::if_none_match;
use crate::service::Service;

/// 200 with the object and its `ETag`, or 304 when `If-None-Match` names it still. With
/// `?wait=`, waits for the state to differ from the one named (or the current one); with
/// `&progress=true` as well, for any difference (see [`crate::service::long_poll`]).
pub fn get(
    service: &Service,
    id: VmId,
    url: &str,
    known: Option<&str>,
) -> Result<Answer, ApiError> {
    let wait = query::wait(url)?;
    let progress = query::flag(url, "progress")?;
    let polled = service.poll(id, known, wait, progress)?;
    let answer = if known.is_some_and(|header| if_none_match(header, &polled.etag)) {
        Answer::empty(304)
    } else {
        Answer::json(200, polled.json)
    };
    Ok(answer.with_header("ETag", polled.etag))
}

/// The body is optional: empty, or `{"ttl": seconds}`.
pub fn renew(service: &Service, id: VmId, body: &[u8]) -> Result<Answer, ApiError> {
    let ttl = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::invalid(
                "invalid-body",
                "the renew body must be empty or a JSON object such as {\"ttl\": 3600}",
            ));
        };
        parse_ttl(&fields)?
    };
    Ok(Answer::json(200, service.renew(id, ttl)?))
}
