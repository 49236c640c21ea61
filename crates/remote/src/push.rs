//! Sending a folder to a bucket: packs of the chunks it lacks, then an
//! index snapshot naming only chunks already there. Resumable: what the
//! bucket holds is read from its pack indexes (cached locally), so a push
//! cut off anywhere sends again at most the pack it was writing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sovryn_store::{blob, ChunkId, SealedChunk, Store};

use crate::layout::{self, size_class};
use crate::objects::{Bucket, Listed};
use crate::pack::{self, PACK_PAYLOAD};
use crate::ObjectPath;
use crate::{Error, Result};

/// Snapshots kept per folder (the newest ones; older ones are deleted).
const SNAPSHOTS_KEPT: usize = 2;

/// What one push did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    /// Packs uploaded.
    pub packs: usize,
    /// Chunks in them.
    pub chunks: usize,
    /// Chunks the bucket had already.
    pub chunks_present: usize,
    /// Bytes uploaded (packs and snapshot, padding included).
    pub bytes: u64,
    /// The snapshot uploaded (its counter), if the index changed.
    pub snapshot: Option<u64>,
    /// The remote had lost what this node sent before (rolled back or
    /// wiped); it was sent again.
    pub rolled_back: bool,
    /// Pruning was left out: another node's snapshots are there.
    pub pruning_skipped: bool,
    /// Chunks removed from the bucket (versions pruned by `gc`).
    pub pruned_chunks: usize,
    /// Packs deleted (emptied, or rewritten without the pruned chunks).
    pub packs_deleted: usize,
    /// Wall time.
    pub seconds: f64,
}

/// What this node knows of a bucket's contents, so a push does not read
/// every pack's index again.
#[derive(Default, Serialize, Deserialize)]
struct Cache {
    /// Pack file name → the chunks in it.
    packs: BTreeMap<String, Vec<ChunkId>>,
    /// The change-log sequence of the newest snapshot this node uploaded.
    snapshot_seq: Option<u64>,
    /// Its [`Store::index_marker`].
    #[serde(default)]
    snapshot_marker: Option<String>,
    /// Its name.
    snapshot_name: Option<String>,
    /// Every snapshot this node sent that may still be there: the others
    /// are another node's, which this one neither deletes nor prunes under.
    #[serde(default)]
    sent_snapshots: std::collections::BTreeSet<String>,
}

fn cache_path(dir: &Path) -> PathBuf {
    dir.join("cache.json")
}

fn load_cache(dir: &Path) -> Cache {
    std::fs::read(cache_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_cache(dir: &Path, cache: &Cache) -> Result<()> {
    let bytes = serde_json::to_vec(cache).map_err(|e| Error::Spec(e.to_string()))?;
    Ok(sovryn_store::keys::write_secret_file(
        &cache_path(dir),
        &bytes,
    )?)
}

/// What this node last saw of a bucket's copy of a folder (no request).
#[derive(Debug, Default)]
pub struct Known {
    /// Chunks in the bucket's packs.
    pub chunks: HashSet<ChunkId>,
    /// Packs.
    pub packs: usize,
    /// The change-log sequence of the newest snapshot this node sent.
    pub snapshot_seq: Option<u64>,
}

/// What this node last saw of a bucket's copy of a folder, from the state
/// a push keeps in `state_dir`.
pub fn known(state_dir: &Path) -> Known {
    let cache = load_cache(state_dir);
    Known {
        chunks: cache.packs.values().flatten().copied().collect(),
        packs: cache.packs.len(),
        snapshot_seq: cache.snapshot_seq,
    }
}

/// Reads the indexes of the folder's packs in the bucket that `cache`
/// does not know yet; drops packs the bucket no longer has.
async fn refresh(
    bucket: &Bucket,
    key: &[u8; 32],
    folder_id: &str,
    cache: &mut Cache,
) -> Result<()> {
    let listed: Vec<Listed> = bucket
        .list(&layout::packs(&bucket.prefix, folder_id))
        .await?;
    let names: HashSet<String> = listed
        .iter()
        .filter_map(|m| m.location.filename().map(str::to_owned))
        .collect();
    cache.packs.retain(|n, _| names.contains(n));
    for meta in listed {
        let Some(name) = meta.location.filename().map(str::to_owned) else {
            continue;
        };
        if cache.packs.contains_key(&name) || meta.size < 4 {
            continue;
        }
        let trailer = bucket
            .get_range(&meta.location, meta.size - 4..meta.size)
            .await?;
        let len = pack::index_len(&trailer)? as u64;
        let Some(start) = meta.size.checked_sub(4 + len) else {
            tracing::warn!("bucket pack {name} is damaged; its chunks are sent again");
            continue;
        };
        let sealed = bucket
            .get_range(&meta.location, start..meta.size - 4)
            .await?;
        match pack::open_index(key, folder_id, &name, &sealed, meta.size) {
            Ok(entries) => {
                cache
                    .packs
                    .insert(name, entries.into_iter().map(|e| e.id).collect());
            }
            Err(e) => tracing::warn!("{e}; its chunks are sent again"),
        }
    }
    Ok(())
}

/// Sends folder `store` (a read-only handle will do) to `bucket`: the
/// chunks it lacks, in packs, then an index snapshot when the index
/// changed since the last one this node sent. `state_dir` keeps what this
/// node knows of the bucket.
pub async fn push_folder(bucket: &Bucket, store: &Store, state_dir: &Path) -> Result<PushReport> {
    let started = Instant::now();
    std::fs::create_dir_all(state_dir).map_err(|e| Error::Io {
        path: state_dir.to_owned(),
        source: e,
    })?;
    let folder_id = store.folder_id().to_owned();
    let key = store.codec().keys().remote;
    let mut cache = load_cache(state_dir);
    refresh(bucket, &key, &folder_id, &mut cache).await?;
    let mut report = PushReport::default();
    let pace = Pace::new(bucket.max_bytes_per_sec);

    // The snapshot is taken first: every chunk it names is in the store
    // now, so in the chunk list read next, and in the bucket before the
    // snapshot is.
    let marker = store.index_marker()?;
    let listed_snapshots: Vec<Listed> = bucket
        .list(&layout::snapshots(&bucket.prefix, &folder_id))
        .await?;
    // The newest snapshot this node sent is gone and nothing newer took
    // its place: the remote was rolled back (or wiped). Said, and what it
    // lacks is sent again.
    if let Some(ours) = cache.snapshot_name.clone() {
        let ours_counter = layout::snapshot_counter(&ObjectPath::from(ours.as_str()));
        let still_there = listed_snapshots
            .iter()
            .any(|m| m.location.filename() == Some(ours.as_str()));
        let newest_there =
            newest(&listed_snapshots).and_then(|m| layout::snapshot_counter(&m.location));
        if !still_there && newest_there < ours_counter {
            tracing::warn!(
                "{}: snapshot {ours} that this node sent is gone and nothing newer is there: \
                 the remote was rolled back or wiped; sending what it lacks again",
                bucket.url()
            );
            report.rolled_back = true;
            cache = Cache::default();
            refresh(bucket, &key, &folder_id, &mut cache).await?;
        }
    }
    let ours_is_newest = cache.snapshot_name.as_ref().is_some_and(|n| {
        newest(&listed_snapshots).and_then(|m| m.location.filename().map(str::to_owned))
            == Some(n.clone())
    });
    let snapshot = if cache.snapshot_marker.as_deref() == Some(marker.as_str()) && ours_is_newest {
        None
    } else {
        Some(take_snapshot(store, state_dir)?)
    };

    let present: HashSet<ChunkId> = cache.packs.values().flatten().copied().collect();
    let local = store.chunk_list()?;
    let mut batch = Batch::default();
    for id in &local {
        if present.contains(id) {
            report.chunks_present += 1;
            continue;
        }
        batch.add(store.read_sealed(id)?);
        if batch.bytes >= PACK_PAYLOAD {
            let full = std::mem::take(&mut batch);
            send_pack(
                bucket,
                &key,
                &folder_id,
                full.chunks,
                &mut cache,
                &mut report,
                state_dir,
            )
            .await?;
            pace.wait(report.bytes).await;
        }
    }
    if !batch.chunks.is_empty() {
        send_pack(
            bucket,
            &key,
            &folder_id,
            batch.chunks,
            &mut cache,
            &mut report,
            state_dir,
        )
        .await?;
    }

    if let Some(snap) = snapshot {
        let counter = listed_snapshots
            .iter()
            .filter_map(|m| layout::snapshot_counter(&m.location))
            .max()
            .map_or(1, |c| c + 1);
        let path = layout::new_snapshot(&bucket.prefix, &folder_id, counter);
        let name = path.filename().unwrap_or_default().to_owned();
        let sealed = seal_snapshot(&key, &folder_id, &name, &snap.index)?;
        report.bytes += sealed.len() as u64;
        bucket.put(&path, sealed).await?;
        report.snapshot = Some(counter);
        cache.snapshot_seq = Some(snap.seq);
        cache.snapshot_marker = Some(marker);
        cache.sent_snapshots.insert(name.clone());
        cache.snapshot_name = Some(name);
        save_cache(state_dir, &cache)?;
        // Another node's snapshots name chunks this one may not have: while
        // any is there, nothing is pruned and they are left alone.
        let sent = &cache.sent_snapshots;
        let (ours, others): (Vec<&Listed>, Vec<&Listed>) = listed_snapshots
            .iter()
            .partition(|m| m.location.filename().is_some_and(|n| sent.contains(n)));
        let mut pruned = false;
        if others.is_empty() {
            // What neither the new snapshot nor the store holds any more
            // (versions `gc` pruned) leaves the bucket, by rewriting packs.
            let mut live: HashSet<ChunkId> = snap.chunks;
            live.extend(local.iter().copied());
            pruned = prune(
                bucket,
                store,
                &key,
                &folder_id,
                &live,
                &mut cache,
                &mut report,
                state_dir,
            )
            .await?;
        } else {
            report.pruning_skipped = true;
            tracing::info!(
                "{}: {} snapshot(s) of another node are there; nothing is pruned",
                bucket.url(),
                others.len()
            );
        }
        // This node's older snapshots go once the new one is there; all of
        // them once chunks they name are gone.
        let mut older = ours;
        older.sort_by_key(|m| layout::snapshot_counter(&m.location));
        let keep = if pruned { 1 } else { SNAPSHOTS_KEPT };
        let drop_n = (older.len() + 1).saturating_sub(keep);
        for m in older.into_iter().take(drop_n) {
            bucket.delete(&m.location).await?;
            if let Some(n) = m.location.filename() {
                cache.sent_snapshots.remove(n);
            }
        }
        save_cache(state_dir, &cache)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Keeps a push's uploads under a rate: after each pack it waits until the
/// bytes sent so far fit the limit.
struct Pace {
    started: Instant,
    bytes_per_sec: Option<u64>,
}

impl Pace {
    fn new(bytes_per_sec: Option<u64>) -> Self {
        Pace {
            started: Instant::now(),
            bytes_per_sec,
        }
    }

    async fn wait(&self, sent: u64) {
        if let Some(rate) = self.bytes_per_sec {
            let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(left) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(left).await;
            }
        }
    }
}

/// The snapshot with the highest counter.
pub(crate) fn newest(listed: &[Listed]) -> Option<&Listed> {
    listed
        .iter()
        .filter(|m| layout::snapshot_counter(&m.location).is_some())
        .max_by_key(|m| layout::snapshot_counter(&m.location))
}

async fn send_pack(
    bucket: &Bucket,
    key: &[u8; 32],
    folder_id: &str,
    chunks: Vec<SealedChunk>,
    cache: &mut Cache,
    report: &mut PushReport,
    state_dir: &Path,
) -> Result<()> {
    let path = layout::new_pack(&bucket.prefix, folder_id);
    let name = path.filename().unwrap_or_default().to_owned();
    let (bytes, entries) = pack::build(key, folder_id, &name, chunks)?;
    report.bytes += bytes.len() as u64;
    report.packs += 1;
    report.chunks += entries.len();
    bucket.put(&path, bytes).await?;
    cache
        .packs
        .insert(name, entries.into_iter().map(|e| e.id).collect());
    save_cache(state_dir, cache)
}

/// A consistent copy of the store's index, in memory, with the chunks it
/// lists and the sequence it was taken at.
struct Snapshot {
    index: Vec<u8>,
    chunks: HashSet<ChunkId>,
    seq: u64,
}

fn take_snapshot(store: &Store, state_dir: &Path) -> Result<Snapshot> {
    let seq = store.sequence()?;
    let tmp = state_dir.join(format!(".snapshot-{:016x}.tmp", rand::random::<u64>()));
    let taken = (|| -> sovryn_store::Result<Snapshot> {
        store.snapshot_index(&tmp)?;
        let chunks = Store::chunks_in_snapshot(&tmp)?.into_iter().collect();
        let index = std::fs::read(&tmp).map_err(|e| sovryn_store::Error::io(&tmp, e))?;
        Ok(Snapshot { index, chunks, seq })
    })();
    let _ = std::fs::remove_file(&tmp);
    Ok(taken?)
}

/// Sealed chunks gathered for one pack.
#[derive(Default)]
struct Batch {
    chunks: Vec<SealedChunk>,
    bytes: usize,
}

impl Batch {
    fn add(&mut self, c: SealedChunk) {
        self.bytes += c.sealed.len();
        self.chunks.push(c);
    }
}

/// Removes from the bucket the chunks outside `live`: a pack holding only
/// such chunks is deleted, one holding some live ones too is rewritten
/// (its live chunks sent in new packs first, then it is deleted). A live
/// chunk this store no longer has keeps its pack as it is. Whether any
/// chunk went.
#[allow(clippy::too_many_arguments)]
async fn prune(
    bucket: &Bucket,
    store: &Store,
    key: &[u8; 32],
    folder_id: &str,
    live: &HashSet<ChunkId>,
    cache: &mut Cache,
    report: &mut PushReport,
    state_dir: &Path,
) -> Result<bool> {
    let mut doomed = Vec::new();
    let mut batch = Batch::default();
    // A chunk in two packs (two pushers at once) is moved once.
    let mut moved: HashSet<ChunkId> = HashSet::new();
    for (name, ids) in &cache.packs {
        if ids.iter().all(|id| live.contains(id)) {
            continue;
        }
        let mut kept = Vec::new();
        let mut all_readable = true;
        for id in ids.iter().filter(|id| live.contains(id)) {
            if moved.contains(id) {
                continue;
            }
            match store.read_sealed(id) {
                Ok(c) => kept.push(c),
                Err(_) => {
                    all_readable = false;
                    break;
                }
            }
        }
        if !all_readable {
            continue;
        }
        report.pruned_chunks += ids.iter().filter(|id| !live.contains(id)).count();
        for c in kept {
            moved.insert(c.id);
            batch.add(c);
        }
        doomed.push(name.clone());
    }
    if doomed.is_empty() {
        return Ok(false);
    }
    while !batch.chunks.is_empty() {
        let mut part = Batch::default();
        while part.bytes < PACK_PAYLOAD {
            match batch.chunks.pop() {
                Some(c) => part.add(c),
                None => break,
            }
        }
        send_pack(
            bucket,
            key,
            folder_id,
            part.chunks,
            cache,
            report,
            state_dir,
        )
        .await?;
    }
    for name in doomed {
        bucket
            .delete(&layout::packs(&bucket.prefix, folder_id).join(name.as_str()))
            .await?;
        cache.packs.remove(&name);
        report.packs_deleted += 1;
    }
    save_cache(state_dir, cache)?;
    Ok(true)
}

/// `plain` compressed, its length in front, zero-padded inside the seal
/// to a size class, sealed and bound to the snapshot's name.
fn seal_snapshot(key: &[u8; 32], folder_id: &str, name: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let packed = zstd::bulk::compress(plain, 3)
        .map_err(|e| Error::Spec(format!("compressing a snapshot: {e}")))?;
    let mut body = (packed.len() as u64).to_le_bytes().to_vec();
    body.extend_from_slice(&packed);
    body.resize(size_class(body.len() + blob::OVERHEAD) - blob::OVERHEAD, 0);
    Ok(blob::seal(key, &pack::aad(folder_id, "s", name), &body))
}

/// The index of a snapshot sealed by [`seal_snapshot`].
pub(crate) fn open_snapshot(
    key: &[u8; 32],
    folder_id: &str,
    name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>> {
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

/// Sends the node's sealed config vault (its envelope as stored) when the
/// bucket's copy differs.
pub async fn push_vault(bucket: &Bucket, envelope: &[u8]) -> Result<bool> {
    let path = layout::vault(&bucket.prefix);
    let same = bucket
        .get(&path)
        .await?
        .is_some_and(|b| b.as_ref() == envelope);
    if !same {
        bucket.put(&path, envelope.to_vec()).await?;
    }
    Ok(!same)
}
