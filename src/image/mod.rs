//! Gold images: download once, verify, unpack safely, publish atomically, share.
//!
//! Public entry point: `ImageCache::ensure`. Everything else is the pipeline behind it.

pub mod archive;
pub(crate) mod cache;
mod checksum;
pub(crate) mod download;
pub(crate) mod error;
pub mod extract;
pub(crate) mod gold;
pub mod gold_host;
pub(crate) mod gold_locks;
pub(crate) mod guard;
mod layout;
pub mod oci;
pub mod oci_reference;
pub(crate) mod originals;
mod pipeline;
pub(crate) mod progress;
pub(crate) mod spec;
pub mod vm_format;

pub use cache::{DownloadHook, ImageCache, ImageSettings};
pub use checksum::is_any_digest;
pub use download::Location;
pub use error::ImageError;
pub use gold_host::{GoldHost, HypervisorGolds};
pub use layout::GoldImage;
pub use progress::{ImagePhase, ImageProgress};
pub use spec::{ChecksumType, ImageSpec};
pub use vm_format::VmFormat;
