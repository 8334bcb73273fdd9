//! What the fleet keeps in etcd, under `--etcd-prefix`:
//! - `hosts/<name>`: a [`HostRecord`], on the host's own lease (gone when the host is);
//! - `slots/<name>`: the VM ids placed on that host ([`Slots`]), changed only by
//!   compare-and-swap, so that two front doors never both take its last place;
//! - `vms/<id>`: the fleet's directory ([`DirEntry`]): owner and last VM object, without a
//!   lease, so a dead host's VMs can still be answered for (and a tombstone when a client
//!   deletes one, until its host comes back and destroys it);
//! - `idempotency/<sha256 of the caller's credential and the key>`: which host a client's
//!   idempotency key went to, per credential, so two tokens' keys never meet;
//! - `lost/<name>/<lease>`: the marker one survivor creates to handle a host's death.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::pools::spec::PoolSpec;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub url: String,
    pub hypervisor: String,
    /// 0: no limit.
    pub max_vms: u32,
    /// VMs this host has (of any status, as admission counts them).
    pub vms: u64,
    /// Checksums of the gold images it holds, ready to clone.
    pub images: Vec<String>,
    #[serde(default)]
    pub pools: Vec<PoolIdle>,
    pub draining: bool,
    /// Bytes an image download may take on its disk before `--min-free-disk`, in whole GiB
    /// (see [`crate::service::Service::disk_room`]); `None` when unknown (or an older host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_room: Option<u64>,
    pub version: String,
    /// The lease the record lives on: a host that finds its own name on another lease
    /// knows another process holds it.
    #[serde(default)]
    pub lease: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolIdle {
    pub name: String,
    #[serde(flatten)]
    pub spec: PoolSpec,
    /// Idle VMs booted and ready to hand out.
    pub ready: u64,
}

/// The VM ids placed on a host, each with when a front door claimed it (Unix ms), or 0 once
/// the host has the VM: the owner drops a claim that never became a VM after a while, and
/// a VM it had at once when it is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    pub vms: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirEntry {
    pub host: String,
    /// The VM object as its owner last answered it; `null` while it is being placed.
    #[serde(default)]
    pub vm: Value,
    /// A client deleted the VM while its host was gone: the entry stays as a tombstone, so
    /// that the host, if it comes back, destroys the VM rather than claim it again (it
    /// removes the entry then). Answered as unknown meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// The keys of one fleet.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }
    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }
    pub fn slots_prefix(&self) -> String {
        format!("{}slots/", self.prefix)
    }
    pub fn slots(&self, name: &str) -> String {
        format!("{}slots/{name}", self.prefix)
    }
    pub fn vms(&self) -> String {
        format!("{}vms/", self.prefix)
    }
    pub fn vm(&self, id: &str) -> String {
        format!("{}vms/{id}", self.prefix)
    }
    /// `credential`: the caller's bearer token (or `""` without one). Only a digest of it
    /// and the key is stored.
    pub fn idempotency(&self, credential: &str, key: &str) -> String {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        // Its length first: ("ab", "c") and ("a", "bc") are two scopes.
        hasher.update((credential.len() as u64).to_be_bytes());
        hasher.update(credential.as_bytes());
        hasher.update(key.as_bytes());
        let digest = hasher.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}idempotency/{hex}", self.prefix)
    }
    pub fn lost(&self, name: &str, lease: &str) -> String {
        format!("{}lost/{name}/{lease}", self.prefix)
    }
    /// The part of `key` after `<prefix><kind>/`, if `key` is one of those.
    pub fn name_in<'k>(&self, kind: &str, key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let rest = rest.strip_prefix(kind.as_bytes())?.strip_prefix(b"/")?;
        std::str::from_utf8(rest).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names() {
        let keys = Keys {
            prefix: "/f/".into(),
        };
        assert_eq!(keys.host("mac-1"), "/f/hosts/mac-1");
        assert_eq!(keys.name_in("hosts", b"/f/hosts/mac-1"), Some("mac-1"));
        assert_eq!(keys.name_in("hosts", b"/f/slots/mac-1"), None);
        assert_eq!(keys.name_in("hosts", b"/g/hosts/mac-1"), None);
        assert!(keys.idempotency("", "k").starts_with("/f/idempotency/"));
        assert_eq!(
            keys.idempotency("", "k").len(),
            "/f/idempotency/".len() + 64
        );
        // One key, two callers: two markers.
        assert_ne!(
            keys.idempotency("team-a", "k"),
            keys.idempotency("team-b", "k")
        );
        assert_ne!(keys.idempotency("ab", "c"), keys.idempotency("a", "bc"));
    }
}
