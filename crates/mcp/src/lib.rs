//! Sovryn's MCP server: the folder's files, search and history as MCP tools,
//! over stdio (for a local agent) or Streamable HTTP (bearer tokens).
//!
//! * [`tools`]: the tools and the server type.
//! * [`tokens`]: hashed bearer tokens with capabilities and path scopes (`mcp.db`).
//! * [`http`]: the axum app: auth, 401/403/429, RFC 9728 metadata, health, body cap.
//! * [`gateway`]: CIDR allowlist, Host/Origin checks, metrics, the TCP/TLS listener.
//! * [`jwt`]: optional HS256 JWT bearer tokens.
//! * [`audit`]: the append-only `audit.jsonl` of tool calls.
//!
//! Invariant: every path from a client is normalised, confined to the storage
//! root and checked against the caller's scope before it reaches the engine.
//! The crate knows nothing of clap or of the sync protocol.

pub mod audit;
pub mod gateway;
pub mod http;
pub mod jwt;
pub mod resources;
mod server;
pub mod tokens;
pub mod tools;

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rmcp::ServiceExt;
use sovryn_engine::Node;

pub use http::{serve_http, serve_http_with, HttpOptions};
pub use tokens::{Capability, PathScope, Principal, TokenStore, TokenVerifier};
pub use tools::SovrynServer;

/// What the MCP server needs from a running node.
#[derive(Clone)]
pub struct McpState {
    /// The opened node (read-write for the write tools).
    pub node: Arc<Mutex<Node>>,
    /// Paths (relative) that changed; the server sends those it writes.
    pub changes: tokio::sync::broadcast::Sender<String>,
}

impl McpState {
    /// Wraps an opened node.
    pub fn new(node: Node) -> Self {
        McpState {
            node: Arc::new(Mutex::new(node)),
            changes: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// The node's home directory.
    pub fn home(&self) -> Result<std::path::PathBuf> {
        let node = self
            .node
            .lock()
            .map_err(|_| anyhow::anyhow!("node lock poisoned"))?;
        Ok(node.home.dir.clone())
    }
}

/// State shared by every session of one server.
pub(crate) struct Shared {
    pub(crate) state: McpState,
    pub(crate) audit: audit::Audit,
    pub(crate) node_name: String,
    /// The tool router, built once (sessions and stateless requests clone it).
    pub(crate) router: Arc<rmcp::handler::server::router::tool::ToolRouter<SovrynServer>>,
}

impl Shared {
    pub(crate) fn new(state: McpState) -> Result<Arc<Self>> {
        let (home, node_name) = {
            let node = state
                .node
                .lock()
                .map_err(|_| anyhow::anyhow!("node lock poisoned"))?;
            (node.home.dir.clone(), node.config.node_name.clone())
        };
        let audit = audit::Audit::open(&home)
            .with_context(|| format!("opening the audit log in {}", home.display()))?;
        Ok(Arc::new(Shared {
            state,
            audit,
            node_name,
            router: Arc::new(SovrynServer::build_router()),
        }))
    }
}

/// Serves MCP on stdin/stdout for the local user (all capabilities, actor
/// `mcp:stdio`) until the client closes the stream.
pub async fn serve_stdio(state: McpState) -> Result<()> {
    let shared = Shared::new(state)?;
    let server = SovrynServer::new(shared, Some(Principal::stdio()));
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    running.waiting().await.context("MCP stdio session")?;
    Ok(())
}
