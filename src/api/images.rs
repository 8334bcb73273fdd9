//! `GET /images`, `GET /images/:checksum`, `POST /images`, `DELETE /images/:checksum`.

use super::answer::Answer;
use super::error::ApiError;
use crate::image::gold::Prewarmed;
use crate::image::ImageSpec;
use crate::service::Service;

pub fn list(service: &Service) -> Answer {
    Answer::json_value(200, &service.images())
}

pub fn get(service: &Service, checksum: &str) -> Result<Answer, ApiError> {
    Ok(Answer::json_value(200, &service.image(checksum)?))
}

/// 200 when the image is cached already, 202 when a download runs.
pub fn prewarm(service: &Service, spec: ImageSpec) -> Result<Answer, ApiError> {
    Ok(match service.prewarm(spec)? {
        Prewarmed::Ready(entry) => Answer::json_value(200, &entry),
        Prewarmed::Started(entry) => Answer::json_value(202, &entry),
    })
}

pub fn delete(service: &Service, checksum: &str) -> Result<Answer, ApiError> {
    service.remove_image(checksum)?;
    Ok(Answer::empty(204))
}
