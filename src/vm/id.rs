//! VM ids: the UUIDs this server hands out, and the 20-hex-character ids of VMs that the
//! original Go server made (they are adopted with the id it gave them).
//!
//! An id is checked by `parse` before it names a folder: it is either a canonical UUID or
//! exactly 20 lowercase hex digits, so no id can hold `/`, `..` or anything a path would read.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The original's ids: 10 random bytes, hex-encoded (its `vms/<id>/` folders).
const LEGACY_LEN: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmId {
    Uuid(Uuid),
    /// An id of the original Go server: ASCII lowercase hex digits.
    Legacy([u8; LEGACY_LEN]),
}

impl VmId {
    /// A fresh id for a VM this server creates.
    pub fn new() -> Self {
        VmId::Uuid(Uuid::new_v4())
    }

    /// Accepts exactly the canonical `8-4-4-4-12` lowercase-or-uppercase UUID form or the
    /// original's 20 lowercase hex digits; anything else is not an id.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() == 36 {
            return Uuid::try_parse(text).ok().map(VmId::Uuid);
        }
        if text.len() == LEGACY_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let mut bytes = [0u8; LEGACY_LEN];
            bytes.copy_from_slice(text.as_bytes());
            return Some(VmId::Legacy(bytes));
        }
        None
    }

    pub fn is_legacy(&self) -> bool {
        matches!(self, VmId::Legacy(_))
    }
}

impl Default for VmId {
    fn default() -> Self {
        VmId::Uuid(Uuid::nil())
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmId::Uuid(id) => id.fmt(f),
            // Only ASCII hex digits are ever stored (see `parse`).
            VmId::Legacy(bytes) => f.write_str(std::str::from_utf8(bytes).unwrap_or("?")),
        }
    }
}

impl fmt::Debug for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct NotAnId;

impl fmt::Display for NotAnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a VM id (a UUID, or 20 lowercase hex digits for the original's VMs)")
    }
}

impl std::error::Error for NotAnId {}

impl FromStr for VmId {
    type Err = NotAnId;
    fn from_str(text: &str) -> Result<Self, NotAnId> {
        VmId::parse(text).ok_or(NotAnId)
    }
}

impl From<Uuid> for VmId {
    fn from(id: Uuid) -> Self {
        VmId::Uuid(id)
    }
}

impl Serialize for VmId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VmId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        VmId::parse(&text).ok_or_else(|| serde::de::Error::custom(NotAnId))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuids_and_the_originals_ids_only() {
        let uuid = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";
        assert_eq!(VmId::parse(uuid).map(|i| i.to_string()), Some(uuid.into()));
        let legacy = "c8a934d72293a7d31baf";
        let id = VmId::parse(legacy).unwrap();
        assert!(id.is_legacy());
        assert_eq!(id.to_string(), legacy);
        for bad in [
            "",
            "c8a934d72293a7d31ba",
            "c8a934d72293a7d31bafa",
            "C8A934D72293A7D31BAF",
            "c8a934d72293a7d31bag",
            "../../../etc/passwd0",
            "282ee68a2e4d4bd79c0e7f37e12fc489",
            "{282ee68a-2e4d-4bd7-9c0e-7f37e12fc489}",
            "282ee68a-2e4d-4bd7-9c0e-7f37e12fc48/",
        ] {
            assert_eq!(VmId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        for text in [
            "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489",
            "24a22119f66061eac0cc",
        ] {
            let id = VmId::parse(text).unwrap();
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<VmId>(&json).unwrap(), id);
        }
        assert!(serde_json::from_str::<VmId>("\"../x\"").is_err());
    }
}
