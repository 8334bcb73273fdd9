//! Operations: `GET /healthz`, `GET /metrics`, and drain (`GET`, `POST`, `DELETE /drain`,
//! `POST /undrain`).

use serde::Serialize;

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

#[derive(Serialize)]
struct DrainState {
    draining: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// VMs still on the host: maintenance can begin when it reaches 0.
    vms: usize,
}

pub fn drain_state(service: &Service) -> Answer {
    Answer::json_value(
        200,
        &DrainState {
            draining: service.fleet().drain.is_draining(),
            since: service.fleet().drain.since(),
            vms: service.list().len(),
        },
    )
}

pub fn drain(service: &Service) -> Result<Answer, ApiError> {
    let drain = &service.fleet().drain;
    let was = drain.is_draining();
    let since = drain
        .start()
        .map_err(|e| ApiError::Internal(format!("cannot record the drain: {e}")))?;
    if !was {
        crate::warn!("draining since {since}: new VMs are refused, existing ones keep running");
    }
    Ok(drain_state(service))
}

pub fn undrain(service: &Service) -> Result<Answer, ApiError> {
    let drain = &service.fleet().drain;
    let was = drain.is_draining();
    drain
        .stop()
        .map_err(|e| ApiError::Internal(format!("cannot end the drain: {e}")))?;
    if was {
        crate::info!("drain ended: new VMs are accepted again");
    }
    Ok(drain_state(service))
}
