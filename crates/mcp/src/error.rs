//! The errors of the crate's public functions.

/// What can go wrong setting up or running the MCP server, or managing tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad argument or setting, with what to do about it (unknown
    /// capability, bad glob, duration or CIDR, token name taken or unknown,
    /// JWT secret too short, TLS certificate without a key, …).
    #[error("{0}")]
    Invalid(String),
    /// An operation on a named thing failed: opening a file or database,
    /// binding the listener, loading TLS material, running a session.
    #[error("{context}: {source}")]
    Failed {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The token database.
    #[error("token database: {0}")]
    Db(#[from] rusqlite::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The node's lock is poisoned (an operation panicked while holding it).
    #[error("the node is unavailable (a previous operation panicked)")]
    NodeUnavailable,
}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `return Err(Error::Invalid(format!(…)))`.
macro_rules! invalid {
    ($($t:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($t)*)))
    };
}
pub(crate) use invalid;

/// Adds what was being done to an error (crate-internal, like anyhow's).
pub(crate) trait WithContext<T> {
    /// Wraps the error in [`Error::Failed`] with `f()` as the context.
    fn with_context<S: Into<String>, F: FnOnce() -> S>(self, f: F) -> Result<T>;
    /// Wraps the error in [`Error::Failed`] with `context`.
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T, E> WithContext<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn with_context<S: Into<String>, F: FnOnce() -> S>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::Failed {
            context: f().into(),
            source: Box::new(e),
        })
    }

    fn context(self, context: &'static str) -> Result<T> {
        self.with_context(|| context)
    }
}
