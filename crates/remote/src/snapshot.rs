//! Index snapshots as a remote keeps them: the whole index (names,
//! versions, search words, seal epochs), compressed, its length in front,
//! zero-padded inside the seal to a size class, sealed under the folder's
//! remote key and bound to the snapshot's name.

use std::collections::HashSet;
use std::path::Path;

use sovryn_store::{blob, ChunkId, Store};

use crate::layout::{self, size_class};
use crate::objects::Listed;
use crate::pack;
use crate::{Error, Result};

/// A consistent copy of a store's index, in memory, with the chunks it lists.
pub(crate) struct Snapshot {
    /// The index file's bytes.
    pub(crate) index: Vec<u8>,
    /// The chunks it lists: what a store rebuilt from it needs.
    pub(crate) chunks: HashSet<ChunkId>,
}

impl Snapshot {
    /// Takes one of `store` (through a temp file in `scratch`).
    pub(crate) fn take(store: &Store, scratch: &Path) -> Result<Snapshot> {
        let tmp = scratch.join(format!(".snapshot-{:016x}.tmp", rand::random::<u64>()));
        let taken = (|| -> sovryn_store::Result<Snapshot> {
            store.snapshot_index(&tmp)?;
            let chunks = Store::chunks_in_snapshot(&tmp)?.into_iter().collect();
            let index = std::fs::read(&tmp).map_err(|e| sovryn_store::Error::io(&tmp, e))?;
            Ok(Snapshot { index, chunks })
        })();
        let _ = std::fs::remove_file(&tmp);
        Ok(taken?)
    }

    /// The chunks an opened snapshot's index names (read through a temp
    /// file in `scratch`).
    pub(crate) fn chunks_named(index: &[u8], scratch: &Path) -> Result<HashSet<ChunkId>> {
        let tmp = scratch.join(format!(".named-{:016x}.tmp", rand::random::<u64>()));
        let named = sovryn_store::keys::write_secret_file(&tmp, index)
            .and_then(|()| Store::chunks_in_snapshot(&tmp));
        let _ = std::fs::remove_file(&tmp);
        Ok(named?.into_iter().collect())
    }

    /// Sealed for the remote as snapshot `name` of `folder_id`.
    pub(crate) fn seal(&self, key: &[u8; 32], folder_id: &str, name: &str) -> Result<Vec<u8>> {
        let packed = zstd::bulk::compress(&self.index, 3)
            .map_err(|e| Error::Spec(format!("compressing a snapshot: {e}")))?;
        let mut body = (packed.len() as u64).to_le_bytes().to_vec();
        body.extend_from_slice(&packed);
        body.resize(size_class(body.len() + blob::OVERHEAD) - blob::OVERHEAD, 0);
        Ok(blob::seal(key, &pack::aad(folder_id, "s", name), &body))
    }
}

/// The index of a snapshot sealed by [`Snapshot::seal`].
pub(crate) fn open(key: &[u8; 32], folder_id: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let body = blob::open(key, &pack::aad(folder_id, "s", name), sealed)
        .map_err(|_| Error::Tampered(format!("snapshot {name} fails authentication")))?;
    let bad = || Error::Tampered(format!("snapshot {name} is malformed"));
    let len = u64::from_le_bytes(
        body.get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let len = usize::try_from(len).map_err(|_| bad())?;
    let packed = body
        .get(8..8usize.checked_add(len).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    // Authenticated above: only a holder of the folder key made it.
    zstd::stream::decode_all(packed).map_err(|_| bad())
}

/// The snapshot with the highest counter.
pub(crate) fn newest(listed: &[Listed]) -> Option<&Listed> {
    listed
        .iter()
        .filter(|m| layout::snapshot_counter(&m.location).is_some())
        .max_by_key(|m| layout::snapshot_counter(&m.location))
}
