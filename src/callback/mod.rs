//! The callback: one POST of the VM object to `callback_url` when provisioning ends.
//!
//! Each delivery runs on a thread of its own, so a slow or dead receiver never holds a
//! provisioning worker.

pub mod signing;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::vm::VmId;

#[derive(Clone)]
pub struct CallbackSettings {
    /// For one attempt: connect, send and read the answer.
    pub timeout: Duration,
    /// Further attempts after a connection error or a 5xx.
    pub retries: u32,
    /// Signs each attempt (see `crate::callback::signing`) when set.
    pub secret: Option<Arc<[u8]>>,
    /// The roots an https:// receiver is verified against.
    pub trust: crate::tls::ClientTrust,
}

// By hand, so that a `{:?}` never prints the secret.
impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("signed", &self.secret.is_some())
            .field("trust", &self.trust)
            .finish()
    }
}

/// The callback secret from the settings: the value, or the first line of a file (which
/// keeps it out of `ps` and of launchd plists). `None` when neither is set.
pub fn load_secret(
    secret: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<Arc<[u8]>>, String> {
    let secret = match (secret, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(
                "both --callback-secret and --callback-secret-file are set; keep one".into(),
            )
        }
        (Some(secret), None) => secret.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                format!(
                    "cannot read the callback secret file {}: {e}",
                    path.display()
                )
            })?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    // A short secret is guessable offline from one captured callback.
    if secret.len() < 16 {
        return Err(
            "the callback secret must be at least 16 characters (e.g. `openssl rand -hex 32`)"
                .into(),
        );
    }
    Ok(Some(Arc::from(secret.into_bytes())))
}

/// Starts delivering `body` to `url` in the background and returns at once.
pub fn deliver_in_background(id: VmId, url: String, body: Arc<[u8]>, settings: CallbackSettings) {
    let target = url.clone();
    let spawned = thread::Builder::new()
        .name(format!("callback-{id}"))
        .spawn(move || deliver(id, &target, &body, settings));
    if let Err(err) = spawned {
        crate::error!("vm={id} callback to {url} not sent: cannot start a thread: {err}");
    }
}

fn deliver(id: VmId, url: &str, body: &[u8], settings: CallbackSettings) {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(false)
        // A redirect is a delivery failure: following one would let a receiver send the
        // server's POST (or, after a 303, a GET) to any host and port, its own included.
        .max_redirects(0)
        .build();
    let agent = settings.trust.agent(config);
    let mut backoff = Duration::from_secs(1);
    for attempt in 0..=settings.retries {
        let mut request = agent.post(url).header("Content-Type", "application/json");
        if let Some(secret) = &settings.secret {
            // Signed per attempt: a retry minutes later carries a fresh timestamp, which
            // a receiver checking staleness would otherwise reject.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for (name, value) in crate::callback::signing::signature_headers(secret, now, body) {
                request = request.header(name, value);
            }
        }
        let outcome = request.send(body);
        let retry_reason = match outcome {
            Ok(response) if response.status().is_success() => {
                crate::info!(
                    "vm={id} callback delivered to {url} ({})",
                    response.status()
                );
                return;
            }
            Ok(response) if response.status().is_redirection() => {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("nowhere");
                crate::warn!(
                    "vm={id} callback to {url} not delivered: the receiver answered {} \
                     (a redirect to {location}); redirects are not followed, set callback_url \
                     to the final address; not retried",
                    response.status()
                );
                return;
            }
            Ok(response) if response.status().is_server_error() => {
                format!("the receiver answered {}", response.status())
            }
            Ok(response) => {
                crate::warn!(
                    "vm={id} callback to {url} refused with {}; not retried",
                    response.status()
                );
                return;
            }
            Err(err) => match crate::tls::failure(&err) {
                // Retrying cannot help: the certificate will be the same in a second.
                Some(failure) => {
                    let advice = match failure.kind {
                        crate::tls::FailureKind::NotTls => "use an http:// callback_url",
                        _ => {
                            "give the receiver's CA, or its self-signed certificate, with \
                             --ca-file / OSX_BUILDER_CA_FILE, or fix its certificate"
                        }
                    };
                    crate::warn!(
                        "vm={id} callback to {url} failed: the TLS connection failed: {}; \
                         not retried ({advice})",
                        failure.reason
                    );
                    return;
                }
                None => format!("{err}"),
            },
        };
        if attempt == settings.retries {
            crate::warn!(
                "vm={id} callback to {url} failed after {} attempts: {retry_reason}",
                attempt + 1
            );
            return;
        }
        crate::warn!("vm={id} callback to {url} failed ({retry_reason}); retrying in {backoff:?}");
        thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
