//! Whole objects sealed under a key derived from the folder key (index
//! snapshots and pack indexes kept in a bucket): `nonce ‖ ciphertext ‖
//! tag`, XChaCha20-Poly1305, with associated data naming where the object
//! belongs, so one cannot be passed off as another.

use rand::RngCore;

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::{Error, Result};

/// Bytes sealing adds.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// `plain` sealed under `key`, bound to `aad`.
pub fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend(aead::seal(key, &nonce, aad, plain));
    out
}

/// The plaintext of an object [`seal`]ed under `key` with `aad`; an error
/// if it was changed, sealed under another key, or belongs elsewhere.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::Corrupt("a sealed object fails authentication".into());
    if sealed.len() < OVERHEAD {
        return Err(bad());
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    aead::open(key, &n, aad, ct).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_opens_only_as_itself() {
        let (key, other) = ([7u8; 32], [8u8; 32]);
        let sealed = seal(&key, b"folder/s/1", b"index snapshot");
        assert_eq!(
            open(&key, b"folder/s/1", &sealed).unwrap(),
            b"index snapshot"
        );
        assert!(open(&other, b"folder/s/1", &sealed).is_err());
        assert!(open(&key, b"folder/s/2", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(open(&key, b"folder/s/1", &bad).is_err());
        assert!(open(&key, b"folder/s/1", &sealed[..10]).is_err());
    }
}
