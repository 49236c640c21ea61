//! The MCP tools: reading, writing, editing, listing, searching and the
//! version history of the synced folder.
//!
//! Every path is normalised and confined to the storage root, and checked
//! against the caller's path scope: what lies outside does not exist for it.
//! Failures a model can act on come back as tool errors (`isError: true`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_router, ErrorData as McpError, Json, RoleServer};
use serde::{Deserialize, Serialize};
use sovryn_engine::config::PeerConfig;
use sovryn_engine::conflicts::{ConflictCopy, Keep};
use sovryn_engine::identity::PublicKey;
use sovryn_engine::scan::ScanOptions;
use sovryn_engine::{paths, Config, Node, Reader, View};
use sovryn_store::{Entry, EntryKind, FileRecord};

use crate::audit::AuditLine;
use crate::tokens::{Capability, Principal};
use crate::work::{Work, CANCELLED};
use crate::Shared;

/// Most bytes of file content one read returns.
pub const MAX_READ_BYTES: usize = 512 * 1024;
/// Largest file a tool loads into memory.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest content `write_file` accepts.
pub const MAX_WRITE_BYTES: usize = 32 * 1024 * 1024;

/// The capability a tool needs.
pub fn tool_capability(name: &str) -> Option<Capability> {
    Some(match name {
        "read_file"
        | "read_multiple_files"
        | "list_directory"
        | "directory_tree"
        | "get_file_metadata"
        | "search_files"
        | "get_version_history"
        | "diff_versions"
        | "list_conflicts" => Capability::Read,
        "write_file" | "edit_file" | "create_directory" | "delete_file" | "move_file"
        | "restore_version" | "resolve_conflict" | "force_sync_path" => Capability::Write,
        "get_stats" | "get_peers" | "get_sync_status" => Capability::Status,
        "add_peer" | "remove_peer" => Capability::Admin,
        _ => return None,
    })
}

/// Tools that change who may reach the folder (peers): an unscoped admin
/// token only, since what they grant is not confined to a path scope.
fn grants_rights(name: &str) -> bool {
    matches!(name, "add_peer" | "remove_peer")
}

/// Why `p` may not call the tool `name`: the capability to name in a 403
/// and a sentence; `None` when it may (or the tool is unknown: rmcp
/// answers that).
pub(crate) fn tool_refusal(p: &Principal, name: &str) -> Option<(Capability, String)> {
    let cap = tool_capability(name)?;
    if !p.can(cap) {
        return Some((
            cap,
            format!("this token lacks the '{cap}' capability needed by {name}"),
        ));
    }
    if grants_rights(name) && !p.is_unscoped_admin() {
        return Some((
            Capability::Admin,
            format!(
                "{name} needs an admin token without path limits (this one is limited to {})",
                p.scope.globs().join(", ")
            ),
        ));
    }
    None
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
    }
}

fn rfc3339(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn label(n: u64) -> String {
    format!("v{n}")
}

fn not_found(rel: &str) -> String {
    format!("no such file or directory: {rel}")
}

/// A live record of `rel`, or "no such file".
fn live(node: &dyn View, rel: &str) -> Result<FileRecord, String> {
    match node.store().file(rel).map_err(|e| e.to_string())? {
        Some(r) if !r.entry.deleted => Ok(r),
        _ => Err(not_found(rel)),
    }
}

fn load_text_or_bytes(node: &dyn View, rel: &str, e: &Entry) -> Result<Vec<u8>, String> {
    load_with(node, rel, e, &Work::none())
}

/// Files up to this size are read on the async thread when the node is free.
const INLINE_READ_BYTES: u64 = 64 * 1024;

/// Files at least this big are read chunk by chunk with progress reports
/// and cancellation checks; smaller ones in one go.
const PROGRESS_BYTES: u64 = 1024 * 1024;

/// A file's content, read chunk by chunk: stops when the call is cancelled
/// and reports the bytes read.
fn load_with(node: &dyn View, rel: &str, e: &Entry, work: &Work) -> Result<Vec<u8>, String> {
    if e.kind != EntryKind::File {
        return Err(format!("{rel} is a {}, not a file", kind_name(e.kind)));
    }
    if e.size > MAX_FILE_BYTES {
        return Err(format!(
            "{rel} is {} bytes, more than the {MAX_FILE_BYTES} bytes a tool may load",
            e.size
        ));
    }
    if e.size < PROGRESS_BYTES {
        return node.store().content(e).map_err(|e| e.to_string());
    }
    let total = e.size as f64;
    let mut out = Vec::with_capacity(e.size as usize);
    work.progress(0.0, Some(total), || format!("reading {rel}"));
    for id in &e.chunks {
        work.check()?;
        out.extend_from_slice(&node.store().read_chunk(id).map_err(|e| e.to_string())?);
        work.progress(out.len() as f64, Some(total), || {
            format!("read {} of {} bytes of {rel}", out.len(), e.size)
        });
    }
    Ok(out)
}

fn is_text(bytes: &[u8]) -> bool {
    !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
}

fn cut_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------- arguments and results ----------

/// Arguments of `read_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadArgs {
    /// Path relative to the folder root, e.g. `docs/notes.md`.
    pub path: String,
    /// A past version (`v3`); default: the current one.
    #[serde(default)]
    pub version: Option<String>,
    /// Text: first line to return (0-based). Binary: first byte.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Text: how many lines. Binary: how many bytes.
    #[serde(default)]
    pub length: Option<u64>,
    /// Text only: return just the first N lines.
    #[serde(default)]
    pub head: Option<u64>,
    /// Text only: return just the last N lines.
    #[serde(default)]
    pub tail: Option<u64>,
}

/// A file's content.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ReadOut {
    /// The path read.
    pub path: String,
    /// The version read (`v3`).
    pub version: String,
    /// Size of the whole file in bytes.
    pub size: u64,
    /// `utf-8` for text, `base64` for binary content.
    pub encoding: String,
    /// The content (or the requested part of it).
    pub content: String,
    /// Text: the number of lines in the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_lines: Option<u64>,
    /// Text: the first line returned (0-based). Binary: the first byte.
    pub start: u64,
    /// Whether the content was cut at the size limit; read on with `offset`.
    pub truncated: bool,
}

fn read_entry(
    node: &dyn View,
    rel: &str,
    version: u64,
    e: &Entry,
    a: &ReadArgs,
    work: &Work,
) -> Result<ReadOut, String> {
    let bytes = load_with(node, rel, e, work)?;
    let size = bytes.len() as u64;
    if !is_text(&bytes) {
        if a.head.is_some() || a.tail.is_some() {
            return Err(format!(
                "{rel} is binary; head/tail work on text. Use offset/length (bytes) instead"
            ));
        }
        let start = a.offset.unwrap_or(0).min(size) as usize;
        let want = a.length.map(|l| l as usize).unwrap_or(usize::MAX);
        let end = start.saturating_add(want).min(bytes.len());
        let cap_end = end.min(start + MAX_READ_BYTES);
        return Ok(ReadOut {
            path: rel.into(),
            version: label(version),
            size,
            encoding: "base64".into(),
            content: base64::engine::general_purpose::STANDARD.encode(&bytes[start..cap_end]),
            total_lines: None,
            start: start as u64,
            truncated: cap_end < end,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let n = lines.len() as u64;
    if [
        a.head.is_some(),
        a.tail.is_some(),
        a.offset.is_some() || a.length.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count()
        > 1
    {
        return Err("use only one of head, tail, or offset/length".into());
    }
    let (start, end) = if let Some(h) = a.head {
        (0, h.min(n))
    } else if let Some(t) = a.tail {
        (n.saturating_sub(t), n)
    } else {
        let s = a.offset.unwrap_or(0).min(n);
        (s, a.length.map(|l| s.saturating_add(l).min(n)).unwrap_or(n))
    };
    let part: String = lines[start as usize..end as usize].concat();
    let cut = cut_utf8(&part, MAX_READ_BYTES);
    Ok(ReadOut {
        path: rel.into(),
        version: label(version),
        size,
        encoding: "utf-8".into(),
        truncated: cut.len() < part.len(),
        content: cut.to_owned(),
        total_lines: Some(n),
        start,
    })
}

/// Arguments of `read_multiple_files`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadManyArgs {
    /// Paths relative to the folder root (at most 50).
    pub paths: Vec<String>,
}

/// One file of `read_multiple_files`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ReadManyItem {
    /// The path asked for.
    pub path: String,
    /// Its content, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<ReadOut>,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of `read_multiple_files`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ReadManyOut {
    /// One item per path, in order.
    pub files: Vec<ReadManyItem>,
}

/// How `write_file` content is encoded.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
pub enum Encoding {
    /// Plain text.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// Base64 of the bytes (binary files).
    #[serde(rename = "base64")]
    Base64,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteArgs {
    /// Path relative to the folder root; parent directories are created.
    pub path: String,
    /// The complete new content.
    pub content: String,
    /// `utf-8` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
}

/// A recorded file version.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct WriteOut {
    /// The path written.
    pub path: String,
    /// The version now current (`v4`).
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// Content hash of the version.
    pub content_hash: String,
    /// Whether the file did not exist before.
    pub created: bool,
}

/// One exact-text replacement.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct Edit {
    /// Text to find: it must occur exactly once in the file.
    pub old_text: String,
    /// Text to put in its place.
    pub new_text: String,
}

/// Arguments of `edit_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EditArgs {
    /// Path of a text file relative to the folder root.
    pub path: String,
    /// Replacements, applied in order.
    pub edits: Vec<Edit>,
    /// Only show the diff; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Result of `edit_file`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct EditOut {
    /// The path edited.
    pub path: String,
    /// Unified diff of the change.
    pub diff: String,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// The version now current (none for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A path argument.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PathArgs {
    /// Path relative to the folder root.
    pub path: String,
}

/// Result of `create_directory`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CreateDirOut {
    /// The directory.
    pub path: String,
    /// Whether it (or a parent) was created; false if it existed.
    pub created: bool,
}

/// Arguments of `delete_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DeleteArgs {
    /// File, link or directory relative to the folder root.
    pub path: String,
    /// Delete a non-empty directory with everything in it.
    #[serde(default)]
    pub recursive: bool,
}

/// Result of `delete_file`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DeleteOut {
    /// Every path deleted (each keeps its history and can be restored).
    pub deleted: Vec<String>,
}

/// Arguments of `move_file`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MoveArgs {
    /// What to move.
    pub source: String,
    /// Its new path; must not exist.
    pub destination: String,
}

/// Result of `move_file`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MoveOut {
    /// The old path.
    pub source: String,
    /// The new path.
    pub destination: String,
    /// How many files and directories moved.
    pub entries_moved: usize,
}

/// Arguments of `list_directory`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListArgs {
    /// Directory relative to the folder root; empty or omitted for the root.
    #[serde(default)]
    pub path: String,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Entries per page (default 200, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One directory entry.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ListEntry {
    /// Its name.
    pub name: String,
    /// Its path from the root.
    pub path: String,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Current version.
    pub version: String,
    /// Modification time (RFC 3339).
    pub modified: String,
}

/// Result of `list_directory`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ListOut {
    /// The directory.
    pub path: String,
    /// This page of entries, by name.
    pub entries: Vec<ListEntry>,
    /// Entries in the directory.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Arguments of `directory_tree`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TreeArgs {
    /// Directory relative to the folder root; empty for the root.
    #[serde(default)]
    pub path: String,
    /// Deepest level shown (default 5).
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// Most entries shown (default 1000).
    #[serde(default)]
    pub max_entries: Option<u32>,
}

/// A node of `directory_tree`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TreeNode {
    /// Its name.
    pub name: String,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    /// Size of files in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A directory's entries (absent below `max_depth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<TreeNode>>,
}

/// Result of `directory_tree`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TreeOut {
    /// The directory.
    pub path: String,
    /// Its entries, recursively.
    pub entries: Vec<TreeNode>,
    /// Whether entries were left out (`max_entries`).
    pub truncated: bool,
}

/// Arguments naming a path and optionally a version.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct MetaArgs {
    /// Path relative to the folder root.
    pub path: String,
    /// A past version (`v3`); default: the current one.
    #[serde(default)]
    pub version: Option<String>,
}

/// Result of `get_file_metadata`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MetaOut {
    /// The path.
    pub path: String,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits in octal, e.g. `0644`.
    pub mode: String,
    /// Modification time (RFC 3339).
    pub modified: String,
    /// The version described.
    pub version: String,
    /// The current version.
    pub current_version: String,
    /// How many versions are kept.
    pub versions: usize,
    /// Content hash.
    pub content_hash: String,
    /// Node that made this version.
    pub author: String,
    /// Who on that node (`mcp:<token>`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// Where the path stands with each configured peer (empty for a token
    /// without the `status` capability: peers are not its business).
    pub sync: Vec<PeerSyncOut>,
}

/// How a path compares between this node and a peer.
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerSyncState {
    /// The peer has this node's current state (or announced the same one).
    InSync,
    /// This node's current state has not reached the peer yet.
    Pending,
    /// The peer announced a newer state; this node is pulling it.
    Incoming,
    /// Both sides changed it concurrently; the next exchange merges it or
    /// makes a conflict copy.
    Diverged,
    /// The peer has not told this node about the path (never connected,
    /// or it has not exchanged its index yet).
    Unknown,
}

impl From<sovryn_engine::peer_state::PathSyncState> for PeerSyncState {
    fn from(s: sovryn_engine::peer_state::PathSyncState) -> Self {
        use sovryn_engine::peer_state::PathSyncState as S;
        match s {
            S::InSync => PeerSyncState::InSync,
            S::Pending => PeerSyncState::Pending,
            S::Incoming => PeerSyncState::Incoming,
            S::Diverged => PeerSyncState::Diverged,
            S::Unknown => PeerSyncState::Unknown,
        }
    }
}

/// A path's sync state with one peer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PeerSyncOut {
    /// The peer's endpoint id.
    pub peer: String,
    /// Its name in the configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `in_sync`, `pending`, `incoming`, `diverged` or `unknown`.
    pub state: PeerSyncState,
}

/// Arguments of `search_files`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// Words to find in file contents (full-text, all words must match).
    #[serde(default)]
    pub query: Option<String>,
    /// Glob on names, e.g. `*.md`; with a `/` it matches the whole path (`docs/**/*.rs`).
    #[serde(default)]
    pub name: Option<String>,
    /// Only under this directory.
    #[serde(default)]
    pub path: Option<String>,
    /// Most results (default 20, at most 200).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One search hit.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SearchMatch {
    /// The path.
    pub path: String,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    /// The matching text, the words in [brackets].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
}

/// Result of `search_files`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SearchOut {
    /// Hits, best first (full-text) or by path (names).
    pub matches: Vec<SearchMatch>,
    /// Whether more matched than `limit`.
    pub truncated: bool,
}

/// Arguments of `get_version_history`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct HistoryArgs {
    /// Path relative to the folder root.
    pub path: String,
    /// Most versions, newest first (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One version.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct VersionOut {
    /// Its label on this node (`v3`).
    pub version: String,
    /// Its id: the same on every node (`restore_version` accepts it).
    pub id: String,
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// Size in bytes.
    pub size: u64,
    /// Node that made it.
    pub author: String,
    /// Who on that node, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Whether it is a deletion.
    pub deleted: bool,
    /// Its note (e.g. `restored from v1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Content hash.
    pub content_hash: String,
}

/// Result of `get_version_history`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct HistoryOut {
    /// The path.
    pub path: String,
    /// The current version.
    pub current: String,
    /// Versions, newest first.
    pub versions: Vec<VersionOut>,
}

/// Arguments of `restore_version`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RestoreArgs {
    /// Path relative to the folder root (it may be deleted).
    pub path: String,
    /// The version to bring back: its label here (`v2`) or its id (a hex
    /// prefix of at least 4 digits, the same on every node).
    pub version: String,
}

/// Result of `restore_version`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RestoreOut {
    /// The path.
    pub path: String,
    /// The new current version (history is never rewritten).
    pub version: String,
    /// The version whose content was brought back.
    pub restored_from: String,
}

/// Arguments of `diff_versions`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DiffArgs {
    /// Path relative to the folder root.
    pub path: String,
    /// The older version (`v1`).
    pub from: String,
    /// The newer version; default: the current one.
    #[serde(default)]
    pub to: Option<String>,
}

/// Result of `diff_versions`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DiffOut {
    /// The path.
    pub path: String,
    /// From this version.
    pub from: String,
    /// To this version.
    pub to: String,
    /// Unified diff (a one-line summary for binary files).
    pub diff: String,
}

/// Result of `get_stats`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StatsOut {
    /// This node's name.
    pub node_name: String,
    /// Files kept.
    pub files: u64,
    /// Directories kept.
    pub directories: u64,
    /// Symlinks kept.
    pub symlinks: u64,
    /// Versions kept, all paths.
    pub versions: u64,
    /// Bytes of the current tree.
    pub tree_bytes: u64,
    /// Bytes of every kept version.
    pub logical_bytes: u64,
    /// Bytes stored after dedup, compression and encryption.
    pub stored_bytes: u64,
    /// logical / unique bytes.
    pub dedup_ratio: f64,
    /// unique / stored bytes.
    pub compression_ratio: f64,
    /// The change-log sequence.
    pub sequence: u64,
}

/// A conflict copy in the tree.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ConflictOut {
    /// The copy's path.
    pub path: String,
    /// The path it is a copy of.
    pub original: String,
    /// The node whose write the copy holds.
    pub author: String,
    /// When that write was made, `YYYY-MM-DD HH:MM:SS` UTC.
    pub time: String,
    /// Whether the original path currently holds a file.
    pub original_exists: bool,
    /// Size of the copy in bytes.
    pub size: u64,
}

impl From<ConflictCopy> for ConflictOut {
    fn from(c: ConflictCopy) -> Self {
        ConflictOut {
            path: c.path,
            original: c.original,
            author: c.author,
            time: c.time,
            original_exists: c.original_exists,
            size: c.size,
        }
    }
}

/// Result of `list_conflicts`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ConflictsOut {
    /// Conflict copies, by path.
    pub conflicts: Vec<ConflictOut>,
}

/// Which side `resolve_conflict` keeps.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeepArg {
    /// The file under the original name; the copy is deleted.
    Local,
    /// The copy's content replaces the original; the copy is deleted.
    Remote,
    /// Both: the copy is renamed to `name.from-<node>.ext`.
    Both,
}

impl From<KeepArg> for Keep {
    fn from(k: KeepArg) -> Self {
        match k {
            KeepArg::Local => Keep::Local,
            KeepArg::Remote => Keep::Remote,
            KeepArg::Both => Keep::Both,
        }
    }
}

/// Arguments of `resolve_conflict`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ResolveArgs {
    /// The conflict copy, or an original path that has exactly one copy.
    pub path: String,
    /// `local`, `remote` or `both`.
    pub keep: KeepArg,
}

/// Result of `resolve_conflict`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ResolveOut {
    /// The conflict copy resolved.
    pub copy: String,
    /// The original path.
    pub original: String,
    /// Where the copy went with `keep: both`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
    /// Every path whose record changed.
    pub changed: Vec<String>,
}

/// A configured peer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PeerOut {
    /// Its endpoint id (64 hex digits).
    pub id: String,
    /// A name for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where to reach it (`HOST:PORT`).
    pub addresses: Vec<String>,
    /// It receives our changes but its own are not applied here.
    pub read_only: bool,
    /// When non-empty, only these path prefixes are exchanged with it.
    pub paths: Vec<String>,
}

impl From<PeerConfig> for PeerOut {
    fn from(p: PeerConfig) -> Self {
        PeerOut {
            id: p.id,
            name: p.name,
            addresses: p.addresses,
            read_only: p.read_only,
            paths: p.paths,
        }
    }
}

/// Result of `get_peers`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PeersOut {
    /// The peers in the node's configuration.
    pub peers: Vec<PeerOut>,
}

/// Arguments of `add_peer`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddPeerArgs {
    /// The peer's endpoint id (64 hex digits, as `sovryn id` prints it).
    pub endpoint_id: String,
    /// Where to reach it (`HOST:PORT`); may be empty when it only connects to us.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// A name for humans.
    #[serde(default)]
    pub name: Option<String>,
    /// It receives our changes but its own are not applied here.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// Only these path prefixes are exchanged with it; default: everything.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
}

/// Result of `add_peer`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AddPeerOut {
    /// The peer as configured now.
    pub peer: PeerOut,
    /// Whether a peer with that id was replaced.
    pub updated: bool,
}

/// Arguments of `remove_peer`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RemovePeerArgs {
    /// The peer's endpoint id or name.
    pub endpoint_id_or_name: String,
}

/// Result of `remove_peer`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RemovePeerOut {
    /// The ids removed.
    pub removed: Vec<String>,
    /// Peers left in the configuration.
    pub peers: usize,
}

/// Result of `get_sync_status`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SyncStatusOut {
    /// This node's name.
    pub node_name: String,
    /// The change-log sequence.
    pub sequence: u64,
    /// Whether sync is paused (`sovryn pause`).
    pub paused: bool,
    /// Configured peers.
    pub peers: usize,
    /// Conflict copies in the tree (those this token may see).
    pub conflicts: usize,
}

/// Result of `force_sync_path`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ForceSyncOut {
    /// The path rescanned.
    pub path: String,
    /// Entries looked at.
    pub entries: u64,
    /// New paths recorded.
    pub added: u64,
    /// Changed paths recorded.
    pub modified: u64,
    /// Paths gone from disk, recorded as deleted.
    pub deleted: u64,
    /// The paths recorded and announced for sync (at most 1000).
    pub changed: Vec<String>,
    /// The change-log sequence after the scan.
    pub sequence: u64,
}

// ---------- the server ----------

/// The MCP server for one node. Cheap to clone.
#[derive(Clone)]
pub struct SovrynServer {
    pub(crate) shared: Arc<Shared>,
    /// The caller when there is no HTTP request (stdio).
    pub(crate) local: Option<Principal>,
    pub(crate) tool_router: Arc<ToolRouter<SovrynServer>>,
    /// This session's resource subscriptions.
    pub(crate) subs: crate::resources::SubsHandle,
}

/// Checks a path argument for `p`: normalised, confined, inside its scope.
fn scoped(p: &Principal, raw: &str) -> Result<String, String> {
    let rel = paths::normalize_rel(raw).map_err(|e| e.to_string())?;
    if !p.scope.allows(&rel) {
        return Err(format!(
            "{}: outside the paths this token may use",
            if rel.is_empty() { "/" } else { &rel }
        ));
    }
    Ok(rel)
}

/// Like [`scoped`], for reading: outside the scope reads as "no such file".
fn scoped_read(p: &Principal, raw: &str) -> Result<String, String> {
    let rel = paths::normalize_rel(raw).map_err(|e| e.to_string())?;
    if !p.scope.allows(&rel) {
        return Err(not_found(&rel));
    }
    Ok(rel)
}

/// For listings: the directory must be in the scope or lead into it.
fn scoped_dir(p: &Principal, raw: &str) -> Result<String, String> {
    let rel = paths::normalize_rel(raw).map_err(|e| e.to_string())?;
    if !p.scope.visible(&rel) {
        return Err(not_found(&rel));
    }
    Ok(rel)
}

fn confine(node: &dyn View, rel: &str) -> Result<(), String> {
    paths::confined(node.root(), rel)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn parse_version(spec: &str) -> Result<u64, String> {
    sovryn_engine::node::parse_label(spec).map_err(|e| e.to_string())
}

/// A version `spec` of `rel`, or its current record when `spec` is None/"current".
fn state_of(node: &dyn View, rel: &str, spec: Option<&str>) -> Result<(u64, Entry), String> {
    let cur = node
        .store()
        .file(rel)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| not_found(rel))?;
    match spec.map(str::trim) {
        None | Some("") | Some("current") => {
            if cur.entry.deleted {
                return Err(format!(
                    "{rel} is deleted (its last version is v{}); see get_version_history",
                    cur.label
                ));
            }
            Ok((cur.label, cur.entry))
        }
        Some(s) => {
            let n = parse_version(s)?;
            let v = node
                .store()
                .version(rel, n)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "{rel} has no version v{n} (the newest is v{}); see get_version_history",
                        cur.label
                    )
                })?;
            Ok((n, v.entry))
        }
    }
}

/// The conflict copies `p` may see.
fn visible_conflicts(node: &dyn View, p: &Principal) -> Result<Vec<ConflictCopy>, String> {
    Ok(node
        .conflict_copies()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| p.scope.allows(&c.path))
        .collect())
}

/// The conflict copy `rel` names (the copy, or an original with one copy),
/// among those `p` may see; its original must be in the scope too.
fn visible_copy_for(node: &dyn View, p: &Principal, rel: &str) -> Result<String, String> {
    let all = visible_conflicts(node, p)?;
    let copy = match all.iter().find(|c| c.path == rel) {
        Some(c) => c,
        None => match all
            .iter()
            .filter(|c| c.original == rel)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [one] => *one,
            [] => {
                return Err(format!(
                    "{rel} is not a conflict copy and has none (see list_conflicts)"
                ))
            }
            many => {
                return Err(format!(
                    "{rel} has {} conflict copies; name one: {}",
                    many.len(),
                    many.iter()
                        .map(|c| c.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        },
    };
    if !p.scope.allows(&copy.original) {
        return Err(format!(
            "{}: outside the paths this token may use",
            copy.original
        ));
    }
    Ok(copy.path.clone())
}

/// Lets `f` edit the peers of `config.toml` (under its lock; a running
/// daemon reloads it) and updates the node's copy.
fn edit_peers<T>(
    node: &mut Node,
    f: impl FnOnce(&mut Vec<PeerConfig>) -> Result<T, String>,
) -> Result<T, String> {
    let mut refused = None;
    let (out, peers) = Config::update(&node.home, |config| {
        match f(&mut config.peers) {
            Ok(out) => Ok((out, config.peers.clone())),
            Err(e) => {
                // Nothing is saved: the edit was refused.
                refused = Some(e);
                Err(sovryn_engine::Error::Usage(String::new()))
            }
        }
    })
    .map_err(|e| refused.take().unwrap_or_else(|| e.to_string()))?;
    node.config.peers = peers;
    Ok(out)
}

/// The peers as configured now: `config.toml` is read again, since
/// `sovryn peers add|remove` (another process) rewrites it and a running
/// daemon follows it.
fn current_peers(home: &std::path::Path) -> Result<Vec<PeerConfig>, String> {
    let home = sovryn_engine::Home {
        dir: home.to_owned(),
    };
    Config::load(&home)
        .map(|c| c.peers)
        .map_err(|e| format!("reading the peers from config.toml: {e}"))
}

/// The `name` glob of `search_files`: case-insensitive, on file names, or
/// on whole paths when it holds a `/`.
struct NameGlob {
    glob: globset::GlobMatcher,
    full: bool,
    /// The longest literal run of the glob (lowercase ASCII, 2 bytes or
    /// more), which every match contains: most names are rejected by a
    /// byte search before the glob's regex runs.
    needle: Option<Vec<u8>>,
}

impl NameGlob {
    fn new(g: &str) -> Result<Self, String> {
        let full = g.contains('/');
        let glob = globset::GlobBuilder::new(g)
            .case_insensitive(true)
            .literal_separator(full)
            .build()
            .map_err(|e| format!("bad name glob '{g}': {e}"))?
            .compile_matcher();
        // Classes, alternatives and escapes make runs ambiguous: no needle.
        let needle = if g.contains(['[', ']', '{', '}', '\\']) || !g.is_ascii() {
            None
        } else {
            g.split(['*', '?'])
                .max_by_key(|run| run.len())
                .filter(|run| run.len() >= 2)
                .map(|run| run.to_ascii_lowercase().into_bytes())
        };
        Ok(NameGlob { glob, full, needle })
    }

    fn is_match(&self, path: &str) -> bool {
        let cand = if self.full {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        // Non-ASCII names may case-fold onto ASCII letters: the regex decides.
        if let (Some(n), true) = (&self.needle, cand.is_ascii()) {
            let hay = cand.as_bytes();
            if !hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)) {
                return false;
            }
        }
        self.glob.is_match(cand)
    }
}

/// Paths one scan of a large rescan takes (one commit group at most).
const RESCAN_BATCH: usize = 256;

/// Rescans `rel` for `force_sync_path`. A directory is split into batches of
/// its leaves (files, links, empty directories, and recorded paths gone
/// from disk), scanned one after the other, so a cancellation stops between
/// batches and progress counts paths. Each recorded version is a whole,
/// stable read of a file (the scanner never records a torn one); what a
/// cancelled rescan did not reach is left for the next scan. Returns the
/// merged report and whether it was cancelled. Only paths in `scope` are
/// scanned: a token never records (nor learns the names of) what lies
/// outside it.
fn rescan(
    node: &mut Node,
    rel: &str,
    scope: &crate::tokens::PathScope,
    opts: &ScanOptions,
    work: &Work,
) -> Result<(sovryn_engine::scan::ScanReport, bool), String> {
    let abs = node.root().join(rel);
    let is_dir = std::fs::symlink_metadata(&abs)
        .map(|m| m.is_dir() && !m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_dir {
        work.progress(0.0, Some(1.0), || format!("scanning {rel}"));
        let r = node
            .scan(&[rel.to_owned()], opts, &mut |_| {})
            .map_err(|e| e.to_string())?;
        work.progress(1.0, Some(1.0), || format!("scanned {rel}"));
        return Ok((r, false));
    }
    node.rules.reload();
    let mut leaves = rescan_leaves(node, rel)?;
    if !scope.is_all() {
        leaves.retain(|p| scope.allows(p));
        if leaves.is_empty() {
            // Scanning the directory itself would walk what lies below it.
            return Ok((sovryn_engine::scan::ScanReport::default(), false));
        }
    }
    let total = leaves.len() as f64;
    let mut report = sovryn_engine::scan::ScanReport::default();
    work.progress(0.0, Some(total), || {
        format!("scanning {} paths under {}", leaves.len(), display(rel))
    });
    if leaves.is_empty() {
        // Nothing below: scan the directory itself (its own record).
        let r = node
            .scan(&[rel.to_owned()], opts, &mut |_| {})
            .map_err(|e| e.to_string())?;
        return Ok((r, false));
    }
    let mut done = 0usize;
    for batch in leaves.chunks(RESCAN_BATCH) {
        if work.cancelled() {
            return Ok((report, true));
        }
        let r = match node.scan(batch, opts, &mut |_| {}) {
            Ok(r) => r,
            // Something vanished or became ignored meanwhile: path by path.
            Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                let mut merged = sovryn_engine::scan::ScanReport::default();
                for p in batch {
                    match node.scan(std::slice::from_ref(p), opts, &mut |_| {}) {
                        Ok(r) => merge_report(&mut merged, r),
                        Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                merged
            }
            Err(e) => return Err(e.to_string()),
        };
        merge_report(&mut report, r);
        done += batch.len();
        work.progress(done as f64, Some(total), || {
            format!(
                "scanned {done} of {} paths under {}",
                leaves.len(),
                display(rel)
            )
        });
    }
    Ok((report, false))
}

fn display(rel: &str) -> &str {
    if rel.is_empty() {
        "/"
    } else {
        rel
    }
}

fn merge_report(into: &mut sovryn_engine::scan::ScanReport, r: sovryn_engine::scan::ScanReport) {
    into.entries += r.entries;
    into.added += r.added;
    into.modified += r.modified;
    into.deleted += r.deleted;
    into.unstable += r.unstable;
    into.bytes_hashed += r.bytes_hashed;
    let room = 1000usize.saturating_sub(into.changed.len());
    into.changed.extend(r.changed.into_iter().take(room));
}

/// The leaves under directory `rel` for a batched rescan: kept files,
/// links and empty directories on disk, and recorded live paths gone from
/// disk (only the topmost of a gone subtree), sorted.
fn rescan_leaves(node: &Node, rel: &str) -> Result<Vec<String>, String> {
    let root = node.root().to_owned();
    let mut on_disk = std::collections::HashSet::new();
    let mut leaves = Vec::new();
    let mut stack = vec![rel.to_owned()];
    while let Some(dir) = stack.pop() {
        let abs = root.join(&dir);
        let Ok(rd) = std::fs::read_dir(&abs) else {
            continue;
        };
        let mut kept_children = 0usize;
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(sovryn_engine::fsutil::TEMP_PREFIX) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            let is_dir = ft.is_dir() && !ft.is_symlink();
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if !node.rules.keeps(&path, is_dir) {
                continue;
            }
            kept_children += 1;
            on_disk.insert(path.clone());
            if is_dir {
                stack.push(path);
            } else {
                leaves.push(path);
            }
        }
        if kept_children == 0 && dir != rel {
            leaves.push(dir);
        }
    }
    let mut gone: Vec<String> = node
        .store
        .live_paths_under(rel)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| p != rel && !on_disk.contains(p))
        .collect();
    gone.sort();
    let mut top: Vec<String> = Vec::new();
    for p in gone {
        if top.last().is_some_and(|t| {
            p.strip_prefix(t.as_str())
                .is_some_and(|r| r.starts_with('/'))
        }) {
            continue;
        }
        top.push(p);
    }
    leaves.extend(top);
    leaves.sort();
    Ok(leaves)
}

pub(crate) fn args_paths(args: &Option<JsonObject>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(a) = args {
        for key in ["path", "source", "destination", "uri"] {
            if let Some(serde_json::Value::String(s)) = a.get(key) {
                out.push(s.clone());
            }
        }
        if let Some(serde_json::Value::Array(v)) = a.get("paths") {
            out.extend(v.iter().filter_map(|x| x.as_str().map(str::to_owned)));
        }
    }
    out
}

impl SovrynServer {
    pub(crate) fn build_router() -> ToolRouter<SovrynServer> {
        Self::tool_router()
    }

    pub(crate) fn new(shared: Arc<Shared>, local: Option<Principal>) -> Self {
        SovrynServer {
            tool_router: shared.router.clone(),
            shared,
            local,
            subs: Default::default(),
        }
    }

    /// Who is calling: the stdio user, or the token the HTTP layer verified.
    pub(crate) fn principal(&self, ctx: &RequestContext<RoleServer>) -> Option<Principal> {
        if let Some(p) = &self.local {
            return Some(p.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()?
            .extensions
            .get::<Principal>()
            .cloned()
    }

    fn caller(
        &self,
        ctx: &RequestContext<RoleServer>,
        cap: Capability,
    ) -> Result<Principal, String> {
        let p = self
            .principal(ctx)
            .ok_or_else(|| "no authenticated caller".to_string())?;
        if !p.can(cap) {
            return Err(format!("this token lacks the '{cap}' capability"));
        }
        Ok(p)
    }

    /// The caller of a tool that grants rights (`name`), if it may call it:
    /// an admin token without path limits.
    fn granter(&self, ctx: &RequestContext<RoleServer>, name: &str) -> Result<Principal, String> {
        let p = self
            .principal(ctx)
            .ok_or_else(|| "no authenticated caller".to_string())?;
        match tool_refusal(&p, name) {
            Some((_, why)) => Err(why),
            None => Ok(p),
        }
    }

    /// Runs `f` on the node on a blocking thread.
    async fn on_node<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Node) -> Result<T, String> + Send + 'static,
    {
        let node = self.shared.state.node.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = node.lock().map_err(|_| {
                "the node is unavailable (a previous operation panicked)".to_string()
            })?;
            f(&mut guard)
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
    }

    /// Like [`Self::on_node`] for long work: `f` gets the call's [`Work`]
    /// (cancellation, progress); its reports reach the client before the
    /// result. A call cancelled before it gets the node does nothing.
    async fn on_node_work<T, F>(&self, ctx: &RequestContext<RoleServer>, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Node, &Work) -> Result<T, String> + Send + 'static,
    {
        let (work, forwarder) = crate::work::start(ctx);
        let r = self
            .on_node(move |node| {
                work.check()?;
                f(node, &work)
            })
            .await;
        if let Some(task) = forwarder {
            let _ = task.await;
        }
        r
    }

    /// Runs `f` with a read-only handle on a blocking thread: it sees every
    /// committed version and never waits for the node's writes.
    async fn on_reader<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> Result<T, String> + Send + 'static,
    {
        let reads = self.shared.state.reads.clone();
        tokio::task::spawn_blocking(move || f(&reads.get()))
            .await
            .map_err(|e| format!("internal error: {e}"))?
    }

    /// Like [`Self::on_reader`] for long reads, with the call's [`Work`].
    async fn on_reader_work<T, F>(
        &self,
        ctx: &RequestContext<RoleServer>,
        f: F,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Reader, &Work) -> Result<T, String> + Send + 'static,
    {
        let (work, forwarder) = crate::work::start(ctx);
        let r = self
            .on_reader(move |reader| {
                work.check()?;
                f(reader, &work)
            })
            .await;
        if let Some(task) = forwarder {
            let _ = task.await;
        }
        r
    }

    fn changed<I: IntoIterator<Item = String>>(&self, paths: I) {
        for p in paths {
            let _ = self.shared.state.changes.send(p);
        }
    }

    /// The tools `p` may call.
    pub(crate) fn tools_for(&self, p: Option<&Principal>) -> Vec<Tool> {
        self.tool_router
            .list_all()
            .into_iter()
            .filter(|t| p.is_some_and(|p| tool_refusal(p, &t.name).is_none()))
            .collect()
    }

    /// Calls a tool, checking the capability first and writing the audit line.
    pub(crate) async fn dispatch(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let started = Instant::now();
        let who = self.principal(&context);
        let name = request.name.to_string();
        let paths = args_paths(&request.arguments);
        let denied = match &who {
            None => Some("no authenticated caller".to_string()),
            Some(p) => tool_refusal(p, &name).map(|(_, why)| why),
        };
        let client = self.client(&context);
        let ct = context.ct.clone();
        let result: Result<CallToolResponse, McpError> = match &denied {
            Some(msg) => Ok(CallToolResult::error(vec![ContentBlock::text(msg.clone())]).into()),
            None => {
                let tcc = ToolCallContext::new(self, request, context);
                self.tool_router.call(tcc).await
            }
        };
        let cancelled = ct.is_cancelled()
            && matches!(&result, Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true));
        let outcome = match (&denied, &result) {
            (Some(_), _) => "denied".to_string(),
            (None, _) if cancelled => "cancelled".to_string(),
            (None, Ok(CallToolResponse::Complete(r))) if r.is_error == Some(true) => {
                let msg = r
                    .content
                    .first()
                    .and_then(|c| c.as_text())
                    .map(|t| t.text.clone())
                    .unwrap_or_default();
                crate::gateway::tool_error(&name);
                format!("error: {}", cut_utf8(&msg, 300))
            }
            (None, Ok(_)) => "ok".to_string(),
            (None, Err(e)) => format!("protocol error: {}", e.message),
        };
        self.shared.audit.write(&AuditLine {
            time: rfc3339(sovryn_store::now_ns()),
            token: who.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
            tool: name,
            paths,
            outcome,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            client,
            suppressed: None,
        });
        result
    }

    /// The HTTP client's address (none on stdio).
    fn client(&self, ctx: &RequestContext<RoleServer>) -> Option<String> {
        if self.local.is_some() {
            return None;
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()?
            .extensions
            .get::<axum::extract::ConnectInfo<crate::gateway::PeerAddr>>()
            .map(|c| c.0 .0.ip().to_string())
    }

    /// What ends with the caller's credential: a revoked or expired token's
    /// streams and notification tasks stop on it. Never for stdio.
    pub(crate) fn ending(
        &self,
        ext: &rmcp::model::Extensions,
    ) -> tokio_util::sync::CancellationToken {
        if self.local.is_some() {
            return tokio_util::sync::CancellationToken::new();
        }
        match ext
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<crate::sessions::Ending>())
        {
            Some(e) => e.0.clone(),
            // An HTTP request always carries it; without it, nothing is
            // sent rather than something nobody can stop.
            None => {
                let ct = tokio_util::sync::CancellationToken::new();
                ct.cancel();
                ct
            }
        }
    }
}

#[tool_router(vis = "pub(crate)")]
impl SovrynServer {
    /// Reads a file of the folder (current or past version): text as UTF-8 with
    /// optional line ranges, binary as base64. Large files come in pages.
    #[tool(
        description = "Read a file. Text comes back as UTF-8 (use head/tail, or offset/length in lines, for big files); binary files come back base64-encoded (offset/length in bytes). Content over 512 KiB is cut: check `truncated` and read on with `offset`. `version` (e.g. v2) reads a past version.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_file(
        &self,
        Parameters(a): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        // A small file while the node is free: read it right here, without
        // the hop to the blocking pool (two thread wake-ups, most of the
        // server's time for a 4 KiB read). Anything bigger, or a busy node,
        // goes the usual way.
        if ctx.meta.get_progress_token().is_none() {
            if let Some(reader) = self.shared.state.reads.try_get() {
                confine(&*reader, &rel)?;
                let (n, e) = state_of(&*reader, &rel, a.version.as_deref())?;
                if e.size <= INLINE_READ_BYTES {
                    return read_entry(&*reader, &rel, n, &e, &a, &Work::none()).map(Json);
                }
            }
        }
        self.on_reader_work(&ctx, move |node, work| {
            confine(node, &rel)?;
            let (n, e) = state_of(node, &rel, a.version.as_deref())?;
            read_entry(node, &rel, n, &e, &a, work)
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Read several files at once (up to 50). Each item has either `file` (as read_file returns it) or `error`; one failure does not fail the others.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_multiple_files(
        &self,
        Parameters(a): Parameters<ReadManyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadManyOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        if a.paths.len() > 50 {
            return Err(format!(
                "{} paths asked for; read at most 50 at a time",
                a.paths.len()
            ));
        }
        self.on_reader_work(&ctx, move |node, work| {
            let mut budget = 4 * MAX_READ_BYTES;
            let mut files = Vec::new();
            let total = a.paths.len() as f64;
            // Each file's chunk loop checks for cancellation without reports
            // of its own: the unit here is files.
            let per_file = work.silent();
            for (i, raw) in a.paths.into_iter().enumerate() {
                work.check()?;
                work.progress(i as f64, Some(total), || format!("reading {raw}"));
                let one = (|| {
                    let rel = scoped_read(&p, &raw)?;
                    confine(node, &rel)?;
                    let (n, e) = state_of(node, &rel, None)?;
                    let args = ReadArgs {
                        path: rel.clone(),
                        version: None,
                        offset: None,
                        length: None,
                        head: None,
                        tail: None,
                    };
                    let mut out = read_entry(node, &rel, n, &e, &args, &per_file)?;
                    if out.content.len() > budget {
                        out.content = cut_utf8(&out.content, budget).to_owned();
                        if out.encoding == "base64" {
                            out.content.truncate(out.content.len() / 4 * 4);
                        }
                        out.truncated = true;
                    }
                    budget -= out.content.len();
                    Ok::<_, String>(out)
                })();
                if one.as_ref().is_err_and(|e| e == CANCELLED) {
                    return Err(CANCELLED.into());
                }
                files.push(match one {
                    Ok(f) => ReadManyItem {
                        path: raw,
                        file: Some(f),
                        error: None,
                    },
                    Err(e) => ReadManyItem {
                        path: raw,
                        file: None,
                        error: Some(e),
                    },
                });
            }
            work.progress(total, Some(total), || "done".into());
            Ok(ReadManyOut { files })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Create or overwrite a file with the given content (parent directories are created). Every write is a new version: the old content stays in the history and can be restored. `encoding`: utf-8 (default) or base64 for binary.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn write_file(
        &self,
        Parameters(a): Parameters<WriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WriteOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let bytes = match a.encoding {
            Encoding::Utf8 => a.content.into_bytes(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(a.content.trim())
                .map_err(|e| format!("content is not valid base64: {e}"))?,
        };
        if bytes.len() > MAX_WRITE_BYTES {
            return Err(format!(
                "content is {} bytes; the most one write takes is {MAX_WRITE_BYTES}",
                bytes.len()
            ));
        }
        let actor = p.actor();
        let r = rel.clone();
        let out = self
            .on_node(move |node| {
                let existed = node
                    .store
                    .file(&r)
                    .map_err(|e| e.to_string())?
                    .is_some_and(|f| !f.entry.deleted);
                let rec = node
                    .write_file(&r, &bytes, Some(&actor))
                    .map_err(|e| e.to_string())?;
                Ok(WriteOut {
                    path: rec.path,
                    version: label(rec.label),
                    size: rec.entry.size,
                    content_hash: rec.entry.content_hash(),
                    created: !existed,
                })
            })
            .await?;
        self.changed([rel]);
        Ok(Json(out))
    }

    #[tool(
        description = "Edit a text file by exact-text replacement: each `old_text` must occur exactly once (include surrounding lines to make it unique) and is replaced by `new_text`, in order. Returns a unified diff. With `dry_run` nothing is written. The previous content stays in the history.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn edit_file(
        &self,
        Parameters(a): Parameters<EditArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<EditOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        if a.edits.is_empty() {
            return Err("no edits given".into());
        }
        let actor = p.actor();
        let r = rel.clone();
        let out = self
            .on_node(move |node| {
                confine(node, &r)?;
                node.capture(&r).map_err(|e| e.to_string())?;
                let rec = live(node, &r)?;
                let bytes = load_text_or_bytes(node, &r, &rec.entry)?;
                if !is_text(&bytes) {
                    return Err(format!("{r} is not a UTF-8 text file; use write_file"));
                }
                let old = String::from_utf8(bytes).map_err(|e| e.to_string())?;
                let mut new = old.clone();
                for (i, e) in a.edits.iter().enumerate() {
                    if e.old_text.is_empty() {
                        return Err(format!("edit {}: old_text is empty", i + 1));
                    }
                    match new.matches(&e.old_text).count() {
                        0 => return Err(format!("edit {}: old_text was not found in {r} (after the edits before it); read the file and copy the text exactly", i + 1)),
                        1 => new = new.replacen(&e.old_text, &e.new_text, 1),
                        n => return Err(format!("edit {}: old_text occurs {n} times in {r}; include more surrounding text so it occurs once", i + 1)),
                    }
                }
                let diff = similar::TextDiff::from_lines(&old, &new)
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("{r}@v{}", rec.label), &format!("{r}@edited"))
                    .to_string();
                let version = if a.dry_run || new == old {
                    None
                } else {
                    let rec = node.write_file(&r, new.as_bytes(), Some(&actor)).map_err(|e| e.to_string())?;
                    Some(label(rec.label))
                };
                Ok(EditOut { path: r, diff, dry_run: a.dry_run, version })
            })
            .await?;
        if out.version.is_some() {
            self.changed([rel]);
        }
        Ok(Json(out))
    }

    #[tool(
        description = "Create a directory and any missing parents. Succeeds if it exists already.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn create_directory(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CreateDirOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let actor = p.actor();
        let r = rel.clone();
        let made = self
            .on_node(move |node| node.create_dir(&r, Some(&actor)).map_err(|e| e.to_string()))
            .await?;
        let created = !made.is_empty();
        self.changed(made.into_iter().map(|r| r.path));
        Ok(Json(CreateDirOut { path: rel, created }))
    }

    #[tool(
        description = "Delete a file, symlink or directory (`recursive` for a non-empty directory). Deleted paths keep their history: restore_version brings them back.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn delete_file(
        &self,
        Parameters(a): Parameters<DeleteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DeleteOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let actor = p.actor();
        let recs = self
            .on_node(move |node| {
                if !p.scope.is_all() {
                    let outside = node
                        .store
                        .live_paths_under(&rel)
                        .map_err(|e| e.to_string())?
                        .iter()
                        .any(|(path, _, _)| !p.scope.allows(path));
                    if outside {
                        return Err(format!("{rel} holds paths outside this token's scope; delete inside it instead"));
                    }
                }
                node.delete_path(&rel, a.recursive, Some(&actor)).map_err(|e| e.to_string())
            })
            .await?;
        let deleted: Vec<String> = recs.into_iter().map(|r| r.path).collect();
        self.changed(deleted.clone());
        Ok(Json(DeleteOut { deleted }))
    }

    #[tool(
        description = "Move or rename a file or directory. The destination must not exist. History stays with the old path; the new path's first version notes where it came from.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn move_file(
        &self,
        Parameters(a): Parameters<MoveArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<MoveOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let from = scoped(&p, &a.source)?;
        let to = scoped(&p, &a.destination)?;
        let actor = p.actor();
        let (f, t) = (from.clone(), to.clone());
        let recs = self
            .on_node(move |node| {
                if !p.scope.is_all() {
                    let outside = node
                        .store
                        .live_paths_under(&f)
                        .map_err(|e| e.to_string())?
                        .iter()
                        .any(|(path, _, _)| !p.scope.allows(path));
                    if outside {
                        return Err(format!("{f} holds paths outside this token's scope"));
                    }
                }
                node.move_path(&f, &t, Some(&actor))
                    .map_err(|e| e.to_string())
            })
            .await?;
        let moved = recs
            .iter()
            .filter(|r| !r.entry.deleted && (r.path == to || r.path.starts_with(&format!("{to}/"))))
            .count();
        self.changed(recs.into_iter().map(|r| r.path));
        Ok(Json(MoveOut {
            source: from,
            destination: to,
            entries_moved: moved,
        }))
    }

    #[tool(
        description = "List a directory's entries with kind, size, version and modification time, sorted by name, in pages (`limit`, then `cursor` = `next_cursor`). Omit `path` for the root.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_directory(
        &self,
        Parameters(a): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ListOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_dir(&p, &a.path)?;
        let limit = a.limit.unwrap_or(200).clamp(1, 1000) as usize;
        let start: usize = match &a.cursor {
            Some(c) => c
                .parse()
                .map_err(|_| format!("bad cursor '{c}'; pass next_cursor as given"))?,
            None => 0,
        };
        self.on_reader(move |node| {
            confine(node, &rel)?;
            if !rel.is_empty() {
                let rec = live(node, &rel)?;
                if rec.entry.kind != EntryKind::Dir {
                    return Err(format!(
                        "{rel} is a {}, not a directory; use get_file_metadata or read_file",
                        kind_name(rec.entry.kind)
                    ));
                }
            }
            let depth = if rel.is_empty() {
                0
            } else {
                rel.matches('/').count() + 1
            };
            let all: Vec<FileRecord> = node
                .store()
                .files_under(&rel)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|r| {
                    !r.entry.deleted && r.path != rel && r.path.matches('/').count() == depth
                })
                .filter(|r| p.scope.visible(&r.path))
                .collect();
            let total = all.len();
            let entries: Vec<ListEntry> = all
                .into_iter()
                .skip(start)
                .take(limit)
                .map(|r| ListEntry {
                    name: r.path.rsplit('/').next().unwrap_or_default().to_owned(),
                    kind: kind_name(r.entry.kind).into(),
                    size: r.entry.size,
                    version: label(r.label),
                    modified: rfc3339(r.entry.mtime_ns),
                    path: r.path,
                })
                .collect();
            let next = start + entries.len();
            Ok(ListOut {
                path: rel,
                entries,
                total,
                next_cursor: (next < total).then(|| next.to_string()),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "A recursive tree of a directory (names, kinds, file sizes), down to `max_depth` (default 5) and at most `max_entries` (default 1000).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn directory_tree(
        &self,
        Parameters(a): Parameters<TreeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TreeOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_dir(&p, &a.path)?;
        let max_depth = a.max_depth.unwrap_or(5).clamp(1, 64) as usize;
        let max_entries = a.max_entries.unwrap_or(1000).clamp(1, 100_000) as usize;
        paths::confined(&self.shared.root, &rel).map_err(|e| e.to_string())?;
        let index = self.shared.state.index.clone();
        let ct = ctx.ct.clone();
        tokio::task::spawn_blocking(move || {
            index.read(|all| {
                if !rel.is_empty() {
                    match all.get(&rel) {
                        None => return Err(not_found(&rel)),
                        Some((EntryKind::Dir, _)) => {}
                        Some(_) => return Err(format!("{rel} is not a directory")),
                    }
                }
                let base_depth = if rel.is_empty() {
                    0
                } else {
                    rel.matches('/').count() + 1
                };
                // parent -> (path, kind, size) of its entries, in path order.
                type Kids<'a> = BTreeMap<&'a str, Vec<(&'a str, EntryKind, u64)>>;
                let mut children: Kids = BTreeMap::new();
                let mut count = 0usize;
                let mut truncated = false;
                for (i, (path, (kind, size))) in crate::index::under(all, &rel).enumerate() {
                    if i % 4096 == 4095 && ct.is_cancelled() {
                        return Err(CANCELLED.to_string());
                    }
                    if *path == rel || !p.scope.visible(path) {
                        continue;
                    }
                    if path.matches('/').count() - base_depth >= max_depth {
                        continue;
                    }
                    if count >= max_entries {
                        truncated = true;
                        break;
                    }
                    count += 1;
                    let parent = path.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
                    children
                        .entry(parent)
                        .or_default()
                        .push((path.as_str(), *kind, *size));
                }
                fn build(
                    dir: &str,
                    children: &mut Kids,
                    depth: usize,
                    max: usize,
                ) -> Vec<TreeNode> {
                    let recs = children.remove(dir).unwrap_or_default();
                    recs.into_iter()
                        .map(|(path, kind, size)| {
                            let is_dir = kind == EntryKind::Dir;
                            TreeNode {
                                name: path.rsplit('/').next().unwrap_or_default().to_owned(),
                                kind: kind_name(kind).into(),
                                size: (!is_dir).then_some(size),
                                children: (is_dir && depth + 1 < max)
                                    .then(|| build(path, children, depth + 1, max)),
                            }
                        })
                        .collect()
                }
                let entries = build(&rel, &mut children, 0, max_depth);
                Ok(TreeOut {
                    path: rel.clone(),
                    entries,
                    truncated,
                })
            })?
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map(Json)
    }

    #[tool(
        description = "A path's metadata: kind, size, mode, modification time, version label, number of versions, content hash, who made the version, and its sync state with each configured peer (`sync`: in_sync, pending, incoming, diverged or unknown; listed only for tokens with the status capability).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_file_metadata(
        &self,
        Parameters(a): Parameters<MetaArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<MetaOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        let home = self.shared.home.clone();
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let cur = node
                .store()
                .file(&rel)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| not_found(&rel))?;
            let (n, e) = match &a.version {
                Some(_) => state_of(node, &rel, a.version.as_deref())?,
                None if cur.entry.deleted => {
                    return Err(format!(
                        "{rel} is deleted (last version v{}); see get_version_history",
                        cur.label
                    ))
                }
                None => (cur.label, cur.entry.clone()),
            };
            let versions = node
                .store()
                .versions(&rel)
                .map_err(|e| e.to_string())?
                .len();
            // Peer ids and names are node administration, not file data:
            // only a token that may see the node's status gets them.
            let sync = if p.can(Capability::Status) {
                let peers = current_peers(&home)?;
                let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
                sovryn_engine::peer_state::path_states(node.store(), &rel, &ids)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .zip(&peers)
                    .map(|(st, cfg)| PeerSyncOut {
                        peer: st.peer,
                        name: cfg.name.clone(),
                        state: st.state.into(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Ok(MetaOut {
                path: rel,
                kind: kind_name(e.kind).into(),
                size: e.size,
                mode: format!("{:04o}", e.mode & 0o7777),
                modified: rfc3339(e.mtime_ns),
                version: label(n),
                current_version: label(cur.label),
                versions,
                content_hash: e.content_hash(),
                author: e.author.clone(),
                actor: e.actor.clone(),
                target: e.target.clone(),
                deleted: e.deleted,
                sync,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Search files: `query` finds words in file contents (full-text, with snippets, best first); `name` is a glob on file names (`*.md`) or, with a `/`, on paths (`docs/**/*.rs`). Give either or both; `path` limits the search to a directory.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn search_files(
        &self,
        Parameters(a): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SearchOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let prefix = match &a.path {
            Some(d) => scoped_dir(&p, d)?,
            None => String::new(),
        };
        let limit = a.limit.unwrap_or(20).clamp(1, 200) as usize;
        let glob = match a.name.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(g) => Some(NameGlob::new(g)?),
            None => None,
        };
        let query = a.query.filter(|q| !q.trim().is_empty());
        if query.is_none() && glob.is_none() {
            return Err("give `query` (words in contents) or `name` (a glob), or both".into());
        }
        let name_ok = move |path: &str| glob.as_ref().is_none_or(|g| g.is_match(path));
        let Some(q) = query else {
            // Names only: the in-memory path index, not the node or its records.
            paths::confined(&self.shared.root, &prefix).map_err(|e| e.to_string())?;
            let index = self.shared.state.index.clone();
            let ct = ctx.ct.clone();
            return tokio::task::spawn_blocking(move || {
                index.read(|all| {
                    let mut matches = Vec::new();
                    let mut truncated = false;
                    for (i, (path, (kind, _))) in crate::index::under(all, &prefix).enumerate() {
                        if i % 4096 == 4095 && ct.is_cancelled() {
                            return Err(CANCELLED.to_string());
                        }
                        if path.is_empty() || !p.scope.allows(path) || !name_ok(path) {
                            continue;
                        }
                        if matches.len() >= limit {
                            truncated = true;
                            break;
                        }
                        matches.push(SearchMatch {
                            kind: kind_name(*kind).into(),
                            path: path.clone(),
                            snippet: None,
                        });
                    }
                    Ok(SearchOut { matches, truncated })
                })?
            })
            .await
            .map_err(|e| format!("internal error: {e}"))?
            .map(Json);
        };
        self.on_reader_work(&ctx, move |node, work| {
            let mut matches = Vec::new();
            let mut truncated = false;
            for hit in node
                .store()
                .search(&q, &prefix, 100_000)
                .map_err(|e| e.to_string())?
            {
                if !p.scope.allows(&hit.path) || !name_ok(&hit.path) {
                    continue;
                }
                if matches.len() >= limit {
                    truncated = true;
                    break;
                }
                matches.push(SearchMatch {
                    path: hit.path,
                    kind: "file".into(),
                    snippet: Some(hit.snippet),
                });
            }
            work.check()?;
            Ok(SearchOut { matches, truncated })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "A path's versions, newest first: label, time, size, author and actor (mcp:<token> for agent writes), deletions and notes. Works for deleted paths too.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_version_history(
        &self,
        Parameters(a): Parameters<HistoryArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<HistoryOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        let limit = a.limit.unwrap_or(50).clamp(1, 10_000) as usize;
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let cur = node
                .store()
                .file(&rel)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| not_found(&rel))?;
            let versions = node
                .store()
                .versions(&rel)
                .map_err(|e| e.to_string())?
                .into_iter()
                .take(limit)
                .map(|v| VersionOut {
                    version: label(v.label),
                    id: v.id(),
                    time: rfc3339(v.entry.time_ns),
                    size: v.entry.size,
                    author: v.entry.author.clone(),
                    actor: v.entry.actor.clone(),
                    deleted: v.entry.deleted,
                    message: v.entry.message.clone(),
                    content_hash: v.entry.content_hash(),
                })
                .collect();
            Ok(HistoryOut {
                path: rel,
                current: label(cur.label),
                versions,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Bring back a past version of a file (also of a deleted one) as a new version; nothing in the history is lost.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn restore_version(
        &self,
        Parameters(a): Parameters<RestoreArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RestoreOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let spec = a.version.trim().to_owned();
        let actor = p.actor();
        let r = rel.clone();
        let (rec, n) = self
            .on_node_work(&ctx, move |node, work| {
                confine(node, &r)?;
                node.store
                    .file(&r)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| not_found(&r))?;
                // A label (`v2`) or a version id (the same on every node).
                let old = node.find_version(&r, &spec).map_err(|e| e.to_string())?;
                let n = old.label;
                // First read and check every chunk of the version (the long
                // part, cancellable, with progress); nothing is written yet.
                // Then capture + restore run to the end: the file is either
                // restored as a new version or untouched.
                let total = old.entry.size as f64;
                let mut done = 0u64;
                work.progress(0.0, Some(total), || format!("checking v{n} of {r}"));
                for id in &old.entry.chunks {
                    work.check()?;
                    done += node.store.read_chunk(id).map_err(|e| e.to_string())?.len() as u64;
                    work.progress(done as f64, Some(total), || {
                        format!("checked {done} of {} bytes of v{n}", old.entry.size)
                    });
                }
                work.check()?;
                node.capture(&r).map_err(|e| e.to_string())?;
                node.restore(&r, &format!("v{n}"), Some(&actor))
                    .map(|rec| (rec, n))
                    .map_err(|e| e.to_string())
            })
            .await?;
        self.changed([rel.clone()]);
        Ok(Json(RestoreOut {
            path: rel,
            version: label(rec.label),
            restored_from: label(n),
        }))
    }

    #[tool(
        description = "A unified diff between two versions of a file (`to` defaults to the current version).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn diff_versions(
        &self,
        Parameters(a): Parameters<DiffArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DiffOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let (na, ea) = state_of(node, &rel, Some(&a.from))?;
            let (nb, eb) = state_of(node, &rel, a.to.as_deref())?;
            let (la, lb) = (label(na), label(nb));
            let diff = node
                .diff(&rel, (&la, &ea), (&lb, &eb))
                .map_err(|e| e.to_string())?;
            Ok(DiffOut {
                path: rel,
                from: la,
                to: lb,
                diff,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "The node's figures: files, directories, versions, bytes in the tree and in storage, dedup and compression ratios.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_stats(&self, ctx: RequestContext<RoleServer>) -> Result<Json<StatsOut>, String> {
        self.caller(&ctx, Capability::Status)?;
        let node_name = self.shared.node_name.clone();
        self.on_reader(move |node| {
            let s = node.store().stats().map_err(|e| e.to_string())?;
            Ok(StatsOut {
                node_name,
                files: s.files,
                directories: s.dirs,
                symlinks: s.symlinks,
                versions: s.versions,
                tree_bytes: s.tree_bytes,
                logical_bytes: s.logical_bytes,
                stored_bytes: s.stored_bytes,
                dedup_ratio: s.dedup_ratio,
                compression_ratio: s.compression_ratio,
                sequence: s.sequence,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Conflict copies in the folder (`name.sync-conflict-<time>-<node>.ext`): each copy, its original, the node and time of the write it holds. Resolve them with resolve_conflict.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_conflicts(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ConflictsOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        self.on_reader(move |node| {
            Ok(ConflictsOut {
                conflicts: visible_conflicts(node, &p)?
                    .into_iter()
                    .map(ConflictOut::from)
                    .collect(),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Resolve a conflict copy (`path`: the copy, or an original with exactly one copy). `keep`: `local` keeps the original and deletes the copy, `remote` puts the copy's content in the original and deletes the copy, `both` renames the copy to `name.from-<node>.ext`. Everything stays in the history.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn resolve_conflict(
        &self,
        Parameters(a): Parameters<ResolveArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ResolveOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let actor = p.actor();
        let res = self
            .on_node(move |node| {
                confine(node, &rel)?;
                let copy = visible_copy_for(node, &p, &rel)?;
                node.resolve_conflict(&copy, a.keep.into(), Some(&actor))
                    .map_err(|e| e.to_string())
            })
            .await?;
        self.changed(res.changed.iter().cloned());
        Ok(Json(ResolveOut {
            copy: res.copy,
            original: res.original,
            renamed_to: res.renamed_to,
            changed: res.changed,
        }))
    }

    #[tool(
        description = "The peers this node syncs with, from its configuration: endpoint id, name, addresses, read-only flag and path prefixes.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_peers(&self, ctx: RequestContext<RoleServer>) -> Result<Json<PeersOut>, String> {
        self.caller(&ctx, Capability::Status)?;
        let home = self.shared.home.clone();
        self.on_reader(move |_| {
            Ok(PeersOut {
                peers: current_peers(&home)?
                    .into_iter()
                    .map(PeerOut::from)
                    .collect(),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Add a peer to sync with (or replace the one with the same id): its endpoint id (64 hex digits), addresses (`HOST:PORT`), optional name, read-only flag and path prefixes. A running node picks the change up within a second.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn add_peer(
        &self,
        Parameters(a): Parameters<AddPeerArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<AddPeerOut>, String> {
        let p = self.granter(&ctx, "add_peer")?;
        let id = a.endpoint_id.trim();
        let key: PublicKey = id
            .parse()
            .map_err(|e| format!("'{id}' is not an endpoint id (64 hex digits): {e}"))?;
        for addr in &a.addresses {
            sovryn_engine::config::check_peer_address(addr).map_err(|e| e.to_string())?;
        }
        let paths = a
            .paths
            .unwrap_or_default()
            .iter()
            .map(|p| paths::normalize_rel(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let peer = PeerConfig {
            id: key.to_string(),
            addresses: a.addresses,
            name: a.name.filter(|n| !n.trim().is_empty()),
            read_only: a.read_only.unwrap_or(false),
            paths,
        };
        // A peer gets read (and, unless read-only, write) over its paths: the
        // caller must hold all of that itself.
        let granted: Vec<Capability> = if peer.read_only {
            vec![Capability::Read]
        } else {
            vec![Capability::Read, Capability::Write]
        };
        let globs: Vec<String> = peer.paths.iter().map(|p| format!("{p}/**")).collect();
        let scope = crate::tokens::PathScope::new(&globs).map_err(|e| e.to_string())?;
        if !p.may_grant(&granted, &scope) {
            return Err("a token cannot give a peer more than it holds itself".into());
        }
        self.on_node(move |node| {
            let me = sovryn_engine::identity::load(&node.home.identity())
                .map_err(|e| e.to_string())?
                .public();
            if key == me {
                return Err("that is this node's own endpoint id".into());
            }
            let updated = edit_peers(node, |peers| {
                Ok(match peers.iter_mut().find(|p| p.id == peer.id) {
                    Some(p) => {
                        *p = peer.clone();
                        true
                    }
                    None => {
                        peers.push(peer.clone());
                        false
                    }
                })
            })?;
            Ok(AddPeerOut {
                peer: peer.into(),
                updated,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Stop syncing with a peer: removes it (by endpoint id or name) from the configuration. A running node drops it within a second.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn remove_peer(
        &self,
        Parameters(a): Parameters<RemovePeerArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RemovePeerOut>, String> {
        self.granter(&ctx, "remove_peer")?;
        let which = a.endpoint_id_or_name.trim().to_owned();
        self.on_node(move |node| {
            let removed = edit_peers(node, |peers| {
                let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(peers)
                    .into_iter()
                    .partition(|p| p.id == which || p.name.as_deref() == Some(which.as_str()));
                *peers = kept;
                if gone.is_empty() {
                    return Err(format!("no peer '{which}' (see get_peers)"));
                }
                Ok(gone.into_iter().map(|p| p.id).collect::<Vec<_>>())
            })?;
            Ok(RemovePeerOut {
                removed,
                peers: node.config.peers.len(),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Sync state of this node: change-log sequence, whether sync is paused, how many peers are configured and how many conflict copies are in the folder.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_sync_status(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SyncStatusOut>, String> {
        let p = self.caller(&ctx, Capability::Status)?;
        let (node_name, home) = (self.shared.node_name.clone(), self.shared.home.clone());
        self.on_reader(move |node| {
            Ok(SyncStatusOut {
                node_name,
                sequence: node.store().sequence().map_err(|e| e.to_string())?,
                paused: sovryn_engine::Home { dir: home.clone() }.is_paused(),
                peers: current_peers(&home)?.len(),
                conflicts: visible_conflicts(node, &p)?.len(),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Rescan a file or directory on disk now and record what changed (edits not recorded yet), so a running node sends them to its peers. Returns what was recorded.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn force_sync_path(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ForceSyncOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let opts = ScanOptions {
            actor: Some(p.actor()),
            ..Default::default()
        };
        let (out, cancelled) = self
            .on_node_work(&ctx, move |node, work| {
                confine(node, &rel)?;
                let (r, cancelled) = rescan(node, &rel, &p.scope, &opts, work)?;
                Ok((
                    ForceSyncOut {
                        path: rel,
                        entries: r.entries,
                        added: r.added,
                        modified: r.modified,
                        deleted: r.deleted,
                        changed: r.changed,
                        sequence: node.store.sequence().map_err(|e| e.to_string())?,
                    },
                    cancelled,
                ))
            })
            .await?;
        // What was recorded before a cancellation is announced all the same.
        self.changed(out.changed.iter().cloned());
        if cancelled {
            return Err(CANCELLED.into());
        }
        Ok(Json(out))
    }
}

#[cfg(test)]
mod name_glob_tests {
    use super::NameGlob;

    #[test]
    fn the_needle_never_rejects_a_match() {
        let cases = [
            ("f0042*.txt", "docs/F0042-report.TXT", true),
            ("f0042*.txt", "docs/f0043.txt", false),
            ("*.md", "a/b/README.MD", true),
            ("*.md", "a/b.md/c.rs", false),
            ("docs/**/*.rs", "docs/x/y/lib.rs", true),
            ("docs/**/*.rs", "src/lib.rs", false),
            ("[ab]c*", "bcd", true),
            ("x?z", "XYZ", true),
        ];
        for (g, path, want) in cases {
            let m = NameGlob::new(g).unwrap();
            assert_eq!(m.is_match(path), want, "{g} on {path}");
        }
        // Whatever the regex does with non-ASCII case folding, the needle
        // does not change the answer.
        for (g, name) in [("ke*", "\u{212A}elvin"), ("stra*", "STRAßE"), ("*ss*", "ẞ")] {
            let plain = globset::GlobBuilder::new(g)
                .case_insensitive(true)
                .build()
                .unwrap()
                .compile_matcher();
            assert_eq!(
                NameGlob::new(g).unwrap().is_match(name),
                plain.is_match(name),
                "{g} on {name}"
            );
        }
        assert!(NameGlob::new("f0042*.txt").unwrap().needle.is_some());
        assert!(NameGlob::new("{a,b}*").unwrap().needle.is_none());
    }
}
