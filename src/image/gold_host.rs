//! What the host's hypervisor does for gold images beyond the cache's own folders: pull OCI
//! images (tart does it itself, with its own credentials), remove its own copy of a gold
//! when the image goes, clear what dead processes left holding a gold, and say whether
//! clones read their gold for life. The cache and the eviction speak to this narrow port;
//! [`HypervisorGolds`] is it for any [`Hypervisor`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::image::error::ImageError;
use crate::image::GoldImage;
use crate::sys::cancel::Cancel;

pub trait GoldHost: Send + Sync {
    /// Pulls `repository` (`host/path`) pinned to the sha256 `digest` (hex) and leaves the
    /// gold VM's files in `into` (an empty staging folder).
    fn pull_oci(
        &self,
        repository: &str,
        digest: &str,
        into: &Path,
        cancel: &Cancel,
    ) -> Result<(), ImageError>;

    /// Whether a clone reads its gold for as long as it lives (VMware's linked clones).
    fn clones_need_gold(&self) -> bool;

    /// Removes the hypervisor's own copy of the gold image `checksum` (tart's
    /// `osxb-gold-<checksum>`), before its folder goes.
    fn remove_gold(&self, checksum: &str) -> Result<(), String>;

    /// Removes what dead processes left holding the gold VM (VMware's lock folders); each
    /// lock left in place, a live one, with why.
    fn remove_dead_locks(&self, gold: &GoldImage) -> Vec<(PathBuf, String)> {
        let _ = gold;
        Vec::new()
    }

    /// Removes the hypervisor's own copies of gold images not in `published`, left by a
    /// crash; returns what it removed. Run at start only, before any gold is made.
    fn remove_stray_golds(&self, published: &[String]) -> Vec<String> {
        let _ = published;
        Vec::new()
    }
}

/// The gold-image part of a [`Hypervisor`].
pub struct HypervisorGolds(pub Arc<dyn Hypervisor>);

impl GoldHost for HypervisorGolds {
    fn pull_oci(
        &self,
        repository: &str,
        digest: &str,
        into: &Path,
        cancel: &Cancel,
    ) -> Result<(), ImageError> {
        self.0
            .pull_gold(repository, digest, into, cancel)
            .map_err(|err| {
                let reference = format!("{repository}@sha256:{digest}");
                match err {
                    HypervisorError::Cancelled { .. } => ImageError::Cancelled,
                    HypervisorError::Refused { code, message } => ImageError::Pull {
                        reference,
                        code,
                        message,
                    },
                    HypervisorError::NotFound { .. } | HypervisorError::Timeout { .. } => {
                        ImageError::Pull {
                            reference,
                            code: err.code(),
                            message: err.to_string(),
                        }
                    }
                    other => ImageError::Pull {
                        reference,
                        code: "image-pull-failed",
                        message: other.to_string(),
                    },
                }
            })
    }

    fn clones_need_gold(&self) -> bool {
        self.0.clones_need_gold()
    }

    fn remove_gold(&self, checksum: &str) -> Result<(), String> {
        self.0.remove_gold(checksum).map_err(|e| e.to_string())
    }

    fn remove_stray_golds(&self, published: &[String]) -> Vec<String> {
        self.0.remove_stray_golds(published)
    }

    fn remove_dead_locks(&self, gold: &GoldImage) -> Vec<(PathBuf, String)> {
        self.0.remove_dead_gold_locks(gold.vm())
    }
}
