//! Rebuilding a folder's store from a bucket alone: the newest index
//! snapshot, then every chunk of every pack, each checked under the
//! folder key before it is stored.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use std::collections::HashSet;

use sovryn_store::{ChunkCodec, ChunkId, MasterKey, SealedChunk, Store};

use crate::layout;
use crate::objects::{Bucket, Listed};
use crate::pack;
use crate::snapshot::{self, newest};
use crate::{Error, Result};

/// What a restore did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RestoreReport {
    /// The snapshot used (its counter).
    pub snapshot: u64,
    /// Packs read.
    pub packs: usize,
    /// Chunks stored.
    pub chunks: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Objects (or sources) refused, and why; what they held came from
    /// another source.
    pub refused: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// The node's sealed config vault as the bucket keeps it, if it does.
pub async fn fetch_vault(bucket: &Bucket) -> Result<Option<Vec<u8>>> {
    Ok(bucket
        .get(&layout::vault(&bucket.prefix))
        .await?
        .map(|b| b.to_vec()))
}

/// Rebuilds the store of the folder keyed `master` in `home` (a folder
/// home with no store open) from `sources`, in order: the index from the
/// newest snapshot of the first source holding one that opens, then the
/// chunks it lists from each source in turn until none is missing. An
/// object that does not open under the folder key is refused and logged,
/// and what it held is taken from the next source; it is an error only
/// when no source has it intact.
pub async fn restore_folder(
    sources: &[Bucket],
    home: &Path,
    master: &MasterKey,
) -> Result<(Store, RestoreReport)> {
    let started = Instant::now();
    let derived = master.derive();
    let folder_id = derived.folder_id.clone();
    let key = derived.remote;
    let mut report = RestoreReport::default();
    let mut adopted = None;
    for b in sources {
        match newest_snapshot(b, &key, &folder_id).await {
            Ok(Some(found)) => {
                adopted = Some(found);
                break;
            }
            Ok(None) => {}
            Err(e) => refuse(&mut report, b, e),
        }
    }
    let Some((counter, index, bytes)) = adopted else {
        if report.refused.is_empty() {
            let urls: Vec<&str> = sources.iter().map(Bucket::url).collect();
            return Err(Error::Spec(format!(
                "no backup of folder {folder_id} in {}",
                urls.join(", ")
            )));
        }
        return Err(Error::Tampered(report.refused.join("; ")));
    };
    report.snapshot = counter;
    report.bytes += bytes;
    let (mut store, needed) = Store::adopt_snapshot(home, &index, master)?;
    let mut missing: HashSet<ChunkId> = needed.into_iter().collect();
    for b in sources {
        if missing.is_empty() {
            break;
        }
        let packs = match b.list(&layout::packs(&b.prefix, &folder_id)).await {
            Ok(p) => p,
            Err(e) => {
                refuse(&mut report, b, e);
                continue;
            }
        };
        for meta in packs {
            if missing.is_empty() {
                break;
            }
            match read_pack(b, &meta.location, &key, &folder_id, store.codec()).await {
                Ok((chunks, bytes)) => {
                    report.bytes += bytes;
                    let fresh: Vec<SealedChunk> = chunks
                        .into_iter()
                        .filter(|c| missing.remove(&c.id))
                        .collect();
                    report.chunks += store.put_sealed(fresh)?;
                    report.packs += 1;
                }
                Err(e) => refuse(&mut report, b, e),
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::Tampered(format!(
            "{} chunk(s) are not to be had intact from any source{}",
            missing.len(),
            if report.refused.is_empty() {
                String::new()
            } else {
                format!(": {}", report.refused.join("; "))
            }
        )));
    }
    store.flush()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((store, report))
}

/// Notes an object (or a source) refused, and says so in the log.
pub(crate) fn refuse(report: &mut RestoreReport, from: &Bucket, e: Error) {
    tracing::warn!("{}: {e}; taking it from elsewhere", from.url());
    report.refused.push(format!("{}: {e}", from.url()));
}

/// The newest snapshot of the folder in `b`: (its counter, the index, the
/// bytes read).
async fn newest_snapshot(
    b: &Bucket,
    key: &[u8; 32],
    folder_id: &str,
) -> Result<Option<(u64, Vec<u8>, u64)>> {
    let listed: Vec<Listed> = b.list(&layout::snapshots(&b.prefix, folder_id)).await?;
    let Some(snap) = newest(&listed) else {
        return Ok(None);
    };
    let name = snap.location.filename().unwrap_or_default().to_owned();
    let sealed = b
        .get(&snap.location)
        .await?
        .ok_or_else(|| Error::Tampered(format!("snapshot {name} vanished")))?;
    let index = snapshot::open(key, folder_id, &name, &sealed)?;
    let counter = layout::snapshot_counter(&snap.location).unwrap_or(0);
    Ok(Some((counter, index, sealed.len() as u64)))
}

/// The chunks of one pack, every one checked under the folder key (the
/// snapshot brought the seal epochs): all of them, or an error.
pub(crate) async fn read_pack(
    b: &Bucket,
    location: &object_store::path::Path,
    key: &[u8; 32],
    folder_id: &str,
    codec: &ChunkCodec,
) -> Result<(Vec<SealedChunk>, u64)> {
    let name = location.filename().unwrap_or_default().to_owned();
    let bytes = b
        .get(location)
        .await?
        .ok_or_else(|| Error::Tampered(format!("pack {name} vanished")))?;
    let entries = pack::read_whole(key, folder_id, &name, &bytes)?;
    let chunks = pack::chunks(&bytes, &entries);
    if chunks.len() != entries.len() {
        return Err(Error::Tampered(format!(
            "pack {name}: an entry lies outside it"
        )));
    }
    for c in &chunks {
        codec
            .check_sealed(c)
            .map_err(|e| Error::Tampered(format!("pack {name}: chunk {}: {e}", c.id)))?;
    }
    Ok((chunks, bytes.len() as u64))
}
