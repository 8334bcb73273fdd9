//! `guestinfo`: what a VM is told about itself (its name, its certificate and key), handed
//! to the guest by the hypervisor (VMware: VMX variables the guest reads with
//! `vmware-rpctool "info-get guestinfo.<key>"`; tart: files of a shared folder).
//!
//! The values are secrets. They exist in this process only as a [`GuestInfo`], whose `Debug`
//! shows keys and never values, from the create request until the hypervisor has them;
//! the VM's record keeps only the keys. Key rules are shared with labels ([`check`]).

use std::collections::BTreeMap;
use std::fmt;

/// At most this many keys.
pub const MAX_KEYS: usize = 64;
/// At most this many bytes (UTF-8) in one value.
pub const MAX_VALUE_BYTES: usize = 4 * 1024;
/// At most this many bytes in all keys and values together.
pub const MAX_TOTAL_BYTES: usize = 64 * 1024;
/// Longer keys are typos or attacks; VMware has no documented limit.
pub const MAX_KEY_BYTES: usize = 128;

/// What is wrong with one entry of `guestinfo` or `labels`; each names the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryError {
    BadKey {
        key: String,
    },
    TooManyKeys {
        key: String,
    },
    ValueTooLong {
        key: String,
        bytes: usize,
    },
    TotalTooLarge {
        key: String,
    },
    /// A value with a character that cannot be stored or shown (NUL; for labels, any
    /// control character).
    BadValue {
        key: String,
    },
    /// Two keys equal but for case: VMX keys ignore case, so one would overwrite the other.
    CaseCollision {
        key: String,
        other: String,
    },
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadKey { key } => write!(
                f,
                "key {} must be 1 to {MAX_KEY_BYTES} letters, digits, '.', '-' or '_'",
                shown(key)
            ),
            Self::TooManyKeys { key } => write!(
                f,
                "key {} is one too many: at most {MAX_KEYS} keys",
                shown(key)
            ),
            Self::ValueTooLong { key, bytes } => write!(
                f,
                "the value of key {} is {bytes} bytes: at most {MAX_VALUE_BYTES}",
                shown(key)
            ),
            Self::TotalTooLarge { key } => write!(
                f,
                "with key {} the keys and values come to more than {MAX_TOTAL_BYTES} bytes",
                shown(key)
            ),
            Self::BadValue { key } => write!(
                f,
                "the value of key {} contains a control character that cannot be stored",
                shown(key)
            ),
            Self::CaseCollision { key, other } => write!(
                f,
                "key {} differs from key {} only in case, and VMX keys ignore case: use one",
                shown(key),
                shown(other)
            ),
        }
    }
}

impl std::error::Error for EntryError {}

/// How strict [`check`] is about values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// guestinfo: anything VMX quoting can carry (line breaks of a PEM key included), but
    /// NUL, which ends a C string in VMware.
    Secret,
    /// labels: shown in answers, logs and URLs, so no control characters at all.
    Shown,
}

/// The rules both `guestinfo` and `labels` follow, in the order given.
pub fn check(entries: &[(String, String)], values: Values) -> Result<(), EntryError> {
    let mut total = 0usize;
    let mut lowered: BTreeMap<String, &str> = BTreeMap::new();
    for (n, (key, value)) in entries.iter().enumerate() {
        let err_key = || key.clone();
        if key.is_empty()
            || key.len() > MAX_KEY_BYTES
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(EntryError::BadKey { key: err_key() });
        }
        if n >= MAX_KEYS {
            return Err(EntryError::TooManyKeys { key: err_key() });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(EntryError::ValueTooLong {
                key: err_key(),
                bytes: value.len(),
            });
        }
        let bad = match values {
            Values::Secret => value.contains('\0'),
            Values::Shown => value.chars().any(char::is_control),
        };
        if bad {
            return Err(EntryError::BadValue { key: err_key() });
        }
        total += key.len() + value.len();
        if total > MAX_TOTAL_BYTES {
            return Err(EntryError::TotalTooLarge { key: err_key() });
        }
        if values == Values::Secret {
            if let Some(other) = lowered.insert(key.to_ascii_lowercase(), key) {
                return Err(EntryError::CaseCollision {
                    key: err_key(),
                    other: other.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Validated guestinfo variables: key (without `guestinfo.`) → value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GuestInfo(BTreeMap<String, String>);

impl GuestInfo {
    pub fn new(entries: Vec<(String, String)>) -> Result<Self, EntryError> {
        check(&entries, Values::Secret)?;
        Ok(Self(entries.into_iter().collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, which the VM object shows: they are names, not secrets.
    pub fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Each key and its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Never the values: a `{:?}` in a log line or a panic message must not leak them.
impl fmt::Debug for GuestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<secret>")))
            .finish()
    }
}

/// A key as given, quoted and escaped, cut short: keys come from clients.
fn shown(key: &str) -> String {
    let cut: String = key.chars().take(80).collect();
    if cut.len() < key.len() {
        format!("{cut:?}… ({} bytes)", key.len())
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn debug_shows_keys_never_values() {
        let info = GuestInfo::new(pairs(&[("name", "s3cr3t-value")])).unwrap();
        let shown = format!("{info:?}");
        assert!(shown.contains("name"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn each_rule_names_the_key() {
        let many: Vec<(String, String)> =
            (0..65).map(|n| (format!("k{n:02}"), "v".into())).collect();
        let big = "x".repeat(4000);
        let total: Vec<(String, String)> =
            (0..17).map(|n| (format!("k{n:02}"), big.clone())).collect();
        let cases: Vec<(Vec<(String, String)>, EntryError)> = vec![
            (pairs(&[("", "v")]), EntryError::BadKey { key: "".into() }),
            (
                pairs(&[("a b", "v")]),
                EntryError::BadKey { key: "a b".into() },
            ),
            (
                pairs(&[("a=b", "v")]),
                EntryError::BadKey { key: "a=b".into() },
            ),
            (pairs(&[("é", "v")]), EntryError::BadKey { key: "é".into() }),
            (
                pairs(&[(&"k".repeat(129), "v")]),
                EntryError::BadKey {
                    key: "k".repeat(129),
                },
            ),
            (many, EntryError::TooManyKeys { key: "k64".into() }),
            (
                pairs(&[("big", &"x".repeat(4097))]),
                EntryError::ValueTooLong {
                    key: "big".into(),
                    bytes: 4097,
                },
            ),
            (total, EntryError::TotalTooLarge { key: "k16".into() }),
            (
                pairs(&[("nul", "a\0b")]),
                EntryError::BadValue { key: "nul".into() },
            ),
            (
                pairs(&[("Name", "a"), ("name", "b")]),
                EntryError::CaseCollision {
                    key: "name".into(),
                    other: "Name".into(),
                },
            ),
        ];
        for (entries, want) in cases {
            let err = GuestInfo::new(entries).unwrap_err();
            assert_eq!(err, want);
            let text = err.to_string();
            let key = match &want {
                EntryError::BadKey { key }
                | EntryError::TooManyKeys { key }
                | EntryError::ValueTooLong { key, .. }
                | EntryError::TotalTooLarge { key }
                | EntryError::BadValue { key }
                | EntryError::CaseCollision { key, .. } => key.clone(),
            };
            let quoted: String = format!("{:?}", key.chars().take(80).collect::<String>());
            assert!(text.contains(&quoted), "{text}");
        }
        // At the limits exactly: fine.
        let at: Vec<(String, String)> = (0..64).map(|n| (format!("k{n:02}"), "v".into())).collect();
        GuestInfo::new(at).unwrap();
        GuestInfo::new(pairs(&[("big", &"x".repeat(4096))])).unwrap();
        GuestInfo::new(pairs(&[("k._-Z9", "line\nbreak\ttab")])).unwrap();
    }

    #[test]
    fn labels_refuse_control_characters_and_allow_case_variants() {
        assert_eq!(
            check(&pairs(&[("team", "a\nb")]), Values::Shown),
            Err(EntryError::BadValue { key: "team".into() })
        );
        check(&pairs(&[("Team", "a"), ("team", "b")]), Values::Shown).unwrap();
    }
}
