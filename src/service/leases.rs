//! Leases: a VM may carry an expiry (`ttl` on create, or `--default-ttl`), and a reaper
//! thread destroys expired VMs exactly as DELETE does. A coordinator that dies (or forgets
//! a VM) then leaks it for the length of a lease, not for ever; a live one renews.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::vm::VmId;

use crate::service::Error;
use crate::service::Service;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::Vm;

/// How often the reaper looks for expired leases: a lease ends within this of its time.
pub const REAP_TICK: Duration = Duration::from_secs(1);
/// After a failed destroy (the VM's files are locked, say), the reaper tries again this
/// much later rather than every tick.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `expires_at` for a lease of `ttl_secs` beginning at `from_ms`.
pub fn expiry(from_ms: i64, ttl_secs: u64) -> String {
    let at = from_ms.saturating_add((ttl_secs as i64).saturating_mul(1000));
    crate::sys::log::rfc3339(at.div_euclid(1000), at.rem_euclid(1000) as u32)
}

/// True once the VM's lease has run out.
pub fn is_expired(vm: &Vm, now_ms: i64) -> bool {
    vm.expires_at
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .is_some_and(|at| at <= now_ms)
}

/// Reads back what [`crate::sys::log::rfc3339`] writes (`2026-11-24T17:00:00.123Z`, the
/// fraction optional) as milliseconds since the epoch. A record edited by hand into
/// another shape reads as `None`: no lease, never a surprise destroy.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes.last() != Some(&b'Z')
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let millis = match &bytes[19..bytes.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            let value = digits(20..20 + fraction.len())?;
            // Scale to milliseconds whatever the number of digits.
            let scale = 10i64.pow(fraction.len() as u32);
            value * 1000 / scale
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// Howard Hinnant's days-from-civil: the inverse of the one in `log.rs`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Starts the reaper thread. Each expired VM is destroyed on a thread of its own, so one
/// slow destroy (vmrun waiting on a lock) does not hold back the others.
pub fn start_reaper(service: Arc<Service>) {
    let reaper = Arc::new(Reaper {
        service,
        busy: Mutex::new(HashSet::new()),
        retry_at: Mutex::new(HashMap::new()),
    });
    let spawned = thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            thread::sleep(REAP_TICK);
            reaper.tick();
        });
    if let Err(err) = spawned {
        crate::error!("cannot start the lease reaper: {err}; expired VMs are not destroyed");
    }
}

struct Reaper {
    service: Arc<Service>,
    /// VMs being destroyed now.
    busy: Mutex<HashSet<VmId>>,
    /// VMs whose destroy failed, and when to try again.
    retry_at: Mutex<HashMap<VmId, Instant>>,
}

impl Reaper {
    fn tick(self: &Arc<Self>) {
        for (id, expires_at) in self.service.expired_leases(now_ms()) {
            let due = !matches!(self.retry_at.lock_unpoisoned().get(&id), Some(at) if Instant::now() < *at);
            if !due || !self.busy.lock_unpoisoned().insert(id) {
                continue;
            }
            let reaper = self.clone();
            let spawned = thread::Builder::new()
                .name(format!("reap-{id}"))
                .spawn(move || {
                    reaper.reap(id, &expires_at);
                    reaper.busy.lock_unpoisoned().remove(&id);
                });
            if let Err(err) = spawned {
                crate::error!("vm={id} cannot start a thread to destroy it: {err}");
                self.busy.lock_unpoisoned().remove(&id);
            }
        }
    }

    fn reap(&self, id: VmId, expires_at: &str) {
        crate::info!("vm={id} lease expired at {expires_at}; destroying it");
        match self.service.reap(id, now_ms()) {
            Ok(true) => {
                self.retry_at.lock_unpoisoned().remove(&id);
                crate::info!("vm={id} destroyed: its lease expired");
            }
            Ok(false) => crate::info!("vm={id} was renewed meanwhile; kept"),
            Err(Error::VmNotFound) => {
                self.retry_at.lock_unpoisoned().remove(&id);
            }
            Err(err) => {
                self.retry_at
                    .lock_unpoisoned()
                    .insert(id, Instant::now() + RETRY_AFTER_FAILURE);
                crate::warn!(
                    "vm={id} destroying the expired VM failed: {err}; retrying in {} s",
                    RETRY_AFTER_FAILURE.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::model::tests::sample;

    #[test]
    fn reads_back_what_the_log_writes() {
        for ms in [0i64, 951_782_400_005, 1_795_539_600_123, 4_102_444_799_999] {
            let text = crate::sys::log::rfc3339(ms / 1000, (ms % 1000) as u32);
            assert_eq!(parse_rfc3339_ms(&text), Some(ms), "{text}");
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-24T17:00:00Z"),
            Some(1_795_539_600_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-24T17:00:00.5Z"),
            Some(1_795_539_600_500)
        );
        for bad in [
            "",
            "2026-11-24",
            "2026-11-24T17:00:00.123",
            "2026-11-24T17:00:00+01:00",
            "2026-13-24T17:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T17:00:00.Z",
            "2026-11-24T17:0a:00Z",
            "+026-11-24T17:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn expiry_is_from_now_and_checked_to_the_millisecond() {
        let now = 1_795_539_600_123;
        assert_eq!(expiry(now, 3600), "2026-11-24T18:00:00.123Z");
        let mut vm = sample();
        assert!(!is_expired(&vm, now), "no lease, never expired");
        vm.expires_at = Some(expiry(now, 1));
        assert!(!is_expired(&vm, now + 999));
        assert!(is_expired(&vm, now + 1000));
        vm.expires_at = Some("not a time".into());
        assert!(!is_expired(&vm, i64::MAX));
    }
}
