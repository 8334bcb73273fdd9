//! The few file-system calls the pipeline needs beyond std: free space, and flushing a
//! finished tree to stable storage before it is published.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs only writes into the zeroed struct we own, and reads a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field widths differ between macOS and Linux.
    #[allow(clippy::unnecessary_cast)]
    let free = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Ok(free)
}

/// fsyncs every regular file and folder under `root` (symlinks are not followed), so that
/// a power cut after the publishing rename cannot leave a gold image with holes in it: the
/// gold folder is trusted without hashing from then on.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    // A file the archive made unreadable (mode 000) cannot be opened to be
                    // flushed; the kernel still writes it back.
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                    Err(e) => return Err(e),
                }
            }
        }
        sync_dir(&folder)?;
    }
    Ok(())
}

/// fsyncs a folder, making the creations and renames in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_the_temp_dir() {
        let free = free_space(&std::env::temp_dir()).unwrap();
        assert!(free > 0);
        assert!(free_space(Path::new("/no/such/folder/here")).is_err());
    }
}
