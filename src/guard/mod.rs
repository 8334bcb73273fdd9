//! What an API client may make the server do, beyond the shape of its request: which local
//! files an image may come from, where a callback may go, what a VMX may reach. The
//! request parsers check syntax; this module checks what the host allows.

pub(crate) mod callback_url;
pub(crate) mod cidr;
pub(crate) mod idempotency;
pub(crate) mod image_url;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

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
    /// The host's kind of VM, known once the hypervisor is: `oci://` images are tart's.
    vm_format: OnceLock<crate::image::VmFormat>,
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
            vm_format: OnceLock::new(),
        })
    }

    pub fn set_listening(&self, addr: SocketAddr) {
        let _ = self.listening.set(addr);
    }

    pub fn listening(&self) -> Option<SocketAddr> {
        self.listening.get().copied()
    }

    /// Tells the guard what VMs the host runs; a second call is ignored.
    pub fn set_vm_format(&self, vm: crate::image::VmFormat) {
        let _ = self.vm_format.set(vm);
    }

    pub fn vm_format(&self) -> crate::image::VmFormat {
        self.vm_format.get().copied().unwrap_or_default()
    }
}
