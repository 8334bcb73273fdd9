//! Finding a guest's IP address the way Packer and Vagrant do: VMware Tools' answer when it
//! is an address a client can reach, else the DHCP lease of the VM's MAC address.

pub(crate) mod dhcp;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where a VM's address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpSource {
    /// `vmrun getGuestIPAddress` (VMware Tools in the guest).
    Tools,
    /// The DHCP server's lease for the VM's MAC address (the server's own lookup, or
    /// `tart ip --resolver dhcp`).
    DhcpLease,
    /// The host's ARP cache (`tart ip --resolver arp`: bridged VMs are in no lease file of
    /// the host's).
    Arp,
}

/// The address in what Tools reported, or why it is "not yet": a guest reports link-local
/// (no DHCP yet), loopback, the vmnet's host side `.1`, a zoned IPv6 (`fe80::1%en0`) or a
/// host name before its real address.
pub fn usable(answer: &str) -> Result<IpAddr, &'static str> {
    if answer.contains('%') {
        return Err("a link-local address with a zone");
    }
    let ip: IpAddr = answer
        .parse()
        .map_err(|_| "not an IP address (a host name?)")?;
    let unusable = match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() {
                Some("link-local (the guest has no DHCP address yet)")
            } else if v4.octets()[3] == 1 {
                Some("the host's side of the vmnet (.1)")
            } else if v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[3] == 255
            {
                Some("not a guest's unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("IPv6 link-local")
            } else if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() {
                Some("not a guest's unicast address")
            } else {
                None
            }
        }
    };
    match unusable {
        Some(why) => Err(why),
        None => Ok(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_a_client_can_reach_are_usable() {
        for good in [
            "192.168.123.147",
            "10.0.0.2",
            "172.16.5.9",
            "fd00::5",
            "2001:db8::7",
        ] {
            assert_eq!(usable(good).map(|ip| ip.to_string()), Ok(good.to_string()));
        }
        for bad in [
            "169.254.247.160",
            "fe80::1",
            "fe80::1%en0",
            "127.0.0.1",
            "::1",
            "192.168.64.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.255",
            "224.0.0.5",
            "build-mac.local",
            "localhost",
            "",
        ] {
            assert!(usable(bad).is_err(), "{bad}");
        }
    }
}
