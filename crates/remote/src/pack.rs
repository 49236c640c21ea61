//! Packs as a bucket keeps them: sealed chunks in shuffled order, random
//! padding up to a size class, then the pack's own index (which chunk
//! lies where), sealed under the folder's remote key and bound to the
//! pack's name, then the sealed index's length (4 bytes, little-endian).
//! Shuffling and padding keep chunk boundaries and exact sizes out of
//! sight: without the key a pack is its size class and random bytes.

use rand::seq::SliceRandom;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sovryn_store::{blob, ChunkId, SealedChunk};

use crate::layout::size_class;
use crate::{Error, Result};

/// Sealed chunk bytes in one pack at most: with its index and padding a
/// full pack is a 16 MiB object.
pub const PACK_PAYLOAD: usize = 15 * 1024 * 1024;

/// The index is padded to a multiple of this before sealing, so its
/// length tells the number of chunks only roughly.
const INDEX_STEP: usize = 4096;

/// Where one chunk lies in a pack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Its first byte in the pack.
    pub offset: u64,
    /// Its sealed length.
    pub len: u32,
    /// Its plaintext length.
    pub raw_len: u32,
}

#[derive(Serialize, Deserialize)]
struct Index {
    v: u32,
    chunks: Vec<PackEntry>,
}

/// What binds a pack's index to the pack: its folder and its name.
pub(crate) fn aad(folder_id: &str, kind: &str, name: &str) -> Vec<u8> {
    format!("sovryn remote v1\0{folder_id}\0{kind}\0{name}").into_bytes()
}

/// A pack of `chunks` named `name` (its file name) in `folder_id`.
pub fn build(
    key: &[u8; 32],
    folder_id: &str,
    name: &str,
    mut chunks: Vec<SealedChunk>,
) -> Result<(Vec<u8>, Vec<PackEntry>)> {
    chunks.shuffle(&mut rand::thread_rng());
    let payload: usize = chunks.iter().map(|c| c.sealed.len()).sum();
    let mut body = Vec::with_capacity(size_class(payload + INDEX_STEP + 64));
    let mut entries = Vec::with_capacity(chunks.len());
    for c in chunks {
        let len = u32::try_from(c.sealed.len())
            .map_err(|_| Error::Spec("a sealed chunk over 4 GiB".into()))?;
        entries.push(PackEntry {
            id: c.id,
            offset: body.len() as u64,
            len,
            raw_len: c.raw_len,
        });
        body.extend_from_slice(&c.sealed);
    }
    let mut index = serde_json::to_vec(&Index {
        v: 1,
        chunks: entries.clone(),
    })
    .map_err(|e| Error::Spec(format!("pack index: {e}")))?;
    // JSON ignores trailing whitespace.
    index.resize(index.len().div_ceil(INDEX_STEP) * INDEX_STEP, b' ');
    let sealed_index = blob::seal(key, &aad(folder_id, "p", name), &index);
    let content = body.len() + sealed_index.len() + 4;
    let mut padding = vec![0u8; size_class(content) - content];
    rand::thread_rng().fill_bytes(&mut padding);
    body.extend_from_slice(&padding);
    body.extend_from_slice(&sealed_index);
    let index_len = u32::try_from(sealed_index.len())
        .map_err(|_| Error::Spec("a pack index over 4 GiB".into()))?;
    body.extend_from_slice(&index_len.to_le_bytes());
    Ok((body, entries))
}

/// The length of a pack's sealed index, from its last 4 bytes.
pub fn index_len(trailer: &[u8]) -> Result<usize> {
    let b: [u8; 4] = trailer
        .try_into()
        .map_err(|_| Error::Tampered("pack has no trailer".into()))?;
    Ok(u32::from_le_bytes(b) as usize)
}

/// A pack's entries from its sealed index; `pack_len` is the whole pack's
/// length (every entry must lie before the index).
pub fn open_index(
    key: &[u8; 32],
    folder_id: &str,
    name: &str,
    sealed_index: &[u8],
    pack_len: u64,
) -> Result<Vec<PackEntry>> {
    let plain = blob::open(key, &aad(folder_id, "p", name), sealed_index)
        .map_err(|_| Error::Tampered(format!("pack {name}: its index fails authentication")))?;
    let index: Index = serde_json::from_slice(&plain)
        .map_err(|e| Error::Tampered(format!("pack {name}: its index does not parse: {e}")))?;
    let end = pack_len.saturating_sub(sealed_index.len() as u64 + 4);
    for e in &index.chunks {
        if e.offset
            .checked_add(u64::from(e.len))
            .is_none_or(|x| x > end)
        {
            return Err(Error::Tampered(format!(
                "pack {name}: an entry lies outside it"
            )));
        }
    }
    Ok(index.chunks)
}

/// The sealed chunks of a whole pack, as its index places them.
pub fn chunks(pack: &[u8], entries: &[PackEntry]) -> Vec<SealedChunk> {
    entries
        .iter()
        .filter_map(|e| {
            let start = usize::try_from(e.offset).ok()?;
            let bytes = pack.get(start..start.checked_add(e.len as usize)?)?;
            Some(SealedChunk {
                id: e.id,
                raw_len: e.raw_len,
                sealed: bytes.to_vec(),
            })
        })
        .collect()
}

/// The index of a whole pack.
pub fn read_whole(
    key: &[u8; 32],
    folder_id: &str,
    name: &str,
    pack: &[u8],
) -> Result<Vec<PackEntry>> {
    let n = pack.len();
    let trailer = pack
        .get(n.saturating_sub(4)..)
        .filter(|_| n >= 4)
        .ok_or_else(|| Error::Tampered(format!("pack {name} is truncated")))?;
    let len = index_len(trailer)?;
    let start = n
        .checked_sub(4 + len)
        .ok_or_else(|| Error::Tampered(format!("pack {name} is truncated")))?;
    open_index(key, folder_id, name, &pack[start..n - 4], n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sovryn_store::{ChunkCodec, MasterKey};

    #[test]
    fn a_pack_is_a_size_class_of_random_looking_bytes_that_opens_only_as_itself() {
        let codec = ChunkCodec::new(MasterKey::generate().derive());
        let key = codec.keys().remote;
        let sealed: Vec<SealedChunk> = (0..20u8)
            .map(|i| {
                let data = vec![i; 1000 + i as usize * 37];
                codec.seal(codec.id_of(&data), &data).unwrap()
            })
            .collect();
        let ids: Vec<ChunkId> = sealed.iter().map(|c| c.id).collect();
        let (pack, entries) = build(&key, "f", "abc", sealed).unwrap();
        assert_eq!(pack.len(), size_class(pack.len()));
        // Shuffled: not in the order given (20! orders; one is the same).
        let order: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        assert_ne!(order, ids);
        let back = read_whole(&key, "f", "abc", &pack).unwrap();
        let got = chunks(&pack, &back);
        assert_eq!(got.len(), 20);
        for c in &got {
            codec.check_sealed(c).unwrap();
        }
        assert!(read_whole(&key, "f", "other", &pack).is_err());
        assert!(read_whole(&key, "g", "abc", &pack).is_err());
        let mut bad = pack.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(read_whole(&key, "f", "abc", &bad).is_err());
        assert!(read_whole(&key, "f", "abc", &pack[..3]).is_err());
    }
}
