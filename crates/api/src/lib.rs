//! Sovryn's operations as typed calls with typed, serialisable results: the
//! one place an operation lives, whoever asks for it.
//!
//! The command line runs a [`Query`] in its own process on a read-only
//! handle, or sends it over the control socket to the running node, which
//! answers from its own read-only handles (so a passphrase-protected node
//! answers without the passphrase being asked again). Both call [`ask`].
//!
//! Every result is an object with stable field names; times are RFC 3339
//! (UTC), modes octal strings, booleans booleans, so `--json` output and
//! the control protocol share one shape.
//!
//! This first cut holds the read queries of the command line; the MCP tools
//! and the write operations move here next (see `ARCHITECTURE.md`).

#![deny(missing_docs)]

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sovryn_engine::conflicts::ConflictCopy;
use sovryn_engine::View;
use sovryn_store::{Child, EntryKind, SearchHit, Stats, VerifyReport, VersionRecord};

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine refused or failed (not tracked, no such version, a bad path).
    #[error(transparent)]
    Engine(#[from] sovryn_engine::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] sovryn_store::Error),
    /// The call asked for something that cannot be given.
    #[error("{0}")]
    Refused(String),
}

/// Result of a call.
pub type Result<T> = std::result::Result<T, Error>;

/// Largest file [`Query::Read`] returns in one answer.
pub const MAX_READ_BYTES: u64 = 256 << 20;

/// A read-only question about a folder. Paths are relative to the folder
/// root, already resolved (see `sovryn_engine::paths::resolve_user_path`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Query {
    /// The entries of a directory (or the one entry of a file).
    List {
        /// The directory; `""` for the root.
        path: String,
    },
    /// A path's versions, newest first.
    Versions {
        /// The path.
        path: String,
    },
    /// A file's bytes, now or at a version.
    Read {
        /// The file.
        path: String,
        /// A label (`v2`) or a version id (prefix); `None`: the current one.
        version: Option<String>,
    },
    /// A unified diff between two versions, or a version and the file on disk.
    Diff {
        /// The file.
        path: String,
        /// The older version.
        from: String,
        /// The newer one; `None`: the file on disk now.
        to: Option<String>,
    },
    /// Full-text search.
    Search {
        /// Words to find.
        query: String,
        /// Only under this directory (`""`: everywhere).
        path: String,
        /// At most this many hits.
        limit: usize,
    },
    /// The conflict copies in the tree.
    Conflicts,
    /// The store's figures.
    Stats,
    /// Every chunk decrypted and hashed, every record's chunks present.
    Verify,
}

/// The answer to a [`Query`], one variant per query.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Of [`Query::List`].
    Listing(Listing),
    /// Of [`Query::Versions`].
    Versions(Versions),
    /// Of [`Query::Read`].
    Content(Content),
    /// Of [`Query::Diff`].
    Diff(Diff),
    /// Of [`Query::Search`].
    Hits(Hits),
    /// Of [`Query::Conflicts`].
    Conflicts(Conflicts),
    /// Of [`Query::Stats`].
    Stats(Stats),
    /// Of [`Query::Verify`].
    Verify(VerifyReport),
}

/// One entry of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Its path from the folder root.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Bytes (files).
    pub size: u64,
    /// Permission bits, octal (`"0644"`).
    pub mode: String,
    /// Its current version label on this node.
    pub version: String,
    /// Modification time, RFC 3339.
    pub modified: String,
    /// The node that made the current version.
    pub author: String,
    /// A symlink's target.
    pub target: Option<String>,
}

/// The entries under a path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    /// The path listed.
    pub path: String,
    /// Its entries, by name.
    pub entries: Vec<EntryInfo>,
}

/// One version of a path (also what MCP's `get_version_history` returns).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionInfo {
    /// This node's label (`v3`).
    pub version: String,
    /// The id, the same on every node (hex of the version record's hash).
    pub id: String,
    /// When it was made, RFC 3339.
    pub time: String,
    /// The node that made it.
    pub author: String,
    /// Who made it there (`mcp:<token>` for an agent).
    pub actor: Option<String>,
    /// Bytes.
    pub size: u64,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// Its message (`sovryn add -m`).
    pub message: Option<String>,
    /// Hash of its content.
    pub content_hash: String,
}

/// A path's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    /// The path.
    pub path: String,
    /// Newest first.
    pub versions: Vec<VersionInfo>,
}

/// A file's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Content {
    /// The file.
    pub path: String,
    /// The version read.
    pub version: String,
    /// Base64 of the bytes.
    pub base64: String,
}

impl Content {
    /// The bytes.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.base64)
            .map_err(|e| Error::Refused(format!("bad content encoding: {e}")))
    }
}

/// A unified diff.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diff {
    /// The file.
    pub path: String,
    /// The diff (a summary line for binary files).
    pub diff: String,
}

/// Search results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hits {
    /// Best first.
    pub hits: Vec<SearchHit>,
}

/// Conflict copies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conflicts {
    /// By path.
    pub conflicts: Vec<ConflictCopy>,
}

/// RFC 3339 in UTC for nanoseconds since the epoch.
pub fn rfc3339(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn entry_info(r: &Child) -> EntryInfo {
    EntryInfo {
        path: r.path.clone(),
        kind: r.kind,
        size: r.size,
        mode: format!("{:04o}", r.mode & 0o7777),
        version: format!("v{}", r.label),
        modified: rfc3339(r.mtime_ns),
        author: r.author.clone(),
        target: r.target.clone(),
    }
}

/// A version as calls return it.
pub fn version_info(v: &VersionRecord) -> VersionInfo {
    VersionInfo {
        version: format!("v{}", v.label),
        id: v.id(),
        time: rfc3339(v.entry.time_ns),
        author: v.entry.author.clone(),
        actor: v.entry.actor.clone(),
        size: v.entry.size,
        deleted: v.entry.deleted,
        message: v.entry.message.clone(),
        content_hash: v.entry.content_hash(),
    }
}

/// Answers `q` from `view`.
pub fn ask(view: &dyn View, q: Query) -> Result<Answer> {
    Ok(match q {
        Query::List { path } => Answer::Listing(list(view, path)?),
        Query::Versions { path } => {
            view.record(&path)?;
            let versions = view.store().versions(&path)?;
            Answer::Versions(Versions {
                versions: versions.iter().map(version_info).collect(),
                path,
            })
        }
        Query::Read { path, version } => {
            let (label, entry) = match version.as_deref() {
                Some(v) => {
                    let found = view.find_version(&path, v)?;
                    (found.label, found.entry)
                }
                None => {
                    let r = view.record(&path)?;
                    (r.label, r.entry)
                }
            };
            if entry.deleted {
                return Err(Error::Refused(format!("{path} is deleted in that version")));
            }
            if entry.kind != EntryKind::File {
                return Err(Error::Refused(format!("{path} is not a file")));
            }
            if entry.size > MAX_READ_BYTES {
                return Err(Error::Refused(format!(
                    "{path} is {} bytes; a running node answers reads up to {MAX_READ_BYTES} bytes (stop it, or copy the file from the folder)",
                    entry.size
                )));
            }
            let bytes = view.store().content(&entry)?;
            Answer::Content(Content {
                path,
                version: format!("v{label}"),
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        }
        Query::Diff { path, from, to } => Answer::Diff(Diff {
            diff: diff(view, &path, &from, to.as_deref())?,
            path,
        }),
        Query::Search { query, path, limit } => Answer::Hits(Hits {
            hits: view.store().search(&query, &path, limit)?,
        }),
        Query::Conflicts => Answer::Conflicts(Conflicts {
            conflicts: view.conflict_copies()?,
        }),
        Query::Stats => Answer::Stats(view.store().stats()?),
        Query::Verify => Answer::Verify(view.store().verify(&mut |_, _| {})?),
    })
}

/// [`Query::List`]: the entries of directory `rel` (a file lists as
/// itself), as the CLI and the HTTP API show them.
pub fn list(view: &dyn View, rel: String) -> Result<Listing> {
    Ok(Listing {
        entries: children(view, &rel)?.iter().map(entry_info).collect(),
        path: rel,
    })
}

/// The index rows of a listing, what [`list`] and MCP's `list_directory`
/// both show: the live entries directly in directory `rel`, by name; a
/// file lists as itself; a path the index does not know is an error.
pub fn children(view: &dyn View, rel: &str) -> Result<Vec<Child>> {
    let store = view.store();
    let this = if rel.is_empty() {
        None
    } else {
        store.file(rel)?.filter(|r| !r.entry.deleted)
    };
    let rows = match &this {
        Some(r) if r.entry.kind != EntryKind::Dir => vec![Child::from(r)],
        _ => store.children(rel)?,
    };
    if rows.is_empty() && !rel.is_empty() && this.is_none() {
        return Err(Error::Engine(sovryn_engine::Error::NotFound(format!(
            "not tracked: {rel}"
        ))));
    }
    Ok(rows)
}

/// Listings kept between calls while the index is unchanged, in the shape
/// a caller shows them (`T`, made once from the rows): MCP agents list the
/// same directories again and again, and reading and formatting 1,000 rows
/// took 0.43 ms of a call whose floor is 0.2 ms. Each listing is keyed by
/// the change log's newest sequence, which every change of the index
/// raises, so a listing is never served after anything changed (whichever
/// process or peer changed it).
pub struct ListingCache<T> {
    dirs: std::sync::Mutex<std::collections::HashMap<String, (u64, Arc<T>)>>,
}

impl<T> Default for ListingCache<T> {
    fn default() -> Self {
        ListingCache {
            dirs: Default::default(),
        }
    }
}

/// Directories a [`ListingCache`] keeps before starting over.
const CACHED_DIRS: usize = 64;

impl<T> ListingCache<T> {
    /// [`children`] of `rel` as `shape` makes them, from the cache when the
    /// index has not changed since they were made.
    pub fn get(
        &self,
        view: &dyn View,
        rel: &str,
        shape: impl FnOnce(Vec<Child>) -> T,
    ) -> Result<Arc<T>> {
        // The sequence first: rows read after it are at least as new, so a
        // listing is never kept under a sequence newer than what it shows
        // (at worst it is kept under an older one, and made again).
        let seq = view.store().sequence()?;
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, listing)) = dirs.get(rel) {
            if *at == seq {
                return Ok(listing.clone());
            }
        }
        drop(dirs);
        let listing = Arc::new(shape(children(view, rel)?));
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if dirs.len() >= CACHED_DIRS {
            dirs.clear();
        }
        dirs.insert(rel.to_owned(), (seq, listing.clone()));
        Ok(listing)
    }
}

/// Appends a time as RFC 3339 to the second (`2026-11-30T21:18:33Z`), for
/// listings of many entries, where the general formatter cost more than the
/// query.
pub fn push_rfc3339_secs(out: &mut String, ns: i64) {
    use std::fmt::Write as _;
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ns.div_euclid(1_000_000_000)) else {
        return;
    };
    let (year, month, day) = t.to_calendar_date();
    let (h, m, s) = t.to_hms();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{year:04}-{:02}-{day:02}T{h:02}:{m:02}:{s:02}Z",
        u8::from(month)
    );
}

fn diff(view: &dyn View, rel: &str, from: &str, to: Option<&str>) -> Result<String> {
    let a = view.find_version(rel, from)?;
    let a_label = format!("v{}", a.label);
    if let Some(v) = to {
        let b = view.find_version(rel, v)?;
        return Ok(view.diff(
            rel,
            (&a_label, &a.entry),
            (&format!("v{}", b.label), &b.entry),
        )?);
    }
    // The file as it is on disk now (unrecorded edits included).
    let abs = sovryn_engine::paths::confined(view.root(), rel)?;
    let current = match std::fs::read(&abs) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(sovryn_engine::Error::io(&abs, e).into()),
    };
    let old = view.store().content(&a.entry)?;
    Ok(
        match (String::from_utf8(old), String::from_utf8(current.clone())) {
            (Ok(x), Ok(y)) if !x.contains('\0') && !y.contains('\0') => {
                sovryn_engine::view::unified_diff(
                    &x,
                    &y,
                    &format!("{rel}@{a_label}"),
                    &format!("{rel}@current"),
                )
            }
            _ => format!(
                "binary files differ: {rel}@{a_label} ({} bytes) vs {rel}@current ({} bytes)\n",
                a.entry.size,
                current.len()
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_times_are_rfc_3339_to_the_second_and_agree_with_the_full_form() {
        for ns in [
            0i64,
            1_796_073_513_623_132_069,
            -1,
            -86_400_000_000_001,
            951_782_400_000_000_000,
        ] {
            let mut short = String::new();
            push_rfc3339_secs(&mut short, ns);
            let whole = rfc3339(ns.div_euclid(1_000_000_000) * 1_000_000_000);
            assert_eq!(short, whole, "{ns}");
        }
        let mut s = String::from("x");
        push_rfc3339_secs(&mut s, 1_796_073_513_623_132_069);
        assert_eq!(s, "x2026-11-30T21:18:33Z");
        let mut leap = String::new();
        push_rfc3339_secs(&mut leap, 951_782_400_000_000_000);
        assert_eq!(leap, "2000-02-29T00:00:00Z");
        // The ends of what an i64 of nanoseconds holds, without a panic.
        for ns in [i64::MAX, i64::MIN] {
            let mut t = String::new();
            push_rfc3339_secs(&mut t, ns);
            assert_eq!(t.len(), 20, "{t}");
        }
    }
}
