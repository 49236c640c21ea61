//! Reading a folder without its writer: the [`View`] trait (a store plus its
//! working tree) that both an opened [`Node`] and a read-only [`Reader`]
//! give, and a [`ReadPool`] of readers shared by a server's tasks.
//!
//! SQLite in WAL mode lets readers run beside the one writer; a reader sees
//! every committed row and never a chunk that is only appended. So a 4 KiB
//! read never waits for a sync batch or a 1 GiB file being recorded.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sovryn_store::{Entry, EntryKind, FileRecord, Store, VersionRecord};

use crate::conflicts::ConflictCopy;
use crate::node::parse_label;
use crate::{Error, Node, Result};

/// A unified diff of two texts with three lines of context.
pub fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(3)
        .header(a_name, b_name)
        .to_string()
}

/// What reading a folder needs: its store and its working tree.
pub trait View {
    /// The folder's store (read-only for a [`Reader`]).
    fn store(&self) -> &Store;
    /// The storage root (the working tree).
    fn root(&self) -> &Path;

    /// A unified diff between two states of `rel` (a summary when either is binary).
    fn diff(&self, rel: &str, a: (&str, &Entry), b: (&str, &Entry)) -> Result<String> {
        const LIMIT: u64 = 16 * 1024 * 1024;
        let read = |e: &Entry| -> Result<Option<String>> {
            if e.deleted || e.kind != EntryKind::File {
                return Ok(Some(String::new()));
            }
            if e.size > LIMIT {
                return Ok(None);
            }
            let bytes = self.store().content(e)?;
            Ok(if bytes.contains(&0) {
                None
            } else {
                String::from_utf8(bytes).ok()
            })
        };
        match (read(a.1)?, read(b.1)?) {
            (Some(x), Some(y)) => Ok(unified_diff(
                &x,
                &y,
                &format!("{rel}@{}", a.0),
                &format!("{rel}@{}", b.0),
            )),
            _ => Ok(format!(
                "binary files differ: {rel}@{} ({} bytes, {}) vs {rel}@{} ({} bytes, {})\n",
                a.0,
                a.1.size,
                a.1.content_hash(),
                b.0,
                b.1.size,
                b.1.content_hash()
            )),
        }
    }

    /// Conflict copies currently in the tree (recorded, live, on disk).
    fn conflict_copies(&self) -> Result<Vec<ConflictCopy>> {
        crate::conflicts::copies_in(self)
    }

    /// The current record of a path, or a "not tracked" error.
    fn record(&self, rel: &str) -> Result<FileRecord> {
        self.store().file(rel)?.ok_or_else(|| {
            Error::NotFound(format!(
                "not tracked: {rel} (run 'sovryn add {rel}' first?)"
            ))
        })
    }

    /// Version `spec` (`v2`) of a path.
    ///
    /// `spec` is a label (`v2`, `2`) or a version id: its full hex or a
    /// prefix of at least 4 digits that names one version of the path
    /// (ids are the same on every node; labels are this node's).
    fn find_version(&self, rel: &str, spec: &str) -> Result<VersionRecord> {
        self.record(rel)?;
        let looks_like_label = spec
            .trim_start_matches(['v', 'V'])
            .bytes()
            .all(|b| b.is_ascii_digit())
            && !spec.is_empty()
            && (spec.starts_with(['v', 'V']) || spec.len() < 4);
        if !looks_like_label && spec.len() >= 4 && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            let want = spec.to_ascii_lowercase();
            let mut found: Vec<VersionRecord> = self
                .store()
                .versions(rel)?
                .into_iter()
                .filter(|v| v.id().starts_with(&want))
                .collect();
            return match found.len() {
                1 => Ok(found.remove(0)),
                0 => Err(Error::NotFound(format!(
                    "{rel} has no version {spec} (see 'sovryn versions {rel}')"
                ))),
                n => Err(Error::Usage(format!(
                    "{spec} names {n} versions of {rel}; give more digits"
                ))),
            };
        }
        let label = parse_label(spec)?;
        self.store().version(rel, label)?.ok_or_else(|| {
            Error::NotFound(format!(
                "{rel} has no version v{label} (see 'sovryn versions {rel}')"
            ))
        })
    }
}

impl View for Node {
    fn store(&self) -> &Store {
        &self.store
    }
    fn root(&self) -> &Path {
        Node::root(self)
    }
}

/// A read-only handle on a node's folder: its own SQLite connection and
/// pack readers.
pub struct Reader {
    store: Store,
    root: PathBuf,
}

impl View for Reader {
    fn store(&self) -> &Store {
        &self.store
    }
    fn root(&self) -> &Path {
        &self.root
    }
}

impl Node {
    /// A read-only handle on this node's folder.
    pub fn reader(&self) -> Result<Reader> {
        Ok(Reader {
            store: self.store.reader()?,
            root: self.config.storage_path.clone(),
        })
    }
}

/// A few [`Reader`]s shared by tasks.
pub struct ReadPool {
    readers: Vec<Mutex<Reader>>,
}

impl ReadPool {
    /// `n` (at least one) readers of `node`'s folder.
    pub fn new(node: &Node, n: usize) -> Result<Self> {
        let readers = (0..n.max(1))
            .map(|_| node.reader().map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadPool { readers })
    }

    /// A reader no one is using, if there is one (never blocks).
    pub fn try_get(&self) -> Option<MutexGuard<'_, Reader>> {
        self.readers.iter().find_map(|r| r.try_lock().ok())
    }

    /// A free reader, or else waits for one (blocks: call it off the async
    /// runtime). Waits only on other readers, never on the writer.
    pub fn get(&self) -> MutexGuard<'_, Reader> {
        if let Some(r) = self.try_get() {
            return r;
        }
        // A reader's state is a connection and pack handles: a panic in
        // another user leaves nothing half-done in it.
        self.readers[0].lock().unwrap_or_else(|e| e.into_inner())
    }
}
