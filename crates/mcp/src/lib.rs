//! Sovryn's MCP server: the folder's files, search and history as MCP tools,
//! over stdio (for a local agent) or Streamable HTTP (bearer tokens).
//!
//! * [`tools`]: the tools and the server type.
//! * [`tokens`]: hashed bearer tokens with capabilities and path scopes (`mcp.db`).
//! * [`http`]: the axum app: auth, 401/403/429, RFC 9728 metadata, health, body cap.
//! * [`gateway`]: CIDR allowlist, Host/Origin checks, metrics, the TCP/TLS listener.
//! * [`jwt`]: optional HS256 JWT bearer tokens.
//! * [`audit`]: the append-only `audit.jsonl` of tool calls and refused authentications.
//! * [`sessions`]: HTTP sessions by owner: caps, and ending them on revocation.
//!
//! Invariant: every path from a client is normalised, confined to the storage
//! root and checked against the caller's scope before it reaches the engine.
//! The crate knows nothing of clap or of the sync protocol.

pub mod audit;
pub mod error;
pub mod gateway;
pub mod http;
mod index;
pub mod jwt;
mod limits;
pub mod resources;
mod rest;
mod server;
pub mod sessions;
pub mod shares;
pub mod tokens;
pub mod tools;
pub mod users;
mod work;

use std::sync::Arc;

use error::WithContext;
use rmcp::ServiceExt;
use sovryn_engine::{Node, ReadPool, Writer};

pub use error::{Error, Result};
pub use http::{serve_http, serve_http_with, HttpOptions};
pub use tokens::{Capability, PathScope, Principal, TokenStore, TokenVerifier};
pub use tools::SovrynServer;

/// Read-only store handles per server: enough for both cores and a few
/// slow reads (a large file, a full-text search) at once.
const READERS: usize = 4;

/// What the MCP server needs from a running node.
#[derive(Clone)]
pub struct McpState {
    /// The folder's writer (for the write tools; interactive callers).
    pub node: Arc<Writer>,
    /// Read-only handles: read tools never wait for the node's writes.
    pub reads: Arc<ReadPool>,
    /// Paths (relative) that changed; the server sends those it writes.
    pub changes: tokio::sync::broadcast::Sender<String>,
    /// Live paths, kept current from the change log (shared by every server
    /// and session built from this state).
    pub(crate) index: Arc<index::PathIndex>,
    /// Directory listings, kept while the index is unchanged.
    pub(crate) listings: Arc<sovryn_api::ListingCache<Vec<tools::ListedEntry>>>,
    /// The peers' live state (connections, transfers), when a sync
    /// service runs beside the server ([`McpState::with_live_peers`]).
    pub(crate) live_peers: Option<LivePeers>,
}

/// A snapshot of the peers' live state, as JSON (an array of objects with
/// at least `id`).
pub type LivePeers = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl McpState {
    /// Wraps an opened node.
    pub fn new(node: Node) -> Result<Self> {
        Self::with_channel(
            Arc::new(Writer::new(node)),
            tokio::sync::broadcast::channel(1024).0,
        )
    }

    /// Shares a node that is already in use (the daemon's) and its channel
    /// of changed paths (scans, peers and the server's own writes).
    pub fn with_channel(
        node: Arc<Writer>,
        changes: tokio::sync::broadcast::Sender<String>,
    ) -> Result<Self> {
        let (reads, index_reader) = {
            let n = node.lock().map_err(|_| Error::NodeUnavailable)?;
            (
                ReadPool::new(&n, READERS).context("opening read-only store handles")?,
                n.store
                    .reader()
                    .context("opening a read-only store handle")?,
            )
        };
        let index = Arc::new(index::PathIndex::new(index_reader));
        // Loaded now, not on the first subscription: a file created between
        // a client's subscribing and that first load would be taken for one
        // that was always there, and its list_changed never sent.
        if let Err(e) = index.refresh() {
            tracing::warn!("path index: {e}");
        }
        Ok(McpState {
            index,
            listings: Default::default(),
            node,
            reads: Arc::new(reads),
            changes,
            live_peers: None,
        })
    }

    /// Tells the server how to see the peers' live state (the daemon's
    /// sync service), which `/api/v1/peers` adds to each configured peer.
    pub fn with_live_peers(mut self, f: LivePeers) -> Self {
        self.live_peers = Some(f);
        self
    }

    /// The node's home directory.
    pub fn home(&self) -> Result<std::path::PathBuf> {
        let node = self.node.lock().map_err(|_| Error::NodeUnavailable)?;
        Ok(node.home.dir.clone())
    }
}

/// State shared by every session of one server.
pub(crate) struct Shared {
    pub(crate) state: McpState,
    pub(crate) audit: audit::Audit,
    pub(crate) node_name: String,
    /// The node's home (its `config.toml`).
    pub(crate) home: std::path::PathBuf,
    /// The storage root.
    pub(crate) root: std::path::PathBuf,
    /// The tool router, built once (sessions and stateless requests clone it).
    pub(crate) router: Arc<rmcp::handler::server::router::tool::ToolRouter<SovrynServer>>,
}

impl Shared {
    pub(crate) fn new(state: McpState) -> Result<Arc<Self>> {
        let (home, node_name, root) = {
            let node = state.node.lock().map_err(|_| Error::NodeUnavailable)?;
            (
                node.home.dir.clone(),
                node.config.node_name.clone(),
                node.root().to_owned(),
            )
        };
        let audit = audit::Audit::open(&home)
            .with_context(|| format!("opening the audit log in {}", home.display()))?;
        Ok(Arc::new(Shared {
            state,
            audit,
            node_name,
            home,
            root,
            router: Arc::new(SovrynServer::build_router()),
        }))
    }
}

/// Serves MCP on stdin/stdout for the local user (all capabilities, actor
/// `mcp:stdio`) until the client closes the stream.
pub async fn serve_stdio(state: McpState) -> Result<()> {
    let (stdin, stdout) = rmcp::transport::stdio();
    serve_io(state, stdin, stdout).await
}

/// Serves one MCP session for the local user, as [`serve_stdio`] does, on
/// any byte stream (newline-delimited JSON-RPC), e.g. a connection to the
/// daemon's control socket. Returns when the client closes it.
pub async fn serve_io<R, W>(state: McpState, reader: R, writer: W) -> Result<()>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let shared = Shared::new(state)?;
    let server = SovrynServer::new(shared, Some(Principal::stdio()));
    let running = server
        .serve((reader, writer))
        .await
        .context("starting the MCP session")?;
    running.waiting().await.context("MCP session")?;
    Ok(())
}
