//! What went wrong in the core, one variant per thing a caller tells apart. How each is
//! answered (status, code, headers, the words a client reads) is the API's business:
//! `api::error` maps them, in one place.

use std::fmt;

use crate::vm::capacity::Shortage;
use crate::vm::VmId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A value given cannot be used. `code` names the field as the API's codes do
    /// (`invalid-<field>`): the field is what went wrong, and its name is the same here.
    Invalid { code: &'static str, message: String },
    /// No VM has this id.
    VmNotFound,
    /// The VM exists but has no `vmware.log` (never started, or its files are gone).
    VmLogNotFound(VmId),
    /// The hypervisor says the VM's files are in use.
    VmLocked(String),
    /// The hypervisor is not installed where the settings say.
    HypervisorMissing(String),
    /// Destroying the VM failed for another reason.
    DeleteFailed(String),
    /// A fault of this server (a thread that cannot start, a folder it cannot change).
    Internal(String),
    /// The host runs as many VMs as allowed, or its disk is below the floor.
    CapacityExhausted(Shortage),
    /// The host is draining for maintenance (since this time) and takes no new VM.
    Draining { since: String },
    /// A renew or a second delete of a VM that is being destroyed.
    VmDeleting,
    /// No gold image has this checksum.
    ImageNotFound,
    /// VMs are linked clones of the image, or it is being downloaded: why.
    ImageInUse(String),
    /// This many pre-warm downloads run already.
    TooManyPrewarms { limit: usize },
    /// The idempotency key came with another request; the fields that differ.
    IdempotencyKeyReused(Vec<&'static str>),
    /// The data folder's disk is full: nothing was recorded.
    DiskFull(String),
    /// No warm pool has this name.
    PoolNotFound(String),
    /// The pool is defined by the server's settings (`--pool`), which only a restart with
    /// other settings changes.
    PoolFromSettings(String),
}

impl From<crate::image::gold::GoldError> for Error {
    fn from(err: crate::image::gold::GoldError) -> Self {
        use crate::image::gold::GoldError;
        match err {
            GoldError::ImageNotFound => Self::ImageNotFound,
            GoldError::ImageInUse(why) => Self::ImageInUse(why),
            GoldError::CapacityExhausted(shortage) => Self::CapacityExhausted(shortage),
            GoldError::TooManyPrewarms { limit } => Self::TooManyPrewarms { limit },
            GoldError::Internal(why) => Self::Internal(why),
        }
    }
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid { message, .. } => write!(f, "{message}"),
            Self::VmNotFound => write!(f, "no such VM"),
            Self::VmLogNotFound(id) => write!(f, "VM {id} has no vmware.log"),
            Self::VmLocked(detail) => write!(f, "the VM's files are in use: {detail}"),
            Self::HypervisorMissing(detail)
            | Self::DeleteFailed(detail)
            | Self::Internal(detail)
            | Self::ImageInUse(detail)
            | Self::DiskFull(detail) => write!(f, "{detail}"),
            Self::CapacityExhausted(shortage) => write!(f, "{shortage}"),
            Self::Draining { since } => write!(f, "draining since {since}"),
            Self::VmDeleting => write!(f, "the VM is being destroyed"),
            Self::ImageNotFound => write!(f, "no such gold image"),
            Self::TooManyPrewarms { limit } => write!(f, "{limit} pre-warm downloads run already"),
            Self::PoolNotFound(name) => write!(f, "no warm pool is named {name:?}"),
            Self::PoolFromSettings(name) => {
                write!(f, "the warm pool {name:?} comes from the settings (--pool)")
            }
            Self::IdempotencyKeyReused(fields) => write!(
                f,
                "the idempotency key names a VM created with another request ({} differ)",
                fields.join(", ")
            ),
        }
    }
}

impl std::error::Error for Error {}
