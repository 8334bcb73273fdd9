//! `GET /healthz`: can this server make VMs now? For load balancers, launchd watchdogs and
//! people. Each check says what it found; the answer is 503 when one fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::hypervisor::running::ListState;
use crate::hypervisor::Hypervisor;
use crate::image::gold_locks::Blocked;

#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok` or `failing`.
    pub status: &'static str,
    /// What runs the VMs: `vmware` or `tart`.
    pub hypervisor: &'static str,
    /// `unhealthy` when failing, so the body reads like the API's other errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The names of the failing checks.
    pub failing: Vec<&'static str>,
    pub checks: BTreeMap<&'static str, Check>,
    /// Draining is not a failure: the VMs there are still served.
    pub draining: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub ok: bool,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_bytes: Option<u64>,
}

impl Check {
    fn new(result: Result<String, String>) -> Self {
        let (ok, message) = match result {
            Ok(message) => (true, message),
            Err(message) => (false, message),
        };
        Self {
            ok,
            message,
            free_bytes: None,
            min_free_bytes: None,
        }
    }
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.failing.is_empty()
    }

    pub fn status_code(&self) -> u16 {
        if self.is_ok() {
            200
        } else {
            503
        }
    }
}

/// Runs every check: the hypervisor's tool (`vmrun`, `tart`: the check's name) is there and
/// its listing answered last time; the data folder takes a file; the disk is above the floor.
pub fn check(
    hypervisor: &dyn Hypervisor,
    data_dir: &Path,
    min_free_disk: u64,
    draining_since: Option<String>,
    blocked: &[(String, Blocked)],
) -> Health {
    let mut checks = BTreeMap::new();
    checks.insert(hypervisor.tool(), Check::new(check_tool(hypervisor)));
    checks.insert("gold_images", Check::new(check_gold(blocked)));
    checks.insert("data_dir", Check::new(check_writable(data_dir)));
    checks.insert("disk", check_disk(data_dir, min_free_disk));
    let failing: Vec<&'static str> = checks
        .iter()
        .filter(|(_, check)| !check.ok)
        .map(|(name, _)| *name)
        .collect();
    let message = (!failing.is_empty()).then(|| {
        failing
            .iter()
            .map(|name| format!("{name}: {}", checks[name].message))
            .collect::<Vec<_>>()
            .join("; ")
    });
    Health {
        status: if failing.is_empty() { "ok" } else { "failing" },
        hypervisor: hypervisor.kind(),
        code: (!failing.is_empty()).then_some("unhealthy"),
        message,
        failing,
        checks,
        draining: draining_since.is_some(),
        draining_since,
    }
}

/// From what the last `vmrun list` (`tart list`) said, kept fresh in the background: a
/// health check runs no process, so a load balancer probing it often costs nothing and never
/// waits on the hypervisor.
fn check_tool(hypervisor: &dyn Hypervisor) -> Result<String, String> {
    hypervisor.check_available().map_err(|e| e.to_string())?;
    let running = hypervisor.running();
    let listing = running.listing();
    match running.state() {
        ListState::Answered { running, age } => Ok(format!(
            "{listing} answered {} s ago: {running} VMs running",
            age.as_secs()
        )),
        ListState::Failing { error, since } => Err(format!(
            "{listing} has failed for {} s: {error}; admission counts VM records alone",
            since.as_secs()
        )),
        ListState::Unknown => Err(format!("{listing} has not answered yet")),
    }
}

/// A gold image that cannot be cloned until a person acts fails every create of it.
fn check_gold(blocked: &[(String, Blocked)]) -> Result<String, String> {
    if blocked.is_empty() {
        return Ok("no gold image is blocked".to_string());
    }
    Err(blocked
        .iter()
        .map(|(checksum, b)| {
            format!(
                "gold image {checksum} is blocked by {} since {}: {}",
                b.file.display(),
                b.since,
                b.message
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// Writes and removes a probe file: a folder can be there and readable, and still refuse
/// writes (permissions, a read-only remount after a disk error, a full quota).
fn check_writable(data_dir: &Path) -> Result<String, String> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = data_dir.join(format!(
        ".healthz-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&probe, b"ok").map_err(|e| {
        format!(
            "cannot write in the data folder {}: {e}",
            data_dir.display()
        )
    })?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("cannot remove the probe {}: {e}", probe.display()))?;
    Ok(format!("{} is writable", data_dir.display()))
}

fn check_disk(data_dir: &Path, floor: u64) -> Check {
    let free = crate::sys::disk::free_bytes(data_dir);
    let result = match &free {
        Err(err) => Err(err.to_string()),
        Ok(free) if *free < floor => Err(format!(
            "{free} bytes free, under the floor of {floor} (--min-free-disk): creates are refused"
        )),
        Ok(free) => Ok(format!("{free} bytes free")),
    };
    Check {
        free_bytes: free.ok(),
        min_free_bytes: Some(floor),
        ..Check::new(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::vmrun::{Vmrun, VmrunSettings};

    #[test]
    fn names_each_failing_check() {
        let dir = std::env::temp_dir().join(format!("osxb-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vmrun = Vmrun::new(VmrunSettings::new(dir.join("no-vmrun-here")));
        let health = check(
            &vmrun,
            &dir,
            u64::MAX,
            Some("2026-11-24T17:00:00.000Z".into()),
            &[],
        );
        assert_eq!(health.status_code(), 503);
        assert_eq!(health.failing, vec!["disk", "vmrun"]);
        assert!(health.checks["gold_images"].ok);
        assert!(health.checks["data_dir"].ok);
        let message = health.message.clone().unwrap();
        assert!(
            message.contains("vmrun: ") && message.contains("disk: "),
            "{message}"
        );
        assert!(health.draining);
        assert_eq!(health.hypervisor, "vmware");
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["code"], "unhealthy");
        assert_eq!(json["checks"]["disk"]["min_free_bytes"], u64::MAX);

        let missing = dir.join("not-there");
        let lock = dir.join("gold.vmx.lck");
        let blocked = [(
            "abc".to_string(),
            Blocked {
                file: lock.clone(),
                message: "remove it by hand".into(),
                since: "2026-11-24T17:00:00.000Z".into(),
            },
        )];
        let health = check(&vmrun, &missing, 0, None, &blocked);
        assert!(health.failing.contains(&"data_dir"), "{health:?}");
        let gold = &health.checks["gold_images"];
        assert!(
            !gold.ok && gold.message.contains(&lock.display().to_string()),
            "{gold:?}"
        );
        assert!(!health.draining);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
