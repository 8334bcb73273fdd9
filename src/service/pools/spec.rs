//! What a warm pool keeps: VMs of one image and shape, and how many of them. A create that
//! asks for exactly that shape takes one.

use serde::{Deserialize, Serialize};

use crate::image::ImageSpec;
use crate::vm::{CreateVm, NetworkType, Vm};

/// Most VMs one pool keeps idle: a build Mac runs two macOS VMs (Apple's licence), a Linux
/// host a few dozen at most; a larger number is a typo.
pub const MAX_SIZE: u32 = 64;
/// Longest pool name.
pub const MAX_NAME_LEN: usize = 64;

/// A pool's spec as `PUT /pools/:name` takes it and `pools/<name>.json` keeps it: the
/// fields of a create that decide which VM it gets (as validated for a create), and `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub image: ImageSpec,
    pub cpus: u32,
    pub memory: u32,
    pub network_type: NetworkType,
    pub headless: bool,
    /// Idle VMs kept booted; 0 keeps the pool (and its counters) with no VM.
    pub size: u32,
}

impl PoolSpec {
    /// From a validated create request: its shape, and the pool's size.
    pub fn from_create(create: &CreateVm, size: u32) -> Self {
        Self {
            image: create.image.clone(),
            cpus: create.cpus,
            memory: create.memory,
            network_type: create.network_type,
            headless: create.headless,
            size,
        }
    }

    /// Whether a VM of this pool is what `request` asks for. The image is the same bytes
    /// when its digest is the same, wherever it was downloaded from. Compared in place:
    /// a fleet's front door asks this of every host's pools for each create.
    pub fn matches(&self, request: &CreateVm) -> bool {
        self.makes(
            &request.image,
            request.cpus,
            request.memory,
            request.network_type,
            request.headless,
        )
    }

    /// Whether `vm` is a VM this spec makes (a pool's VM of an older spec is not).
    pub fn made(&self, vm: &Vm) -> bool {
        vm.image.as_ref().is_some_and(|image| {
            self.makes(image, vm.cpus, vm.memory, vm.network_type, vm.headless)
        })
    }

    /// Whether two specs make the same VMs (their sizes aside).
    pub fn same_vms(&self, other: &PoolSpec) -> bool {
        self.makes(
            &other.image,
            other.cpus,
            other.memory,
            other.network_type,
            other.headless,
        )
    }

    fn makes(
        &self,
        image: &ImageSpec,
        cpus: u32,
        memory: u32,
        network_type: NetworkType,
        headless: bool,
    ) -> bool {
        self.image.checksum == image.checksum
            && self.image.checksum_type == image.checksum_type
            && self.cpus == cpus
            && self.memory == memory
            && self.network_type == network_type
            && self.headless == headless
    }

    /// The create the keeper provisions a pool VM with: nothing of a client's (no callback,
    /// key, lease, guestinfo or labels); those come with the create that takes it.
    pub fn request(&self) -> CreateVm {
        CreateVm {
            image: self.image.clone(),
            cpus: self.cpus,
            memory: self.memory,
            network_type: self.network_type,
            headless: self.headless,
            callback_url: None,
            name: None,
            ttl: None,
            guestinfo: Default::default(),
            labels: Default::default(),
            keep: false,
        }
    }
}

/// A pool name: 1 to 64 letters, digits, `.`, `-` or `_`, not starting with `.` (it names a
/// file in the data folder). `Err` says what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a pool name is 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err("a pool name must not start with '.'".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "a pool name is made of letters, digits, '.', '-' and '_', not {bad:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ChecksumType;

    fn spec() -> PoolSpec {
        PoolSpec {
            image: ImageSpec {
                url: "http://127.0.0.1/a.tar.gz".into(),
                checksum: "5cf00d380e28d02f30efaceafef7c7c8bdedae33".into(),
                checksum_type: ChecksumType::Sha1,
            },
            cpus: 2,
            memory: 1024,
            network_type: NetworkType::Nat,
            headless: true,
            size: 2,
        }
    }

    #[test]
    fn a_create_matches_on_digest_and_shape_not_url() {
        let pool = spec();
        let mut request = pool.request();
        assert!(pool.matches(&request));
        request.image.url = "https://mirror.example/a.tar.gz".into();
        request.callback_url = Some("http://127.0.0.1:9/cb".into());
        request.ttl = Some(60);
        assert!(
            pool.matches(&request),
            "url, callback and lease do not matter"
        );
        for change in [
            |r: &mut CreateVm| r.cpus = 4,
            |r: &mut CreateVm| r.memory = 2048,
            |r: &mut CreateVm| r.network_type = NetworkType::Bridged,
            |r: &mut CreateVm| r.headless = false,
            |r: &mut CreateVm| r.image.checksum = "0".repeat(40),
        ] {
            let mut other = pool.request();
            change(&mut other);
            assert!(!pool.matches(&other), "{other:?}");
        }
    }

    #[test]
    fn names_are_safe_file_names() {
        for good in ["macos-13", "a", "darwin_amd64.13", &"x".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
