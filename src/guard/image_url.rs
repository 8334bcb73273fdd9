//! `file://` image URLs read the host's files: only under `--file-image-dir` folders.
//! `oci://` images are pulled by tart: only on a tart host, and only plain registry names.

use std::path::Path;

use super::Guard;
use crate::image::{Location, VmFormat};
use crate::service::Error;

impl Guard {
    /// Refuses a local image outside the allowed folders (after `..` and symlinks are
    /// resolved). The message is the same whether the file exists or not.
    pub fn check_image_url(&self, url: &str) -> Result<(), Error> {
        let path = match Location::parse(url) {
            Ok(Location::File(path)) => path,
            Ok(Location::Oci(_)) if self.vm_format() != VmFormat::Tart => {
                return Err(Error::invalid(
                    "invalid-image-url",
                    "oci:// images are pulled by tart, on Apple Silicon Macs, and this server runs VMware: give an http://, https:// or file:// archive of the VM",
                ))
            }
            Err(e) if url.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("oci://")) => {
                return Err(Error::invalid("invalid-image-url", e.to_string()))
            }
            _ => return Ok(()),
        };
        if self.file_image_dirs.is_empty() {
            return Err(Error::invalid(
                "invalid-image-url",
                "file:// image URLs are off on this server: serve the image over http://, or start the server with --file-image-dir DIR (OSX_BUILDER_FILE_IMAGE_DIR) to allow local images under DIR",
            ));
        }
        let resolved =
            crate::hypervisor::vmrun::vmx_policy::resolve(Path::new("/"), &path.to_string_lossy());
        if self
            .file_image_dirs
            .iter()
            .any(|dir| resolved.starts_with(dir))
        {
            return Ok(());
        }
        let dirs: Vec<String> = self
            .file_image_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(Error::invalid(
            "invalid-image-url",
            format!(
                "image.url names a local file outside the folders --file-image-dir allows ({}); move the image there or add its folder with --file-image-dir",
                dirs.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(guard: &Guard, url: &str) -> Option<String> {
        match guard.check_image_url(url) {
            Ok(()) => None,
            Err(Error::Invalid { code, message }) => Some(format!("{code}: {message}")),
            Err(other) => Some(other.to_string()),
        }
    }

    #[test]
    fn oci_images_only_on_a_tart_host_and_only_plain_references() {
        let url = "oci://ghcr.io/cirruslabs/macos-sequoia-base:latest";
        let vmware = Guard::default();
        let why = refused(&vmware, url).unwrap();
        assert!(why.starts_with("invalid-image-url"), "{why}");
        assert!(why.contains("this server runs VMware"), "{why}");

        let tart = Guard::default();
        tart.set_vm_format(VmFormat::Tart);
        assert_eq!(refused(&tart, url), None);
        let why = refused(&tart, "oci://me:token@ghcr.io/org/img:1").unwrap();
        assert!(why.contains("credentials"), "{why}");
        // http(s) archives stay as they are on either.
        assert_eq!(refused(&tart, "http://mirror/macos.tar.gz"), None);
    }
}
