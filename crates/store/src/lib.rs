//! Sovryn's store: everything a node keeps about its folder, and nothing
//! about the network or agents.
//!
//! * [`chunk`]: content-defined chunks named by keyed BLAKE3, sealed with
//!   zstd + XChaCha20-Poly1305.
//! * [`pack`]: append-only pack files holding sealed chunks.
//! * [`Store`]: the SQLite (WAL) index over packs, the current state of each
//!   path with its version vector and change-log sequence, the per-path
//!   version history, and the FTS5 full-text index.
//! * [`epochs`]: the chunk keys a folder moves to after a revocation.
//! * [`keys`]: the master key, what derives from it, and its key file.
//! * [`retention`]: which old versions `gc` prunes.
//!
//! Invariant: an index row never points at bytes that are not durable. Chunk
//! bytes are appended and synced before the transaction naming them commits.

mod aead;
pub mod blob;
pub mod chunk;
pub mod epochs;
pub mod keys;
pub mod model;
pub mod pack;
mod prepared;
pub mod retention;
mod store;
pub mod vv;

use std::path::{Path, PathBuf};

pub use chunk::{ChunkCodec, ChunkId, SealedChunk};
pub use keys::{KeyFile, MasterKey};
pub use model::{
    short_ids, version_id, Change, Child, DiskStat, Entry, EntryKind, FileRecord, SearchHit, Stats,
    VersionRecord,
};
pub use prepared::PreparedContent;
pub use retention::RetentionPolicy;
pub use store::{
    Access, DurableChunks, GcReport, IndexMarker, Ingested, Store, VerifyReport, ANNOUNCE_BYTES,
};
pub use vv::{Causality, VersionVector};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An I/O error while reading a caller's stream.
    #[error("reading input: {0}")]
    Read(#[from] std::io::Error),
    /// SQLite failed.
    #[error("index database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Stored data failed a check.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A key could not be read or used.
    #[error("key: {0}")]
    BadKey(String),
    /// The key is passphrase-protected and no passphrase was given.
    #[error("the store is locked: run 'sovryn unlock' or set SOVRYN_PASSPHRASE_FILE")]
    Locked,
    /// The passphrase (or recovery code) does not open the key.
    #[error("wrong passphrase or recovery code")]
    WrongPassphrase,
    /// Another process is writing this store.
    #[error(
        "another sovryn process is writing this store ({0}); stop it or use the running daemon"
    )]
    Busy(PathBuf),
    /// A chunk the caller needs is not in the store.
    #[error("chunk {0} is not in the store")]
    MissingChunk(ChunkId),
    /// No such path or version.
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fsyncs the directory holding `path`, so a create or rename in it is durable.
pub fn fsync_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        let dir = std::fs::File::open(parent).map_err(|e| Error::io(parent, e))?;
        dir.sync_all().map_err(|e| Error::io(parent, e))?;
    }
    Ok(())
}

/// Takes an exclusive lock on the file `path` (created, mode 0600),
/// waiting for whoever holds it; held until the returned file is dropped.
pub fn lock_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok(lock)
}

/// Runs `f` holding an exclusive lock on the file `path` ([`lock_file`]),
/// so two processes that change one file do it one after the other.
pub fn with_file_lock<T, E: From<Error>>(
    path: &Path,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let lock = lock_file(path)?;
    let out = f();
    drop(lock);
    out
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
