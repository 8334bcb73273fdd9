//! `file://` image URLs read the host's files: only under `--file-image-dir` folders.

use std::path::Path;

use super::Guard;
use crate::image::Location;
use crate::service::Error;

impl Guard {
    /// Refuses a local image outside the allowed folders (after `..` and symlinks are
    /// resolved). The message is the same whether the file exists or not.
    pub fn check_image_url(&self, url: &str) -> Result<(), Error> {
        let Ok(Location::File(path)) = Location::parse(url) else {
            return Ok(());
        };
        if self.file_image_dirs.is_empty() {
            return Err(Error::invalid(
                "invalid-image-url",
                "file:// image URLs are off on this server: serve the image over http://, or start the server with --file-image-dir DIR (OSX_BUILDER_FILE_IMAGE_DIR) to allow local images under DIR",
            ));
        }
        let resolved =
            crate::hypervisor::vmx_policy::resolve(Path::new("/"), &path.to_string_lossy());
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
