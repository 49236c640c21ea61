//! Sovryn's engine: turns the disk into versions and versions back into the
//! disk, safely.
//!
//! * [`config`]: the node's home and `config.toml`.
//! * [`paths`]: normalising and confining every path to the storage root.
//! * [`scan`]: walking the tree, `.sovrynignore`, selective sync, recording changes.
//! * [`node`]: an opened node (config + identity + store) and its local
//!   operations: init, restore, cat, diff, and writing a version to disk.
//!
//! The engine knows nothing of the network, MCP or command-line parsing.

pub mod config;
pub mod conflicts;
pub mod decide;
pub mod devices;
pub mod folders;
pub mod fsutil;
pub mod identity;
pub mod merge;
pub mod node;
pub mod ops;
pub mod paths;
pub mod peer_state;
pub mod rules;
pub mod scan;
pub mod sync;
pub mod upload;
pub mod vault;
pub mod view;
pub mod watch;
pub mod write_group;
pub mod writer;

use std::path::{Path, PathBuf};

pub use config::{Config, Home};
pub use node::{InitOptions, Node};
pub use view::{ReadPool, Reader, View};
pub use writer::Writer;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node was initialised in this home.
    #[error("no node here ({0}): run 'sovryn init --storage-path DIR'")]
    NoNode(PathBuf),
    /// `init` over an existing node.
    #[error("a node is already initialised in {0}; use another --home, or remove it first")]
    AlreadyInitialised(PathBuf),
    /// A path leaves the storage root.
    #[error("path escapes the storage path: {0}")]
    Escape(String),
    /// A path is malformed.
    #[error("bad path: {0}")]
    BadPath(String),
    /// No such path or version.
    #[error("{0}")]
    NotFound(String),
    /// A config problem.
    #[error("config: {0}")]
    Config(String),
    /// Wrong usage.
    #[error("{0}")]
    Usage(String),
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] sovryn_store::Error),
    /// A write made from a version that is no longer the current one.
    #[error("changed since it was read: {0}")]
    Stale(String),
    /// A write was made but the commit it shared with others failed (the
    /// cause is reported to the first write of the group).
    #[error("recording the write failed: {0}")]
    SharedCommit(String),
}

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
