//! Waiting for a started VM's IP address. One call's failure is a glitch, not a verdict:
//! errors and timeouts are retried with backoff until the deadline, and only a VM that
//! vmrun says is powered off (and `list` agrees) fails at once. Answers that are no usable
//! address (link-local, loopback, the vmnet's `.1`, a host name) mean "not yet".

use std::time::{Duration, Instant};

use super::steps::{check, sleep_unless_cancelled, Stop};
use super::Provisioner;
use crate::hypervisor::guest_ip::{self, IpSource};
use crate::hypervisor::{HypervisorError, IpAnswer, VmRef};
use crate::sys::cancel::Cancel;
use crate::vm::{Phase, Vm};

/// "Tools not running" answers in a row before falling back to `-wait` (Fusion's quirk after
/// `start nogui`).
const WAIT_FALLBACK_AFTER: u32 = 3;
/// The longest pause between retries after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Provisioner {
    /// Polls for the guest's IP. `booted` is when `vmrun start` returned, for the
    /// boot-to-IP histogram.
    pub(super) fn watch_ip(
        &self,
        vm: &Vm,
        cancel: &Cancel,
        booted: Option<Instant>,
    ) -> Result<(), Stop> {
        let id = vm.id;
        let vm_ref = self.store.vm_ref(id);
        let started = Instant::now();
        let mut deadline = started + self.settings.ip_wait_timeout;
        let boot_timeout = self.settings.boot.timeout;
        // The boot watchdog: armed until Tools answer once (or a lease is found).
        let mut boot_deadline = started + boot_timeout;
        let mut tools_seen = false;
        let mut rebooted = false;
        let mut no_tools = 0u32;
        let mut last_error: Option<HypervisorError>;
        let mut backoff = self.settings.ip_poll_interval;
        let mut last_unusable = String::new();
        let mut mac: Option<String> = None;
        loop {
            check(cancel)?;
            let answer = if no_tools >= WAIT_FALLBACK_AFTER {
                let now = Instant::now();
                let mut left = deadline.saturating_duration_since(now);
                if !tools_seen {
                    left = left.min(boot_deadline.saturating_duration_since(now));
                }
                // A zero limit would kill the call before it could answer at all.
                let limit = self
                    .hypervisor
                    .ip_query_timeout()
                    .min(left)
                    .max(Duration::from_millis(100));
                self.hypervisor.guest_ip_wait(&vm_ref, limit, cancel)
            } else {
                self.hypervisor.guest_ip(&vm_ref, cancel)
            };
            let source = match &answer {
                Ok(IpAnswer::Found(_, source)) => *source,
                _ => IpSource::Tools,
            };
            match answer {
                Ok(IpAnswer::Address(text) | IpAnswer::Found(text, _)) => {
                    no_tools = 0;
                    tools_seen = true;
                    last_error = None;
                    match guest_ip::usable(&text) {
                        Ok(ip) => {
                            self.found(id, ip.to_string(), source, started, booted);
                            return Ok(());
                        }
                        Err(why) => {
                            if last_unusable != text {
                                crate::info!("vm={id} Tools report {text:?}: {why}; not yet");
                                last_unusable = text;
                            }
                        }
                    }
                }
                Ok(IpAnswer::NoAddress) => {
                    no_tools = 0;
                    tools_seen = true;
                    last_error = None;
                }
                Ok(IpAnswer::NoTools) => {
                    no_tools += 1;
                    last_error = None;
                }
                Err(HypervisorError::Cancelled { .. }) => return Err(Stop::Cancelled),
                Err(err @ HypervisorError::NotPoweredOn { .. }) if self.confirmed_off(&vm_ref) => {
                    return Err(Stop::from(err));
                }
                // An unreadable or vanished VM does not heal by waiting.
                Err(err @ HypervisorError::VmOpenError { .. }) => return Err(Stop::from(err)),
                Err(err) => {
                    crate::warn!("vm={id} IP query failed, retrying until the deadline: {err}");
                    last_error = Some(err);
                }
            }
            // Tools say nothing usable: the DHCP server may know the VM's MAC address.
            if mac.is_none() {
                mac = self.hypervisor.mac_address(&vm_ref);
            }
            if let Some(ip) = mac
                .as_deref()
                .and_then(|mac| self.settings.leases.lookup(mac, unix_now()))
            {
                self.found(id, ip.to_string(), IpSource::DhcpLease, started, booted);
                return Ok(());
            }
            let now = Instant::now();
            if !tools_seen && now >= boot_deadline {
                if rebooted {
                    return Err(Stop::failed("boot-timeout", self.boot_timeout_message(vm)));
                }
                rebooted = true;
                self.reboot(vm, &vm_ref, cancel)?;
                // The second boot gets a whole window, even past the IP deadline.
                boot_deadline = Instant::now() + boot_timeout;
                deadline = deadline.max(boot_deadline);
                no_tools = 0;
                backoff = self.settings.ip_poll_interval;
                continue;
            }
            if now >= deadline {
                if let Some(err) = last_error {
                    // Every call up to the deadline failed: that, not "no IP", is the news.
                    return Err(Stop::from(err));
                }
                crate::warn!(
                    "vm={id} no IP address after {:?}; the VM keeps running",
                    self.settings.ip_wait_timeout
                );
                self.set_phase(id, Phase::IpTimeout);
                return Ok(());
            }
            backoff = if last_error.is_some() {
                (backoff * 2).min(MAX_BACKOFF)
            } else {
                self.settings.ip_poll_interval
            };
            let mut pause = backoff.min(deadline - now);
            if !tools_seen {
                pause = pause.min(boot_deadline.saturating_duration_since(now));
            }
            sleep_unless_cancelled(pause, cancel)?;
        }
    }

    /// The boot watchdog's one retry: `reset hard`, or for a headless VM with
    /// `--headless-retry-gui` a `stop hard` and a `start gui` (Fusion's headless VMs that
    /// never boot may boot with a window).
    fn reboot(&self, vm: &Vm, vm_ref: &VmRef, cancel: &Cancel) -> Result<(), Stop> {
        let id = vm.id;
        let waited = self.settings.boot.timeout.as_secs_f64();
        let gui = vm.headless && self.settings.boot.headless_retry_gui;
        let tool = self.hypervisor.tool();
        let how = if gui {
            format!("{tool} stop hard then start gui (--headless-retry-gui)")
        } else {
            self.hypervisor.hard_reset_words()
        };
        let silent = self.hypervisor.silent_guest_words();
        crate::warn!(
            "vm={id} {silent} {waited} s after its start: the guest did not boot; retrying once with {how}"
        );
        let result = if gui {
            self.hypervisor
                .stop(vm_ref, true, cancel)
                .and_then(|()| self.hypervisor.start(vm_ref, false, cancel))
        } else {
            self.hypervisor.reset(vm_ref, true, cancel)
        };
        match result {
            Ok(()) => Ok(()),
            Err(HypervisorError::Cancelled { .. }) => Err(Stop::Cancelled),
            Err(err) => Err(Stop::failed(
                "boot-timeout",
                format!(
                    "the guest did not boot: {silent} within {waited} s of its start (--boot-timeout), and the retry ({how}) failed: {err}",
                ),
            )),
        }
    }

    fn boot_timeout_message(&self, vm: &Vm) -> String {
        let waited = self.settings.boot.timeout.as_secs_f64();
        let retry = if vm.headless && self.settings.boot.headless_retry_gui {
            "a stop and a start with a window (--headless-retry-gui)"
        } else {
            "a hard reset"
        };
        let hint = if vm.headless && !self.settings.boot.headless_retry_gui {
            "; a headless VM that never boots may boot with a window: see --headless-retry-gui"
        } else {
            ""
        };
        format!(
            "the guest did not boot: {} within {waited} s of its start, nor within {waited} s after {retry} (--boot-timeout); its log is in error.log_tail and at GET /vms/{}/log{hint}",
            self.hypervisor.silent_guest_words(),
            vm.id
        )
    }

    fn found(
        &self,
        id: crate::vm::VmId,
        ip: String,
        source: IpSource,
        started: Instant,
        booted: Option<Instant>,
    ) {
        crate::info!(
            "vm={id} has IP {ip} ({}) after {:.1}s",
            match source {
                IpSource::Tools => "tools",
                IpSource::DhcpLease => "dhcp-lease",
                IpSource::Arp => "arp",
            },
            started.elapsed().as_secs_f64()
        );
        if let Some(booted) = booted {
            self.metrics.observe_boot_to_ip(booted.elapsed());
        }
        self.record(id, |vm| {
            vm.ip_address = ip;
            vm.ip_source = Some(source);
            vm.progress.phase = Phase::Ready;
        });
    }

    /// "Not powered on" is believed only when `list` agrees; a `list` that fails proves
    /// nothing, so the watch goes on.
    fn confirmed_off(&self, vm: &VmRef) -> bool {
        crate::hypervisor::running::runs_now(self.hypervisor.as_ref(), vm) == Some(false)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
