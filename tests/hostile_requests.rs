//! A table of hostile requests sent byte for byte to the real server: each must get its
//! documented status and JSON error code, the server must keep answering, and nothing may
//! appear on disk but the VM folders of the creates it accepted.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::{Server, ServerOptions, TempDir};
use serde_json::{json, Value};

const UNKNOWN_ID: &str = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";
const SHA1: &str = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";

/// What came back on one connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Sends `request` as is (from a thread of its own: the server may answer before it has
/// read it all) and reads one answer. Err when the connection ends without one.
fn exchange(addr: &str, request: &[u8]) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let bytes = request.to_vec();
    let sender = thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let head_only = request.starts_with(b"HEAD ");
    let answer = read_answer(&stream, head_only);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    answer
}

fn read_answer(stream: &TcpStream, head_only: bool) -> Result<Answer, String> {
    let mut reader = BufReader::new(stream);
    // Interim answers (100 Continue) come first.
    let (status, headers) = loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("no status line: {e}"))?;
        if line.is_empty() {
            return Err("connection closed without an answer".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("headers: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if !head_only {
        match length {
            Some(n) => {
                body.resize(n, 0);
                reader
                    .read_exact(&mut body)
                    .map_err(|e| format!("body: {e}"))?;
            }
            None => {
                let _ = reader.read_to_end(&mut body);
            }
        }
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// One row: a request, the status it must get, and the error code of its JSON body
/// (`None` for a success, which has no error body).
struct Case {
    name: String,
    request: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
    /// Words the error message must contain, where the code alone does not say enough.
    needle: Option<&'static str>,
}

impl Case {
    fn saying(mut self, needle: &'static str) -> Self {
        self.needle = Some(needle);
        self
    }
}

fn case(
    name: impl Into<String>,
    request: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        name: name.into(),
        request,
        status,
        code,
        needle: None,
    }
}

/// A request with `Connection: close`, so that the answer ends with the connection.
fn request(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

fn post(body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        b"/vms",
        &[("Content-Type", b"application/json")],
        Some(body),
    )
}

fn post_typed(content_type: &[u8], body: &[u8]) -> Vec<u8> {
    request(
        "POST",
        b"/vms",
        &[("Content-Type", content_type)],
        Some(body),
    )
}

fn get(target: &[u8]) -> Vec<u8> {
    request("GET", target, &[], None)
}

/// A POST whose head is written by hand (length headers the test controls).
fn post_raw_head(head_lines: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST /vms HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n{head_lines}\r\n"
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(path);
            }
        }
    }
    out
}

fn top_level(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The table: each request, the status it must get and its error code.
#[rustfmt::skip]
fn table(image_url: &str) -> Vec<Case> {
    let good = json!({
        "image": {"url": image_url, "checksum": SHA1, "checksum_type": "sha1"},
        "cpus": 2, "memory": 1024, "network_type": "nat", "headless": true
    });
    let with = |key: &str, value: Value| {
        let mut b = good.clone();
        b[key] = value;
        b.to_string().into_bytes()
    };
    let with_image = |key: &str, value: Value| {
        let mut b = good.clone();
        b["image"][key] = value;
        b.to_string().into_bytes()
    };
    let without_image = |key: &str| {
        let mut b = good.clone();
        b["image"].as_object_mut().unwrap().remove(key);
        b.to_string().into_bytes()
    };
    let good_bytes = good.to_string().into_bytes();
    let padded = |total: usize| {
        let mut b = good.clone();
        b["pad"] = json!("");
        let pad = total - b.to_string().len();
        b["pad"] = json!("p".repeat(pad));
        let bytes = b.to_string().into_bytes();
        assert_eq!(bytes.len(), total);
        bytes
    };
    let nested = |depth: usize| {
        let mut b = good.to_string();
        b.pop();
        format!(r#"{b}, "x": {}{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
    };
    let long_id = "f".repeat(100 * 1024);
    let long_method = "X".repeat(7000);
    let many_headers: String = (0..101).map(|n| format!("X-Many-{n}: y\r\n")).collect();
    let some_headers: String = (0..90).map(|n| format!("X-Some-{n}: y\r\n")).collect();
    let mut nul_in_json = good_bytes.clone();
    nul_in_json.insert(1, 0);
    let mut bom_json = b"\xEF\xBB\xBF".to_vec();
    bom_json.extend_from_slice(&good_bytes);
    // A value written as raw JSON text (or raw bytes) where `key` is.
    let raw_value = |key: &str, raw: &[u8]| splice(&with(key, json!("MARK")), b"\"MARK\"", raw);
    let raw_image_value =
        |key: &str, raw: &[u8]| splice(&with_image(key, json!("MARK")), b"\"MARK\"", raw);
    let duplicate_keys = {
        let mut text = good.to_string();
        text.pop();
        format!(r#"{text}, "image": 5}}"#).into_bytes()
    };

    vec![
        // Malformed JSON.
        case("truncated JSON", post(b"{\"image\": "), 415, Some("invalid-json")),
        case("empty body", post(b""), 415, Some("invalid-json")),
        case("trailing garbage", post(&[&good_bytes[..], b" xyz"].concat()), 415, Some("invalid-json")),
        case("comments", post(b"{/* c */}"), 415, Some("invalid-json")),
        case("single quotes", post(b"{'image': 1}"), 415, Some("invalid-json")),
        case("byte-order mark", post(&bom_json), 415, Some("invalid-json")),
        case("invalid UTF-8 in a string", post(&raw_image_value("url", b"\"http://127.0.0.1:1/\xff\"")), 415, Some("invalid-json")),
        case("lone surrogate escape", post(&raw_image_value("url", b"\"http://127.0.0.1:1/\\ud800\"")), 415, Some("invalid-json")),
        case("NUL byte between tokens", post(&nul_in_json), 415, Some("invalid-json")),
        case("raw NUL inside a string", post(&raw_value("network_type", b"\"nat\0\"")), 415, Some("invalid-json")),
        case("number out of range", post(&raw_value("cpus", b"1e400")), 415, Some("invalid-json")),
        // Wrong types.
        case("null", post(b"null"), 400, Some("invalid-body")),
        case("a string", post(b"\"vm\""), 400, Some("invalid-body")),
        case("a number", post(b"42"), 400, Some("invalid-body")),
        case("an array", post(b"[]"), 400, Some("invalid-body")),
        case("image a string", post(&with("image", json!("http://127.0.0.1:1/x"))), 400, Some("invalid-image")),
        case("image an array", post(&with("image", json!([]))), 400, Some("invalid-image")),
        case("duplicate key, last one wrong", post(&duplicate_keys), 400, Some("invalid-image")),
        case("url a number", post(&with_image("url", json!(5))), 400, Some("invalid-image-url")),
        case("checksum_type an array", post(&with_image("checksum_type", json!(["sha1"]))), 400, Some("invalid-checksum-type")),
        case("checksum an object", post(&with_image("checksum", json!({}))), 400, Some("invalid-checksum")),
        case("cpus a string", post(&with("cpus", json!("2"))), 400, Some("invalid-cpus")),
        case("cpus over u64", post(&raw_value("cpus", b"18446744073709551616")), 400, Some("invalid-cpus")),
        case("cpus negative", post(&with("cpus", json!(-1))), 400, Some("invalid-cpus")),
        case("memory a bool", post(&with("memory", json!(true))), 400, Some("invalid-memory")),
        case("memory fractional", post(&with("memory", json!(1024.5))), 400, Some("invalid-memory")),
        case("headless a string", post(&with("headless", json!("true"))), 400, Some("invalid-headless")),
        case("headless a number", post(&with("headless", json!(1))), 400, Some("invalid-headless")),
        case("network_type an object", post(&with("network_type", json!({"a": 1}))), 400, Some("invalid-network-type")),
        case("callback_url an array", post(&with("callback_url", json!(["http://127.0.0.1:1/"]))), 400, Some("invalid-callback-url")),
        // Missing and empty fields.
        case("empty object", post(b"{}"), 400, Some("invalid-image")),
        case("image null", post(&with("image", Value::Null)), 400, Some("invalid-image")),
        case("no image.url", post(&without_image("url")), 400, Some("invalid-image-url")),
        case("no image.checksum", post(&without_image("checksum")), 400, Some("invalid-checksum")),
        case("no image.checksum_type", post(&without_image("checksum_type")), 400, Some("invalid-checksum-type")),
        case("empty image.url", post(&with_image("url", json!(""))), 400, Some("invalid-image-url")),
        // Unicode and control characters in every string field.
        case("NUL in url", post(&with_image("url", json!("http://127.0.0.1:1/a\u{0}b"))), 400, Some("invalid-image-url")),
        case("newline in url", post(&with_image("url", json!("http://127.0.0.1:1/a\nHost: x"))), 400, Some("invalid-image-url")),
        case("fullwidth scheme in url", post(&with_image("url", json!("ｈｔｔｐ://127.0.0.1/x"))), 400, Some("invalid-image-url")),
        case("url path traversal to a relative file", post(&with_image("url", json!("file://../../etc/passwd"))), 400, Some("invalid-image-url")),
        case("Arabic-Indic digits in checksum", post(&with_image("checksum", json!("٣".repeat(40)))), 400, Some("invalid-checksum")),
        case("NUL in checksum", post(&with_image("checksum", json!(format!("{}\u{0}", &SHA1[..39])))), 400, Some("invalid-checksum")),
        case("NUL after checksum_type", post(&with_image("checksum_type", json!("sha1\u{0}"))), 400, Some("invalid-checksum-type")),
        case("fullwidth checksum_type", post(&with_image("checksum_type", json!("ＳＨＡ１"))), 400, Some("invalid-checksum-type")),
        case("newline in network_type", post(&with("network_type", json!("nat\n"))), 400, Some("invalid-network-type")),
        case("emoji network_type", post(&with("network_type", json!("🙂"))), 400, Some("invalid-network-type")),
        case("escape sequence in network_type", post(&with("network_type", json!("\u{1b}[31mnat"))), 400, Some("invalid-network-type")),
        case("BEL in callback_url", post(&with("callback_url", json!("http://127.0.0.1:1/\u{7}"))), 400, Some("invalid-callback-url")),
        case("javascript callback_url", post(&with("callback_url", json!("javascript:alert(1)"))), 400, Some("invalid-callback-url")),
        case("60 KB checksum echoed short", post(&with_image("checksum", json!("a".repeat(60_000)))), 400, Some("invalid-checksum")),
        case("control characters in an unknown field (ignored)", post(&with("\u{0}\u{1}", json!("\u{0}\u{7f}\u{202e}"))), 202, None),
        case("unicode path in url (accepted, fails to download)", post(&with_image("url", json!(format!("{image_url}/例え\u{202e}")))), 202, None),
        // Huge and deep bodies.
        case("100,000 [ (over the size limit)", post(&"[".repeat(100_000).into_bytes()), 413, Some("body-too-large")),
        case("60,000 [", post(&"[".repeat(60_000).into_bytes()), 415, Some("invalid-json")).saying("nested more than 128 levels"),
        case("12,000 {\"a\":", post(&"{\"a\":".repeat(12_000).into_bytes()), 415, Some("invalid-json")).saying("nested more than 128 levels"),
        case("129 [ as image.url", post(&raw_image_value("url", format!("{}{}", "[".repeat(129), "]".repeat(129)).as_bytes())), 415, Some("invalid-json")).saying("nested more than 128 levels"),
        case("nesting 120 deep in an ignored field (accepted)", post(&nested(120)), 202, None),
        case("body of exactly 64 KiB (accepted)", post(&padded(64 * 1024)), 202, None),
        case("body of 64 KiB + 1", post(&padded(64 * 1024 + 1)), 413, Some("body-too-large")),
        case("10 MB body", post(&vec![b' '; 10 << 20]), 413, Some("body-too-large")),
        case("declared 1 TB, nothing sent", post_raw_head("Content-Length: 1000000000000\r\n", b""), 413, Some("body-too-large")),
        case("declared length over 64 bits", post_raw_head("Content-Length: 100000000000000000000\r\n", b""), 400, Some("invalid-content-length")),
        case("negative length", post_raw_head("Content-Length: -1\r\n", b""), 400, Some("invalid-content-length")),
        case("two different lengths", post_raw_head("Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"), 400, Some("invalid-content-length")),
        case("length and chunked", post_raw_head("Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", b"{}"), 400, Some("invalid-content-length")),
        case("gzip transfer coding", post_raw_head("Transfer-Encoding: gzip\r\n", b"{}"), 501, Some("unsupported-transfer-encoding")),
        case("no length at all", post_raw_head("", &good_bytes), 411, Some("length-required")),
        case("chunked create (accepted)", post_raw_head("Transfer-Encoding: chunked\r\n", &chunked(&good_bytes, 7)), 202, None),
        case("chunked 1 MB", post_raw_head("Transfer-Encoding: chunked\r\n", &chunked(&vec![b' '; 1 << 20], 4096)), 413, Some("body-too-large")),
        case("chunked in 1-byte chunks over the limit", post_raw_head("Transfer-Encoding: chunked\r\n", &chunked(&vec![b' '; 40_000], 1)), 413, Some("body-too-large")),
        case("chunk size line without end", post_raw_head("Transfer-Encoding: chunked\r\n", &vec![b'f'; 300_000]), 413, Some("body-too-large")),
        case("malformed chunk size", post_raw_head("Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), 400, Some("invalid-chunked-body")),
        case("100-continue create (accepted)", post_raw_head(&format!("Expect: 100-continue\r\nContent-Length: {}\r\n", good_bytes.len() ), &good_bytes), 202, None),
        case("unknown expectation", post_raw_head("Expect: 200-ok\r\nContent-Length: 2\r\n", b"{}"), 417, Some("expectation-failed")),
        // Ids and paths.
        case("id ..", get(b"/vms/.."), 404, Some("vm-not-found")),
        case("id ../../etc/passwd", get(b"/vms/../../etc/passwd"), 404, Some("not-found")),
        case("id ..%2F..%2Fgold", request("DELETE", b"/vms/..%2F..%2Fgold", &[], None), 404, Some("vm-not-found")),
        case("id %2e%2e", get(b"/vms/%2e%2e"), 404, Some("vm-not-found")),
        case("id with %00", request("DELETE", format!("/vms/{UNKNOWN_ID}%00").as_bytes(), &[], None), 404, Some("vm-not-found")),
        case("id with a raw NUL", get(format!("/vms/{}\0", &UNKNOWN_ID[..35]).as_bytes()), 404, Some("vm-not-found")),
        case("id with a raw tab", get(b"/vms/a\tb"), 404, Some("vm-not-found")),
        case("unknown well-formed id", request("DELETE", format!("/vms/{UNKNOWN_ID}").as_bytes(), &[], None), 404, Some("vm-not-found")),
        case("id of 5,000 characters", get(format!("/vms/{}", &long_id[..5000]).as_bytes()), 404, Some("vm-not-found")),
        case("id of 100 KB", get(format!("/vms/{long_id}").as_bytes()), 414, Some("uri-too-long")),
        case("path of 100 KB", request("DELETE", format!("/{long_id}").as_bytes(), &[], None), 414, Some("uri-too-long")),
        case("query of 100 KB", get(format!("/vms?{long_id}").as_bytes()), 414, Some("uri-too-long")),
        case("absolute-form target", get(b"http://example.invalid/vms"), 404, Some("not-found")),
        case("asterisk target", request("OPTIONS", b"*", &[], None), 404, Some("not-found")),
        case("root", get(b"/"), 404, Some("not-found")),
        case("unknown path", get(b"/admin/../../vms%00"), 404, Some("not-found")),
        case("non-ASCII path", get("/vms/例え".as_bytes()), 400, Some("invalid-request")),
        // Methods.
        case("PATCH /vms", request("PATCH", b"/vms", &[], Some(b"{}")), 405, Some("method-not-allowed")),
        case("TRACE /vms", request("TRACE", b"/vms", &[], None), 405, Some("method-not-allowed")),
        case("TRACE /vms/:id", request("TRACE", format!("/vms/{UNKNOWN_ID}").as_bytes(), &[], None), 405, Some("method-not-allowed")),
        case("CONNECT /vms", request("CONNECT", b"/vms", &[], None), 405, Some("method-not-allowed")),
        case("PUT /vms/:id", request("PUT", format!("/vms/{UNKNOWN_ID}").as_bytes(), &[], Some(b"{}")), 405, Some("method-not-allowed")),
        case("POST /vms/:id", request("POST", format!("/vms/{UNKNOWN_ID}").as_bytes(), &[], Some(&good_bytes)), 405, Some("method-not-allowed")),
        case("lowercase get", request("get", b"/vms", &[], None), 405, Some("method-not-allowed")),
        case("method with control bytes", request("FOO\u{1}BAR", b"/vms", &[], None), 405, Some("method-not-allowed")),
        case("method of 7,000 characters", request(&long_method, b"/vms", &[], None), 405, Some("method-not-allowed")),
        case("HEAD /vms", request("HEAD", b"/vms", &[], None), 200, None),
        // Content types.
        case("XML content type", post_typed(b"application/xml", b"<vm/>"), 415, Some("unsupported-media-type")),
        case("multipart content type", post_typed(b"multipart/form-data; boundary=x", &good_bytes), 415, Some("unsupported-media-type")),
        case("JSON with a charset parameter (accepted)", post_typed(b"application/json; charset=utf-8", &good_bytes), 202, None),
        case("non-ASCII content type", post_typed("application/jsön".as_bytes(), &good_bytes), 400, Some("invalid-request")),
        case("content type of 40 KB", post_typed(format!("application/{}", "j".repeat(40_000)).as_bytes(), &good_bytes), 431, Some("headers-too-large")),
        // Headers and the request line.
        case("one header of 40 KB", request("GET", b"/vms", &[("X-Big", "b".repeat(40_000).as_bytes())], None), 431, Some("headers-too-large")),
        case("101 headers", [ b"GET /vms HTTP/1.1\r\nConnection: close\r\n".to_vec(), many_headers.into_bytes(), b"\r\n".to_vec(), ] .concat(), 431, Some("headers-too-large")),
        case("91 headers (accepted)", [ b"GET /vms HTTP/1.1\r\nConnection: close\r\n".to_vec(), some_headers.into_bytes(), b"\r\n".to_vec(), ] .concat(), 200, None),
        case("NUL in a header value", request("GET", b"/vms", &[("X-Nul", b"a\0b")], None), 200, None),
        case("header line without colon", b"GET /vms HTTP/1.1\r\nConnection: close\r\nNoColonHere\r\n\r\n".to_vec(), 400, Some("invalid-request")),
        case("request line without version", b"GET /vms\r\n\r\n".to_vec(), 400, Some("invalid-request")),
        case("request line of garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, Some("invalid-request")),
        case("HTTP/2.0", b"GET /vms HTTP/2.0\r\n\r\n".to_vec(), 505, Some("http-version-not-supported")),
        case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505, Some("http-version-not-supported")),
        case("HTTP/1.0 without Host (accepted)", b"GET /vms HTTP/1.0\r\n\r\n".to_vec(), 200, None),
        case("bare LF line ends (accepted)", b"GET /vms HTTP/1.1\nConnection: close\n\n".to_vec(), 200, None),
    ]
}

#[test]
fn hostile_requests_get_clear_errors_and_leave_no_trace() {
    hostile_requests("hostile-req", Server::start_with);
}

/// The same bytes inside TLS: the TLS listener keeps every limit of the plain one.
#[test]
fn hostile_requests_over_tls_get_the_same_answers() {
    hostile_requests("hostile-req-tls", common::tls_relay::start_behind_tls);
}

fn hostile_requests(tag: &str, start: fn(&Path, ServerOptions) -> Server) {
    let dir = TempDir::new(tag);
    let server = start(dir.path(), ServerOptions::default());
    let addr = server.base.strip_prefix("http://").unwrap().to_string();

    // Accepted creates point at a loopback port nobody listens on: they fail at once,
    // without a byte downloaded, so the only trace they may leave is their VM folder.
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cases = table(&format!("http://127.0.0.1:{closed_port}/gold.tar.gz"));
    assert!(cases.len() >= 40, "{} cases", cases.len());

    // What exists before: the whole temp root (the data folder and the simulator's
    // state) and the test's working directory, the server's too.
    let data_before = tree(&server.data_dir);
    let outside_before: BTreeSet<PathBuf> = tree(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect();
    let cwd = std::env::current_dir().unwrap();
    let cwd_before = top_level(&cwd);

    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    let mut table = String::new();
    for case in &cases {
        let answer = match exchange(&addr, &case.request) {
            Ok(answer) => answer,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let code = body["code"].as_str();
        table.push_str(&format!(
            "| {} | {} | {} |\n",
            case.name,
            answer.status,
            code.unwrap_or("")
        ));
        if answer.status != case.status {
            failures.push(format!(
                "{}: status {} (wanted {}): {}",
                case.name,
                answer.status,
                case.status,
                String::from_utf8_lossy(&answer.body)
            ));
            continue;
        }
        match case.code {
            Some(want) => {
                let message = body["message"].as_str().unwrap_or("");
                let content_type = answer
                    .headers
                    .iter()
                    .find(|(k, _)| k == "content-type")
                    .map(|(_, v)| v.as_str());
                let said = case.needle.is_none_or(|n| message.contains(n));
                if code != Some(want)
                    || message.is_empty()
                    || !said
                    || content_type != Some("application/json; charset=utf-8")
                {
                    failures.push(format!(
                        "{}: {:?} {:?} (wanted code {want} with a message saying {:?}): {}",
                        case.name,
                        content_type,
                        code,
                        case.needle,
                        String::from_utf8_lossy(&answer.body)
                    ));
                }
                // Echoing a hostile value back whole would turn the server into an
                // amplifier and flood its clients' logs.
                if message.len() > 1000 {
                    failures.push(format!("{}: message of {} bytes", case.name, message.len()));
                }
            }
            None if answer.status == 202 => {
                accepted.push(body["id"].as_str().unwrap_or_default().to_string());
            }
            None => {}
        }
    }
    if std::env::var_os("OSXB_TEST_TABLE").is_some() {
        eprintln!("| request | status | code |\n| --- | --- | --- |\n{table}");
    }
    assert!(
        failures.is_empty(),
        "{}\n\nserver log:\n{}",
        failures.join("\n"),
        server.log()
    );

    // The server still answers, and knows exactly the VMs it accepted.
    let (status, list) = common::http::request("GET", &server.url("/vms"), None, &[]);
    assert_eq!(status, 200, "{list}");
    let listed: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_string())
        .collect();
    let accepted_set: BTreeSet<String> = accepted.iter().cloned().collect();
    assert_eq!(listed, accepted_set);
    for id in &accepted {
        server.wait_failed(id);
    }

    // Nothing appeared but the accepted VMs' folders.
    let allowed: Vec<PathBuf> = accepted
        .iter()
        .map(|id| PathBuf::from("vms").join(id))
        .collect();
    let new_in_data: Vec<PathBuf> = tree(&server.data_dir)
        .difference(&data_before)
        .filter(|p| !allowed.iter().any(|a| p.starts_with(a)))
        .cloned()
        .collect();
    assert!(
        new_in_data.is_empty(),
        "new in the data folder: {new_in_data:?}"
    );
    for id in &accepted {
        assert!(server.data_dir.join("vms").join(id).is_dir(), "{id}");
    }
    let outside_after: BTreeSet<PathBuf> = tree(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("data"))
        .collect();
    let new_outside: Vec<&PathBuf> = outside_after.difference(&outside_before).collect();
    assert!(
        new_outside.is_empty(),
        "new outside the data folder: {new_outside:?}"
    );
    let new_in_cwd: Vec<String> = top_level(&cwd).difference(&cwd_before).cloned().collect();
    assert!(
        new_in_cwd.is_empty(),
        "new in the working directory: {new_in_cwd:?}"
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// `bytes` with the first `mark` replaced by `raw`.
fn splice(bytes: &[u8], mark: &[u8], raw: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(mark.len())
        .position(|w| w == mark)
        .expect("mark");
    [&bytes[..at], raw, &bytes[at + mark.len()..]].concat()
}
