//! tar, tar.gz and tar.bz2 unpacked straight from the download stream, in one pass.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use bzip2::bufread::MultiBzDecoder;
use flate2::bufread::MultiGzDecoder;
use tar::EntryType;

use super::copy::CopyError;
use super::pax_sparse::{self, Map, PaxSparse, SparseError};
use super::tree::{NewFile, Tree};
use super::{ExtractError, Limits, Unpacked};
use crate::image::archive::ArchiveFormat;

/// Compressed bytes read from the source at a time: large reads keep the decompressor busy
/// and the source's syscalls few.
const INPUT_BUF_LEN: usize = 256 * 1024;
/// Decompressed bytes buffered for the tar reader's 512-byte header reads; file data is read
/// in larger pieces that go around this buffer.
const DECODED_BUF_LEN: usize = 256 * 1024;
/// The tar crate reads GNU long names and pax headers whole into memory; more than this in
/// front of one entry is an attack on memory, not a name.
const MAX_METADATA_LEN: u64 = 16 * 1024 * 1024;

/// What the readers wrapped around the stream learn, for error reporting after the fact.
#[derive(Default)]
struct StreamState {
    /// The caller's reader failed (not the archive): its error, kept intact.
    source_error: Cell<Option<io::Error>>,
    /// The decoded stream ended. A tar archive ends with zero blocks, which the tar reader
    /// stops at, so reaching the end of the stream means the archive was cut short.
    eof: Cell<bool>,
    /// Set while entry data is copied, so that everything else counts as metadata.
    in_data: Cell<bool>,
    metadata: Cell<u64>,
}

/// The caller's reader, with its errors set aside so that they are reported as its own rather
/// than as a corrupt archive.
struct SourceTap<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for SourceTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            let kind = e.kind();
            self.state.source_error.set(Some(e));
            io::Error::new(kind, "reading the archive's source failed")
        })
    }
}

/// The decompressed tar stream as the tar reader sees it.
struct Decoded<D> {
    inner: D,
    state: Rc<StreamState>,
    cancel: Option<crate::sys::cancel::Cancel>,
}

impl<D: Read> Read for Decoded<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(io::Error::other(super::tree::CANCELLED));
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.state.eof.set(true);
        }
        if !self.state.in_data.get() {
            let metadata = self.state.metadata.get() + n as u64;
            self.state.metadata.set(metadata);
            if metadata > MAX_METADATA_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "more than {} MiB of headers (long names or pax records) for one entry",
                        MAX_METADATA_LEN >> 20
                    ),
                ));
            }
        }
        Ok(n)
    }
}

pub(super) fn unpack<R: Read>(
    format: ArchiveFormat,
    reader: R,
    dest: &std::path::Path,
    limits: &Limits,
) -> Result<Unpacked, ExtractError> {
    let tree = Tree::new(dest, limits)?;
    let state = Rc::new(StreamState::default());
    let source = SourceTap {
        inner: reader,
        state: Rc::clone(&state),
    };
    let input = BufReader::with_capacity(INPUT_BUF_LEN, source);
    let run = Run {
        format,
        tree,
        state,
        cancel: limits.cancel.clone(),
    };
    match format {
        ArchiveFormat::Tar => run.all_entries(input),
        // Multi-member decoders: pigz/pbzip2 and concatenated downloads produce several
        // members, and a single-member decoder would stop silently after the first.
        ArchiveFormat::TarGz => run.all_entries(BufReader::with_capacity(
            DECODED_BUF_LEN,
            MultiGzDecoder::new(input),
        )),
        ArchiveFormat::TarBz2 => run.all_entries(BufReader::with_capacity(
            DECODED_BUF_LEN,
            MultiBzDecoder::new(input),
        )),
        ArchiveFormat::Zip => Err(ExtractError::Corrupt {
            format,
            entry: None,
            detail: "a zip archive keeps its index at the end, so it is unpacked from a file \
                     (unpack_zip), not from a stream"
                .to_owned(),
        }),
    }
}

struct Run {
    format: ArchiveFormat,
    tree: Tree,
    state: Rc<StreamState>,
    cancel: Option<crate::sys::cancel::Cancel>,
}

impl Run {
    fn all_entries<D: Read>(mut self, decoded: D) -> Result<Unpacked, ExtractError> {
        let mut archive = tar::Archive::new(Decoded {
            inner: decoded,
            state: Rc::clone(&self.state),
            cancel: self.cancel.clone(),
        });
        let entries = archive.entries().map_err(|e| self.read_error(e, None))?;
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                let e = match &last {
                    None => annotate(e, "at the archive's first header"),
                    Some(name) => annotate(e, &format!("in the header after entry `{name}`")),
                };
                self.read_error(e, None)
            })?;
            self.state.metadata.set(0);
            last = Some(self.entry(&mut entry)?);
        }
        if self.state.eof.get() {
            return Err(ExtractError::Corrupt {
                format: self.format,
                entry: None,
                detail: match last {
                    None => "the stream is empty".to_owned(),
                    Some(name) => format!(
                        "the archive ends after entry `{name}` without its end-of-archive \
                         marker, so it was cut short"
                    ),
                },
            });
        }
        self.tree.finish()
    }

    /// Unpacks one entry; returns its name for later error messages.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<String, ExtractError> {
        let kind = entry.header().entry_type();
        let name_bytes = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        // Archive-wide metadata and volume labels describe no file.
        if matches!(kind.as_byte(), b'g' | b'V') {
            return Ok(name);
        }
        let mode = entry
            .header()
            .mode()
            .map_err(|e| self.corrupt(&name, e.to_string()))?;

        if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            // Pre-POSIX archives mark folders only by a trailing slash.
            if !(kind.is_file() && name_bytes.ends_with(b"/")) {
                return self.file(entry, name_bytes, name, mode);
            }
        }
        self.tree.note_entry(&name);
        let rel = self.tree.path_for(&name_bytes, &name, false)?;
        if kind.is_file() || kind.is_dir() {
            self.tree.dir(rel, &name, mode)?;
        } else if kind.is_symlink() {
            let target = self.link_target(entry, &name)?;
            self.tree.symlink(rel, &name, &target)?;
        } else if kind.is_hard_link() {
            let target = self.link_target(entry, &name)?;
            let rel = rel.ok_or_else(|| replaces_folder(&name))?;
            self.tree.hard_link(&rel, &name, &target)?;
        } else {
            return Err(refuse_kind(kind, &name));
        }
        Ok(name)
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Vec<u8>, ExtractError> {
        entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .ok_or_else(|| self.corrupt(name, "a link entry without a target".to_owned()))
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name_bytes: Vec<u8>,
        name: String,
        mode: u32,
    ) -> Result<String, ExtractError> {
        let sparse = match entry.pax_extensions() {
            Ok(Some(extensions)) => {
                pax_sparse::from_pax(extensions).map_err(|e| self.sparse_error(e, &name))?
            }
            Ok(None) => None,
            Err(e) => return Err(self.corrupt(&name, e.to_string())),
        };
        // A pax sparse file's header carries a placeholder name; the real one is in the map.
        let (name_bytes, name) = match sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(real) => {
                let name = String::from_utf8_lossy(&real).into_owned();
                (real, name)
            }
            None => (name_bytes, name),
        };
        self.tree.note_entry(&name);
        let rel = self
            .tree
            .path_for(&name_bytes, &name, false)?
            .ok_or_else(|| replaces_folder(&name))?;
        match sparse {
            None => {
                let size = entry.size();
                self.tree.check_declared_size(size, &name)?;
                let new = self.tree.create_file(&rel, &name, mode)?;
                let copied = self.copy(entry, &new, 0, size, &name)?;
                if copied < size {
                    return Err(self.truncated(&name, copied, size));
                }
            }
            Some(sparse) => self.pax_sparse_file(entry, &rel, &name, mode, sparse)?,
        }
        Ok(name)
    }

    fn pax_sparse_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &std::path::Path,
        name: &str,
        mode: u32,
        sparse: PaxSparse,
    ) -> Result<(), ExtractError> {
        let stored = entry.size();
        self.tree.check_declared_size(sparse.real_size, name)?;
        let (segments, map_len) = match sparse.map {
            Map::Known(segments) => (segments, 0),
            Map::InData => {
                self.state.in_data.set(true);
                let read = pax_sparse::read_map_from_data(entry, stored, self.tree.scratch());
                self.state.in_data.set(false);
                read.map_err(|e| self.sparse_error(e, name))?
            }
        };
        pax_sparse::validate(&segments, sparse.real_size, stored - map_len)
            .map_err(|e| self.sparse_error(e, name))?;
        let new = self.tree.create_file(rel, name, mode)?;
        let mut pos = 0;
        for segment in segments {
            self.tree.charge_hole(segment.offset - pos, name)?;
            let copied = self.copy(entry, &new, segment.offset, segment.len, name)?;
            if copied < segment.len {
                return Err(self.truncated(name, copied, segment.len));
            }
            pos = segment.offset + segment.len;
        }
        self.tree.charge_hole(sparse.real_size - pos, name)?;
        set_len(&new, sparse.real_size, self.tree.dest(), name)
    }

    /// Copies entry data into a new file, making its tail hole if the data ends in zeros.
    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        new: &NewFile,
        offset: u64,
        len: u64,
        name: &str,
    ) -> Result<u64, ExtractError> {
        self.state.in_data.set(true);
        let copied = self.tree.copy_into(entry, &new.file, offset, len);
        self.state.in_data.set(false);
        let copied = copied.map_err(|e| match e {
            CopyError::Read(e) => self.read_error(e, Some(name)),
            CopyError::Write(e) => ExtractError::from_write(e, &new.path, self.tree.dest(), name),
            CopyError::Limit => self.tree.limit_error(name),
        })?;
        let end = offset + copied.bytes;
        if copied.data_end.unwrap_or(0) < end {
            set_len(new, end, self.tree.dest(), name)?;
        }
        Ok(copied.bytes)
    }

    /// An archive read error: the source's own failure when there was one, else corruption.
    fn read_error(&self, e: io::Error, entry: Option<&str>) -> ExtractError {
        match self.state.source_error.take() {
            Some(source) => ExtractError::ReadFailed(source),
            None => ExtractError::Corrupt {
                format: self.format,
                entry: entry.map(str::to_owned),
                // The tar crate's own words quote the header bytes it could not parse: an
                // image may be any local file, and its bytes are not the client's to read.
                detail: if e.kind() == io::ErrorKind::UnexpectedEof {
                    "it ends in the middle of an entry".to_owned()
                } else {
                    format!("its headers are not valid {} headers", self.format)
                },
            },
        }
    }

    fn sparse_error(&self, e: SparseError, name: &str) -> ExtractError {
        match e {
            SparseError::Corrupt(detail) => self.corrupt(name, detail),
            SparseError::Unsupported(kind) => ExtractError::UnsupportedEntry {
                entry: name.to_owned(),
                kind,
            },
            SparseError::Read(e) => self.read_error(e, Some(name)),
        }
    }

    fn corrupt(&self, name: &str, detail: String) -> ExtractError {
        ExtractError::Corrupt {
            format: self.format,
            entry: Some(name.to_owned()),
            detail,
        }
    }

    fn truncated(&self, name: &str, got: u64, want: u64) -> ExtractError {
        self.corrupt(
            name,
            format!("the archive ends inside this entry, after {got} of its {want} bytes"),
        )
    }
}

/// Extends a file to its full size when its last bytes were zeros that were skipped.
fn set_len(
    new: &NewFile,
    len: u64,
    dest: &std::path::Path,
    name: &str,
) -> Result<(), ExtractError> {
    new.file
        .set_len(len)
        .map_err(|e| ExtractError::from_write(e, &new.path, dest, name))
}

fn annotate(e: io::Error, context: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{e} ({context})"))
}

fn replaces_folder(name: &str) -> ExtractError {
    ExtractError::UnsafePath {
        entry: name.to_owned(),
        reason: "it names the image folder itself".to_owned(),
    }
}

fn refuse_kind(kind: EntryType, name: &str) -> ExtractError {
    let special = if kind.is_character_special() {
        Some("character device")
    } else if kind.is_block_special() {
        Some("block device")
    } else if kind.is_fifo() {
        Some("FIFO")
    } else {
        None
    };
    match special {
        Some(kind) => ExtractError::SpecialFile {
            entry: name.to_owned(),
            kind,
        },
        None => ExtractError::UnsupportedEntry {
            entry: name.to_owned(),
            kind: format!("tar entry type `{}`", kind.as_byte().escape_ascii()),
        },
    }
}
