//! A request parsed at the edge into what it asks for, with its body, query and headers
//! already typed and checked: behind this, nothing sees a URL, a header or bytes of a body.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;
use tiny_http::Request;

use super::error::ApiError;
use super::routes::{route, Route};
use super::{create_body, list_filter, pool_body, query};
use crate::fleet::images::Scope;
use crate::image::ImageSpec;
use crate::service::pools::spec::PoolSpec;
use crate::vm::labels::VmFilter;
use crate::vm::{CreateVm, VmId};

/// A create request is a few hundred bytes; anything near this is not one.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub enum Action {
    ListVms(VmFilter),
    /// With the body as it came: a fleet's front door relays it unchanged.
    CreateVm(Box<CreateVm>, Vec<u8>),
    ListHosts,
    /// `known`: the entity tag of `If-None-Match`; `wait` 0 answers at once.
    GetVm {
        id: VmId,
        known: Option<String>,
        wait: Duration,
        progress: bool,
    },
    DeleteVm(VmId),
    /// `ttl`: none given (the VM's own, or the default).
    RenewVm {
        id: VmId,
        ttl: Option<u64>,
    },
    VmLog(VmId),
    ListImages,
    GetImage(String),
    /// `scope`: `hosts` in the body, a pre-warm across the fleet.
    PrewarmImage {
        spec: ImageSpec,
        scope: Option<Scope>,
    },
    DeleteImage(String),
    Health,
    Metrics,
    DrainState,
    Drain,
    Undrain,
    OpenApi,
    ListPools,
    GetPool(String),
    PutPool {
        name: String,
        spec: PoolSpec,
    },
    DeletePool(String),
}

pub fn parse(request: &mut Request) -> Result<Action, ApiError> {
    let url = request.url().to_string();
    Ok(match route(request.method().as_str(), &url)? {
        Route::ListVms => Action::ListVms(list_filter::parse(&url)?),
        Route::GetVm(id) => Action::GetVm {
            id,
            known: header(request, "If-None-Match").map(str::to_string),
            wait: query::wait(&url)?,
            progress: query::flag(&url, "progress")?,
        },
        Route::VmLog(id) => Action::VmLog(id),
        Route::RenewVm(id) => {
            check_content_type(request)?;
            // `curl -X POST .../renew` sends no body and no length: the VM's own ttl.
            let body = if has_body(request) {
                read_body(request)?
            } else {
                Vec::new()
            };
            Action::RenewVm {
                id,
                ttl: renew_ttl(&body)?,
            }
        }
        Route::ListImages => Action::ListImages,
        Route::GetImage(checksum) => Action::GetImage(checksum),
        Route::PrewarmImage => {
            check_content_type(request)?;
            let body = read_body(request)?;
            let value: Value =
                serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            Action::PrewarmImage {
                spec: create_body::parse_image(Some(&value))?,
                scope: prewarm_scope(value.get("hosts"))?,
            }
        }
        Route::DeleteImage(checksum) => Action::DeleteImage(checksum),
        Route::Health => Action::Health,
        Route::Metrics => Action::Metrics,
        Route::DrainState => Action::DrainState,
        Route::Drain => Action::Drain,
        Route::Undrain => Action::Undrain,
        Route::OpenApi => Action::OpenApi,
        Route::DeleteVm(id) => Action::DeleteVm(id),
        Route::ListPools => Action::ListPools,
        Route::ListHosts => Action::ListHosts,
        Route::GetPool(name) => Action::GetPool(name),
        Route::DeletePool(name) => Action::DeletePool(name),
        Route::PutPool(name) => {
            check_content_type(request)?;
            let body = read_body(request)?;
            Action::PutPool {
                name,
                spec: pool_body::parse(&body)?,
            }
        }
        Route::CreateVm => {
            check_content_type(request)?;
            let body = read_body(request)?;
            let mut create = create_body::parse(&body)?;
            create.keep = query::flag_or(&url, "keep", "invalid-keep")?;
            if let Some(key) = header(request, "Idempotency-Key") {
                create.name = Some(create_body::check_name(key.trim())?);
            }
            Action::CreateVm(Box::new(create), body)
        }
    })
}

/// `hosts` of a pre-warm: `"all"`, or how many hosts of the fleet should hold the image.
fn prewarm_scope(hosts: Option<&Value>) -> Result<Option<Scope>, ApiError> {
    let invalid = |got: &Value| {
        ApiError::invalid(
            "invalid-hosts",
            format!(
                "hosts must be \"all\" or how many hosts of the fleet should hold the image (1 or more), got {}",
                create_body::echo_value(got)
            ),
        )
    };
    match hosts {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(all)) if all.eq_ignore_ascii_case("all") => Ok(Some(Scope::All)),
        Some(number @ Value::Number(n)) => {
            // A whole number written as 2.0 is still 2, as JSON Schema counts integers.
            let whole = n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= f64::from(u32::MAX))
                    .map(|f| f as u64)
            });
            match whole.map(u32::try_from) {
                Some(Ok(n)) if n >= 1 => Ok(Some(Scope::Hosts(n))),
                _ => Err(invalid(number)),
            }
        }
        Some(other) => Err(invalid(other)),
    }
}

/// The renew body is optional: empty, or `{"ttl": seconds}`.
fn renew_ttl(body: &[u8]) -> Result<Option<u64>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid(
            "invalid-body",
            "the renew body must be empty or a JSON object such as {\"ttl\": 3600}",
        ));
    };
    // A create's 0 means the default lease; a renew's default is no `ttl` at all, so a 0
    // here is a mistake to name, not a lease of no time.
    if create_body::optional_u64(&fields, "ttl")? == Some(0) {
        return Err(ApiError::invalid(
            "invalid-ttl",
            format!(
                "ttl must be from 1 to {} seconds; leave it out (or send no body) to renew by the VM's own ttl",
                crate::config::MAX_TTL_SECS
            ),
        ));
    }
    create_body::parse_ttl(&fields)
}

pub fn header<'r>(request: &'r Request, name: &'static str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

fn check_content_type(request: &Request) -> Result<(), ApiError> {
    let Some(value) = header(request, "Content-Type") else {
        return Ok(());
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // `curl -d@create.json` sends the form type: the seed's own example must work.
    match essence.as_str() {
        "application/json"
        | "application/x-www-form-urlencoded"
        | "text/json"
        | "text/plain"
        | "" => Ok(()),
        _ if essence.ends_with("+json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(
            value.chars().take(100).collect(),
        )),
    }
}

fn has_body(request: &Request) -> bool {
    request.body_length().is_some()
        || request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
}

/// The connection's thread has already read any body up to `MAX_BODY_BYTES` (see
/// `limits`), chunked ones too; a larger one is refused here unread. So this never waits
/// on the client.
fn read_body(request: &mut Request) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if !has_body(request) {
        return Err(ApiError::LengthRequired);
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::InvalidJson(format!("cannot read the request body: {e}")))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prewarm_scope_is_all_or_a_number_of_hosts() {
        let scope = |text: &str| prewarm_scope(serde_json::from_str::<Value>(text).ok().as_ref());
        assert_eq!(scope("null"), Ok(None));
        assert_eq!(prewarm_scope(None), Ok(None));
        assert_eq!(scope(r#""all""#), Ok(Some(Scope::All)));
        assert_eq!(scope(r#""ALL""#), Ok(Some(Scope::All)));
        assert_eq!(scope("3"), Ok(Some(Scope::Hosts(3))));
        assert_eq!(scope("2.0"), Ok(Some(Scope::Hosts(2))));
        for bad in [
            "0",
            "-1",
            "1.5",
            r#""3""#,
            r#""some""#,
            "true",
            "[1]",
            "4294967296",
            "4294967296.0",
            "0.0",
            "-2.0",
        ] {
            let err = scope(bad).unwrap_err();
            assert_eq!(err.code(), "invalid-hosts", "{bad}");
            assert!(err.message().contains("hosts must be"), "{bad}");
        }
    }

    #[test]
    fn a_renew_takes_no_body_or_a_ttl_of_one_second_or_more() {
        for (body, ttl) in [
            ("", None),
            (" \n", None),
            ("{}", None),
            (r#"{"ttl": null}"#, None),
            (r#"{"ttl": 3600}"#, Some(3600)),
            (r#"{"ttl": 3600.0}"#, Some(3600)),
            (r#"{"ttl": 1}"#, Some(1)),
        ] {
            assert_eq!(renew_ttl(body.as_bytes()), Ok(ttl), "{body}");
        }
        for (body, code) in [
            (r#"{"ttl": 0}"#, "invalid-ttl"),
            (r#"{"ttl": -0.0}"#, "invalid-ttl"),
            (r#"{"ttl": 1.5}"#, "invalid-ttl"),
            (r#"{"ttl": 31536001}"#, "invalid-ttl"),
            ("[1]", "invalid-body"),
            ("{", "invalid-json"),
        ] {
            let err = renew_ttl(body.as_bytes()).unwrap_err();
            assert_eq!(err.code(), code, "{body}");
        }
    }
}
