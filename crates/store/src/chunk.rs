//! Chunks: content-defined cutting (FastCDC v2020 with a keyed gear table),
//! keyed BLAKE3 ids, and sealing (zstd when it helps, then XChaCha20-Poly1305).

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::epochs::{EpochSecret, Keyring};
use crate::keys::DerivedKeys;
use crate::{Error, Result};

/// Smallest chunk FastCDC cuts (a smaller file is one chunk).
pub const MIN_CHUNK: u32 = 16 * 1024;
/// Average chunk size FastCDC aims for.
pub const AVG_CHUNK: u32 = 64 * 1024;
/// Largest chunk FastCDC cuts.
pub const MAX_CHUNK: u32 = 256 * 1024;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;
/// Bytes a sealed chunk adds to its (compressed) payload: nonce, flag, tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 1 + TAG_LEN;

/// Whether compressing `data` is worth a try: a 4 KiB sample from its middle
/// must shrink by at least 1/32. Saves compressing incompressible chunks whole.
fn looks_compressible(data: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    if data.len() <= 2 * SAMPLE {
        return true;
    }
    let start = data.len() / 2 - SAMPLE / 2;
    let sample = &data[start..start + SAMPLE];
    compress(sample).is_some_and(|c| c.len() < SAMPLE - SAMPLE / 32)
}

thread_local! {
    /// One zstd context per thread: making one per chunk cost about 4 % of
    /// an ingest's CPU time.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// One zstd decompression context per thread, for the same reason.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `data` decompressed into at most `capacity` bytes.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            match slot.as_mut() {
                Some(d) => d.decompress(data, capacity),
                None => zstd::bulk::decompress(data, capacity),
            }
        }
        Err(_) => zstd::bulk::decompress(data, capacity),
    })
}

/// `data` compressed at zstd level 1 (None if zstd fails).
fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(1).ok()?);
        }
        slot.as_mut()?.compress(data).ok()
    })
}

/// The name of a chunk: keyed BLAKE3 of its plaintext under the folder key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(#[serde(with = "hex32")] pub [u8; 32]);

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..16])
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl ChunkId {
    /// Builds an id from a 32-byte slice.
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| Error::Corrupt("chunk id is not 32 bytes".into()))?;
        Ok(ChunkId(arr))
    }
}

pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

/// Cuts, names, seals and opens chunks under one folder's keys. Clones
/// share the folder's seal epochs ([`crate::epochs`]).
#[derive(Clone)]
pub struct ChunkCodec {
    keys: DerivedKeys,
    epochs: Keyring,
}

/// A chunk ready to append to a pack.
pub struct SealedChunk {
    /// Its id.
    pub id: ChunkId,
    /// Plaintext length.
    pub raw_len: u32,
    /// nonce ‖ ciphertext(flag ‖ payload) ‖ tag.
    pub sealed: Vec<u8>,
}

impl ChunkCodec {
    /// A codec for the folder these keys belong to.
    pub fn new(keys: DerivedKeys) -> Self {
        ChunkCodec {
            keys,
            epochs: Keyring::default(),
        }
    }

    /// Adds seal epochs to this codec and every clone of it; how many were new.
    pub(crate) fn add_epochs(&self, epochs: &[EpochSecret]) -> usize {
        self.epochs.add(epochs)
    }

    /// The seal epochs known, oldest first.
    pub fn epochs(&self) -> Vec<EpochSecret> {
        self.epochs.all()
    }

    /// How many seal epochs are known: it only grows, so a session that
    /// sent this many has sent them all.
    pub fn epoch_count(&self) -> usize {
        self.epochs.len()
    }

    /// The derived keys in use.
    pub fn keys(&self) -> &DerivedKeys {
        &self.keys
    }

    /// The id of a chunk's plaintext.
    pub fn id_of(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.keys.chunk_id, data).as_bytes())
    }

    /// A streaming content-defined chunker over `reader`.
    pub fn chunker<R: Read>(&self, reader: R) -> StreamCDC<R> {
        StreamCDC::with_level_and_seed(
            reader,
            MIN_CHUNK,
            AVG_CHUNK,
            MAX_CHUNK,
            Normalization::Level1,
            self.keys.gear_seed,
        )
    }

    /// The key sealing chunk `id` under a chunk-key base (the master
    /// key's, or an epoch's).
    fn chunk_key(base: &[u8; 32], id: &ChunkId) -> [u8; 32] {
        *blake3::keyed_hash(base, &id.0).as_bytes()
    }

    /// Compresses (when that saves at least 1/32) and encrypts a chunk whose id is known.
    pub fn seal(&self, id: ChunkId, data: &[u8]) -> Result<SealedChunk> {
        let compressed = if looks_compressible(data) {
            compress(data).filter(|c| c.len() < data.len() - data.len() / 32)
        } else {
            None
        };
        let (flag, payload) = match &compressed {
            Some(c) => (FLAG_ZSTD, c.as_slice()),
            None => (FLAG_RAW, data),
        };
        // nonce | flag, payload (encrypted in place) | tag: one buffer, one copy.
        // Under the newest epoch when there is one: its tag opens the nonce,
        // 160 random bits follow (still no collision risk).
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let base = match self.epochs.current() {
            Some((tag, key)) => {
                nonce[..tag.len()].copy_from_slice(&tag);
                key
            }
            None => self.keys.chunk_seal,
        };
        let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + payload.len());
        sealed.extend_from_slice(&nonce);
        sealed.push(flag);
        sealed.extend_from_slice(payload);
        let tag = aead::seal_in_place(
            &Self::chunk_key(&base, &id),
            &nonce,
            &id.0,
            &mut sealed[NONCE_LEN..],
        );
        sealed.extend_from_slice(&tag);
        let raw_len =
            u32::try_from(data.len()).map_err(|_| Error::Corrupt("chunk too large".into()))?;
        Ok(SealedChunk {
            id,
            raw_len,
            sealed,
        })
    }

    /// Checks received plaintext against `id`, then seals it (for bytes that
    /// came from elsewhere, before [`crate::Store::put_sealed`]).
    pub fn seal_verified(&self, id: ChunkId, data: &[u8]) -> Result<SealedChunk> {
        if self.id_of(data) != id {
            return Err(Error::Corrupt(format!(
                "received chunk does not hash to {id}"
            )));
        }
        self.seal(id, data)
    }

    /// Checks a sealed chunk received from elsewhere: it must open under
    /// this folder's key and its plaintext must hash to its id. On success
    /// it can be stored as it is ([`crate::Store::put_sealed`]).
    pub fn check_sealed(&self, sealed: &SealedChunk) -> Result<()> {
        self.open_sealed(sealed).map(drop)
    }

    /// [`ChunkCodec::check_sealed`], keeping the plaintext.
    pub fn open_sealed(&self, sealed: &SealedChunk) -> Result<Vec<u8>> {
        if sealed.raw_len as usize > MAX_CHUNK as usize {
            return Err(Error::Corrupt(format!(
                "received chunk {} claims {} bytes",
                sealed.id, sealed.raw_len
            )));
        }
        let plain = self.open(&sealed.id, &sealed.sealed, sealed.raw_len)?;
        if plain.len() != sealed.raw_len as usize {
            return Err(Error::Corrupt(format!(
                "received chunk {} has the wrong length",
                sealed.id
            )));
        }
        Ok(plain)
    }

    /// Decrypts, decompresses and checks a sealed chunk against its id.
    pub fn open(&self, id: &ChunkId, sealed: &[u8], raw_len: u32) -> Result<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::Corrupt(format!("chunk {id} is truncated")));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        // The epoch the nonce names, else the master key's. A chunk sealed
        // under the master key whose random nonce happens to start with an
        // epoch's tag (1 in 2^32) gets the second try.
        let epoch = self.epochs.by_nonce(&nonce_bytes);
        let mut buf = Vec::new();
        let mut plain_len = None;
        for base in epoch.iter().chain(std::iter::once(&self.keys.chunk_seal)) {
            // Copied afresh for each try: a failed open zeroes the buffer.
            buf.clear();
            buf.extend_from_slice(ct);
            if let Some(p) =
                aead::open_in_place(&Self::chunk_key(base, id), &nonce_bytes, &id.0, &mut buf)
            {
                plain_len = Some(p.len());
                break;
            }
        }
        let plain_len = plain_len.ok_or_else(|| {
            Error::Corrupt(format!(
                "chunk {id} fails authentication (tampered, or sealed under a key this node does not hold)"
            ))
        })?;
        buf.truncate(plain_len);
        let data = match buf.first() {
            Some(&FLAG_RAW) => {
                // Drop the flag in place rather than copy the rest out.
                buf.remove(0);
                buf
            }
            Some(&FLAG_ZSTD) => decompress(&buf[1..], raw_len as usize)
                .map_err(|e| Error::Corrupt(format!("chunk {id} does not decompress: {e}")))?,
            _ => {
                return Err(Error::Corrupt(format!(
                    "chunk {id} has an unknown encoding"
                )))
            }
        };
        if self.id_of(&data) != *id {
            return Err(Error::Corrupt(format!(
                "chunk {id} does not hash to its id"
            )));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    fn codec() -> ChunkCodec {
        ChunkCodec::new(MasterKey::from_hex(&"11".repeat(32)).unwrap().derive())
    }

    fn cut(codec: &ChunkCodec, data: &[u8]) -> Vec<(u64, usize)> {
        codec
            .chunker(data)
            .map(|c| c.map(|c| (c.offset, c.length)))
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn sealed_chunks_are_checked_before_they_are_taken_as_is() {
        let c = codec();
        let data = b"some chunk bytes, some chunk bytes, some chunk bytes".to_vec();
        let id = c.id_of(&data);
        let sealed = c.seal(id, &data).unwrap();
        c.check_sealed(&sealed).unwrap();
        assert_eq!(c.open(&id, &sealed.sealed, sealed.raw_len).unwrap(), data);
        // Another id, a flipped byte, a lying length, another key: refused.
        let other = SealedChunk {
            id: c.id_of(b"other"),
            raw_len: sealed.raw_len,
            sealed: sealed.sealed.clone(),
        };
        assert!(c.check_sealed(&other).is_err());
        let mut bytes = sealed.sealed.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let flipped = SealedChunk {
            id,
            raw_len: sealed.raw_len,
            sealed: bytes,
        };
        assert!(c.check_sealed(&flipped).is_err());
        let huge = SealedChunk {
            id,
            raw_len: MAX_CHUNK + 1,
            sealed: sealed.sealed.clone(),
        };
        assert!(c.check_sealed(&huge).is_err());
        let stranger = ChunkCodec::new(MasterKey::from_hex(&"22".repeat(32)).unwrap().derive());
        assert!(stranger.check_sealed(&sealed).is_err());
        assert!(c.seal_verified(c.id_of(b"x"), &data).is_err());
        assert!(c.seal_verified(id, &data).is_ok());
    }

    #[test]
    fn chunking_is_deterministic_and_bounded() {
        let mut data = vec![0u8; 3 * 1024 * 1024];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
        let c = codec();
        let a = cut(&c, &data);
        assert_eq!(a, cut(&c, &data));
        let total: usize = a.iter().map(|x| x.1).sum();
        assert_eq!(total, data.len());
        for (i, (_, len)) in a.iter().enumerate() {
            assert!(*len <= MAX_CHUNK as usize);
            if i + 1 < a.len() {
                assert!(*len >= MIN_CHUNK as usize);
            }
        }
        // A different key cuts elsewhere: cut points reveal nothing without it.
        let other = ChunkCodec::new(MasterKey::generate().derive());
        assert_ne!(a, cut(&other, &data));
    }

    #[test]
    fn insert_shifts_few_chunks() {
        let mut data = vec![0u8; 4 * 1024 * 1024];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
        let c = codec();
        let ids = |d: &[u8]| -> std::collections::HashSet<ChunkId> {
            c.chunker(d).map(|ch| c.id_of(&ch.unwrap().data)).collect()
        };
        let before = ids(&data);
        data.insert(data.len() / 2, 42);
        let after = ids(&data);
        assert!(after.difference(&before).count() <= 2);
    }

    #[test]
    fn tampering_is_detected() {
        let c = codec();
        let data = b"hello hello hello hello hello".repeat(100);
        let id = c.id_of(&data);
        let mut s = c.seal(id, &data).unwrap();
        let last = s.sealed.len() - 1;
        s.sealed[last] ^= 1;
        assert!(c.open(&id, &s.sealed, s.raw_len).is_err());
    }

    proptest! {
        #[test]
        fn seal_open_round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), repeat in 1usize..4) {
            let c = codec();
            let data = data.repeat(repeat);
            let id = c.id_of(&data);
            let s = c.seal(id, &data).unwrap();
            prop_assert_eq!(c.open(&id, &s.sealed, s.raw_len).unwrap(), data);
        }
    }
}
