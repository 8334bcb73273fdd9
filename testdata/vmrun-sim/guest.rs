//! What the guest reports through VMware Tools: its IP address and whether Tools run.

use crate::args::{optional_word, vmx_and_rest};
use crate::error::SimError;
use crate::paths::{fnv64, VmPath};
use crate::state::{env_flag, env_ms, now_ms, StateDir};
use crate::vmx;
use std::time::Duration;

pub const TOOLS_DELAY_ENV: &str = "VMRUN_SIM_TOOLS_DELAY_MS";
pub const IP_DELAY_ENV: &str = "VMRUN_SIM_IP_DELAY_MS";
/// Fusion's quirk: after `start nogui`, only `getGuestIPAddress -wait` gets the address.
pub const NEEDS_WAIT_ENV: &str = "VMRUN_SIM_IP_NEEDS_WAIT";
/// The first N boots (start or reset) of each VM never start VMware Tools.
pub const DEAD_BOOTS_ENV: &str = "VMRUN_SIM_DEAD_BOOTS";
/// Fusion's headless caveat: a VM powered on `nogui` never starts VMware Tools, however
/// often it is reset; started `gui`, it boots.
pub const NOGUI_DEAD_ENV: &str = "VMRUN_SIM_NOGUI_NEVER_BOOTS";
const WAIT_POLL: Duration = Duration::from_millis(20);

enum Guest {
    Off,
    Booting,
    NoAddress,
    Address(String),
}

fn observe(state: &StateDir, vm: &VmPath, wait: bool) -> Result<Guest, SimError> {
    let tools_delay = env_ms(TOOLS_DELAY_ENV, 0)?;
    let ip_delay = env_ms(IP_DELAY_ENV, 0)?;
    let dead_boots = env_ms(DEAD_BOOTS_ENV, 0)?;
    let Some(vm_state) = state.load(vm)?.filter(|s| s.running) else {
        return Ok(Guest::Off);
    };
    if u64::from(vm_state.boots) <= dead_boots
        || (vm_state.mode == "nogui" && env_flag(NOGUI_DEAD_ENV))
        || (!wait && vm_state.mode == "nogui" && env_flag(NEEDS_WAIT_ENV))
    {
        return Ok(Guest::Booting);
    }
    let up_for = now_ms().saturating_sub(vm_state.started_at_ms);
    Ok(if up_for < tools_delay {
        Guest::Booting
    } else if up_for < ip_delay {
        Guest::NoAddress
    } else {
        Guest::Address(address_of(vm))
    })
}

/// 172.16.X.Y from the VM's key: stable per VM, never a network, gateway or broadcast address.
fn address_of(vm: &VmPath) -> String {
    let hash = fnv64(vm.key.as_bytes());
    format!("172.16.{}.{}", (hash >> 8) & 0xff, 2 + (hash % 253))
}

pub fn get_guest_ip_address(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("getGuestIPAddress", args)?;
    let wait = optional_word("getGuestIPAddress", rest, &["-wait"])?.is_some();
    let vm = VmPath::new(vmx_arg)?;
    vmx::load(&vm)?;
    loop {
        match observe(state, &vm, wait)? {
            Guest::Off => return Err(SimError::NotPoweredOn(vm.given.clone())),
            Guest::Address(ip) => return Ok(format!("{ip}\n")),
            Guest::Booting if !wait => return Err(SimError::ToolsNotRunning(vm.given.clone())),
            Guest::NoAddress if !wait => return Ok("unknown\n".to_string()),
            Guest::Booting | Guest::NoAddress => std::thread::sleep(WAIT_POLL),
        }
    }
}

pub fn check_tools_state(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("checkToolsState", args)?;
    optional_word("checkToolsState", rest, &[])?;
    let vm = VmPath::new(vmx_arg)?;
    vmx::load(&vm)?;
    Ok(match observe(state, &vm, true)? {
        Guest::NoAddress | Guest::Address(_) => "running\n",
        Guest::Off | Guest::Booting => "installed\n",
    }
    .to_string())
}
