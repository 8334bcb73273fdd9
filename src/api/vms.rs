//! `GET /vms/:id` with its long poll and entity tag.

use std::time::Duration;

use super::answer::Answer;
use super::error::ApiError;
use crate::service::long_poll::if_none_match;
use crate::service::Service;
use crate::vm::VmId;

/// 200 with the object and its `ETag`, or 304 when `If-None-Match` names it still. With
/// `?wait=`, waits for the state to differ from the one named (or the current one); with
/// `&progress=true` as well, for any difference (see [`crate::service::long_poll`]).
pub fn get(
    service: &Service,
    id: VmId,
    known: Option<&str>,
    wait: Duration,
    progress: bool,
) -> Result<Answer, ApiError> {
    let polled = service.poll(id, known, wait, progress)?;
    let answer = if known.is_some_and(|header| if_none_match(header, &polled.etag)) {
        Answer::empty(304)
    } else {
        Answer::json(200, polled.json)
    };
    Ok(answer.with_header("ETag", polled.etag))
}
