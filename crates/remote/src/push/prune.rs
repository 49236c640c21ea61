//! Pruning after `gc`: what no snapshot in the bucket names any more
//! leaves it, by rewriting packs, never deleting a chunk a live version
//! needs.
//!
//! A node alone on a prefix deletes at once: its own snapshots are the only
//! ones, and it names every chunk they need. Where other nodes push too
//! (members sharing a backup node), a pack is deleted in two steps, since
//! another node may be between reading which chunks the bucket has and
//! sending a snapshot that names them:
//!
//! 1. its live chunks (those any snapshot there names) are copied into new
//!    packs, then a mark `d/PACK` (the time, 8 bytes) says it is due to go;
//!    a pusher counts no chunk of a marked pack as there, and looks at the
//!    marks again just before it sends its snapshot;
//! 2. at least the grace period later (15 minutes; `SOVRYN_PRUNE_GRACE_SECS`),
//!    any pusher deletes the pack if no snapshot there then names a chunk
//!    that only it holds; otherwise the mark is withdrawn.
//!
//! So a snapshot sent before a mark is seen by the second step, and one
//! sent after it does not count on the marked pack.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use sovryn_store::{ChunkId, SealedChunk};

use super::{Push, SNAPSHOTS_KEPT};
use crate::layout;
use crate::objects::Listed;
use crate::restore::read_pack;
use crate::snapshot::{self, Snapshot};
use crate::Result;

/// Marked packs: name → when it was marked (ms since the epoch).
pub(crate) type Marks = BTreeMap<String, u64>;

/// How long a marked pack stays before it may go.
fn grace() -> Duration {
    let secs = std::env::var("SOVRYN_PRUNE_GRACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15 * 60);
    Duration::from_secs(secs)
}

fn now_ms() -> u64 {
    (sovryn_store::now_ns() / 1_000_000).max(0) as u64
}

impl Push<'_> {
    /// The marks in the bucket (a mark whose time does not read counts as
    /// made now: it waits the longest).
    pub(super) async fn marks(&self) -> Result<Marks> {
        let dir = layout::marks(&self.bucket.prefix, &self.folder_id);
        let mut out = Marks::new();
        for m in self.bucket.list(&dir).await? {
            let Some(name) = m.location.filename() else {
                continue;
            };
            let at = self
                .bucket
                .get(&m.location)
                .await?
                .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                .map_or_else(now_ms, u64::from_le_bytes);
            out.insert(name.to_owned(), at);
        }
        Ok(out)
    }

    /// After a push: removes from the bucket what is outside `live` (what
    /// the store holds and the snapshot just sent names) and every other
    /// node's snapshot there, then this node's older snapshots.
    pub(super) async fn prune(&mut self, mut live: HashSet<ChunkId>, marks: &Marks) -> Result<()> {
        let listed = self
            .bucket
            .list(&layout::snapshots(&self.bucket.prefix, &self.folder_id))
            .await?;
        let sent = &self.cache.sent_snapshots;
        let (ours, others): (Vec<Listed>, Vec<Listed>) = listed
            .into_iter()
            .partition(|m| m.location.filename().is_some_and(|n| sent.contains(n)));
        let shared = !others.is_empty() || !marks.is_empty();
        let mut readable = true;
        for m in &others {
            match self.chunks_named_by(m).await {
                Ok(ids) => live.extend(ids),
                Err(e) => {
                    tracing::warn!(
                        "{}: another node's snapshot: {e}; nothing is pruned",
                        self.bucket.url()
                    );
                    readable = false;
                    break;
                }
            }
        }
        let pruned = if !readable {
            self.report.pruning_skipped = true;
            false
        } else if shared {
            self.prune_marked(&live, marks).await?
        } else {
            self.prune_now(&live).await?
        };
        // Where other nodes push, an older snapshot of this node's would
        // keep alive for them what its `gc` let go: only the newest stays.
        self.drop_older_snapshots(ours, pruned || shared).await
    }

    /// The chunks another node's snapshot names (it must open under the
    /// folder key).
    async fn chunks_named_by(&self, m: &Listed) -> Result<HashSet<ChunkId>> {
        let name = m.location.filename().unwrap_or_default();
        let Some(sealed) = self.bucket.get(&m.location).await? else {
            // Gone meanwhile (its node replaced it): the newer one is read
            // next time; this round names nothing more.
            return Ok(HashSet::new());
        };
        let index = snapshot::open(&self.key, &self.folder_id, name, &sealed)?;
        Snapshot::chunks_named(&index, self.state_dir)
    }

    /// This node's older snapshots go once the newest is there (all but the
    /// newest when `only_newest`, else all but [`SNAPSHOTS_KEPT`]).
    async fn drop_older_snapshots(
        &mut self,
        mut ours: Vec<Listed>,
        only_newest: bool,
    ) -> Result<()> {
        ours.sort_by_key(|m| layout::snapshot_counter(&m.location));
        let keep = if only_newest { 1 } else { SNAPSHOTS_KEPT };
        let drop_n = ours.len().saturating_sub(keep);
        for m in ours.into_iter().take(drop_n) {
            self.bucket.delete(&m.location).await?;
            if let Some(n) = m.location.filename() {
                self.cache.sent_snapshots.remove(n);
            }
        }
        self.cache.save(self.state_dir)
    }

    /// Alone on the prefix: a pack holding only chunks outside `live` is
    /// deleted, one holding some live ones too is rewritten (its live
    /// chunks sent in new packs first). Whether any chunk went.
    async fn prune_now(&mut self, live: &HashSet<ChunkId>) -> Result<bool> {
        let (moving, doomed) = self.plan(live, &Marks::new()).await?;
        if doomed.is_empty() {
            return Ok(false);
        }
        for c in moving {
            self.queue(c).await?;
        }
        self.flush().await?;
        for name in doomed {
            self.delete_pack(&name).await?;
        }
        self.cache.save(self.state_dir)?;
        Ok(true)
    }

    /// Shared prefix: packs holding chunks outside `live` are rewritten and
    /// marked; marked packs whose grace passed go, unless a snapshot names
    /// a chunk only they hold. Whether any pack was marked or deleted.
    async fn prune_marked(&mut self, live: &HashSet<ChunkId>, marks: &Marks) -> Result<bool> {
        let (moving, newly) = self.plan(live, marks).await?;
        for c in moving {
            self.queue(c).await?;
        }
        self.flush().await?;
        let now = now_ms();
        let mut all = marks.clone();
        for name in &newly {
            let path = layout::marks(&self.bucket.prefix, &self.folder_id).join(name.as_str());
            self.bucket.put(&path, now.to_le_bytes().to_vec()).await?;
            all.insert(name.clone(), now);
        }
        let held: HashSet<ChunkId> = self
            .cache
            .packs
            .iter()
            .filter(|(n, _)| !all.contains_key(*n))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let grace = grace().as_millis() as u64;
        let mut deleted = false;
        let mut due: Option<u64> = None;
        for (name, at) in all {
            if at.saturating_add(grace) > now {
                let at = at.saturating_add(grace);
                due = Some(due.map_or(at, |d| d.min(at)));
                continue;
            }
            let needed =
                self.cache.packs.get(&name).is_some_and(|ids| {
                    ids.iter().any(|id| live.contains(id) && !held.contains(id))
                });
            if needed {
                tracing::info!(
                    "{}: pack {name} holds a chunk a newer snapshot names; it stays",
                    self.bucket.url()
                );
            } else if self.cache.packs.contains_key(&name) {
                self.delete_pack(&name).await?;
                deleted = true;
            }
            let mark = layout::marks(&self.bucket.prefix, &self.folder_id).join(name.as_str());
            self.bucket.delete(&mark).await?;
        }
        self.cache.marks_due_ms = due;
        self.cache.save(self.state_dir)?;
        Ok(deleted || !newly.is_empty())
    }

    /// Which unmarked packs hold chunks outside `live`, and the live chunks
    /// of theirs that no other kept pack holds (from the store, or else
    /// from the pack itself, checked), to be sent in new packs first.
    async fn plan(
        &mut self,
        live: &HashSet<ChunkId>,
        marks: &Marks,
    ) -> Result<(Vec<SealedChunk>, Vec<String>)> {
        let mut copies: HashMap<ChunkId, usize> = HashMap::new();
        for (name, ids) in &self.cache.packs {
            if !marks.contains_key(name) {
                for id in ids {
                    *copies.entry(*id).or_default() += 1;
                }
            }
        }
        let going: Vec<(String, Vec<ChunkId>)> = self
            .cache
            .packs
            .iter()
            .filter(|(n, ids)| !marks.contains_key(*n) && ids.iter().any(|id| !live.contains(id)))
            .map(|(n, ids)| (n.clone(), ids.clone()))
            .collect();
        let mut moving = Vec::new();
        let mut doomed = Vec::new();
        for (name, ids) in going {
            let mut needed = Vec::new();
            for id in ids.iter().filter(|id| live.contains(id)) {
                let n = copies.entry(*id).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    needed.push(*id);
                    // Sent once, and then held by the new pack.
                    *n = 1;
                }
            }
            let mut from_pack = Vec::new();
            for id in needed {
                match self.store.read_sealed(&id) {
                    Ok(c) => moving.push(c),
                    Err(_) => from_pack.push(id),
                }
            }
            if !from_pack.is_empty() {
                let path = layout::packs(&self.bucket.prefix, &self.folder_id).join(name.as_str());
                let wanted: HashSet<ChunkId> = from_pack.into_iter().collect();
                match read_pack(
                    self.bucket,
                    &path,
                    &self.key,
                    &self.folder_id,
                    self.store.codec(),
                )
                .await
                {
                    Ok((chunks, _)) => {
                        moving.extend(chunks.into_iter().filter(|c| wanted.contains(&c.id)))
                    }
                    Err(e) => {
                        // Its live chunks cannot be copied: it stays.
                        tracing::warn!("{}: {e}; the pack stays", self.bucket.url());
                        continue;
                    }
                }
            }
            self.report.pruned_chunks += ids.iter().filter(|id| !live.contains(id)).count();
            doomed.push(name);
        }
        Ok((moving, doomed))
    }

    async fn delete_pack(&mut self, name: &str) -> Result<()> {
        let path = layout::packs(&self.bucket.prefix, &self.folder_id).join(name);
        self.bucket.delete(&path).await?;
        self.cache.packs.remove(name);
        self.report.packs_deleted += 1;
        Ok(())
    }
}
