//! The callback: one POST of the VM object to `callback_url` when provisioning ends.
//!
//! Each delivery runs on a thread of its own, so a slow or dead receiver never holds a
//! provisioning worker.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub struct CallbackSettings {
    /// For one attempt: connect, send and read the answer.
    pub timeout: Duration,
    /// Further attempts after a connection error or a 5xx.
    pub retries: u32,
}

/// Starts delivering `body` to `url` in the background and returns at once.
pub fn deliver_in_background(id: Uuid, url: String, body: Arc<[u8]>, settings: CallbackSettings) {
    let target = url.clone();
    let spawned = thread::Builder::new()
        .name(format!("callback-{id}"))
        .spawn(move || deliver(id, &target, &body, settings));
    if let Err(err) = spawned {
        crate::error!("vm={id} callback to {url} not sent: cannot start a thread: {err}");
    }
}

fn deliver(id: Uuid, url: &str, body: &[u8], settings: CallbackSettings) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut backoff = Duration::from_secs(1);
    for attempt in 0..=settings.retries {
        let outcome = agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body);
        let retry_reason = match outcome {
            Ok(response) if response.status().is_success() => {
                crate::info!(
                    "vm={id} callback delivered to {url} ({})",
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
            Err(err) => format!("{err}"),
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
