//! `--wait`: follows a VM with long polls (`GET /vms/:id?wait=` and `If-None-Match`) until it
//! runs with an IP or has failed, and an image pre-warm until it is ready or failed.

use std::time::Duration;

use serde_json::Value;

use super::client::Client;
use super::progress::Display;
use super::{output, Failure};

/// Seconds one long poll may wait; the server shortens it to its own limit.
const LONG_POLL_SECS: u32 = 30;

/// Running with an IP: what a client asked for.
pub fn is_ready(vm: &Value) -> bool {
    vm["status"] == "running" && vm["ip_address"].as_str().is_some_and(|ip| !ip.is_empty())
}

/// Nothing more will happen to the VM without a request.
fn is_settled(vm: &Value) -> bool {
    is_ready(vm)
        || matches!(vm["status"].as_str(), Some("failed" | "stopped"))
        || matches!(
            vm["progress"]["phase"].as_str(),
            Some("ip-timeout" | "failed")
        )
}

fn show(display: &mut Display, vm: &Value) {
    let progress = &vm["progress"];
    display.update(
        progress["phase"].as_str().unwrap_or("unknown"),
        progress["bytes_downloaded"].as_u64().unwrap_or(0),
        progress["bytes_total"].as_u64(),
    );
}

pub fn follow(client: &Client, id: &str, first: Value) -> Result<Value, Failure> {
    let mut display = Display::new(&format!("vm {id}"));
    // A VM handed out by a warm pool is settled in its 202: `finish` alone says so.
    if !is_settled(&first) {
        show(&mut display, &first);
    }
    // The object from the create may be older than the current one; a long poll without a
    // tag would wait for the one after the current.
    let result = (|| {
        let reply = client.send("GET", &format!("/vms/{id}"), None, &[])?;
        let mut etag = reply.etag.clone();
        let mut vm = reply.json()?;
        let path = format!("/vms/{id}?wait={LONG_POLL_SECS}&progress=true");
        loop {
            // The last state is said by `finish`, once.
            if is_settled(&vm) {
                return Ok(vm);
            }
            show(&mut display, &vm);
            let tag = etag.clone().unwrap_or_default();
            let headers: &[(&str, &str)] = match etag {
                Some(_) => &[("If-None-Match", tag.as_str())],
                None => &[],
            };
            let reply = client.send("GET", &path, None, headers)?;
            if reply.status == 304 {
                continue;
            }
            etag = reply.etag.clone();
            vm = reply.json()?;
        }
    })();
    match &result {
        Ok(vm) if is_ready(vm) => display.finish(&format!(
            "ready {}",
            vm["ip_address"].as_str().unwrap_or("")
        )),
        Ok(vm) => display.finish(&match vm["error"]["code"].as_str() {
            Some(code) => format!("failed: {code}"),
            None => format!(
                "{} ({})",
                output::status_word(vm),
                vm["progress"]["phase"].as_str().unwrap_or("")
            ),
        }),
        Err(_) => display.abandon(),
    }
    result
}

/// The image API has no long poll: a look every half second is plenty for a download.
pub fn follow_image(client: &Client, checksum: &str, first: Value) -> Result<Value, Failure> {
    let short: String = checksum.chars().take(12).collect();
    let mut display = Display::new(&format!("image {short}"));
    let mut entry = first;
    loop {
        match entry["state"].as_str() {
            Some("downloading") => {
                let p = &entry["progress"];
                display.update(
                    p["phase"].as_str().unwrap_or("downloading"),
                    p["bytes_done"].as_u64().unwrap_or(0),
                    p["bytes_total"].as_u64(),
                );
            }
            Some(state) => {
                display.finish(state);
                return Ok(entry);
            }
            None => {
                display.abandon();
                return Err(Failure::Protocol("the image entry has no state".into()));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        entry = match client.get_json(&format!("/images/{checksum}")) {
            Ok(entry) => entry,
            Err(err) => {
                display.abandon();
                return Err(err);
            }
        };
    }
}
