//! Key material: the random master (folder) key, the keys derived from it,
//! and the on-disk key file that stores it plainly or wrapped by a passphrase.
//!
//! Every node of a mesh shares one master key, so chunk ids agree across
//! peers (dedup and transfer by id) while meaning nothing to anyone else.

use std::fs;
use std::io::Write;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::aead;
use crate::{Error, Result};

const CONTEXT_CHUNK_ID: &str = "sovryn 2026-11 chunk id";
const CONTEXT_CHUNK_SEAL: &str = "sovryn 2026-11 chunk encryption";
const CONTEXT_GEAR_SEED: &str = "sovryn 2026-11 fastcdc gear seed";
const CONTEXT_FOLDER_ID: &str = "sovryn 2026-11 folder id";
const CONTEXT_MEMBERSHIP: &str = "sovryn 2026-11 membership proof";
const CONTEXT_EPOCH_WRAP: &str = "sovryn 2026-12 seal epochs in the index";
const CONTEXT_REMOTE: &str = "sovryn 2026-12 objects kept by a remote";
const WRAP_AAD: &[u8] = b"sovryn master key v1";
const CONTEXT_FOLDER_SEAL: &str = "sovryn 2026-11 folder key seal";
const SEAL_AAD: &[u8] = b"sovryn folder key sealed by the node key v1";

/// The 32-byte secret every other key derives from.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterKey(k)
    }

    /// Parses the 64-hex-digit form printed by [`MasterKey::to_hex`].
    pub fn from_hex(s: &str) -> Result<Self> {
        let bytes = hex::decode(s.trim()).map_err(|_| Error::BadKey("not hex".into()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::BadKey("a folder key is 64 hex digits".into()))?;
        Ok(MasterKey(arr))
    }

    /// The key as 64 lowercase hex digits (secret: handle like a password).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The subkeys the store uses.
    pub fn derive(&self) -> DerivedKeys {
        let seed = blake3::derive_key(CONTEXT_GEAR_SEED, &self.0);
        let mut seed8 = [0u8; 8];
        seed8.copy_from_slice(&seed[..8]);
        DerivedKeys {
            chunk_id: blake3::derive_key(CONTEXT_CHUNK_ID, &self.0),
            chunk_seal: blake3::derive_key(CONTEXT_CHUNK_SEAL, &self.0),
            gear_seed: u64::from_le_bytes(seed8),
            folder_id: hex::encode(&blake3::derive_key(CONTEXT_FOLDER_ID, &self.0)[..16]),
            membership: blake3::derive_key(CONTEXT_MEMBERSHIP, &self.0),
            epoch_wrap: blake3::derive_key(CONTEXT_EPOCH_WRAP, &self.0),
            remote: blake3::derive_key(CONTEXT_REMOTE, &self.0),
        }
    }
}

/// Keys derived from the master key, one per purpose.
#[derive(Clone)]
pub struct DerivedKeys {
    /// Key of the keyed BLAKE3 that names chunks.
    pub chunk_id: [u8; 32],
    /// Key from which each chunk's encryption key derives.
    pub chunk_seal: [u8; 32],
    /// Seed XOR'd into FastCDC's gear table so cut points leak nothing.
    pub gear_seed: u64,
    /// A public name for the folder: equal on every node of one mesh.
    pub folder_id: String,
    /// Key of the MAC with which peers prove they hold the folder key
    /// before any index or chunk moves.
    pub membership: [u8; 32],
    /// Key sealing the folder's seal epochs where the index keeps them.
    pub epoch_wrap: [u8; 32],
    /// Key sealing what a remote (a bucket) keeps besides chunks: index
    /// snapshots and pack indexes.
    pub remote: [u8; 32],
}

/// Argon2id cost parameters of a wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WrappedKey {
    label: String,
    salt: String,
    kdf: KdfParams,
    nonce: String,
    ciphertext: String,
}

/// The key file in a node's home: the master key, plain or wrapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyFile {
    /// Stored as is (protected only by the file's 0600 mode).
    Plain {
        /// The master key in hex.
        master: String,
    },
    /// Wrapped by Argon2id-derived keys: one from the passphrase, one from the recovery code.
    Wrapped {
        /// The folder id, so a wrong key is told apart from a wrong passphrase.
        folder_id: String,
        /// One entry per secret that can open the key.
        wraps: Vec<WrappedKeySlot>,
    },
    /// Another folder of a node: its key sealed by the node's key (the key
    /// of its first folder), so one passphrase opens every folder.
    Sealed {
        /// The folder id of the sealed key.
        folder_id: String,
        /// XChaCha20 nonce, hex.
        nonce: String,
        /// The sealed key, hex.
        ciphertext: String,
    },
}

/// One way to open a wrapped master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WrappedKeySlot(WrappedKey);

/// A 32-byte key from a passphrase (Argon2id; a trailing newline, as a
/// passphrase file ends, is not part of it).
pub fn passphrase_key(secret: &str, salt: &[u8], kdf: KdfParams) -> Result<[u8; 32]> {
    kek(secret, salt, kdf)
}

fn kek(secret: &str, salt: &[u8], kdf: KdfParams) -> Result<[u8; 32]> {
    let params = Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| Error::BadKey(format!("argon2 parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(
            secret.trim_end_matches(['\n', '\r']).as_bytes(),
            salt,
            &mut out,
        )
        .map_err(|e| Error::BadKey(format!("argon2: {e}")))?;
    Ok(out)
}

fn wrap(master: &MasterKey, label: &str, secret: &str, kdf: KdfParams) -> Result<WrappedKeySlot> {
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let key = kek(secret, &salt, kdf)?;
    let ct = aead::seal(&key, &nonce, WRAP_AAD, &master.0);
    Ok(WrappedKeySlot(WrappedKey {
        label: label.into(),
        salt: hex::encode(salt),
        kdf,
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ct),
    }))
}

impl KeyFile {
    /// A key file holding `master` in the clear.
    pub fn plain(master: &MasterKey) -> Self {
        KeyFile::Plain {
            master: master.to_hex(),
        }
    }

    /// A key file that opens with either `passphrase` or `recovery_code`.
    pub fn wrapped(
        master: &MasterKey,
        passphrase: &str,
        recovery_code: &str,
        kdf: KdfParams,
    ) -> Result<Self> {
        if passphrase.trim().is_empty() {
            return Err(Error::BadKey("the passphrase is empty".into()));
        }
        Ok(KeyFile::Wrapped {
            folder_id: master.derive().folder_id,
            wraps: vec![
                wrap(master, "passphrase", passphrase, kdf)?,
                wrap(master, "recovery", &normalize_recovery(recovery_code), kdf)?,
            ],
        })
    }

    /// A folder's key sealed by the node's key together with the node's
    /// identity secret (`node_secret`): the node's key is also the default
    /// folder's, which its peers hold; the identity never leaves the node.
    pub fn sealed(folder: &MasterKey, node: &MasterKey, node_secret: &[u8; 32]) -> Result<Self> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = aead::seal(&seal_key(node, node_secret), &nonce, SEAL_AAD, &folder.0);
        Ok(KeyFile::Sealed {
            folder_id: folder.derive().folder_id,
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ct),
        })
    }

    /// The public id of the folder whose key this file holds (opens nothing
    /// that needs a secret).
    pub fn folder_id(&self) -> Result<String> {
        match self {
            KeyFile::Plain { master } => Ok(MasterKey::from_hex(master)?.derive().folder_id),
            KeyFile::Wrapped { folder_id, .. } | KeyFile::Sealed { folder_id, .. } => {
                Ok(folder_id.clone())
            }
        }
    }

    /// Whether the node's key opens this key file ([`KeyFile::unseal`]).
    pub fn is_sealed(&self) -> bool {
        matches!(self, KeyFile::Sealed { .. })
    }

    /// Opens a sealed folder key with the node's key and identity secret.
    pub fn unseal(&self, node: &MasterKey, node_secret: &[u8; 32]) -> Result<MasterKey> {
        let KeyFile::Sealed {
            folder_id,
            nonce,
            ciphertext,
        } = self
        else {
            return Err(Error::BadKey("this key file is not sealed".into()));
        };
        let corrupt = || Error::BadKey("corrupt key file".into());
        let nonce: [u8; 24] = hex::decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(corrupt)?;
        let ct = hex::decode(ciphertext).map_err(|_| corrupt())?;
        let pt =
            aead::open(&seal_key(node, node_secret), &nonce, SEAL_AAD, &ct).ok_or_else(|| {
                Error::BadKey("the node's key and identity do not open this folder's key".into())
            })?;
        let arr: [u8; 32] = pt.try_into().map_err(|_| corrupt())?;
        let key = MasterKey(arr);
        if &key.derive().folder_id != folder_id {
            return Err(Error::BadKey(
                "key file does not match its folder id".into(),
            ));
        }
        Ok(key)
    }

    /// Whether opening the key needs a passphrase.
    pub fn needs_passphrase(&self) -> bool {
        matches!(self, KeyFile::Wrapped { .. })
    }

    /// Opens the master key; `secret` is the passphrase or the recovery code.
    pub fn open(&self, secret: Option<&str>) -> Result<MasterKey> {
        match self {
            KeyFile::Plain { master } => MasterKey::from_hex(master),
            KeyFile::Sealed { .. } => Err(Error::BadKey(
                "this folder's key is sealed by the node's key".into(),
            )),
            KeyFile::Wrapped { folder_id, wraps } => {
                let secret = secret.ok_or(Error::Locked)?;
                for slot in wraps {
                    let w = &slot.0;
                    let candidate = if w.label == "recovery" {
                        normalize_recovery(secret)
                    } else {
                        secret.to_owned()
                    };
                    let salt = hex::decode(&w.salt)
                        .map_err(|_| Error::BadKey("corrupt key file".into()))?;
                    let nonce = hex::decode(&w.nonce)
                        .map_err(|_| Error::BadKey("corrupt key file".into()))?;
                    let ct = hex::decode(&w.ciphertext)
                        .map_err(|_| Error::BadKey("corrupt key file".into()))?;
                    let nonce: [u8; 24] = nonce
                        .try_into()
                        .map_err(|_| Error::BadKey("corrupt key file".into()))?;
                    let key = kek(&candidate, &salt, w.kdf)?;
                    if let Some(pt) = aead::open(&key, &nonce, WRAP_AAD, &ct) {
                        let arr: [u8; 32] = pt
                            .try_into()
                            .map_err(|_| Error::BadKey("corrupt key file".into()))?;
                        let master = MasterKey(arr);
                        if &master.derive().folder_id != folder_id {
                            return Err(Error::BadKey(
                                "key file does not match its folder id".into(),
                            ));
                        }
                        return Ok(master);
                    }
                }
                Err(Error::WrongPassphrase)
            }
        }
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::BadKey(format!("{}: {e}", path.display())))
    }

    /// Writes the key file with mode 0600 (write, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::BadKey(e.to_string()))?;
        write_secret_file(path, text.as_bytes())
    }
}

fn seal_key(node: &MasterKey, node_secret: &[u8; 32]) -> [u8; 32] {
    let mut material = [0u8; 64];
    material[..32].copy_from_slice(&node.0);
    material[32..].copy_from_slice(node_secret);
    blake3::derive_key(CONTEXT_FOLDER_SEAL, &material)
}

/// Writes `bytes` to `path` with mode 0600, crash-safely.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // A fresh random temp name created exclusively, never through a
    // symlink, with mode 0600 from the first byte: nobody can have prepared
    // the file or a link under that name.
    let tmp = path.with_file_name(format!(
        ".{}.{:016x}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        rand::random::<u64>()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    crate::fsync_parent(path)
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A fresh random code of 30 symbols (150 bits) in groups of five, such as a
/// recovery code or a generated passphrase.
pub fn random_code() -> String {
    let mut bytes = [0u8; 30];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let symbols: Vec<char> = bytes
        .iter()
        .map(|b| CODE_ALPHABET[(*b as usize) % 32] as char)
        .collect();
    symbols
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams {
            m_cost: 256,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[test]
    fn sealed_key_opens_with_the_node_key_only() {
        let node = MasterKey::generate();
        let folder = MasterKey::generate();
        let me = [7u8; 32];
        let kf = KeyFile::sealed(&folder, &node, &me).unwrap();
        assert_eq!(kf.unseal(&node, &me).unwrap().to_hex(), folder.to_hex());
        // The node's key alone (what the default folder's peers hold) or
        // the identity alone opens nothing.
        assert!(kf.unseal(&node, &[8u8; 32]).is_err());
        assert!(kf.unseal(&MasterKey::generate(), &me).is_err());
        assert!(kf.open(None).is_err());
        let text = serde_json::to_string(&kf).unwrap();
        assert!(!text.contains(&folder.to_hex()));
        let back: KeyFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back.unseal(&node, &me).unwrap().to_hex(), folder.to_hex());
    }

    #[test]
    fn wrapped_key_opens_with_passphrase_or_recovery_code_only() {
        let master = MasterKey::generate();
        let code = random_code();
        let kf = KeyFile::wrapped(&master, "correct horse", &code, cheap()).unwrap();
        assert_eq!(
            kf.open(Some("correct horse")).unwrap().to_hex(),
            master.to_hex()
        );
        assert_eq!(
            kf.open(Some(&code.to_lowercase())).unwrap().to_hex(),
            master.to_hex()
        );
        assert!(matches!(
            kf.open(Some("wrong")),
            Err(Error::WrongPassphrase)
        ));
        assert!(matches!(kf.open(None), Err(Error::Locked)));
    }

    #[test]
    fn derived_keys_differ_per_purpose() {
        let d = MasterKey::generate().derive();
        assert_ne!(d.chunk_id, d.chunk_seal);
        assert_eq!(d.folder_id.len(), 32);
    }
}
