//! A store's index as one file, and a store rebuilt from one: what a
//! remote keeps (sealed) so a member can be rebuilt from it alone.

use super::*;

/// What changes whenever a snapshot of the index would: the change log's
/// sequence, and the number of versions and chunks (which `gc` lowers
/// without a new sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexMarker {
    /// The change log's newest sequence.
    pub sequence: u64,
    /// Versions kept.
    pub versions: u64,
    /// Chunks kept.
    pub chunks: u64,
}

/// Every chunk id the index `db` lists.
fn chunk_ids(db: &Connection) -> Result<Vec<ChunkId>> {
    let mut stmt = db.prepare("SELECT id FROM chunks")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .map(|b| ChunkId::from_slice(&b?))
        .collect::<Result<Vec<_>>>()?;
    Ok(ids)
}

impl Store {
    /// Every chunk id the store holds.
    pub fn chunk_list(&self) -> Result<Vec<ChunkId>> {
        chunk_ids(&self.db)
    }

    /// The index as a snapshot of it now would be ([`IndexMarker`]).
    pub fn index_marker(&self) -> Result<IndexMarker> {
        let (versions, chunks): (i64, i64) = self.db.query_row(
            "SELECT (SELECT COUNT(*) FROM versions), (SELECT COUNT(*) FROM chunks)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(IndexMarker {
            sequence: self.sequence()?,
            versions: versions.max(0) as u64,
            chunks: chunks.max(0) as u64,
        })
    }

    /// The chunk ids an index file made by [`Store::snapshot_index`] lists.
    pub fn chunks_in_snapshot(path: &Path) -> Result<Vec<ChunkId>> {
        chunk_ids(&Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?)
    }

    /// What another member's index file (made by [`Store::snapshot_index`],
    /// opened under this folder's key) says: the current state of every
    /// path, and the seal epochs it keeps (opened under this folder's key:
    /// an epoch that does not open is an error).
    pub fn states_in_snapshot(&self, path: &Path) -> Result<(Vec<FileRecord>, Vec<EpochSecret>)> {
        let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = db.prepare(&format!("SELECT {FILE_COLS} FROM files"))?;
        let states = stmt
            .query_map([], file_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let epochs = epochs_in(&db, &self.codec.keys().epoch_wrap)?;
        Ok((states, epochs))
    }

    /// Writes a consistent copy of the index (what is committed now) to
    /// `dest`, a path that must not exist, without blocking the writer.
    pub fn snapshot_index(&self, dest: &Path) -> Result<()> {
        let db = Connection::open_with_flags(
            self.db_path()?,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        let dest_s = dest
            .to_str()
            .ok_or_else(|| Error::Corrupt(format!("{} is not UTF-8", dest.display())))?;
        db.execute("VACUUM INTO ?1", [dest_s])?;
        Ok(())
    }

    /// Puts an index snapshot in place as the index of the store in `home`
    /// (no store may be open there), then opens it under `master` and
    /// forgets what belonged to the machine it came from: where chunks lay
    /// in its packs (they are added again with [`Store::put_sealed`]), what
    /// was on its disk, and where each peer's log stood. A snapshot of
    /// another folder is refused when it opens. Also returns the chunks the
    /// snapshot listed: what must be added for the store to be whole.
    pub fn adopt_snapshot(
        home: &Path,
        snapshot: &[u8],
        master: &MasterKey,
    ) -> Result<(Store, Vec<ChunkId>)> {
        let db_path = home.join("index.db");
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", db_path.display()));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&db_path)
            .map_err(|e| Error::io(&db_path, e))?;
        f.write_all(snapshot).map_err(|e| Error::io(&db_path, e))?;
        f.sync_all().map_err(|e| Error::io(&db_path, e))?;
        crate::fsync_parent(&db_path)?;
        let store = Store::open(home, master, Access::ReadWrite)?;
        let needed = store.chunk_list()?;
        store.db.execute_batch(
            "BEGIN;
             DELETE FROM chunks;
             UPDATE files SET disk = NULL;
             DELETE FROM peer_seen;
             DELETE FROM meta WHERE key LIKE 'peer.%' OR key = 'index_epoch';
             COMMIT;",
        )?;
        Ok((store, needed))
    }
}
