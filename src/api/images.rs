//! `GET /images`, `GET /images/:checksum`, `POST /images`, `DELETE /images/:checksum`.

use std::sync::Arc;

use serde_json::Value;

use super::answer::Answer;
use super::create_body::parse_image;
use super::error::ApiError;
use crate::image::gold::{GoldCache, Prewarmed};

pub fn list(gold: &GoldCache) -> Answer {
    Answer::json_value(200, &gold.list())
}

pub fn get(gold: &GoldCache, checksum: &str) -> Result<Answer, ApiError> {
    Ok(Answer::json_value(200, &gold.get(checksum)?))
}

/// Body `{"url": ..., "checksum": ..., "checksum_type": ...}`, the `image` of a create.
/// 200 when the image is cached already, 202 when a download runs.
pub fn prewarm(
    gold: &Arc<GoldCache>,
    guard: &crate::guard::Guard,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let spec = parse_image(Some(&value))?;
    guard.check_image_url(&spec.url)?;
    Ok(match gold.prewarm(spec)? {
        Prewarmed::Ready(entry) => Answer::json_value(200, &entry),
        Prewarmed::Started(entry) => Answer::json_value(202, &entry),
    })
}

pub fn delete(gold: &GoldCache, checksum: &str) -> Result<Answer, ApiError> {
    gold.remove(checksum)?;
    Ok(Answer::empty(204))
}
