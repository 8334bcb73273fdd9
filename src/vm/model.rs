//! The VM object: what `GET /vms/:id` answers and what `vms/<id>/osx-builder.json` holds.
//!
//! The wire format is the seed's (`status` is `""` while provisioning) plus fields that help
//! a client: `phase`/`progress`, `error`, timestamps.

use crate::vm::VmId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::image::ImageSpec;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: VmId,
    /// `None` only for a VM adopted from the original Go server without an image annotation.
    pub image: Option<ImageSpec>,
    /// The client's idempotency key (`name` field or `Idempotency-Key` header): a retried
    /// create with the same key gets this VM back instead of a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub cpus: u32,
    /// Megabytes, as applied to the VMX (raised to 512, rounded up to a multiple of 4).
    pub memory: u32,
    pub network_type: NetworkType,
    pub headless: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub ip_address: String,
    /// Where `ip_address` came from: `tools` or `dhcp-lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_source: Option<crate::hypervisor::guest_ip::IpSource>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub guest_os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VmError>,
    #[serde(default)]
    pub progress: Progress,
    pub created_at: String,
    pub updated_at: String,
    /// The lease in seconds, present when the VM has one: a renew without its own `ttl`
    /// extends by this much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// When the reaper destroys the VM unless it is renewed (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Lines of the image's VMX that the allow-list took out of this clone (see
    /// `crate::hypervisor::vmrun::vmx_policy`), each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vmx_removed: Vec<String>,
    /// The client's labels, shown and filtered on (`GET /vms?label=k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The keys of the guestinfo given at create; the values are never recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guestinfo_keys: Vec<String>,
    /// A failure leaves this VM as it is, running, for someone to look at (`?keep=true` on
    /// create, or `--keep-failed` when it failed); without it a failed VM is stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
    /// The warm pool this VM waits in, idle, booted, until a matching create takes it.
    /// Cleared at hand-out: from then on the VM is the client's like any other (the log
    /// and `/metrics` say where it came from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    Bridged,
    #[default]
    Nat,
    Hostonly,
}

impl NetworkType {
    pub const NAMES: &'static str = "bridged, nat, hostonly";
    pub const ALL: [Self; 3] = [Self::Bridged, Self::Nat, Self::Hostonly];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The value of `ethernet0.connectionType` in the VMX.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bridged => "bridged",
            Self::Nat => "nat",
            Self::Hostonly => "hostonly",
        }
    }
}

/// `""` while provisioning, as in the seed, so that a client written for the original keeps
/// working.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    #[default]
    #[serde(rename = "")]
    Provisioning,
    #[serde(rename = "running")]
    Running,
    #[serde(rename = "stopped")]
    Stopped,
    #[serde(rename = "failed")]
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// Where provisioning (or deletion) stands: finer than `status`, for people and dashboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Queued,
    /// The image's download waits for a `--max-downloads` slot.
    QueuedDownload,
    Downloading,
    Unpacking,
    Verifying,
    Publishing,
    /// The gold image is made ready to clone (VMware: its base snapshot; tart: its import as a
    /// local tart VM). Servers before 2026-12 wrote `snapshotting`: their records still load.
    #[serde(alias = "snapshotting")]
    PreparingGold,
    Cloning,
    Configuring,
    Starting,
    /// The hypervisor refused the start for the host's own limit (tart: two macOS VMs):
    /// the VM starts when a slot frees.
    WaitingForSlot,
    WaitingForIp,
    /// Started and the IP is known.
    Ready,
    /// Started, but no IP address appeared before the deadline.
    IpTimeout,
    Failed,
    Deleting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::QueuedDownload => "queued-download",
            Self::Downloading => "downloading",
            Self::Unpacking => "unpacking",
            Self::Verifying => "verifying",
            Self::Publishing => "publishing",
            Self::PreparingGold => "preparing-gold",
            Self::Cloning => "cloning",
            Self::Configuring => "configuring",
            Self::Starting => "starting",
            Self::WaitingForSlot => "waiting-for-slot",
            Self::WaitingForIp => "waiting-for-ip",
            Self::Ready => "ready",
            Self::IpTimeout => "ip-timeout",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
        }
    }

    /// A phase of provisioning before the clone was started: the image is still to come
    /// or to be prepared, and no hypervisor call has named the VM yet.
    pub fn precedes_clone(self) -> bool {
        matches!(
            self,
            Self::Queued
                | Self::QueuedDownload
                | Self::Downloading
                | Self::Unpacking
                | Self::Verifying
                | Self::Publishing
                | Self::PreparingGold
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    #[serde(default)]
    pub bytes_downloaded: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

/// Why a VM failed: a stable code and a message that names the step and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmError {
    pub code: String,
    pub message: String,
    /// The last lines of the VM's `vmware.log`, for a VM that failed after its clone existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<Vec<String>>,
}

impl Vm {
    pub fn fail(&mut self, code: &str, message: impl Into<String>) {
        self.status = Status::Failed;
        self.progress.phase = Phase::Failed;
        self.error = Some(VmError {
            code: code.to_string(),
            message: message.into(),
            log_tail: None,
        });
    }

    /// True once provisioning has nothing more to do for this VM.
    pub fn is_settled(&self) -> bool {
        matches!(
            self.progress.phase,
            Phase::Ready | Phase::IpTimeout | Phase::Failed
        ) || matches!(self.status, Status::Stopped | Status::Failed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn network_types_have_one_list() {
        let names: Vec<&str> = NetworkType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.join(", "), NetworkType::NAMES);
        for kind in NetworkType::ALL {
            assert_eq!(NetworkType::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
        assert_eq!(NetworkType::parse("custom"), None);
    }
    use crate::image::ChecksumType;

    pub(crate) fn sample() -> Vm {
        Vm {
            id: VmId::default(),
            image: Some(ImageSpec {
                url: "http://127.0.0.1/a.tar.gz".into(),
                checksum: "5cf00d380e28d02f30efaceafef7c7c8bdedae33".into(),
                checksum_type: ChecksumType::Sha1,
            }),
            name: None,
            cpus: 2,
            memory: 1024,
            network_type: NetworkType::Nat,
            headless: true,
            callback_url: None,
            ip_address: String::new(),
            status: Status::Provisioning,
            guest_os: String::new(),
            error: None,
            progress: Progress::default(),
            created_at: "2026-11-24T17:00:00.000Z".into(),
            updated_at: "2026-11-24T17:00:00.000Z".into(),
            ttl: None,
            expires_at: None,
            vmx_removed: Vec::new(),
            labels: BTreeMap::new(),
            guestinfo_keys: Vec::new(),
            ip_source: None,
            keep: false,
            pool: None,
        }
    }

    #[test]
    fn provisioning_status_is_the_seeds_empty_string() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["status"], "");
        assert_eq!(json["ip_address"], "");
        assert_eq!(json["network_type"], "nat");
        assert_eq!(json["progress"]["phase"], "queued");
        assert!(json.get("error").is_none());
    }

    #[test]
    fn phase_names_match_the_wire() {
        for phase in [
            Phase::Queued,
            Phase::PreparingGold,
            Phase::WaitingForIp,
            Phase::IpTimeout,
            Phase::Deleting,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }

    #[test]
    fn a_record_of_an_older_server_saying_snapshotting_loads_as_preparing_gold() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["progress"]["phase"] = "snapshotting".into();
        let vm: Vm = serde_json::from_value(json).unwrap();
        assert_eq!(vm.progress.phase, Phase::PreparingGold);
        let again = serde_json::to_value(&vm).unwrap();
        assert_eq!(again["progress"]["phase"], "preparing-gold");
    }

    #[test]
    fn record_round_trips() {
        let mut vm = sample();
        vm.fail("clone-failed", "vmrun clone: boom");
        let text = serde_json::to_string(&vm).unwrap();
        let back: Vm = serde_json::from_str(&text).unwrap();
        assert_eq!(back, vm);
        assert_eq!(back.status, Status::Failed);
    }
}
