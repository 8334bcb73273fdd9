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

/// Appends one boot's worth of lines to `vmware.log` beside the VMX, in the shape VMware
/// Fusion writes them (`<time>| <thread>| I005: <text>`), each with its own timestamp.
pub fn write_log(vm: &VmPath, boot: u32, what: &str, mode: &str) -> Result<(), SimError> {
    let vmx = vm.abs.display();
    let mut lines: Vec<(&str, String)> = vec![
        ("vmx", format!("Log for VMware Fusion pid={} version=13.5.2 build=build-23775688 option=Release", std::process::id())),
        ("vmx", "The host is x86_64.".into()),
        ("vmx", "Host codepage=UTF-8 encoding=UTF-8".into()),
        ("vmx", "Hostname=build-mac-sim".into()),
        ("vmx", format!("Command line: \"/Applications/VMware Fusion.app/Contents/Library/vmware-vmx\" \"-E\" \"en\" \"-s\" \"vmx.stdio.keep=TRUE\" \"-@\" \"duplex=3;msgs=ui\" \"{vmx}\"")),
        ("vmx", format!("DICT --- CONFIGURATION {vmx}")),
        ("vmx", "DICT            config.version = \"8\"".into()),
        ("vmx", "DICT         virtualHW.version = \"19\"".into()),
        ("vmx", "VMMon_GetkHzEstimate: Calculated 2592000 kHz".into()),
        ("vmx", format!("VMX_PowerOn: boot {boot} ({what}, {mode})")),
    ];
    if what == "reset" {
        lines.push(("vcpu-0", "CPU reset: hard (mode Emulation)".into()));
    }
    lines.push(("vmx", "Vix: [mainDispatch.c:4084]: VMAutomation_ReportPowerOpFinished: statevar=0, newAppState=1872, success=1 additionalError=0".into()));
    lines.push(("vmx", format!("Ethernet0 MAC Address: {}", mac_of(vm))));
    lines.push((
        "vmx",
        "VMXVmdb_SetToolsVersionStatus: status value set to 'noTools', 'noTools', install possible"
            .into(),
    ));
    let mut heartbeat = 0;
    while lines.len() < LOG_LINES_PER_BOOT {
        lines.push((
            "vmx",
            format!("Tools: [AppStatus] Last heartbeat value {heartbeat} (never)"),
        ));
        heartbeat += 1;
    }
    append_log(vm, &lines)
}

/// What VMware appends at power-off.
pub fn write_power_off(vm: &VmPath) -> Result<(), SimError> {
    append_log(
        vm,
        &[
            ("vmx", "Stopping VCPU threads...".into()),
            ("vmx", "VMX exit (0).".into()),
        ],
    )
}

fn append_log(vm: &VmPath, lines: &[(&str, String)]) -> Result<(), SimError> {
    let path = vm.dir().join("vmware.log");
    let at = now_ms();
    let mut text = String::new();
    for (n, (thread, line)) in lines.iter().enumerate() {
        text.push_str(&format!(
            "{}| {thread}| I005: {line}\n",
            timestamp(at + n as u64)
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

/// `2024-05-01T10:00:00.123Z` for milliseconds since the epoch (Hinnant's civil-from-days).
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}
