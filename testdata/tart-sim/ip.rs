//! The pretend DHCP server (`/var/db/dhcpd_leases` on a Mac) and `tart ip`. A lease outlives
//! its VM until it expires, so `ip` of a stopped VM can still answer: only `list` tells
//! whether a VM runs.

use crate::error::TartError;
use crate::home::{self, env_ms, now_ms, Home};
use serde_json::{json, Value};
use std::fs;
use std::time::Duration;

fn lease_path(home: &Home, mac: &str) -> std::path::PathBuf {
    home.sim("leases")
        .join(format!("{}.json", mac.replace(':', "-")))
}

pub fn grant_lease(home: &Home, mac: &str, name: &str, net: &str, started_at_ms: u64) {
    let path = lease_path(home, mac);
    let _ = fs::create_dir_all(home.sim("leases"));
    // Guests do not all boot in the same time: a client's polling meets a lease at any
    // moment of its cycle, not at one lucky phase.
    let spread = env_ms("TART_SIM_BOOT_JITTER_MS", 0);
    let jitter_ms = uuid::Uuid::new_v4().as_u64_pair().0 % spread.saturating_add(1);
    let lease = json!({"mac": mac, "name": name, "net": net, "started_at_ms": started_at_ms,
        "jitter_ms": jitter_ms});
    let _ = fs::write(path, lease.to_string());
}

pub fn end_lease_run(home: &Home, mac: &str) {
    let path = lease_path(home, mac);
    if let Ok(Value::Object(mut lease)) =
        serde_json::from_str::<Value>(&fs::read_to_string(&path).unwrap_or_default())
    {
        lease.insert("stopped_at_ms".into(), now_ms().into());
        let _ = fs::write(path, Value::Object(lease).to_string());
    }
}

/// The address the pretend network gives this MAC: stable, never .0, .1 or .255.
pub fn address(mac: &str, bridged: bool) -> String {
    let hash = mac.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let host = 2 + hash % 252;
    if bridged {
        format!("192.168.1.{host}")
    } else {
        format!("192.168.64.{host}")
    }
}

fn lookup(home: &Home, name: &str, resolver: &str) -> Option<String> {
    let config = home::read_config(&home.config_path(name)).ok()?;
    let mac = config.get("macAddress")?.as_str()?.to_string();
    let lease: Value =
        serde_json::from_str(&fs::read_to_string(lease_path(home, &mac)).ok()?).ok()?;
    let started = lease["started_at_ms"].as_u64()?;
    let jitter = lease["jitter_ms"].as_u64().unwrap_or(0);
    let now = now_ms();
    if now < started + env_ms("TART_SIM_BOOT_MS", 0) + jitter
        || now >= started + env_ms("TART_SIM_LEASE_MS", 86_400_000)
    {
        return None;
    }
    let bridged = lease["net"]
        .as_str()
        .is_some_and(|n| n.starts_with("bridged"));
    // A bridged VM's lease is on the LAN's DHCP server, not the Mac's: only ARP sees it.
    if bridged && resolver != "arp" {
        return None;
    }
    // A stopped VM's address leaves the ARP cache with it.
    if resolver == "arp" && lease.get("stopped_at_ms").is_some() {
        return None;
    }
    Some(address(&mac, bridged))
}

/// `tart ip NAME [--wait N] [--resolver dhcp|arp|agent]`.
pub fn ip(home: &Home, args: &[String]) -> Result<(), TartError> {
    let mut name = None;
    let mut wait = 0u64;
    let mut resolver = "dhcp".to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .unwrap_or_default()
        };
        match flag {
            "--wait" => {
                let text = value();
                wait = text.parse().map_err(|_| {
                    TartError::usage(&format!(
                        "The value '{text}' is invalid for '--wait <wait>'"
                    ))
                })?;
            }
            "--resolver" => {
                resolver = value();
                if !matches!(resolver.as_str(), "dhcp" | "arp" | "agent") {
                    return Err(TartError::usage(&format!(
                        "The value '{resolver}' is invalid for '--resolver <resolver>'"
                    )));
                }
            }
            f if f.starts_with('-') => {
                return Err(TartError::usage(&format!("Unknown option '{f}'")))
            }
            _ => name = Some(arg.clone()),
        }
    }
    let Some(name) = name else {
        return Err(TartError::usage("Missing expected argument '<name>'"));
    };
    home.require(&name)?;
    let poll = Duration::from_millis(env_ms("TART_SIM_IP_POLL_MS", 1000).max(1));
    let deadline = now_ms() + wait * 1000;
    loop {
        if let Some(address) = lookup(home, &name, &resolver) {
            println!("{address}");
            return Ok(());
        }
        std::thread::sleep(poll);
        if now_ms() >= deadline {
            break;
        }
    }
    if let Some(address) = lookup(home, &name, &resolver) {
        println!("{address}");
        return Ok(());
    }
    let hint = if home.runner(&name).is_none() {
        ", is your VM running?"
    } else {
        ""
    };
    Err(TartError::one(format!("no IP address found{hint}")))
}
