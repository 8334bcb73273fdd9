//! An HTTP answer with what the fleet endpoints need beyond a JSON body: other content
//! types, no body (304), extra headers (`ETag`).

use std::io::Cursor;
use std::sync::Arc;

use tiny_http::{Header, Response, StatusCode};

pub struct Answer {
    pub status: u16,
    pub body: Arc<[u8]>,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
}

/// As the original Go server sent it (its `render.JSON`).
pub const JSON: &str = "application/json; charset=utf-8";
/// The Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Answer {
    pub fn json(status: u16, body: Arc<[u8]>) -> Self {
        Self {
            status,
            body,
            content_type: Some(JSON),
            headers: Vec::new(),
        }
    }

    /// Serialises `value`; a value that cannot be is a bug of ours, answered as one.
    pub fn json_value(status: u16, value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => Self::json(status, Arc::from(bytes)),
            Err(err) => Self::json(
                500,
                Arc::from(
                    super::error::ApiError::Internal(format!("cannot encode the answer: {err}"))
                        .body(),
                ),
            ),
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            body: Arc::from(&[][..]),
            content_type: None,
            headers: Vec::new(),
        }
    }

    pub fn text(status: u16, content_type: &'static str, text: String) -> Self {
        Self {
            status,
            body: Arc::from(text.into_bytes()),
            content_type: Some(content_type),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self) -> Response<Cursor<Arc<[u8]>>> {
        let length = self.body.len();
        let headers = self
            .content_type
            .map(|kind| ("Content-Type", kind.to_string()))
            .into_iter()
            .chain(self.headers)
            .filter_map(|(name, value)| Header::from_bytes(name.as_bytes(), value.as_bytes()).ok())
            .collect();
        Response::new(
            StatusCode(self.status),
            headers,
            Cursor::new(self.body),
            Some(length),
            None,
        )
    }
}
