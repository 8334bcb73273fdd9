//! Gold image archives made in memory by the Rust crates, in each format the server takes.

use std::io::{Cursor, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Tar,
    TarGz,
    TarBz2,
    Zip,
}

pub const FORMATS: [Format; 4] = [Format::Tar, Format::TarGz, Format::TarBz2, Format::Zip];

pub fn tar_bytes(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

/// `files` (name, bytes) as an archive of `format`.
pub fn archive(format: Format, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    match format {
        Format::Tar => tar_bytes(files),
        Format::TarGz => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&tar_bytes(files)).unwrap();
            enc.finish().unwrap()
        }
        Format::TarBz2 => {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            enc.write_all(&tar_bytes(files)).unwrap();
            enc.finish().unwrap()
        }
        Format::Zip => {
            let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for (name, data) in files {
                zip.start_file(name.as_str(), options).unwrap();
                zip.write_all(data).unwrap();
            }
            zip.finish().unwrap().into_inner()
        }
    }
}
