//! The join exchange's messages and keys: what each side sends, the
//! SPAKE2 identity, and the keys derived from the shared secret (key
//! confirmation, the confirmation string, the bundle's seal).

use std::net::SocketAddr;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use iroh::endpoint::{RecvStream, SendStream};
use iroh::EndpointId;
use serde::{Deserialize, Serialize};
use spake2::Identity;

use super::{InviteError, Result, JOIN_ALPN, STEP_TIMEOUT};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) struct JoinHello {
    pub(super) invite: String,
    pub(super) pake: String,
    pub(super) name: String,
    pub(super) addrs: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub(super) enum Reply {
    Error { message: String },
    Pake { pake: String, confirm: String },
    Confirm { confirm: String },
    Bundle { sealed: String },
}

pub(super) fn identity(invite: &[u8; 8], inviter: &EndpointId, joiner: &EndpointId) -> Identity {
    let mut id = Vec::with_capacity(80);
    id.extend_from_slice(JOIN_ALPN);
    id.extend_from_slice(invite);
    id.extend_from_slice(inviter.as_bytes());
    id.extend_from_slice(joiner.as_bytes());
    Identity::new(&id)
}

/// Keys derived from the exchanged secret, one per use.
pub(super) struct Session {
    key: [u8; 32],
}

impl Session {
    pub(super) fn new(shared: &[u8]) -> Self {
        Session {
            key: blake3::derive_key("sovryn join 1 session", shared),
        }
    }

    pub(super) fn confirm(&self, side: &str) -> String {
        let k = blake3::derive_key("sovryn join 1 confirm", &self.key);
        blake3::keyed_hash(&k, side.as_bytes()).to_hex().to_string()
    }

    pub(super) fn check(&self, side: &str, got: &str) -> bool {
        blake3::Hash::from_hex(got).is_ok_and(|h| {
            let k = blake3::derive_key("sovryn join 1 confirm", &self.key);
            // `blake3::Hash` compares in constant time.
            blake3::keyed_hash(&k, side.as_bytes()) == h
        })
    }

    /// The string both people compare: eight digits.
    pub(super) fn confirmation(&self) -> String {
        let k = blake3::derive_key("sovryn join 1 words", &self.key);
        let n = u32::from_le_bytes([k[0], k[1], k[2], k[3]]) % 100_000_000;
        format!("{:04}-{:04}", n / 10_000, n % 10_000)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let k = blake3::derive_key("sovryn join 1 bundle", &self.key);
        ChaCha20Poly1305::new(Key::from_slice(&k))
    }

    pub(super) fn seal(&self, plain: &[u8]) -> Result<String> {
        let nonce: [u8; 12] = rand::random();
        let mut out = nonce.to_vec();
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), plain)
            .map_err(|_| InviteError::Protocol("sealing the bundle failed".into()))?;
        out.extend_from_slice(&sealed);
        Ok(hex::encode(out))
    }

    pub(super) fn open(&self, sealed: &str) -> Result<Vec<u8>> {
        let bytes = hex::decode(sealed).map_err(|_| InviteError::Protocol("bad bundle".into()))?;
        if bytes.len() < 12 {
            return Err(InviteError::Protocol("bad bundle".into()));
        }
        let (nonce, body) = bytes.split_at(12);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| InviteError::Protocol("the bundle does not open".into()))
    }
}

pub(super) async fn write<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| InviteError::Protocol(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| InviteError::Protocol("too large".into()))?;
    let io = |e: iroh::endpoint::WriteError| InviteError::Connection(e.to_string());
    send.write_all(&len.to_be_bytes()).await.map_err(io)?;
    send.write_all(&body).await.map_err(io)?;
    Ok(())
}

pub(super) async fn read<T: for<'de> Deserialize<'de>>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<T> {
    let step = async {
        let io = |e: iroh::endpoint::ReadExactError| InviteError::Connection(e.to_string());
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(InviteError::Protocol(format!("a message of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(io)?;
        serde_json::from_slice(&body).map_err(|e| InviteError::Protocol(e.to_string()))
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| InviteError::Connection("the other side went quiet".into()))?
}

pub(super) fn pake_bytes(hex_text: &str) -> Result<Vec<u8>> {
    let b = hex::decode(hex_text).map_err(|_| InviteError::Protocol("bad key exchange".into()))?;
    if b.len() > 64 {
        return Err(InviteError::Protocol("bad key exchange".into()));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spake2::{Ed25519Group, Password, Spake2};

    #[test]
    fn both_sides_derive_one_key_only_from_the_same_secret() {
        let (a, b) = (
            iroh::SecretKey::generate().public(),
            iroh::SecretKey::generate().public(),
        );
        let id = [1u8; 8];
        let run = |sa: [u8; 5], sb: [u8; 5]| {
            let (s1, m1) =
                Spake2::<Ed25519Group>::start_symmetric(&Password::new(sa), &identity(&id, &a, &b));
            let (s2, m2) =
                Spake2::<Ed25519Group>::start_symmetric(&Password::new(sb), &identity(&id, &a, &b));
            let (k1, k2) = (s1.finish(&m2).unwrap(), s2.finish(&m1).unwrap());
            (Session::new(&k1), Session::new(&k2))
        };
        let (x, y) = run([9; 5], [9; 5]);
        assert!(y.check("inviter", &x.confirm("inviter")));
        assert!(!y.check("joiner", &x.confirm("inviter")));
        assert_eq!(x.confirmation(), y.confirmation());
        let sealed = x.seal(b"keys").unwrap();
        assert_eq!(y.open(&sealed).unwrap(), b"keys");
        let (x, y) = run([9; 5], [8; 5]);
        assert!(!y.check("inviter", &x.confirm("inviter")));
        assert!(y.open(&x.seal(b"keys").unwrap()).is_err());
    }
}
