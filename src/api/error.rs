//! Errors the API answers with: each variant has one HTTP status and one code. The core's
//! errors ([`crate::service::Error`]) become these here, and only here.

use std::fmt;

use serde::Serialize;

use crate::vm::capacity::Shortage;

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
    /// 404: the VM exists but has no `vmware.log` (never started, or its files are gone).
    VmLogNotFound(crate::vm::VmId),
    /// 405, with the methods the path takes (`Allow`, RFC 9110; HEAD wherever GET).
    MethodNotAllowed {
        method: String,
        allowed: &'static [&'static str],
    },
    /// 409: vmrun says the VM's files are in use.
    VmLocked(String),
    /// 409: vmrun cannot open the VM (corrupt VMX).
    VmOpenError(String),
    /// 500: vmrun is not where the settings say.
    /// The hypervisor's tool is missing; its code (`vmrun-not-found`, `tart-not-found`).
    VmrunMissing(&'static str, String),
    /// 500: destroying the VM failed for another reason.
    VmDeleteError(String),
    /// 500
    Internal(String),
    /// 401: a token is configured and the request lacks it (the detail says how).
    Unauthorized(String),
    /// 503: the host runs as many VMs as allowed, or its disk is below the floor.
    CapacityExhausted(Shortage),
    /// 503: the server is draining for maintenance (since this time) and takes no new VM.
    Draining { since: String },
    /// 409: a renew or a second delete of a VM that is being destroyed.
    VmDeleting,
    /// 404 for a checksum that names no gold image (malformed ones included).
    ImageNotFound,
    /// 409: VMs are linked clones of the image (or it is being downloaded).
    ImageInUse(String),
    /// 429: this many pre-warm downloads run already.
    TooManyPrewarms { limit: usize },
    /// 409: the idempotency key came with another body; the fields that differ.
    IdempotencyKeyReused(Vec<&'static str>),
    /// 507: the data folder's disk is full (ENOSPC, or the quota): nothing was recorded.
    DiskFull(String),
    /// 404: no warm pool has this name.
    PoolNotFound(String),
    /// 409: the pool comes from the settings (`--pool`).
    PoolFromSettings(String),
    /// 503 `capacity-exhausted`: no host of the fleet can take the create (why).
    FleetFull(String),
    /// 503: etcd or the host a call had to reach did not answer.
    FleetUnavailable(String),
    /// 404: `/hosts` on a server that is not part of a fleet.
    FleetOff,
}

/// Seconds a client should wait before retrying a refused create. VMs are freed when
/// builds end, minutes apart; maintenance takes longer.
pub const RETRY_AFTER_CAPACITY_SECS: u64 = 60;
pub const RETRY_AFTER_DRAINING_SECS: u64 = 300;
pub const RETRY_AFTER_PREWARM_SECS: u64 = 60;
/// A host or etcd that did not answer is usually back, or replaced, within seconds.
pub const RETRY_AFTER_FLEET_SECS: u64 = 5;

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
            Self::VmNotFound | Self::RouteNotFound(_) | Self::VmLogNotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::VmLocked(_) | Self::VmOpenError(_) => 409,
            Self::VmrunMissing(..) | Self::VmDeleteError(_) | Self::Internal(_) => 500,
            Self::Unauthorized(_) => 401,
            Self::FleetFull(_) | Self::FleetUnavailable(_) => 503,
            Self::FleetOff => 404,
            Self::CapacityExhausted(_) | Self::Draining { .. } => 503,
            Self::VmDeleting | Self::ImageInUse(_) => 409,
            Self::ImageNotFound => 404,
            Self::TooManyPrewarms { .. } => 429,
            Self::IdempotencyKeyReused(_) => 409,
            Self::DiskFull(_) => 507,
            Self::PoolNotFound(_) => 404,
            Self::PoolFromSettings(_) => 409,
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
            Self::VmLogNotFound(_) => "vm-log-not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::VmLocked(_) => "vm-locked",
            Self::VmOpenError(_) => "vm-open-error",
            Self::VmrunMissing(code, _) => code,
            Self::VmDeleteError(_) => "vm-delete-error",
            Self::Internal(_) => "internal-error",
            Self::Unauthorized(_) => "unauthorized",
            Self::CapacityExhausted(_) => "capacity-exhausted",
            Self::Draining { .. } => "draining",
            Self::VmDeleting => "vm-deleting",
            Self::ImageNotFound => "image-not-found",
            Self::ImageInUse(_) => "image-in-use",
            Self::TooManyPrewarms { .. } => "too-many-prewarms",
            Self::IdempotencyKeyReused(_) => "idempotency-key-reused",
            Self::DiskFull(_) => "disk-full",
            Self::PoolNotFound(_) => "pool-not-found",
            Self::PoolFromSettings(_) => "pool-from-settings",
            Self::FleetFull(_) => "capacity-exhausted",
            Self::FleetUnavailable(_) => "fleet-unavailable",
            Self::FleetOff => "fleet-off",
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
            Self::VmLogNotFound(id) => format!(
                "VM {id} has no vmware.log: VMware writes it when the VM starts, so this VM has not started yet (or its files are gone); GET /vms/{id} says where it is"
            ),
            Self::RouteNotFound(path) => format!(
                "no such endpoint {path:?}; the API has /vms, /images, /pools (each with /:id, /:checksum or /:name below it), /hosts, /drain, /healthz, /metrics and /openapi.json (which describes every path)"
            ),
            Self::MethodNotAllowed { method, allowed } => {
                let (last, first) = allowed.split_last().unwrap_or((&"GET", &[]));
                let choices = if first.is_empty() {
                    last.to_string()
                } else {
                    format!("{} or {last}", first.join(", "))
                };
                format!("method {method} is not allowed here; use {choices}")
            }
            Self::VmLocked(detail) => format!(
                "the virtual machine's files are in use by another process ({detail}); close VMware Fusion's window of this VM or wait for the other operation, then retry. A stale lock after a crash may need manual intervention"
            ),
            Self::VmOpenError(detail) => format!(
                "vmrun cannot open the virtual machine ({detail}); its VMX may be corrupt: manual intervention may be needed"
            ),
            Self::VmrunMissing(_, detail) | Self::VmDeleteError(detail) | Self::Internal(detail) => {
                detail.clone()
            }
            Self::Unauthorized(detail) => detail.clone(),
            Self::CapacityExhausted(shortage) => format!(
                "{shortage}; retry in {RETRY_AFTER_CAPACITY_SECS} s (Retry-After) or use another host"
            ),
            Self::Draining { since } => format!(
                "this host is draining for maintenance since {since} and takes no new VM (existing VMs keep running); use another host, or POST /undrain when the maintenance is over"
            ),
            Self::VmDeleting => {
                "the virtual machine is being destroyed; it cannot be renewed".into()
            }
            Self::ImageNotFound => {
                "no gold image with that checksum is cached; GET /images lists them".into()
            }
            Self::ImageInUse(detail) => detail.clone(),
            Self::TooManyPrewarms { limit } => format!(
                "{limit} pre-warm downloads are running already; retry in {RETRY_AFTER_PREWARM_SECS} s"
            ),
            Self::IdempotencyKeyReused(fields) => format!(
                "a VM with this idempotency key exists and was created with another request ({} differ); use a new key for a different VM, or resend the first request unchanged",
                fields.join(", ")
            ),
            Self::PoolNotFound(name) => format!(
                "no warm pool is named {name:?}; GET /pools lists them, PUT /pools/{name} declares it"
            ),
            Self::PoolFromSettings(name) => format!(
                "the warm pool {name:?} is defined by the server's settings (--pool / OSX_BUILDER_POOL) and cannot be changed or deleted through the API; change the settings and restart the server"
            ),
            Self::DiskFull(detail) => format!(
                "{detail}; the disk of the data folder is full: free space there (GET /images lists cached gold images that DELETE /images/:checksum removes), then retry"
            ),
            Self::FleetFull(why) => format!(
                "{why}; retry in {RETRY_AFTER_CAPACITY_SECS} s (Retry-After), or add hosts to the fleet"
            ),
            Self::FleetUnavailable(why) => format!(
                "{why}; retry in {RETRY_AFTER_FLEET_SECS} s (Retry-After)"
            ),
            Self::FleetOff => "this server is not part of a fleet (it runs without --etcd): it is the only host".into(),
        }
    }

    /// Headers the answer carries besides the JSON body: when to retry a refusal that will
    /// pass later, which scheme a 401 wants (RFC 6750), which methods a 405's path takes.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let retry_after = match self {
            Self::MethodNotAllowed { allowed, .. } => return vec![("Allow", allow(allowed))],
            Self::CapacityExhausted(_) | Self::FleetFull(_) => RETRY_AFTER_CAPACITY_SECS,
            Self::FleetUnavailable(_) => RETRY_AFTER_FLEET_SECS,
            Self::Draining { .. } => RETRY_AFTER_DRAINING_SECS,
            Self::TooManyPrewarms { .. } => RETRY_AFTER_PREWARM_SECS,
            Self::Unauthorized(_) => {
                return vec![("WWW-Authenticate", crate::api::auth::CHALLENGE.to_string())]
            }
            _ => return Vec::new(),
        };
        vec![("Retry-After", retry_after.to_string())]
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

/// The `Allow` value: the methods named, with HEAD after GET (every GET path answers it).
fn allow(methods: &[&str]) -> String {
    let mut all = Vec::with_capacity(methods.len() + 1);
    for method in methods {
        all.push(*method);
        if *method == "GET" {
            all.push("HEAD");
        }
    }
    all.join(", ")
}

impl From<crate::service::Error> for ApiError {
    fn from(err: crate::service::Error) -> Self {
        use crate::service::Error;
        match err {
            Error::Invalid { code, message } => Self::InvalidField { code, message },
            Error::VmNotFound => Self::VmNotFound,
            Error::VmLogNotFound(id) => Self::VmLogNotFound(id),
            Error::VmLocked(detail) => Self::VmLocked(detail),
            Error::HypervisorMissing(code, detail) => Self::VmrunMissing(code, detail),
            Error::DeleteFailed(detail) => Self::VmDeleteError(detail),
            Error::Internal(detail) => Self::Internal(detail),
            Error::CapacityExhausted(shortage) => Self::CapacityExhausted(shortage),
            Error::Draining { since } => Self::Draining { since },
            Error::VmDeleting => Self::VmDeleting,
            Error::ImageNotFound => Self::ImageNotFound,
            Error::ImageInUse(detail) => Self::ImageInUse(detail),
            Error::TooManyPrewarms { limit } => Self::TooManyPrewarms { limit },
            Error::IdempotencyKeyReused(fields) => Self::IdempotencyKeyReused(fields),
            Error::DiskFull(detail) => Self::DiskFull(detail),
            Error::PoolNotFound(name) => Self::PoolNotFound(name),
            Error::PoolFromSettings(name) => Self::PoolFromSettings(name),
        }
    }
}

impl From<crate::fleet::front::FleetError> for ApiError {
    fn from(err: crate::fleet::front::FleetError) -> Self {
        use crate::fleet::front::FleetError;
        match err {
            FleetError::Service(err) => err.into(),
            FleetError::Refused(why) => Self::FleetFull(why.to_string()),
            FleetError::Unavailable(why) => Self::FleetUnavailable(why),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.message())
    }
}

impl std::error::Error for ApiError {}
