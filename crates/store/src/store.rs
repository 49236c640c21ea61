//! The [`Store`]: chunk storage plus the SQLite index of paths, versions and text.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkCodec, ChunkId};
use crate::epochs::EpochSecret;
use crate::keys::MasterKey;
use crate::model::{
    Change, DiskStat, Entry, EntryKind, FileRecord, SearchHit, Stats, VersionRecord,
};
use crate::pack::{Location, Packs};
use crate::retention::RetentionPolicy;
use crate::vv::VersionVector;
use crate::{Error, Result};
use schema::{add_listing_columns, has_listing_columns, put_meta, LISTING_UPTO, SCHEMA};

/// Flush pending chunks to the index once this many new bytes are buffered,
/// so a crash in a long ingest loses at most this much work.
const FLUSH_BYTES: u64 = 256 * 1024 * 1024;
/// The same for chunks received from peers: a sync killed mid-way fetches
/// again at most this much.
const RECEIVED_FLUSH_BYTES: u64 = 128 * 1024 * 1024;
/// A large file being ingested for peers that listen is made durable in
/// steps of this many bytes, each announced ([`Store::ingest_large`]).
pub const ANNOUNCE_BYTES: u64 = 32 * 1024 * 1024;
/// Hears which chunks of a file being ingested are durable: the index of
/// the first, then each id with its plaintext length, in file order.
pub type DurableChunks<'a> = dyn FnMut(usize, &[(ChunkId, u32)]) + 'a;
/// Chunks hashed and sealed in parallel per batch.
const BATCH_CHUNKS: usize = 32;

/// Whether a store is opened for writing (which takes the home's lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Queries only; runs beside a writer.
    ReadOnly,
    /// Exclusive writer.
    ReadWrite,
}

/// A file's content as stored by [`Store::ingest`].
#[derive(Debug, Clone, Default)]
pub struct Ingested {
    /// Chunk ids in order.
    pub chunks: Vec<ChunkId>,
    /// Total bytes read.
    pub size: u64,
    /// The content as text, when UTF-8 without NUL and under the text limit.
    pub text: Option<String>,
    /// Bytes of chunks that were new to the store.
    pub new_bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Chunks decrypted and hashed.
    pub chunks_checked: u64,
    /// Their plaintext bytes.
    pub bytes_checked: u64,
    /// Versions and current records whose chunk lists were checked.
    pub records_checked: u64,
    /// Every problem found (empty: the store is sound).
    pub problems: Vec<String>,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcReport {
    /// Versions pruned by the retention policy.
    pub versions_pruned: u64,
    /// Chunks no longer referenced, removed from the index.
    pub chunks_removed: u64,
    /// Packs rewritten to drop dead chunks.
    pub packs_rewritten: u64,
    /// Bytes of pack files before and after.
    pub pack_bytes_before: u64,
    /// Bytes of pack files after.
    pub pack_bytes_after: u64,
}

/// A node's store, opened with its master key.
pub struct Store {
    db: Connection,
    codec: ChunkCodec,
    packs: Packs,
    pending: HashMap<ChunkId, (Location, u32)>,
    pending_bytes: u64,
    access: Access,
    lock: Option<File>,
    /// Whether `files` has the columns a listing reads (`mode`, `mtime_ns`,
    /// `author`, `target`); an index made before them and opened read-only
    /// is listed from its entries' JSON instead.
    listing_columns: bool,
}

fn lock_exclusive(path: &Path) -> Result<File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is touched.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Busy(path.to_owned()));
    }
    Ok(f)
}

fn encode_entry(entry: &Entry) -> Result<(String, Vec<u8>)> {
    let mut bare = entry.clone();
    let chunks = std::mem::take(&mut bare.chunks);
    let json = serde_json::to_string(&bare).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut blob = Vec::with_capacity(chunks.len() * 32);
    for c in &chunks {
        blob.extend_from_slice(&c.0);
    }
    Ok((json, blob))
}

fn decode_entry(json: &str, blob: &[u8]) -> rusqlite::Result<Entry> {
    let mut e: Entry = serde_json::from_str(json).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(err))
    })?;
    e.chunks = blob
        .chunks_exact(32)
        .map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            ChunkId(a)
        })
        .collect();
    Ok(e)
}

fn add_ids(out: &mut std::collections::HashSet<ChunkId>, blob: &[u8]) {
    for c in blob.chunks_exact(32) {
        let mut a = [0u8; 32];
        a.copy_from_slice(c);
        out.insert(ChunkId(a));
    }
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
    }
}

/// The kind stored in `files.kind` (see [`kind_name`]).
fn kind_of_name(name: &str) -> EntryKind {
    match name {
        "dir" => EntryKind::Dir,
        "symlink" => EntryKind::Symlink,
        _ => EntryKind::File,
    }
}

const FILE_COLS: &str = "path, seq, label, entry, chunks, disk";

/// `reader`'s chunks in batches of [`BATCH_CHUNKS`] (the last may be
/// shorter); a read error ends them.
/// Keeps a file's bytes as text while they may still be text: at most
/// the limit, UTF-8, no NUL.
pub(crate) struct TextKeeper {
    limit: u64,
    text: Option<Vec<u8>>,
}

impl TextKeeper {
    pub(crate) fn new(limit: u64) -> Self {
        TextKeeper {
            limit,
            text: (limit > 0).then(Vec::new),
        }
    }

    /// Adds the next piece; `size` is the bytes read so far, this piece included.
    pub(crate) fn add(&mut self, data: &[u8], size: u64) {
        if size > self.limit {
            self.text = None;
        } else if let Some(t) = &mut self.text {
            t.extend_from_slice(data);
        }
    }

    pub(crate) fn finish(self) -> Option<String> {
        self.text
            .filter(|t| !t.contains(&0))
            .and_then(|t| String::from_utf8(t).ok())
    }
}

fn batches<'a, R: Read + 'a>(
    codec: &'a ChunkCodec,
    reader: R,
) -> impl Iterator<Item = std::io::Result<Vec<Vec<u8>>>> + 'a {
    let mut chunks = codec.chunker(reader);
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut batch = Vec::with_capacity(BATCH_CHUNKS);
        while batch.len() < BATCH_CHUNKS {
            match chunks.next() {
                Some(Ok(c)) => batch.push(c.data),
                Some(Err(e)) => {
                    done = true;
                    return Some(Err(match e {
                        fastcdc::v2020::Error::IoError(io) => io,
                        other => std::io::Error::other(other.to_string()),
                    }));
                }
                None => {
                    done = true;
                    break;
                }
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    })
}

/// The seal epochs index `db` keeps, opened under `wrap` (none in an
/// index made before epochs).
fn epochs_in(db: &Connection, wrap: &[u8; 32]) -> Result<Vec<EpochSecret>> {
    let has_table: bool = db.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'seal_epochs'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_table {
        return Ok(Vec::new());
    }
    let mut stmt = db.prepare("SELECT created_ms, sealed FROM seal_epochs")?;
    let epochs = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
        .map(|row| {
            let (created, sealed) = row?;
            EpochSecret::unwrap(wrap, created as u64, &sealed)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(epochs)
}

fn file_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    let json: String = row.get(3)?;
    let blob: Vec<u8> = row.get(4)?;
    let disk: Option<String> = row.get(5)?;
    Ok(FileRecord {
        path: row.get(0)?,
        seq: row.get::<_, i64>(1)? as u64,
        label: row.get::<_, i64>(2)? as u64,
        entry: decode_entry(&json, &blob)?,
        disk: disk.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    let json: String = row.get(2)?;
    let blob: Vec<u8> = row.get(3)?;
    Ok(VersionRecord {
        path: row.get(0)?,
        label: row.get::<_, i64>(1)? as u64,
        entry: decode_entry(&json, &blob)?,
    })
}

/// Escapes a user's words into an FTS5 query that matches all of them.
fn fts_query(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{w}\""))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Whether `path` is `prefix` or lies under it (`""` is the root).
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

mod maintenance;
mod queries;
mod schema;
mod snapshot;
pub use snapshot::IndexMarker;

impl Store {
    /// Opens (creating on first use) the store in `home` under `master`.
    pub fn open(home: &Path, master: &MasterKey, access: Access) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| Error::io(home, e))?;
        let lock = match access {
            Access::ReadWrite => Some(lock_exclusive(&home.join("store.lock"))?),
            Access::ReadOnly => None,
        };
        let db_path = home.join("index.db");
        if access == Access::ReadWrite {
            // Created 0600 before SQLite opens it (its WAL and shared-memory
            // files take the database's mode): it holds plaintext words.
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&db_path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&db_path, e)),
            }
        }
        let mut db = Connection::open(&db_path)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a process crash loses nothing committed; an OS
        // crash may lose the last commits but never corrupts (packs are synced first).
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        if access == Access::ReadWrite {
            db.execute_batch(SCHEMA)?;
            add_listing_columns(&mut db)?;
        }
        let listing_columns = has_listing_columns(&db)?;
        let codec = ChunkCodec::new(master.derive());
        let store = Store {
            db,
            codec,
            packs: Packs::open(&home.join("packs"))?,
            pending: HashMap::new(),
            pending_bytes: 0,
            access,
            lock,
            listing_columns,
        };
        store.load_epochs()?;
        let folder = store.meta("folder_id")?;
        match folder {
            Some(f) if f != store.codec.keys().folder_id => {
                return Err(Error::BadKey(
                    "this key does not belong to this store".into(),
                ))
            }
            None if access == Access::ReadWrite => {
                store.set_meta("folder_id", &store.codec.keys().folder_id)?
            }
            _ => {}
        }
        Ok(store)
    }

    /// The index's file.
    pub(crate) fn db_path(&self) -> Result<PathBuf> {
        self.db
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| Error::Corrupt("the index has no file".into()))
    }

    /// A second, read-only handle on the same index and packs, for queries
    /// (change log, chunk reads) that should not wait for this handle's
    /// writes. It sees what is committed; chunks appended but not yet
    /// flushed or committed are not visible through it.
    pub fn reader(&self) -> Result<Store> {
        let db = Connection::open(self.db_path()?)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "query_only", "ON")?;
        Ok(Store {
            db,
            codec: self.codec.clone(),
            packs: Packs::open(self.packs.dir())?,
            pending: HashMap::new(),
            pending_bytes: 0,
            access: Access::ReadOnly,
            lock: None,
            listing_columns: self.listing_columns,
        })
    }

    /// Gives up writing: flushes what is pending, then releases the home's
    /// write lock so another process can open the store for writing. This
    /// handle stays usable for queries only.
    pub fn release(&mut self) -> Result<()> {
        if self.access == Access::ReadWrite {
            self.flush()?;
            self.access = Access::ReadOnly;
        }
        self.lock = None;
        Ok(())
    }

    /// The codec (ids, sealing) of this folder.
    pub fn codec(&self) -> &ChunkCodec {
        &self.codec
    }

    /// Reads the seal epochs the index keeps into the codec. An index
    /// made before epochs (opened read-only) has none.
    fn load_epochs(&self) -> Result<()> {
        let epochs = epochs_in(&self.db, &self.codec.keys().epoch_wrap)?;
        self.codec.add_epochs(&epochs);
        Ok(())
    }

    /// Keeps the seal epochs not known yet (from a member, or made here),
    /// durably, then seals new chunks under the newest; how many were new.
    pub fn add_epochs(&mut self, epochs: &[EpochSecret]) -> Result<usize> {
        self.writable()?;
        let known: std::collections::HashSet<_> =
            self.codec.epochs().iter().map(|e| e.tag()).collect();
        let mut fresh: Vec<&EpochSecret> = Vec::new();
        for e in epochs {
            if !known.contains(&e.tag()) && !fresh.iter().any(|f| f.tag() == e.tag()) {
                fresh.push(e);
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        if known.len() + fresh.len() > crate::epochs::MAX_EPOCHS {
            return Err(Error::Corrupt(format!(
                "more than {} seal epochs",
                crate::epochs::MAX_EPOCHS
            )));
        }
        let wrap = self.codec.keys().epoch_wrap;
        let tx = self.db.transaction()?;
        for e in &fresh {
            let created = i64::try_from(e.created_ms)
                .map_err(|_| Error::Corrupt("a seal epoch from the far future".into()))?;
            tx.execute(
                "INSERT INTO seal_epochs(created_ms, sealed) VALUES (?1, ?2)",
                rusqlite::params![created, e.wrap(&wrap)],
            )?;
        }
        tx.commit()?;
        // In use only once durable: no chunk is sealed under an epoch a
        // crash could forget.
        let owned: Vec<EpochSecret> = fresh.into_iter().cloned().collect();
        Ok(self.codec.add_epochs(&owned))
    }

    /// Starts a new seal epoch (after a revocation), made now and not
    /// before `not_before_ms`.
    pub fn rotate_seal_key(&mut self, not_before_ms: u64) -> Result<EpochSecret> {
        let now_ms = (crate::now_ns() / 1_000_000).max(0) as u64;
        // Newer than every epoch known, even one from a clock ahead of ours.
        let newest = self.codec.epochs().last().map_or(0, |e| e.created_ms + 1);
        let epoch = EpochSecret::generate(now_ms.max(newest).max(not_before_ms));
        self.add_epochs(std::slice::from_ref(&epoch))?;
        Ok(epoch)
    }

    /// This folder's public id (same on every node of the mesh).
    pub fn folder_id(&self) -> &str {
        &self.codec.keys().folder_id
    }

    pub(crate) fn writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::Corrupt("store opened read-only".into())),
        }
    }

    /// A value from the store's key-value metadata.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let r = self
            .db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional();
        match r {
            Ok(v) => Ok(v),
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a metadata value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        put_meta(&self.db, key, value)
    }

    fn location(&self, id: &ChunkId) -> Result<Option<(Location, u32)>> {
        if let Some(p) = self.pending.get(id) {
            return Ok(Some(*p));
        }
        let mut stmt = self
            .db
            .prepare_cached("SELECT pack, offset, len, raw_len FROM chunks WHERE id = ?1")?;
        Ok(stmt
            .query_row([&id.0[..]], |r| {
                Ok((
                    Location {
                        pack: r.get::<_, i64>(0)? as u32,
                        offset: r.get::<_, i64>(1)? as u64,
                        len: r.get::<_, i64>(2)? as u32,
                    },
                    r.get::<_, i64>(3)? as u32,
                ))
            })
            .optional()?)
    }

    /// Whether the store holds chunk `id`.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.location(id)?.is_some())
    }

    /// Chunk `id` as stored (sealed: encrypted, maybe compressed) and its
    /// plaintext length, without opening it. Nodes of one mesh share the
    /// folder key, so a peer can check and store these bytes as they are.
    pub fn read_sealed(&self, id: &ChunkId) -> Result<crate::chunk::SealedChunk> {
        let (loc, raw_len) = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        Ok(crate::chunk::SealedChunk {
            id: *id,
            raw_len,
            sealed: self.packs.read(loc)?,
        })
    }

    /// The plaintext length of chunk `id`.
    pub fn chunk_len(&self, id: &ChunkId) -> Result<u64> {
        let (_, raw_len) = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        Ok(u64::from(raw_len))
    }

    /// The plaintext of chunk `id`, verified against the id.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (loc, raw_len) = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        let sealed = self.packs.read(loc)?;
        self.codec.open(id, &sealed, raw_len)
    }

    /// Writes a file state's content to `out`. Chunks are read in groups
    /// and opened (decrypted, checked) in parallel, then written in order.
    pub fn write_content(&self, entry: &Entry, out: &mut dyn Write) -> Result<u64> {
        let mut n = 0;
        for group in entry.chunks.chunks(BATCH_CHUNKS) {
            let sealed = group
                .iter()
                .map(|id| self.read_sealed(id))
                .collect::<Result<Vec<_>>>()?;
            let codec = &self.codec;
            let plain: Vec<Vec<u8>> = if sealed.len() == 1 {
                sealed
                    .iter()
                    .map(|s| codec.open(&s.id, &s.sealed, s.raw_len))
                    .collect::<Result<_>>()?
            } else {
                sealed
                    .par_iter()
                    .map(|s| codec.open(&s.id, &s.sealed, s.raw_len))
                    .collect::<Result<_>>()?
            };
            for data in plain {
                out.write_all(&data)?;
                n += data.len() as u64;
            }
        }
        Ok(n)
    }

    /// A file state's whole content in memory (callers cap the size).
    pub fn content(&self, entry: &Entry) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(entry.size as usize);
        self.write_content(entry, &mut out)?;
        Ok(out)
    }

    pub(crate) fn append_sealed(&mut self, sealed: crate::chunk::SealedChunk) -> Result<()> {
        let loc = match self.packs.append(&sealed.sealed) {
            Ok(loc) => loc,
            Err(e) => {
                self.forget_unsynced();
                return Err(e);
            }
        };
        self.pending_bytes += sealed.sealed.len() as u64;
        self.pending.insert(sealed.id, (loc, sealed.raw_len));
        Ok(())
    }

    /// Stores a chunk received from elsewhere, checking it against `id`.
    /// Returns false when it was already present.
    pub fn put_chunk(&mut self, id: &ChunkId, data: &[u8]) -> Result<bool> {
        self.writable()?;
        if self.codec.id_of(data) != *id {
            return Err(Error::Corrupt(format!(
                "received chunk does not hash to {id}"
            )));
        }
        if self.has_chunk(id)? {
            return Ok(false);
        }
        let sealed = self.codec.seal(*id, data)?;
        self.append_sealed(sealed)?;
        self.flush_if_full()?;
        Ok(true)
    }

    /// Appends chunks already checked and sealed by this folder's codec
    /// ([`ChunkCodec::seal_verified`], which callers may run in parallel and
    /// without holding the store). Returns how many were new. Like
    /// [`Store::put_chunk`], they become durable and indexed at the next
    /// flush or commit.
    pub fn put_sealed(&mut self, sealed: Vec<crate::chunk::SealedChunk>) -> Result<usize> {
        self.writable()?;
        let mut fresh = 0;
        for s in sealed {
            if self.has_chunk(&s.id)? {
                continue;
            }
            self.append_sealed(s)?;
            fresh += 1;
        }
        if self.pending_bytes >= RECEIVED_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(fresh)
    }

    fn store_batch(&mut self, batch: &mut Vec<Vec<u8>>, out: &mut Ingested) -> Result<()> {
        let codec = &self.codec;
        let ids: Vec<ChunkId> = if batch.len() == 1 {
            vec![codec.id_of(&batch[0])]
        } else {
            batch.par_iter().map(|d| codec.id_of(d)).collect()
        };
        let mut fresh = Vec::new();
        let mut seen = HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            if seen.insert(*id) && !self.has_chunk(id)? {
                fresh.push(i);
            }
        }
        let sealed: Vec<crate::chunk::SealedChunk> = if fresh.len() <= 1 {
            fresh
                .iter()
                .map(|&i| codec.seal(ids[i], &batch[i]))
                .collect::<Result<_>>()?
        } else {
            fresh
                .par_iter()
                .map(|&i| codec.seal(ids[i], &batch[i]))
                .collect::<Result<_>>()?
        };
        for s in sealed {
            out.new_bytes += s.raw_len as u64;
            self.append_sealed(s)?;
        }
        out.chunks.extend(ids);
        batch.clear();
        self.flush_if_full()
    }

    /// Flushes once enough sealed bytes wait for it.
    pub(crate) fn flush_if_full(&mut self) -> Result<()> {
        if self.pending_bytes >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// [`Store::ingest`] for large inputs: reading and chunking run on a
    /// thread of their own, a few batches ahead of naming, sealing and
    /// appending, so both cores stay busy.
    ///
    /// With `durable`, the chunks are also made durable and indexed every
    /// [`ANNOUNCE_BYTES`] of input, and `durable` hears which chunks of
    /// the file those were (index of the first, then each id with its
    /// plaintext length, in file order): peers can fetch them while the
    /// rest is read. The file's record still comes only at the commit.
    pub fn ingest_large<R: Read + Send>(
        &mut self,
        reader: R,
        text_limit: u64,
        durable: Option<&mut DurableChunks<'_>>,
    ) -> Result<Ingested> {
        self.writable()?;
        let codec = self.codec.clone();
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            scope.spawn(move || {
                for batch in batches(&codec, reader) {
                    let failed = batch.is_err();
                    // A closed channel: the ingest stopped (an error while storing).
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            self.store_batches(rx, text_limit, durable)
        })
    }

    /// Chunks, names, seals and appends everything `reader` yields. The
    /// chunks become durable and indexed at the next [`Store::flush`] or
    /// [`Store::commit`]. Keeps the text when it is UTF-8 and at most `text_limit` bytes.
    pub fn ingest<R: Read>(&mut self, reader: R, text_limit: u64) -> Result<Ingested> {
        self.writable()?;
        let codec = self.codec.clone();
        self.store_batches(batches(&codec, reader), text_limit, None)
    }

    /// Names, seals and appends each batch of chunks, in order, keeping
    /// the text when it is UTF-8 and at most `text_limit` bytes.
    fn store_batches(
        &mut self,
        batches: impl IntoIterator<Item = std::io::Result<Vec<Vec<u8>>>>,
        text_limit: u64,
        mut durable: Option<&mut DurableChunks<'_>>,
    ) -> Result<Ingested> {
        let mut out = Ingested::default();
        let mut text = TextKeeper::new(text_limit);
        // What is still to be announced: from chunk `told`, these lengths.
        let mut told = 0usize;
        // A step left unannounced ends the announcing: steps must follow
        // each other.
        let mut stopped = false;
        let mut new_at_step = 0u64;
        let mut lens: Vec<u32> = Vec::new();
        let mut unannounced = 0u64;
        for batch in batches {
            let mut batch = batch.map_err(Error::Read)?;
            for data in &batch {
                out.size += data.len() as u64;
                if durable.is_some() {
                    lens.push(data.len() as u32);
                    unannounced += data.len() as u64;
                }
                text.add(data, out.size);
            }
            self.store_batch(&mut batch, &mut out)?;
            if let Some(tell) = durable.as_deref_mut() {
                if unannounced >= ANNOUNCE_BYTES {
                    // A step of mostly chunks this store had (a large file
                    // edited in place) is not announced: peers most likely
                    // have them too, and the ids would only cost the wire.
                    stopped |= (out.new_bytes - new_at_step) * 2 < unannounced;
                    if !stopped {
                        self.flush()?;
                        let ids = &out.chunks[told..];
                        let chunks: Vec<(ChunkId, u32)> =
                            ids.iter().copied().zip(lens.drain(..)).collect();
                        tell(told, &chunks);
                    }
                    lens.clear();
                    told = out.chunks.len();
                    new_at_step = out.new_bytes;
                    unannounced = 0;
                }
            }
        }
        out.text = text.finish();
        Ok(out)
    }

    fn insert_pending(
        pending: &HashMap<ChunkId, (Location, u32)>,
        tx: &Transaction<'_>,
    ) -> Result<()> {
        let mut stmt = tx.prepare_cached("INSERT OR IGNORE INTO chunks(id, pack, offset, len, raw_len) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (id, (loc, raw)) in pending {
            stmt.execute(params![
                &id.0[..],
                loc.pack as i64,
                loc.offset as i64,
                loc.len as i64,
                *raw as i64
            ])?;
        }
        Ok(())
    }

    /// Forgets chunks appended since the last sync after a pack write or
    /// sync failed: their bytes may not be on disk, so no index row may
    /// ever name them. They are stored again when next needed.
    fn forget_unsynced(&mut self) {
        if !self.pending.is_empty() {
            tracing::warn!(
                "a pack write failed: {} chunks not yet durable are dropped and will be stored again",
                self.pending.len()
            );
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Syncs the packs; on failure forgets what was not durable.
    /// Makes the chunks appended so far durable (one sync of the open
    /// pack) without indexing them: a commit or flush indexes them.
    pub fn sync_chunks(&mut self) -> Result<()> {
        self.sync_packs()
    }

    fn sync_packs(&mut self) -> Result<()> {
        let r = self.packs.sync();
        if r.is_err() {
            self.forget_unsynced();
        }
        r
    }

    /// Makes appended chunks durable (one sync), then indexes them (one transaction).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.sync_packs()?;
        let tx = self.db.transaction()?;
        Self::insert_pending(&self.pending, &tx)?;
        tx.commit()?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// Records new states for paths: each becomes the path's current state
    /// with the next change-log sequence, and a new version `v{n}`. Chunks
    /// are synced first; everything lands in one transaction.
    pub fn commit(&mut self, changes: &[Change]) -> Result<Vec<FileRecord>> {
        self.writable()?;
        self.sync_packs()?;
        let tx = self.db.transaction()?;
        Self::insert_pending(&self.pending, &tx)?;
        let mut seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM files", [], |r| r.get(0))?;
        let mut out = Vec::with_capacity(changes.len());
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
            let mut current = tx.prepare_cached("SELECT id FROM files WHERE path = ?1")?;
            // The versions table, not the current row: history received from
            // a peer may already hold labels for a path this node never had.
            let mut last_label =
                tx.prepare_cached("SELECT COALESCE(MAX(label), 0) FROM versions WHERE path = ?1")?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO files(path, seq, label, kind, deleted, size, entry, chunks, disk,
                     mode, mtime_ns, author, target) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)
                 ON CONFLICT(path) DO UPDATE SET seq=?2, label=?3, kind=?4, deleted=?5, size=?6,
                     entry=?7, chunks=?8, disk=?9, mode=?10, mtime_ns=?11, author=?12, target=?13
                 RETURNING id",
            )?;
            let mut version = tx.prepare_cached(
                "INSERT INTO versions(path, label, size, entry, chunks) VALUES (?1,?2,?3,?4,?5)",
            )?;
            let mut fts_del = tx.prepare_cached("DELETE FROM fts WHERE rowid = ?1")?;
            let mut fts_ins =
                tx.prepare_cached("INSERT INTO fts(rowid, path, body) VALUES (?1, ?2, ?3)")?;
            for c in changes {
                for id in &c.entry.chunks {
                    if !exists.exists([&id.0[..]])? {
                        return Err(Error::MissingChunk(*id));
                    }
                }
                seq += 1;
                let prev: Option<i64> = current.query_row([&c.path], |r| r.get(0)).optional()?;
                let label = last_label.query_row([&c.path], |r| r.get::<_, i64>(0))? + 1;
                let (json, blob) = encode_entry(&c.entry)?;
                let disk = c
                    .disk
                    .map(|d| serde_json::to_string(&d))
                    .transpose()
                    .map_err(|e| Error::Corrupt(e.to_string()))?;
                let rowid: i64 = upsert.query_row(
                    params![
                        c.path,
                        seq,
                        label,
                        kind_name(c.entry.kind),
                        c.entry.deleted,
                        c.entry.size as i64,
                        json,
                        blob,
                        disk,
                        c.entry.mode,
                        c.entry.mtime_ns,
                        c.entry.author,
                        c.entry.target
                    ],
                    |r| r.get(0),
                )?;
                version.execute(params![c.path, label, c.entry.size as i64, json, blob])?;
                if prev.is_some() {
                    fts_del.execute([rowid])?;
                }
                if let (Some(text), false) = (&c.text, c.entry.deleted) {
                    fts_ins.execute(params![rowid, c.path, text])?;
                }
                out.push(FileRecord {
                    path: c.path.clone(),
                    seq: seq as u64,
                    label: label as u64,
                    entry: c.entry.clone(),
                    disk: c.disk,
                });
            }
        }
        // The rows just written carry their listing columns.
        if !changes.is_empty() {
            put_meta(&tx, LISTING_UPTO, &seq.to_string())?;
        }
        tx.commit()?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(out)
    }

    /// Notes what a path looks like on disk without recording a new version
    /// (a touch that left content alone, or a file the puller just wrote).
    pub fn set_disk_stat(&self, path: &str, disk: Option<DiskStat>) -> Result<()> {
        let disk = disk
            .map(|d| serde_json::to_string(&d))
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        self.db.execute(
            "UPDATE files SET disk = ?2 WHERE path = ?1",
            params![path, disk],
        )?;
        Ok(())
    }

    /// Re-indexes a path's text for search without a new version.
    pub fn index_text(&self, path: &str, text: Option<&str>) -> Result<()> {
        let rowid: Option<i64> = self
            .db
            .query_row("SELECT id FROM files WHERE path = ?1", [path], |r| r.get(0))
            .optional()?;
        if let Some(rowid) = rowid {
            self.db
                .execute("DELETE FROM fts WHERE rowid = ?1", [rowid])?;
            if let Some(t) = text {
                self.db.execute(
                    "INSERT INTO fts(rowid, path, body) VALUES (?1, ?2, ?3)",
                    params![rowid, path, t],
                )?;
            }
        }
        Ok(())
    }

    /// Remembers the version vector each peer last announced for paths
    /// (`(path, vector)` pairs), replacing what it announced before.
    pub fn record_peer_seen(&mut self, peer: &str, seen: &[(String, VersionVector)]) -> Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO peer_seen(peer, path, vv) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(peer, path) DO UPDATE SET vv = excluded.vv",
            )?;
            for (path, vv) in seen {
                let vv = serde_json::to_string(vv).map_err(|e| Error::Corrupt(e.to_string()))?;
                stmt.execute(params![peer, path, vv])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The version vector `peer` last announced for `path`, if any.
    pub fn peer_seen(&self, peer: &str, path: &str) -> Result<Option<VersionVector>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT vv FROM peer_seen WHERE peer = ?1 AND path = ?2")?;
        let vv: Option<String> = stmt.query_row([peer, path], |r| r.get(0)).optional()?;
        vv.map(|v| serde_json::from_str(&v).map_err(|e| Error::Corrupt(e.to_string())))
            .transpose()
    }

    /// Adds older states of `path` (oldest first) to its history, as the
    /// next labels, skipping any whose version vector a kept version already
    /// has. Only for a path with no current state yet, so history labels
    /// stay below the current one. The disk is untouched; every chunk must
    /// be stored. Returns how many were added.
    pub fn add_history(&mut self, path: &str, entries: &[Entry]) -> Result<usize> {
        self.writable()?;
        if self.file(path)?.is_some() {
            return Ok(0);
        }
        self.sync_packs()?;
        let known: Vec<VersionVector> = self
            .versions(path)?
            .into_iter()
            .map(|v| v.entry.vv)
            .collect();
        let tx = self.db.transaction()?;
        Self::insert_pending(&self.pending, &tx)?;
        let mut added = 0;
        {
            let mut exists = tx.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
            let mut version = tx.prepare_cached(
                "INSERT INTO versions(path, label, size, entry, chunks) VALUES (?1,?2,?3,?4,?5)",
            )?;
            let mut label: i64 = tx.query_row(
                "SELECT COALESCE(MAX(label), 0) FROM versions WHERE path = ?1",
                [path],
                |r| r.get(0),
            )?;
            for e in entries {
                if known.contains(&e.vv) {
                    continue;
                }
                for id in &e.chunks {
                    if !exists.exists([&id.0[..]])? {
                        return Err(Error::MissingChunk(*id));
                    }
                }
                label += 1;
                let (json, blob) = encode_entry(e)?;
                version.execute(params![path, label, e.size as i64, json, blob])?;
                added += 1;
            }
        }
        tx.commit()?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(added)
    }

    /// The directory of pack files (for tools and tests).
    pub fn pack_dir(home: &Path) -> PathBuf {
        home.join("packs")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.access == Access::ReadWrite {
            if let Err(e) = self.flush() {
                tracing::warn!("flushing chunks on close: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
