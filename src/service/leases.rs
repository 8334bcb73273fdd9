//! Leases: a VM may carry an expiry (`ttl` on create, or `--default-ttl`), and the reaper
//! (`reaper.rs`) destroys expired VMs exactly as DELETE does. A coordinator that dies (or forgets
//! a VM) then leaks it for the length of a lease, not for ever; a live one renews.

use crate::sys::time::parse_rfc3339_ms;
use crate::vm::Vm;

/// `expires_at` for a lease of `ttl_secs` beginning at `from_ms`.
pub fn expiry(from_ms: i64, ttl_secs: u64) -> String {
    let at = from_ms.saturating_add((ttl_secs as i64).saturating_mul(1000));
    crate::sys::time::rfc3339(at.div_euclid(1000), at.rem_euclid(1000) as u32)
}

/// True once the VM's lease has run out.
pub fn is_expired(vm: &Vm, now_ms: i64) -> bool {
    vm.expires_at
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .is_some_and(|at| at <= now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::model::tests::sample;

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
