//! `GET /vms?label=k=v&label=k2&status=running&pool=p`: the list's filters. Every `label`
//! must hold (`k=v`: the label has that value; `k`: the label is there); the status must be
//! one of the `status` values given (`provisioning` also as the VM object's `""`); `pool`
//! keeps the idle VMs of that warm pool (`host`, in a fleet, is read there). Values are
//! percent-decoded (`+` is a space), as a form or `curl --data-urlencode -G` sends them.

use super::error::ApiError;
use super::query::DecodeError;
use crate::vm::labels::VmFilter;
use crate::vm::Status;

const STATUSES: &str = "provisioning, running, stopped, failed";

pub fn parse(url: &str) -> Result<VmFilter, ApiError> {
    let mut filter = VmFilter::default();
    let Some((_, query)) = url.split_once('?') else {
        return Ok(filter);
    };
    let query = query.split('#').next().unwrap_or("");
    for pair in query.split('&') {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "label" => {
                let text = decode(raw, name)?;
                let (key, value) = match text.split_once('=') {
                    Some((key, value)) => (key, Some(value.to_string())),
                    None => (text.as_str(), None),
                };
                if key.is_empty() {
                    return Err(invalid(format!(
                        "label must be key=value or key, got {}",
                        shown(&text)
                    )));
                }
                filter.labels.push((key.to_string(), value));
            }
            "status" => {
                let text = decode(raw, name)?;
                let status = match text.as_str() {
                    // `""` is how the VM object spells it, as the seed's did.
                    "provisioning" | "" => Status::Provisioning,
                    "running" => Status::Running,
                    "stopped" => Status::Stopped,
                    "failed" => Status::Failed,
                    _ => {
                        return Err(invalid(format!(
                            "status must be one of {STATUSES}, got {}",
                            shown(&text)
                        )))
                    }
                };
                filter.statuses.push(status);
            }
            "pool" => {
                let text = decode(raw, name)?;
                if text.is_empty() {
                    return Err(invalid("pool must name a warm pool, got nothing".into()));
                }
                filter.pool = Some(text);
            }
            _ => {}
        }
    }
    Ok(filter)
}

fn invalid(message: String) -> ApiError {
    ApiError::invalid("invalid-query", message)
}

fn shown(text: &str) -> String {
    format!("{:?}", text.chars().take(80).collect::<String>())
}

/// The value decoded as a form sends it; what cannot be is named.
fn decode(raw: &str, name: &str) -> Result<String, ApiError> {
    super::query::decode(raw, true).map_err(|why| {
        invalid(match why {
            DecodeError::BadEscape => format!(
                "{name} has a % not followed by two hex digits: {}",
                shown(raw)
            ),
            DecodeError::NotUtf8 => format!("{name} is not UTF-8 once decoded: {}", shown(raw)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_statuses() {
        assert!(parse("/vms").unwrap().is_empty());
        assert!(parse("/vms?wait=3").unwrap().is_empty());
        let filter = parse(
            "/vms?label=project=go&label=pool%3Ddarwin+13&label=owner&status=running&status=failed",
        )
        .unwrap();
        assert_eq!(
            filter.labels,
            [
                ("project".to_string(), Some("go".to_string())),
                ("pool".to_string(), Some("darwin 13".to_string())),
                ("owner".to_string(), None),
            ]
        );
        assert_eq!(filter.statuses, [Status::Running, Status::Failed]);
        assert_eq!(
            parse("/vms?pool=darwin%2D13").unwrap().pool.as_deref(),
            Some("darwin-13")
        );
        // A value may hold `=`: only the first one splits.
        let filter = parse("/vms?label=k=a=b").unwrap();
        assert_eq!(filter.labels, [("k".to_string(), Some("a=b".to_string()))]);
        for provisioning in ["/vms?status=provisioning", "/vms?status=", "/vms?status"] {
            assert_eq!(
                parse(provisioning).unwrap().statuses,
                [Status::Provisioning],
                "{provisioning}"
            );
        }
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (url, needle) in [
            (
                "/vms?status=ready",
                "provisioning, running, stopped, failed",
            ),
            ("/vms?label=", "key=value"),
            ("/vms?label==v", "key=value"),
            ("/vms?label=k%zz", "two hex digits"),
            ("/vms?label=k%ff", "UTF-8"),
            ("/vms?pool=", "warm pool"),
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err.code(), "invalid-query", "{url}");
            assert!(err.message().contains(needle), "{url}: {}", err.message());
        }
    }
}
