//! The scanner: walks the storage root (or some paths under it) and records
//! every difference from the index as a new version.
//!
//! A file whose (size, mtime, inode, mode) match the last scan is skipped
//! without reading. Changes are committed in groups (one pack sync and one
//! transaction per group), never one fsync per file.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use serde::Serialize;
use sovryn_store::{Change, DiskStat, EntryKind, FileRecord};

use crate::fsutil::stat_of;
use crate::node::Node;
use crate::{Error, Result};

mod read_ahead;
use read_ahead::ReadAhead;
pub(crate) use read_ahead::ReadFile;

const GROUP_FILES: usize = 2000;
const GROUP_BYTES: u64 = 16 * 1024 * 1024;

/// Options of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Only report what changed; record nothing.
    pub dry_run: bool,
    /// Who caused the scan (`None`: the node itself).
    pub actor: Option<String>,
    /// A note stored with every version this scan records.
    pub message: Option<String>,
    /// Make large files durable in steps while they are read, and report
    /// each step in [`ScanProgress::durable`] (a node whose peers fetch
    /// them meanwhile).
    pub announce_large: bool,
}

/// Progress of a running scan.
#[derive(Debug, Clone, Default)]
pub struct ScanProgress {
    /// Entries looked at.
    pub entries: u64,
    /// Bytes read and chunked.
    pub bytes_hashed: u64,
    /// Path being read.
    pub current: String,
    /// The change-log sequence of the last group this scan committed (0:
    /// none yet). Those records are complete and durable: peers may be
    /// told of them while the scan goes on.
    pub committed: u64,
    /// With [`ScanOptions::announce_large`], set while a large file is
    /// read: chunks of `current` now durable and indexed (the index of the
    /// first in the file, then each id with its plaintext length). Not a
    /// record yet: the file may still change under the scan.
    pub durable: Option<(usize, Vec<(sovryn_store::ChunkId, u32)>)>,
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ScanReport {
    /// Entries looked at.
    pub entries: u64,
    /// New paths recorded.
    pub added: u64,
    /// Changed paths recorded.
    pub modified: u64,
    /// Paths gone from disk, recorded as deleted.
    pub deleted: u64,
    /// Paths skipped because they changed while being read (the next scan gets them).
    pub unstable: u64,
    /// Bytes read and chunked.
    pub bytes_hashed: u64,
    /// The paths recorded (added, modified, deleted), capped at 1000.
    pub changed: Vec<String>,
    /// Records written, for callers that announce them (capped like `changed`).
    #[serde(skip)]
    pub records: Vec<FileRecord>,
}

struct Pending<'a> {
    changes: Vec<Change>,
    bytes: u64,
    report: &'a mut ScanReport,
    /// The sequence of the last group committed.
    committed: u64,
}

impl Node {
    /// Scans `prefixes` (relative paths; empty means the whole root) and records changes.
    pub fn scan(
        &mut self,
        prefixes: &[String],
        opts: &ScanOptions,
        progress: &mut dyn FnMut(&ScanProgress),
    ) -> Result<ScanReport> {
        self.rules.reload();
        let mut report = ScanReport::default();
        let mut prog = ScanProgress::default();
        let mut seen: HashSet<String> = HashSet::new();
        let roots: Vec<String> = if prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty()) {
            vec![String::new()]
        } else {
            prefixes.to_vec()
        };
        let mut pending = Pending {
            changes: Vec::new(),
            bytes: 0,
            report: &mut report,
            committed: 0,
        };
        for prefix in &roots {
            let abs = crate::paths::confined(self.root(), prefix)?;
            match fs::symlink_metadata(&abs) {
                Ok(m) => {
                    if !prefix.is_empty() && !self.rules.keeps(prefix, m.is_dir()) {
                        return Err(Error::Usage(format!(
                            "{prefix} is ignored or excluded on this node"
                        )));
                    }
                    if !prefix.is_empty() {
                        // Record the ancestors too so a single deep path still syncs its directories.
                        let parts: Vec<&str> = prefix.split('/').collect();
                        for depth in 1..parts.len() {
                            let dir = parts[..depth].join("/");
                            self.visit(
                                &dir,
                                opts,
                                &mut pending,
                                &mut prog,
                                &mut seen,
                                progress,
                                None,
                            )?;
                        }
                    }
                    self.walk(
                        prefix,
                        m.is_dir() && !m.file_type().is_symlink(),
                        opts,
                        &mut pending,
                        &mut prog,
                        &mut seen,
                        progress,
                        None,
                    )?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !prefix.is_empty() && self.store.file(prefix)?.is_none() {
                        return Err(Error::NotFound(format!(
                            "no such file or directory: {prefix}"
                        )));
                    }
                }
                Err(e) => return Err(Error::io(&abs, e)),
            }
        }
        // Tombstones for recorded paths that are gone from disk.
        for prefix in &roots {
            let unseen = self
                .store
                .live_paths_where(prefix, &mut |path, _| !seen.contains(path))?;
            for path in unseen {
                let Some(rec) = self.store.file(&path)? else {
                    continue;
                };
                if rec.entry.deleted || rec.disk.is_none() {
                    continue;
                }
                let abs = self.root().join(&rec.path);
                if fs::symlink_metadata(&abs).is_ok()
                    || self
                        .rules
                        .excluded(&rec.path, rec.entry.kind == EntryKind::Dir)
                {
                    continue;
                }
                let mut base = rec.entry.clone();
                base.deleted = true;
                base.chunks.clear();
                base.size = 0;
                base.message = None;
                base.message = opts.message.clone();
                let entry = self.local_entry(Some(&rec.entry), base, opts.actor.as_deref());
                pending.report.deleted += 1;
                self.push(
                    Change {
                        path: rec.path.clone(),
                        entry,
                        disk: None,
                        text: None,
                    },
                    0,
                    opts,
                    &mut pending,
                )?;
            }
        }
        self.flush_group(opts, &mut pending)?;
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        rel: &str,
        is_dir: bool,
        opts: &ScanOptions,
        pending: &mut Pending<'_>,
        prog: &mut ScanProgress,
        seen: &mut HashSet<String>,
        progress: &mut dyn FnMut(&ScanProgress),
        ahead: Option<&mut ReadAhead>,
    ) -> Result<()> {
        if !rel.is_empty() {
            self.visit(rel, opts, pending, prog, seen, progress, ahead)?;
        }
        if !is_dir {
            return Ok(());
        }
        let abs = if rel.is_empty() {
            self.root().to_owned()
        } else {
            self.root().join(rel)
        };
        let mut children: Vec<(String, bool)> = Vec::new();
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!("{}: {e}", abs.display());
                return Ok(());
            }
        };
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&abs, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!("skipping a name that is not UTF-8 in {}", abs.display());
                continue;
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().map_err(|e| Error::io(&abs, e))?;
            let child_is_dir = ft.is_dir();
            if child_is_dir && self.is_home(&entry) {
                tracing::warn!("{child}: this is the node's home; never recorded");
                continue;
            }
            if !self.rules.keeps(&child, child_is_dir) {
                continue;
            }
            children.push((child, child_is_dir));
        }
        children.sort();
        let mut ahead = ReadAhead::new(
            children
                .iter()
                .filter(|(_, is_dir)| !is_dir)
                .map(|(c, _)| c.clone()),
        );
        for (child, child_is_dir) in children {
            self.walk(
                &child,
                child_is_dir,
                opts,
                pending,
                prog,
                seen,
                progress,
                Some(&mut ahead),
            )?;
        }
        Ok(())
    }

    /// Whether a directory entry is the node's home (keys, config, index).
    fn is_home(&self, entry: &fs::DirEntry) -> bool {
        use std::os::unix::fs::MetadataExt;
        entry
            .metadata()
            .is_ok_and(|m| (m.dev(), m.ino()) == self.home_dir_id)
    }

    #[allow(clippy::too_many_arguments)]
    fn visit(
        &mut self,
        rel: &str,
        opts: &ScanOptions,
        pending: &mut Pending<'_>,
        prog: &mut ScanProgress,
        seen: &mut HashSet<String>,
        progress: &mut dyn FnMut(&ScanProgress),
        ahead: Option<&mut ReadAhead>,
    ) -> Result<()> {
        if !seen.insert(rel.to_owned()) {
            return Ok(());
        }
        let abs = self.root().join(rel);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        };
        let stat = stat_of(&meta);
        prog.entries += 1;
        pending.report.entries += 1;
        let prev = self.store.file(rel)?;
        if let Some(p) = &prev {
            if !p.entry.deleted && p.disk == Some(stat) {
                return Ok(());
            }
        }
        prog.committed = pending.committed;
        if !meta.is_dir() && !meta.file_type().is_symlink() {
            prog.current = rel.to_owned();
            prog.bytes_hashed += stat.size;
            pending.report.bytes_hashed += stat.size;
            progress(prog);
        } else if prog.entries.is_multiple_of(256) {
            progress(prog);
        }
        if opts.dry_run {
            let changed = match &prev {
                Some(p) if !p.entry.deleted && meta.is_dir() => {
                    p.entry.kind != EntryKind::Dir || p.entry.mode & 0o7777 != stat.mode & 0o7777
                }
                // A link's stat moves when it is rewritten with the same
                // target (a peer's state applied here): its target decides.
                Some(p) if !p.entry.deleted && meta.file_type().is_symlink() => {
                    p.entry.kind != EntryKind::Symlink
                        || fs::read_link(&abs)
                            .ok()
                            .map(|t| t.to_string_lossy().into_owned())
                            != p.entry.target
                }
                // Recorded as "racy" (written in the same clock tick as its
                // stat): unchanged unless the bytes differ. Compared without
                // ingesting, so a read-only dry run works.
                Some(p)
                    if !p.entry.deleted
                        && p.entry.kind == EntryKind::File
                        && meta.is_file()
                        && p.disk
                            .is_some_and(|d| d.racy && DiskStat { racy: false, ..d } == stat) =>
                {
                    fs::read(&abs).ok() != self.store.content(&p.entry).ok()
                }
                _ => true,
            };
            if changed {
                Self::note(
                    pending.report,
                    rel,
                    prev.as_ref().is_some_and(|p| !p.entry.deleted),
                );
            }
            return Ok(());
        }
        let mut tell = |first: usize, chunks: &[(sovryn_store::ChunkId, u32)]| {
            prog.durable = Some((first, chunks.to_vec()));
            progress(prog);
            prog.durable = None;
        };
        let durable: Option<&mut sovryn_store::DurableChunks<'_>> =
            opts.announce_large.then_some(&mut tell);
        let read = match ahead {
            Some(a) if meta.is_file() => a.take(self, rel),
            _ => None,
        };
        // When the bytes were read (a worker may have read them earlier):
        // a file modified within a second of that may change again in the
        // same clock tick without its stat changing, so it is recorded as
        // racy and read again at the next scan.
        let read_at = read
            .as_ref()
            .map_or_else(sovryn_store::now_ns, |r| r.read_ns);
        let Some((base, text)) = self.disk_entry(rel, durable, read)? else {
            return Ok(());
        };
        // Never record a torn read: if the file moved under us, leave it to the next scan.
        let after = fs::symlink_metadata(&abs).map(|m| stat_of(&m)).ok();
        if after != Some(stat) {
            pending.report.unstable += 1;
            return Ok(());
        }
        if let Some(p) = &prev {
            if !p.entry.deleted && p.entry.same_content(&base) {
                // Touched, not changed: remember the new stat, record no version.
                self.store.set_disk_stat(
                    rel,
                    Some(crate::fsutil::mark_racy(stat, sovryn_store::now_ns())),
                )?;
                return Ok(());
            }
        }
        Self::note(
            pending.report,
            rel,
            prev.as_ref().is_some_and(|p| !p.entry.deleted),
        );
        let size = base.size;
        let mut base = base;
        base.message = opts.message.clone();
        let entry = self.local_entry(prev.as_ref().map(|p| &p.entry), base, opts.actor.as_deref());
        self.push(
            Change {
                path: rel.to_owned(),
                entry,
                disk: Some(crate::fsutil::mark_racy(stat, read_at)),
                text,
            },
            size,
            opts,
            pending,
        )
    }

    fn note(report: &mut ScanReport, rel: &str, existed: bool) {
        if existed {
            report.modified += 1;
        } else {
            report.added += 1;
        }
        if report.changed.len() < 1000 {
            report.changed.push(rel.to_owned());
        }
    }

    fn push(
        &mut self,
        change: Change,
        size: u64,
        opts: &ScanOptions,
        pending: &mut Pending<'_>,
    ) -> Result<()> {
        if opts.dry_run {
            if change.entry.deleted && pending.report.changed.len() < 1000 {
                pending.report.changed.push(change.path);
            }
            return Ok(());
        }
        pending.bytes += size;
        pending.changes.push(change);
        if pending.changes.len() >= GROUP_FILES || pending.bytes >= GROUP_BYTES {
            self.flush_group(opts, pending)?;
        }
        Ok(())
    }

    fn flush_group(&mut self, opts: &ScanOptions, pending: &mut Pending<'_>) -> Result<()> {
        if opts.dry_run || pending.changes.is_empty() {
            return Ok(());
        }
        let records = self.store.commit(&pending.changes)?;
        if let Some(last) = records.last() {
            pending.committed = pending.committed.max(last.seq);
        }
        for c in &pending.changes {
            if c.entry.deleted && pending.report.changed.len() < 1000 {
                pending.report.changed.push(c.path.clone());
            }
        }
        let room = 1000usize.saturating_sub(pending.report.records.len());
        pending
            .report
            .records
            .extend(records.into_iter().take(room));
        pending.changes.clear();
        pending.bytes = 0;
        Ok(())
    }
}

/// Whether `stat` still describes what is at `path`.
pub fn unchanged_on_disk(path: &Path, stat: &DiskStat) -> bool {
    fs::symlink_metadata(path)
        .map(|m| stat_of(&m) == *stat)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::node;

    /// A file rewritten in the same clock tick as it was scanned, with the
    /// same size (so the same stat), is read again at the next scan, not
    /// taken as unchanged.
    #[test]
    fn a_same_tick_rewrite_after_a_scan_is_not_missed() {
        let (_dir, mut n) = node();
        let path = n.root().join("f.txt");
        fs::write(&path, "aaaa").unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        assert!(n.store.file("f.txt").unwrap().unwrap().disk.unwrap().racy);
        // The same size, the same inode, the mtime put back: the stat is
        // what the scan recorded.
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &f, b"bbbb").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        let rec = n.store.file("f.txt").unwrap().unwrap();
        assert_eq!(n.store.content(&rec.entry).unwrap(), b"bbbb");
    }

    /// Each committed group is reported while the scan goes on, so the
    /// daemon can announce it to peers before the last file is read.
    #[test]
    fn groups_are_reported_as_committed_before_the_scan_ends() {
        let (_dir, mut n) = node();
        let files = (GROUP_BYTES / (4 << 20)) as usize + 3;
        for i in 0..files {
            let mut data = vec![0u8; 4 << 20];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
            fs::write(n.root().join(format!("f{i:02}.bin")), data).unwrap();
        }
        let mut seen: Vec<u64> = Vec::new();
        let report = n
            .scan(&[], &ScanOptions::default(), &mut |p| {
                seen.push(p.committed)
            })
            .unwrap();
        assert_eq!(report.changed.len(), files);
        let last = n.store.sequence().unwrap();
        let mid = seen.iter().copied().filter(|&c| c > 0).min();
        assert!(
            mid.is_some_and(|c| c < last),
            "a group committed mid-scan was reported: {seen:?}, last {last}"
        );
        // Each reported sequence is a committed, complete record.
        for c in seen.into_iter().filter(|&c| c > 0) {
            assert!(n.store.changes_since(c - 1, 1).unwrap().len() == 1);
        }
    }
}
