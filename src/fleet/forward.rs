//! Requests relayed to another host of the fleet: what a front door does with a create it
//! placed elsewhere, and with a call about a VM another host owns. The answer comes back
//! as the owner gave it (status, body, the headers a client reads).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::tls::ClientTrust;

/// Marks a create a front door placed: the receiver creates it here, under this id,
/// without placing it again.
pub const PLACED_ID: &str = "X-OSX-Builder-Placed-Id";
/// The front door's host name, on every relayed request (the receiver never relays it on).
pub const FORWARDED_BY: &str = "X-OSX-Builder-Forwarded-By";

pub struct Relayed {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// A relayed request that got no answer: why, and its kind for `/metrics`.
#[derive(Debug)]
pub struct PeerError {
    /// `connect` (nothing listens, or no route), `timeout`, `tls`, or `broken` (the
    /// connection failed once established, or the answer was not HTTP).
    pub kind: &'static str,
    pub message: String,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl PeerError {
    fn new(url: &str, err: &ureq::Error) -> Self {
        use std::io::ErrorKind;
        let kind = match err {
            ureq::Error::Timeout(_) => "timeout",
            ureq::Error::Io(io) if io.kind() == ErrorKind::TimedOut => "timeout",
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => "connect",
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    ErrorKind::ConnectionRefused
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                        | ErrorKind::AddrNotAvailable
                ) =>
            {
                "connect"
            }
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => "tls",
            _ => "broken",
        };
        Self {
            kind,
            message: format!("{url}: {err}"),
        }
    }
}

pub struct Peers {
    agent: ureq::Agent,
}

/// Headers of an owner's answer that a client reads, passed on as they are.
const PASSED_ON: [&str; 3] = ["ETag", "Retry-After", "WWW-Authenticate"];

impl Peers {
    pub fn new(trust: Option<&ClientTrust>) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_resolve(Some(Duration::from_secs(2)))
            // A long poll waits up to a minute on the owner.
            .timeout_recv_response(Some(Duration::from_secs(75)))
            .timeout_recv_body(Some(Duration::from_secs(75)))
            .http_status_as_error(false)
            .max_idle_connections_per_host(16)
            .build();
        let agent = match trust {
            Some(trust) => trust.agent(config),
            None => config.new_agent(),
        };
        Self { agent }
    }

    /// The same request to each `(name, base URL)` at once, on a thread each: every
    /// host's answer, or why it gave none, by name (in order of names).
    pub fn send_each(
        &self,
        hosts: &[(String, String)],
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> BTreeMap<String, Result<Relayed, String>> {
        std::thread::scope(|scope| {
            let asks: Vec<_> = hosts
                .iter()
                .map(|(name, base)| {
                    let ask =
                        scope.spawn(move || self.send(base, method, path_and_query, headers, body));
                    (name, ask)
                })
                .collect();
            asks.into_iter()
                .map(|(name, ask)| {
                    let answer = match ask.join() {
                        Ok(answer) => answer.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("asking {name} failed (a bug)")),
                    };
                    (name.clone(), answer)
                })
                .collect()
        })
    }

    /// Sends the request to `base` (the owner's advertised URL); `Err` when it could not
    /// be reached or did not answer: the caller decides whether to try elsewhere.
    pub fn send(
        &self,
        base: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Relayed, PeerError> {
        let url = format!("{base}{path_and_query}");
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .map_err(|e| PeerError {
                kind: "broken",
                message: format!("{url}: {e}"),
            })?;
        // A host that froze (SIGSTOP, a hung kernel) must not hold the caller for long;
        // a long poll waits up to its own `wait` on the owner.
        let limit = if path_and_query.contains("wait=") {
            Duration::from_secs(70)
        } else {
            Duration::from_secs(10)
        };
        let request = self
            .agent
            .configure_request(request)
            .timeout_recv_response(Some(limit))
            .build();
        let response = self
            .agent
            .run(request)
            .map_err(|e| PeerError::new(&url, &e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("Content-Type");
        let headers = PASSED_ON
            .iter()
            .filter_map(|name| header(name).map(|v| (*name, v)))
            .collect();
        let body = response
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| PeerError::new(&url, &e))?;
        Ok(Relayed {
            status,
            content_type,
            headers,
            body,
        })
    }
}
