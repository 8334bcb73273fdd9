//! Labels: a coordinator's own names for its VMs (`{"project": "go", "pool": "darwin-13"}`),
//! kept in the VM's record and shown, so that it can find the VMs it owns with
//! `GET /vms?label=project=go` after a restart of its own.

use std::collections::BTreeMap;

use crate::vm::guestinfo::{check, EntryError, Values};
use crate::vm::Status;

pub type Labels = BTreeMap<String, String>;

/// Labels under the rules of guestinfo keys (see [`crate::vm::guestinfo::check`]), with values
/// that are shown and so carry no control characters.
pub fn new(entries: Vec<(String, String)>) -> Result<Labels, EntryError> {
    check(&entries, Values::Shown)?;
    Ok(entries.into_iter().collect())
}

/// What `GET /vms` keeps: every label condition holds, the status is one of those asked
/// for (any, when none is), and the VM waits in the warm pool named (when one is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmFilter {
    /// Key, and the value it must have; `None`: the key must be there, with any value.
    pub labels: Vec<(String, Option<String>)>,
    pub statuses: Vec<Status>,
    /// Only the idle VMs of this warm pool.
    pub pool: Option<String>,
}

impl VmFilter {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.statuses.is_empty() && self.pool.is_none()
    }

    /// [`matches`](Self::matches) on a VM object's JSON; one that does not parse (never)
    /// is kept rather than hidden.
    pub fn matches_json(&self, json: &[u8]) -> bool {
        #[derive(serde::Deserialize)]
        struct Seen {
            #[serde(default)]
            status: Status,
            #[serde(default)]
            labels: Labels,
            #[serde(default)]
            pool: Option<String>,
        }
        serde_json::from_slice::<Seen>(json).map_or(true, |vm| {
            self.matches(&vm.labels, vm.status)
                && self
                    .pool
                    .as_ref()
                    .is_none_or(|want| vm.pool.as_ref() == Some(want))
        })
    }

    pub fn matches(&self, labels: &Labels, status: Status) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&status))
            && self
                .labels
                .iter()
                .all(|(key, want)| match (labels.get(key), want) {
                    (Some(have), Some(want)) => have == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_must_hold() {
        let labels = new(vec![
            ("project".into(), "go".into()),
            ("pool".into(), "darwin-13".into()),
        ])
        .unwrap();
        let filter = |pairs: &[(&str, Option<&str>)], statuses: &[Status]| VmFilter {
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
            statuses: statuses.to_vec(),
            pool: None,
        };
        assert!(filter(&[], &[]).matches(&labels, Status::Failed));
        assert!(filter(&[("project", Some("go"))], &[]).matches(&labels, Status::Running));
        assert!(filter(
            &[("project", Some("go")), ("pool", None)],
            &[Status::Running]
        )
        .matches(&labels, Status::Running));
        assert!(
            !filter(&[("project", Some("go")), ("pool", Some("x"))], &[])
                .matches(&labels, Status::Running)
        );
        assert!(!filter(&[("owner", None)], &[]).matches(&labels, Status::Running));
        assert!(!filter(&[], &[Status::Running, Status::Stopped]).matches(&labels, Status::Failed));
        assert!(filter(&[], &[Status::Running, Status::Failed]).matches(&labels, Status::Failed));
    }

    #[test]
    fn a_pool_keeps_its_idle_vms_only() {
        let pool = VmFilter {
            pool: Some("p".into()),
            ..VmFilter::default()
        };
        assert!(!pool.is_empty());
        assert!(pool.matches_json(br#"{"status": "running", "pool": "p"}"#));
        assert!(!pool.matches_json(br#"{"status": "running", "pool": "q"}"#));
        assert!(!pool.matches_json(br#"{"status": "running"}"#));
        assert!(VmFilter::default().matches_json(br#"{"status": "running"}"#));
    }
}
