//! Applying states received from peers: version-vector decisions, conflict
//! copies, and writing the winners to disk.
//!
//! The network layer fetches the chunks a batch needs (see
//! [`Node::missing_chunks`]) and then calls [`Node::apply_remote`]. For each
//! remote state of a path:
//!
//! * remote vector dominates the local one: the remote state is written to
//!   disk (temp file, fsync, rename) and recorded with its vector and author;
//! * local dominates or equal: nothing happens;
//! * concurrent: equal content merges the vectors; delete against edit keeps
//!   the edit; two files whose edits merge cleanly (text three-way, JSON
//!   structurally, see [`crate::merge`]) become the merged file; otherwise
//!   the newer write keeps the name and the other is kept as
//!   `name.sync-conflict-YYYYMMDD-HHMMSS-<node>.ext`, recorded as a new local
//!   file. The result carries both vectors plus one local edit.
//!
//! Before a local file is replaced, its on-disk state is compared with what
//! the index last saw; if it changed, the path is rescanned first and the
//! decision is made again against the fresh local state.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sovryn_store::{Change, ChunkId, DiskStat, Entry, EntryKind, FileRecord};

use crate::decide::{decide, Decision, Me, NameSlot};
use crate::fsutil::{stat_of, sync_file};
use crate::node::Node;
use crate::paths;
use crate::scan::ScanOptions;
use crate::{Error, Result};

mod stage;
pub use stage::{written_ahead, Staged, STAGE_MIN_BYTES};

/// What applying a batch of remote states did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Remote states written and recorded.
    pub applied: u64,
    /// Remote states that were older than or equal to the local ones.
    pub ignored: u64,
    /// Conflict copies made.
    pub conflicts: Vec<String>,
    /// Paths whose concurrent edits merged cleanly (see [`crate::merge`]).
    pub merged: Vec<String>,
    /// Paths skipped (ignored, excluded or malformed on this node).
    pub skipped: u64,
    /// Every path whose record changed here (applied, merged, rescanned, copies).
    pub changed: Vec<String>,
    /// Remote states that could not be applied, with why.
    pub failed: Vec<(String, String)>,
}

/// `(year, month, day)` of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The name of a conflict copy of `rel` written by `author` at `time_ns`:
/// `dir/name.sync-conflict-YYYYMMDD-HHMMSS-<author>.ext`.
pub fn conflict_name(rel: &str, author: &str, time_ns: i64) -> String {
    conflict_name_n(rel, author, time_ns, 0)
}

/// [`conflict_name`] with `-N` before the extension when `n` > 0 (the name
/// was taken by another copy).
pub fn conflict_name_n(rel: &str, author: &str, time_ns: i64, n: u32) -> String {
    let secs = time_ns.div_euclid(1_000_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let stamp = format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    let node: String = author
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (dir, name) = match rel.rfind('/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => ("", rel),
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let tail = if n == 0 {
        String::new()
    } else {
        format!("-{n}")
    };
    format!("{dir}{stem}.sync-conflict-{stamp}-{node}{tail}{ext}")
}

/// Whether `rel` is itself a conflict copy.
pub fn is_conflict_copy(rel: &str) -> bool {
    rel.rsplit('/')
        .next()
        .is_some_and(|n| n.contains(".sync-conflict-"))
}

struct Batch {
    changes: Vec<Change>,
    paths: HashSet<String>,
    /// Files written to temp names, to be renamed into place at the flush.
    writes: Vec<PendingWrite>,
    /// Large files written ahead, off the writer.
    staged: Staged,
}

struct PendingWrite {
    tmp: PathBuf,
    target: PathBuf,
    /// Index of its change in `Batch::changes`.
    change: usize,
    /// The target as it was when the remote state was chosen (`None`:
    /// absent). Anything else at rename time is a local write that raced
    /// in: it is kept, not replaced.
    expect: Option<DiskStat>,
    /// The temp file's stat once written (`None`: taken at the rename).
    stat: Option<DiskStat>,
}

/// Removes a temp file of a download that failed. When its directory was
/// renamed meanwhile (the usual cause), it is found under its unique name.
fn remove_temp(root: &Path, tmp: &Path) {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        _ => return,
    }
    let Some(name) = tmp.file_name() else { return };
    fn find(dir: &Path, name: &std::ffi::OsStr, depth: usize) -> Option<PathBuf> {
        for e in fs::read_dir(dir).ok()?.flatten() {
            let ft = e.file_type().ok()?;
            if e.file_name() == name && ft.is_file() {
                return Some(e.path());
            }
            if ft.is_dir() && depth < 64 {
                if let Some(p) = find(&e.path(), name, depth + 1) {
                    return Some(p);
                }
            }
        }
        None
    }
    if let Some(p) = find(root, name, 0) {
        tracing::info!(
            "removing the temp file of a failed download: {}",
            p.display()
        );
        let _ = fs::remove_file(p);
    }
}

/// Up to this many files written by one batch are fsynced one by one.
const FSYNC_EACH_MAX: usize = 8;

/// `syncfs(2)` on the file system holding `dir`: one flush for a whole batch
/// instead of one fsync per file.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(Error::io(dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Node {
    /// The chunks of `entries` this store lacks, each once.
    pub fn missing_chunks<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<Vec<ChunkId>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in entries {
            if e.deleted || e.kind != EntryKind::File {
                continue;
            }
            for id in &e.chunks {
                if seen.insert(*id) && !self.store.has_chunk(id)? {
                    out.push(*id);
                }
            }
        }
        Ok(out)
    }

    /// Of a peer's states (path, state), those worth fetching and applying:
    /// paths this node's rules keep whose state is not already here or
    /// dominated by the one here.
    pub fn useful_states(
        &self,
        states: impl IntoIterator<Item = (String, Entry)>,
    ) -> Result<Vec<(String, Entry)>> {
        let mut keep = Vec::new();
        for (path, entry) in states {
            // What this node's rules leave out is neither fetched nor
            // written out (the apply would skip it anyway).
            if !self.rules.keeps(&path, entry.kind == EntryKind::Dir) {
                continue;
            }
            let useful = match self.store.file(&path)? {
                None => true,
                Some(l) => match entry.vv.compare(&l.entry.vv) {
                    sovryn_store::Causality::DominatedBy => false,
                    // The same vector for other content (a restored node
                    // reused counters).
                    sovryn_store::Causality::Equal => {
                        !(l.entry.same_content(&entry) || (l.entry.deleted && entry.deleted))
                    }
                    _ => true,
                },
            };
            if useful {
                keep.push((path, entry));
            }
        }
        Ok(keep)
    }

    /// Applies remote states (path, state). The chunks of every live remote
    /// file must already be in the store. Deletions come first, deepest
    /// first (so a removed directory is empty when its turn comes and a file
    /// may take the place of a removed directory), then the rest, parents
    /// before children. A state that cannot be applied (e.g. it would
    /// replace a directory that still holds local files) is reported in
    /// [`ApplyReport::failed`] and the others go on.
    pub fn apply_remote(&mut self, records: &[(String, Entry)]) -> Result<ApplyReport> {
        self.apply_remote_staged(records, Staged::default())
    }

    /// [`Node::apply_remote`] with large files already written out
    /// ([`Staged::prepare`]): they are renamed into place instead of
    /// written here.
    pub fn apply_remote_staged(
        &mut self,
        records: &[(String, Entry)],
        staged: Staged,
    ) -> Result<ApplyReport> {
        self.rules.reload();
        let mut report = ApplyReport::default();
        let mut order: Vec<&(String, Entry)> = records.iter().collect();
        order.sort_by(|a, b| match (a.1.deleted, b.1.deleted) {
            (false, false) => a.0.cmp(&b.0),
            (true, true) => b.0.cmp(&a.0),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
        });
        let mut batch = Batch {
            changes: Vec::new(),
            paths: HashSet::new(),
            writes: Vec::new(),
            staged,
        };
        for (raw, remote) in order {
            let rel = match paths::normalize_rel(raw) {
                Ok(r) if !r.is_empty() && r == *raw => r,
                _ => {
                    tracing::warn!("peer sent a malformed path {raw:?}; skipped");
                    report.skipped += 1;
                    continue;
                }
            };
            if !self.rules.keeps(&rel, remote.kind == EntryKind::Dir) {
                report.skipped += 1;
                continue;
            }
            if batch.paths.contains(&rel) || batch.changes.len() >= 2000 {
                self.sync_flush_batch(&mut batch)?;
            }
            if let Err(e) = self.sync_apply_one(&rel, remote, &mut batch, &mut report) {
                tracing::warn!("{rel}: cannot apply the remote state: {e}");
                report.failed.push((rel.clone(), e.to_string()));
            }
        }
        self.sync_flush_batch(&mut batch)?;
        Ok(report)
    }

    /// Puts the deferred files in place (content durable, renames, then
    /// the renames durable: two `syncfs` for the batch) and records the batch.
    fn sync_flush_batch(&mut self, batch: &mut Batch) -> Result<()> {
        if !batch.writes.is_empty() {
            let root = self.root().to_owned();
            // A few files: fsync each (and their directories after the
            // renames); many: one syncfs each way. syncfs also flushes
            // whatever else is dirty on that file system, which for one big
            // file costs more than it saves.
            let each = batch.writes.len() <= FSYNC_EACH_MAX;
            let outcome = (|| -> Result<()> {
                if each {
                    for w in &batch.writes {
                        sync_file(&w.tmp)?;
                    }
                } else {
                    sync_filesystem(&root)?;
                }
                let mut failed = Vec::new();
                for w in &batch.writes {
                    let placed = (|| -> Result<DiskStat> {
                        let now = fs::symlink_metadata(&w.target).ok();
                        if now.as_ref().map(stat_of) != w.expect {
                            return Err(Error::Usage(format!(
                                "{} changed on disk while a peer's version was written; \
                                 the local write is kept and will be recorded",
                                w.target.display()
                            )));
                        }
                        if now.is_some_and(|m| m.is_dir()) {
                            fs::remove_dir(&w.target).map_err(|e| Error::io(&w.target, e))?;
                        }
                        fs::rename(&w.tmp, &w.target).map_err(|e| Error::io(&w.target, e))?;
                        match w.stat {
                            Some(stat) => Ok(stat),
                            None => crate::fsutil::disk_stat(&w.target),
                        }
                    })();
                    match placed {
                        Ok(stat) => batch.changes[w.change].disk = Some(stat),
                        Err(e) => {
                            tracing::warn!("{}: {e}", w.target.display());
                            remove_temp(&root, &w.tmp);
                            failed.push(w.change);
                        }
                    }
                }
                if each {
                    let dirs: HashSet<&Path> = batch
                        .writes
                        .iter()
                        .filter_map(|w| w.target.parent())
                        .collect();
                    for d in dirs {
                        sync_file(d)?;
                    }
                } else {
                    sync_filesystem(&root)?;
                }
                // Files that could not be put in place are not recorded.
                failed.sort_unstable();
                for i in failed.into_iter().rev() {
                    batch.changes.remove(i);
                }
                Ok(())
            })();
            if outcome.is_err() {
                for w in &batch.writes {
                    remove_temp(&root, &w.tmp);
                }
                batch.writes.clear();
                batch.changes.clear();
                batch.paths.clear();
                return outcome;
            }
            batch.writes.clear();
        }
        if !batch.changes.is_empty() {
            self.store.commit(&batch.changes)?;
        }
        batch.changes.clear();
        batch.paths.clear();
        Ok(())
    }

    /// Writes `entry` at `rel` and records it. A regular file goes to a temp
    /// name now and is renamed into place at the batch's flush; anything
    /// else is written at once.
    fn sync_place(
        &mut self,
        batch: &mut Batch,
        report: &mut ApplyReport,
        rel: &str,
        entry: Entry,
    ) -> Result<()> {
        if entry.deleted || entry.kind != EntryKind::File {
            let disk = self.materialize(rel, &entry)?;
            return self.sync_push_change(batch, report, rel, entry, disk);
        }
        let target = paths::confined(self.root(), rel)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let expect = fs::symlink_metadata(&target).ok().map(|m| stat_of(&m));
        let tmp = crate::fsutil::temp_beside(&target);
        // Written ahead (and durable): only moved beside its target here. A
        // move that fails (another file system under the root) falls back
        // to writing it now.
        if let Some(staged) = batch.staged.take(rel, &entry) {
            let moved = fs::rename(&staged, &tmp)
                .map_err(|e| Error::io(&tmp, e))
                .and_then(|()| crate::fsutil::set_mode(&tmp, entry.mode));
            match moved {
                Ok(()) => {
                    return self
                        .sync_push_write(batch, report, rel, entry, tmp, target, expect, None)
                }
                Err(e) => {
                    tracing::debug!("{rel}: staged copy not used: {e}");
                    let _ = fs::remove_file(&staged);
                    let _ = fs::remove_file(&tmp);
                }
            }
        }
        let written = (|| -> Result<DiskStat> {
            let io = |e| Error::io(&tmp, e);
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            let cap = usize::try_from(entry.size)
                .unwrap_or(usize::MAX)
                .min(1 << 20);
            let mut w = std::io::BufWriter::with_capacity(cap, f);
            self.store.write_content(&entry, &mut w)?;
            w.flush().map_err(io)?;
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            crate::fsutil::set_file_mode(&f, entry.mode).map_err(io)?;
            // What the file will be under its name: a rename keeps size,
            // mtime, inode and mode.
            Ok(stat_of(&f.metadata().map_err(io)?))
        })();
        let stat = match written {
            Ok(stat) => stat,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.sync_push_write(batch, report, rel, entry, tmp, target, expect, Some(stat))
    }

    /// Records a file written to `tmp`, to be renamed onto `target` at the
    /// flush. The change goes in first: a write is never pending without
    /// the change it belongs to (a failure here removes the temp file).
    /// `stat` is the written file's, when known (else taken at the rename).
    #[allow(clippy::too_many_arguments)]
    fn sync_push_write(
        &mut self,
        batch: &mut Batch,
        report: &mut ApplyReport,
        rel: &str,
        entry: Entry,
        tmp: PathBuf,
        target: PathBuf,
        expect: Option<DiskStat>,
        stat: Option<DiskStat>,
    ) -> Result<()> {
        let change = batch.changes.len();
        if let Err(e) = self.sync_push_change(batch, report, rel, entry, None) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        batch.writes.push(PendingWrite {
            tmp,
            target,
            change,
            expect,
            stat,
        });
        Ok(())
    }

    fn sync_push_change(
        &mut self,
        batch: &mut Batch,
        report: &mut ApplyReport,
        rel: &str,
        entry: Entry,
        disk: Option<DiskStat>,
    ) -> Result<()> {
        let text = self.text_of(&entry)?;
        batch.paths.insert(rel.to_owned());
        report.changed.push(rel.to_owned());
        batch.changes.push(Change {
            path: rel.to_owned(),
            entry,
            disk,
            text,
        });
        Ok(())
    }

    /// The local record of `rel`, rescanned first when the disk moved away from it.
    fn sync_fresh_local(
        &mut self,
        rel: &str,
        batch: &mut Batch,
        report: &mut ApplyReport,
    ) -> Result<Option<FileRecord>> {
        let local = self.store.file(rel)?;
        let abs = paths::confined(self.root(), rel)?;
        let on_disk = fs::symlink_metadata(&abs).ok();
        let stale = match (&local, &on_disk) {
            (None, None) => false,
            (None, Some(_)) => true,
            (Some(l), None) => !l.entry.deleted && l.disk.is_some(),
            (Some(l), Some(m)) => {
                if l.entry.deleted || l.disk.is_none() {
                    true
                } else if l.entry.kind == EntryKind::Dir {
                    !m.is_dir()
                } else {
                    l.disk != Some(stat_of(m))
                }
            }
        };
        if !stale {
            return Ok(local);
        }
        self.sync_flush_batch(batch)?;
        let scanned = self.scan(&[rel.to_owned()], &ScanOptions::default(), &mut |_| {});
        match scanned {
            Ok(r) => report.changed.extend(r.changed),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(self.store.file(rel)?)
    }

    /// The nearest ancestor of `rel` that is on disk but not a directory
    /// (a file or a symlink), if any.
    fn blocking_ancestor(&self, rel: &str) -> Option<String> {
        let mut cur = self.root().to_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        for (i, part) in parts.iter().enumerate().take(parts.len().saturating_sub(1)) {
            cur.push(part);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Some(parts[..=i].join("/")),
                Err(_) => return None,
            }
        }
        None
    }

    /// Whether the directory at `rel` holds anything (on disk, where the
    /// puller's renames of this batch have landed).
    fn dir_has_entries(&self, rel: &str) -> Result<bool> {
        let abs = paths::confined(self.root(), rel)?;
        Ok(fs::read_dir(&abs)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false))
    }

    /// A peer's live state under `anc` says `anc` is a directory there,
    /// while here it is a file or a symlink. The type-clash rule, the same
    /// on every node whatever the order: the directory keeps the name; the
    /// file (or link) is kept as a conflict copy named after its own author
    /// and time (so every node picks the same name), and a directory state
    /// that supersedes it is recorded.
    fn sync_clear_ancestor(
        &mut self,
        anc: &str,
        batch: &mut Batch,
        report: &mut ApplyReport,
    ) -> Result<()> {
        self.sync_flush_batch(batch)?;
        let Some(local) = self.sync_fresh_local(anc, batch, report)? else {
            return Err(Error::BadPath(format!(
                "{anc} is not a directory and not recorded"
            )));
        };
        if local.entry.kind == EntryKind::Dir && !local.entry.deleted {
            return Ok(());
        }
        if !local.entry.deleted {
            self.sync_conflict_copy(anc, &local.entry, batch, report)?;
        }
        let dir = self.dir_superseding(&local.entry, None);
        let disk = self.materialize(anc, &dir)?;
        tracing::info!("{anc}: a peer has a directory here; it keeps the name");
        self.sync_push_change(batch, report, anc, dir, disk)
    }

    /// A directory state that supersedes `local` (and `remote`): both
    /// vectors plus one local edit, mode 0755 for a new directory.
    fn dir_superseding(&self, local: &Entry, remote: Option<&Entry>) -> Entry {
        let (prev, base) = crate::decide::superseding_dir(local, remote);
        self.local_entry(Some(&prev), base, None)
    }

    fn sync_apply_one(
        &mut self,
        rel: &str,
        remote: &Entry,
        batch: &mut Batch,
        report: &mut ApplyReport,
    ) -> Result<()> {
        if let Some(anc) = self.blocking_ancestor(rel) {
            if remote.deleted {
                let local = self.store.file(rel)?;
                if let Some(entry) =
                    crate::decide::tombstone_under_file(local.as_ref().map(|l| &l.entry), remote)
                {
                    self.sync_push_change(batch, report, rel, entry, None)?;
                }
                return Ok(());
            }
            self.sync_clear_ancestor(&anc, batch, report)?;
        }
        let local = self.sync_fresh_local(rel, batch, report)?;
        let me = self.short_id.clone();
        let mut has_entries = || {
            // Renames of this batch first, so the directory shows what it holds.
            // When in doubt the directory stays (nothing is removed).
            match self.sync_flush_batch(batch) {
                Ok(()) => self.dir_has_entries(rel).unwrap_or(true),
                Err(e) => {
                    tracing::warn!("{rel}: {e}");
                    true
                }
            }
        };
        let me = Me {
            id: &me,
            now_ms: crate::node::now_ms(),
        };
        let decision = decide(
            local.as_ref().map(|l| &l.entry),
            remote,
            me,
            &mut has_entries,
        );
        let disk = local.as_ref().and_then(|l| l.disk);
        match decision {
            Decision::Ignore => report.ignored += 1,
            Decision::Tombstone(entry) => {
                self.sync_push_change(batch, report, rel, entry, None)?;
                report.applied += 1;
            }
            Decision::Place(entry) => {
                self.sync_place(batch, report, rel, entry)?;
                report.applied += 1;
            }
            Decision::Record(entry) => self.sync_push_change(batch, report, rel, entry, disk)?,
            Decision::KeepDir { copy_remote } => {
                let Some(local) = &local else {
                    return Err(Error::Usage(format!("{rel}: no local directory to keep")));
                };
                if copy_remote {
                    self.sync_flush_batch(batch)?;
                    self.sync_conflict_copy(rel, remote, batch, report)?;
                }
                let entry = self.dir_superseding(&local.entry, Some(remote));
                tracing::info!(
                    "{rel}: the directory keeps the name against a peer's {}",
                    if remote.deleted { "deletion" } else { "file" }
                );
                self.sync_push_change(batch, report, rel, entry, disk)?;
            }
            Decision::CopyLocalThenPlace(entry) => {
                if let Some(local) = &local {
                    self.sync_flush_batch(batch)?;
                    self.sync_conflict_copy(rel, &local.entry, batch, report)?;
                }
                self.sync_place(batch, report, rel, entry)?;
                report.applied += 1;
            }
            Decision::Resolve { remote_wins, vv } => {
                let Some(local) = &local else {
                    return Err(Error::Usage(format!("{rel}: nothing local to resolve")));
                };
                let l = &local.entry;
                // Merge when the edits do not overlap (same inputs, in write
                // order, on both sides, so both compute the same result).
                let (first, second) = if remote_wins {
                    (l, remote)
                } else {
                    (remote, l)
                };
                match self.merge_concurrent(rel, first, second, vv.clone()) {
                    Ok(Some(entry)) => {
                        report.merged.push(rel.to_owned());
                        self.sync_place(batch, report, rel, entry)?;
                        report.applied += 1;
                        return Ok(());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("{rel}: merging concurrent edits failed ({e}); keeping both")
                    }
                }
                let (winner, loser) = if remote_wins {
                    (remote, l)
                } else {
                    (l, remote)
                };
                if loser.kind != EntryKind::Dir {
                    self.sync_flush_batch(batch)?;
                    self.sync_conflict_copy(rel, loser, batch, report)?;
                }
                let mut entry = winner.clone();
                entry.vv = vv;
                if remote_wins {
                    self.sync_place(batch, report, rel, entry)?;
                    report.applied += 1;
                } else {
                    self.sync_push_change(batch, report, rel, entry, disk)?;
                }
            }
        }
        Ok(())
    }

    fn sync_conflict_copy(
        &mut self,
        rel: &str,
        loser: &Entry,
        batch: &mut Batch,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let name = crate::decide::conflict_copy_name(rel, loser, |name| {
            let existing = self.store.file(name)?;
            let on_disk = paths::confined(self.root(), name)?
                .symlink_metadata()
                .is_ok();
            Ok::<_, Error>(match existing {
                Some(rec) if !rec.entry.deleted && rec.entry.same_content(loser) => {
                    NameSlot::SameCopy
                }
                None if !on_disk => NameSlot::Free,
                Some(rec) if rec.entry.deleted && !on_disk => NameSlot::Free,
                _ => NameSlot::Taken,
            })
        })?;
        let Some(name) = name else {
            return Ok(());
        };
        let prev = self.store.file(&name)?;
        let mut base = loser.clone();
        base.message = Some(format!("conflict copy of {rel}"));
        let entry = self.local_entry(prev.as_ref().map(|p| &p.entry), base, None);
        let disk = self.materialize(&name, &entry)?;
        tracing::info!("{rel}: concurrent edits; the other version is kept as {name}");
        report.conflicts.push(name.clone());
        self.sync_push_change(batch, report, &name, entry, disk)
    }
}

#[cfg(test)]
mod tests;
