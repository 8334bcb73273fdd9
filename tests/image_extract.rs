//! Unpacking gold image archives: every format as made by the system tools and by the Rust
//! crates, sparse files and long names, and hostile archives that must be refused with
//! nothing written outside the staging folder.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::TempDir;
use osx_builder::image::archive::{detect, ArchiveFormat, DETECT_LEN};
use osx_builder::image::extract::{unpack_tar, unpack_zip, ExtractError, Limits, Unpacked};
use osx_builder::image::VmFormat;
use tar::{EntryType, Header};

const GENEROUS: Limits = Limits {
    max_unpacked_bytes: 1 << 40,
    cancel: None,
    vm: VmFormat::Vmware,
};

// ---------------------------------------------------------------------------------------------
// Scratch folders, fixtures and helpers

/// A unique folder under the system temp dir holding `staging/` (the extraction target) and
/// whatever the test puts next to it; removed on drop.
struct Scratch {
    dir: TempDir,
    dest: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(&format!("extract-{tag}"));
        let dest = dir.path().join("staging");
        fs::create_dir(&dest).unwrap();
        Scratch { dir, dest }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Skips the calling test (with a note) when a system tool is missing.
macro_rules! require_tools {
    ($($tool:expr),+) => {
        for tool in [$($tool),+] {
            if !have(tool) {
                eprintln!("SKIPPED: `{tool}` is not installed");
                return;
            }
        }
    };
}

/// GNU tar under either of its usual names (`tar` on Linux, `gtar` from Homebrew on macOS,
/// where `tar` is bsdtar and lacks `--format=gnu` and `--sparse-version`).
fn gnu_tar() -> Option<&'static str> {
    ["tar", "gtar"].into_iter().find(|name| {
        have(name)
            && Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("GNU tar"))
    })
}

/// Skips the calling test (with a note) when GNU tar is missing; else its command name.
macro_rules! require_gnu_tar {
    () => {
        match gnu_tar() {
            Some(name) => name,
            None => {
                eprintln!("SKIPPED: GNU tar (`tar` or `gtar`) is not installed");
                return;
            }
        }
    };
}

/// A system tool, without macOS's AppleDouble `._` companions for extended attributes.
fn tool(name: &str) -> Command {
    let mut command = Command::new(name);
    command.env("COPYFILE_DISABLE", "1");
    command
}

fn run(command: &mut Command) {
    let output = command.output().expect("the tool runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A small VMware VM folder: relative path, content, mode.
fn vm_files() -> Vec<(&'static str, Vec<u8>, u32)> {
    let mut disk = common::noise(300_000, 1);
    disk.extend(vec![0u8; 400_000]);
    disk.extend(common::noise(100_000, 2));
    vec![
        (
            "macOS.vmx",
            b".encoding = \"UTF-8\"\nconfig.version = \"8\"\nguestOS = \"darwin21-64\"\n".to_vec(),
            0o644,
        ),
        ("macOS.vmxf", b"<Foundry></Foundry>\n".to_vec(), 0o644),
        (
            "macOS.vmdk",
            b"# Disk DescriptorFile\nversion=1\n".to_vec(),
            0o644,
        ),
        ("macOS-s001.vmdk", disk, 0o600),
        ("macOS.nvram", common::noise(8192, 3), 0o644),
        ("tools/start.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
        ("empty.log", Vec::new(), 0o644),
    ]
}

fn write_vm(dir: &Path) {
    for (rel, content, mode) in vm_files() {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn assert_vm(dir: &Path) {
    for (rel, content, mode) in vm_files() {
        let path = dir.join(rel);
        let actual = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(actual == content, "{} differs", path.display());
        let actual_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(actual_mode, mode, "mode of {}", path.display());
    }
}

fn vm_bytes() -> u64 {
    vm_files().iter().map(|(_, c, _)| c.len() as u64).sum()
}

/// Unpacks an archive file the way the image pipeline does: format from the bytes.
fn unpack_path(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, ExtractError> {
    let mut head = Vec::new();
    File::open(archive)
        .unwrap()
        .take(DETECT_LEN as u64)
        .read_to_end(&mut head)
        .unwrap();
    match detect(&head).expect("a known archive format") {
        ArchiveFormat::Zip => unpack_zip(archive, dest, limits),
        format => unpack_tar(format, File::open(archive).unwrap(), dest, limits),
    }
}

fn format_of(archive: &Path) -> Option<ArchiveFormat> {
    let mut head = Vec::new();
    File::open(archive)
        .unwrap()
        .take(DETECT_LEN as u64)
        .read_to_end(&mut head)
        .unwrap();
    detect(&head)
}

/// Everything under `root` except the `skip` subtree: type, size, mode and content.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path == skip {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let description = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(&path, skip, out);
                format!("dir {:o}", meta.mode())
            } else {
                let content = fs::read(&path).unwrap();
                format!("file {:o} {:?}", meta.mode(), content)
            };
            out.insert(path, description);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, skip, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Raw tar building, for archives no well-behaved tool would write

fn header(name: &[u8], kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_700_000_000);
    header
}

struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> Self {
        RawTar(tar::Builder::new(Vec::new()))
    }

    fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = header(name.as_bytes(), EntryType::Regular, mode, data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(mut self, name: &str, mode: u32) -> Self {
        let mut h = header(name.as_bytes(), EntryType::Directory, mode, 0);
        h.set_cksum();
        self.0.append(&h, io::empty()).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, name: &str, target: &str) -> Self {
        let mut h = header(name.as_bytes(), kind, 0o777, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, io::empty()).unwrap();
        self
    }

    fn node(mut self, kind: EntryType, name: &str) -> Self {
        let mut h = header(name.as_bytes(), kind, 0o644, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_cksum();
        self.0.append(&h, io::empty()).unwrap();
        self
    }

    fn vmx(self) -> Self {
        self.file("vm/macOS.vmx", 0o644, b"config.version = \"8\"\n")
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Unpacks a hostile in-memory archive, expecting a refusal with `code` naming `entry`, and
/// checks that nothing next to the staging folder changed.
fn expect_refused(
    format: ArchiveFormat,
    archive: &[u8],
    limits: &Limits,
    code: &str,
    entry: &str,
) -> ExtractError {
    let scratch = Scratch::new(code);
    fs::create_dir(scratch.path("outside")).unwrap();
    fs::write(scratch.path("outside/keep"), b"precious").unwrap();
    let before = snapshot(scratch.dir.path(), &scratch.dest);
    let err = unpack_tar(format, Cursor::new(archive), &scratch.dest, limits)
        .expect_err("a hostile archive must be refused");
    eprintln!("{}: {err}", err.code());
    assert_eq!(err.code(), code, "{err}");
    assert_eq!(err.entry(), Some(entry), "{err}");
    assert!(err.to_string().contains(entry), "{err}");
    assert_eq!(
        snapshot(scratch.dir.path(), &scratch.dest),
        before,
        "something changed outside the staging folder"
    );
    assert_no_symlink_leads_out(&scratch.dest);
    err
}

/// A refused archive may leave a partial tree, but no symlink in it may lead outside.
fn assert_no_symlink_leads_out(dest: &Path) {
    let inside = fs::canonicalize(dest).unwrap();
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                if let Ok(target) = fs::canonicalize(&path) {
                    assert!(
                        target.starts_with(&inside),
                        "{} leads to {}",
                        path.display(),
                        target.display()
                    );
                }
            } else if meta.is_dir() {
                stack.push(path);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formats made by the system tools

#[test]
fn gnu_tar_formats_with_and_without_a_top_folder() {
    require_tools!("gzip", "bzip2");
    let tar = require_gnu_tar!();
    let scratch = Scratch::new("gnu-tar");
    let src = scratch.path("src");
    write_vm(&src.join("vm"));
    let cases = [
        ("a.tar", "-cf", ArchiveFormat::Tar),
        ("a.tar.gz", "-czf", ArchiveFormat::TarGz),
        ("a.tar.bz2", "-cjf", ArchiveFormat::TarBz2),
    ];
    for (file, flag, format) in cases {
        for top_folder in [true, false] {
            let archive = scratch.path(&format!("{top_folder}-{file}"));
            let (dir, what) = if top_folder {
                (src.clone(), "vm")
            } else {
                (src.join("vm"), ".")
            };
            run(tool(tar)
                .arg("-C")
                .arg(&dir)
                .arg(flag)
                .arg(&archive)
                .arg(what));
            assert_eq!(format_of(&archive), Some(format), "{file}");
            let dest = scratch.path(&format!("out-{top_folder}-{file}"));
            fs::create_dir(&dest).unwrap();
            let unpacked = unpack_path(&archive, &dest, &GENEROUS)
                .unwrap_or_else(|e| panic!("{file} top_folder={top_folder}: {e}"));
            let vm_dir = if top_folder {
                dest.join("vm")
            } else {
                dest.clone()
            };
            assert_vm(&vm_dir);
            let expected_vmx = if top_folder {
                "vm/macOS.vmx"
            } else {
                "macOS.vmx"
            };
            assert_eq!(unpacked.vmx, Path::new(expected_vmx));
            assert_eq!(unpacked.files, vm_files().len() as u64);
            assert_eq!(unpacked.bytes, vm_bytes());
        }
    }
}

#[test]
fn zip_tool_archives_with_and_without_a_top_folder() {
    require_tools!("zip");
    let scratch = Scratch::new("zip-tool");
    let src = scratch.path("src");
    write_vm(&src.join("vm"));
    for top_folder in [true, false] {
        let archive = scratch.path(&format!("{top_folder}.zip"));
        let (dir, what) = if top_folder {
            (src.clone(), "vm")
        } else {
            (src.join("vm"), ".")
        };
        run(tool("zip")
            .current_dir(&dir)
            .args(["-q", "-r"])
            .arg(&archive)
            .arg(what));
        assert_eq!(format_of(&archive), Some(ArchiveFormat::Zip));
        let dest = scratch.path(&format!("out-{top_folder}"));
        fs::create_dir(&dest).unwrap();
        let unpacked = unpack_path(&archive, &dest, &GENEROUS).unwrap();
        assert_vm(&if top_folder {
            dest.join("vm")
        } else {
            dest.clone()
        });
        let expected_vmx = if top_folder {
            "vm/macOS.vmx"
        } else {
            "macOS.vmx"
        };
        assert_eq!(unpacked.vmx, Path::new(expected_vmx));
        assert_eq!(unpacked.bytes, vm_bytes());
    }
}

#[test]
fn zip_tool_symlinks_inside_are_kept_and_outside_refused() {
    require_tools!("zip");
    let scratch = Scratch::new("zip-links");
    let src = scratch.path("src");
    write_vm(&src.join("vm"));
    std::os::unix::fs::symlink("macOS.nvram", src.join("vm/current.nvram")).unwrap();
    let good = scratch.path("good.zip");
    run(tool("zip")
        .current_dir(&src)
        .args(["-q", "-r", "-y"])
        .arg(&good)
        .arg("vm"));
    let dest = scratch.path("out-good");
    fs::create_dir(&dest).unwrap();
    unpack_path(&good, &dest, &GENEROUS).unwrap();
    assert_eq!(
        fs::read_link(dest.join("vm/current.nvram")).unwrap(),
        Path::new("macOS.nvram")
    );

    std::os::unix::fs::symlink("/etc", src.join("vm/etc")).unwrap();
    let bad = scratch.path("bad.zip");
    run(tool("zip")
        .current_dir(&src)
        .args(["-q", "-r", "-y"])
        .arg(&bad)
        .arg("vm"));
    let dest = scratch.path("out-bad");
    fs::create_dir(&dest).unwrap();
    let err = unpack_path(&bad, &dest, &GENEROUS).unwrap_err();
    assert_eq!(err.code(), "unsafe-link", "{err}");
    assert_eq!(err.entry(), Some("vm/etc"));
}

#[test]
fn vmx_in_a_nested_folder_is_found() {
    let tar = require_gnu_tar!();
    let scratch = Scratch::new("nested");
    let src = scratch.path("src");
    write_vm(&src.join("images/macOS 14.vmwarevm"));
    fs::write(src.join("README.txt"), b"gold image\n").unwrap();
    let archive = scratch.path("a.tar");
    run(tool(tar)
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&archive)
        .args(["README.txt", "images"]));
    let unpacked = unpack_path(&archive, &scratch.dest, &GENEROUS).unwrap();
    assert_eq!(
        unpacked.vmx,
        Path::new("images/macOS 14.vmwarevm/macOS.vmx")
    );
    assert_vm(&scratch.dest.join("images/macOS 14.vmwarevm"));
}

/// A path of about 330 bytes: past ustar's 100-byte name and 155-byte prefix.
fn long_rel_path() -> String {
    format!(
        "{}/{}/{}/{}.vmx",
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "v".repeat(140)
    )
}

#[test]
fn gnu_and_pax_long_names_from_gnu_tar() {
    let tar = require_gnu_tar!();
    let scratch = Scratch::new("long-gnu-tar");
    let src = scratch.path("src");
    let rel = long_rel_path();
    fs::create_dir_all(src.join(&rel).parent().unwrap()).unwrap();
    fs::write(src.join(&rel), b"config.version = \"8\"\n").unwrap();
    let long_link = format!("{}/{}", "a".repeat(60), "l".repeat(120));
    std::os::unix::fs::symlink(format!("{}/x", "b".repeat(60)), src.join(&long_link)).unwrap();
    for format in ["gnu", "pax"] {
        let archive = scratch.path(&format!("{format}.tar"));
        run(tool(tar)
            .arg("-C")
            .arg(&src)
            .arg(format!("--format={format}"))
            .arg("-cf")
            .arg(&archive)
            .arg("a".repeat(60)));
        let dest = scratch.path(&format!("out-{format}"));
        fs::create_dir(&dest).unwrap();
        let unpacked =
            unpack_path(&archive, &dest, &GENEROUS).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(unpacked.vmx, Path::new(&rel), "{format}");
        assert_eq!(
            fs::read(dest.join(&rel)).unwrap(),
            b"config.version = \"8\"\n"
        );
        assert!(fs::symlink_metadata(dest.join(&long_link))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

/// A 10 MiB file that is mostly a hole, with a dozen islands of data: more than a GNU sparse
/// header's four slots, so extension headers are exercised too.
fn write_sparse(path: &Path) -> Vec<u8> {
    let file = File::create(path).unwrap();
    file.set_len(10 << 20).unwrap();
    let mut content = vec![0u8; 10 << 20];
    for i in 0..12u64 {
        let offset = 5000 + i * 800_000;
        let data = common::noise(1000 + 300 * i as usize, 20 + i);
        std::os::unix::fs::FileExt::write_all_at(&file, &data, offset).unwrap();
        content[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
    }
    content
}

/// Whether the file system under `dir` keeps holes (tmpfs and ext4 do; some overlays do not).
fn holes_supported(dir: &Path) -> bool {
    let probe = dir.join("hole-probe");
    let file = File::create(&probe).unwrap();
    file.set_len(4 << 20).unwrap();
    let blocks = file.metadata().unwrap().blocks();
    fs::remove_file(&probe).unwrap();
    blocks == 0
}

#[test]
fn sparse_files_from_gnu_tar_in_every_sparse_format() {
    require_tools!("gzip");
    let tar = require_gnu_tar!();
    let scratch = Scratch::new("sparse-gnu-tar");
    let src = scratch.path("src");
    fs::create_dir_all(src.join("vm")).unwrap();
    fs::write(src.join("vm/macOS.vmx"), b"x\n").unwrap();
    let content = write_sparse(&src.join("vm/macOS-flat.vmdk"));
    let variants: [(&str, &[&str]); 5] = [
        ("gnu", &["--format=gnu"]),
        ("pax-0.0", &["--format=pax", "--sparse-version=0.0"]),
        ("pax-0.1", &["--format=pax", "--sparse-version=0.1"]),
        ("pax-1.0", &["--format=pax", "--sparse-version=1.0"]),
        (
            "pax-1.0-gz",
            &["--format=pax", "--sparse-version=1.0", "-z"],
        ),
    ];
    for (name, flags) in variants {
        let archive = scratch.path(&format!("{name}.tar"));
        run(tool(tar)
            .arg("-C")
            .arg(&src)
            .arg("--sparse")
            .args(flags)
            .arg("-cf")
            .arg(&archive)
            .arg("vm"));
        let dest = scratch.path(&format!("out-{name}"));
        fs::create_dir(&dest).unwrap();
        let unpacked =
            unpack_path(&archive, &dest, &GENEROUS).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(unpacked.vmx, Path::new("vm/macOS.vmx"), "{name}");
        let names: Vec<_> = fs::read_dir(dest.join("vm"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{name}: no placeholder folders: {names:?}");
        let disk = dest.join("vm/macOS-flat.vmdk");
        assert!(
            fs::read(&disk).unwrap() == content,
            "{name}: content differs"
        );
        assert_eq!(unpacked.bytes, 2 + (10 << 20), "{name}: holes count");
        if holes_supported(&dest) {
            let allocated = fs::metadata(&disk).unwrap().blocks() * 512;
            assert!(allocated < 1 << 20, "{name}: {allocated} bytes allocated");
        } else {
            eprintln!("NOTE: this file system does not keep holes; sparseness not checked");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formats made by the Rust crates

fn crate_tar(src: &Path, top_folder: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    if top_folder {
        builder.append_dir_all("vm", src).unwrap();
    } else {
        builder.append_dir_all(".", src).unwrap();
    }
    builder.into_inner().unwrap()
}

fn crate_zip(top_folder: bool) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let prefix = if top_folder { "vm/" } else { "" };
    if top_folder {
        writer
            .add_directory("vm/", SimpleFileOptions::default())
            .unwrap();
    }
    writer
        .add_directory(format!("{prefix}tools/"), SimpleFileOptions::default())
        .unwrap();
    for (i, (rel, content, mode)) in vm_files().into_iter().enumerate() {
        let method = if i % 2 == 0 {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Bzip2
        };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(mode);
        writer
            .start_file(format!("{prefix}{rel}"), options)
            .unwrap();
        writer.write_all(&content).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[test]
fn crate_made_archives_in_every_format() {
    let scratch = Scratch::new("crates");
    let src = scratch.path("src");
    write_vm(&src);
    for top_folder in [true, false] {
        let tar = crate_tar(&src, top_folder);
        let archives = [
            (ArchiveFormat::Tar, tar.clone()),
            (ArchiveFormat::TarGz, gzip(&tar)),
            (ArchiveFormat::TarBz2, bzip2(&tar)),
            (ArchiveFormat::Zip, crate_zip(top_folder)),
        ];
        for (format, bytes) in archives {
            assert_eq!(detect(&bytes[..bytes.len().min(DETECT_LEN)]), Some(format));
            let archive = scratch.path(&format!("{top_folder}.{}", format.as_str()));
            fs::write(&archive, &bytes).unwrap();
            let dest = scratch.path(&format!("out-{top_folder}-{}", format.as_str()));
            fs::create_dir(&dest).unwrap();
            let unpacked = unpack_path(&archive, &dest, &GENEROUS)
                .unwrap_or_else(|e| panic!("{format:?} top_folder={top_folder}: {e}"));
            assert_vm(&if top_folder {
                dest.join("vm")
            } else {
                dest.clone()
            });
            let expected_vmx = if top_folder {
                "vm/macOS.vmx"
            } else {
                "macOS.vmx"
            };
            assert_eq!(unpacked.vmx, Path::new(expected_vmx), "{format:?}");
            assert_eq!(unpacked.files, vm_files().len() as u64, "{format:?}");
            assert_eq!(unpacked.bytes, vm_bytes(), "{format:?}");
        }
    }
}

#[test]
fn crate_made_long_names_gnu_and_pax() {
    let rel = long_rel_path();
    let data = b"config.version = \"8\"\n";

    // tar::Builder writes a GNU `././@LongLink` entry for a long name in a GNU header.
    let mut gnu = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    gnu.append_data(&mut h, &rel, &data[..]).unwrap();
    let gnu = gnu.into_inner().unwrap();
    assert!(gnu.windows(13).any(|w| w == b"././@LongLink"));

    // A pax `path=` record in front of a ustar header with a placeholder name.
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([("path", rel.as_bytes())])
        .unwrap();
    let mut h = Header::new_ustar();
    h.set_path("placeholder").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    pax.append(&h, &data[..]).unwrap();
    let pax = pax.into_inner().unwrap();

    for (name, archive) in [("gnu", gnu), ("pax", pax)] {
        let scratch = Scratch::new(name);
        let unpacked = unpack_tar(
            ArchiveFormat::Tar,
            Cursor::new(archive),
            &scratch.dest,
            &GENEROUS,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(unpacked.vmx, Path::new(&rel));
        assert_eq!(fs::read(scratch.dest.join(&rel)).unwrap(), data);
        assert!(!scratch.dest.join("placeholder").exists());
    }
}

#[test]
fn crate_made_gnu_sparse_file() {
    let scratch = Scratch::new("crate-sparse");
    let src = scratch.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("macOS.vmx"), b"x\n").unwrap();
    let content = write_sparse(&src.join("disk.vmdk"));
    let mut builder = tar::Builder::new(Vec::new());
    builder.sparse(true);
    builder.append_dir_all("vm", &src).unwrap();
    let archive = builder.into_inner().unwrap();
    assert!(
        archive.len() < 1 << 20,
        "the tar crate wrote the file as sparse ({} bytes)",
        archive.len()
    );
    unpack_tar(
        ArchiveFormat::TarGz,
        Cursor::new(gzip(&archive)),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap();
    assert!(fs::read(scratch.dest.join("vm/disk.vmdk")).unwrap() == content);
}

#[test]
fn multi_member_gzip_and_multi_stream_bzip2() {
    let scratch = Scratch::new("multi");
    let src = scratch.path("src");
    write_vm(&src);
    let tar = crate_tar(&src, true);
    let (first, second) = tar.split_at(tar.len() / 3);
    let mut gz = gzip(first);
    gz.extend(gzip(second));
    let mut bz = bzip2(first);
    bz.extend(bzip2(second));
    for (format, bytes) in [(ArchiveFormat::TarGz, gz), (ArchiveFormat::TarBz2, bz)] {
        let dest = scratch.path(&format!("out-{}", format.as_str()));
        fs::create_dir(&dest).unwrap();
        unpack_tar(format, Cursor::new(bytes), &dest, &GENEROUS)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_vm(&dest.join("vm"));
    }
}

#[test]
fn zero_runs_in_plain_files_read_back_the_same() {
    let scratch = Scratch::new("zeros");
    let mut data = common::noise(1000, 5);
    data.extend(vec![0u8; 3 << 20]);
    data.extend(common::noise(70_000, 6));
    data.extend(vec![0u8; 2 << 20]);
    let archive = RawTar::new()
        .vmx()
        .file("vm/disk.vmdk", 0o644, &data)
        .finish();
    let unpacked = unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(archive),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap();
    let written = fs::read(scratch.dest.join("vm/disk.vmdk")).unwrap();
    assert_eq!(
        written.len(),
        data.len(),
        "the trailing zeros keep the size"
    );
    assert!(written == data);
    assert_eq!(unpacked.files, 2);
}

#[test]
fn reads_only_as_far_as_the_archive_goes() {
    struct Counting<R> {
        inner: R,
        read: u64,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }
    let archive = gzip(&RawTar::new().vmx().finish());
    let archive_len = archive.len() as u64;
    let mut stream = archive;
    stream.extend(common::noise(4 << 20, 9));
    let scratch = Scratch::new("partial-read");
    let mut counting = Counting {
        inner: Cursor::new(stream),
        read: 0,
    };
    unpack_tar(
        ArchiveFormat::TarGz,
        &mut counting,
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap();
    assert!(counting.read >= archive_len / 2, "{}", counting.read);
    assert!(
        counting.read <= archive_len + (256 << 10),
        "read {} bytes of a {archive_len}-byte archive",
        counting.read
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile archives

#[test]
fn parent_dir_names_are_refused() {
    let archive = RawTar::new().vmx().file("../evil", 0o644, b"x").finish();
    let err = expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "unsafe-path",
        "../evil",
    );
    assert!(err.to_string().contains(".."), "{err}");
    let archive = RawTar::new().file("vm/../../evil", 0o644, b"x").finish();
    expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "unsafe-path",
        "vm/../../evil",
    );
}

#[test]
fn absolute_names_are_refused_not_stripped() {
    let target = std::env::temp_dir().join(format!("osxb-abs-evil-{}", std::process::id()));
    let name = target.to_str().unwrap().to_owned();
    let archive = RawTar::new().vmx().file(&name, 0o644, b"x").finish();
    let err = expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "unsafe-path",
        &name,
    );
    assert!(err.to_string().contains("absolute"), "{err}");
    assert!(!target.exists());
}

#[test]
fn symlink_out_then_a_file_through_it_is_refused() {
    let archive = RawTar::new()
        .vmx()
        .link(EntryType::Symlink, "link", "/etc")
        .file("link/passwd", 0o644, b"root::0:0::/:/bin/sh\n")
        .finish();
    expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "unsafe-link",
        "link",
    );
}

#[test]
fn a_file_through_any_symlink_is_refused_even_one_pointing_inside() {
    let archive = RawTar::new()
        .vmx()
        .dir("sub/", 0o755)
        .link(EntryType::Symlink, "link", "sub")
        .file("link/passwd", 0o644, b"x")
        .finish();
    let err = expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "unsafe-path",
        "link/passwd",
    );
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn relative_symlinks_that_climb_out_are_refused() {
    let archive = RawTar::new()
        .vmx()
        .link(EntryType::Symlink, "vm/up", "../../..")
        .finish();
    expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "unsafe-link",
        "vm/up",
    );
}

#[test]
fn a_symlink_climbing_through_a_later_symlink_is_refused() {
    // `l1 -> .` turns `l1/..` into the staging folder's parent; l2 comes first, when l1 is
    // not known yet, so only the final check can catch it.
    let archive = RawTar::new()
        .vmx()
        .link(EntryType::Symlink, "l2", "l1/../outside/keep")
        .link(EntryType::Symlink, "l1", ".")
        .finish();
    expect_refused(ArchiveFormat::Tar, &archive, &GENEROUS, "unsafe-link", "l2");
}

#[test]
fn hard_links_out_or_forward_are_refused() {
    for (target, why) in [
        ("/etc/passwd", "absolute"),
        ("../outside/keep", ".."),
        ("vm/later", "unpacked earlier"),
    ] {
        let archive = RawTar::new()
            .vmx()
            .link(EntryType::Link, "vm/hard", target)
            .file("vm/later", 0o644, b"x")
            .finish();
        let err = expect_refused(
            ArchiveFormat::Tar,
            &archive,
            &GENEROUS,
            "unsafe-link",
            "vm/hard",
        );
        assert!(err.to_string().contains(why), "{target}: {err}");
    }
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, name, what) in [
        (EntryType::Char, "dev/null", "character device"),
        (EntryType::Block, "dev/sda", "block device"),
        (EntryType::Fifo, "vm/pipe", "FIFO"),
    ] {
        let archive = RawTar::new().vmx().node(kind, name).finish();
        let err = expect_refused(
            ArchiveFormat::Tar,
            &archive,
            &GENEROUS,
            "special-file",
            name,
        );
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn setuid_setgid_and_sticky_bits_are_dropped() {
    let scratch = Scratch::new("setuid");
    let archive = RawTar::new()
        .vmx()
        .file("vm/tool", 0o4755, b"#!/bin/sh\n")
        .file("vm/group-tool", 0o2750, b"#!/bin/sh\n")
        .dir("vm/shared/", 0o2775)
        .dir("vm/tmp/", 0o1777)
        .dir("vm/locked/", 0o555)
        .finish();
    unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(archive),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap();
    let mode = |rel: &str| fs::metadata(scratch.dest.join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode("vm/tool"), 0o755);
    assert_eq!(mode("vm/group-tool"), 0o750);
    assert_eq!(mode("vm/shared"), 0o775);
    assert_eq!(mode("vm/tmp"), 0o777);
    assert_eq!(
        mode("vm/locked"),
        0o755,
        "folders stay writable by their owner"
    );
    assert_eq!(mode("vm/macOS.vmx"), 0o644);
}

#[test]
fn a_gzip_bomb_is_stopped_at_the_limit() {
    let limits = Limits {
        max_unpacked_bytes: 10 << 20,
        cancel: None,
        vm: VmFormat::Vmware,
    };
    // 100 MB of zeros in one entry, compressed as many identical gzip members so that the
    // test does not spend its time compressing.
    let mut h = header(b"vm/disk.vmdk", EntryType::Regular, 0o644, 100 << 20);
    h.set_cksum();
    let zeros = gzip(&vec![0u8; 1 << 20]);
    let mut bomb = gzip(RawTar::new().vmx().finish().split_at(1024).0);
    bomb.extend(gzip(h.as_bytes()));
    for _ in 0..100 {
        bomb.extend_from_slice(&zeros);
    }
    bomb.extend(gzip(&[0u8; 1024]));
    assert!(bomb.len() < 1 << 20);
    let err = expect_refused(
        ArchiveFormat::TarGz,
        &bomb,
        &limits,
        "unpack-limit",
        "vm/disk.vmdk",
    );
    assert!(err.to_string().contains("--max-unpacked-bytes"), "{err}");
    assert!(err.to_string().contains("10485760"), "{err}");

    // Many entries each under the limit: only counting what is written catches these.
    let mut many = RawTar::new().vmx();
    let chunk = vec![0u8; 1 << 20];
    for i in 0..12 {
        many = many.file(&format!("vm/part{i:02}"), 0o644, &chunk);
    }
    let many = gzip(&many.finish());
    expect_refused(
        ArchiveFormat::TarGz,
        &many,
        &limits,
        "unpack-limit",
        "vm/part09",
    );
}

#[test]
fn a_zip_bomb_is_stopped_at_the_limit() {
    use zip::write::SimpleFileOptions;
    let scratch = Scratch::new("zip-bomb");
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1));
    writer.start_file("vm/macOS.vmx", options).unwrap();
    writer.write_all(b"x\n").unwrap();
    writer.start_file("vm/disk.vmdk", options).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..20 {
        writer.write_all(&zeros).unwrap();
    }
    let archive = writer.finish().unwrap().into_inner();
    fs::write(scratch.path("bomb.zip"), &archive).unwrap();
    let before = snapshot(scratch.dir.path(), &scratch.dest);
    let limits = Limits {
        max_unpacked_bytes: 10 << 20,
        cancel: None,
        vm: VmFormat::Vmware,
    };
    let err = unpack_zip(&scratch.path("bomb.zip"), &scratch.dest, &limits).unwrap_err();
    assert_eq!(err.code(), "unpack-limit", "{err}");
    assert_eq!(err.entry(), Some("vm/disk.vmdk"));
    assert_eq!(snapshot(scratch.dir.path(), &scratch.dest), before);
}

#[test]
fn a_zip_member_larger_than_its_header_says_is_still_counted() {
    use zip::write::SimpleFileOptions;
    let scratch = Scratch::new("zip-liar");
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1));
    writer.start_file("vm/macOS.vmx", options).unwrap();
    writer.write_all(b"x\n").unwrap();
    writer.start_file("vm/disk.vmdk", options).unwrap();
    writer.write_all(&common::noise(4 << 20, 11)).unwrap();
    let mut archive = writer.finish().unwrap().into_inner();
    // Rewrite disk.vmdk's uncompressed size to 1000 in its local and central headers.
    let mut patched = 0;
    for (signature, size_at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
        let mut at = 0;
        while let Some(pos) = archive[at..].windows(4).position(|w| w == signature) {
            let start = at + pos;
            let name_at = start + if signature == b"PK\x03\x04" { 30 } else { 46 };
            if archive[name_at..].starts_with(b"vm/disk.vmdk") {
                archive[start + size_at..start + size_at + 4]
                    .copy_from_slice(&1000u32.to_le_bytes());
                patched += 1;
            }
            at = start + 4;
        }
    }
    assert_eq!(patched, 2);
    fs::write(scratch.path("liar.zip"), &archive).unwrap();
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        cancel: None,
        vm: VmFormat::Vmware,
    };
    let err = unpack_zip(&scratch.path("liar.zip"), &scratch.dest, &limits).unwrap_err();
    eprintln!("{}: {err}", err.code());
    assert_eq!(err.code(), "unpack-limit", "{err}");
    assert_eq!(err.entry(), Some("vm/disk.vmdk"), "{err}");
    let written = fs::metadata(scratch.dest.join("vm/disk.vmdk")).map_or(0, |m| m.len());
    assert!(written <= 1 << 20, "{written} bytes written past the limit");
}

#[test]
fn hostile_zip_names_and_links_are_refused() {
    use zip::write::SimpleFileOptions;
    let build = |name: &str, link: Option<&str>| {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default();
        writer.start_file("vm/macOS.vmx", options).unwrap();
        writer.write_all(b"x\n").unwrap();
        match link {
            Some(target) => writer.add_symlink(name, target, options).unwrap(),
            None => {
                writer.start_file(name, options).unwrap();
                writer.write_all(b"evil").unwrap();
            }
        }
        writer.finish().unwrap().into_inner()
    };
    let cases = [
        ("../evil", None, "unsafe-path"),
        ("..\\evil", None, "unsafe-path"),
        ("/abs/evil", None, "unsafe-path"),
        ("vm/etc", Some("/etc"), "unsafe-link"),
        ("vm/up", Some("../../.."), "unsafe-link"),
    ];
    for (name, link, code) in cases {
        let scratch = Scratch::new("zip-hostile");
        fs::write(scratch.path("bad.zip"), build(name, link)).unwrap();
        let before = snapshot(scratch.dir.path(), &scratch.dest);
        let err = unpack_zip(&scratch.path("bad.zip"), &scratch.dest, &GENEROUS).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
        assert_eq!(err.entry(), Some(name), "{err}");
        assert_eq!(
            snapshot(scratch.dir.path(), &scratch.dest),
            before,
            "{name}"
        );
    }
    assert!(!Path::new("/abs/evil").exists());
}

#[test]
fn duplicate_entries_are_refused() {
    let archive = RawTar::new()
        .vmx()
        .file("vm/disk.vmdk", 0o644, b"one")
        .file("vm/disk.vmdk", 0o644, b"two")
        .finish();
    expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "duplicate-entry",
        "vm/disk.vmdk",
    );
    let archive = RawTar::new()
        .vmx()
        .file("vm/f", 0o644, b"one")
        .file("vm/f/g", 0o644, b"two")
        .finish();
    expect_refused(
        ArchiveFormat::Tar,
        &archive,
        &GENEROUS,
        "duplicate-entry",
        "vm/f/g",
    );
}

// ---------------------------------------------------------------------------------------------
// Not archives, broken archives, wrong contents

#[test]
fn not_an_archive() {
    let html = b"<html><body><h1>404 Not Found</h1></body></html>\n".repeat(20);
    assert_eq!(detect(&html[..DETECT_LEN]), None);
    for format in [
        ArchiveFormat::Tar,
        ArchiveFormat::TarGz,
        ArchiveFormat::TarBz2,
    ] {
        let scratch = Scratch::new("not-archive");
        let err = unpack_tar(format, Cursor::new(&html), &scratch.dest, &GENEROUS).unwrap_err();
        assert_eq!(err.code(), "archive-corrupt", "{format:?}: {err}");
        assert!(err.to_string().contains(format.as_str()), "{err}");
    }
    let scratch = Scratch::new("not-zip");
    fs::write(scratch.path("x.zip"), &html).unwrap();
    let err = unpack_zip(&scratch.path("x.zip"), &scratch.dest, &GENEROUS).unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");
}

#[test]
fn a_zip_given_as_a_stream_is_refused() {
    let scratch = Scratch::new("zip-stream");
    let err = unpack_tar(ArchiveFormat::Zip, io::empty(), &scratch.dest, &GENEROUS).unwrap_err();
    assert_eq!(err.code(), "archive-corrupt");
}

#[test]
fn truncated_archives_are_errors_not_partial_successes() {
    let scratch = Scratch::new("truncated-src");
    write_vm(&scratch.path("src"));
    let tar = crate_tar(&scratch.path("src"), true);

    let gz = gzip(&tar);
    let dest = scratch.path("out-gz");
    fs::create_dir(&dest).unwrap();
    let err = unpack_tar(
        ArchiveFormat::TarGz,
        Cursor::new(&gz[..gz.len() / 2]),
        &dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");

    let bz = bzip2(&tar);
    let dest = scratch.path("out-bz2");
    fs::create_dir(&dest).unwrap();
    let err = unpack_tar(
        ArchiveFormat::TarBz2,
        Cursor::new(&bz[..bz.len() / 2]),
        &dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");

    // Cut in the middle of an entry's data.
    let archive = RawTar::new()
        .vmx()
        .file("vm/disk.vmdk", 0o644, &common::noise(10_000, 4))
        .finish();
    let dest = scratch.path("out-mid");
    fs::create_dir(&dest).unwrap();
    let err = unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(&archive[..1536 + 5000]),
        &dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");
    assert_eq!(err.entry(), Some("vm/disk.vmdk"));

    // Cut exactly between two entries: only the missing end-of-archive marker tells.
    let end_of_vmx = 512 + 512;
    let dest = scratch.path("out-boundary");
    fs::create_dir(&dest).unwrap();
    let err = unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(&archive[..end_of_vmx]),
        &dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");
    assert!(err.to_string().contains("cut short"), "{err}");

    let zip = crate_zip(true);
    fs::write(scratch.path("cut.zip"), &zip[..zip.len() - 100]).unwrap();
    let dest = scratch.path("out-zip");
    fs::create_dir(&dest).unwrap();
    let err = unpack_zip(&scratch.path("cut.zip"), &dest, &GENEROUS).unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");

    let dest = scratch.path("out-empty");
    fs::create_dir(&dest).unwrap();
    let err = unpack_tar(ArchiveFormat::Tar, io::empty(), &dest, &GENEROUS).unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");
}

#[test]
fn corrupt_deflate_data_is_reported_with_the_decoder_message() {
    let scratch = Scratch::new("corrupt-gz");
    write_vm(&scratch.path("src"));
    let mut gz = gzip(&crate_tar(&scratch.path("src"), true));
    let middle = gz.len() / 2;
    for byte in &mut gz[middle..middle + 64] {
        *byte ^= 0x55;
    }
    let err = unpack_tar(
        ArchiveFormat::TarGz,
        Cursor::new(gz),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "archive-corrupt", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("deflate") || text.contains("checksum") || text.contains("corrupt"),
        "{text}"
    );
}

#[test]
/// Issue 13 changed this on purpose: an archive may be any local file, so the error gives
/// the count of its entries but none of their names.
fn no_vmx_says_how_many_entries_but_not_their_names() {
    let archive = RawTar::new()
        .file("vm/disk.vmdk", 0o644, b"d")
        .file("vm/._macOS.vmx", 0o644, b"appledouble")
        .file("README", 0o644, b"r")
        .finish();
    let scratch = Scratch::new("no-vmx");
    let err = unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(archive),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "no-vmx", "{err}");
    let text = err.to_string();
    for name in ["disk.vmdk", "._macOS.vmx", "README"] {
        assert!(!text.contains(name), "{text}");
    }
    assert!(text.contains("3 entries"), "{text}");
}

#[test]
fn two_vmx_files_are_ambiguous() {
    let archive = RawTar::new()
        .file("a/one.vmx", 0o644, b"1")
        .file("b/two.vmx", 0o644, b"2")
        .finish();
    let scratch = Scratch::new("many-vmx");
    let err = unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(archive),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "many-vmx", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("a/one.vmx") && text.contains("b/two.vmx"),
        "{text}"
    );
}

#[test]
fn a_failing_source_is_reported_as_its_own_error() {
    struct Failing {
        data: Cursor<Vec<u8>>,
    }
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.data.read(buf)? {
                0 => Err(io::Error::new(io::ErrorKind::TimedOut, "download stalled")),
                n => Ok(n),
            }
        }
    }
    let scratch = Scratch::new("failing-source");
    write_vm(&scratch.path("src"));
    let gz = gzip(&crate_tar(&scratch.path("src"), true));
    let reader = Failing {
        data: Cursor::new(gz[..gz.len() / 2].to_vec()),
    };
    let err = unpack_tar(ArchiveFormat::TarGz, reader, &scratch.dest, &GENEROUS).unwrap_err();
    assert_eq!(err.code(), "archive-read-failed", "{err}");
    let source = std::error::Error::source(&err).expect("the original error");
    let io_error = source.downcast_ref::<io::Error>().unwrap();
    assert_eq!(io_error.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("download stalled"), "{err}");
}

#[test]
fn the_staging_folder_must_be_empty() {
    let scratch = Scratch::new("not-empty");
    fs::write(scratch.dest.join("leftover"), b"x").unwrap();
    let archive = RawTar::new().vmx().finish();
    let err = unpack_tar(
        ArchiveFormat::Tar,
        Cursor::new(archive),
        &scratch.dest,
        &GENEROUS,
    )
    .unwrap_err();
    assert_eq!(err.code(), "staging-not-empty", "{err}");
}
