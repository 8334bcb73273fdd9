//! What a gold image must hold, by the host's hypervisor: a VMware VM (one `.vmx`) or a tart
//! VM folder (`config.json`, `disk.img` and `nvram.bin` side by side). The cache is told
//! which when it is built; it never asks the hypervisor itself.

use std::path::Path;

/// The files of a tart VM folder; a folder missing one of them is not a VM (tart's `list`
/// skips it).
pub const TART_FILES: [&str; 3] = ["config.json", "disk.img", "nvram.bin"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmFormat {
    /// VMware Fusion or Workstation: a VM is its `.vmx` and the files it names.
    #[default]
    Vmware,
    /// tart (Apple Silicon): a VM is a folder of [`TART_FILES`].
    Tart,
}

impl VmFormat {
    /// The format of the hypervisor named by `Hypervisor::kind()`.
    pub fn for_hypervisor(kind: &str) -> Self {
        match kind {
            "tart" => Self::Tart,
            _ => Self::Vmware,
        }
    }

    /// What an image must hold, as error messages say it.
    pub fn wanted(self) -> &'static str {
        match self {
            Self::Vmware => "exactly one .vmx",
            Self::Tart => "exactly one tart VM folder (config.json, disk.img and nvram.bin)",
        }
    }
}

/// Which of [`TART_FILES`] `name` is, as a bit (AppleDouble companions `._config.json`
/// and anything under `__MACOSX/` are not).
pub fn tart_file_bit(rel: &Path) -> Option<u8> {
    if rel.components().any(|c| c.as_os_str() == "__MACOSX") {
        return None;
    }
    let name = rel.file_name()?;
    TART_FILES.iter().position(|f| name == *f).map(|i| 1u8 << i)
}

/// All three files.
pub const TART_COMPLETE: u8 = 0b111;

/// "config.json and disk.img" for the files of `mask`.
pub fn tart_file_names(mask: u8) -> String {
    let names: Vec<&str> = TART_FILES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, f)| *f)
        .collect();
    match names.as_slice() {
        [] => "none of them".to_owned(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tart_files_by_exact_name_outside_macosx() {
        assert_eq!(tart_file_bit(Path::new("vm/config.json")), Some(1));
        assert_eq!(tart_file_bit(Path::new("disk.img")), Some(2));
        assert_eq!(tart_file_bit(Path::new("a/b/c/nvram.bin")), Some(4));
        assert_eq!(tart_file_bit(Path::new("vm/._config.json")), None);
        assert_eq!(tart_file_bit(Path::new("__MACOSX/vm/disk.img")), None);
        assert_eq!(tart_file_bit(Path::new("vm/disk.img.bak")), None);
        assert_eq!(tart_file_names(0b011), "config.json and disk.img");
        assert_eq!(
            tart_file_names(0b111),
            "config.json, disk.img and nvram.bin"
        );
        assert_eq!(tart_file_names(0b100), "nvram.bin");
        assert_eq!(VmFormat::for_hypervisor("tart"), VmFormat::Tart);
        assert_eq!(VmFormat::for_hypervisor("vmware"), VmFormat::Vmware);
    }
}
