//! Gold images: download once, verify, unpack safely, publish atomically, share.
//!
//! Public entry point: `ImageCache::ensure`. Everything else is the pipeline behind it.

pub mod archive;
pub mod extract;
pub mod spec;

pub use spec::{ChecksumType, ImageSpec};
