//! VMX files: parse and edit preserving every untouched byte.
//!
//! VMware rewrites VMX files itself and other tools (Packer, the GUI, the original Go server)
//! wrote the ones we adopt, so an edit must leave every line it does not change exactly as it
//! was: comments, blank lines, key spelling, line endings and bytes in other encodings.

use std::fmt;

use crate::vm::guestinfo::GuestInfo;

/// The ways a VMX file can be unusable. Every message names the line and says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmxError {
    /// VMware reports a file that starts with a UTF-8 byte-order mark as corrupt.
    Bom,
    /// A line that is neither `key = "value"`, a `#` comment nor blank.
    MalformedLine {
        line: usize,
        reason: &'static str,
        text: String,
    },
    /// Two lines with keys equal ignoring ASCII case: VMware refuses to open such a file.
    DuplicateKey {
        key: String,
        first_line: usize,
        line: usize,
    },
    /// A key the caller asked to set that VMware could not read back.
    InvalidKey { key: String },
    /// A network type other than `bridged`, `nat` or `hostonly`.
    InvalidNetworkType { value: String },
}

impl VmxError {
    pub fn code(&self) -> &'static str {
        match self {
            VmxError::Bom => "vmx-bom",
            VmxError::MalformedLine { .. } => "vmx-malformed-line",
            VmxError::DuplicateKey { .. } => "vmx-duplicate-key",
            VmxError::InvalidKey { .. } => "vmx-invalid-key",
            VmxError::InvalidNetworkType { .. } => "vmx-invalid-network-type",
        }
    }
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxError::Bom => write!(
                f,
                "line 1: the VMX file starts with a UTF-8 byte-order mark, which VMware treats \
                 as corruption; save the file as UTF-8 without a BOM"
            ),
            VmxError::MalformedLine { line, reason, text } => write!(
                f,
                "line {line}: {reason} in {text:?}; every line must be `key = \"value\"`, a `#` \
                 comment or blank: fix or remove that line"
            ),
            VmxError::DuplicateKey {
                key,
                first_line,
                line,
            } => write!(
                f,
                "line {line}: key {key:?} repeats the key of line {first_line} (VMX keys ignore \
                 case), which VMware treats as corruption; remove one of the two lines"
            ),
            VmxError::InvalidKey { key } => write!(
                f,
                "{key:?} is not a valid VMX key: use letters, digits and `._:-` only"
            ),
            VmxError::InvalidNetworkType { value } => write!(
                f,
                "network type {value:?} is not supported: use bridged, nat or hostonly"
            ),
        }
    }
}

impl std::error::Error for VmxError {}

/// One line of the file as it was read, without its line terminator.
#[derive(Debug, Clone)]
struct Line {
    text: Vec<u8>,
    ending: &'static [u8],
    entry: Option<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    /// Byte range of the value token in `text`, quotes included when it is quoted: an edit
    /// replaces exactly this range so spacing around `=` and trailing text stay put.
    value_start: usize,
    value_end: usize,
    quoted: bool,
}

impl Entry {
    fn raw_value<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        let token = &text[self.value_start..self.value_end];
        if self.quoted {
            &token[1..token.len() - 1]
        } else {
            token
        }
    }
}

/// A parsed VMX file that serialises back to its exact bytes until edited.
#[derive(Debug, Clone)]
pub struct Vmx {
    lines: Vec<Line>,
    /// Terminator for appended lines: whatever the file already uses.
    ending: &'static [u8],
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl Vmx {
    pub fn parse(bytes: &[u8]) -> Result<Vmx, VmxError> {
        if bytes.starts_with(UTF8_BOM) {
            return Err(VmxError::Bom);
        }
        let mut lines = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (body, ending, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => {
                    (&rest[..nl - 1], b"\r\n" as &'static [u8], &rest[nl + 1..])
                }
                Some(nl) => (&rest[..nl], b"\n" as &'static [u8], &rest[nl + 1..]),
                None => (rest, b"" as &'static [u8], &rest[rest.len()..]),
            };
            let number = lines.len() + 1;
            let entry = parse_line(body).map_err(|reason| VmxError::MalformedLine {
                line: number,
                reason,
                text: shorten(&String::from_utf8_lossy(body)),
            })?;
            lines.push(Line {
                text: body.to_vec(),
                ending,
                entry,
            });
            rest = next;
        }
        let vmx = Vmx {
            ending: lines
                .iter()
                .map(|l| l.ending)
                .find(|e| !e.is_empty())
                .unwrap_or(b"\n"),
            lines,
        };
        vmx.check_duplicates()?;
        Ok(vmx)
    }

    fn check_duplicates(&self) -> Result<(), VmxError> {
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        for (index, line) in self.lines.iter().enumerate() {
            if let Some(entry) = &line.entry {
                let folded = entry.key.to_ascii_lowercase();
                if let Some(&first_line) = seen.get(&folded) {
                    return Err(VmxError::DuplicateKey {
                        key: entry.key.clone(),
                        first_line,
                        line: index + 1,
                    });
                }
                seen.insert(folded, index + 1);
            }
        }
        Ok(())
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.lines.iter().position(|line| {
            line.entry
                .as_ref()
                .is_some_and(|e| e.key.eq_ignore_ascii_case(key))
        })
    }

    /// The decoded value of `key` (ignoring case). Bytes that are not UTF-8 (files in other
    /// encodings) come back as U+FFFD.
    pub fn get(&self, key: &str) -> Option<String> {
        let line = &self.lines[self.find(key)?];
        let entry = line.entry.as_ref()?;
        Some(String::from_utf8_lossy(&decode_value_bytes(entry.raw_value(&line.text))).into_owned())
    }

    /// Keys as spelled in the file, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter_map(|l| l.entry.as_ref().map(|e| e.key.as_str()))
    }

    /// Sets `key` to `value`. An existing line for the key (whatever its case) keeps its key
    /// spelling and layout and gets the new value; otherwise a line is appended at the end.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), VmxError> {
        if !is_valid_key(key.as_bytes()) {
            return Err(VmxError::InvalidKey {
                key: key.to_string(),
            });
        }
        let quoted = format!("\"{}\"", encode_value(value));
        match self.find(key) {
            Some(index) => {
                let line = &mut self.lines[index];
                let Some(entry) = line.entry.as_mut() else {
                    return Ok(());
                };
                line.text
                    .splice(entry.value_start..entry.value_end, quoted.bytes());
                entry.value_end = entry.value_start + quoted.len();
                entry.quoted = true;
            }
            None => {
                if let Some(last) = self.lines.last_mut() {
                    if last.ending.is_empty() {
                        last.ending = self.ending;
                    }
                }
                let text = format!("{key} = {quoted}").into_bytes();
                let value_start = key.len() + 3;
                self.lines.push(Line {
                    entry: Some(Entry {
                        key: key.to_string(),
                        value_start,
                        value_end: text.len(),
                        quoted: true,
                    }),
                    text,
                    ending: self.ending,
                });
            }
        }
        Ok(())
    }

    /// Removes the line for `key` (ignoring case). Returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.find(key) {
            Some(index) => {
                self.lines.remove(index);
                true
            }
            None => false,
        }
    }

    /// Removes every line whose key satisfies `pred`, which sees the key in ASCII lowercase.
    /// Returns how many lines went.
    pub fn remove_where(&mut self, pred: impl Fn(&str) -> bool) -> usize {
        let before = self.lines.len();
        self.lines.retain(|line| match &line.entry {
            Some(entry) => !pred(&entry.key.to_ascii_lowercase()),
            None => true,
        });
        before - self.lines.len()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.text.len() + 2).sum());
        for line in &self.lines {
            out.extend_from_slice(&line.text);
            out.extend_from_slice(line.ending);
        }
        out
    }
}

/// Parses one line (terminator removed): `Ok(None)` for blank and comment lines.
fn parse_line(text: &[u8]) -> Result<Option<Entry>, &'static str> {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t' || *b == b'\r';
    let Some(first) = text.iter().position(|b| !is_space(b)) else {
        return Ok(None);
    };
    if text[first] == b'#' {
        return Ok(None);
    }
    let Some(eq) = text.iter().position(|&b| b == b'=') else {
        return Err("no `=` between key and value");
    };
    let key_end = text[..eq]
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(first, |p| p + 1);
    if key_end <= first {
        return Err("an empty key");
    }
    let key = &text[first..key_end];
    if !is_valid_key(key) {
        return Err("a key with characters other than letters, digits and `._:-`");
    }
    let Some(value_start) = text[eq + 1..]
        .iter()
        .position(|b| !is_space(b))
        .map(|p| eq + 1 + p)
    else {
        return Err("no value after `=`");
    };
    let (value_end, quoted) = if text[value_start] == b'"' {
        let Some(close) = text[value_start + 1..].iter().position(|&b| b == b'"') else {
            return Err("a value with no closing quote");
        };
        let value_end = value_start + 1 + close + 1;
        if !text[value_end..].iter().all(is_space) {
            return Err("text after the closing quote");
        }
        (value_end, true)
    } else {
        // Packer writes a few values unquoted (`sata0:0.virtualSSD = 1`) and VMware reads
        // them, so a bare token is accepted; a stray quote or space inside it is not.
        let value_end = text
            .iter()
            .rposition(|b| !is_space(b))
            .map_or(value_start, |p| p + 1);
        let token = &text[value_start..value_end];
        if token.contains(&b'"') {
            return Err("an unbalanced quote");
        }
        if token.iter().any(|b| b == &b' ' || b == &b'\t') {
            return Err("an unquoted value containing spaces");
        }
        (value_end, false)
    };
    Ok(Some(Entry {
        // Valid keys are ASCII, so this conversion cannot lose anything.
        key: String::from_utf8_lossy(key).into_owned(),
        value_start,
        value_end,
        quoted,
    }))
}

fn is_valid_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

/// Encodes a value for use inside VMX quotes the way VMware does: `"`, `|` and control
/// characters become `|XX` (uppercase hex), so a line break in an annotation is `|0D|0A`.
pub fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '"' || c == '|' || c.is_ascii_control() {
            out.push_str(&format!("|{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes the text between a value's quotes: `|XX` (hex, any case) becomes that byte; a `|`
/// not followed by two hex digits stays as it is.
pub fn decode_value(raw: &str) -> String {
    String::from_utf8_lossy(&decode_value_bytes(raw.as_bytes())).into_owned()
}

fn decode_value_bytes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'|' && i + 2 < raw.len() {
            if let (Some(hi), Some(lo)) = (
                crate::sys::hex::digit(raw[i + 1]),
                crate::sys::hex::digit(raw[i + 2]),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// Text for the `annotation` key: line breaks of any style become CR LF, which
/// `encode_value` then writes as `|0D|0A` as VMware does.
pub fn annotation_text(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n")
}

/// What a clone needs in its VMX before its first power-on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSettings<'a> {
    pub display_name: &'a str,
    pub cpus: u32,
    /// Rounded up to a multiple of 4, as VMware requires.
    pub memory_mb: u32,
    /// `bridged`, `nat` or `hostonly`.
    pub network_type: &'a str,
}

/// VMware refuses memory sizes that are not a multiple of 4 MB.
pub fn round_memory_mb(memory_mb: u32) -> u32 {
    memory_mb.saturating_add(3) / 4 * 4
}

/// Applies `s` to a freshly cloned VMX: size, name, exactly one NIC, and the answers that let
/// it boot unattended.
pub fn configure_clone(vmx: &mut Vmx, s: &CloneSettings<'_>) -> Result<(), VmxError> {
    if crate::vm::NetworkType::parse(s.network_type).is_none() {
        return Err(VmxError::InvalidNetworkType {
            value: s.network_type.to_string(),
        });
    }
    vmx.set("numvcpus", &s.cpus.to_string())?;
    vmx.set("memsize", &round_memory_mb(s.memory_mb).to_string())?;
    vmx.set("displayName", s.display_name)?;

    vmx.remove_where(is_other_nic_key);
    vmx.set("ethernet0.present", "TRUE")?;
    vmx.set("ethernet0.connectionType", s.network_type)?;
    // Only `custom` reads a vnet; a leftover one from the gold would only mislead.
    vmx.remove("ethernet0.vnet");
    // Clones of one gold would otherwise share its MAC address; with these gone and the
    // address type `generated`, VMware gives each clone its own at power-on.
    vmx.set("ethernet0.addressType", "generated")?;
    vmx.remove("ethernet0.generatedAddress");
    vmx.remove("ethernet0.generatedAddressOffset");
    vmx.remove("ethernet0.address");
    if vmx.get("ethernet0.virtualDev").is_none() {
        vmx.set("ethernet0.virtualDev", "e1000e")?;
    }

    // A headless VM cannot show VMware's dialogs; answering them keeps it from hanging.
    vmx.set("msg.autoAnswer", "TRUE")?;
    // Answers the "moved or copied?" question with "copied": a fresh UUID per clone.
    vmx.set("uuid.action", "create")?;
    Ok(())
}

/// `ethernetN.*` with N other than 0 (`key` is lowercase).
fn is_other_nic_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("ethernet") else {
        return false;
    };
    let digits_end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    digits_end > 0 && rest[digits_end..].starts_with('.') && &rest[..digits_end] != "0"
}

/// The image the original Go server recorded in the VMX `annotation` (standard base64 of a
/// JSON object, with or without `=` padding). Line breaks in it (`|0A`, `|0D|0A` once
/// decoded, as Fusion writes them when the notes are edited) are not base64 and are
/// skipped. `None` when there is no annotation or it is not such a record.
pub fn decode_annotation_image(vmx: &Vmx) -> Option<serde_json::Value> {
    let annotation = vmx.get("annotation")?;
    let compact: String = annotation
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let json = base64_decode(&compact)?;
    match serde_json::from_slice(&json).ok()? {
        value @ serde_json::Value::Object(_) => Some(value),
        _ => None,
    }
}

/// The VMX (and `vmrun writeVariable guestVar`) namespace the guest reads.
pub const GUESTINFO_PREFIX: &str = "guestinfo.";

/// Writes `guestinfo.<key> = "<value>"` for each: VMware hands these to the guest from
/// the VMX at power-on, so this must happen before `vmrun start`.
pub fn set_guestinfo(vmx: &mut Vmx, guestinfo: &GuestInfo) -> Result<(), VmxError> {
    for (key, value) in guestinfo.iter() {
        vmx.set(&format!("{GUESTINFO_PREFIX}{key}"), value)?;
    }
    Ok(())
}

/// Records `image` in the `annotation` the way the original Go server did, so a VM stays
/// readable by either server.
pub fn set_annotation_image(vmx: &mut Vmx, image: &serde_json::Value) -> Result<(), VmxError> {
    vmx.set("annotation", &base64_encode(image.to_string().as_bytes()))
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Go's `base64.StdEncoding`).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64; padding is optional, anything outside the alphabet is an error.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    if text.len() != body.len() && !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in body.bytes() {
        let v = BASE64_ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xFF) as u8);
        }
    }
    // Leftover bits must be zero, or two encodings would decode to the same bytes.
    if acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guestinfo_pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn guestinfo_is_written_quoted() {
        let pem = "-----BEGIN KEY-----\nab\"c|d\n-----END KEY-----\n";
        let info = GuestInfo::new(guestinfo_pairs(&[
            ("name", "host-darwin-amd64-13"),
            ("key-host-darwin-amd64-13", pem),
        ]))
        .unwrap();
        assert_eq!(info.keys(), ["key-host-darwin-amd64-13", "name"]);
        let mut vmx = Vmx::parse(b".encoding = \"UTF-8\"\nguestinfo.NAME = \"old\"\n").unwrap();
        set_guestinfo(&mut vmx, &info).unwrap();
        let text = String::from_utf8(vmx.to_bytes()).unwrap();
        assert!(
            text.contains("guestinfo.NAME = \"host-darwin-amd64-13\"\n"),
            "{text}"
        );
        assert!(text.contains(
            "guestinfo.key-host-darwin-amd64-13 = \"-----BEGIN KEY-----|0Aab|22c|7Cd|0A-----END KEY-----|0A\"\n"
        ), "{text}");
        assert_eq!(
            vmx.get("guestinfo.key-host-darwin-amd64-13").as_deref(),
            Some(pem)
        );
        // The parsed file is still one VMware opens.
        Vmx::parse(&vmx.to_bytes()).unwrap();
    }

    fn parse(text: &str) -> Vmx {
        Vmx::parse(text.as_bytes()).unwrap()
    }

    fn text(vmx: &Vmx) -> String {
        String::from_utf8(vmx.to_bytes()).unwrap()
    }

    #[test]
    fn good_files_parse_and_round_trip_byte_for_byte() {
        let cases: &[(&str, &[u8])] = &[
            ("empty", b""),
            ("one line no newline", b"a = \"b\""),
            (
                "shebang and encoding",
                b"#!/usr/bin/vmware\n.encoding = \"UTF-8\"\nconfig.version = \"8\"\n",
            ),
            ("crlf", b".encoding = \"UTF-8\"\r\ndisplayName = \"x\"\r\n"),
            ("mixed endings", b"a = \"1\"\r\nb = \"2\"\nc = \"3\""),
            (
                "comments and blanks",
                b"# made by hand\n\n   \n\t# indented\nkey = \"v\"\n",
            ),
            ("odd spacing", b"  key=\"v\"   \nother   =   \"w\"\t\n"),
            ("unquoted packer value", b"sata0:0.virtualSSD = 1\n"),
            (
                "latin-1 bytes",
                b".encoding = \"windows-1252\"\nannotation = \"caf\xe9\"\n",
            ),
            ("non-utf8 comment", b"# \xff\xfe\nk = \"v\"\n"),
            ("escaped value", b"annotation = \"a|22b|7Cc|0D|0Ad\"\n"),
            ("equals in value", b"k = \"a=b\"\n"),
            ("hash in value", b"k = \"a # b\"\n"),
            ("empty value", b"k = \"\"\n"),
            (
                "lowercase keys as the Go server wrote",
                b"displayname = \"x\"\nmemsize = \"1024\"\n",
            ),
        ];
        for (name, bytes) in cases {
            let vmx = Vmx::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&vmx.to_bytes(), bytes, "{name}");
        }
    }

    #[test]
    fn bad_files_are_rejected_with_the_line_number() {
        let cases: &[(&str, &[u8], &str, Option<usize>)] = &[
            (
                "bom",
                b"\xEF\xBB\xBF.encoding = \"UTF-8\"\n",
                "vmx-bom",
                Some(1),
            ),
            (
                "no equals",
                b"a = \"1\"\njust words\n",
                "vmx-malformed-line",
                Some(2),
            ),
            ("unterminated", b"a = \"1\n", "vmx-malformed-line", Some(1)),
            (
                "stray closing quote",
                b"a = 1\"\n",
                "vmx-malformed-line",
                Some(1),
            ),
            (
                "text after quote",
                b"a = \"1\" x\n",
                "vmx-malformed-line",
                Some(1),
            ),
            (
                "two quoted values",
                b"a = \"1\" \"2\"\n",
                "vmx-malformed-line",
                Some(1),
            ),
            ("empty key", b"= \"1\"\n", "vmx-malformed-line", Some(1)),
            (
                "key with space",
                b"a b = \"1\"\n",
                "vmx-malformed-line",
                Some(1),
            ),
            ("no value", b"a =\n", "vmx-malformed-line", Some(1)),
            (
                "unquoted with space",
                b"a = b c\n",
                "vmx-malformed-line",
                Some(1),
            ),
            (
                "duplicate",
                b"a = \"1\"\nb = \"2\"\na = \"3\"\n",
                "vmx-duplicate-key",
                Some(3),
            ),
            (
                "case duplicate",
                b"msg.autoAnswer = \"TRUE\"\nmsg.autoanswer = \"TRUE\"\n",
                "vmx-duplicate-key",
                Some(2),
            ),
        ];
        for (name, bytes, code, line) in cases {
            let err = Vmx::parse(bytes).expect_err(name);
            assert_eq!(err.code(), *code, "{name}: {err}");
            if let Some(line) = line {
                assert!(
                    err.to_string().starts_with(&format!("line {line}:")),
                    "{name}: {err}"
                );
            }
        }
    }

    #[test]
    fn duplicate_error_names_both_lines() {
        let err = Vmx::parse(b"a = \"1\"\nA = \"2\"\n").unwrap_err();
        assert_eq!(
            err,
            VmxError::DuplicateKey {
                key: "A".into(),
                first_line: 1,
                line: 2
            }
        );
        assert!(err.to_string().contains("line 1"));
    }

    #[test]
    fn get_ignores_case_and_decodes() {
        let vmx = parse("DisplayName = \"a|22b|7Cc|0D|0Ad\"\nsata0:0.virtualSSD = 1\n");
        assert_eq!(vmx.get("displayname").as_deref(), Some("a\"b|c\r\nd"));
        assert_eq!(vmx.get("DISPLAYNAME").as_deref(), Some("a\"b|c\r\nd"));
        assert_eq!(vmx.get("SATA0:0.VIRTUALSSD").as_deref(), Some("1"));
        assert_eq!(vmx.get("missing"), None);
    }

    #[test]
    fn set_replaces_only_the_value_and_keeps_the_key_spelling() {
        let mut vmx = parse("# top\nMemSize  =  \"512\"  \r\nnumvcpus = \"1\"\r\n");
        vmx.set("memsize", "2048").unwrap();
        assert_eq!(
            text(&vmx),
            "# top\nMemSize  =  \"2048\"  \r\nnumvcpus = \"1\"\r\n"
        );
        assert_eq!(vmx.get("MEMSIZE").as_deref(), Some("2048"));
        // Setting twice keeps the value range right.
        vmx.set("MEMSIZE", "4").unwrap();
        assert_eq!(
            text(&vmx),
            "# top\nMemSize  =  \"4\"  \r\nnumvcpus = \"1\"\r\n"
        );
    }

    #[test]
    fn set_quotes_an_unquoted_value() {
        let mut vmx = parse("sata0:0.virtualSSD = 1\nx = \"y\"\n");
        vmx.set("sata0:0.virtualssd", "0").unwrap();
        assert_eq!(text(&vmx), "sata0:0.virtualSSD = \"0\"\nx = \"y\"\n");
    }

    #[test]
    fn set_appends_with_the_files_line_ending() {
        let mut vmx = parse("a = \"1\"\r\nb = \"2\"");
        vmx.set("c", "3").unwrap();
        vmx.set("d", "say \"hi\"").unwrap();
        assert_eq!(
            text(&vmx),
            "a = \"1\"\r\nb = \"2\"\r\nc = \"3\"\r\nd = \"say |22hi|22\"\r\n"
        );
        let mut empty = parse("");
        empty.set("a", "1").unwrap();
        assert_eq!(text(&empty), "a = \"1\"\n");
        // An edited file parses again to the same values.
        let again = Vmx::parse(&vmx.to_bytes()).unwrap();
        assert_eq!(again.get("d").as_deref(), Some("say \"hi\""));
    }

    #[test]
    fn set_rejects_keys_vmware_could_not_read() {
        let mut vmx = parse("");
        for key in ["", "a b", "a=b", "a\"", "a\n"] {
            assert_eq!(
                vmx.set(key, "v").unwrap_err().code(),
                "vmx-invalid-key",
                "{key:?}"
            );
        }
        assert!(vmx.to_bytes().is_empty());
    }

    #[test]
    fn edits_keep_other_lines_bytes_and_order() {
        let original: &[u8] =
            b"#!/usr/bin/vmware\n.encoding = \"windows-1252\"\n# caf\xe9\nannotation = \"\xe9t\xe9\"\nmemsize = \"512\"\nguestOS = \"darwin\"\n";
        let mut vmx = Vmx::parse(original).unwrap();
        vmx.set("memsize", "1024").unwrap();
        assert!(vmx.remove("GUESTOS"));
        assert!(!vmx.remove("guestOS"));
        let expected: &[u8] =
            b"#!/usr/bin/vmware\n.encoding = \"windows-1252\"\n# caf\xe9\nannotation = \"\xe9t\xe9\"\nmemsize = \"1024\"\n";
        assert_eq!(vmx.to_bytes(), expected);
    }

    #[test]
    fn remove_where_sees_lowercase_keys() {
        let mut vmx = parse("Ethernet1.Present = \"TRUE\"\nethernet0.present = \"TRUE\"\n# c\n");
        assert_eq!(vmx.remove_where(|k| k.starts_with("ethernet1.")), 1);
        assert_eq!(text(&vmx), "ethernet0.present = \"TRUE\"\n# c\n");
    }

    #[test]
    fn value_encoding_round_trips() {
        let cases = [
            ("plain", "plain"),
            ("a\"b", "a|22b"),
            ("a|b", "a|7Cb"),
            ("l1\r\nl2", "l1|0D|0Al2"),
            ("tab\there", "tab|09here"),
            ("été", "été"),
            ("|7C", "|7C7C"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode_value(plain), encoded);
            assert_eq!(decode_value(encoded), plain);
        }
        // A bar that is not an escape stays; lowercase hex decodes too.
        assert_eq!(decode_value("a|zz|"), "a|zz|");
        assert_eq!(decode_value("a|0d|0a"), "a\r\n");
        assert_eq!(decode_value("|4"), "|4");
    }

    #[test]
    fn annotation_line_breaks_become_crlf() {
        assert_eq!(
            encode_value(&annotation_text("a\nb\r\nc\rd")),
            "a|0D|0Ab|0D|0Ac|0D|0Ad"
        );
    }

    const GOLD: &str = "#!/usr/bin/vmware\n\
.encoding = \"UTF-8\"\n\
displayName = \"gold\"\n\
memsize = \"2048\"\n\
numvcpus = \"2\"\n\
ethernet0.present = \"TRUE\"\n\
ethernet0.connectionType = \"custom\"\n\
ethernet0.vnet = \"vmnet8\"\n\
ethernet0.virtualDev = \"vmxnet3\"\n\
Ethernet0.AddressType = \"static\"\n\
ethernet0.address = \"00:50:56:00:00:01\"\n\
ethernet0.generatedAddress = \"00:0c:29:aa:bb:cc\"\n\
ethernet0.generatedAddressOffset = \"0\"\n\
ethernet1.present = \"TRUE\"\n\
ethernet1.connectionType = \"bridged\"\n\
ETHERNET12.present = \"TRUE\"\n\
ethernet.note = \"kept\"\n\
msg.autoanswer = \"FALSE\"\n\
guestOS = \"darwin19-64\"\n";

    #[test]
    fn configure_clone_sets_size_name_and_a_single_fresh_nic() {
        let mut vmx = parse(GOLD);
        let settings = CloneSettings {
            display_name: "2f0c-id",
            cpus: 4,
            memory_mb: 1025,
            network_type: "nat",
        };
        configure_clone(&mut vmx, &settings).unwrap();
        let expected = "#!/usr/bin/vmware\n\
.encoding = \"UTF-8\"\n\
displayName = \"2f0c-id\"\n\
memsize = \"1028\"\n\
numvcpus = \"4\"\n\
ethernet0.present = \"TRUE\"\n\
ethernet0.connectionType = \"nat\"\n\
ethernet0.virtualDev = \"vmxnet3\"\n\
Ethernet0.AddressType = \"generated\"\n\
ethernet.note = \"kept\"\n\
msg.autoanswer = \"TRUE\"\n\
guestOS = \"darwin19-64\"\n\
uuid.action = \"create\"\n";
        assert_eq!(text(&vmx), expected);
        // Applying the same settings again changes nothing.
        configure_clone(&mut vmx, &settings).unwrap();
        assert_eq!(text(&vmx), expected);
    }

    #[test]
    fn configure_clone_adds_a_nic_when_the_gold_has_none() {
        let mut vmx = parse(".encoding = \"UTF-8\"\n");
        configure_clone(
            &mut vmx,
            &CloneSettings {
                display_name: "vm \"1\"",
                cpus: 1,
                memory_mb: 512,
                network_type: "hostonly",
            },
        )
        .unwrap();
        assert_eq!(vmx.get("displayName").as_deref(), Some("vm \"1\""));
        assert_eq!(vmx.get("ethernet0.present").as_deref(), Some("TRUE"));
        assert_eq!(
            vmx.get("ethernet0.connectionType").as_deref(),
            Some("hostonly")
        );
        assert_eq!(vmx.get("ethernet0.virtualDev").as_deref(), Some("e1000e"));
        assert_eq!(
            vmx.get("ethernet0.addressType").as_deref(),
            Some("generated")
        );
        assert_eq!(vmx.get("msg.autoAnswer").as_deref(), Some("TRUE"));
        assert_eq!(vmx.get("uuid.action").as_deref(), Some("create"));
        Vmx::parse(&vmx.to_bytes()).unwrap();
    }

    #[test]
    fn configure_clone_rejects_unknown_network_types_without_editing() {
        let mut vmx = parse(GOLD);
        for bad in ["custom", "NAT", ""] {
            let err = configure_clone(
                &mut vmx,
                &CloneSettings {
                    display_name: "x",
                    cpus: 1,
                    memory_mb: 512,
                    network_type: bad,
                },
            )
            .unwrap_err();
            assert_eq!(err.code(), "vmx-invalid-network-type");
        }
        assert_eq!(text(&vmx), GOLD);
    }

    #[test]
    fn other_nic_keys() {
        for (key, other) in [
            ("ethernet1.present", true),
            ("ethernet12.virtualdev", true),
            ("ethernet0.present", false),
            ("ethernet.note", false),
            ("ethernet1", false),
            ("xethernet1.present", false),
        ] {
            assert_eq!(is_other_nic_key(key), other, "{key}");
        }
    }

    #[test]
    fn memory_rounds_up_to_a_multiple_of_four() {
        for (given, want) in [
            (0, 0),
            (1, 4),
            (4, 4),
            (1023, 1024),
            (1024, 1024),
            (u32::MAX, 0xFFFF_FFFC),
        ] {
            assert_eq!(round_memory_mb(given), want, "{given}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(
                base64_decode(encoded).as_deref(),
                Some(plain.as_bytes()),
                "{encoded}"
            );
            // Go's RawStdEncoding leaves the padding off.
            let raw = encoded.trim_end_matches('=');
            assert_eq!(
                base64_decode(raw).as_deref(),
                Some(plain.as_bytes()),
                "{raw}"
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)), Some(all));
    }

    #[test]
    fn base64_rejects_what_is_not_base64() {
        for bad in [
            "Zg=",
            "Z",
            "Zm9v!",
            "Zm9v YmFy",
            "Zh==",
            "Zm9=v",
            "Zg===",
            "=",
            "-_8=",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn annotation_image_written_by_the_go_server_is_read_back() {
        // What Go's base64.StdEncoding.EncodeToString(json.Marshal(image)) produced.
        let image = r#"{"url":"http://example.test/box.tar.gz","checksum":"5cf00d380e28d02f30efaceafef7c7c8bdedae33","checksum_type":"sha1"}"#;
        let line = format!("annotation = \"{}\"\n", base64_encode(image.as_bytes()));
        let vmx = parse(&format!("displayname = \"x\"\n{line}"));
        let value = decode_annotation_image(&vmx).unwrap();
        assert_eq!(value["checksum_type"], "sha1");
        assert_eq!(value["url"], "http://example.test/box.tar.gz");

        let mut ours = parse("");
        set_annotation_image(&mut ours, &value).unwrap();
        assert_eq!(decode_annotation_image(&ours), Some(value));
    }

    #[test]
    fn annotation_image_without_padding_or_with_line_breaks_is_read() {
        let image = r#"{"url":"http://h/i.tar","checksum":"ab","checksum_type":"md5"}"#;
        let padded = base64_encode(image.as_bytes());
        assert!(padded.ends_with('='), "{padded}");
        let bare = padded.trim_end_matches('=');
        let (head, tail) = padded.split_at(20);
        for value in [
            bare.to_string(),
            format!("{head}|0A{tail}"),
            format!("{head}|0D|0A{tail}|0A"),
        ] {
            let vmx = parse(&format!("annotation = \"{value}\"\n"));
            let decoded = decode_annotation_image(&vmx).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(decoded["checksum_type"], "md5", "{value}");
        }
    }

    #[test]
    fn annotation_that_is_not_an_image_is_none() {
        for vmx_text in [
            "guestOS = \"x\"\n",
            "annotation = \"Built by hand|0D|0Aon Monday\"\n",
            &format!("annotation = \"{}\"\n", base64_encode(b"[1,2]")),
            &format!("annotation = \"{}\"\n", base64_encode(b"{not json")),
        ] {
            assert_eq!(
                decode_annotation_image(&parse(vmx_text)),
                None,
                "{vmx_text}"
            );
        }
    }
}
