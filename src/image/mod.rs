//! Gold images: download once, verify, unpack safely, publish atomically, share.
//!
//! Public entry point: `ImageCache::ensure`. Everything else is the pipeline behind it.

pub mod archive;
pub mod cache;
mod checksum;
pub mod download;
pub mod error;
pub mod extract;
pub mod gold;
pub mod gold_locks;
pub mod guard;
mod layout;
pub mod originals;
mod pipeline;
pub mod progress;
pub mod spec;

pub use cache::{DownloadHook, ImageCache, ImageSettings};
pub use checksum::is_any_digest;
pub use download::Location;
pub use error::ImageError;
pub use layout::GoldImage;
pub use progress::{ImagePhase, ImageProgress};
pub use spec::{ChecksumType, ImageSpec};
