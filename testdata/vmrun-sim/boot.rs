//! What a power-on leaves beside the VM, as VMware does: a generated MAC address written into
//! the VMX (`ethernet0.generatedAddress`, the key DHCP lease look-ups need), and `vmware.log`.

use crate::error::SimError;
use crate::paths::{fnv64, VmPath};
use crate::state::{now_ms, write_atomic};
use crate::vmx::Vmx;
use std::fs::OpenOptions;
use std::io::Write;

/// Lines `vmware.log` gains per boot: more than the 40 a failure report quotes.
const LOG_LINES_PER_BOOT: usize = 60;

/// `00:0c:29:XX:YY:ZZ` from the VM's key: VMware's prefix for generated addresses.
pub fn mac_of(vm: &VmPath) -> String {
    let hash = fnv64(format!("mac/{}", vm.key).as_bytes());
    format!(
        "00:0c:29:{:02x}:{:02x}:{:02x}",
        (hash >> 16) & 0xff,
        (hash >> 8) & 0xff,
        hash & 0xff
    )
}

/// Writes `ethernet0.generatedAddress` when the VM has a NIC with a generated address and
/// none was written yet (VMware does it at the first power-on).
pub fn assign_mac(vm: &VmPath, config: &mut Vmx) -> Result<(), SimError> {
    let static_address = config
        .get("ethernet0.addressType")
        .is_some_and(|t| t.eq_ignore_ascii_case("static"));
    if static_address
        || config.get("ethernet0.present").is_none()
        || config.get("ethernet0.generatedAddress").is_some()
    {
        return Ok(());
    }
    config.set("ethernet0.addressType", "generated");
    config.set("ethernet0.generatedAddress", &mac_of(vm));
    write_atomic(&vm.abs, &config.to_bytes())
}

/// Appends one boot's worth of lines to `vmware.log` beside the VMX.
pub fn write_log(vm: &VmPath, boot: u32, what: &str) -> Result<(), SimError> {
    let path = vm.dir().join("vmware.log");
    let at = now_ms();
    let mut text = String::new();
    for n in 1..=LOG_LINES_PER_BOOT {
        text.push_str(&format!(
            "{at}| vmx| I005: vmrun-sim {what} boot {boot} line {n} of {LOG_LINES_PER_BOOT}\n"
        ));
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| SimError::io("open", &path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| SimError::io("append to", &path, e))
}
