//! The fleet's settings: rows of the one settings table (`config::SETTINGS`), read
//! here into [`FleetConfig`]. Without `--etcd` there is no fleet and none of the others is
//! looked at beyond its syntax.

use std::path::PathBuf;

use crate::config::setting::{ConfigError, Reader, Setting, Typed};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd client URLs, tried in turn.
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Ends with `/`: every key of this fleet is below it.
    pub prefix: String,
    /// This host's name in the fleet.
    pub host_name: String,
    /// How others reach this host; `None`: from the bound address and the host name.
    pub advertise_url: Option<String>,
    /// Seconds: a host whose lease is not renewed this long is dead to the fleet.
    pub ttl: u64,
    /// An etcd that does not answer at start leaves this host serving on its own.
    pub optional: bool,
}

pub const ETCD: Setting = Setting {
    flag: "etcd",
    env: "OSX_BUILDER_ETCD",
    default: Typed::Unset,
    help: "etcd client URLs, comma-separated (http://10.0.0.1:2379,...): this host joins the fleet kept there; without it the server runs alone, as it always did",
};

pub const ETCD_CA_FILE: Setting = Setting {
    flag: "etcd-ca-file",
    env: "OSX_BUILDER_ETCD_CA_FILE",
    default: Typed::Unset,
    help: "PEM bundle of the CA that signed the etcd members' certificates (https:// --etcd URLs)",
};

pub const ETCD_CERT: Setting = Setting {
    flag: "etcd-cert",
    env: "OSX_BUILDER_ETCD_CERT",
    default: Typed::Unset,
    help: "PEM client certificate chain this host shows etcd (etcd's --client-cert-auth); with --etcd-key",
};

pub const ETCD_KEY: Setting = Setting {
    flag: "etcd-key",
    env: "OSX_BUILDER_ETCD_KEY",
    default: Typed::Unset,
    help: "PEM private key of --etcd-cert",
};

pub const ETCD_PREFIX: Setting = Setting {
    flag: "etcd-prefix",
    env: "OSX_BUILDER_ETCD_PREFIX",
    default: Typed::Text("/osx-builder/"),
    help: "etcd key prefix of this fleet, so that several fleets can share one etcd",
};

pub const HOST_NAME: Setting = Setting {
    flag: "host-name",
    env: "OSX_BUILDER_HOST_NAME",
    default: Typed::Unset,
    help: "this host's name in the fleet (default: the machine's host name); a second live host with the same name refuses to start",
};

pub const ADVERTISE_URL: Setting = Setting {
    flag: "advertise-url",
    env: "OSX_BUILDER_ADVERTISE_URL",
    default: Typed::Unset,
    help: "URL other hosts of the fleet reach this one at (default: http(s)://<host name or --bind>:<port>)",
};

pub const FLEET_TTL: Setting = Setting {
    flag: "fleet-ttl",
    env: "OSX_BUILDER_FLEET_TTL",
    default: Typed::Count(10),
    help: "seconds after which a host that stopped renewing its etcd lease is dead to the fleet: its VMs read failed host-lost, its slots are free",
};

pub const FLEET_OPTIONAL: Setting = Setting {
    flag: "fleet-optional",
    env: "OSX_BUILDER_FLEET_OPTIONAL",
    default: Typed::Switch(false),
    help: "start even when etcd does not answer (serving alone, joining when it does); without it an unreachable etcd stops the server",
};

pub const SETTINGS: [Setting; 9] = [
    ETCD,
    ETCD_CA_FILE,
    ETCD_CERT,
    ETCD_KEY,
    ETCD_PREFIX,
    HOST_NAME,
    ADVERTISE_URL,
    FLEET_TTL,
    FLEET_OPTIONAL,
];

pub fn parse(read: &Reader) -> Result<Option<FleetConfig>, ConfigError> {
    let endpoints: Vec<String> = (read.optional)(&ETCD)?
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| e.trim_end_matches('/').to_string())
        .collect();
    for endpoint in &endpoints {
        let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !scheme_ok || endpoint.split("://").nth(1).is_none_or(str::is_empty) {
            return Err(ConfigError(format!(
                "--etcd / OSX_BUILDER_ETCD: {endpoint:?} is not an etcd client URL such as http://10.0.0.1:2379"
            )));
        }
    }
    let path = |s: &Setting| Ok::<_, ConfigError>((read.optional)(s)?.map(PathBuf::from));
    let (ca_file, cert, key) = (path(&ETCD_CA_FILE)?, path(&ETCD_CERT)?, path(&ETCD_KEY)?);
    if cert.is_some() != key.is_some() {
        return Err(ConfigError(
            "--etcd-cert and --etcd-key go together: give both or neither".into(),
        ));
    }
    let (prefix, _) = (read.value)(&ETCD_PREFIX);
    let prefix = prefix.trim();
    if prefix.is_empty() || prefix.len() > 200 || prefix.chars().any(char::is_control) {
        return Err(ConfigError(format!(
            "--etcd-prefix / OSX_BUILDER_ETCD_PREFIX must be a short key prefix such as /osx-builder/, got {prefix:?}"
        )));
    }
    let prefix = if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let host_name = match (read.optional)(&HOST_NAME)? {
        Some(name) => name.trim().to_string(),
        None => machine_host_name(),
    };
    if !is_host_name(&host_name) {
        return Err(ConfigError(format!(
            "--host-name / OSX_BUILDER_HOST_NAME must be 1 to 63 letters, digits, '.', '-' or '_', got {host_name:?}"
        )));
    }
    let advertise_url =
        (read.optional)(&ADVERTISE_URL)?.map(|u| u.trim().trim_end_matches('/').to_string());
    if let Some(url) = &advertise_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "--advertise-url / OSX_BUILDER_ADVERTISE_URL must be an http:// or https:// URL, got {url:?}"
            )));
        }
    }
    let (ttl, name) = (read.value)(&FLEET_TTL);
    let ttl: u64 = ttl
        .trim()
        .parse()
        .ok()
        .filter(|t| (2..=3600).contains(t))
        .ok_or_else(|| {
            ConfigError(format!(
                "{name} must be whole seconds from 2 to 3600, got {ttl:?}"
            ))
        })?;
    let optional = (read.switch)(&FLEET_OPTIONAL)?;
    if endpoints.is_empty() {
        return Ok(None);
    }
    Ok(Some(FleetConfig {
        endpoints,
        ca_file,
        cert,
        key,
        prefix,
        host_name,
        advertise_url,
        ttl,
        optional,
    }))
}

/// A name safe in an etcd key, a URL and a log line.
pub fn is_host_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The machine's host name, without its domain; `localhost` if it cannot be read.
fn machine_host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what is passed.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let short = name.split('.').next().unwrap_or("").to_string();
    if rc == 0 && is_host_name(&short) {
        short
    } else {
        "localhost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_with(given: &[(&Setting, &str)]) -> Result<Option<FleetConfig>, ConfigError> {
        let map: HashMap<&str, String> =
            given.iter().map(|(s, v)| (s.flag, v.to_string())).collect();
        let value = |s: &Setting| {
            (
                map.get(s.flag).cloned().unwrap_or_else(|| s.default_text()),
                s.flag.to_string(),
            )
        };
        let optional = |s: &Setting| Ok(map.get(s.flag).cloned().filter(|v| !v.is_empty()));
        let switch = |s: &Setting| Ok(map.get(s.flag).is_some_and(|v| v == "true"));
        parse(&Reader {
            value: &value,
            optional: &optional,
            switch: &switch,
        })
    }

    #[test]
    fn off_without_etcd() {
        assert_eq!(parse_with(&[]).unwrap(), None);
        assert_eq!(parse_with(&[(&HOST_NAME, "mac-1")]).unwrap(), None);
    }

    #[test]
    fn reads_the_fleet() {
        let fleet = parse_with(&[
            (&ETCD, "http://a:2379/, https://b:2379"),
            (&HOST_NAME, "mac-1"),
            (&ETCD_PREFIX, "/ci"),
            (&FLEET_TTL, "3"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(fleet.endpoints, ["http://a:2379", "https://b:2379"]);
        assert_eq!(fleet.prefix, "/ci/");
        assert_eq!(fleet.ttl, 3);
        assert_eq!(fleet.host_name, "mac-1");
        assert!(!fleet.optional);
    }

    #[test]
    fn bad_values_name_themselves() {
        let etcd = (&ETCD, "http://a:2379");
        for (given, says) in [
            ((&ETCD, "a:2379"), "etcd client URL"),
            ((&HOST_NAME, "a/b"), "host-name"),
            ((&FLEET_TTL, "1"), "fleet-ttl"),
            ((&ETCD_CERT, "c.pem"), "go together"),
            ((&ADVERTISE_URL, "mac:1"), "advertise-url"),
        ] {
            let err = parse_with(&[etcd, given]).unwrap_err();
            assert!(err.0.contains(says), "{err}");
        }
    }
}
