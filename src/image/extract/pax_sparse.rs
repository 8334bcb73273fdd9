//! Sparse files in pax archives (`tar --sparse --format=pax`, libarchive's `-S`).
//!
//! The tar crate understands only the old GNU sparse headers (type `S`). GNU's pax formats
//! describe the map in `GNU.sparse.*` keys (0.0, 0.1) or at the start of the data (1.0);
//! unpacked naively, a 1.0 file would come out under `GNUSparseFile.<pid>/` with its map
//! glued to the front, and a 0.x file would lose its holes and its size. Neither is allowed
//! to happen silently.

use std::io::{self, Read};

use tar::PaxExtension;

/// One stretch of real data in a sparse file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) offset: u64,
    pub(super) len: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Map {
    Known(Vec<Segment>),
    /// Format 1.0: the map is the first blocks of the entry's data.
    InData,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct PaxSparse {
    /// The file's real name when the header carries a placeholder.
    pub(super) name: Option<Vec<u8>>,
    pub(super) real_size: u64,
    pub(super) map: Map,
}

#[derive(Debug)]
pub(super) enum SparseError {
    Corrupt(String),
    Unsupported(String),
    Read(io::Error),
}

/// More segments than this is a hostile map, not a disk image (1 Mi segments is 16 MiB).
const MAX_SEGMENTS: u64 = 1 << 20;
const BLOCK: usize = 512;

/// Reads the `GNU.sparse.*` keys of an entry's pax header; `Ok(None)` when there are none.
pub(super) fn from_pax<'a>(
    extensions: impl Iterator<Item = io::Result<PaxExtension<'a>>>,
) -> Result<Option<PaxSparse>, SparseError> {
    let mut keys = Keys::default();
    for extension in extensions {
        // Malformed records are the tar crate's to judge; it already parsed this header.
        let Ok(extension) = extension else { continue };
        let Ok(key) = extension.key() else { continue };
        let Some(key) = key.strip_prefix("GNU.sparse.") else {
            continue;
        };
        keys.seen = true;
        let value = extension.value_bytes();
        match key {
            "major" => keys.major = Some(number(value, "major")?),
            "minor" => keys.minor = Some(number(value, "minor")?),
            "name" => keys.name = Some(value.to_vec()),
            "realsize" => keys.realsize = Some(number(value, "realsize")?),
            "size" => keys.size = Some(number(value, "size")?),
            "map" => keys.map = Some(value.to_vec()),
            "offset" => keys.offsets.push(number(value, "offset")?),
            "numbytes" => keys.numbytes.push(number(value, "numbytes")?),
            // numblocks is implied by the map itself.
            _ => {}
        }
    }
    if !keys.seen {
        return Ok(None);
    }
    keys.into_sparse().map(Some)
}

#[derive(Default)]
struct Keys {
    seen: bool,
    major: Option<u64>,
    minor: Option<u64>,
    name: Option<Vec<u8>>,
    realsize: Option<u64>,
    size: Option<u64>,
    map: Option<Vec<u8>>,
    offsets: Vec<u64>,
    numbytes: Vec<u64>,
}

impl Keys {
    fn into_sparse(self) -> Result<PaxSparse, SparseError> {
        let missing = |key: &str| SparseError::Corrupt(format!("GNU sparse header lacks {key}"));
        match (self.major, self.minor) {
            (Some(1), Some(0)) => Ok(PaxSparse {
                name: self.name,
                real_size: self
                    .realsize
                    .ok_or_else(|| missing("GNU.sparse.realsize"))?,
                map: Map::InData,
            }),
            (Some(major), minor) if major != 0 || minor.is_some_and(|m| m > 1) => {
                Err(SparseError::Unsupported(format!(
                    "GNU sparse format {major}.{}",
                    minor.map_or_else(|| "?".to_owned(), |m| m.to_string())
                )))
            }
            _ => {
                let real_size = self.size.ok_or_else(|| missing("GNU.sparse.size"))?;
                let segments = if let Some(map) = &self.map {
                    map_from_text(map)?
                } else if self.offsets.len() == self.numbytes.len() && !self.offsets.is_empty() {
                    self.offsets
                        .iter()
                        .zip(&self.numbytes)
                        .map(|(&offset, &len)| Segment { offset, len })
                        .collect()
                } else {
                    return Err(SparseError::Corrupt(
                        "GNU sparse 0.0 header with unpaired offsets and sizes".to_owned(),
                    ));
                };
                Ok(PaxSparse {
                    name: self.name,
                    real_size,
                    map: Map::Known(segments),
                })
            }
        }
    }
}

fn number(value: &[u8], what: &str) -> Result<u64, SparseError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            SparseError::Corrupt(format!(
                "GNU sparse {what} is not a number: `{}`",
                String::from_utf8_lossy(value)
            ))
        })
}

/// Format 0.1: `offset,len,offset,len,...`.
fn map_from_text(text: &[u8]) -> Result<Vec<Segment>, SparseError> {
    let numbers = text
        .split(|&b| b == b',')
        .map(|n| number(n, "map entry"))
        .collect::<Result<Vec<u64>, _>>()?;
    if numbers.len() % 2 != 0 {
        return Err(SparseError::Corrupt(
            "GNU sparse map has an odd count of numbers".to_owned(),
        ));
    }
    if numbers.len() as u64 / 2 > MAX_SEGMENTS {
        return Err(SparseError::Corrupt(format!(
            "GNU sparse map has more than {MAX_SEGMENTS} segments"
        )));
    }
    Ok(numbers
        .chunks_exact(2)
        .map(|pair| Segment {
            offset: pair[0],
            len: pair[1],
        })
        .collect())
}

/// Format 1.0: decimal numbers, one per line (segment count, then offset and length of each),
/// padded to whole 512-byte blocks. Returns the map and the bytes it took.
pub(super) fn read_map_from_data(
    src: &mut dyn Read,
    entry_size: u64,
    block: &mut [u8],
) -> Result<(Vec<Segment>, u64), SparseError> {
    let block = &mut block[..BLOCK];
    let mut numbers: Vec<u64> = Vec::new();
    let mut wanted: Option<u64> = None;
    let mut current: Option<u64> = None;
    let mut consumed = 0u64;
    loop {
        if consumed + BLOCK as u64 > entry_size {
            return Err(SparseError::Corrupt(
                "GNU sparse map runs past the end of its entry".to_owned(),
            ));
        }
        src.read_exact(block).map_err(SparseError::Read)?;
        consumed += BLOCK as u64;
        for &b in block.iter() {
            match b {
                b'0'..=b'9' => {
                    let digit = u64::from(b - b'0');
                    current = current
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(digit))
                        .map(Some)
                        .ok_or_else(|| {
                            SparseError::Corrupt("GNU sparse map number overflows".to_owned())
                        })?;
                }
                b'\n' => {
                    let n = current.take().ok_or_else(|| {
                        SparseError::Corrupt("GNU sparse map has an empty line".to_owned())
                    })?;
                    if wanted.is_none() {
                        if n > MAX_SEGMENTS {
                            return Err(SparseError::Corrupt(format!(
                                "GNU sparse map has more than {MAX_SEGMENTS} segments"
                            )));
                        }
                        wanted = Some(n * 2);
                    } else {
                        numbers.push(n);
                    }
                    if wanted == Some(numbers.len() as u64) {
                        let segments = numbers
                            .chunks_exact(2)
                            .map(|pair| Segment {
                                offset: pair[0],
                                len: pair[1],
                            })
                            .collect();
                        return Ok((segments, consumed));
                    }
                }
                _ => {
                    return Err(SparseError::Corrupt(format!(
                        "GNU sparse map has an unexpected byte 0x{b:02x}"
                    )))
                }
            }
        }
    }
}

/// Segments must be in order, inside the file, and account for exactly the stored data.
pub(super) fn validate(
    segments: &[Segment],
    real_size: u64,
    data_len: u64,
) -> Result<(), SparseError> {
    let bad = |what: &str| Err(SparseError::Corrupt(format!("GNU sparse map {what}")));
    let mut pos = 0u64;
    let mut stored = 0u64;
    for segment in segments {
        if segment.offset < pos {
            return bad("has overlapping or unordered segments");
        }
        let Some(end) = segment.offset.checked_add(segment.len) else {
            return bad("has a segment past any file size");
        };
        if end > real_size {
            return bad("has a segment past the file's size");
        }
        pos = end;
        stored += segment.len;
    }
    if stored != data_len {
        return bad(&format!(
            "lists {stored} bytes of data but the entry stores {data_len}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in records {
            let body = format!(" {key}={value}\n");
            // The length prefix counts itself.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out
    }

    fn parse(records: &[(&str, &str)]) -> Result<Option<PaxSparse>, SparseError> {
        let data = pax(records);
        from_pax(tar::PaxExtensions::new(&data))
    }

    #[test]
    fn plain_pax_headers_are_not_sparse() {
        assert!(matches!(
            parse(&[("path", "vm/a.vmx"), ("mtime", "1.5")]),
            Ok(None)
        ));
    }

    #[test]
    fn format_1_0_takes_its_map_from_the_data() {
        let sparse = parse(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "vm/disk.vmdk"),
            ("GNU.sparse.realsize", "10485760"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(sparse.name.as_deref(), Some(&b"vm/disk.vmdk"[..]));
        assert_eq!(sparse.real_size, 10485760);
        assert_eq!(sparse.map, Map::InData);
    }

    #[test]
    fn format_0_1_map_key() {
        let sparse = parse(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.name", "f"),
            ("GNU.sparse.map", "10,5,100,0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            sparse.map,
            Map::Known(vec![
                Segment { offset: 10, len: 5 },
                Segment {
                    offset: 100,
                    len: 0
                }
            ])
        );
    }

    #[test]
    fn format_0_0_repeated_keys() {
        let sparse = parse(&[
            ("GNU.sparse.size", "100"),
            ("GNU.sparse.offset", "10"),
            ("GNU.sparse.numbytes", "5"),
            ("GNU.sparse.offset", "50"),
            ("GNU.sparse.numbytes", "7"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(sparse.name, None);
        assert_eq!(
            sparse.map,
            Map::Known(vec![
                Segment { offset: 10, len: 5 },
                Segment { offset: 50, len: 7 }
            ])
        );
    }

    #[test]
    fn unknown_versions_and_broken_keys_are_refused() {
        assert!(matches!(
            parse(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]),
            Err(SparseError::Unsupported(_))
        ));
        assert!(matches!(
            parse(&[("GNU.sparse.size", "x")]),
            Err(SparseError::Corrupt(_))
        ));
        assert!(matches!(
            parse(&[("GNU.sparse.size", "10"), ("GNU.sparse.offset", "1")]),
            Err(SparseError::Corrupt(_))
        ));
        assert!(matches!(
            parse(&[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]),
            Err(SparseError::Corrupt(_))
        ));
    }

    fn map_blocks(text: &str, total_blocks: usize) -> Vec<u8> {
        let mut data = text.as_bytes().to_vec();
        data.resize(total_blocks * BLOCK, 0);
        data
    }

    #[test]
    fn map_in_data_is_read_to_its_block_end() {
        let data = map_blocks("2\n4997120\n4096\n10485760\n0\n", 2);
        let mut src = Cursor::new(&data);
        let mut scratch = vec![0u8; 4096];
        let (segments, consumed) = read_map_from_data(&mut src, 4096, &mut scratch).unwrap();
        assert_eq!(consumed, 512);
        assert_eq!(src.position(), 512, "stops at the first data block");
        assert_eq!(
            segments,
            vec![
                Segment {
                    offset: 4997120,
                    len: 4096
                },
                Segment {
                    offset: 10485760,
                    len: 0
                }
            ]
        );
    }

    #[test]
    fn map_spanning_blocks() {
        let mut text = String::from("100\n");
        for i in 0..100 {
            text.push_str(&format!("{}\n1\n", i * 1000));
        }
        assert!(text.len() > BLOCK);
        let data = map_blocks(&text, 3);
        let mut scratch = vec![0u8; BLOCK];
        let (segments, consumed) = read_map_from_data(
            &mut Cursor::new(&data),
            data.len() as u64 + 100,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(segments.len(), 100);
        assert_eq!(consumed, (text.len().div_ceil(BLOCK) * BLOCK) as u64);
    }

    #[test]
    fn hostile_maps_are_refused() {
        let mut scratch = vec![0u8; BLOCK];
        let garbage = map_blocks("2\nabc\n", 1);
        assert!(matches!(
            read_map_from_data(&mut Cursor::new(&garbage), 512, &mut scratch),
            Err(SparseError::Corrupt(_))
        ));
        let endless = map_blocks("3\n1\n", 1);
        assert!(matches!(
            read_map_from_data(&mut Cursor::new(&endless), 512, &mut scratch),
            Err(SparseError::Corrupt(_))
        ));
        let huge = map_blocks("99999999999\n", 1);
        assert!(matches!(
            read_map_from_data(&mut Cursor::new(&huge), 512, &mut scratch),
            Err(SparseError::Corrupt(_))
        ));
        let cut = b"2\n1\n".to_vec();
        assert!(matches!(
            read_map_from_data(&mut Cursor::new(&cut), 512, &mut scratch),
            Err(SparseError::Read(_))
        ));
    }

    #[test]
    fn validation() {
        let seg = |offset, len| Segment { offset, len };
        assert!(validate(&[seg(0, 10), seg(20, 5), seg(100, 0)], 100, 15).is_ok());
        assert!(
            validate(&[seg(20, 5), seg(0, 10)], 100, 15).is_err(),
            "unordered"
        );
        assert!(
            validate(&[seg(0, 10), seg(5, 10)], 100, 20).is_err(),
            "overlap"
        );
        assert!(validate(&[seg(95, 10)], 100, 10).is_err(), "past the end");
        assert!(
            validate(&[seg(0, 10)], 100, 11).is_err(),
            "data unaccounted"
        );
        assert!(
            validate(&[seg(u64::MAX, 10)], u64::MAX, 10).is_err(),
            "overflow"
        );
    }
}
