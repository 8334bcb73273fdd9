//! VMX (and VMSD) files: `key = "value"` lines. Parsing is strict in the ways VMware is strict
//! (a BOM, a malformed line, keys equal but for case make the file unreadable); lines that are
//! not changed are written back byte for byte.

use crate::error::SimError;
use crate::paths::VmPath;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub struct Vmx {
    /// Raw lines without their `\n`, so that untouched lines keep their bytes and encoding.
    lines: Vec<Vec<u8>>,
    entries: Vec<Entry>,
}

struct Entry {
    line: usize,
    key: String,
    value: String,
}

/// The file would make VMware answer `Cannot read the virtual machine configuration file`.
#[derive(Debug)]
pub struct Corrupt;

pub fn load(vm: &VmPath) -> Result<Vmx, SimError> {
    let bytes = match std::fs::read(&vm.abs) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SimError::NotFound(vm.given.clone()))
        }
        Err(_) => return Err(SimError::Corrupt(vm.given.clone())),
    };
    parse(&bytes).map_err(|Corrupt| SimError::Corrupt(vm.given.clone()))
}

pub fn parse(bytes: &[u8]) -> Result<Vmx, Corrupt> {
    if bytes.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(Corrupt);
    }
    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in lines.iter().enumerate() {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let (key, value) = parse_line(text).ok_or(Corrupt)?;
        if !seen.insert(key.to_ascii_lowercase()) {
            return Err(Corrupt);
        }
        entries.push(Entry {
            line: index,
            key,
            value,
        });
    }
    Ok(Vmx { lines, entries })
}

fn parse_line(text: &str) -> Option<(String, String)> {
    let (key, value) = text.split_once('=')?;
    let key = key.trim();
    let value = value.trim();
    let key_ok = !key.is_empty() && !key.contains(|c: char| c.is_whitespace() || c == '"');
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if !key_ok || inner.contains('"') {
        return None;
    }
    Some((key.to_string(), inner.to_string()))
}

impl Vmx {
    pub fn new() -> Vmx {
        Vmx {
            lines: Vec::new(),
            entries: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key.eq_ignore_ascii_case(key))
            .map(|e| e.value.as_str())
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
    }

    /// Replaces the existing line of `key` whatever its case, else appends one.
    pub fn set(&mut self, key: &str, value: &str) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.key.eq_ignore_ascii_case(key))
        {
            self.lines[entry.line] = format!("{} = \"{value}\"", entry.key).into_bytes();
            entry.value = value.to_string();
            return;
        }
        self.entries.push(Entry {
            line: self.lines.len(),
            key: key.to_string(),
            value: value.to_string(),
        });
        self.lines.push(format!("{key} = \"{value}\"").into_bytes());
    }

    /// Disk keys such as `scsi0:0.fileName` whose value is a `.vmdk`, in file order.
    pub fn disks(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|e| {
                e.key.to_ascii_lowercase().ends_with(".filename")
                    && e.value.to_ascii_lowercase().ends_with(".vmdk")
            })
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in &self.lines {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out
    }
}

/// A file named in a VMX, relative to the VMX's folder unless absolute.
pub fn resolve(vmx_dir: &Path, value: &str) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        vmx_dir.join(path)
    }
}

/// VMware's escape for characters that cannot appear inside a quoted value.
pub fn escape_value(value: &str) -> String {
    value.replace('|', "|7C").replace('"', "|22")
}
