//! What an API client may make the server do, beyond the shape of its request: which local
//! files an image may come from, where a callback may go, what a VMX may reach. The
//! request parsers check syntax; this module checks what the host allows.

pub(crate) mod callback_url;
pub(crate) mod cidr;
pub(crate) mod idempotency;
pub(crate) mod image_url;
pub(crate) mod vmx_policy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::hypervisor::vmx::Vmx;
use cidr::Cidr;

/// The operator's answers to "what may a client reach".
#[derive(Debug, Default)]
pub struct Guard {
    /// Folders (canonical) that `file://` image URLs may read from; none: no `file://`.
    pub file_image_dirs: Vec<PathBuf>,
    /// Networks callbacks may go to; empty: anywhere but this server.
    pub callback_allow: Vec<Cidr>,
    /// Refuse an image whose VMX has lines the allow-list would remove.
    pub strict_vmx: bool,
    /// Where this server listens, known once it is bound.
    listening: OnceLock<SocketAddr>,
}

impl Guard {
    pub fn new(
        file_image_dirs: &[PathBuf],
        callback_allow: Vec<Cidr>,
        strict_vmx: bool,
    ) -> Result<Self, String> {
        let dirs = file_image_dirs
            .iter()
            .map(|dir| {
                std::fs::canonicalize(dir).map_err(|e| {
                    format!(
                        "--file-image-dir {}: {e}; name an existing folder",
                        dir.display()
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            file_image_dirs: dirs,
            callback_allow,
            strict_vmx,
            listening: OnceLock::new(),
        })
    }

    pub fn set_listening(&self, addr: SocketAddr) {
        let _ = self.listening.set(addr);
    }

    pub fn listening(&self) -> Option<SocketAddr> {
        self.listening.get().copied()
    }
}

/// What the allow-list did to a VMX.
pub enum VmxVerdict {
    /// Lines removed (empty when the VMX was clean).
    Cleaned(Vec<String>),
    /// `--strict-vmx` and lines that would have been removed.
    Refused(Vec<String>),
}

/// The lines of the VMX at `vmx_path` that the allow-list refuses: files may be under
/// `own` or, for a linked clone, under its gold folder `parent`.
pub fn inspect_vmx(
    vmx_path: &Path,
    own: &Path,
    parent: Option<&Path>,
) -> Result<(Vmx, Vec<vmx_policy::Finding>), String> {
    let bytes = std::fs::read(vmx_path).map_err(|e| e.to_string())?;
    let vmx = Vmx::parse(&bytes).map_err(|e| e.to_string())?;
    let dir = vmx_path.parent().unwrap_or(Path::new("/"));
    let findings = vmx_policy::check(&vmx, dir, &vmx_policy::Allowed { own, parent });
    Ok((vmx, findings))
}

/// Checks a clone's VMX and removes what the allow-list refuses, unless `strict` (then
/// nothing is written).
pub fn enforce_vmx(
    vmx_path: &Path,
    parent: Option<&Path>,
    strict: bool,
) -> Result<VmxVerdict, String> {
    let own = vmx_path.parent().unwrap_or(Path::new("/"));
    let (mut vmx, findings) = inspect_vmx(vmx_path, own, parent)?;
    let lines: Vec<String> = findings.iter().map(vmx_policy::Finding::line).collect();
    if findings.is_empty() {
        return Ok(VmxVerdict::Cleaned(lines));
    }
    if strict {
        return Ok(VmxVerdict::Refused(lines));
    }
    vmx_policy::remove(&mut vmx, &findings);
    crate::sys::fsutil::write_atomic(vmx_path, &vmx.to_bytes()).map_err(|e| e.to_string())?;
    Ok(VmxVerdict::Cleaned(lines))
}

/// The message of `image-vmx-unsafe`.
pub fn unsafe_vmx_message(lines: &[String]) -> String {
    format!(
        "the image's VMX has {} line(s) that reach outside the VM (refused by --strict-vmx): {}; remove them from the image, or run the server without --strict-vmx to have them removed from each clone",
        lines.len(),
        lines.join("; ")
    )
}
