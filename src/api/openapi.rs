//! `GET /openapi.json`: the OpenAPI 3.1 document of this API. It is kept as a file beside
//! this module so that one place holds the VM schema and every endpoint; the contract
//! tests (tests/common/contract.rs) check each answer the integration tests receive
//! against it, and CI runs an OpenAPI validator on it (`.ci/run`).

use std::sync::Arc;

use super::answer::Answer;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub const PATH: &str = "/openapi.json";

pub fn get() -> Answer {
    Answer::json(200, Arc::from(DOCUMENT.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_document_is_json_and_names_every_route() {
        let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for path in [
            "/vms",
            "/vms/{id}",
            "/vms/{id}/renew",
            "/images",
            "/images/{checksum}",
            "/healthz",
            "/metrics",
            "/drain",
            "/undrain",
            PATH,
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
    }

    #[test]
    fn every_image_phase_the_server_reports_is_in_the_schema() {
        let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
        let listed = &doc["components"]["schemas"]["ImageProgress"]["properties"]["phase"]["enum"];
        for phase in crate::image::ImagePhase::ALL {
            assert!(
                listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p == phase.as_str()),
                "{} missing from ImageProgress.phase",
                phase.as_str()
            );
        }
    }
}
