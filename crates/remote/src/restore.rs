//! Rebuilding a folder's store from a bucket alone: the newest index
//! snapshot, then every chunk of every pack, each checked under the
//! folder key before it is stored.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sovryn_store::{MasterKey, Store};

use crate::layout;
use crate::objects::{Bucket, Listed};
use crate::pack;
use crate::push::{newest, open_snapshot};
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
/// home with no store open) from `bucket`. Fails, naming the object, on
/// anything that does not open under the folder key.
pub async fn restore_folder(
    bucket: &Bucket,
    home: &Path,
    master: &MasterKey,
) -> Result<(Store, RestoreReport)> {
    let started = Instant::now();
    let derived = master.derive();
    let folder_id = derived.folder_id.clone();
    let key = derived.remote;
    let mut report = RestoreReport::default();
    let listed: Vec<Listed> = bucket
        .list(&layout::snapshots(&bucket.prefix, &folder_id))
        .await?;
    let snap = newest(&listed).ok_or_else(|| {
        Error::Spec(format!(
            "{} holds no backup of folder {folder_id}",
            bucket.url()
        ))
    })?;
    let name = snap.location.filename().unwrap_or_default().to_owned();
    report.snapshot = layout::snapshot_counter(&snap.location).unwrap_or(0);
    let sealed = bucket
        .get(&snap.location)
        .await?
        .ok_or_else(|| Error::Tampered(format!("snapshot {name} vanished")))?;
    report.bytes += sealed.len() as u64;
    let index = open_snapshot(&key, &folder_id, &name, &sealed)?;
    let mut store = Store::adopt_snapshot(home, &index, master)?;

    let packs: Vec<Listed> = bucket
        .list(&layout::packs(&bucket.prefix, &folder_id))
        .await?;
    for meta in packs {
        let name = meta.location.filename().unwrap_or_default().to_owned();
        let bytes = bucket
            .get(&meta.location)
            .await?
            .ok_or_else(|| Error::Tampered(format!("pack {name} vanished")))?;
        report.bytes += bytes.len() as u64;
        let entries = pack::read_whole(&key, &folder_id, &name, &bytes)?;
        let chunks = pack::chunks(&bytes, &entries);
        if chunks.len() != entries.len() {
            return Err(Error::Tampered(format!(
                "pack {name}: an entry lies outside it"
            )));
        }
        // The snapshot brought the seal epochs: every chunk opens or the
        // pack was changed.
        let mut fresh = Vec::with_capacity(chunks.len());
        for c in chunks {
            store
                .codec()
                .check_sealed(&c)
                .map_err(|e| Error::Tampered(format!("pack {name}: chunk {}: {e}", c.id)))?;
            if !store.has_chunk(&c.id)? {
                fresh.push(c);
            }
        }
        report.chunks += store.put_sealed(fresh)?;
        report.packs += 1;
    }
    store.flush()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((store, report))
}
