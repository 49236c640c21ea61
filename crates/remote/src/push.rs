//! Sending a folder to a bucket: packs of the chunks it lacks, then an
//! index snapshot naming only chunks already there. Resumable: what the
//! bucket holds is read from its pack indexes (cached locally), so a push
//! cut off anywhere sends again at most the pack it was writing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sovryn_store::{ChunkId, IndexMarker, SealedChunk, Store};

use crate::cache::Cache;
use crate::layout;
use crate::objects::{Bucket, Listed};
use crate::pack::{self, PACK_PAYLOAD};
use crate::snapshot::{newest, Snapshot};

mod prune;
use crate::{Error, Result};
use prune::Marks;

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

/// What this node last saw of a bucket's copy of a folder (no request).
#[derive(Debug, Default)]
pub struct Known {
    /// Chunks in the bucket's packs.
    pub chunks: HashSet<ChunkId>,
    /// Packs.
    pub packs: usize,
    /// The change-log sequence of the newest snapshot this node sent.
    pub snapshot_seq: Option<u64>,
    /// Packs marked to go have waited their grace: a push now deletes them.
    pub prune_due: bool,
}

/// What this node last saw of a bucket's copy of a folder, from the state
/// a push keeps in `state_dir`.
pub fn known(state_dir: &Path) -> Known {
    let cache = Cache::load(state_dir);
    Known {
        chunks: cache.packs.values().flatten().copied().collect(),
        packs: cache.packs.len(),
        snapshot_seq: cache.snapshot_marker.map(|m| m.sequence),
        prune_due: cache
            .marks_due_ms
            .is_some_and(|t| t <= (sovryn_store::now_ns() / 1_000_000).max(0) as u64),
    }
}

/// Where a node keeps what it knows of remote `remote`'s copy of the
/// folder whose home is `folder_home`.
pub fn state_dir(folder_home: &Path, remote: &str) -> PathBuf {
    folder_home.join("remote-state").join(remote)
}

/// Sends folder `store` (a read-only handle will do) to `bucket`: its
/// signed device list (`device_ops`, JSON; a backup peer lets write whom
/// it names), the chunks the bucket lacks, in packs, then an index
/// snapshot when the index changed since the last one this node sent.
/// `state_dir` ([`state_dir`]) keeps what this node knows of the bucket.
pub async fn push_folder(
    bucket: &Bucket,
    store: &Store,
    state_dir: &Path,
    device_ops: Vec<u8>,
) -> Result<PushReport> {
    let started = Instant::now();
    bucket
        .share_device_list(store.folder_id(), device_ops)
        .await?;
    std::fs::create_dir_all(state_dir).map_err(|e| Error::Io {
        path: state_dir.to_owned(),
        source: e,
    })?;
    // One push of a folder to a remote at a time (the running node's and
    // `remotes sync`): each reads and writes what the other knows.
    let lock_path = state_dir.join("push.lock");
    let _lock = tokio::task::spawn_blocking(move || sovryn_store::lock_file(&lock_path))
        .await
        .map_err(|e| Error::Spec(format!("waiting for another push: {e}")))??;
    let mut push = Push {
        bucket,
        store,
        key: store.codec().keys().remote,
        folder_id: store.folder_id().to_owned(),
        state_dir,
        cache: Cache::load(state_dir),
        report: PushReport::default(),
        pace: Pace::new(bucket.max_bytes_per_sec),
        batch: Batch::default(),
    };
    push.cache
        .refresh(bucket, &push.key, &push.folder_id)
        .await?;
    // The snapshot is taken first: every chunk it names is in the store
    // now, so in the chunk list read next, and in the bucket before the
    // snapshot is.
    let marker = store.index_marker()?;
    let listed = bucket
        .list(&layout::snapshots(&bucket.prefix, &push.folder_id))
        .await?;
    push.notice_rollback(&listed).await?;
    let ours_is_newest = push.cache.newest_sent().map(|(n, _)| n)
        == newest(&listed).and_then(|m| m.location.filename());
    let snapshot = if push.cache.snapshot_marker == Some(marker) && ours_is_newest {
        None
    } else {
        Some(Snapshot::take(store, state_dir)?)
    };

    let marks = push.marks().await?;
    let local = store.chunk_list()?;
    push.report.chunks_present = push.send_missing(&local, &marks).await?;
    // A pack another node marked meanwhile: what this node needs of it is
    // sent again before a snapshot names it.
    let marks_now = push.marks().await?;
    if marks_now.keys().any(|k| !marks.contains_key(k)) {
        push.send_missing(&local, &marks_now).await?;
    }
    // Live: what the store holds, and what the snapshot sent names (a `gc`
    // may have run since it was taken).
    let mut live: HashSet<ChunkId> = local.into_iter().collect();
    if let Some(snap) = snapshot {
        live.extend(snap.chunks.iter().copied());
        push.send_snapshot(snap, marker, &listed).await?;
    }
    push.prune(live, &marks_now).await?;
    push.report.seconds = started.elapsed().as_secs_f64();
    Ok(push.report)
}

/// One push in progress: where to, what is known of the remote, what was
/// done, and the chunks queued for the next pack.
struct Push<'a> {
    bucket: &'a Bucket,
    store: &'a Store,
    key: [u8; 32],
    folder_id: String,
    state_dir: &'a Path,
    cache: Cache,
    report: PushReport,
    pace: Pace,
    batch: Batch,
}

impl Push<'_> {
    /// The newest snapshot this node sent is gone and nothing newer took
    /// its place: the remote was rolled back (or wiped). Said, and what it
    /// lacks is sent again.
    async fn notice_rollback(&mut self, listed: &[Listed]) -> Result<()> {
        let Some((ours, counter)) = self.cache.newest_sent() else {
            return Ok(());
        };
        let still_there = listed.iter().any(|m| m.location.filename() == Some(ours));
        let newest_there = newest(listed).and_then(|m| layout::snapshot_counter(&m.location));
        if still_there || newest_there >= Some(counter) {
            return Ok(());
        }
        tracing::warn!(
            "{}: snapshot {ours} that this node sent is gone and nothing newer is there: \
             the remote was rolled back or wiped; sending what it lacks again",
            self.bucket.url()
        );
        self.report.rolled_back = true;
        self.cache = Cache::default();
        self.cache
            .refresh(self.bucket, &self.key, &self.folder_id)
            .await
    }

    /// Queues a chunk; a pack's worth queued goes out.
    async fn queue(&mut self, chunk: SealedChunk) -> Result<()> {
        self.batch.add(chunk);
        if self.batch.bytes >= PACK_PAYLOAD {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is queued as one pack, recorded once the bucket has it,
    /// at the remote's rate.
    async fn flush(&mut self) -> Result<()> {
        let chunks = std::mem::take(&mut self.batch).chunks;
        if chunks.is_empty() {
            return Ok(());
        }
        let path = layout::new_pack(&self.bucket.prefix, &self.folder_id);
        let name = path.filename().unwrap_or_default().to_owned();
        let (bytes, entries) = pack::build(&self.key, &self.folder_id, &name, chunks)?;
        self.report.bytes += bytes.len() as u64;
        self.report.packs += 1;
        self.report.chunks += entries.len();
        self.bucket.put(&path, bytes).await?;
        let ids = entries.into_iter().map(|e| e.id).collect();
        self.cache.packs.insert(name, ids);
        self.cache.save(self.state_dir)?;
        self.pace.wait(self.report.bytes).await;
        Ok(())
    }

    /// Queues the chunks of `local` that no unmarked pack of the bucket
    /// holds; how many it holds.
    async fn send_missing(&mut self, local: &[ChunkId], marks: &Marks) -> Result<usize> {
        let present: HashSet<ChunkId> = self
            .cache
            .packs
            .iter()
            .filter(|(name, _)| !marks.contains_key(*name))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let mut there = 0;
        for id in local {
            if present.contains(id) {
                there += 1;
            } else {
                self.queue(self.store.read_sealed(id)?).await?;
            }
        }
        self.flush().await?;
        Ok(there)
    }

    /// Sends `snap` (taken at `marker`; `listed` are the snapshots there
    /// before, so its counter is above theirs).
    async fn send_snapshot(
        &mut self,
        snap: Snapshot,
        marker: IndexMarker,
        listed: &[Listed],
    ) -> Result<()> {
        let counter = listed
            .iter()
            .filter_map(|m| layout::snapshot_counter(&m.location))
            .max()
            .map_or(1, |c| c + 1);
        let path = layout::new_snapshot(&self.bucket.prefix, &self.folder_id, counter);
        let name = path.filename().unwrap_or_default().to_owned();
        let sealed = snap.seal(&self.key, &self.folder_id, &name)?;
        self.report.bytes += sealed.len() as u64;
        self.bucket.put(&path, sealed).await?;
        self.report.snapshot = Some(counter);
        self.cache.snapshot_marker = Some(marker);
        self.cache.sent_snapshots.insert(name);
        self.cache.save(self.state_dir)
    }
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
