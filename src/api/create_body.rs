//! `POST /vms` body → a validated [`CreateVm`] (the domain's create request). Every rejection names the field and the
//! values it accepts.

use serde_json::{Map, Value};

use super::create_meta;
use super::error::ApiError;
use crate::image::oci_reference::OciReference;
use crate::image::{ChecksumType, ImageSpec};
use crate::vm::{CreateVm, NetworkType};

pub const DEFAULT_CPUS: u32 = 2;
pub const MAX_CPUS: u32 = 64;
pub const DEFAULT_MEMORY_MB: u32 = 1024;
pub const MIN_MEMORY_MB: u32 = 512;
/// 1 TiB: more than any Mac has; a larger value is a typo.
pub const MAX_MEMORY_MB: u32 = 1024 * 1024;

/// Longest idempotency key accepted, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_NAME_LEN: usize = 200;
/// Longest image or callback URL accepted, in characters.
const MAX_URL_CHARS: usize = 4096;

pub fn parse(body: &[u8]) -> Result<CreateVm, ApiError> {
    parse_fields(&parse_object(body)?)
}

/// The body as a JSON object; anything else is refused as a create's body is.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(json_error)?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid(
            "invalid-body",
            "the request body must be a JSON object with at least an \"image\" field",
        ));
    };
    Ok(fields)
}

/// A create's fields, validated: also what a warm pool's spec is made of.
pub fn parse_fields(fields: &Map<String, Value>) -> Result<CreateVm, ApiError> {
    let image = parse_image(fields.get("image"))?;
    let cpus = match optional_u64(fields, "cpus")? {
        None | Some(0) => DEFAULT_CPUS,
        Some(n) if n > u64::from(MAX_CPUS) => {
            return Err(ApiError::invalid(
                "invalid-cpus",
                format!("cpus must be a whole number from 1 to {MAX_CPUS} (0 or absent means {DEFAULT_CPUS}), got {n}"),
            ))
        }
        Some(n) => n as u32,
    };
    let memory = match optional_u64(fields, "memory")? {
        None | Some(0) => DEFAULT_MEMORY_MB,
        Some(n) if n > u64::from(MAX_MEMORY_MB) => {
            return Err(ApiError::invalid(
                "invalid-memory",
                format!("memory is in megabytes and must be at most {MAX_MEMORY_MB} (0 or absent means {DEFAULT_MEMORY_MB}), got {n}"),
            ))
        }
        // VMware wants a multiple of 4 MB, and macOS will not boot in less than 512.
        Some(n) => crate::hypervisor::vmrun::vmx::round_memory_mb((n as u32).max(MIN_MEMORY_MB)),
    };
    let network_type = match optional_str(fields, "network_type", "invalid-network-type")? {
        None | Some("") => NetworkType::default(),
        Some(name) => NetworkType::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "invalid-network-type",
                format!(
                    "network_type must be one of {}, got {}",
                    NetworkType::NAMES,
                    echo_str(name)
                ),
            )
        })?,
    };
    let headless = match fields.get("headless") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid-headless",
                format!("headless must be true or false, got {}", echo_value(other)),
            ))
        }
    };
    let callback_url = match optional_str(fields, "callback_url", "invalid-callback-url")? {
        None | Some("") => None,
        Some(url) => {
            check_url(url, &["http", "https"]).map_err(|why| {
                ApiError::invalid(
                    "invalid-callback-url",
                    format!("callback_url must be an http:// or https:// URL: {why}"),
                )
            })?;
            Some(url.to_string())
        }
    };
    let name = match optional_str(fields, "name", "invalid-name")? {
        None | Some("") => None,
        Some(name) => Some(check_name(name)?),
    };
    let ttl = parse_ttl(fields)?;
    let guestinfo = create_meta::guestinfo(fields)?;
    let labels = create_meta::labels(fields)?;
    Ok(CreateVm {
        image,
        cpus,
        memory,
        network_type,
        headless,
        callback_url,
        name,
        ttl,
        guestinfo,
        labels,
        keep: false,
    })
}

/// The optional `ttl` of a create or a renew: whole seconds up to a year; absent, null or
/// 0 is `None` (the default applies, as for `cpus` and `memory`).
pub fn parse_ttl(fields: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match optional_u64(fields, "ttl")? {
        None | Some(0) => Ok(None),
        Some(n) if n > crate::config::MAX_TTL_SECS => Err(ApiError::invalid(
            "invalid-ttl",
            format!(
                "ttl is the lease in seconds and must be at most {} (a year), got {n}",
                crate::config::MAX_TTL_SECS
            ),
        )),
        Some(n) => Ok(Some(n)),
    }
}

/// An idempotency key: 1 to 200 printable characters.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "invalid-name",
            format!("name (or the Idempotency-Key header) must be 1 to {MAX_NAME_LEN} printable characters"),
        ));
    }
    Ok(name.to_string())
}

pub fn parse_image(value: Option<&Value>) -> Result<ImageSpec, ApiError> {
    let fields = match value {
        Some(Value::Object(fields)) => fields,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "invalid-image",
                "image is required: {\"url\": ..., \"checksum\": ..., \"checksum_type\": \"md5|sha1|sha256|sha512\"}",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid-image",
                format!(
                    "image must be an object with url, checksum and checksum_type, got {}",
                    echo_value(other)
                ),
            ))
        }
    };
    let url = required_str(fields, "image.url", "url", "invalid-image-url")?;
    check_url(url, &["http", "https", "file", "oci"]).map_err(|why| {
        ApiError::invalid(
            "invalid-image-url",
            format!(
                "image.url must be an http://, https:// or file:// URL (or oci:// on a tart host): {why}"
            ),
        )
    })?;
    let oci = match url.get(..6).filter(|s| s.eq_ignore_ascii_case("oci://")) {
        Some(_) => Some(OciReference::parse(url).map_err(|why| {
            ApiError::invalid(
                "invalid-image-url",
                format!("image.url is not a valid OCI image reference: {why}"),
            )
        })?),
        None => None,
    };
    let type_name = required_str(
        fields,
        "image.checksum_type",
        "checksum_type",
        "invalid-checksum-type",
    )?;
    let checksum_type = ChecksumType::parse(type_name).ok_or_else(|| {
        ApiError::invalid(
            "invalid-checksum-type",
            format!(
                "image.checksum_type must be one of {}, got {}",
                ChecksumType::NAMES,
                echo_str(type_name)
            ),
        )
    })?;
    let checksum = required_str(fields, "image.checksum", "checksum", "invalid-checksum")?;
    let want = checksum_type.hex_len();
    if checksum.len() != want || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(
            "invalid-checksum",
            format!(
                "image.checksum must be the {want} hex digits of a {} digest, got {}",
                checksum_type.as_str(),
                echo_str(checksum)
            ),
        ));
    }
    let checksum = checksum.to_ascii_lowercase();
    if let Some(oci) = oci {
        check_oci_digest(&oci, checksum_type, &checksum)?;
    }
    Ok(ImageSpec {
        url: url.to_string(),
        checksum,
        checksum_type,
    })
}

/// An OCI image is pinned by its manifest's sha256 digest, given once: in image.checksum.
fn check_oci_digest(
    oci: &OciReference,
    checksum_type: ChecksumType,
    checksum: &str,
) -> Result<(), ApiError> {
    if checksum_type != ChecksumType::Sha256 {
        return Err(ApiError::invalid(
            "invalid-checksum-type",
            "an oci:// image is pinned by its manifest's sha256 digest: give that digest as image.checksum with checksum_type sha256",
        ));
    }
    match &oci.digest {
        Some(digest) if digest != checksum => Err(ApiError::invalid(
            "invalid-image-url",
            format!(
                "image.url pins sha256:{digest} but image.checksum is {checksum}: give one digest (image.checksum alone is enough)"
            ),
        )),
        _ => Ok(()),
    }
}

fn required_str<'a>(
    fields: &'a Map<String, Value>,
    shown: &str,
    key: &str,
    code: &'static str,
) -> Result<&'a str, ApiError> {
    match fields.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(ApiError::invalid(code, format!("{shown} is required"))),
        Some(Value::String(_)) => Err(ApiError::invalid(
            code,
            format!("{shown} must not be empty"),
        )),
        Some(other) => Err(ApiError::invalid(
            code,
            format!("{shown} must be a string, got {}", echo_value(other)),
        )),
    }
}

fn optional_str<'a>(
    fields: &'a Map<String, Value>,
    key: &str,
    code: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid(
            code,
            format!("{key} must be a string, got {}", echo_value(other)),
        )),
    }
}

/// A non-negative whole number, also written as a float (`3600.0`, `1e3`: JSON Schema's
/// `integer`, and what JavaScript clients send). Negative, fractional or non-numeric values
/// are errors; the code is `invalid-<key>`.
pub fn optional_u64(
    fields: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<u64>, ApiError> {
    let code = match key {
        "cpus" => "invalid-cpus",
        "ttl" => "invalid-ttl",
        "size" => "invalid-size",
        _ => "invalid-memory",
    };
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            // Below 2^64, so the cast is exact; -0.0 is 0.
            (None, Some(f)) if f.fract() == 0.0 && f > -1.0 && f < u64::MAX as f64 => {
                Ok(Some(f as u64))
            }
            _ => Err(ApiError::invalid(
                code,
                format!("{key} must be a positive whole number, got {n}"),
            )),
        },
        Some(other) => Err(ApiError::invalid(
            code,
            format!(
                "{key} must be a positive whole number, got {}",
                echo_value(other)
            ),
        )),
    }
}

fn json_error(err: serde_json::Error) -> ApiError {
    let detail = err.to_string();
    // serde_json stops at 128 levels of nesting, which keeps its parser's stack bounded;
    // its own words for that do not say what to change.
    if detail.starts_with("recursion limit exceeded") {
        return ApiError::InvalidJson(format!(
            "it is nested more than 128 levels deep ({detail}); a create request is an object whose \"image\" is an object"
        ));
    }
    ApiError::InvalidJson(detail)
}

/// Values are echoed into messages so the client sees what was wrong, but a hostile
/// 60 KB value echoed back (and into logs) helps nobody.
const SHOWN_CHARS: usize = 100;

/// A JSON value as it was sent, cut at `SHOWN_CHARS`.
pub(super) fn echo_value(value: &Value) -> String {
    cut(&value.to_string())
}

/// A string quoted and escaped (control characters included), cut at `SHOWN_CHARS`.
fn echo_str(text: &str) -> String {
    cut(&format!("{text:?}"))
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// A deliberately small URL check: the scheme is one we allow and, for network schemes,
/// there is a host. ureq reports anything subtler when it connects.
fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    if url.chars().count() > MAX_URL_CHARS {
        return Err(format!("it is longer than {MAX_URL_CHARS} characters"));
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "{} contains spaces or control characters",
            echo_str(url)
        ));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{} has no scheme", echo_str(url)))?;
    let scheme = scheme.to_ascii_lowercase();
    if !schemes.contains(&scheme.as_str()) {
        return Err(format!(
            "scheme {} is not one of {}",
            echo_str(&scheme),
            schemes.join(", ")
        ));
    }
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(format!(
                "{} must name an absolute path, as file:///path/image.tar.gz",
                echo_str(url)
            ));
        }
        return Ok(());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{} has no host", echo_str(url)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1: &str = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";

    fn body(extra: &str) -> String {
        format!(
            r#"{{"image": {{"url": "http://127.0.0.1:1/i.tar.gz", "checksum": "{SHA1}", "checksum_type": "sha1"}}{extra}}}"#
        )
    }

    #[test]
    fn seed_example_parses_with_defaults() {
        let vm = parse(body("").as_bytes()).unwrap();
        assert_eq!(vm.cpus, 2);
        assert_eq!(vm.memory, 1024);
        assert_eq!(vm.network_type, NetworkType::Nat);
        assert!(!vm.headless);
        assert_eq!(vm.callback_url, None);
        let vm = parse(
            body(r#", "cpus": 4, "memory": 2049, "network_type": "bridged", "headless": true, "callback_url": "http://127.0.0.1:9/cb", "unknown": [1]"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((vm.cpus, vm.memory), (4, 2052));
        assert_eq!(vm.network_type, NetworkType::Bridged);
        assert!(vm.headless);
        assert_eq!(vm.ttl, None);
        for (given, applied) in [
            ("0", None),
            ("null", None),
            ("600", Some(600)),
            ("600.0", Some(600)),
            ("6e2", Some(600)),
            ("-0.0", None),
        ] {
            let vm = parse(body(&format!(r#", "ttl": {given}"#)).as_bytes()).unwrap();
            assert_eq!(vm.ttl, applied, "ttl {given}");
        }
    }

    #[test]
    fn memory_is_raised_and_rounded() {
        for (given, applied) in [(0, 1024), (1, 512), (511, 512), (513, 516), (4096, 4096)] {
            let vm = parse(body(&format!(r#", "memory": {given}"#)).as_bytes()).unwrap();
            assert_eq!(vm.memory, applied, "memory {given}");
        }
    }

    #[test]
    fn oci_images_are_pinned_by_one_sha256_digest() {
        let hex = "ab".repeat(32);
        let image = |url: &str, sum: &str, kind: &str| serde_json::json!({"url": url, "checksum": sum, "checksum_type": kind});
        let spec = parse_image(Some(&image("oci://ghcr.io/org/macos:15", &hex, "sha256"))).unwrap();
        assert_eq!(spec.checksum, hex);
        let pinned = format!("oci://ghcr.io/org/macos@sha256:{hex}");
        assert!(parse_image(Some(&image(&pinned, &hex.to_uppercase(), "SHA256"))).is_ok());
        for (value, code, words) in [
            (
                image("oci://ghcr.io/org/macos:15", SHA1, "sha1"),
                "invalid-checksum-type",
                "sha256",
            ),
            (
                image(&pinned, &"cd".repeat(32), "sha256"),
                "invalid-image-url",
                "one digest",
            ),
            (
                image("oci://u:p@ghcr.io/org/macos:15", &hex, "sha256"),
                "invalid-image-url",
                "credentials",
            ),
            (
                image("oci://ghcr.io/../macos", &hex, "sha256"),
                "invalid-image-url",
                "path component",
            ),
        ] {
            let err = parse_image(Some(&value)).unwrap_err();
            assert_eq!(err.code(), code, "{value}");
            assert!(err.message().contains(words), "{}", err.message());
        }
    }

    #[test]
    fn checksum_type_is_case_insensitive_and_checksum_lowercased() {
        let text = body("")
            .replace("sha1", "SHA1")
            .replace(SHA1, &SHA1.to_uppercase());
        let vm = parse(text.as_bytes()).unwrap();
        assert_eq!(vm.image.checksum_type, ChecksumType::Sha1);
        assert_eq!(vm.image.checksum, SHA1);
    }

    #[test]
    fn deep_nesting_is_refused_with_what_to_fix() {
        for open in ["[", "{\"a\":"] {
            let text = open.repeat(100_000);
            let err = parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "invalid-json");
            assert!(
                err.message().contains("nested more than 128 levels"),
                "{}",
                err.message()
            );
        }
        // Nesting below serde_json's limit, in a field that is ignored, is fine.
        let deep = format!("{}{}", "[".repeat(120), "]".repeat(120));
        assert!(parse(body(&format!(r#", "extra": {deep}"#)).as_bytes()).is_ok());
    }

    #[test]
    fn hostile_values_are_echoed_short_and_escaped() {
        let long = "x".repeat(60_000);
        for extra in [
            format!(r#", "headless": "{long}""#),
            format!(r#", "network_type": "{long}""#),
            format!(r#", "cpus": [{}0]"#, "0,".repeat(20_000)),
        ] {
            let err = parse(body(&extra).as_bytes()).unwrap_err();
            assert!(err.message().len() < 400, "{}", err.message().len());
            assert!(err.message().contains("bytes)"), "{}", err.message());
        }
        let err = parse(body(r#", "network_type": "nat\u0000\u001b[31m""#).as_bytes()).unwrap_err();
        assert!(err.message().contains(r"\0\u{1b}[31m"), "{}", err.message());
    }

    #[test]
    fn bad_bodies_are_rejected_with_the_field_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("{", "invalid-json", "line 1 column 1"),
            ("[1]", "invalid-body", "JSON object"),
            ("{}", "invalid-image", "image is required"),
            (r#"{"image": 3}"#, "invalid-image", "must be an object"),
            (
                r#"{"image": {"checksum": "x", "checksum_type": "sha1"}}"#,
                "invalid-image-url",
                "image.url is required",
            ),
            (
                r#"{"image": {"url": "ftp://h/x", "checksum": "x", "checksum_type": "sha1"}}"#,
                "invalid-image-url",
                "scheme",
            ),
            (
                r#"{"image": {"url": "http:///x", "checksum": "x", "checksum_type": "sha1"}}"#,
                "invalid-image-url",
                "no host",
            ),
            (
                r#"{"image": {"url": "file://rel/x", "checksum": "x", "checksum_type": "sha1"}}"#,
                "invalid-image-url",
                "absolute",
            ),
            (
                r#"{"image": {"url": "http://h/x", "checksum": "x", "checksum_type": "crc32"}}"#,
                "invalid-checksum-type",
                "md5, sha1, sha256, sha512",
            ),
            (
                r#"{"image": {"url": "http://h/x", "checksum": "abc", "checksum_type": "sha1"}}"#,
                "invalid-checksum",
                "40 hex digits",
            ),
            (
                r#"{"image": {"url": "http://h/x", "checksum": "zz00d380e28d02f30efaceafef7c7c8bdedae33", "checksum_type": "sha1"}}"#,
                "invalid-checksum",
                "40 hex digits",
            ),
            (
                r#"{"image": {"url": "http://h/x", "checksum": 5, "checksum_type": "sha1"}}"#,
                "invalid-checksum",
                "must be a string",
            ),
        ];
        for (text, code, needle) in cases {
            let err = parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.code(), *code, "{text}");
            assert!(err.message().contains(needle), "{text}: {}", err.message());
        }
        let field_cases: &[(&str, &str, &str)] = &[
            (r#", "cpus": -1"#, "invalid-cpus", "positive whole number"),
            (r#", "cpus": 1.5"#, "invalid-cpus", "positive whole number"),
            (r#", "cpus": 64.5"#, "invalid-cpus", "positive whole number"),
            (r#", "cpus": 65.0"#, "invalid-cpus", "1 to 64"),
            (
                r#", "cpus": 1e300"#,
                "invalid-cpus",
                "positive whole number",
            ),
            (r#", "cpus": -1.0"#, "invalid-cpus", "positive whole number"),
            (r#", "cpus": "2""#, "invalid-cpus", "positive whole number"),
            (r#", "cpus": 1000"#, "invalid-cpus", "1 to 64"),
            (
                r#", "memory": -512"#,
                "invalid-memory",
                "positive whole number",
            ),
            (r#", "memory": 99999999"#, "invalid-memory", "at most"),
            (r#", "ttl": -5"#, "invalid-ttl", "positive whole number"),
            (r#", "ttl": "1h""#, "invalid-ttl", "positive whole number"),
            (r#", "ttl": 99999999999"#, "invalid-ttl", "a year"),
            (
                r#", "network_type": "wifi""#,
                "invalid-network-type",
                "bridged, nat, hostonly",
            ),
            (
                r#", "network_type": 1"#,
                "invalid-network-type",
                "must be a string",
            ),
            (
                r#", "headless": "yes""#,
                "invalid-headless",
                "true or false",
            ),
            (
                r#", "callback_url": "mailto:x@y""#,
                "invalid-callback-url",
                "http:// or https://",
            ),
            (
                r#", "callback_url": "file:///tmp/x""#,
                "invalid-callback-url",
                "scheme",
            ),
        ];
        for (extra, code, needle) in field_cases {
            let err = parse(body(extra).as_bytes()).unwrap_err();
            assert_eq!(err.code(), *code, "{extra}");
            assert!(err.message().contains(needle), "{extra}: {}", err.message());
        }
    }
}
