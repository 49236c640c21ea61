//! The config vault: settings a user wants on every device, as one
//! encrypted bundle that every device (and later every backup peer) keeps
//! a copy of and none but the user's devices can read.
//!
//! The key comes from the user's vault passphrase by Argon2id (salt and
//! cost in the envelope, the same on every device); each save seals the
//! entries with XChaCha20-Poly1305 under a fresh random nonce, the
//! envelope's header bound in as associated data. Entries merge one by
//! one: the newer version vector wins, and of two concurrent writes the
//! later (then the larger writer id), so two devices changing different
//! entries at once both keep theirs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sovryn_store::keys::KdfParams;
use sovryn_store::{Causality, VersionVector};

use crate::config::Home;
use crate::{Error, Result};

/// The envelope format.
pub const VERSION: u32 = 1;

/// Entries at most, and bytes of one value at most.
pub const MAX_ENTRIES: usize = 1024;
/// See [`MAX_ENTRIES`].
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// What is stored and sent: the header in the clear, the entries sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version.
    pub v: u32,
    /// Argon2id cost.
    pub kdf: KdfParams,
    /// Argon2id salt (hex).
    pub salt: String,
    /// When it was last sealed (milliseconds since the epoch).
    pub updated_ms: u64,
    /// XChaCha20-Poly1305 nonce (hex, 24 bytes).
    pub nonce: String,
    /// The sealed entries (hex).
    pub ciphertext: String,
}

/// One setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its value.
    pub value: serde_json::Value,
    /// Which writes it includes.
    pub vv: VersionVector,
    /// When it was written (milliseconds since the epoch).
    pub time_ms: u64,
    /// Who wrote it (a node's short id).
    pub by: String,
}

/// The vault's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// Settings by name.
    pub entries: BTreeMap<String, Entry>,
}

/// The key that opens a vault (derived once, kept in the home, mode 0600).
pub struct VaultKey {
    key: [u8; 32],
    salt: Vec<u8>,
    kdf: KdfParams,
}

fn envelope_path(home: &Home) -> PathBuf {
    home.dir.join("vault.json")
}

fn key_path(home: &Home) -> PathBuf {
    home.dir.join("vault.key")
}

fn header_ad(e: &Envelope) -> Vec<u8> {
    format!(
        "sovryn vault {}|{}|{}|{}|{}|{}",
        e.v, e.kdf.m_cost, e.kdf.t_cost, e.kdf.p_cost, e.salt, e.updated_ms
    )
    .into_bytes()
}

impl Envelope {
    /// Refuses an envelope this node must not process as it is: a format
    /// it does not know, Argon2id costs that would exhaust the machine (a
    /// peer chose them), a salt or nonce of the wrong size, a time far in
    /// the future (it would shadow every later copy), too many bytes.
    pub fn check(&self) -> Result<()> {
        let bad = |why: &str| Error::Usage(format!("vault envelope refused: {why}"));
        if self.v != VERSION {
            return Err(bad("unknown format"));
        }
        let k = self.kdf;
        if !(8..=1 << 20).contains(&k.m_cost)
            || !(1..=10).contains(&k.t_cost)
            || !(1..=8).contains(&k.p_cost)
        {
            return Err(bad("Argon2id costs out of range"));
        }
        if !(16..=64).contains(&(self.salt.len() / 2)) || hex::decode(&self.salt).is_err() {
            return Err(bad("bad salt"));
        }
        if self.nonce.len() != 48 || hex::decode(&self.nonce).is_err() {
            return Err(bad("bad nonce"));
        }
        if self.ciphertext.len() > MAX_ENVELOPE_HEX {
            return Err(bad("too large"));
        }
        if self.updated_ms > crate::node::now_ms().saturating_add(24 * 3600 * 1000) {
            return Err(bad("dated in the future"));
        }
        Ok(())
    }
}

impl VaultKey {
    /// Derives the key of a new vault (fresh salt).
    pub fn create(passphrase: &str, kdf: KdfParams) -> Result<VaultKey> {
        let salt: [u8; 16] = rand::random();
        VaultKey::derive(passphrase, &salt, kdf)
    }

    /// Derives the key of an existing vault from its envelope's salt
    /// (after checking the envelope's costs are sane).
    pub fn for_envelope(passphrase: &str, e: &Envelope) -> Result<VaultKey> {
        e.check()?;
        let salt = hex::decode(&e.salt).map_err(|_| Error::Config("vault: bad salt".into()))?;
        VaultKey::derive(passphrase, &salt, e.kdf)
    }

    fn derive(passphrase: &str, salt: &[u8], kdf: KdfParams) -> Result<VaultKey> {
        let key = sovryn_store::keys::passphrase_key(passphrase, salt, kdf)?;
        Ok(VaultKey {
            key,
            salt: salt.to_vec(),
            kdf,
        })
    }

    /// The key kept in `home`, if the vault was opened there.
    pub fn load(home: &Home, wrap: &KeyWrap) -> Result<Option<VaultKey>> {
        let bytes = match std::fs::read(key_path(home)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&key_path(home), e)),
        };
        if bytes.len() < 24 {
            return Err(Error::Config("vault.key is damaged".into()));
        }
        let (nonce, sealed) = bytes.split_at(24);
        let plain = wrap
            .cipher()
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| Error::Config("vault.key does not open with this node's key".into()))?;
        let stored: StoredKey =
            serde_json::from_slice(&plain).map_err(|e| Error::Config(format!("vault.key: {e}")))?;
        let key: [u8; 32] = hex::decode(&stored.key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Config("vault.key: bad key".into()))?;
        Ok(Some(VaultKey {
            key,
            salt: hex::decode(&stored.salt)
                .map_err(|_| Error::Config("vault.key: bad salt".into()))?,
            kdf: stored.kdf,
        }))
    }

    /// Whether a vault key is kept in `home`.
    pub fn is_kept(home: &Home) -> bool {
        key_path(home).exists()
    }

    /// Keeps the key in `home`, sealed by `wrap` (mode 0600; written to a
    /// fresh name and renamed over any older one).
    fn save(&self, home: &Home, wrap: &KeyWrap) -> Result<()> {
        let plain = serde_json::to_vec(&StoredKey {
            key: hex::encode(self.key),
            salt: hex::encode(&self.salt),
            kdf: self.kdf,
        })
        .map_err(|e| Error::Config(e.to_string()))?;
        let nonce: [u8; 24] = rand::random();
        let sealed = wrap
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| Error::Config("vault.key: sealing failed".into()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        sovryn_store::keys::write_secret_file(&key_path(home), &bytes)?;
        Ok(())
    }

    /// Seals `contents` under a fresh nonce.
    pub fn seal(&self, contents: &Contents) -> Result<Envelope> {
        let plain = serde_json::to_vec(contents).map_err(|e| Error::Config(e.to_string()))?;
        let nonce: [u8; 24] = rand::random();
        let mut e = Envelope {
            v: VERSION,
            kdf: self.kdf,
            salt: hex::encode(&self.salt),
            updated_ms: crate::node::now_ms(),
            nonce: hex::encode(nonce),
            ciphertext: String::new(),
        };
        let sealed = XChaCha20Poly1305::new((&self.key).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &header_ad(&e),
                },
            )
            .map_err(|_| Error::Config("vault: sealing failed".into()))?;
        e.ciphertext = hex::encode(sealed);
        Ok(e)
    }

    /// Opens an envelope: a wrong passphrase (or a changed byte) fails.
    pub fn open(&self, e: &Envelope) -> Result<Contents> {
        let wrong = || Error::Usage("the vault does not open with this passphrase".into());
        if e.v != VERSION {
            return Err(Error::Config(format!(
                "vault format {} is not known here",
                e.v
            )));
        }
        let nonce = hex::decode(&e.nonce).map_err(|_| wrong())?;
        if nonce.len() != 24 {
            return Err(wrong());
        }
        let sealed = hex::decode(&e.ciphertext).map_err(|_| wrong())?;
        let plain = XChaCha20Poly1305::new((&self.key).into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &header_ad(e),
                },
            )
            .map_err(|_| wrong())?;
        let contents: Contents =
            serde_json::from_slice(&plain).map_err(|e| Error::Config(format!("vault: {e}")))?;
        if contents.entries.len() > MAX_ENTRIES {
            return Err(Error::Config("vault: too many entries".into()));
        }
        Ok(contents)
    }
}

/// What seals the vault key at rest: derived from the folder key of the
/// node's first folder, so the vault key is as safe on disk as that key
/// (passphrase-wrapped when the node has a passphrase).
pub struct KeyWrap([u8; 32]);

impl KeyWrap {
    /// The wrap of the node whose first folder has these keys.
    pub fn of(keys: &sovryn_store::keys::DerivedKeys) -> KeyWrap {
        KeyWrap(blake3::derive_key(
            "sovryn vault key wrap 1",
            &keys.chunk_seal,
        ))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    key: String,
    salt: String,
    kdf: KdfParams,
}

/// The envelope kept in `home`, if any.
pub fn load_envelope(home: &Home) -> Result<Option<Envelope>> {
    match std::fs::read(envelope_path(home)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Config(format!("vault.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&envelope_path(home), e)),
    }
}

/// Keeps `e` in `home` (write, fsync, rename).
pub fn save_envelope(home: &Home, e: &Envelope) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(e).map_err(|e| Error::Config(e.to_string()))?;
    crate::fsutil::write_atomic(&envelope_path(home), &bytes, 0o600)
}

impl Contents {
    /// Sets `name` to `value`, written by `by`.
    pub fn set(&mut self, name: &str, value: serde_json::Value, by: &str) -> Result<()> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::Usage(format!("{name:?} is not a vault entry name")));
        }
        if value.to_string().len() > MAX_VALUE_BYTES {
            return Err(Error::Usage("a vault value is at most 64 KiB".into()));
        }
        if !self.entries.contains_key(name) && self.entries.len() >= MAX_ENTRIES {
            return Err(Error::Usage("the vault holds at most 1024 entries".into()));
        }
        let mut vv = self
            .entries
            .get(name)
            .map(|e| e.vv.clone())
            .unwrap_or_default();
        vv.increment(by);
        self.entries.insert(
            name.to_owned(),
            Entry {
                value,
                vv,
                time_ms: crate::node::now_ms(),
                by: by.to_owned(),
            },
        );
        Ok(())
    }

    /// Takes what `other` has that is newer, entry by entry; returns
    /// whether anything changed.
    pub fn merge(&mut self, other: Contents) -> bool {
        let mut changed = false;
        for (name, theirs) in other.entries {
            let take = match self.entries.get(&name) {
                None => self.entries.len() < MAX_ENTRIES,
                Some(mine) => match theirs.vv.compare(&mine.vv) {
                    Causality::Dominates => true,
                    Causality::Concurrent => {
                        (theirs.time_ms, &theirs.by) > (mine.time_ms, &mine.by)
                    }
                    _ => false,
                },
            };
            if take {
                let merged = match self.entries.get(&name) {
                    Some(mine) => {
                        let mut vv = theirs.vv.clone();
                        vv.merge(&mine.vv);
                        Entry { vv, ..theirs }
                    }
                    None => theirs,
                };
                self.entries.insert(name, merged);
                changed = true;
            } else if let Some(mine) = self.entries.get_mut(&name) {
                // Ours wins, but it has now seen theirs too.
                let before = mine.vv.clone();
                mine.vv.merge(&theirs.vv);
                changed |= mine.vv != before;
            }
        }
        changed
    }
}

/// Sets entry `name` of the vault kept in `home` (which must be opened
/// there: `vault init` or `vault unlock`), as node `by`.
pub fn set(
    home: &Home,
    wrap: &KeyWrap,
    name: &str,
    value: serde_json::Value,
    by: &str,
) -> Result<()> {
    update(home, wrap, |c| c.set(name, value, by))
}

/// Keeps `key` in `home` (sealed by `wrap`) and, when given, `envelope`,
/// both under the vault's lock (`vault init`, `vault unlock`, recovery).
pub fn install(
    home: &Home,
    wrap: &KeyWrap,
    key: &VaultKey,
    envelope: Option<&Envelope>,
) -> Result<()> {
    crate::config::with_lock(home, "vault.lock", || {
        if let Some(e) = envelope {
            save_envelope(home, e)?;
        }
        key.save(home, wrap)
    })
}

/// Changes the vault kept in `home` (open there) under its lock, and
/// seals it again.
pub fn update<T>(
    home: &Home,
    wrap: &KeyWrap,
    f: impl FnOnce(&mut Contents) -> Result<T>,
) -> Result<T> {
    crate::config::with_lock(home, "vault.lock", || {
        let key = VaultKey::load(home, wrap)?.ok_or_else(|| {
            Error::Usage(
                "the vault is not open on this node: `sovryn vault init` or `sovryn vault unlock`"
                    .into(),
            )
        })?;
        let mut contents = match load_envelope(home)? {
            Some(e) => key.open(&e)?,
            None => Contents::default(),
        };
        let out = f(&mut contents)?;
        save_envelope(home, &key.seal(&contents)?)?;
        Ok(out)
    })
}

/// Entries the node keeps for itself (folder keys, the recovery
/// identity): secret, never shown.
pub const RESERVED_PREFIX: &str = "sovryn.";

/// The entry holding every folder's name and key.
pub const FOLDERS_ENTRY: &str = "sovryn.folders";

/// The entry holding the recovery identity's secret key.
pub const RECOVERY_ENTRY: &str = "sovryn.recovery";

/// The largest ciphertext accepted (hex characters).
const MAX_ENVELOPE_HEX: usize = 8 << 20;

/// Merges a received envelope into the one kept in `home`. With the key,
/// both are opened, merged entry by entry and sealed again (fresh nonce);
/// without it, the newer envelope is kept as it is. Returns whether the
/// kept envelope changed.
pub fn merge_received(home: &Home, wrap: &KeyWrap, received: &Envelope) -> Result<bool> {
    crate::config::with_lock(home, "vault.lock", || merge_locked(home, wrap, received))
}

fn merge_locked(home: &Home, wrap: &KeyWrap, received: &Envelope) -> Result<bool> {
    received.check()?;
    let mine = load_envelope(home)?;
    let Some(key) = VaultKey::load(home, wrap)? else {
        let newer = mine.as_ref().is_none_or(|m| {
            (received.updated_ms, &received.ciphertext) > (m.updated_ms, &m.ciphertext)
        });
        if newer {
            save_envelope(home, received)?;
        }
        return Ok(newer);
    };
    let theirs = key.open(received)?;
    let mut contents = match &mine {
        Some(m) => key.open(m)?,
        None => Contents::default(),
    };
    if !contents.merge(theirs) && mine.is_some() {
        return Ok(false);
    }
    save_envelope(home, &key.seal(&contents)?)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[test]
    fn a_vault_opens_only_with_its_passphrase_and_never_reuses_a_nonce() {
        let key = VaultKey::create("correct horse", cheap()).unwrap();
        let mut c = Contents::default();
        c.set("theme", serde_json::json!("PLAINTEXT-MARKER"), "a")
            .unwrap();
        let e1 = key.seal(&c).unwrap();
        let e2 = key.seal(&c).unwrap();
        assert_ne!(e1.nonce, e2.nonce);
        assert_ne!(e1.ciphertext, e2.ciphertext);
        let text = serde_json::to_string(&e1).unwrap();
        assert!(!text.contains("PLAINTEXT-MARKER"));
        assert_eq!(key.open(&e1).unwrap(), c);
        let wrong = VaultKey::for_envelope("wrong horse", &e1).unwrap();
        assert!(wrong.open(&e1).is_err());
        let mut tampered = e1.clone();
        tampered.updated_ms += 1;
        assert!(key.open(&tampered).is_err());
        // A thousand seals, a thousand nonces.
        let nonces: std::collections::HashSet<String> =
            (0..1000).map(|_| key.seal(&c).unwrap().nonce).collect();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn concurrent_changes_of_different_entries_both_survive() {
        let mut base = Contents::default();
        base.set("shared", serde_json::json!(1), "a").unwrap();
        let (mut a, mut c) = (base.clone(), base.clone());
        a.set("on-a", serde_json::json!("x"), "a").unwrap();
        c.set("on-c", serde_json::json!("y"), "c").unwrap();
        c.set("shared", serde_json::json!(2), "c").unwrap();
        let mut merged_a = a.clone();
        assert!(merged_a.merge(c.clone()));
        let mut merged_c = c.clone();
        assert!(merged_c.merge(a.clone()));
        assert_eq!(merged_a, merged_c);
        assert_eq!(merged_a.entries["on-a"].value, "x");
        assert_eq!(merged_a.entries["on-c"].value, "y");
        assert_eq!(merged_a.entries["shared"].value, 2);
        // Merging again changes nothing.
        assert!(!merged_a.merge(merged_c));
    }
}
