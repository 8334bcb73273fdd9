//! Operations: `GET /healthz`, `GET /metrics`, and drain (`GET`, `POST`, `DELETE /drain`,
//! `POST /undrain`).

use super::answer::{Answer, PROMETHEUS_TEXT};
use super::error::ApiError;
use crate::service::Service;

/// `detailed`: the client has the token (or none is set); otherwise only the status.
pub fn health(service: &Service, detailed: bool) -> Answer {
    let health = service.health();
    if !detailed {
        let status = serde_json::json!({ "status": health.status });
        return Answer::json_value(health.status_code(), &status);
    }
    Answer::json_value(health.status_code(), &health)
}

pub fn metrics(service: &Service) -> Answer {
    Answer::text(200, PROMETHEUS_TEXT, service.metrics_text())
}

pub fn drain_state(service: &Service) -> Answer {
    Answer::json_value(200, &service.drain_state())
}

pub fn drain(service: &Service) -> Result<Answer, ApiError> {
    Ok(Answer::json_value(200, &service.drain()?))
}

pub fn undrain(service: &Service) -> Result<Answer, ApiError> {
    Ok(Answer::json_value(200, &service.undrain()?))
}
