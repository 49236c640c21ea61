//! Figures, verification and garbage collection of a store.

use super::*;

impl Store {
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
}
