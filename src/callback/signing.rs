//! Signed callbacks: HMAC-SHA256 (RFC 2104) of `<timestamp>.<body>` under a shared secret, so
//! a callback receiver can reject forged or replayed posts.
//!
//! Each callback carries two headers:
//!
//! - `X-OSX-Builder-Timestamp: <unix seconds>`
//! - `X-OSX-Builder-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`
//!
//! The timestamp is inside the signed text so that an old, captured callback cannot be sent
//! again later with a fresh timestamp; a receiver rejects timestamps too far from its clock.
//!
//! A receiver can check a callback in a shell (for a test or by hand; in code, compare the
//! signatures in constant time as [`verify`] does). Set `SECRET`, put the two headers in `TS`
//! and `SIG`, and save the request body byte for byte in `body.json`:
//!
//! ```sh
//! case "$TS" in ''|*[!0-9]*) echo "bad timestamp" >&2; exit 1;; esac
//! expected="sha256=$({ printf '%s.' "$TS"; cat body.json; } | openssl dgst -sha256 -hmac "$SECRET" -r | cut -d' ' -f1)"
//! age=$(( $(date +%s) - TS ))
//! if [ "$expected" = "$SIG" ] && [ "${age#-}" -le 300 ]; then echo verified; else echo "forged or stale" >&2; exit 1; fi
//! ```
//!
//! The `case` line comes first because shell arithmetic on an unchecked header can run
//! commands in bash. `-r` makes openssl (and macOS's LibreSSL) print `<hex> *stdin`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub const TIMESTAMP_HEADER: &str = "X-OSX-Builder-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-OSX-Builder-Signature";
const SIGNATURE_PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `message` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    mac_of(key, &[message]).finalize().into_bytes().into()
}

/// HMAC over the concatenation of `parts`, so that `<timestamp>.<body>` need not be copied
/// into one buffer (bodies can be large VM objects with progress and errors).
fn mac_of(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Equality whose running time depends only on the lengths, not on where the first
/// difference is: an early exit would let an attacker guess a secret byte by byte.
/// Lengths are not secret here (digests have a fixed length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The value of the signature header: `sha256=<hex>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = mac_of(secret, &[timestamp.as_bytes(), b".", body]);
    format!("{SIGNATURE_PREFIX}{:x}", mac.finalize().into_bytes())
}

/// The two headers to add to a callback POST, as (name, value).
pub fn signature_headers(
    secret: &[u8],
    timestamp: u64,
    body: &[u8],
) -> [(&'static str, String); 2] {
    [
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, signature(secret, timestamp, body)),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The timestamp header is missing (pass "") or not a number of seconds.
    MalformedTimestamp { value: String },
    /// The signature header is missing (pass "") or not `sha256=` and 64 hex digits.
    MalformedSignature { value: String },
    /// The timestamp is further from `now` than the tolerance: a replay or a wrong clock.
    Stale {
        timestamp: u64,
        now: u64,
        tolerance: Duration,
    },
    /// Well-formed, but not the signature of this body under this secret.
    Mismatch,
}

impl SignatureError {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::MalformedTimestamp { .. } => "signature-timestamp-malformed",
            SignatureError::MalformedSignature { .. } => "signature-malformed",
            SignatureError::Stale { .. } => "signature-stale",
            SignatureError::Mismatch => "signature-mismatch",
        }
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::MalformedTimestamp { value } => write!(
                f,
                "the {TIMESTAMP_HEADER} header {value:?} is not a Unix time in seconds; \
                 send the header the sender produced, unchanged"
            ),
            SignatureError::MalformedSignature { value } => write!(
                f,
                "the {SIGNATURE_HEADER} header {value:?} is not `sha256=` followed by 64 hex \
                 digits; send the header the sender produced, unchanged"
            ),
            SignatureError::Stale {
                timestamp,
                now,
                tolerance,
            } => write!(
                f,
                "the callback was signed at {timestamp}, {} s away from now ({now}), more than \
                 the {} s allowed: it is a replay, or the clocks of sender and receiver differ \
                 (check NTP on both)",
                timestamp.abs_diff(*now),
                tolerance.as_secs()
            ),
            SignatureError::Mismatch => write!(
                f,
                "the signature does not match the body: the body was changed after signing, \
                 or sender and receiver use different secrets (verify the raw body bytes, not a \
                 re-encoded copy)"
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Checks a received callback. `now` is the receiver's Unix time in seconds; a timestamp more
/// than `tolerance` away from it (either way) is rejected. Pass "" for a missing header.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let timestamp =
        parse_timestamp(timestamp_header).ok_or_else(|| SignatureError::MalformedTimestamp {
            value: timestamp_header.to_string(),
        })?;
    let claimed =
        parse_signature(signature_header).ok_or_else(|| SignatureError::MalformedSignature {
            value: signature_header.to_string(),
        })?;
    // Staleness before the MAC: the cheaper check, and its answer does not depend on the secret.
    if timestamp.abs_diff(now) > tolerance.as_secs() {
        return Err(SignatureError::Stale {
            timestamp,
            now,
            tolerance,
        });
    }
    let mac = mac_of(secret, &[timestamp.to_string().as_bytes(), b".", body]);
    // verify_slice compares in constant time (subtle), so a forger learns nothing from timing.
    if mac.verify_slice(&claimed).is_ok() {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Digits only: `+5`, ` 5` or `5.0` are not what a sender produces, and the MAC covers the
/// timestamp's text, so a lenient parse would only hide a broken sender.
fn parse_timestamp(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn parse_signature(value: &str) -> Option<[u8; 32]> {
    let hex = value.trim().strip_prefix(SIGNATURE_PREFIX)?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = crate::sys::hex::digit(pair[0])? << 4 | crate::sys::hex::digit(pair[1])?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;
    use std::path::PathBuf;

    fn to_hex(mac: &[u8; 32]) -> String {
        format!("{:x}", sha2::digest::Output::<Sha256>::from(*mac))
    }
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &[u8] = b"s3cret-for-callbacks";
    const BODY: &[u8] = br#"{"id":"0b7e9a5c-2f4e-4e0f-9d1a-6f1c2b3a4d5e","status":"running"}"#;
    const TOLERANCE: Duration = Duration::from_secs(300);

    // RFC 4231, test cases 1-4, 6 and 7 (5 is about truncated output, which we never use).
    #[test]
    fn hmac_matches_rfc_4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                (1..=25).collect(),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the HMAC \
                  algorithm."
                    .to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (number, (key, data, expected)) in cases.iter().enumerate() {
            assert_eq!(
                &to_hex(&hmac_sha256(key, data)),
                expected,
                "case index {number}"
            );
        }
    }

    #[test]
    fn a_key_of_exactly_one_block_is_used_as_is() {
        // 64 bytes is the boundary between padding and hashing the key; RFC 4231 has no
        // case for it, so check that the hashed form gives a different MAC.
        let key = [0x42u8; 64];
        let hashed_key: [u8; 32] = Sha256::digest(key).into();
        assert_ne!(hmac_sha256(&key, b"m"), hmac_sha256(&hashed_key, b"m"));
        let long_key = [0x42u8; 65];
        let hashed_long: [u8; 32] = Sha256::digest(long_key).into();
        assert_eq!(
            hmac_sha256(&long_key, b"m"),
            hmac_sha256(&hashed_long, b"m")
        );
    }

    #[test]
    fn headers_name_the_timestamp_and_signature() {
        let [(ts_name, ts), (sig_name, sig)] = signature_headers(SECRET, 1_700_000_000, BODY);
        assert_eq!(ts_name, "X-OSX-Builder-Timestamp");
        assert_eq!(ts, "1700000000");
        assert_eq!(sig_name, "X-OSX-Builder-Signature");
        let mut signed = b"1700000000.".to_vec();
        signed.extend_from_slice(BODY);
        assert_eq!(
            sig,
            format!("sha256={}", to_hex(&hmac_sha256(SECRET, &signed)))
        );
    }

    #[test]
    fn round_trip_verifies() {
        let now = 1_700_000_000;
        let sig = signature(SECRET, now, BODY);
        assert_eq!(
            verify(SECRET, "1700000000", &sig, BODY, now, TOLERANCE),
            Ok(())
        );
        // Within the tolerance on either side, and uppercase hex or padding whitespace as
        // some proxies produce.
        assert_eq!(
            verify(SECRET, "1700000000", &sig, BODY, now + 300, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, "1700000000", &sig, BODY, now - 300, TOLERANCE),
            Ok(())
        );
        let upper = format!("sha256={}", sig["sha256=".len()..].to_uppercase());
        assert_eq!(
            verify(SECRET, " 1700000000 ", &upper, BODY, now, TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_is_rejected() {
        let sig = signature(SECRET, 1_700_000_000, BODY);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        let err = verify(
            SECRET,
            "1700000000",
            &sig,
            &tampered,
            1_700_000_000,
            TOLERANCE,
        );
        assert_eq!(err, Err(SignatureError::Mismatch));
        let mut longer = BODY.to_vec();
        longer.push(b' ');
        let err = verify(
            SECRET,
            "1700000000",
            &sig,
            &longer,
            1_700_000_000,
            TOLERANCE,
        );
        assert_eq!(err, Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_moved_timestamp_is_rejected() {
        // Re-sending a captured body with a fresh timestamp must fail: the MAC covers it.
        let sig = signature(SECRET, 1_700_000_000, BODY);
        let err = verify(SECRET, "1700000001", &sig, BODY, 1_700_000_001, TOLERANCE);
        assert_eq!(err, Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_wrong_secret_is_rejected() {
        let sig = signature(b"another secret", 1_700_000_000, BODY);
        let err = verify(SECRET, "1700000000", &sig, BODY, 1_700_000_000, TOLERANCE);
        assert_eq!(err.unwrap_err().code(), "signature-mismatch");
    }

    #[test]
    fn stale_and_future_timestamps_are_rejected() {
        let sig = signature(SECRET, 1_700_000_000, BODY);
        for now in [1_700_000_301, 1_699_999_699] {
            let err = verify(SECRET, "1700000000", &sig, BODY, now, TOLERANCE).unwrap_err();
            assert_eq!(
                err,
                SignatureError::Stale {
                    timestamp: 1_700_000_000,
                    now,
                    tolerance: TOLERANCE
                }
            );
            assert_eq!(err.code(), "signature-stale");
            assert!(err.to_string().contains("301 s away"), "{err}");
        }
    }

    #[test]
    fn malformed_headers_are_rejected_with_their_value() {
        let now = 1_700_000_000;
        let sig = signature(SECRET, now, BODY);
        for bad in [
            "",
            "  ",
            "-1700000000",
            "+1700000000",
            "1700000000.0",
            "17e8",
            "abc",
            "99999999999999999999999",
        ] {
            let err = verify(SECRET, bad, &sig, BODY, now, TOLERANCE).unwrap_err();
            assert_eq!(err.code(), "signature-timestamp-malformed", "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let hex = &sig["sha256=".len()..];
        let bad_sigs = [
            String::new(),
            hex.to_string(),
            format!("sha1={hex}"),
            format!("SHA256={hex}"),
            format!("sha256={}", &hex[..63]),
            format!("sha256={hex}0"),
            format!("sha256={}g", &hex[..63]),
            format!("sha256={}", "é".repeat(32)),
        ];
        for bad in &bad_sigs {
            let err = verify(SECRET, "1700000000", bad, BODY, now, TOLERANCE).unwrap_err();
            assert_eq!(err.code(), "signature-malformed", "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"xbc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    /// The shell recipe from this module's documentation, exactly as written there.
    fn documented_recipe() -> String {
        let source = include_str!("signing.rs");
        let mut lines = source
            .lines()
            .skip_while(|line| *line != "//! ```sh")
            .skip(1);
        let mut recipe = String::new();
        for line in lines.by_ref() {
            if line == "//! ```" {
                return recipe;
            }
            recipe.push_str(line.strip_prefix("//! ").unwrap_or(""));
            recipe.push('\n');
        }
        panic!("no ```sh block in the module documentation");
    }

    fn run_recipe(dir: &std::path::Path, ts: &str, sig: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(documented_recipe())
            .current_dir(dir)
            .env("SECRET", std::str::from_utf8(SECRET).unwrap())
            .env("TS", ts)
            .env("SIG", sig)
            .output()
            .unwrap()
    }

    #[test]
    fn the_documented_openssl_recipe_verifies_our_signatures() {
        let has_openssl = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !has_openssl {
            eprintln!("note: openssl not found, skipped the shell recipe check");
            return;
        }
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "osx-builder-signing-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Quotes, a newline, a backslash and non-ASCII: the recipe must sign raw bytes.
        let body = "{\"id\":\"x\",\"note\":\"caf\u{e9} \\\"q\\\"\"}\n".as_bytes();
        std::fs::write(dir.join("body.json"), body).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sig = signature(SECRET, now, body);

        let good = run_recipe(&dir, &now.to_string(), &sig);
        let bad_body_sig = signature(SECRET, now, b"{}");
        let forged = run_recipe(&dir, &now.to_string(), &bad_body_sig);
        let stale_ts = now - 3600;
        let stale = run_recipe(
            &dir,
            &stale_ts.to_string(),
            &signature(SECRET, stale_ts, body),
        );
        let injected = run_recipe(&dir, "a[$(touch pwned)]", &sig);
        let pwned = dir.join("pwned").exists();
        let _ = std::fs::remove_dir_all(&dir);

        assert!(good.status.success(), "{good:?}");
        assert_eq!(String::from_utf8_lossy(&good.stdout), "verified\n");
        assert!(!forged.status.success(), "{forged:?}");
        assert!(!stale.status.success(), "{stale:?}");
        assert!(!injected.status.success(), "{injected:?}");
        assert!(!pwned, "the recipe ran a command from the timestamp header");
    }
}
