//! Failed VMs are kept for `--failed-retention` so that someone can look at them, then
//! destroyed as a DELETE does: a client that creates failing VMs in a loop (a callback to
//! this server did, 174 in 20 s) cannot fill the disk with records, and failed VMs hold no
//! place under `--max-vms`.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::service::Service;
use crate::sys::time::now_ms;

pub fn start(service: Arc<Service>, retention: Duration) {
    // Often enough that a VM outlives its retention by a small part of it.
    let tick = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let spawned = thread::Builder::new()
        .name("failed-retention".into())
        .spawn(move || loop {
            thread::sleep(tick);
            let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            for id in service.failed_before(cutoff) {
                match service.delete(id) {
                    Ok(()) => crate::info!(
                        "vm={id} destroyed: failed more than {} s ago (--failed-retention)",
                        retention.as_secs()
                    ),
                    Err(err) => crate::warn!("vm={id} failed VM not destroyed: {err}"),
                }
            }
        });
    if let Err(err) = spawned {
        crate::error!("cannot start the failed-VM reaper: {err}; failed VMs are kept");
    }
}
