//! Arguments and results of the tools (their JSON Schemas are the MCP API).

use super::*;

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

/// One page of a directory listing, as `list_directory` answers it: text
/// only, one tab-separated line per entry under a header line. The
/// reference filesystem server answers in text too; a structured copy of
/// 1,000 entries tripled the bytes, and checking it against an output
/// schema cost the Python client 4.7 ms, four times the whole call.
pub struct Listing {
    /// The directory (empty for the root).
    pub path: String,
    /// Entries in the directory that the caller may see.
    pub total: usize,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
    /// This page's lines, `kind\tsize\tversion\tmodified\tname`, the
    /// time to the second.
    pub lines: String,
}

/// One entry of a listing, its line made once per index change.
pub struct ListedEntry {
    /// Its path, for the caller's scope.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// `\nkind\tsize\tversion\tmodified\tname`.
    pub line: String,
}

impl From<Child> for ListedEntry {
    fn from(e: Child) -> Self {
        use std::fmt::Write as _;
        let name = e.path.rsplit('/').next().unwrap_or_default();
        let mut line = String::with_capacity(32 + name.len());
        // Writing into a String cannot fail.
        let _ = write!(line, "\n{}\t{}\tv{}\t", kind_name(e.kind), e.size, e.label);
        sovryn_api::push_rfc3339_secs(&mut line, e.mtime_ns);
        line.push('\t');
        line.push_str(name);
        ListedEntry {
            path: e.path,
            kind: e.kind,
            line,
        }
    }
}

impl rmcp::handler::server::tool::IntoCallToolResult for Listing {
    fn into_call_tool_result(self) -> Result<CallToolResponse, McpError> {
        let mut text = format!(
            "{}: {} entries",
            if self.path.is_empty() {
                "/"
            } else {
                &self.path
            },
            self.total
        );
        if let Some(next) = &self.next_cursor {
            text.push_str(&format!(" (more: cursor {next})"));
        }
        text.push_str("\nkind\tsize\tversion\tmodified\tname");
        text.push_str(&self.lines);
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
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

/// Result of `get_version_history`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct HistoryOut {
    /// The path.
    pub path: String,
    /// The current version.
    pub current: String,
    /// Versions, newest first.
    pub versions: Vec<sovryn_api::VersionInfo>,
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
