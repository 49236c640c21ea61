//! Seal epochs: the chunk keys a folder moves to after a device is revoked.
//!
//! A folder's master key never changes (chunk ids, cut points and the
//! folder id derive from it, so dedup and every stored version keep
//! working), but a revoked device holds it. So a revocation starts a new
//! seal epoch: a random secret that only the remaining members receive,
//! over their authenticated sessions. From then on chunks are sealed under
//! a key derived from the newest epoch's secret, and the first bytes of
//! each such chunk's nonce name the epoch, so a reader picks the key
//! without trying them all. A chunk sealed before any epoch (or under the
//! master key by a member that has not heard of the epoch yet) still opens
//! under the master key.

use std::sync::{Arc, RwLock};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::aead::{self, NONCE_LEN};
use crate::{Error, Result};

const CONTEXT_EPOCH_SEAL: &str = "sovryn 2026-12 seal epoch chunk encryption";
const CONTEXT_EPOCH_TAG: &str = "sovryn 2026-12 seal epoch tag";
const WRAP_AAD: &[u8] = b"sovryn seal epoch stored v1";

/// Bytes of a sealed chunk's nonce that name its epoch.
pub const TAG_LEN: usize = 4;
/// Most epochs a folder keeps (a revocation makes one on the revoker and
/// one on each member it reaches before the revoker's epoch does).
pub const MAX_EPOCHS: usize = 256;

/// One epoch's secret and when it was made.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSecret {
    /// 32 random bytes, hex.
    #[serde(with = "crate::chunk::hex32")]
    secret: [u8; 32],
    /// When it was made (milliseconds since the Unix epoch): the newest
    /// seals, so every member converges on the same one.
    pub created_ms: u64,
}

impl std::fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EpochSecret({}, {})",
            hex::encode(self.tag()),
            self.created_ms
        )
    }
}

impl EpochSecret {
    /// A fresh epoch made at `created_ms`.
    pub fn generate(created_ms: u64) -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        EpochSecret { secret, created_ms }
    }

    /// The nonce prefix naming this epoch.
    pub fn tag(&self) -> [u8; TAG_LEN] {
        let d = blake3::derive_key(CONTEXT_EPOCH_TAG, &self.secret);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&d[..TAG_LEN]);
        tag
    }

    fn seal_key(&self) -> [u8; 32] {
        blake3::derive_key(CONTEXT_EPOCH_SEAL, &self.secret)
    }

    /// The secret sealed for the index under `wrap` (a key derived from
    /// the master key), its tag and time bound in.
    pub(crate) fn wrap(&self, wrap: &[u8; 32]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend(aead::seal(
            wrap,
            &nonce,
            &wrap_aad(self.created_ms),
            &self.secret,
        ));
        out
    }

    /// The epoch stored by [`EpochSecret::wrap`].
    pub(crate) fn unwrap(wrap: &[u8; 32], created_ms: u64, sealed: &[u8]) -> Result<Self> {
        let bad = || Error::Corrupt("a stored seal epoch does not open".into());
        if sealed.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let plain = aead::open(wrap, &n, &wrap_aad(created_ms), ct).ok_or_else(bad)?;
        let secret: [u8; 32] = plain.try_into().map_err(|_| bad())?;
        Ok(EpochSecret { secret, created_ms })
    }
}

/// What a stored epoch's sealing binds: its time (the tag follows from the secret).
fn wrap_aad(created_ms: u64) -> Vec<u8> {
    [WRAP_AAD, &created_ms.to_le_bytes()].concat()
}

/// The epochs a folder knows, shared by every handle on its store (a new
/// epoch reaches the readers and the sealing threads at once).
#[derive(Clone, Default)]
pub(crate) struct Keyring(Arc<RwLock<Vec<Epoch>>>);

#[derive(Clone)]
struct Epoch {
    tag: [u8; TAG_LEN],
    key: [u8; 32],
    secret: EpochSecret,
}

impl Keyring {
    /// Adds the epochs not known yet; how many were new.
    pub(crate) fn add(&self, epochs: &[EpochSecret]) -> usize {
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut new = 0;
        for e in epochs {
            let tag = e.tag();
            if all.iter().any(|k| k.tag == tag) {
                continue;
            }
            all.push(Epoch {
                tag,
                key: e.seal_key(),
                secret: e.clone(),
            });
            new += 1;
        }
        // Newest last; equal times ordered by tag, the same on every member.
        all.sort_by_key(|k| (k.secret.created_ms, k.tag));
        new
    }

    /// Every epoch, oldest first.
    pub(crate) fn all(&self) -> Vec<EpochSecret> {
        let all = self.0.read().unwrap_or_else(|e| e.into_inner());
        all.iter().map(|k| k.secret.clone()).collect()
    }

    /// How many epochs are known (it only grows).
    pub(crate) fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The newest epoch's tag and chunk-key base, which new chunks are sealed under.
    pub(crate) fn current(&self) -> Option<([u8; TAG_LEN], [u8; 32])> {
        let all = self.0.read().unwrap_or_else(|e| e.into_inner());
        all.last().map(|k| (k.tag, k.key))
    }

    /// The chunk-key base of the epoch a nonce names, if known.
    pub(crate) fn by_nonce(&self, nonce: &[u8]) -> Option<[u8; 32]> {
        let tag = nonce.get(..TAG_LEN)?;
        let all = self.0.read().unwrap_or_else(|e| e.into_inner());
        all.iter().find(|k| k.tag == tag).map(|k| k.key)
    }
}

/// How far ahead of this node's clock a received epoch may claim to be
/// made: one from further ahead would stay the newest past a later
/// revocation.
pub const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;

impl EpochSecret {
    /// Whether an epoch received from a member may be kept at `now_ms`.
    pub fn check_received(&self, now_ms: u64) -> Result<()> {
        if self.created_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Err(Error::Corrupt(format!(
                "a seal epoch claims to be made {} s from now",
                (self.created_ms - now_ms) / 1000
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use crate::store::{Access, Store};
    use crate::ChunkCodec;

    #[test]
    fn after_a_rotation_the_master_key_alone_opens_old_chunks_only() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let mut store = Store::open(dir.path(), &master, Access::ReadWrite).unwrap();
        let codec = store.codec().clone();
        let old_data = b"written before the revocation".repeat(40);
        let old = codec.seal(codec.id_of(&old_data), &old_data).unwrap();

        let epoch = store.rotate_seal_key(0).unwrap();
        let new_data = b"written after the revocation".repeat(40);
        // A clone made before the rotation seals under the epoch too.
        let new = codec.seal(codec.id_of(&new_data), &new_data).unwrap();
        assert_eq!(&new.sealed[..TAG_LEN], &epoch.tag());

        // A revoked device: the master key, no epoch.
        let revoked = ChunkCodec::new(master.derive());
        revoked.check_sealed(&old).unwrap();
        assert!(revoked.check_sealed(&new).is_err());
        // Members open both, and so does the store opened again.
        codec.check_sealed(&old).unwrap();
        codec.check_sealed(&new).unwrap();
        drop(store);
        let again = Store::open(dir.path(), &master, Access::ReadOnly).unwrap();
        assert_eq!(again.codec().epochs(), vec![epoch.clone()]);
        again.codec().check_sealed(&new).unwrap();
        // The index keeps the secret sealed, not as it is.
        let db = std::fs::read(dir.path().join("index.db")).unwrap();
        let wal = std::fs::read(dir.path().join("index.db-wal")).unwrap_or_default();
        let secret = epoch.secret;
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(32).any(|w| w == secret));
        }
    }

    #[test]
    fn members_converge_on_the_newest_epoch_and_refuse_one_from_the_future() {
        let a = Keyring::default();
        let b = Keyring::default();
        let (e1, e2) = (EpochSecret::generate(1_000), EpochSecret::generate(2_000));
        assert_eq!(a.add(&[e1.clone(), e2.clone()]), 2);
        assert_eq!(b.add(std::slice::from_ref(&e2)), 1);
        assert_eq!(b.add(&[e1.clone(), e2.clone()]), 1);
        assert_eq!(a.current().map(|c| c.0), Some(e2.tag()));
        assert_eq!(b.current().map(|c| c.0), Some(e2.tag()));
        let now = 10_000_000;
        assert!(EpochSecret::generate(now + 1_000)
            .check_received(now)
            .is_ok());
        assert!(EpochSecret::generate(now + MAX_CLOCK_AHEAD_MS + 1)
            .check_received(now)
            .is_err());
    }
}
