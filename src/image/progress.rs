//! How far one image's download has got, written by its download thread and read by every
//! VM waiting on it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use serde::Serialize;

/// The step the pipeline is in. The tar family is unpacked while it downloads, so it goes
/// `downloading` → `verifying` → `publishing`; zip needs the whole file first, so it goes
/// `downloading` → `verifying` → `unpacking` → `publishing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagePhase {
    /// Connecting and receiving the archive (and, for the tar family, unpacking it as it
    /// arrives).
    Downloading,
    /// Comparing the digest of the archive with the expected checksum.
    Verifying,
    /// Unpacking a downloaded, verified zip file.
    Unpacking,
    /// Moving the finished folder into place.
    Publishing,
    /// Waiting for one of the `--max-downloads` slots.
    #[serde(rename = "queued-download")]
    QueuedDownload,
}

impl ImagePhase {
    pub(crate) const ALL: [ImagePhase; 5] = [
        Self::Downloading,
        Self::Verifying,
        Self::Unpacking,
        Self::Publishing,
        Self::QueuedDownload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Unpacking => "unpacking",
            Self::Publishing => "publishing",
            Self::QueuedDownload => "queued-download",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ImageProgress {
    pub phase: ImagePhase,
    /// Bytes of the archive received so far (starts again from 0 if the download had to
    /// restart from scratch).
    pub bytes_done: u64,
    /// The archive's size, when the server said (Content-Length).
    pub bytes_total: Option<u64>,
}

const UNKNOWN_TOTAL: u64 = u64::MAX;

/// Lock-free so that counting bytes costs the download nothing.
pub(crate) struct ProgressCell {
    phase: AtomicU8,
    pub(crate) bytes_done: AtomicU64,
    bytes_total: AtomicU64,
}

impl ProgressCell {
    /// A new download is queued: it reads `downloading` only once its thread holds one of
    /// the `--max-downloads` slots, so that no waiter is told it downloads while it waits.
    pub(crate) fn new() -> Self {
        let cell = Self {
            phase: AtomicU8::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(UNKNOWN_TOTAL),
        };
        cell.set_phase(ImagePhase::QueuedDownload);
        cell
    }

    pub(crate) fn set_phase(&self, phase: ImagePhase) {
        let index = ImagePhase::ALL
            .iter()
            .position(|&p| p == phase)
            .unwrap_or(0);
        self.phase.store(index as u8, Ordering::Relaxed);
    }

    pub(crate) fn set_total(&self, total: Option<u64>) {
        self.bytes_total
            .store(total.unwrap_or(UNKNOWN_TOTAL), Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ImageProgress {
        let phase = ImagePhase::ALL
            .get(usize::from(self.phase.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(ImagePhase::Downloading);
        let total = self.bytes_total.load(Ordering::Relaxed);
        ImageProgress {
            phase,
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: (total != UNKNOWN_TOTAL).then_some(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_updates() {
        let cell = ProgressCell::new();
        assert_eq!(
            cell.snapshot(),
            ImageProgress {
                phase: ImagePhase::QueuedDownload,
                bytes_done: 0,
                bytes_total: None
            }
        );
        cell.set_total(Some(1000));
        cell.bytes_done.fetch_add(10, Ordering::Relaxed);
        cell.set_phase(ImagePhase::Unpacking);
        assert_eq!(
            cell.snapshot(),
            ImageProgress {
                phase: ImagePhase::Unpacking,
                bytes_done: 10,
                bytes_total: Some(1000)
            }
        );
    }

    #[test]
    fn phases_serialize_lowercase() {
        for phase in ImagePhase::ALL {
            assert_eq!(
                serde_json::to_string(&phase).unwrap(),
                format!("\"{}\"", phase.as_str())
            );
        }
    }
}
