//! Read queries of the index: current records, the change log, history and search.

use super::*;
use crate::Child;

impl Store {
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

    /// The live (not deleted) entries directly in directory `dir` (`""`:
    /// the root), in path order. Only those rows are read and decoded, not
    /// the whole subtree: a listing costs what it shows.
    pub fn children(&self, dir: &str) -> Result<Vec<Child>> {
        let cols = if self.listing_columns {
            "path, kind, size, label, mode, mtime_ns, author, target"
        } else {
            "path, kind, size, label, json_extract(entry, '$.mode'), \
             json_extract(entry, '$.mtime_ns'), json_extract(entry, '$.author'), \
             json_extract(entry, '$.target')"
        };
        let dir = dir.trim_end_matches('/');
        let mut stmt = if dir.is_empty() {
            self.db.prepare_cached(&format!(
                "SELECT {cols} FROM files WHERE deleted = 0 AND instr(path, '/') = 0 ORDER BY path"
            ))?
        } else {
            self.db.prepare_cached(&format!(
                "SELECT {cols} FROM files WHERE path > ?1 || '/' AND path < ?1 || '0' AND deleted = 0 \
                 AND instr(substr(path, length(?1) + 2), '/') = 0 ORDER BY path"
            ))?
        };
        let row = |r: &rusqlite::Row<'_>| {
            let kind: String = r.get(1)?;
            Ok(Child {
                path: r.get(0)?,
                kind: kind_of_name(&kind),
                size: r.get::<_, i64>(2)? as u64,
                label: r.get::<_, i64>(3)? as u64,
                mode: r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u32,
                mtime_ns: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                author: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                target: r.get(7)?,
            })
        };
        let rows = if dir.is_empty() {
            stmt.query_map([], row)?
        } else {
            stmt.query_map([dir], row)?
        };
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Live (not deleted) paths at or under `prefix` (`""`: all) with their
    /// kind and size, in path order. Reads only the indexed columns, not the
    /// entries: for listings and name searches over many paths.
    pub fn live_paths_under(&self, prefix: &str) -> Result<Vec<(String, EntryKind, u64)>> {
        let mut out = Vec::new();
        self.each_live_path(prefix, &mut |path, kind, size| {
            out.push((path.to_owned(), kind, size));
        })?;
        Ok(out)
    }

    /// Every live path with what its file on disk looked like when last
    /// matched (`None`: a remote state not yet written), read from two
    /// columns without decoding the entries: what a periodic rescan
    /// compares the disk against.
    pub fn live_disk_stats(&self) -> Result<std::collections::HashMap<String, Option<DiskStat>>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT path, disk FROM files WHERE deleted = 0")?;
        let mut rows = stmt.query([])?;
        let mut out = std::collections::HashMap::new();
        while let Some(r) = rows.next()? {
            let disk: Option<String> = r.get(1)?;
            out.insert(r.get(0)?, disk.and_then(|d| serde_json::from_str(&d).ok()));
        }
        Ok(out)
    }

    /// The live paths at or under `prefix` for which `pick` holds, in path
    /// order, without holding the others in memory: a rescan's search for
    /// paths gone from disk over a million files keeps only the few it finds.
    pub fn live_paths_where(
        &self,
        prefix: &str,
        pick: &mut dyn FnMut(&str, EntryKind) -> bool,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.each_live_path(prefix, &mut |path, kind, _| {
            if pick(path, kind) {
                out.push(path.to_owned());
            }
        })?;
        Ok(out)
    }

    fn each_live_path(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(&str, EntryKind, u64),
    ) -> Result<()> {
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
        let mut rows = if prefix.is_empty() {
            stmt.query([])?
        } else {
            stmt.query([prefix])?
        };
        while let Some(r) = rows.next()? {
            let path = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            let kind = kind_of_name(r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?);
            each(path, kind, r.get::<_, i64>(2)? as u64);
        }
        Ok(())
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
}
