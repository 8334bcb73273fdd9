//! A watch: one long POST whose answer is newline-delimited JSON, read line by line with a
//! blocking reader. etcd never ends it, so each stream lives at most [`STREAM_LIFETIME`]
//! (ureq's body deadline) and the caller opens the next one from the revision after the
//! last event seen: nothing is missed, and a stream on a member that hangs is left behind.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use super::wire::{self, Event, WatchMessage};
use super::{Client, EtcdError};

pub(super) const STREAM_LIFETIME: Duration = Duration::from_secs(30);

/// Why a watch stream ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// Reached its lifetime, or the connection broke: watch again from the revision given.
    Closed(String),
    /// The revision asked for was compacted: read the whole range again, then watch from
    /// the revision after that read.
    Compacted,
    /// The handler asked to stop.
    Stopped,
}

/// Watches every key under `prefix` from `*next_revision` on, handing each batch of events
/// to `on_events` (false stops) and moving `*next_revision` past them.
pub fn watch_prefix(
    client: &Client,
    prefix: &[u8],
    next_revision: &mut i64,
    on_events: &mut dyn FnMut(Vec<Event>) -> bool,
) -> WatchEnd {
    let body = wire::watch_request(prefix, *next_revision).to_string();
    let opened = client.each_endpoint(|base| {
        let response = client
            .watch_agent()
            .post(format!("{base}/v3/watch"))
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("watch answered HTTP {status}"));
        }
        Ok(response)
    });
    let response = match opened {
        Ok(response) => response,
        Err(err) => return WatchEnd::Closed(err.to_string()),
    };
    let reader = BufReader::new(response.into_body().into_reader());
    for line in reader.split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(err) => return WatchEnd::Closed(format!("the watch stream ended: {err}")),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match wire::watch_message(&line) {
            Ok(WatchMessage::Created { .. }) => {}
            Ok(WatchMessage::Events { events, .. }) => {
                let last = events
                    .iter()
                    .map(|e| match e {
                        Event::Put(kv) => kv.mod_revision,
                        Event::Delete { mod_revision, .. } => *mod_revision,
                    })
                    .max();
                if let Some(last) = last {
                    *next_revision = (*next_revision).max(last + 1);
                }
                if !on_events(events) {
                    return WatchEnd::Stopped;
                }
            }
            Ok(WatchMessage::Compacted { .. }) => return WatchEnd::Compacted,
            Ok(WatchMessage::Canceled { reason }) => {
                return WatchEnd::Closed(format!("etcd cancelled the watch: {reason}"))
            }
            Err(EtcdError::Refused { message, .. }) => {
                return WatchEnd::Closed(format!("etcd ended the watch: {message}"))
            }
            Err(err) => return WatchEnd::Closed(err.to_string()),
        }
    }
    WatchEnd::Closed("the watch stream ended".into())
}
