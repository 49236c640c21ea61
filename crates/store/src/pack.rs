//! Append-only pack files holding sealed chunks back to back.
//!
//! A pack is never rewritten in place: bytes are appended, made durable with
//! one `fdatasync` per batch, and only then does the index learn where they
//! are. Bytes a crash left behind after the last sync are unreferenced and
//! harmless; `gc` copies live chunks out of packs worth compacting.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"SVRNPK01";

/// Bytes written to a file before its writeback is started.
pub const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts writing `len` bytes of `f` from `offset` to disk, without
/// waiting. Large writes kicked this way in steps of [`WRITEBACK_STEP`]
/// reach the disk as they are made rather than in one burst at the sync,
/// and a burst is what an agent's small `fsync` would otherwise wait
/// behind in the disk's queue. Advice only: a failure changes nothing.
pub fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a system call on a descriptor `f` owns; no memory is passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}
/// Where a file's writeback was last started: [`Writeback::wrote`] starts
/// it again once the furthest byte written is [`WRITEBACK_STEP`] past it.
#[derive(Debug, Clone, Copy)]
pub struct Writeback {
    kicked: u64,
}

impl Writeback {
    /// Nothing started yet; writing begins at `offset`.
    pub fn from(offset: u64) -> Self {
        Writeback { kicked: offset }
    }

    /// Notes that `f` now holds bytes up to `end`.
    pub fn wrote(&mut self, f: &File, end: u64) {
        if end >= self.kicked + WRITEBACK_STEP {
            start_writeback(f, self.kicked, end - self.kicked);
            self.kicked = end;
        }
    }
}

/// A pack is closed and a new one started past this size.
pub const PACK_TARGET_SIZE: u64 = 512 * 1024 * 1024;

/// Where a sealed chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Pack number.
    pub pack: u32,
    /// Byte offset of the sealed chunk in the pack.
    pub offset: u64,
    /// Length of the sealed chunk.
    pub len: u32,
}

/// The directory of pack files, with one open pack for appending.
pub struct Packs {
    dir: PathBuf,
    writer: Option<(u32, File, u64)>,
    dirty: bool,
    /// A write or sync failed (a full disk): the next append starts a new
    /// pack, so no offset is ever computed from a file with a torn tail.
    broken: bool,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// The open pack's writeback.
    writeback: Writeback,
}

impl Packs {
    /// Opens (creating if needed) the pack directory.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        Ok(Packs {
            dir: dir.to_owned(),
            writer: None,
            dirty: false,
            broken: false,
            readers: Mutex::new(HashMap::new()),
            writeback: Writeback::from(0),
        })
    }

    /// The pack directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of pack `n`.
    pub fn path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("pack-{n:08}.pack"))
    }

    /// Numbers of all packs on disk, ascending.
    pub fn list(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("pack-")
                .and_then(|s| s.strip_suffix(".pack"))
            {
                if let Ok(n) = n.parse() {
                    out.push(n);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn start_pack(&mut self, n: u32) -> Result<()> {
        let path = self.path(n);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len == 0 {
            f.write_all(MAGIC).map_err(|e| Error::io(&path, e))?;
            len = MAGIC.len() as u64;
            crate::fsync_parent(&path)?;
        }
        self.writer = Some((n, f, len));
        self.writeback = Writeback::from(len);
        Ok(())
    }

    /// Appends a sealed chunk. It is durable only after [`Packs::sync`].
    ///
    /// When the write fails (a full disk), the pack is cut back to its last
    /// good length, closed, and the next append starts a new pack: the
    /// caller must forget every location it got since the last successful
    /// [`Packs::sync`] (see `Store::append_sealed`).
    pub fn append(&mut self, sealed: &[u8]) -> Result<Location> {
        if self.writer.is_none() {
            let last = self.list()?.last().copied();
            let n = match last {
                Some(n) if self.broken => n + 1,
                Some(n) => n,
                None => 0,
            };
            self.start_pack(n)?;
            self.broken = false;
        }
        if let Some((n, _, len)) = &self.writer {
            if *len >= PACK_TARGET_SIZE {
                let next = n + 1;
                self.sync()?;
                self.start_pack(next)?;
            }
        }
        let (n, f, len) = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::Corrupt("no open pack".into()))?;
        let offset = *len;
        if let Err(e) = f.write_all(sealed) {
            // Best effort: the torn tail is never referenced either way.
            let _ = f.set_len(offset);
            self.writer = None;
            self.broken = true;
            self.dirty = false;
            return Err(Error::io(&self.dir, e));
        }
        *len += sealed.len() as u64;
        self.writeback.wrote(f, *len);
        self.dirty = true;
        let len = u32::try_from(sealed.len())
            .map_err(|_| Error::Corrupt("sealed chunk too large".into()))?;
        Ok(Location {
            pack: *n,
            offset,
            len,
        })
    }

    /// Makes every appended byte durable. A failed sync may have lost
    /// them (the kernel drops dirty pages it could not write, and the next
    /// sync reports success): the pack is closed, the next append starts a
    /// new one, and the caller forgets every unsynced location.
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            if let Some((_, f, _)) = &self.writer {
                if let Err(e) = f.sync_data() {
                    self.writer = None;
                    self.broken = true;
                    self.dirty = false;
                    return Err(Error::io(&self.dir, e));
                }
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Closes the open pack so the next append starts pack `n` (used by gc).
    pub fn roll_to(&mut self, n: u32) -> Result<()> {
        self.sync()?;
        self.start_pack(n)
    }

    /// Reads a sealed chunk.
    pub fn read(&self, loc: Location) -> Result<Vec<u8>> {
        let file = {
            let mut readers = self
                .readers
                .lock()
                .map_err(|_| Error::Corrupt("pack reader lock poisoned".into()))?;
            match readers.get(&loc.pack) {
                Some(f) => f.clone(),
                None => {
                    let path = self.path(loc.pack);
                    let f = Arc::new(File::open(&path).map_err(|e| Error::io(&path, e))?);
                    readers.insert(loc.pack, f.clone());
                    f
                }
            }
        };
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| Error::io(&self.path(loc.pack), e))?;
        Ok(buf)
    }

    /// Deletes a pack whose chunks have all moved elsewhere.
    pub fn remove(&mut self, n: u32) -> Result<()> {
        if let Ok(mut readers) = self.readers.lock() {
            readers.remove(&n);
        }
        if matches!(&self.writer, Some((w, _, _)) if *w == n) {
            self.writer = None;
        }
        let path = self.path(n);
        fs::remove_file(&path).map_err(|e| Error::io(&path, e))
    }

    /// Size in bytes of pack `n`.
    pub fn size(&self, n: u32) -> Result<u64> {
        let path = self.path(n);
        Ok(fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len())
    }
}
