//! A callback POSTs a VM object, which is a valid create body: a callback to this server's
//! own `POST /vms` would create VMs without end. So a callback may not name this server
//! (any of its addresses, in any notation), numeric hosts must be plain dotted quads, and
//! `--callback-allow` can confine callbacks to the coordinator's networks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use super::Guard;
use crate::service::Error;

fn refuse(why: String) -> Error {
    Error::invalid("invalid-callback-url", why)
}

/// Host and port of an http(s) URL that `create_body` has already checked the shape of.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => default,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// A host whose last label is a number is an IPv4 address to URL parsers (WHATWG), in
/// decimal, octal or hex, with one to four parts: `2130706433`, `0x7f000001`, `127.1`,
/// `0177.0.0.1` all mean 127.0.0.1. Only the plain dotted quad is accepted.
fn numeric_but_not_dotted_quad(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
    numeric && host.parse::<Ipv4Addr>().is_err()
}

/// True when `ip` is an address of this host: binding to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

impl Guard {
    pub fn check_callback_url(&self, url: &str) -> Result<(), Error> {
        let Some((host, port)) = host_port(url) else {
            return Err(refuse(
                "callback_url has no host and port that can be used".into(),
            ));
        };
        if numeric_but_not_dotted_quad(&host) {
            return Err(refuse(format!(
                "callback_url's host {:?} is a number but not a dotted quad such as 10.0.0.5: write the address in that form",
                cut(&host)
            )));
        }
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.map(|a| a.ip()).collect())
                .unwrap_or_default(),
        };
        if ips.is_empty() {
            // An unknown name cannot reach this server; delivery reports it.
            return self.check_allowed(&host, &[]);
        }
        if let Some(own) = self.listening() {
            let ours = |ip: &IpAddr| {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
                    v4 => *v4,
                };
                port == own.port()
                    && (ip == own.ip()
                        || (own.ip().is_unspecified() && is_local(ip))
                        || (ip.is_loopback() && own.ip().is_loopback())
                        || ip.is_unspecified())
            };
            if ips.iter().any(ours) {
                return Err(refuse(format!(
                    "callback_url names this server itself ({}:{port}): a callback is a POST of the VM object and would create VMs here; give the coordinator's receiver",
                    cut(&host)
                )));
            }
        }
        self.check_allowed(&host, &ips)
    }

    fn check_allowed(&self, host: &str, ips: &[IpAddr]) -> Result<(), Error> {
        if self.callback_allow.is_empty() {
            return Ok(());
        }
        let allowed = !ips.is_empty()
            && ips
                .iter()
                .all(|ip| self.callback_allow.iter().any(|net| net.contains(*ip)));
        if allowed {
            return Ok(());
        }
        let nets: Vec<String> = self.callback_allow.iter().map(|n| n.to_string()).collect();
        Err(refuse(format!(
            "callback_url's host {:?} is not in the networks callbacks may reach (--callback-allow {})",
            cut(host),
            nets.join(", ")
        )))
    }
}

fn cut(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_hosts_must_be_dotted_quads() {
        for bad in [
            "2130706433",
            "0x7f000001",
            "127.1",
            "0177.0.0.1",
            "127.0.0.01",
            "0x7f.0.0.1",
            "1.2.3.4.5",
        ] {
            assert!(numeric_but_not_dotted_quad(bad), "{bad}");
        }
        for good in [
            "127.0.0.1",
            "10.0.0.5",
            "ci.example.com",
            "host-1",
            "a.b.c1",
            "localhost",
        ] {
            assert!(!numeric_but_not_dotted_quad(good), "{good}");
        }
    }

    #[test]
    fn host_and_port_come_from_the_authority() {
        assert_eq!(
            host_port("http://u:p@Example.com:81/x"),
            Some(("example.com".into(), 81))
        );
        assert_eq!(host_port("https://h/x?y"), Some(("h".into(), 443)));
        assert_eq!(host_port("http://[::1]:9/"), Some(("::1".into(), 9)));
        assert_eq!(host_port("http://h:notaport/"), None);
    }

    #[test]
    fn this_server_and_networks_outside_the_allow_list_are_refused() {
        let guard = Guard::new(
            &[],
            vec![super::super::cidr::Cidr::parse("10.0.0.0/8").unwrap()],
            false,
        )
        .unwrap();
        guard.set_listening("127.0.0.1:4000".parse().unwrap());
        assert!(guard
            .check_callback_url("http://127.0.0.1:4000/vms")
            .is_err());
        assert!(guard
            .check_callback_url("http://[::ffff:127.0.0.1]:4000/")
            .is_err());
        assert!(guard.check_callback_url("http://10.1.2.3:4000/cb").is_ok());
        assert!(guard.check_callback_url("http://192.168.0.3/cb").is_err());
        let open = Guard::new(&[], vec![], false).unwrap();
        open.set_listening("0.0.0.0:4000".parse().unwrap());
        assert!(open.check_callback_url("http://127.0.0.2:4000/").is_err());
        assert!(open.check_callback_url("http://localhost:4000/").is_err());
        assert!(open.check_callback_url("http://0.0.0.0:4000/").is_err());
        assert!(open.check_callback_url("http://127.0.0.1:4001/").is_ok());
    }
}
