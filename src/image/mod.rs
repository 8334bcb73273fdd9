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
pub(crate) mod gold_locks;
pub(crate) mod guard;
mod layout;
pub(crate) mod originals;
mod pipeline;
pub(crate) mod progress;
pub(crate) mod spec;

pub use cache::{DownloadHook, ImageCache, ImageSettings};
pub use checksum::is_any_digest;
pub use download::Location;
pub use error::ImageError;
pub use layout::GoldImage;
pub use progress::{ImagePhase, ImageProgress};
pub use spec::{ChecksumType, ImageSpec};
