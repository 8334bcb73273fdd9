//! DHCP leases by MAC address, for a guest whose Tools are slow to report (Packer and Vagrant
//! do the same): VMware's ISC `vmnet-dhcpd-vmnetN.leases` and Apple's `/var/db/dhcpd_leases`
//! (bridged networks, Fusion 12.0/12.1 on Big Sur).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::usable;

/// Lease files to look in; a missing file has no leases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseFiles {
    /// ISC dhcpd format (VMware's vmnet-dhcpd).
    pub isc: Option<PathBuf>,
    /// Apple's bootpd format.
    pub apple: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Lease {
    ip: Ipv4Addr,
    mac: String,
    /// Seconds since the epoch; `None`: the lease does not say when it started.
    starts: Option<i64>,
    /// Seconds since the epoch; `None`: never ends.
    ends: Option<i64>,
}

impl LeaseFiles {
    /// The address of the newest lease of `mac` that has not ended at `now` (seconds since
    /// the epoch), from either file.
    pub fn lookup(&self, mac: &str, now: i64) -> Option<Ipv4Addr> {
        let mac = normalise_mac(mac)?;
        let mut leases = Vec::new();
        if let Some(text) = self.isc.as_deref().and_then(read) {
            leases.extend(parse_isc(&text));
        }
        if let Some(text) = self.apple.as_deref().and_then(read) {
            leases.extend(parse_apple(&text));
        }
        newest_valid(leases, &mac, now)
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Later leases win ties: dhcpd appends a renewed lease after the old one.
fn newest_valid(leases: Vec<Lease>, mac: &str, now: i64) -> Option<Ipv4Addr> {
    leases
        .into_iter()
        .enumerate()
        .filter(|(_, l)| l.mac == mac && l.ends.is_none_or(|end| end > now))
        .filter(|(_, l)| usable(&l.ip.to_string()).is_ok())
        .max_by_key(|(order, l)| (l.starts.unwrap_or(i64::MIN), *order))
        .map(|(_, l)| l.ip)
}

/// `0:c:29:A:b:1` and `00:0C:29:0a:0B:01` are one MAC: six lowercase two-digit octets.
pub fn normalise_mac(mac: &str) -> Option<String> {
    let octets: Vec<u8> = mac
        .trim()
        .split([':', '-'])
        .map(|o| u8::from_str_radix(o, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if octets.len() != 6 {
        return None;
    }
    Some(
        octets
            .iter()
            .map(|o| format!("{o:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// `lease IP { starts W YYYY/MM/DD HH:MM:SS; ends ...|never; hardware ethernet MAC; }`.
fn parse_isc(text: &str) -> Vec<Lease> {
    let mut leases = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("lease ") {
        rest = &rest[at + "lease ".len()..];
        let Some(open) = rest.find('{') else { break };
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let ip = rest[..open].trim().parse::<Ipv4Addr>();
        let body = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        let Ok(ip) = ip else { continue };
        let mut lease = Lease {
            ip,
            mac: String::new(),
            starts: None,
            ends: Some(i64::MIN),
        };
        for statement in body.split(';').map(str::trim) {
            let words: Vec<&str> = statement.split_whitespace().collect();
            match words.as_slice() {
                ["hardware", "ethernet", mac] => {
                    lease.mac = normalise_mac(mac).unwrap_or_default();
                }
                ["starts", _, date, time] => lease.starts = isc_time(date, time),
                ["ends", "never"] => lease.ends = None,
                // An unreadable end counts as ended: better no address than a stale one.
                ["ends", _, date, time] => {
                    lease.ends = Some(isc_time(date, time).unwrap_or(i64::MIN))
                }
                _ => {}
            }
        }
        if !lease.mac.is_empty() {
            leases.push(lease);
        }
    }
    leases
}

/// `YYYY/MM/DD HH:MM:SS` (UTC) as seconds since the epoch.
fn isc_time(date: &str, time: &str) -> Option<i64> {
    let d: Vec<i64> = date
        .split('/')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return None;
    }
    Some(days_from_civil(*y, *m, *day) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `{ name=.. ip_address=A.B.C.D hw_address=1,0:c:29:.. lease=0xEXPIRY }` blocks.
fn parse_apple(text: &str) -> Vec<Lease> {
    let mut leases = Vec::new();
    for block in text.split('{').skip(1) {
        let body = block.split('}').next().unwrap_or_default();
        let mut ip = None;
        let mut mac = None;
        let mut ends = Some(i64::MIN);
        for line in body.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "ip_address" => ip = value.trim().parse::<Ipv4Addr>().ok(),
                // `1,` is the hardware type (Ethernet).
                "hw_address" => {
                    mac = value
                        .split_once(',')
                        .and_then(|(_, mac)| normalise_mac(mac))
                }
                "lease" => {
                    ends = Some(
                        i64::from_str_radix(value.trim().trim_start_matches("0x"), 16)
                            .unwrap_or(i64::MIN),
                    )
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            // Apple's file has no start: it lists the newest lease first.
            leases.push(Lease {
                ip,
                mac,
                starts: None,
                ends,
            });
        }
    }
    // Oldest first, so that "later wins" picks the file's first entry.
    leases.reverse();
    leases
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "00:0c:29:3e:5a:01";
    /// 2026-12-01 12:00:00 UTC.
    const NOW: i64 = 1_796_126_400;

    #[test]
    fn isc_dates_are_utc_seconds() {
        assert_eq!(isc_time("1970/01/01", "00:00:00"), Some(0));
        assert_eq!(isc_time("2026/12/01", "12:00:00"), Some(NOW));
        assert_eq!(isc_time("2026/13/01", "12:00:00"), None);
    }

    #[test]
    fn isc_newest_unexpired_lease_of_the_mac_wins() {
        let text = format!(
            "# The format of this file is documented in the dhcpd.leases(5) manual page.\n\
             lease 192.168.64.10 {{\n  starts 2 2026/12/01 10:00:00;\n  ends 2 2026/12/01 10:30:00;\n  hardware ethernet {MAC};\n}}\n\
             lease 192.168.64.11 {{\n  starts 2 2026/12/01 11:50:00;\n  ends 2 2026/12/01 12:20:00;\n  hardware ethernet 00:0C:29:3E:5A:01;\n  client-hostname \"mac\";\n}}\n\
             lease 192.168.64.12 {{\n  starts 2 2026/12/01 11:40:00;\n  ends 2 2026/12/01 12:10:00;\n  hardware ethernet {MAC};\n}}\n\
             lease 192.168.64.13 {{\n  starts 2 2026/12/01 11:59:00;\n  ends 2 2026/12/01 12:29:00;\n  hardware ethernet 00:0c:29:00:00:02;\n}}\n"
        );
        let leases = parse_isc(&text);
        assert_eq!(leases.len(), 4);
        assert_eq!(
            newest_valid(leases.clone(), MAC, NOW),
            Some([192, 168, 64, 11].into())
        );
        // After every lease of the MAC ended: none.
        assert_eq!(newest_valid(leases, MAC, NOW + 3600), None);
    }

    #[test]
    fn apple_leases_are_read_by_hardware_address() {
        let text = format!(
            "{{\n\tname=mac-1\n\tip_address=192.168.2.20\n\thw_address=1,0:c:29:3e:5a:1\n\tidentifier=1,0:c:29:3e:5a:1\n\tlease=0x{:x}\n}}\n\
             {{\n\tname=mac-1\n\tip_address=192.168.2.19\n\thw_address=1,0:c:29:3e:5a:1\n\tlease=0x{:x}\n}}\n\
             {{\n\tname=other\n\tip_address=192.168.2.30\n\thw_address=1,0:c:29:0:0:2\n\tlease=0x{:x}\n}}\n",
            NOW + 600,
            NOW + 300,
            NOW + 600
        );
        let leases = parse_apple(&text);
        assert_eq!(
            newest_valid(leases.clone(), MAC, NOW),
            Some([192, 168, 2, 20].into())
        );
        assert_eq!(newest_valid(leases, MAC, NOW + 601), None);
    }

    #[test]
    fn macs_are_compared_normalised() {
        assert_eq!(normalise_mac("0:C:29:3e:5A:1").as_deref(), Some(MAC));
        assert_eq!(normalise_mac("00-0c-29-3e-5a-01").as_deref(), Some(MAC));
        assert_eq!(normalise_mac("00:0c:29"), None);
        assert_eq!(normalise_mac("zz:0c:29:3e:5a:01"), None);
    }
}
