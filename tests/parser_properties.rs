//! Property tests (proptest) of the two parsers that read outside input: the body of
//! `POST /vms` and VMX files. cargo fuzz would need a nightly toolchain; these run in
//! every `cargo test`, a few thousand generated inputs per property: arbitrary bytes,
//! arbitrary JSON, and valid inputs with one part broken.

use osx_builder::api::create_body::{self, MAX_CPUS, MAX_MEMORY_MB, MIN_MEMORY_MB};
use osx_builder::api::error::ApiError;
use osx_builder::hypervisor::vmrun::vmx::{Vmx, VmxError};
use osx_builder::vm::CreateVm;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

/// A few thousand cases per property: a few seconds in a release build. For a longer
/// run: `PROPTEST_CASES=1000000 cargo test --release --test parser_properties`. Failures
/// are not written into the source tree; a failing input is printed, to be kept as a
/// unit test.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

const FIELDS: &[&str] = &[
    "image",
    "url",
    "checksum",
    "checksum_type",
    "cpus",
    "memory",
    "network_type",
    "headless",
    "callback_url",
];

/// Strings a hostile client would send: arbitrary Unicode, control characters, path
/// tricks, near-miss values of the real fields, long runs.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f\"\\\\|%./ a-z0-9]{0,40}",
        prop::sample::select(vec![
            "",
            " ",
            "..",
            "../../etc/passwd",
            "%2F",
            "%00",
            "\0",
            "nat\0",
            "NAT",
            "sha1 ",
            "SHA1",
            "Sha256",
            "md5",
            "crc32",
            "bridged",
            "hostonly",
            "file:///",
            "file://",
            "http://",
            "http:///x",
            "https://h",
            "ftp://h/x",
            "http://127.0.0.1:1/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "\u{202e}",
            "\u{feff}",
            "🙂",
            "ｈｔｔｐ://h/x",
            "١٢٣",
        ])
        .prop_map(str::to_string),
        (1usize..6000).prop_map(|n| "a".repeat(n)),
        "[0-9a-fA-F]{30,130}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            0u64, 1, 2, 4, 63, 64, 65, 511, 512, 513, 1048576, 1048577
        ])
        .prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        hostile_string().prop_map(Value::String),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => hostile_string(),
    ]
}

/// Any JSON value, nested a few levels, with the create request's field names often.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A valid create request, with the values it must parse to.
fn valid_create() -> impl Strategy<Value = (Value, u32, u32, &'static str, &'static str)> {
    (
        prop::sample::select(vec![
            ("md5", 32usize),
            ("sha1", 40),
            ("sha256", 64),
            ("sha512", 128),
        ]),
        any::<bool>(),
        0u32..=MAX_CPUS,
        0u32..=MAX_MEMORY_MB,
        prop::sample::select(vec!["bridged", "nat", "hostonly"]),
        any::<bool>(),
        "[a-z0-9.-]{1,20}",
        "[a-zA-Z0-9/._-]{0,40}",
        any::<u128>(),
    )
        .prop_map(
            |((kind, hex_len), upper, cpus, memory, network, headless, host, path, seed)| {
                let mut checksum: String = (0..hex_len)
                    .map(|i| {
                        let digit = ((seed >> (i % 32 * 4)) & 0xf) as u8;
                        char::from_digit(u32::from(digit), 16).unwrap()
                    })
                    .collect();
                if upper {
                    checksum = checksum.to_uppercase();
                }
                let body = json!({
                    "image": {
                        "url": format!("http://{host}/{path}"),
                        "checksum": checksum,
                        "checksum_type": if upper { kind.to_uppercase() } else { kind.to_string() },
                    },
                    "cpus": cpus,
                    "memory": memory,
                    "network_type": network,
                    "headless": headless,
                    "callback_url": format!("https://{host}/cb"),
                });
                (body, cpus, memory, kind, network)
            },
        )
}

/// What every rejection must carry: a stable kebab-case code, a 4xx status and a
/// message that says something, of a size fit for a log line.
fn check_error(err: &ApiError) -> Result<(), TestCaseError> {
    let code = err.code();
    prop_assert!(
        !code.is_empty()
            && code
                .split('-')
                .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())),
        "code {code:?}"
    );
    prop_assert!(matches!(err.status(), 400 | 415), "{err}");
    let message = err.message();
    prop_assert!(!message.trim().is_empty(), "{code}: empty message");
    prop_assert!(
        message.len() < 2000,
        "{code}: {} bytes of message",
        message.len()
    );
    let body: Value = serde_json::from_slice(&err.body()).unwrap();
    prop_assert_eq!(body["code"].as_str(), Some(code));
    Ok(())
}

/// What every accepted request must satisfy, whatever was sent.
fn check_accepted(vm: &CreateVm) -> Result<(), TestCaseError> {
    prop_assert!((1..=MAX_CPUS).contains(&vm.cpus), "cpus {}", vm.cpus);
    prop_assert!(
        (MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&vm.memory) && vm.memory.is_multiple_of(4),
        "memory {}",
        vm.memory
    );
    let checksum = &vm.image.checksum;
    prop_assert_eq!(checksum.len(), vm.image.checksum_type.hex_len());
    prop_assert!(checksum
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let url = vm.image.url.to_ascii_lowercase();
    prop_assert!(
        url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file:///"),
        "{}",
        vm.image.url
    );
    prop_assert!(!vm.image.url.chars().any(|c| c.is_control() || c == ' '));
    if let Some(callback) = &vm.callback_url {
        let callback = callback.to_ascii_lowercase();
        prop_assert!(callback.starts_with("http://") || callback.starts_with("https://"));
    }
    Ok(())
}

fn check_parse(bytes: &[u8]) -> Result<(), TestCaseError> {
    match create_body::parse(bytes) {
        Ok(vm) => check_accepted(&vm),
        Err(err) => check_error(&err),
    }
}

/// Overwrites, inserts or deletes a few bytes.
fn mutate(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
    for &(at, byte, kind) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let at = at % bytes.len();
        match kind % 3 {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ => {
                bytes.remove(at);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn create_body_survives_arbitrary_bytes(bytes in vec(any::<u8>(), 0..1024)) {
        check_parse(&bytes)?;
    }

    #[test]
    fn create_body_survives_arbitrary_json(value in json_value()) {
        check_parse(value.to_string().as_bytes())?;
    }

    #[test]
    fn valid_creates_parse_to_what_was_asked((body, cpus, memory, kind, network) in valid_create()) {
        let vm = create_body::parse(body.to_string().as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        check_accepted(&vm)?;
        prop_assert_eq!(vm.cpus, if cpus == 0 { 2 } else { cpus });
        let want_memory = if memory == 0 { 1024 } else { memory.max(MIN_MEMORY_MB).div_ceil(4) * 4 };
        prop_assert_eq!(vm.memory, want_memory);
        prop_assert_eq!(vm.image.checksum_type.as_str(), kind);
        prop_assert_eq!(vm.network_type.as_str(), network);
        prop_assert_eq!(&vm.image.checksum, &body["image"]["checksum"].as_str().unwrap().to_ascii_lowercase());
    }

    /// One field of a valid request replaced (or removed): either accepted, or refused
    /// with that field's code.
    #[test]
    fn one_broken_field_is_named(
        (body, ..) in valid_create(),
        field in prop::sample::select(FIELDS),
        value in prop_oneof![json_value(), hostile_string().prop_map(Value::String)],
        remove in any::<bool>(),
    ) {
        let mut body = body;
        let target = if matches!(field, "url" | "checksum" | "checksum_type") {
            body["image"].as_object_mut().unwrap()
        } else {
            body.as_object_mut().unwrap()
        };
        if remove {
            target.remove(field);
        } else {
            target.insert(field.to_string(), value);
        }
        let allowed: &[&str] = match field {
            "image" => &["invalid-image", "invalid-image-url", "invalid-checksum", "invalid-checksum-type"],
            "url" => &["invalid-image-url"],
            // Another digest type wants another number of hex digits.
            "checksum_type" => &["invalid-checksum-type", "invalid-checksum"],
            "checksum" => &["invalid-checksum"],
            "cpus" => &["invalid-cpus"],
            "memory" => &["invalid-memory"],
            "network_type" => &["invalid-network-type"],
            "headless" => &["invalid-headless"],
            _ => &["invalid-callback-url"],
        };
        match create_body::parse(body.to_string().as_bytes()) {
            Ok(vm) => check_accepted(&vm)?,
            Err(err) => {
                check_error(&err)?;
                prop_assert!(allowed.contains(&err.code()), "{} for a broken {field}: {body}", err.code());
            }
        }
    }

    /// A valid request with a few bytes overwritten, inserted or deleted.
    #[test]
    fn create_body_survives_mutated_bytes(
        (body, ..) in valid_create(),
        edits in vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = body.to_string().into_bytes();
        mutate(&mut bytes, &edits);
        check_parse(&bytes)?;
    }
}

#[test]
fn deep_nesting_is_refused_at_any_depth_past_the_limit() {
    for depth in [1, 2, 100, 127, 129, 200, 5000, 60_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            match create_body::parse(text.as_bytes()) {
                Ok(vm) => panic!("accepted {depth}: {vm:?}"),
                Err(err) if depth > 128 => {
                    assert_eq!(err.code(), "invalid-json", "{depth}");
                    assert!(
                        err.message().contains("nested more than 128"),
                        "{}",
                        err.message()
                    );
                }
                Err(err) => assert_ne!(err.code(), "invalid-json", "{depth}: {err}"),
            }
        }
    }
}

// ---- VMX ----

/// One line of a VMX file VMware would read, as bytes without its line end, and its key.
fn vmx_line() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    let key = "[A-Za-z][A-Za-z0-9._:-]{0,24}";
    let space = "[ \\t]{0,3}";
    // Quoted values: anything but a quote or a line break, bytes of other encodings too.
    let quoted = vec(
        any::<u8>().prop_map(|b| match b {
            b'"' => b'\'',
            b'\n' => b' ',
            b => b,
        }),
        0..40,
    );
    let bare = "[A-Za-z0-9._:/|=#-]{1,12}";
    let entry = (
        key,
        space,
        space,
        prop_oneof![
            quoted.prop_map(|v| [b"\"".to_vec(), v, b"\"".to_vec()].concat()),
            bare.prop_map(String::into_bytes),
        ],
        "[ \\t\\r]{0,2}",
        space,
    )
        .prop_map(|(key, lead, around, value, trail, eq_space)| {
            let line = [
                lead.as_bytes(),
                key.as_bytes(),
                around.as_bytes(),
                b"=",
                eq_space.as_bytes(),
                &value,
                trail.as_bytes(),
            ]
            .concat();
            (line, Some(key))
        });
    let comment = (
        space,
        vec(
            any::<u8>().prop_map(|b| if b == b'\n' { b' ' } else { b }),
            0..40,
        ),
    )
        .prop_map(|(lead, text)| ([lead.as_bytes(), b"#", &text].concat(), None));
    let blank = "[ \\t]{0,4}".prop_map(|s| (s.into_bytes(), None));
    prop_oneof![6 => entry, 1 => comment, 1 => blank]
}

/// A VMX file: lines with LF or CR LF ends (mixed), the last one maybe without; keys
/// unique ignoring case, as VMware requires. Returns the bytes and the keys.
fn vmx_file() -> impl Strategy<Value = (Vec<u8>, Vec<String>)> {
    (vec((vmx_line(), any::<bool>()), 0..30), any::<bool>()).prop_map(|(lines, last_open)| {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = Vec::new();
        let mut keys = Vec::new();
        let kept: Vec<_> = lines
            .into_iter()
            .filter(|((_, key), _)| match key {
                Some(key) => seen.insert(key.to_ascii_lowercase()),
                None => true,
            })
            .collect();
        let count = kept.len();
        for (n, ((line, key), crlf)) in kept.into_iter().enumerate() {
            bytes.extend_from_slice(&line);
            if !(last_open && n + 1 == count) {
                bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            keys.extend(key);
        }
        (bytes, keys)
    })
}

fn vmx_parse(bytes: &[u8]) -> Result<Vmx, TestCaseError> {
    Vmx::parse(bytes)
        .map_err(|e| TestCaseError::fail(format!("{e}\nin {:?}", String::from_utf8_lossy(bytes))))
}

fn check_vmx_error(err: &VmxError) -> Result<(), TestCaseError> {
    prop_assert!(err.code().starts_with("vmx-"), "{}", err.code());
    let message = err.to_string();
    prop_assert!(!message.is_empty() && message.len() < 1000, "{message}");
    Ok(())
}

/// Values a caller may set: anything, with the characters VMX must escape.
fn vmx_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f\"|#=a-z0-9 ]{0,30}",
        "([|][0-9A-Fa-f]{2}|[a-z\"])*",
    ]
}

proptest! {
    #![proptest_config(config(4000))]

    /// Whatever parses, serialises back to the very same bytes.
    #[test]
    fn vmx_survives_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        match Vmx::parse(&bytes) {
            Ok(vmx) => prop_assert_eq!(vmx.to_bytes(), bytes),
            Err(err) => check_vmx_error(&err)?,
        }
    }

    #[test]
    fn vmx_files_round_trip_byte_for_byte((bytes, keys) in vmx_file()) {
        let vmx = vmx_parse(&bytes)?;
        prop_assert_eq!(vmx.to_bytes(), bytes);
        prop_assert_eq!(vmx.keys().collect::<Vec<_>>(), keys.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn mutated_vmx_files_parse_to_the_same_bytes_or_fail_cleanly(
        (bytes, _) in vmx_file(),
        edits in vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = bytes;
        mutate(&mut bytes, &edits);
        match Vmx::parse(&bytes) {
            Ok(vmx) => prop_assert_eq!(vmx.to_bytes(), bytes),
            Err(err) => check_vmx_error(&err)?,
        }
    }

    /// set(k, v) then parse again gives v back; every other line stays as it was.
    #[test]
    fn vmx_set_then_parse_gets_the_value_back(
        (bytes, keys) in vmx_file(),
        pick in any::<prop::sample::Index>(),
        existing in any::<bool>(),
        upper in any::<bool>(),
        new_key in "[A-Za-z][A-Za-z0-9._:-]{0,24}",
        value in vmx_value(),
    ) {
        let mut vmx = vmx_parse(&bytes)?;
        let before: Vec<(String, Option<String>)> =
            keys.iter().map(|k| (k.clone(), vmx.get(k))).collect();
        let key = if existing && !keys.is_empty() {
            let key = pick.get(&keys);
            if upper { key.to_ascii_uppercase() } else { key.to_ascii_lowercase() }
        } else {
            new_key
        };
        vmx.set(&key, &value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let written = vmx.to_bytes();
        let again = vmx_parse(&written)?;
        prop_assert_eq!(again.get(&key), Some(value.clone()));
        prop_assert_eq!(again.to_bytes(), written.clone());
        for (k, v) in &before {
            if !k.eq_ignore_ascii_case(&key) {
                prop_assert_eq!(&again.get(k), v, "{} changed", k);
            }
        }
        // The lines not edited are byte for byte what they were, in order.
        let old_lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let new_lines: Vec<&[u8]> = written.split(|&b| b == b'\n').collect();
        let strip = |l: &[u8]| l.strip_suffix(b"\r").unwrap_or(l).to_vec();
        let unchanged = old_lines
            .iter()
            .filter(|l| new_lines.iter().any(|n| strip(n) == strip(l)))
            .count();
        prop_assert!(unchanged + 1 >= old_lines.len(), "more than one line changed");
    }

    #[test]
    fn vmx_set_refuses_keys_vmware_cannot_read(
        (bytes, _) in vmx_file(),
        key in prop_oneof![Just(String::new()), "[a-z]{0,5}[ =\"#\\n\\r\\x00\u{e9}][a-z]{0,5}"],
        value in vmx_value(),
    ) {
        let mut vmx = vmx_parse(&bytes)?;
        let err = vmx.set(&key, &value).err();
        prop_assert!(matches!(err, Some(VmxError::InvalidKey { .. })), "{key:?}: {err:?}");
        check_vmx_error(&err.unwrap())?;
        prop_assert_eq!(vmx.to_bytes(), bytes);
    }

    #[test]
    fn vmx_remove_then_parse_has_no_key(
        (bytes, keys) in vmx_file(),
        pick in any::<prop::sample::Index>(),
    ) {
        if keys.is_empty() {
            return Ok(());
        }
        let key = pick.get(&keys).clone();
        let mut vmx = vmx_parse(&bytes)?;
        prop_assert!(vmx.remove(&key.to_ascii_uppercase()));
        let again = vmx_parse(&vmx.to_bytes())?;
        prop_assert_eq!(again.get(&key), None);
        prop_assert_eq!(again.keys().count(), keys.len() - 1);
    }
}
