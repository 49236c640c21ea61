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
use sovryn_store::{Child, Entry, EntryKind, FileRecord};

use crate::audit::AuditLine;
use crate::tokens::{Capability, Principal};
use crate::work::{Work, CANCELLED};
use crate::Shared;
use sovryn_api::rfc3339;

pub(crate) mod conflicts;
mod history;
mod peers;
mod read;
mod status;
mod types;
mod write;

pub use types::*;

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
    let started = Instant::now();
    let out = load_timed(node, rel, e, work);
    if out.is_ok() {
        metrics::histogram!("file_read_duration_seconds", "via" => "mcp")
            .record(started.elapsed().as_secs_f64());
    }
    out
}

fn load_timed(node: &dyn View, rel: &str, e: &Entry, work: &Work) -> Result<Vec<u8>, String> {
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
pub(crate) fn visible_conflicts(
    node: &dyn View,
    p: &Principal,
) -> Result<Vec<ConflictCopy>, String> {
    Ok(node
        .conflict_copies()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| p.scope.allows(&c.path))
        .collect())
}

/// The peers as configured now: `config.toml` is read again, since
/// `sovryn peers add|remove` (another process) rewrites it and a running
/// daemon follows it.
pub(crate) fn current_peers(home: &std::path::Path) -> Result<Vec<PeerConfig>, String> {
    let home = sovryn_engine::Home {
        dir: home.to_owned(),
    };
    Config::load(&home)
        .map(|c| c.peers)
        .map_err(|e| format!("reading the peers from config.toml: {e}"))
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
    /// Every tool, by family; each tool needs the capability
    /// [`tool_capability`] names (unknown tools are refused).
    pub(crate) fn build_router() -> ToolRouter<SovrynServer> {
        Self::read_router()
            + Self::write_router()
            + Self::history_router()
            + Self::conflicts_router()
            + Self::peers_router()
            + Self::status_router()
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
