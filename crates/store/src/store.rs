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
use crate::keys::MasterKey;
use crate::model::{
    Change, DiskStat, Entry, EntryKind, FileRecord, SearchHit, Stats, VersionRecord,
};
use crate::pack::{Location, Packs};
use crate::retention::RetentionPolicy;
use crate::vv::VersionVector;
use crate::{Error, Result};

/// Flush pending chunks to the index once this many new bytes are buffered,
/// so a crash in a long ingest loses at most this much work.
const FLUSH_BYTES: u64 = 256 * 1024 * 1024;
/// The same for chunks received from peers: a sync killed mid-way fetches
/// again at most this much.
const RECEIVED_FLUSH_BYTES: u64 = 32 * 1024 * 1024;
/// Chunks hashed and sealed in parallel per batch.
const BATCH_CHUNKS: usize = 32;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
    id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
    len INTEGER NOT NULL, raw_len INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, seq INTEGER NOT NULL,
    label INTEGER NOT NULL, kind TEXT NOT NULL, deleted INTEGER NOT NULL, size INTEGER NOT NULL,
    entry TEXT NOT NULL, chunks BLOB NOT NULL, disk TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS files_seq ON files(seq);
CREATE TABLE IF NOT EXISTS versions(
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, label INTEGER NOT NULL,
    size INTEGER NOT NULL, entry TEXT NOT NULL, chunks BLOB NOT NULL, UNIQUE(path, label));
CREATE TABLE IF NOT EXISTS peer_seen(
    peer TEXT NOT NULL, path TEXT NOT NULL, vv TEXT NOT NULL, PRIMARY KEY(peer, path)) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(path UNINDEXED, body, tokenize = 'unicode61');
";

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
        let db = Connection::open(&db_path)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a process crash loses nothing committed; an OS
        // crash may lose the last commits but never corrupts (packs are synced first).
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        if access == Access::ReadWrite {
            db.execute_batch(SCHEMA)?;
        }
        let codec = ChunkCodec::new(master.derive());
        let store = Store {
            db,
            codec,
            packs: Packs::open(&home.join("packs"))?,
            pending: HashMap::new(),
            pending_bytes: 0,
            access,
            lock,
        };
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

    /// A second, read-only handle on the same index and packs, for queries
    /// (change log, chunk reads) that should not wait for this handle's
    /// writes. It sees what is committed; chunks appended but not yet
    /// flushed or committed are not visible through it.
    pub fn reader(&self) -> Result<Store> {
        let path = self
            .db
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| Error::Corrupt("the index has no file".into()))?;
        let db = Connection::open(&path)?;
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

    /// This folder's public id (same on every node of the mesh).
    pub fn folder_id(&self) -> &str {
        &self.codec.keys().folder_id
    }

    fn writable(&self) -> Result<()> {
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
        self.db.execute("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2", [key, value])?;
        Ok(())
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

    fn append_sealed(&mut self, sealed: crate::chunk::SealedChunk) -> Result<()> {
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
        if self.pending_bytes >= FLUSH_BYTES {
            self.flush()?;
        }
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
        if self.pending_bytes >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Chunks, names, seals and appends everything `reader` yields. The
    /// chunks become durable and indexed at the next [`Store::flush`] or
    /// [`Store::commit`]. Keeps the text when it is UTF-8 and at most `text_limit` bytes.
    pub fn ingest<R: Read>(&mut self, reader: R, text_limit: u64) -> Result<Ingested> {
        self.writable()?;
        let mut out = Ingested::default();
        let mut text: Option<Vec<u8>> = (text_limit > 0).then(Vec::new);
        let mut batch = Vec::with_capacity(BATCH_CHUNKS);
        for chunk in self.codec.clone().chunker(reader) {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => Error::Read(io),
                other => Error::Read(std::io::Error::other(other.to_string())),
            })?;
            out.size += chunk.data.len() as u64;
            if let Some(t) = &mut text {
                if out.size <= text_limit {
                    t.extend_from_slice(&chunk.data);
                } else {
                    text = None;
                }
            }
            batch.push(chunk.data);
            if batch.len() >= BATCH_CHUNKS {
                self.store_batch(&mut batch, &mut out)?;
            }
        }
        if !batch.is_empty() {
            self.store_batch(&mut batch, &mut out)?;
        }
        out.text = text.and_then(|t| {
            if t.contains(&0) {
                None
            } else {
                String::from_utf8(t).ok()
            }
        });
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
                "INSERT INTO files(path, seq, label, kind, deleted, size, entry, chunks, disk) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)
                 ON CONFLICT(path) DO UPDATE SET seq=?2, label=?3, kind=?4, deleted=?5, size=?6, entry=?7, chunks=?8, disk=?9
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
                        disk
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

    /// The current state of `path`.
    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        let mut stmt = self
            .db
            .prepare_cached(&format!("SELECT {FILE_COLS} FROM files WHERE path = ?1"))?;
        Ok(stmt.query_row([path], file_from_row).optional()?)
    }

    /// Current states of every path at or under `prefix` (`""`: all), in path order.
    pub fn files_under(&self, prefix: &str) -> Result<Vec<FileRecord>> {
        let prefix = prefix.trim_end_matches('/');
        // Two statements, each a plain search on the path index: an `OR`
        // with `?1 = ''` would make SQLite walk the whole table every call.
        let mut stmt = if prefix.is_empty() {
            self.db
                .prepare_cached(&format!("SELECT {FILE_COLS} FROM files ORDER BY path"))?
        } else {
            self.db.prepare_cached(&format!(
                "SELECT {FILE_COLS} FROM files WHERE path >= ?1 AND path < ?1 || '0' AND (path = ?1 OR path > ?1 || '/') ORDER BY path"
            ))?
        };
        let rows = if prefix.is_empty() {
            stmt.query_map([], file_from_row)?
        } else {
            stmt.query_map([prefix], file_from_row)?
        };
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Live (not deleted) paths at or under `prefix` (`""`: all) with their
    /// kind and size, in path order. Reads only the indexed columns, not the
    /// entries: for listings and name searches over many paths.
    pub fn live_paths_under(&self, prefix: &str) -> Result<Vec<(String, EntryKind, u64)>> {
        let prefix = prefix.trim_end_matches('/');
        let mut stmt = if prefix.is_empty() {
            self.db.prepare_cached(
                "SELECT path, kind, size FROM files WHERE deleted = 0 ORDER BY path",
            )?
        } else {
            self.db.prepare_cached(
                "SELECT path, kind, size FROM files WHERE path >= ?1 AND path < ?1 || '0' AND (path = ?1 OR path > ?1 || '/') AND deleted = 0 ORDER BY path",
            )?
        };
        let row = |r: &rusqlite::Row<'_>| {
            let kind: String = r.get(1)?;
            Ok((r.get(0)?, kind_of_name(&kind), r.get::<_, i64>(2)? as u64))
        };
        let rows = if prefix.is_empty() {
            stmt.query_map([], row)?
        } else {
            stmt.query_map([prefix], row)?
        };
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The change log without the entries: `(seq, path, kind, deleted, size)`
    /// of every path whose state changed after sequence `after`, oldest
    /// first. With `after = 0`, every recorded path. Lets a reader keep a
    /// path index current cheaply.
    #[allow(clippy::type_complexity)]
    pub fn path_changes_since(
        &self,
        after: u64,
    ) -> Result<Vec<(u64, String, EntryKind, bool, u64)>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT seq, path, kind, deleted, size FROM files WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([after as i64], |r| {
            let kind: String = r.get(2)?;
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                kind_of_name(&kind),
                r.get(3)?,
                r.get::<_, i64>(4)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Current states changed after sequence `after`, oldest first, at most `limit`.
    pub fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FileRecord>> {
        let mut stmt = self.db.prepare_cached(&format!(
            "SELECT {FILE_COLS} FROM files WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after as i64, limit as i64], file_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest change-log sequence.
    pub fn sequence(&self) -> Result<u64> {
        let s: Option<i64> = self
            .db
            .query_row("SELECT MAX(seq) FROM files", [], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(s.unwrap_or(0) as u64)
    }

    /// Every chunk id named by a kept version (current or older) of a path
    /// at or under one of `prefixes`: what a peer limited to those prefixes
    /// may be served. Reads only the chunk lists.
    pub fn chunk_ids_under(
        &self,
        prefixes: &[String],
    ) -> Result<std::collections::HashSet<ChunkId>> {
        let mut out = std::collections::HashSet::new();
        let mut stmt = self.db.prepare_cached(
            "SELECT chunks FROM versions WHERE path >= ?1 AND path < ?1 || '0' AND (path = ?1 OR path > ?1 || '/')",
        )?;
        for prefix in prefixes {
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                let mut all = self.db.prepare_cached("SELECT chunks FROM versions")?;
                let rows = all.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
                for blob in rows {
                    add_ids(&mut out, &blob?);
                }
                continue;
            }
            let rows = stmt.query_map([prefix], |r| r.get::<_, Vec<u8>>(0))?;
            for blob in rows {
                add_ids(&mut out, &blob?);
            }
        }
        Ok(out)
    }

    /// Older versions (every kept version but each path's current one), in
    /// (path, label) order after the position `after`, at most `limit`:
    /// the history a newly joined peer is sent.
    pub fn history_after(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>> {
        let (path, label) = after.unwrap_or(("", 0));
        let mut stmt = self.db.prepare_cached(
            "SELECT v.path, v.label, v.entry, v.chunks FROM versions v JOIN files f ON f.path = v.path
             WHERE v.label < f.label AND (v.path > ?1 OR (v.path = ?1 AND v.label > ?2))
             ORDER BY v.path, v.label LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![path, label as i64, limit as i64], version_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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

    /// Every kept version of `path`, newest first.
    pub fn versions(&self, path: &str) -> Result<Vec<VersionRecord>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT path, label, entry, chunks FROM versions WHERE path = ?1 ORDER BY label DESC",
        )?;
        let rows = stmt.query_map([path], version_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Version `label` of `path`.
    pub fn version(&self, path: &str, label: u64) -> Result<Option<VersionRecord>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT path, label, entry, chunks FROM versions WHERE path = ?1 AND label = ?2",
        )?;
        Ok(stmt
            .query_row(params![path, label as i64], version_from_row)
            .optional()?)
    }

    /// Full-text search, best first, limited to paths under `prefix`.
    pub fn search(&self, query: &str, prefix: &str, limit: usize) -> Result<Vec<SearchHit>> {
        let Some(q) = fts_query(query) else {
            return Ok(Vec::new());
        };
        let mut stmt = self.db.prepare_cached(
            "SELECT path, snippet(fts, 1, '[', ']', '…', 16), bm25(fts) FROM fts WHERE fts MATCH ?1 ORDER BY bm25(fts)",
        )?;
        let rows = stmt.query_map([q], |r| {
            Ok(SearchHit {
                path: r.get(0)?,
                snippet: r.get(1)?,
                rank: r.get(2)?,
            })
        })?;
        let mut out = Vec::new();
        for hit in rows {
            let hit = hit?;
            if under(&hit.path, prefix) {
                out.push(hit);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Figures for `sovryn stats`.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        let count = |kind: &str| -> Result<(u64, u64)> {
            Ok(self.db.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE kind = ?1 AND deleted = 0",
                [kind],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        };
        (s.files, s.tree_bytes) = count("file")?;
        s.dirs = count("dir")?.0;
        s.symlinks = count("symlink")?.0;
        (s.versions, s.logical_bytes) = self.db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM versions",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?;
        (s.chunks, s.unique_bytes, s.stored_bytes) = self.db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(raw_len), 0), COALESCE(SUM(len), 0) FROM chunks",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )?;
        for n in self.packs.list()? {
            s.pack_bytes += self.packs.size(n)?;
        }
        s.dedup_ratio = if s.unique_bytes > 0 {
            s.logical_bytes as f64 / s.unique_bytes as f64
        } else {
            1.0
        };
        s.compression_ratio = if s.stored_bytes > 0 {
            s.unique_bytes as f64 / s.stored_bytes as f64
        } else {
            1.0
        };
        s.sequence = self.sequence()?;
        Ok(s)
    }

    /// Checks that every chunk decrypts and hashes to its id, and that every
    /// version and current state references only chunks that exist.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let total: i64 = self
            .db
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))?;
        let mut stmt = self
            .db
            .prepare("SELECT id, pack, offset, len, raw_len FROM chunks ORDER BY pack, offset")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id = ChunkId::from_slice(&r.get::<_, Vec<u8>>(0)?)?;
            let loc = Location {
                pack: r.get::<_, i64>(1)? as u32,
                offset: r.get::<_, i64>(2)? as u64,
                len: r.get::<_, i64>(3)? as u32,
            };
            let raw_len = r.get::<_, i64>(4)? as u32;
            match self
                .packs
                .read(loc)
                .and_then(|s| self.codec.open(&id, &s, raw_len))
            {
                Ok(data) => report.bytes_checked += data.len() as u64,
                Err(e) => report.problems.push(format!(
                    "chunk {id} (pack {} @ {}): {e}",
                    loc.pack, loc.offset
                )),
            }
            report.chunks_checked += 1;
            progress(report.chunks_checked, total as u64);
        }
        for table in ["versions", "files"] {
            let mut stmt = self
                .db
                .prepare(&format!("SELECT path, chunks FROM {table}"))?;
            let mut exists = self
                .db
                .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let path: String = r.get(0)?;
                let blob: Vec<u8> = r.get(1)?;
                for c in blob.chunks_exact(32) {
                    if !exists.exists([c])? {
                        report.problems.push(format!(
                            "{table} row for {path} references missing chunk {}",
                            hex::encode(c)
                        ));
                    }
                }
                report.records_checked += 1;
            }
        }
        Ok(report)
    }

    /// Prunes versions the policy lets go (never a path's newest), drops
    /// chunks nothing references, and rewrites packs holding dead chunks.
    pub fn gc(&mut self, policy: &RetentionPolicy, now_ns: i64) -> Result<GcReport> {
        self.writable()?;
        self.flush()?;
        let mut report = GcReport::default();
        for n in self.packs.list()? {
            report.pack_bytes_before += self.packs.size(n)?;
        }
        if policy.prunes() {
            let paths: Vec<String> = {
                let mut stmt = self.db.prepare("SELECT DISTINCT path FROM versions")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let tx = self.db.transaction()?;
            for path in paths {
                let versions: Vec<(i64, i64)> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT id, entry FROM versions WHERE path = ?1 ORDER BY label DESC",
                    )?;
                    let rows = stmt.query_map([&path], |r| {
                        let json: String = r.get(1)?;
                        let e = decode_entry(&json, &[])?;
                        Ok((r.get::<_, i64>(0)?, e.time_ns))
                    })?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let times: Vec<i64> = versions.iter().map(|v| v.1).collect();
                let keep = policy.select(&times, now_ns);
                let mut del = tx.prepare_cached("DELETE FROM versions WHERE id = ?1")?;
                for (v, k) in versions.iter().zip(keep) {
                    if !k {
                        del.execute([v.0])?;
                        report.versions_pruned += 1;
                    }
                }
            }
            tx.commit()?;
        }
        // Mark: every chunk a version or current state names.
        let mut live: HashSet<[u8; 32]> = HashSet::new();
        for table in ["versions", "files"] {
            let mut stmt = self.db.prepare(&format!("SELECT chunks FROM {table}"))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let blob: Vec<u8> = r.get(0)?;
                for c in blob.chunks_exact(32) {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(c);
                    live.insert(a);
                }
            }
        }
        // Sweep the index, noting which packs hold dead bytes.
        let all: Vec<(Vec<u8>, u32, u64, u32, u32)> = {
            let mut stmt = self
                .db
                .prepare("SELECT id, pack, offset, len, raw_len FROM chunks")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u32,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u32,
                    r.get::<_, i64>(4)? as u32,
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut dead_packs = HashSet::new();
        let mut live_by_pack: HashMap<u32, u64> = HashMap::new();
        let tx = self.db.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
            for (id, pack, _, len, _) in &all {
                let is_live = id.len() == 32
                    && live.contains(&<[u8; 32]>::try_from(id.as_slice()).unwrap_or([0; 32]));
                if is_live {
                    *live_by_pack.entry(*pack).or_default() += *len as u64;
                } else {
                    del.execute([id])?;
                    dead_packs.insert(*pack);
                    report.chunks_removed += 1;
                }
            }
        }
        tx.commit()?;
        // Packs are also dead weight when a crash left unreferenced bytes:
        // rewrite any pack whose live bytes fall short of its size by over 1/8.
        for n in self.packs.list()? {
            let size = self.packs.size(n)?;
            let live_bytes = live_by_pack.get(&n).copied().unwrap_or(0);
            if size > 8 && live_bytes + 8 < size - size / 8 {
                dead_packs.insert(n);
            }
        }
        if !dead_packs.is_empty() {
            let next = self.packs.list()?.last().copied().unwrap_or(0) + 1;
            self.packs.roll_to(next)?;
            let mut moved: Vec<(Vec<u8>, Location)> = Vec::new();
            for (id, pack, offset, len, _) in &all {
                if dead_packs.contains(pack)
                    && live.contains(&<[u8; 32]>::try_from(id.as_slice()).unwrap_or([0; 32]))
                {
                    let sealed = self.packs.read(Location {
                        pack: *pack,
                        offset: *offset,
                        len: *len,
                    })?;
                    let loc = self.packs.append(&sealed)?;
                    moved.push((id.clone(), loc));
                }
            }
            self.packs.sync()?;
            let tx = self.db.transaction()?;
            {
                let mut upd =
                    tx.prepare_cached("UPDATE chunks SET pack = ?2, offset = ?3 WHERE id = ?1")?;
                for (id, loc) in &moved {
                    upd.execute(params![id, loc.pack as i64, loc.offset as i64])?;
                }
            }
            tx.commit()?;
            for n in dead_packs {
                self.packs.remove(n)?;
                report.packs_rewritten += 1;
            }
            self.db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        for n in self.packs.list()? {
            report.pack_bytes_after += self.packs.size(n)?;
        }
        Ok(report)
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
mod tests {
    use super::*;

    #[test]
    fn reader_sees_committed_chunks_and_sealed_copies_store_as_is() {
        let key = MasterKey::generate();
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = Store::open(da.path(), &key, Access::ReadWrite).unwrap();
        let mut b = Store::open(db.path(), &key, Access::ReadWrite).unwrap();
        let data = vec![7u8; 100_000];
        let id = a.codec().id_of(&data);
        assert!(a.put_chunk(&id, &data).unwrap());
        let mut reader = a.reader().unwrap();
        // Appended, not yet flushed: the reader does not see it yet.
        assert!(!reader.has_chunk(&id).unwrap());
        a.flush().unwrap();
        assert_eq!(reader.read_chunk(&id).unwrap(), data);
        assert!(
            reader.put_chunk(&id, &data).is_err(),
            "a reader never writes"
        );
        // The sealed bytes move to another store of the mesh unchanged.
        let sealed = reader.read_sealed(&id).unwrap();
        b.codec().check_sealed(&sealed).unwrap();
        assert_eq!(b.put_sealed(vec![sealed]).unwrap(), 1);
        b.flush().unwrap();
        assert_eq!(b.read_chunk(&id).unwrap(), data);
        let again = reader.read_sealed(&id).unwrap();
        assert_eq!(b.put_sealed(vec![again]).unwrap(), 0);
    }
}
