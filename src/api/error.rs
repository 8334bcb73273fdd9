//! Errors the API answers with: each variant has one HTTP status and one code.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: a field holds a value we cannot use. `code` is `invalid-<field>`.
    InvalidField { code: &'static str, message: String },
    /// 415: the body is not JSON (or not a JSON object).
    InvalidJson(String),
    /// 415: a content type that is neither JSON nor the form type curl sends with `-d`.
    UnsupportedMediaType(String),
    /// 413
    BodyTooLarge { limit: usize },
    /// 411: a body without Content-Length or chunked encoding has no known end.
    LengthRequired,
    /// 404 for any id that is not a known VM, malformed ids included.
    VmNotFound,
    /// 404
    RouteNotFound(String),
    /// 405
    MethodNotAllowed {
        method: String,
        allowed: &'static str,
    },
    /// 409: vmrun says the VM's files are in use.
    VmLocked(String),
    /// 409: vmrun cannot open the VM (corrupt VMX).
    VmOpenError(String),
    /// 500: vmrun is not where the settings say.
    VmrunMissing(String),
    /// 500: destroying the VM failed for another reason.
    VmDeleteError(String),
    /// 500
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidField { .. } => 400,
            Self::InvalidJson(_) | Self::UnsupportedMediaType(_) => 415,
            Self::BodyTooLarge { .. } => 413,
            Self::LengthRequired => 411,
            Self::VmNotFound | Self::RouteNotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::VmLocked(_) | Self::VmOpenError(_) => 409,
            Self::VmrunMissing(_) | Self::VmDeleteError(_) | Self::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidField { code, .. } => code,
            Self::InvalidJson(_) => "invalid-json",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::LengthRequired => "length-required",
            Self::VmNotFound => "vm-not-found",
            Self::RouteNotFound(_) => "not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::VmLocked(_) => "vm-locked",
            Self::VmOpenError(_) => "vm-open-error",
            Self::VmrunMissing(_) => "vmrun-not-found",
            Self::VmDeleteError(_) => "vm-delete-error",
            Self::Internal(_) => "internal-error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::InvalidField { message, .. } => message.clone(),
            Self::InvalidJson(detail) => format!(
                "the request body is not valid JSON: {detail}; send a JSON object such as {{\"image\": {{\"url\": ..., \"checksum\": ..., \"checksum_type\": \"sha1\"}}}}"
            ),
            Self::UnsupportedMediaType(kind) => format!(
                "unsupported content type {kind:?}; send the body as application/json"
            ),
            Self::BodyTooLarge { limit } => {
                format!("the request body is larger than {limit} bytes; a create request is a small JSON object")
            }
            Self::LengthRequired => "the request has no Content-Length header; send the JSON body with one (curl -d and every HTTP library do)".into(),
            Self::VmNotFound => "The requested virtual machine ID was not found".into(),
            Self::RouteNotFound(path) => format!(
                "no such endpoint {path:?}; the API has /vms and /vms/:id"
            ),
            Self::MethodNotAllowed { method, allowed } => {
                format!("method {method} is not allowed here; use {allowed}")
            }
            Self::VmLocked(detail) => format!(
                "the virtual machine's files are in use by another process ({detail}); close VMware Fusion's window of this VM or wait for the other operation, then retry. A stale lock after a crash may need manual intervention"
            ),
            Self::VmOpenError(detail) => format!(
                "vmrun cannot open the virtual machine ({detail}); its VMX may be corrupt: manual intervention may be needed"
            ),
            Self::VmrunMissing(detail) | Self::VmDeleteError(detail) | Self::Internal(detail) => {
                detail.clone()
            }
        }
    }

    /// The JSON body: `{"code": "...", "message": "..."}`.
    pub fn body(&self) -> Vec<u8> {
        let message = self.message();
        let body = Body {
            code: self.code(),
            message: &message,
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"code\":\"internal-error\"}".to_vec())
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidField {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.message())
    }
}

impl std::error::Error for ApiError {}
