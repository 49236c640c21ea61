//! Sovryn's remotes: S3-compatible buckets that keep a node's folders
//! without being able to read them.
//!
//! What a bucket holds under its prefix ([`layout`]):
//!
//! * `v`: the node's config vault, as sealed by its passphrase;
//! * `FOLDER/p/RANDOM`: packs, sealed chunks in shuffled order padded to a
//!   size class, with their own sealed index at the end ([`pack`]);
//! * `FOLDER/s/COUNTER-RANDOM`: index snapshots (names, versions, search
//!   index), compressed, padded and sealed;
//! * `FOLDER/d/PACK`: marks of packs due to go (the time they were marked),
//!   where several nodes push one folder (`push::prune`).
//!
//! `FOLDER` is the folder's public id; no object name or byte carries a
//! file name, and a member opening anything checks that it was sealed
//! under the folder key for exactly that name. [`push`] sends what the
//! bucket lacks (resuming from what is there), [`pull`] takes what other
//! members sent, [`restore`] rebuilds a folder's store from the bucket
//! alone.

#![deny(missing_docs)]

mod cache;
pub mod layout;
pub mod objects;
pub mod pack;
pub mod pull;
pub mod push;
pub mod restore;
mod snapshot;
pub mod target;

pub use object_store::path::Path as ObjectPath;
pub use objects::{Bucket, Listed, Objects};
pub use push::{push_folder, push_vault, state_dir, PushReport};
pub use restore::{fetch_vault, restore_folder, RestoreReport};
pub use target::{Credentials, RemoteSpec};

/// Errors of a remote.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bucket or the connection to it failed (after retries).
    #[error("bucket: {0}")]
    Bucket(#[from] object_store::Error),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] sovryn_store::Error),
    /// A remote's description is wrong.
    #[error("{0}")]
    Spec(String),
    /// What the bucket holds fails a check (changed, or not this folder's).
    #[error("the bucket's {0}")]
    Tampered(String),
    /// A backup peer refused or failed a request.
    #[error("backup peer: {0}")]
    Peer(String),
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The result type of remotes.
pub type Result<T, E = Error> = std::result::Result<T, E>;
