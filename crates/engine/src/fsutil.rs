//! Crash-safe file writes: temp file in the same directory, fsync, rename.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sovryn_store::DiskStat;

use crate::{Error, Result};

/// Prefix of temp files; the scanner never records them.
pub const TEMP_PREFIX: &str = ".sovryn-tmp-";

fn temp_name() -> String {
    format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>())
}

/// A fresh temp path beside `target`.
pub fn temp_beside(target: &Path) -> PathBuf {
    target.with_file_name(temp_name())
}

/// A fresh temp path in `dir`.
pub fn temp_in(dir: &Path) -> PathBuf {
    dir.join(temp_name())
}

/// Writes `bytes` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = temp_beside(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sovryn_store::fsync_parent(path)?;
    Ok(())
}

/// The identity of what is at `path` now (not following symlinks).
pub fn disk_stat(path: &Path) -> Result<DiskStat> {
    let m = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(stat_of(&m))
}

/// [`DiskStat`] from metadata.
pub fn stat_of(m: &fs::Metadata) -> DiskStat {
    DiskStat {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        inode: m.ino(),
        mode: m.mode(),
        racy: false,
    }
}

/// How close to "now" an mtime must be for its stat to be untrustworthy.
pub const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// `fsync(2)` on a file or directory (a directory: the names renamed into it).
pub fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Marks `stat` racy when its mtime is within [`RACY_WINDOW_NS`] of `now_ns`.
pub fn mark_racy(mut stat: DiskStat, now_ns: i64) -> DiskStat {
    stat.racy = stat.mtime_ns > now_ns - RACY_WINDOW_NS;
    stat
}

/// Sets permission bits: read, write and execute only. Setuid, setgid and
/// sticky bits never come from a version (a peer or an agent could plant
/// a setuid binary otherwise).
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| Error::io(path, e))
}

/// [`set_mode`] on an open file.
pub fn set_file_mode(f: &fs::File, mode: u32) -> std::io::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(mode & 0o777))
}

/// Bytes free for this user on the file system holding `path`.
pub fn available_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::BadPath(format!("{} holds a NUL byte", path.display())))?;
    // SAFETY: statvfs(3) fills the zeroed struct we pass; `c` is a valid C string.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
        st
    };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
