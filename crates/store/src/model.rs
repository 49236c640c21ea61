//! The records the index keeps: a path's current state and its history.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::vv::VersionVector;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file: its content is the chunk list.
    File,
    /// A directory (recorded so empty ones sync too).
    Dir,
    /// A symbolic link: stored as its target text, never followed.
    Symlink,
}

/// One state of a path: what a version records and what peers exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// A tombstone: the path was deleted in this version.
    #[serde(default)]
    pub deleted: bool,
    /// Size in bytes (0 for directories, target length for symlinks).
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// A symlink's target, as written in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Which edits this state has seen.
    pub vv: VersionVector,
    /// Name of the node that made this state.
    pub author: String,
    /// Who on that node made it (a user, or `mcp:<token name>`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// When the state was recorded, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// An optional note (restore records "restored from v1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A file's content, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
}

impl Entry {
    /// A digest of the content (kind, chunk ids, target): equal content, equal hash.
    pub fn content_hash(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&[self.kind as u8, self.deleted as u8]);
        for c in &self.chunks {
            h.update(&c.0);
        }
        if let Some(t) = &self.target {
            h.update(t.as_bytes());
        }
        h.finalize().to_hex()[..32].to_string()
    }

    /// Whether two states hold the same content and permissions.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.deleted == other.deleted
            && self.chunks == other.chunks
            && self.target == other.target
            && (self.kind == EntryKind::Symlink || self.mode & 0o7777 == other.mode & 0o7777)
    }
}

/// The current state of a path on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the storage root, `/`-separated.
    pub path: String,
    /// Position in this node's change log.
    pub seq: u64,
    /// Number of the newest version (`v{label}`).
    pub label: u64,
    /// The state.
    pub entry: Entry,
    /// What the file on disk looked like when this state was last matched
    /// against it; `None` until it is (a remote state not yet written).
    #[serde(default)]
    pub disk: Option<DiskStat>,
}

/// A directory entry as listings show it, read from the index's columns
/// and four fields of the stored entry rather than from whole decoded
/// records: a listing of 1,000 entries costs what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Path relative to the storage root, `/`-separated.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Bytes (files).
    pub size: u64,
    /// Number of the newest version (`v{label}`).
    pub label: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// The node that made the current version.
    pub author: String,
    /// A symlink's target.
    pub target: Option<String>,
}

impl From<&FileRecord> for Child {
    fn from(r: &FileRecord) -> Self {
        Child {
            path: r.path.clone(),
            kind: r.entry.kind,
            size: r.entry.size,
            label: r.label,
            mode: r.entry.mode,
            mtime_ns: r.entry.mtime_ns,
            author: r.entry.author.clone(),
            target: r.entry.target.clone(),
        }
    }
}

/// The on-disk identity of a file at a scan: if it is unchanged, so is the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Mode bits (type and permissions).
    pub mode: u32,
    /// Modified so close to the scan that a later same-tick write could keep
    /// this exact stat: such a file is re-read at the next scan (git's "racy clean").
    #[serde(default)]
    pub racy: bool,
}

/// One historical state of a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Path relative to the storage root.
    pub path: String,
    /// Per-path number: `v1`, `v2`, …
    pub label: u64,
    /// The state.
    pub entry: Entry,
}

impl VersionRecord {
    /// The version's id: a hash of its path and its state (vector, author,
    /// time, content), so the same on every node that holds it, unlike
    /// the per-node label. 64 hex digits; show a unique prefix
    /// ([`short_ids`]).
    pub fn id(&self) -> String {
        version_id(&self.path, &self.entry)
    }
}

/// The id of the version `entry` of `path` (see [`VersionRecord::id`]).
pub fn version_id(path: &str, entry: &Entry) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"sovryn version v1\0");
    h.update(path.as_bytes());
    h.update(b"\0");
    // Field order is the struct's and the vector is a sorted map: the
    // same state serialises to the same bytes everywhere.
    h.update(&serde_json::to_vec(entry).unwrap_or_default());
    h.finalize().to_hex().to_string()
}

/// The shortest prefixes (at least 7 hex digits, like git) that tell the
/// given ids apart, in the same order.
pub fn short_ids(ids: &[String]) -> Vec<String> {
    let mut len = 7;
    while len < 64 {
        let mut seen = std::collections::HashSet::new();
        if ids.iter().all(|i| seen.insert(&i[..len.min(i.len())])) {
            break;
        }
        len += 1;
    }
    ids.iter()
        .map(|i| i[..len.min(i.len())].to_owned())
        .collect()
}

/// A state to record for a path.
#[derive(Debug, Clone)]
pub struct Change {
    /// Path relative to the storage root.
    pub path: String,
    /// The new state.
    pub entry: Entry,
    /// The file on disk this state was read from, when it was.
    pub disk: Option<DiskStat>,
    /// The text to index for search, for small UTF-8 files.
    pub text: Option<String>,
}

/// A full-text search hit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchHit {
    /// The file.
    pub path: String,
    /// The matching passage, matches in `[`brackets`]`.
    pub snippet: String,
    /// BM25 rank (lower is better).
    pub rank: f64,
}

/// Figures about the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Live files in the tree.
    pub files: u64,
    /// Live directories.
    pub dirs: u64,
    /// Live symlinks.
    pub symlinks: u64,
    /// Versions kept, of all paths.
    pub versions: u64,
    /// Bytes of the live files.
    pub tree_bytes: u64,
    /// Bytes of every kept file version, as if each were stored whole.
    pub logical_bytes: u64,
    /// Bytes of distinct chunks before compression.
    pub unique_bytes: u64,
    /// Bytes of chunks as stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// Bytes of pack files on disk, including garbage awaiting gc.
    pub pack_bytes: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// logical / unique.
    pub dedup_ratio: f64,
    /// unique / stored.
    pub compression_ratio: f64,
    /// Newest sequence number in the change log.
    pub sequence: u64,
}
