//! Writing files as agents and commands do, in groups: each file is written
//! beside its target, the group's files and chunks are synced together, put
//! in place, and recorded in one commit. Concurrent writers share a group
//! through [`crate::Writer::write_file`].

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sovryn_store::{Change, EntryKind, FileRecord};

use crate::fsutil::{self, disk_stat, sync_file};
use crate::node::Node;
use crate::ops::{bare, live, parent_of, NEW_FILE_MODE};
use crate::paths;
use crate::{Error, Result};

impl Node {
    /// [`Node::write_file`] for several files at once, with one commit for
    /// the group (one pack sync, one transaction) instead of one each: how
    /// concurrent agents' writes share the cost of making them durable.
    /// Each file is still written, synced and renamed into place before the
    /// commit. A write touching a path an earlier one of the group records
    /// (the same file, or a directory it creates) starts a new group.
    /// Returns one result per write, in order.
    pub fn write_files(&mut self, writes: &[FileWrite<'_>]) -> Vec<Result<Written>> {
        let mut results: Vec<Option<Result<Written>>> = writes.iter().map(|_| None).collect();
        let mut group = WriteGroup::default();
        for (i, w) in writes.iter().enumerate() {
            let rel = match self.checked_rel(w.rel) {
                Ok(r) => r,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            if group.touches(&rel) {
                self.commit_group(&mut group, &mut results);
            }
            match self.prepare_write(&rel, w.bytes, w.actor, w.expect) {
                Ok(Prepared::Unchanged(rec)) => {
                    results[i] = Some(Ok(Written {
                        record: *rec,
                        created: false,
                    }))
                }
                Ok(Prepared::Changes {
                    changes,
                    created,
                    staged,
                }) => group.add(Pending {
                    index: i,
                    rel,
                    created,
                    changes,
                    staged,
                }),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        self.commit_group(&mut group, &mut results);
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::SharedCommit("not recorded".into()))))
            .collect()
    }

    /// Makes the group's files durable and puts them in place, then
    /// records them in one commit. The files' data and the chunks are synced
    /// at once (the syncs overlap), each file is renamed over its target,
    /// and each directory touched is synced once.
    fn commit_group(&mut self, group: &mut WriteGroup, results: &mut [Option<Result<Written>>]) {
        let pending = std::mem::take(group).pending;
        if pending.is_empty() {
            return;
        }
        let store = &mut self.store;
        let (chunks, synced) = std::thread::scope(|s| {
            let chunks = s.spawn(|| store.sync_chunks());
            let synced = on_threads(&pending, |p| sync_file(&p.staged.tmp));
            (chunks.join(), synced)
        });
        let chunks = match chunks {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::SharedCommit("syncing the chunks panicked".into())),
        };
        let mut placed = Vec::new();
        for (p, synced) in pending.into_iter().zip(synced) {
            let r = chunks
                .as_ref()
                .map_err(|e| Error::SharedCommit(e.to_string()))
                .and(synced)
                .and_then(|_| {
                    fs::rename(&p.staged.tmp, &p.staged.target)
                        .map_err(|e| Error::io(&p.staged.target, e))
                });
            match r {
                Ok(()) => placed.push(p),
                Err(e) => {
                    let _ = fs::remove_file(&p.staged.tmp);
                    results[p.index] = Some(Err(e));
                }
            }
        }
        let mut dirs: Vec<PathBuf> = placed
            .iter()
            .filter_map(|p: &Pending| p.staged.target.parent().map(Path::to_owned))
            .collect();
        dirs.sort();
        dirs.dedup();
        let dirs_synced: Vec<(PathBuf, Result<()>)> = {
            let synced = on_threads(&dirs, |d| sync_file(d));
            dirs.into_iter().zip(synced).collect()
        };
        let mut changes = Vec::new();
        let mut recorded = Vec::new();
        for mut p in placed {
            let parent = p.staged.target.parent();
            let dir = dirs_synced
                .iter()
                .find(|(d, _)| Some(d.as_path()) == parent);
            let r = match dir {
                Some((_, Err(e))) => Err(Error::SharedCommit(e.to_string())),
                _ => disk_stat(&p.staged.target),
            };
            match r {
                Ok(stat) => {
                    let stat = fsutil::mark_racy(stat, sovryn_store::now_ns());
                    if let Some(c) = p.changes.iter_mut().rfind(|c| c.path == p.rel) {
                        c.entry.mtime_ns = stat.mtime_ns;
                        c.disk = Some(stat);
                    }
                    changes.append(&mut p.changes);
                    recorded.push((p.index, p.rel, p.created));
                }
                Err(e) => results[p.index] = Some(Err(e)),
            }
        }
        if recorded.is_empty() {
            return;
        }
        match self.store.commit(&changes) {
            Ok(recs) => {
                for (i, rel, created) in recorded {
                    results[i] = Some(
                        recs.iter()
                            .rfind(|r| r.path == rel)
                            .map(|r| Written {
                                record: r.clone(),
                                created,
                            })
                            .ok_or_else(|| {
                                Error::NotFound(format!("writing {rel} recorded nothing"))
                            }),
                    );
                }
            }
            Err(e) => {
                let why = e.to_string();
                let mut first = Some(Error::from(e));
                for (i, _, _) in recorded {
                    results[i] = Some(Err(first
                        .take()
                        .unwrap_or_else(|| Error::SharedCommit(why.clone()))));
                }
            }
        }
    }

    /// Writes `bytes` (the content just ingested) to a temp file beside
    /// `target` with `mode`, not yet synced: [`Self::commit_group`] syncs
    /// and places it. The bytes are at hand: reading the new chunks back
    /// from the store would decrypt what was just sealed.
    fn stage_file(&self, target: &Path, bytes: &[u8], mode: u32) -> Result<StagedFile> {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(StagedFile {
            tmp: self.write_temp(target, mode, false, |f| {
                f.write_all(bytes).map_err(|e| Error::io(target, e))
            })?,
            target: target.to_owned(),
        })
    }

    /// Writes the file and works out what its commit records.
    fn prepare_write(
        &mut self,
        rel: &str,
        bytes: &[u8],
        actor: Option<&str>,
        expect: Option<u64>,
    ) -> Result<Prepared> {
        let rel = rel.to_owned();
        if !self.rules.keeps(&rel, false) {
            return Err(Error::Usage(format!(
                "{rel} is ignored or excluded on this node"
            )));
        }
        let path = paths::confined(self.root(), &rel)?;
        if let Ok(m) = fs::symlink_metadata(&path) {
            if m.is_dir() {
                return Err(Error::Usage(format!("{rel} is a directory")));
            }
            if m.file_type().is_symlink() {
                return Err(Error::Usage(format!(
                    "{rel} is a symbolic link; links are never written through"
                )));
            }
        }
        self.capture(&rel)?;
        let mut changes = self.ensure_dirs(parent_of(&rel), actor)?;
        let prev = self.store.file(&rel)?;
        if let Some(want) = expect {
            let now = live(&prev).map(|p| p.label);
            if now != Some(want) {
                return Err(Error::Stale(match now {
                    Some(v) => format!("{rel} is now v{v}, not v{want}"),
                    None => format!("{rel} is gone"),
                }));
            }
        }
        let limit = if self.config.search.enabled {
            self.config.search.max_text_bytes
        } else {
            0
        };
        let ing = self.store.ingest(std::io::Cursor::new(bytes), limit)?;
        let mode = live(&prev)
            .filter(|p| p.entry.kind == EntryKind::File)
            .map(|p| p.entry.mode & 0o777)
            .unwrap_or(NEW_FILE_MODE);
        let mut base = bare(EntryKind::File, mode);
        base.size = ing.size;
        base.chunks = ing.chunks;
        if let Some(p) = live(&prev) {
            // `capture` made the record match the disk, so equal content
            // with the file present means there is nothing to write.
            let on_disk = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            if p.entry.same_content(&base) && on_disk && changes.is_empty() {
                self.store.flush()?;
                return Ok(Prepared::Unchanged(Box::new(p.clone())));
            }
        }
        let entry = self.local_entry(prev.as_ref().map(|p| &p.entry), base, actor);
        let staged = self.stage_file(&path, bytes, entry.mode)?;
        changes.push(Change {
            path: rel.clone(),
            entry,
            disk: None,
            text: ing.text,
        });
        Ok(Prepared::Changes {
            changes,
            created: live(&prev).is_none(),
            staged,
        })
    }
}

/// One file of [`Node::write_files`].
#[derive(Debug, Clone, Copy)]
pub struct FileWrite<'a> {
    /// Path relative to the storage root.
    pub rel: &'a str,
    /// The new content.
    pub bytes: &'a [u8],
    /// Who writes it (an agent's token name), for the version.
    pub actor: Option<&'a str>,
    /// The version the content was made from (an edit of `v3`): if the
    /// file's current version is another one when the write is made (a
    /// write in between, or an edit on disk recorded first), the write is
    /// refused with [`Error::Stale`] and nothing is lost.
    pub expect: Option<u64>,
}

/// A file written by [`Node::write_files`].
#[derive(Debug, Clone)]
pub struct Written {
    /// Its record now.
    pub record: FileRecord,
    /// Whether the write created it (no live file was recorded there).
    pub created: bool,
}

/// What a write commits.
enum Prepared {
    /// The same content was there: nothing to record.
    Unchanged(Box<FileRecord>),
    /// Its changes (the file, and directories it created), whether the
    /// file is new, and its content written beside it.
    Changes {
        changes: Vec<Change>,
        created: bool,
        staged: StagedFile,
    },
}

/// A file's new content in a temp file beside it, not yet synced.
struct StagedFile {
    tmp: PathBuf,
    target: PathBuf,
}

/// A write made and waiting for its group's commit.
struct Pending {
    index: usize,
    rel: String,
    created: bool,
    changes: Vec<Change>,
    staged: StagedFile,
}

/// Writes made and waiting for their shared commit.
#[derive(Default)]
struct WriteGroup {
    pending: Vec<Pending>,
    /// Every path their changes record.
    paths: HashSet<String>,
}

impl WriteGroup {
    fn add(&mut self, p: Pending) {
        self.paths.extend(p.changes.iter().map(|c| c.path.clone()));
        self.pending.push(p);
    }

    /// Whether writing `rel` depends on what the group records: the path
    /// itself, or a directory above it (which the group creates).
    fn touches(&self, rel: &str) -> bool {
        self.paths.contains(rel)
            || rel
                .match_indices('/')
                .any(|(i, _)| self.paths.contains(&rel[..i]))
    }
}

/// Runs `f` on each item, on up to [`SYNC_THREADS`] threads at once (the
/// syncs wait on the disk, which takes them together), results in order.
fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Threads syncing a group's files at once.
const SYNC_THREADS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::node;

    #[test]
    fn writes_of_a_group_are_recorded_each_as_if_alone() {
        let (_d, mut n) = node();
        let w = |rel: &'static str, bytes: &'static [u8]| FileWrite {
            rel,
            bytes,
            actor: Some("agent"),
            expect: None,
        };
        let out = n.write_files(&[
            w("a/x.txt", b"one"),
            w("a/y.txt", b"two"),
            w("b.txt", b"three"),
            // The same file again: a group of its own, a second version.
            w("a/x.txt", b"one, again"),
            w("../out.txt", b"no"),
            // The same content as now: nothing to record.
            w("b.txt", b"three"),
        ]);
        assert_eq!(out.len(), 6);
        let ok: Vec<&Written> = out[..4].iter().map(|r| r.as_ref().unwrap()).collect();
        assert_eq!(
            ok.iter()
                .map(|w| (w.record.path.as_str(), w.record.label, w.created))
                .collect::<Vec<_>>(),
            [
                ("a/x.txt", 1, true),
                ("a/y.txt", 1, true),
                ("b.txt", 1, true),
                ("a/x.txt", 2, false)
            ]
        );
        assert!(out[4].is_err());
        let same = out[5].as_ref().unwrap();
        assert_eq!((same.record.label, same.created), (1, false));
        assert_eq!(fs::read(n.root().join("a/x.txt")).unwrap(), b"one, again");
        assert_eq!(fs::read(n.root().join("a/y.txt")).unwrap(), b"two");
        assert_eq!(
            n.store.versions("a").unwrap().len(),
            1,
            "the directory is recorded once"
        );
        assert_eq!(n.store.versions("a/x.txt").unwrap().len(), 2);
        assert!(!n.root().join("../out.txt").exists());
        n.store.verify(&mut |_, _| {}).unwrap();
    }

    #[test]
    fn a_write_made_from_an_older_version_is_refused_and_loses_nothing() {
        let (_d, mut n) = node();
        let v1 = n.write_file("e.md", b"first", None).unwrap();
        n.write_file("e.md", b"second", None).unwrap();
        let edit = |expect| FileWrite {
            rel: "e.md",
            bytes: b"first, edited",
            actor: Some("agent"),
            expect: Some(expect),
        };
        let out = n.write_files(&[edit(v1.label)]).pop().unwrap();
        assert!(matches!(out, Err(Error::Stale(_))), "{out:?}");
        assert_eq!(fs::read(n.root().join("e.md")).unwrap(), b"second");
        // An edit on disk not yet recorded is recorded first, and refuses it too.
        fs::write(n.root().join("e.md"), b"third, by hand").unwrap();
        let out = n.write_files(&[edit(2)]).pop().unwrap();
        assert!(matches!(out, Err(Error::Stale(_))), "{out:?}");
        assert_eq!(n.store.versions("e.md").unwrap().len(), 3);
        let ok = n.write_files(&[edit(3)]).pop().unwrap().unwrap();
        assert_eq!(ok.record.label, 4);
        assert_eq!(fs::read(n.root().join("e.md")).unwrap(), b"first, edited");
    }
}
