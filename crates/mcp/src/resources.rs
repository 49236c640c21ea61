//! The folder's files as MCP resources: `sovryn://<node-name>/<path>`.
//!
//! Listing and reading respect the caller's path scope; subscriptions turn
//! the state's `changes` channel into `notifications/resources/updated`
//! (legacy `resources/subscribe`, and `subscriptions/listen` for 2026-07-28).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use sovryn_store::EntryKind;

use crate::tokens::{Capability, Principal};
use crate::tools::{SovrynServer, MAX_FILE_BYTES};

/// Resources per page of `resources/list`.
const PAGE: usize = 500;

/// The scheme of resource URIs.
pub const SCHEME: &str = "sovryn://";

/// Subscriptions of one session.
#[derive(Default)]
pub(crate) struct Subscriptions {
    uris: Mutex<HashSet<String>>,
    started: std::sync::atomic::AtomicBool,
}

fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A guess at a file's media type from its extension.
pub fn mime_of(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "md" | "markdown" => "text/markdown",
        "txt" | "log" => "text/plain",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "js" => "text/javascript",
        "rs" | "py" | "go" | "c" | "h" | "cpp" | "java" | "ts" | "sh" => "text/plain",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => return None,
    })
}

impl SovrynServer {
    /// The URI of `rel` on this node.
    pub fn resource_uri(&self, rel: &str) -> String {
        format!("{SCHEME}{}/{}", encode(&self.shared.node_name), encode(rel))
    }

    /// The path a URI of this node names.
    fn rel_of_uri(&self, uri: &str) -> Result<String, McpError> {
        let bad = || {
            McpError::invalid_params(
                format!(
                    "not a resource of this node: {uri} (expected {SCHEME}{}/<path>)",
                    self.shared.node_name
                ),
                None,
            )
        };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
        let (node, path) = rest.split_once('/').ok_or_else(bad)?;
        if decode(node).as_deref() != Some(self.shared.node_name.as_str()) {
            return Err(bad());
        }
        let raw = decode(path).ok_or_else(bad)?;
        sovryn_engine::paths::normalize_rel(&raw)
            .map_err(|e| McpError::invalid_params(e.to_string(), None))
    }

    fn reader(&self, ctx: &RequestContext<RoleServer>) -> Result<Principal, McpError> {
        let p = self
            .principal(ctx)
            .ok_or_else(|| McpError::invalid_request("no authenticated caller", None))?;
        if !p.can(Capability::Read) {
            return Err(McpError::invalid_request(
                "this token lacks the 'read' capability",
                None,
            ));
        }
        Ok(p)
    }

    pub(crate) async fn list_resources_for(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let p = self.reader(&ctx)?;
        let start: usize = match request.and_then(|r| r.cursor) {
            Some(c) => c
                .parse()
                .map_err(|_| McpError::invalid_params(format!("bad cursor '{c}'"), None))?,
            None => 0,
        };
        let index = self.shared.state.index.clone();
        let files: Vec<(String, u64)> = tokio::task::spawn_blocking(move || {
            index.read(|all| {
                all.iter()
                    .filter(|(path, (kind, _))| *kind == EntryKind::File && p.scope.allows(path))
                    .map(|(path, (_, size))| (path.clone(), *size))
                    .collect()
            })
        })
        .await
        .map_err(|e| McpError::internal_error(e.to_string(), None))?
        .map_err(|e| McpError::internal_error(e, None))?;
        let total = files.len();
        let resources: Vec<Resource> = files
            .into_iter()
            .skip(start)
            .take(PAGE)
            .map(|(path, size)| {
                let mut res = Resource::new(self.resource_uri(&path), path.clone()).with_size(size);
                if let Some(m) = mime_of(&path) {
                    res = res.with_mime_type(m);
                }
                res
            })
            .collect();
        let next = start + resources.len();
        let mut out = ListResourcesResult::with_all_items(resources);
        out.next_cursor = (next < total).then(|| next.to_string());
        Ok(out)
    }

    pub(crate) fn templates(&self) -> ListResourceTemplatesResult {
        ListResourceTemplatesResult::with_all_items(vec![ResourceTemplate::new(
            format!("{SCHEME}{}/{{+path}}", encode(&self.shared.node_name)),
            "file",
        )
        .with_title("A file of the synced folder")
        .with_description("Any file by its path relative to the folder root, e.g. docs/notes.md")])
    }

    pub(crate) async fn read_resource_for(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let p = self.reader(&ctx)?;
        let uri = request.uri.clone();
        let rel = self.rel_of_uri(&uri)?;
        let not_found = |uri: &str| {
            McpError::resource_not_found(
                format!("no such file: {uri}"),
                Some(serde_json::json!({ "uri": uri })),
            )
        };
        if rel.is_empty() || !p.scope.allows(&rel) {
            return Err(not_found(&uri));
        }
        let node = self.shared.state.node.clone();
        let u = uri.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let node = node
                .lock()
                .map_err(|_| McpError::internal_error("node unavailable", None))?;
            sovryn_engine::paths::confined(node.root(), &rel)
                .map_err(|e| McpError::invalid_params(e.to_string(), None))?;
            let rec = node
                .store
                .file(&rel)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?
                .filter(|r| !r.entry.deleted && r.entry.kind == EntryKind::File)
                .ok_or_else(|| not_found(&u))?;
            if rec.entry.size > MAX_FILE_BYTES {
                return Err(McpError::invalid_params(
                    format!("{rel} is too large to read as a resource"),
                    None,
                ));
            }
            node.store
                .content(&rec.entry)
                .map(|b| (rel, b))
                .map_err(|e| McpError::internal_error(e.to_string(), None))
        })
        .await
        .map_err(|e| McpError::internal_error(e.to_string(), None))??;
        let (rel, bytes) = bytes;
        let contents = match String::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => ResourceContents::text(text, uri)
                .with_mime_type(mime_of(&rel).unwrap_or("text/plain")),
            Ok(text) => blob(text.into_bytes(), uri, &rel),
            Err(e) => blob(e.into_bytes(), uri, &rel),
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    pub(crate) fn subscribe_uri(
        &self,
        uri: String,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let p = self.reader(&ctx)?;
        let rel = self.rel_of_uri(&uri)?;
        if !p.scope.allows(&rel) {
            return Err(McpError::resource_not_found(
                format!("no such file: {uri}"),
                None,
            ));
        }
        if let Ok(mut s) = self.subs.uris.lock() {
            s.insert(uri);
        }
        if !self
            .subs
            .started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let mut rx = self.shared.state.changes.subscribe();
            let subs = self.subs.clone();
            let peer = ctx.peer.clone();
            let me = self.clone();
            let ended = self.ending(&ctx.extensions);
            tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        // The token was revoked or expired: not one more update.
                        _ = ended.cancelled() => return,
                        next = rx.recv() => next,
                    };
                    let path = match next {
                        Ok(p) => p,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    };
                    let uri = me.resource_uri(&path);
                    let wanted = subs.uris.lock().map(|s| s.contains(&uri)).unwrap_or(false);
                    if wanted
                        && peer
                            .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
        Ok(())
    }

    pub(crate) fn unsubscribe_uri(&self, uri: &str) {
        if let Ok(mut s) = self.subs.uris.lock() {
            s.remove(uri);
        }
    }

    /// Sends `notifications/resources/list_changed` to this session's peer
    /// whenever a file the caller `p` may read appears or disappears
    /// (coalesced over 50 ms), until the session is gone or `ended` (its
    /// token revoked or expired).
    pub(crate) fn follow_list_changes(
        &self,
        p: Principal,
        peer: rmcp::Peer<RoleServer>,
        ended: tokio_util::sync::CancellationToken,
    ) {
        if !p.can(Capability::Read) {
            return;
        }
        let mut rx = self.shared.state.index.events(&self.shared.state.changes);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = ended.cancelled() => return,
                    next = rx.recv() => next,
                };
                let batch = match next {
                    Ok(b) => b,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Arc::new(vec![String::new()])
                    }
                    Err(_) => return,
                };
                let lagged = batch.first().is_some_and(|p| p.is_empty());
                if !lagged && !batch.iter().any(|path| p.scope.allows(path)) {
                    continue;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
                if peer.is_transport_closed() || ended.is_cancelled() {
                    return;
                }
                if let Err(e) = peer.notify_resource_list_changed().await {
                    tracing::debug!("list_changed not sent, session gone: {e}");
                    return;
                }
            }
        });
    }

    /// `subscriptions/listen` (2026-07-28): resource updates until cancelled.
    pub(crate) async fn listen_changes(
        &self,
        cx: rmcp::service::SubscriptionContext,
    ) -> Result<(), McpError> {
        let p = self.principal(cx.request_context());
        let ended = self.ending(&cx.request_context().extensions);
        let mut rx = self.shared.state.changes.subscribe();
        let mut files = self.shared.state.index.events(&self.shared.state.changes);
        loop {
            tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                // The token was revoked or expired: the stream ends here.
                _ = ended.cancelled() => return Ok(()),
                ev = files.recv() => match ev {
                    Ok(batch) => {
                        if p.as_ref().is_some_and(|p| p.can(Capability::Read) && batch.iter().any(|path| p.scope.allows(path))) {
                            // Not accepted unless the filter asked for list changes.
                            let _ = cx.sink().notify_resource_list_changed().await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = cx.sink().notify_resource_list_changed().await;
                    }
                    Err(_) => {}
                },
                ev = rx.recv() => match ev {
                    Ok(path) => {
                        if p.as_ref().is_some_and(|p| p.can(Capability::Read) && p.scope.allows(&path)) {
                            let _ = cx.sink().notify_resource_updated(self.resource_uri(&path)).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

fn blob(bytes: Vec<u8>, uri: String, rel: &str) -> ResourceContents {
    ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
        .with_mime_type(mime_of(rel).unwrap_or("application/octet-stream"))
}

/// Shared, per-session subscription state.
pub(crate) type SubsHandle = Arc<Subscriptions>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        assert_eq!(encode("docs/a b%.md"), "docs/a%20b%25.md");
        assert_eq!(decode("docs/a%20b%25.md").unwrap(), "docs/a b%.md");
        assert!(decode("%zz").is_none());
        assert_eq!(mime_of("x/README.md"), Some("text/markdown"));
    }
}
