//! Errors of the daemon's public API.

/// What went wrong, for a caller of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine failed (config, paths, scanning).
    #[error(transparent)]
    Engine(#[from] sovryn_engine::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] sovryn_store::Error),
    /// The sync service could not start or failed.
    #[error(transparent)]
    Net(#[from] sovryn_net::Error),
    /// The MCP server could not start.
    #[error(transparent)]
    Mcp(#[from] sovryn_mcp::Error),
    /// A local file or socket.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The running node refused a request, answered something this version
    /// does not know, or one of its tasks failed (the message says which).
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

// The node's tasks report with context chains; callers get the whole chain.
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Failed(format!("{e:#}"))
    }
}

/// Result of the daemon's public API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
