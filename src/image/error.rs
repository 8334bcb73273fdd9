//! Why a gold image could not be made ready, as one error type shared by every VM waiting on
//! the same download.
//!
//! Each waiter gets its own copy of the one failure, so the type is `Clone`: the error types
//! it wraps that are not (`io::Error`, `ExtractError`) are held behind an `Arc`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::image::extract::ExtractError;
use crate::image::spec::ChecksumType;

/// The formats `detect` accepts, as a create request's author would name them.
pub const ACCEPTED_FORMATS: &str = "tar, tar.gz, tar.bz2 (tar.bzip2) and zip";

#[derive(Clone, Debug)]
pub enum ImageError {
    /// The checksum is not the hex digest of its type; it names the gold folder, so it is
    /// checked before it ever reaches the file system.
    InvalidChecksum {
        checksum: String,
        checksum_type: ChecksumType,
    },
    /// A URL scheme this build cannot fetch.
    UnsupportedUrl { url: String, reason: String },
    /// The server answered with an error status.
    HttpStatus { url: String, status: u16 },
    /// The TLS connection to the image server failed: its certificate is not trusted, or
    /// the handshake did not complete.
    Tls {
        url: String,
        host: String,
        reason: String,
    },
    /// No connection, or a protocol error before the body.
    Connection { url: String, detail: String },
    /// A file:// image that cannot be read.
    FileUnreadable {
        url: String,
        path: PathBuf,
        source: Arc<io::Error>,
    },
    /// The connection kept dropping mid-body and the resumes allowed ran out.
    ResumesExhausted {
        url: String,
        received: u64,
        total: Option<u64>,
        resumes: u32,
        detail: String,
    },
    /// No byte arrived for the whole read timeout.
    Timeout {
        url: String,
        after: Duration,
        received: u64,
    },
    /// The transfer went on, but slower than the minimum rate over a whole window.
    TooSlow {
        url: String,
        /// Bytes a second asked for, and what the window saw.
        min_rate: u64,
        rate: u64,
        window: Duration,
        received: u64,
    },
    /// More than this many bytes follow the archive's end: nothing a packer adds.
    TrailingData { url: String, limit: u64 },
    ChecksumMismatch {
        url: String,
        checksum_type: ChecksumType,
        expected: String,
        actual: String,
    },
    /// The first bytes are none of the accepted archive formats; `known` names the format
    /// they are, when it is a known one (xz, zstd, a bare .vmdk...).
    UnsupportedFormat {
        url: String,
        known: Option<&'static str>,
    },
    /// The archive could not be unpacked (corrupt, hostile, no .vmx...).
    Extract {
        url: String,
        source: Arc<ExtractError>,
    },
    /// Free space is known to be short before anything is written.
    DiskFull {
        dir: PathBuf,
        /// What the image was known to need, when the shortage was found before writing.
        needed: Option<u64>,
        available: u64,
    },
    /// A gold folder exists but does not hold exactly one VM, so it cannot be trusted.
    GoldInvalid {
        dir: PathBuf,
        found: Vec<PathBuf>,
        /// What it should hold (`VmFormat::wanted`).
        wanted: &'static str,
    },
    /// `--strict-vmx`: the image's VMX has lines the allow-list refuses.
    VmxUnsafe { url: String, lines: Vec<String> },
    /// The hypervisor could not pull an OCI image, with its code (`image-pull-failed`,
    /// `image-digest-mismatch` for content other than the digest names, `tart-timeout`...)
    /// and its words.
    Pull {
        reference: String,
        code: &'static str,
        message: String,
    },
    /// The waiter gave up (its VM was deleted or the server is stopping); the download
    /// itself goes on for the cache.
    Cancelled,
    Io {
        path: PathBuf,
        source: Arc<io::Error>,
    },
    /// The download thread died without a result (a bug).
    Internal { detail: String },
}

impl ImageError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidChecksum { .. } => "invalid-checksum",
            Self::UnsupportedUrl { .. } => "image-url-unsupported",
            Self::HttpStatus { .. }
            | Self::Connection { .. }
            | Self::FileUnreadable { .. }
            | Self::ResumesExhausted { .. } => "image-download-failed",
            Self::Tls { .. } => "image-tls-error",
            Self::Timeout { .. } | Self::TooSlow { .. } => "image-timeout",
            Self::TrailingData { .. } => "archive-trailing-data",
            Self::ChecksumMismatch { .. } => "checksum-mismatch",
            Self::UnsupportedFormat { .. } => "image-unsupported-format",
            Self::Extract { source, .. } => source.code(),
            Self::DiskFull { .. } => "disk-full",
            Self::GoldInvalid { .. } => "gold-invalid",
            Self::VmxUnsafe { .. } => "image-vmx-unsafe",
            Self::Pull { code, .. } => code,
            Self::Cancelled => "image-cancelled",
            Self::Io { .. } => "image-io",
            Self::Internal { .. } => "internal-error",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True when asking again later may succeed with nothing changed on the request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connection { .. }
                | Self::ResumesExhausted { .. }
                | Self::Timeout { .. }
                | Self::TooSlow { .. }
                | Self::DiskFull { .. }
                | Self::Cancelled
        ) || matches!(self, Self::HttpStatus { status, .. } if *status >= 500)
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidChecksum {
                checksum,
                checksum_type,
            } => write!(
                f,
                "image checksum `{checksum}` is not a {} digest: it must be {} lowercase hex \
                 digits; fix image.checksum or image.checksum_type in the create request",
                checksum_type.as_str(),
                checksum_type.hex_len()
            ),
            Self::UnsupportedUrl { url, reason } => write!(
                f,
                "cannot fetch the image from {url}: {reason}; use an http://, https:// or \
                 file:// URL (or, on a tart host, oci://) in the create request"
            ),
            Self::HttpStatus { url, status } => write!(
                f,
                "downloading the image failed: the server answered HTTP {status} for {url}; {}",
                if *status >= 500 {
                    "the image server failed, try again later or check its logs"
                } else {
                    "check the image URL in the create request"
                }
            ),
            Self::Tls { url, host, reason } => write!(
                f,
                "cannot download the image from {url}: the TLS connection to {host} failed: \
                 {reason}; if {host} uses an internal CA or a self-signed certificate, give \
                 that certificate with --ca-file / OSX_BUILDER_CA_FILE (or install it in the \
                 system's trust store) and restart, otherwise check the image URL's host name"
            ),
            Self::Connection { url, detail } => write!(
                f,
                "downloading the image from {url} failed: {detail}; check that the image \
                 server is reachable from this Mac and the URL in the create request"
            ),
            // One message for missing, unreadable and not-a-file: which one it is tells a
            // client about the host's files. The log has the system's words.
            Self::FileUnreadable { url, .. } => write!(
                f,
                "cannot read the local image {url}: it does not exist, is not a regular file or \
                 the server may not read it; check the file URL in the create request"
            ),
            Self::ResumesExhausted {
                url,
                received,
                total,
                resumes,
                detail,
            } => write!(
                f,
                "downloading the image from {url} failed: the connection dropped at byte \
                 {received} of {} after {resumes} resumes ({detail}); check the network and \
                 the image server, then try again",
                total.map_or_else(|| "an unknown size".to_owned(), |t| t.to_string())
            ),
            Self::Timeout {
                url,
                after,
                received,
            } => write!(
                f,
                "downloading the image from {url} stalled: no data for {} s after {received} \
                 bytes; check the image server and the network, then try again",
                after.as_secs_f64()
            ),
            Self::ChecksumMismatch {
                url,
                checksum_type,
                expected,
                actual,
            } => write!(
                f,
                "the image downloaded from {url} has {} {actual}, but the create request \
                 expects {expected}; check the image URL and checksum in the create request \
                 (nothing was kept)",
                checksum_type.as_str()
            ),
            Self::UnsupportedFormat { url, known } => {
                write!(
                    f,
                    "the image at {url} is not an archive this server unpacks"
                )?;
                if let Some(known) = known {
                    write!(f, " (it is {known})")?;
                }
                write!(
                    f,
                    "; the accepted formats are {ACCEPTED_FORMATS}: check the image URL in \
                     the create request or repack the image"
                )
            }
            Self::Extract { url, source } => write!(f, "image {url}: {source}"),
            Self::DiskFull {
                dir,
                needed,
                available,
            } => {
                match needed {
                    Some(needed) => write!(
                        f,
                        "not enough free space in {}: the image needs at least {needed} bytes \
                         and {available} are free",
                        dir.display()
                    )?,
                    None => write!(
                        f,
                        "the disk holding {} filled up while the image was written ({available} \
                         bytes free)",
                        dir.display()
                    )?,
                }
                f.write_str("; free disk space or move --data-dir to a larger volume")
            }
            Self::GoldInvalid { dir, found, wanted } => {
                write!(
                    f,
                    "the gold folder {} does not hold {wanted} (found {}",
                    dir.display(),
                    found.len()
                )?;
                if !found.is_empty() {
                    let names: Vec<String> =
                        found.iter().map(|p| p.display().to_string()).collect();
                    write!(f, ": {}", names.join(", "))?;
                }
                f.write_str(
                    "); fix it by hand, or remove it once no VM is a linked clone of it \
                     (GET /images lists its users), so that the image is downloaded again",
                )
            }
            Self::VmxUnsafe { url, lines } => {
                write!(f, "image {url}: ")?;
                f.write_str(&crate::hypervisor::vmrun::vmx_policy::unsafe_vmx_message(
                    lines,
                ))
            }
            Self::Pull {
                reference, message, ..
            } => write!(f, "cannot pull the OCI image {reference}: {message}"),
            Self::Cancelled => f.write_str(
                "the image download was cancelled (DELETE /images/:checksum, or every VM that \
                 waited for it was deleted)",
            ),
            Self::TooSlow {
                url,
                min_rate,
                rate,
                window,
                received,
            } => write!(
                f,
                "downloading {url} went at {rate} bytes/s over {} s, below the minimum of \
                 {min_rate} bytes/s (--download-min-rate), after {received} bytes; check the \
                 image server or its network, or lower the minimum",
                window.as_secs()
            ),
            Self::TrailingData { url, limit } => write!(
                f,
                "{url}: more than {limit} bytes follow the end of the archive; it is not the \
                 image its checksum names (or was damaged in transit): check the URL"
            ),
            Self::Io { path, source } => write!(
                f,
                "{}: {source}; check the permissions and free space of the data folder",
                path.display()
            ),
            Self::Internal { detail } => write!(f, "internal error: {detail} (this is a bug)"),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Extract { source, .. } => Some(source.as_ref()),
            Self::Io { source, .. } | Self::FileUnreadable { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_name_the_status_and_url() {
        let e = ImageError::HttpStatus {
            url: "http://mirror/macos.tar.gz".into(),
            status: 404,
        };
        assert_eq!(e.code(), "image-download-failed");
        let text = e.to_string();
        assert!(text.contains("404"), "{text}");
        assert!(text.contains("http://mirror/macos.tar.gz"), "{text}");
        assert!(!e.is_transient());
        let e = ImageError::HttpStatus {
            url: "u".into(),
            status: 503,
        };
        assert!(e.is_transient());
    }

    #[test]
    fn mismatch_names_both_digests_and_the_algorithm() {
        let e = ImageError::ChecksumMismatch {
            url: "u".into(),
            checksum_type: ChecksumType::Sha1,
            expected: "aaaa".into(),
            actual: "bbbb".into(),
        };
        assert_eq!(e.code(), "checksum-mismatch");
        let text = e.to_string();
        assert!(text.contains("sha1 bbbb"), "{text}");
        assert!(text.contains("expects aaaa"), "{text}");
    }

    #[test]
    fn unsupported_format_lists_the_accepted_ones() {
        let e = ImageError::UnsupportedFormat {
            url: "u".into(),
            known: Some("xz"),
        };
        let text = e.to_string();
        assert!(text.contains("(it is xz)"), "{text}");
        assert!(text.contains(ACCEPTED_FORMATS), "{text}");
    }
}
