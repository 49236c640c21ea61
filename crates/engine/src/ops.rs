//! Mutations made on behalf of an agent (MCP) or another local client:
//! write, create a directory, delete, move. Each one records versions (with
//! the actor who asked) and updates the disk crash-safely.
//!
//! Before touching a path, whatever is on disk under it and not yet recorded
//! is scanned in first (with no actor), so an edit made outside Sovryn is in
//! history before an agent overwrites, moves or deletes it.

use std::fs;

use sovryn_store::{Change, Entry, EntryKind, FileRecord};

use crate::node::Node;
use crate::paths;
use crate::scan::ScanOptions;
use crate::write_group::FileWrite;
use crate::{Error, Result};

/// Mode of files created by an agent.
pub(crate) const NEW_FILE_MODE: u32 = 0o644;
/// Mode of directories created by an agent.
const NEW_DIR_MODE: u32 = 0o755;

pub(crate) fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

pub(crate) fn live(rec: &Option<FileRecord>) -> Option<&FileRecord> {
    rec.as_ref().filter(|r| !r.entry.deleted)
}

pub(crate) fn bare(kind: EntryKind, mode: u32) -> Entry {
    Entry {
        kind,
        deleted: false,
        size: 0,
        mode,
        mtime_ns: 0,
        target: None,
        vv: Default::default(),
        author: String::new(),
        actor: None,
        time_ns: 0,
        message: None,
        chunks: Vec::new(),
    }
}

impl Node {
    pub(crate) fn checked_rel(&self, raw: &str) -> Result<String> {
        let rel = paths::normalize_rel(raw)?;
        if rel.is_empty() {
            return Err(Error::BadPath(
                "this operation needs a path below the storage root".into(),
            ));
        }
        paths::confined(self.root(), &rel)?;
        Ok(rel)
    }

    /// Records what is on disk at or under `rel` if it differs from the index
    /// (an edit made outside Sovryn). Does nothing when nothing is there.
    pub fn capture(&mut self, rel: &str) -> Result<()> {
        let path = paths::confined(self.root(), rel)?;
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Ok(());
        };
        if !rel.is_empty() && !self.rules.keeps(rel, meta.is_dir()) {
            return Ok(());
        }
        self.scan(&[rel.to_owned()], &ScanOptions::default(), &mut |_| {})?;
        Ok(())
    }

    /// Changes that create (on disk, now) every missing directory of `dir`
    /// and `dir` itself. Fails if one of them is a file.
    pub(crate) fn ensure_dirs(&mut self, dir: &str, actor: Option<&str>) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        if dir.is_empty() {
            return Ok(out);
        }
        let parts: Vec<&str> = dir.split('/').collect();
        for depth in 1..=parts.len() {
            let d = parts[..depth].join("/");
            let path = paths::confined(self.root(), &d)?;
            let prev = self.store.file(&d)?;
            let on_disk = fs::symlink_metadata(&path).ok();
            match &on_disk {
                Some(m)
                    if m.is_dir()
                        && !m.file_type().is_symlink()
                        && live(&prev).is_some_and(|r| r.entry.kind == EntryKind::Dir) =>
                {
                    continue;
                }
                Some(m) if m.is_dir() && !m.file_type().is_symlink() => {}
                Some(_) => return Err(Error::Usage(format!("{d} exists and is not a directory"))),
                None => {}
            }
            if !self.rules.keeps(&d, true) {
                return Err(Error::Usage(format!(
                    "{d} is ignored or excluded on this node"
                )));
            }
            let mode = on_disk
                .as_ref()
                .map(|m| crate::fsutil::stat_of(m).mode & 0o777)
                .unwrap_or(NEW_DIR_MODE);
            let mut entry = self.local_entry(
                prev.as_ref().map(|p| &p.entry),
                bare(EntryKind::Dir, mode),
                actor,
            );
            let disk = self.materialize(&d, &entry)?;
            if let Some(s) = &disk {
                entry.mtime_ns = s.mtime_ns;
            }
            out.push(Change {
                path: d,
                entry,
                disk,
                text: None,
            });
        }
        Ok(out)
    }

    /// Writes `bytes` as the new content of the file `rel` (creating it and
    /// its directories if needed) and records the version with `actor`.
    /// Writing the same content again records nothing and returns the current record.
    pub fn write_file(
        &mut self,
        rel: &str,
        bytes: &[u8],
        actor: Option<&str>,
    ) -> Result<FileRecord> {
        let mut out = self.write_files(&[FileWrite {
            rel,
            bytes,
            actor,
            expect: None,
        }]);
        out.pop()
            .unwrap_or_else(|| Err(Error::NotFound(format!("writing {rel} recorded nothing"))))
            .map(|w| w.record)
    }

    /// Creates the directory `rel` and any missing parents. Returns the records
    /// made (empty when it already existed).
    pub fn create_dir(&mut self, rel: &str, actor: Option<&str>) -> Result<Vec<FileRecord>> {
        let rel = self.checked_rel(rel)?;
        let changes = self.ensure_dirs(&rel, actor)?;
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.store.commit(&changes)?)
    }

    /// Tombstones for every live record at or under `rel`, deepest first,
    /// removing each from disk. A directory that still holds unrecorded
    /// (ignored) entries is left in place and stays recorded.
    fn tombstones(&mut self, rel: &str, actor: Option<&str>) -> Result<Vec<Change>> {
        let mut recs: Vec<FileRecord> = self
            .store
            .files_under(rel)?
            .into_iter()
            .filter(|r| !r.entry.deleted)
            .collect();
        recs.sort_by(|a, b| b.path.cmp(&a.path));
        let mut out = Vec::new();
        for rec in recs {
            let mut base = rec.entry.clone();
            base.deleted = true;
            base.chunks.clear();
            base.size = 0;
            base.message = None;
            let entry = self.local_entry(Some(&rec.entry), base, actor);
            if self.materialize(&rec.path, &entry)?.is_some() {
                continue;
            }
            out.push(Change {
                path: rec.path,
                entry,
                disk: None,
                text: None,
            });
        }
        Ok(out)
    }

    /// Deletes the file, link or directory `rel` (a non-empty directory only
    /// when `recursive`). Every deleted path keeps its history. Returns the tombstones.
    pub fn delete_path(
        &mut self,
        rel: &str,
        recursive: bool,
        actor: Option<&str>,
    ) -> Result<Vec<FileRecord>> {
        let rel = self.checked_rel(rel)?;
        self.capture(&rel)?;
        let rec = self.store.file(&rel)?;
        let Some(rec) = live(&rec) else {
            return Err(Error::NotFound(format!("no such file or directory: {rel}")));
        };
        if rec.entry.kind == EntryKind::Dir && !recursive {
            let children = self
                .store
                .files_under(&rel)?
                .into_iter()
                .filter(|r| !r.entry.deleted && r.path != rel)
                .count();
            if children > 0 {
                return Err(Error::Usage(format!(
                    "{rel} is a directory with {children} entries; delete it recursively or empty it first"
                )));
            }
        }
        let changes = self.tombstones(&rel, actor)?;
        if changes.is_empty() {
            return Err(Error::Usage(format!(
                "{rel} still holds ignored files and was left in place"
            )));
        }
        Ok(self.store.commit(&changes)?)
    }

    /// Moves (renames) `from` to `to`, a file or a whole directory. `to` must
    /// not exist. The new paths continue nothing: they start a history of
    /// their own whose first version says where they came from; `from` gets
    /// tombstones. Returns the new records followed by the tombstones.
    pub fn move_path(
        &mut self,
        from: &str,
        to: &str,
        actor: Option<&str>,
    ) -> Result<Vec<FileRecord>> {
        let from = self.checked_rel(from)?;
        let to = self.checked_rel(to)?;
        if from == to {
            return Err(Error::Usage("source and destination are the same".into()));
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Error::Usage(format!("cannot move {from} into itself")));
        }
        self.capture(&from)?;
        let srcs: Vec<FileRecord> = self
            .store
            .files_under(&from)?
            .into_iter()
            .filter(|r| !r.entry.deleted)
            .collect();
        let Some(top) = srcs.iter().find(|r| r.path == from) else {
            return Err(Error::NotFound(format!(
                "no such file or directory: {from}"
            )));
        };
        let top_is_dir = top.entry.kind == EntryKind::Dir;
        let dest = paths::confined(self.root(), &to)?;
        if fs::symlink_metadata(&dest).is_ok() || live(&self.store.file(&to)?).is_some() {
            return Err(Error::Usage(format!(
                "{to} already exists; delete it first or choose another name"
            )));
        }
        if !self.rules.keeps(&to, top_is_dir) {
            return Err(Error::Usage(format!(
                "{to} is ignored or excluded on this node"
            )));
        }
        let mut changes = self.ensure_dirs(parent_of(&to), actor)?;
        for rec in &srcs {
            let new_path = format!("{to}{}", &rec.path[from.len()..]);
            let prev = self.store.file(&new_path)?;
            let mut base = rec.entry.clone();
            base.mode &= 0o777;
            base.message = Some(format!("moved from {}", rec.path));
            let mut entry = self.local_entry(prev.as_ref().map(|p| &p.entry), base, actor);
            let disk = self.materialize(&new_path, &entry)?;
            if let Some(s) = &disk {
                entry.mtime_ns = s.mtime_ns;
            }
            let text = self.text_of(&entry)?;
            changes.push(Change {
                path: new_path,
                entry,
                disk,
                text,
            });
        }
        changes.extend(self.tombstones(&from, actor)?);
        Ok(self.store.commit(&changes)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Home;
    use crate::node::InitOptions;
    use sovryn_store::{Access, MasterKey};

    pub(crate) fn node() -> (tempfile::TempDir, Node) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            dir: dir.path().join("home"),
        };
        let key = MasterKey::generate();
        Node::init(
            &home,
            InitOptions {
                storage_path: dir.path().join("root"),
                node_name: Some("t".into()),
                folder_key: Some(key.to_hex()),
                ..Default::default()
            },
        )
        .unwrap();
        let node = Node::open(home, &key, Access::ReadWrite).unwrap();
        (dir, node)
    }

    fn live_paths(n: &Node) -> Vec<String> {
        n.store
            .files_under("")
            .unwrap()
            .into_iter()
            .filter(|r| !r.entry.deleted)
            .map(|r| r.path)
            .collect()
    }

    #[test]
    fn write_records_a_version_with_its_actor_and_parents() {
        let (_d, mut n) = node();
        let rec = n.write_file("a/b/c.txt", b"hello", Some("mcp:x")).unwrap();
        assert_eq!((rec.label, rec.entry.size), (1, 5));
        assert_eq!(rec.entry.actor.as_deref(), Some("mcp:x"));
        assert_eq!(fs::read(n.root().join("a/b/c.txt")).unwrap(), b"hello");
        assert_eq!(live_paths(&n), ["a", "a/b", "a/b/c.txt"]);
        assert_eq!(
            n.store.search("hello", "", 10).unwrap()[0].path,
            "a/b/c.txt"
        );
        // Same content again: no new version.
        assert_eq!(n.write_file("a/b/c.txt", b"hello", None).unwrap().label, 1);
        assert_eq!(n.write_file("a/b/c.txt", b"bye", None).unwrap().label, 2);
        assert!(n.write_file("../x", b"no", None).is_err());
        assert!(n.write_file("", b"no", None).is_err());
        assert!(n.write_file("a/b", b"no", None).is_err());
    }

    #[test]
    fn children_are_the_live_entries_directly_in_a_directory() {
        let (_d, mut n) = node();
        for p in [
            "a.txt",
            "d/b.txt",
            "d/e/c.txt",
            "d-x/f.txt",
            "dz.txt",
            "d/gone.txt",
        ] {
            n.write_file(p, b"x", None).unwrap();
        }
        n.delete_path("d/gone.txt", false, None).unwrap();
        let names = |dir: &str| -> Vec<String> {
            n.store
                .children(dir)
                .unwrap()
                .into_iter()
                .map(|r| r.path)
                .collect()
        };
        assert_eq!(names(""), ["a.txt", "d", "d-x", "dz.txt"]);
        assert_eq!(names("d"), ["d/b.txt", "d/e"]);
        assert_eq!(names("d/"), ["d/b.txt", "d/e"]);
        assert_eq!(names("d/e"), ["d/e/c.txt"]);
        assert!(names("a.txt").is_empty() && names("nope").is_empty());
    }

    #[test]
    fn an_unrecorded_disk_edit_becomes_a_version_before_the_write() {
        let (_d, mut n) = node();
        n.write_file("f", b"one", None).unwrap();
        fs::write(n.root().join("f"), b"edited by hand").unwrap();
        let rec = n.write_file("f", b"three", Some("mcp:a")).unwrap();
        assert_eq!(rec.label, 3);
        let v2 = n.store.version("f", 2).unwrap().unwrap();
        assert_eq!(n.store.content(&v2.entry).unwrap(), b"edited by hand");
    }

    #[test]
    fn move_and_delete_keep_history_and_update_disk() {
        let (_d, mut n) = node();
        n.write_file("d/x.txt", b"x", None).unwrap();
        n.write_file("d/sub/y.txt", b"y", None).unwrap();
        assert!(n.move_path("d", "d/inner", None).is_err());
        n.write_file("e.txt", b"e", None).unwrap();
        assert!(n.move_path("e.txt", "d/x.txt", None).is_err());
        n.move_path("d", "m/d2", None).unwrap();
        assert!(!n.root().join("d").exists());
        assert_eq!(fs::read(n.root().join("m/d2/sub/y.txt")).unwrap(), b"y");
        assert_eq!(
            live_paths(&n),
            [
                "e.txt",
                "m",
                "m/d2",
                "m/d2/sub",
                "m/d2/sub/y.txt",
                "m/d2/x.txt"
            ]
        );
        assert_eq!(n.store.versions("d/x.txt").unwrap().len(), 2);
        assert!(n.delete_path("m", false, None).is_err());
        let gone = n.delete_path("m", true, Some("mcp:a")).unwrap();
        assert_eq!(gone.len(), 5);
        assert!(!n.root().join("m").exists());
        assert!(n.delete_path("m", true, None).is_err());
        assert!(n.create_dir("k/l", None).unwrap().len() == 2);
        assert!(n.create_dir("k/l", None).unwrap().is_empty());
        assert!(n.root().join("k/l").is_dir());
        assert!(n.create_dir("e.txt/z", None).is_err());
    }
}
