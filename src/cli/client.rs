//! Every request of the command line goes through [`Client`], whose agent is made by
//! [`agent`]: the one place that knows how the client reaches a server (timeouts, TLS).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::Failure;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:12345";

/// Where the server is and how to prove who we are.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    pub token: Option<String>,
    /// Extra trusted CA certificates (PEM) for an `https://` server.
    pub ca_file: Option<PathBuf>,
    /// The roots an `https://` server is checked against: the system store (or
    /// `SSL_CERT_FILE`) plus `ca_file`, as the server itself trusts image servers.
    trust: Option<crate::tls::ClientTrust>,
}

impl Target {
    /// Checks what can be checked before the first request: the URL's scheme and the CA
    /// file, so that a typo is a usage error (exit 2), not an unreachable server (exit 3).
    pub fn new(
        server: &str,
        token: Option<String>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, Failure> {
        let base = server.trim().trim_end_matches('/').to_string();
        let scheme = base.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(Failure::Usage(format!(
                    "--server / OSX_BUILDER_URL must be an http:// or https:// URL such as {DEFAULT_SERVER}, got {server:?}"
                )))
            }
        }
        if let Some(path) = &ca_file {
            std::fs::metadata(path).map_err(|e| {
                Failure::Usage(format!(
                    "--ca-file / OSX_BUILDER_CA_FILE {}: {e}",
                    path.display()
                ))
            })?;
        }
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(Failure::Usage(
                "--token / OSX_BUILDER_TOKEN is set but empty; give it a value or unset it".into(),
            ));
        }
        // Reading the system store costs a few milliseconds: only for https.
        let trust = match scheme.as_deref() {
            Some("https") => Some(
                crate::tls::client_trust(ca_file.as_deref())
                    .map_err(|e| Failure::Usage(format!("--ca-file / OSX_BUILDER_CA_FILE: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            base,
            token,
            ca_file,
            trust,
        })
    }
}

/// The server answers a long poll within a minute (`MAX_WAIT`); this leaves room for it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(90);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the HTTP agent for `target`. Every client request is sent by an agent made here.
pub fn agent(target: &Target) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(Some(RESPONSE_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("osx-builder-cli/", env!("CARGO_PKG_VERSION")))
        .build();
    match &target.trust {
        Some(trust) => trust.agent(config),
        None => config.new_agent(),
    }
}

/// An answer: status, the headers the client looks at, and the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::Protocol(format!(
                "the server's answer (HTTP {}) is not JSON: {e}",
                self.status
            ))
        })
    }
}

pub struct Client {
    target: Target,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(target: Target) -> Self {
        let agent = agent(&target);
        Self { target, agent }
    }

    pub fn base(&self) -> &str {
        &self.target.base
    }

    /// Sends one request; a 2xx or 304 is `Ok`, any other status the server's
    /// `{code, message}` as [`Failure::Api`].
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Failure> {
        let url = format!("{}{path}", self.target.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.target.token {
            request = request.header("Authorization", format!("Bearer {}", token.trim()));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let bytes = match body {
            Some(value) => {
                request = request.header("Content-Type", "application/json");
                serde_json::to_vec(value).map_err(|e| Failure::Usage(e.to_string()))?
            }
            None => Vec::new(),
        };
        let request = request
            .body(bytes)
            .map_err(|e| Failure::Usage(format!("{url}: {e}")))?;
        let response = self
            .agent
            .run(request)
            .map_err(|e| no_answer(&self.target.base, e))?;
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| no_answer(&self.target.base, e))?;
        let reply = Reply { status, etag, body };
        if (200..300).contains(&status) || status == 304 {
            return Ok(reply);
        }
        Err(api_failure(&reply))
    }

    pub fn get_json(&self, path: &str) -> Result<Value, Failure> {
        self.send("GET", path, None, &[])?.json()
    }
}

fn api_failure(reply: &Reply) -> Failure {
    let value: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let text = |key: &str| value[key].as_str().map(str::to_string);
    let code = text("code").unwrap_or_else(|| format!("http-{}", reply.status));
    let mut message =
        text("message").unwrap_or_else(|| String::from_utf8_lossy(&reply.body).trim().to_string());
    if reply.status == 401 {
        message.push_str(" (give the token with --token or OSX_BUILDER_TOKEN)");
    }
    Failure::Api {
        status: reply.status,
        code,
        message,
        body: value,
    }
}

/// Why no answer came: a TLS failure says what it is and what to do (exit 1: the server
/// was reached); anything else is an unreachable server (exit 3).
fn no_answer(base: &str, err: ureq::Error) -> Failure {
    if let Some(tls) = crate::tls::failure(&err) {
        return Failure::Tls(match tls.kind {
            crate::tls::FailureKind::Certificate => format!(
                "the server at {base} answered, but its TLS certificate was refused: {}; give \
                 the CA certificate that signed it, or the server's own certificate if it is \
                 self-signed, with --ca-file / OSX_BUILDER_CA_FILE",
                tls.reason
            ),
            crate::tls::FailureKind::NotTls => format!(
                "the server at {base} does not speak TLS (it answered with something else, \
                 such as plain HTTP); use an http:// URL in --server / OSX_BUILDER_URL, or \
                 serve the API over TLS with --tls-cert and --tls-key"
            ),
            crate::tls::FailureKind::Handshake => format!(
                "the TLS connection to the server at {base} failed: {}",
                tls.reason
            ),
        });
    }
    let why = match &err {
        ureq::Error::ConnectionFailed => "the connection was refused".to_string(),
        ureq::Error::HostNotFound => "the host name does not resolve".to_string(),
        ureq::Error::Timeout(what) => format!("timed out ({what:?})"),
        ureq::Error::Io(e) => e.to_string(),
        other => other.to_string(),
    };
    Failure::Unreachable(format!(
        "cannot reach the server at {base}: {why}; is it running? (--server / OSX_BUILDER_URL)"
    ))
}

/// Percent-encodes a query value: everything but unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_server_url_before_any_request() {
        let t = Target::new("http://127.0.0.1:9/", None, None).unwrap();
        assert_eq!(t.base, "http://127.0.0.1:9");
        // https is spoken now (with the server's own trust); a missing CA file is a usage error.
        let https = Target::new("https://127.0.0.1:9", None, None).unwrap();
        assert!(https.trust.is_some());
        for bad in ["127.0.0.1:12345", "ftp://x", "file:///etc/passwd"] {
            assert!(
                matches!(Target::new(bad, None, None), Err(Failure::Usage(_))),
                "{bad}"
            );
        }
        let missing = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(matches!(
            Target::new("http://x", None, missing),
            Err(Failure::Usage(m)) if m.contains("--ca-file")
        ));
        assert!(matches!(
            Target::new("http://x", Some(" ".into()), None),
            Err(Failure::Usage(_))
        ));
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("a b=c&d/é"), "a%20b%3Dc%26d%2F%C3%A9");
        assert_eq!(encode("go-1.2_x~"), "go-1.2_x~");
    }
}
