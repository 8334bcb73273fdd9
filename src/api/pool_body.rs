//! `PUT /pools/:name` body (and a `--pool` file) → a validated [`PoolSpec`]: a create's body
//! checked by the create's own parser, so every field has the create's rule and code, plus
//! `size`. What a create gives per VM (callback, key, lease, guestinfo, labels) comes with
//! the create that takes a pool's VM, and is refused here with the field's own code.

use serde_json::{Map, Value};

use super::create_body;
use super::error::ApiError;
use crate::service::pools::spec::{self, PoolSpec, MAX_SIZE};

pub fn parse(body: &[u8]) -> Result<PoolSpec, ApiError> {
    let fields = create_body::parse_object(body)?;
    for (field, code) in [
        ("callback_url", "invalid-callback-url"),
        ("name", "invalid-name"),
        ("ttl", "invalid-ttl"),
        ("guestinfo", "invalid-guestinfo"),
        ("labels", "invalid-labels"),
    ] {
        if fields.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                code,
                format!("a pool's VMs get {field} from the create that takes one: give it in POST /vms, not in the pool's spec"),
            ));
        }
    }
    let create = create_body::parse_fields(&fields)?;
    Ok(PoolSpec::from_create(&create, size(&fields)?))
}

fn size(fields: &Map<String, Value>) -> Result<u32, ApiError> {
    let refuse = |got: String| {
        ApiError::invalid(
            "invalid-size",
            format!("size is the number of idle VMs the pool keeps, a whole number from 0 to {MAX_SIZE}, got {got}"),
        )
    };
    match create_body::optional_u64(fields, "size")? {
        None => Err(ApiError::invalid(
            "invalid-size",
            format!("size is required: the number of idle VMs the pool keeps, 0 to {MAX_SIZE}"),
        )),
        Some(n) if n > u64::from(MAX_SIZE) => Err(refuse(n.to_string())),
        Some(n) => Ok(n as u32),
    }
}

/// A pool name from the path: `invalid-pool-name` with what is wrong.
pub fn name(text: &str) -> Result<String, ApiError> {
    spec::check_name(text)
        .map(|()| text.to_string())
        .map_err(|why| ApiError::invalid("invalid-pool-name", why))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: &str = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";

    fn body(extra: &str) -> String {
        format!(
            r#"{{"image": {{"url": "http://127.0.0.1:1/i.tar.gz", "checksum": "{SHA1}", "checksum_type": "sha1"}}, "headless": true{extra}}}"#
        )
    }

    #[test]
    fn a_spec_is_a_create_with_a_size() {
        let spec = parse(body(r#", "size": 2, "memory": 4095, "cpus": 4"#).as_bytes()).unwrap();
        assert_eq!((spec.size, spec.cpus, spec.memory), (2, 4, 4096));
        assert!(spec.headless);
        assert_eq!(spec.image.checksum, SHA1);
        assert_eq!(parse(body(r#", "size": 0"#).as_bytes()).unwrap().size, 0);
    }

    #[test]
    fn bad_specs_get_the_codes_of_a_create() {
        for (extra, code) in [
            ("", "invalid-size"),
            (r#", "size": -1"#, "invalid-size"),
            (r#", "size": 65"#, "invalid-size"),
            (r#", "size": "2""#, "invalid-size"),
            (r#", "size": 1, "cpus": 1000"#, "invalid-cpus"),
            (
                r#", "size": 1, "network_type": "wifi""#,
                "invalid-network-type",
            ),
            (r#", "size": 1, "headless": "yes""#, "invalid-headless"),
            (
                r#", "size": 1, "guestinfo": {"a": "b"}"#,
                "invalid-guestinfo",
            ),
            (r#", "size": 1, "labels": {"a": "b"}"#, "invalid-labels"),
            (
                r#", "size": 1, "callback_url": "http://h/cb""#,
                "invalid-callback-url",
            ),
            (r#", "size": 1, "ttl": 5"#, "invalid-ttl"),
        ] {
            let err = parse(body(extra).as_bytes()).unwrap_err();
            assert_eq!(err.code(), code, "{extra}: {}", err.message());
        }
        assert_eq!(parse(b"[1]").unwrap_err().code(), "invalid-body");
        assert_eq!(parse(b"{").unwrap_err().code(), "invalid-json");
        assert_eq!(
            parse(br#"{"size": 1}"#).unwrap_err().code(),
            "invalid-image"
        );
        assert_eq!(name("a/b").unwrap_err().code(), "invalid-pool-name");
    }
}
