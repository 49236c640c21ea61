//! The node's ed25519 identity: the same key iroh uses, so the node id is the
//! iroh endpoint id.

use std::path::Path;

pub use iroh_base::{PublicKey, SecretKey};

use crate::{Error, Result};

/// Loads the secret key from `path`.
pub fn load(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.trim()
        .parse::<SecretKey>()
        .map_err(|e| Error::Config(format!("{}: not a secret key: {e}", path.display())))
}

/// Generates a key and stores it as hex with mode 0600.
pub fn create(path: &Path) -> Result<SecretKey> {
    store(path, SecretKey::generate())
}

/// Stores `key` as hex with mode 0600 (in a file that must not exist yet).
pub fn store(path: &Path, key: SecretKey) -> Result<SecretKey> {
    sovryn_store::keys::write_secret_file(path, hex::encode(key.to_bytes()).as_bytes())?;
    Ok(key)
}

/// The 16-hex-digit short id used in version vectors.
pub fn short_id(id: &PublicKey) -> String {
    hex::encode(&id.as_bytes()[..8])
}
