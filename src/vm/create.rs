//! What a create asks for, validated: the API parses a body into it (`api::create_body`),
//! a pool's spec is one, and the service records a VM from it.

use crate::image::ImageSpec;
use crate::vm::guestinfo::GuestInfo;
use crate::vm::labels::Labels;
use crate::vm::NetworkType;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateVm {
    pub image: ImageSpec,
    pub cpus: u32,
    pub memory: u32,
    pub network_type: NetworkType,
    pub headless: bool,
    pub callback_url: Option<String>,
    /// Idempotency key, from the `name` field or the `Idempotency-Key` header.
    pub name: Option<String>,
    /// Lease in seconds; `None` (field absent or 0) means the server's default.
    pub ttl: Option<u64>,
    /// Secret: never recorded; see [`crate::vm::guestinfo`].
    pub guestinfo: GuestInfo,
    pub labels: Labels,
    /// `?keep=true`: a failure leaves the VM running for inspection.
    pub keep: bool,
}
