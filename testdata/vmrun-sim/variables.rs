//! `readVariable` and `writeVariable`: a running VM's guest variables, which is how a test
//! sees what the guest would read with `vmware-rpctool "info-get guestinfo.NAME"`.
//!
//! As in VMware, a VM's `guestVar`s start, at power-on, as the VMX's `guestinfo.*` values
//! (`|XX` decoded), so an edit of the VMX after `start` does not reach the guest; a
//! `writeVariable guestVar` adds to them, and all are gone at power-off. `runtimeConfig`
//! reads the VMX as it is on disk (written back too: the VM is running, as VMware
//! does). `guestEnv` is kept beside the guest variables. Each write is also appended to the
//! VM's `writes` in its state file (kind, name, value, time), so a test can tell a variable
//! written at runtime from one the VMX gave at power-on.

use crate::args::{too_many, vmx_and_rest};
use crate::error::SimError;
use crate::paths::VmPath;
use crate::state::StateDir;
use crate::vmx::{self, Vmx};
use std::collections::BTreeMap;

const PREFIX: &str = "guestinfo.";

/// The guest variables a VM starts with: its VMX's `guestinfo.NAME` entries by NAME.
pub fn from_vmx(config: &Vmx) -> BTreeMap<String, String> {
    config
        .entries()
        .filter_map(|(key, value)| {
            let prefix = key.get(..PREFIX.len())?;
            prefix
                .eq_ignore_ascii_case(PREFIX)
                .then(|| (key[PREFIX.len()..].to_string(), decode(value)))
        })
        .collect()
}

/// VMware's `|XX` escapes, back to the bytes.
fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'|' {
            if let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn kind_and_name<'a>(
    command: &str,
    rest: &'a [String],
) -> Result<(&'a str, &'a str, &'a [String]), SimError> {
    match rest {
        [kind, name, more @ ..] => {
            if !matches!(kind.as_str(), "guestVar" | "runtimeConfig" | "guestEnv") {
                return Err(SimError::InvalidArguments(format!(
                    "'{command}' accepts guestVar, runtimeConfig or guestEnv, not '{kind}'"
                )));
            }
            Ok((kind.as_str(), name.as_str(), more))
        }
        _ => Err(SimError::InvalidArguments(format!(
            "'{command}' needs a variable type and a name"
        ))),
    }
}

pub fn read_variable(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("readVariable", args)?;
    let (kind, name, more) = kind_and_name("readVariable", rest)?;
    if !more.is_empty() {
        return Err(too_many("readVariable"));
    }
    let vm = VmPath::new(vmx_arg)?;
    let config = vmx::load(&vm)?;
    let running = state
        .load(&vm)?
        .filter(|s| s.running)
        .ok_or_else(|| SimError::NotPoweredOn(vm.given.clone()))?;
    let value = match kind {
        "guestVar" => running.guest_vars.get(name).cloned(),
        "guestEnv" => running.guest_env.get(name).cloned(),
        _ => config.get(name).map(decode),
    };
    Ok(format!("{}\n", value.unwrap_or_default()))
}

pub fn write_variable(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("writeVariable", args)?;
    let (kind, name, more) = kind_and_name("writeVariable", rest)?;
    let value = match more {
        [value] => value,
        [] => {
            return Err(SimError::InvalidArguments(
                "'writeVariable' needs a value".into(),
            ))
        }
        _ => return Err(too_many("writeVariable")),
    };
    let vm = VmPath::new(vmx_arg)?;
    let mut config = vmx::load(&vm)?;
    let _guard = state.lock_vm(&vm)?;
    let mut running = state
        .load(&vm)?
        .filter(|s| s.running)
        .ok_or_else(|| SimError::NotPoweredOn(vm.given.clone()))?;
    match kind {
        "guestVar" => {
            running.guest_vars.insert(name.to_string(), value.clone());
        }
        "guestEnv" => {
            running.guest_env.insert(name.to_string(), value.clone());
        }
        _ => {
            config.set(name, &vmx::escape_value(value));
            crate::state::write_atomic(&vm.abs, &config.to_bytes())?;
        }
    }
    running.writes.push(crate::state::VariableWrite {
        kind: kind.to_string(),
        name: name.to_string(),
        value: value.clone(),
        at_ms: crate::state::now_ms(),
    });
    state.save(&vm, &running)?;
    Ok(String::new())
}
