//! Taking other members' states from a bucket, so a member that was away
//! catches up from a backup node or a bucket while every other member is
//! offline. Each member's pushes leave its index snapshot there; one this
//! node neither sent nor took yet is fetched, opened under the folder key
//! (one that does not open is refused, logged and not fetched again), and
//! its states go through the same version-vector decisions as a peer's.
//! A replayed older snapshot brings only states this node has or has
//! superseded, which those decisions ignore.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sovryn_store::{ChunkCodec, ChunkId, SealedChunk};

use crate::cache::Cache;
use crate::layout;
use crate::objects::{Bucket, Listed};
use crate::restore::read_pack;
use crate::{snapshot, Error, ObjectPath, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Other nodes' snapshots this node took its states from, or refused
/// (`taken.json` beside the push's cache, which only a push writes).
#[derive(Default, Serialize, Deserialize)]
struct Taken {
    snapshots: BTreeSet<String>,
}

impl Taken {
    fn path(dir: &Path) -> PathBuf {
        dir.join("taken.json")
    }

    fn load(dir: &Path) -> Taken {
        std::fs::read(Taken::path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Spec(e.to_string()))?;
        Ok(sovryn_store::keys::write_secret_file(
            &Taken::path(dir),
            &bytes,
        )?)
    }
}

/// Snapshots taken at most per round (the rest wait for the next).
const MAX_PER_ROUND: usize = 4;

/// Another member's index snapshot, opened into an index file beside the
/// remote's state (removed when dropped).
pub struct ForeignSnapshot {
    /// Its object name (what [`taken`] remembers).
    pub name: String,
    /// The opened index (an SQLite file).
    pub index: PathBuf,
}

impl Drop for ForeignSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.index);
    }
}

/// The folder's snapshots in `bucket` that this node neither sent nor took
/// yet, newest first (a few per round), each opened under `codec`'s folder
/// key. One that does not open is refused: logged, and remembered so it is
/// not fetched again.
pub async fn foreign_snapshots(
    bucket: &Bucket,
    codec: &ChunkCodec,
    folder_id: &str,
    state_dir: &Path,
) -> Result<Vec<ForeignSnapshot>> {
    let key = codec.keys().remote;
    std::fs::create_dir_all(state_dir).map_err(|e| Error::Io {
        path: state_dir.to_owned(),
        source: e,
    })?;
    let sent = Cache::load(state_dir).sent_snapshots;
    let mut taken = Taken::load(state_dir);
    let mut listed: Vec<Listed> = bucket
        .list(&layout::snapshots(&bucket.prefix, folder_id))
        .await?
        .into_iter()
        .filter(|m| {
            m.location
                .filename()
                .is_some_and(|n| !sent.contains(n) && !taken.snapshots.contains(n))
        })
        .collect();
    listed.sort_by_key(|m| std::cmp::Reverse(layout::snapshot_counter(&m.location)));
    let mut out = Vec::new();
    let mut refused = false;
    for meta in listed.into_iter().take(MAX_PER_ROUND) {
        let name = meta.location.filename().unwrap_or_default().to_owned();
        let Some(sealed) = bucket.get(&meta.location).await? else {
            continue;
        };
        match snapshot::open(&key, folder_id, &name, &sealed) {
            Ok(index) => {
                let path = state_dir.join(format!(
                    "taking-{}.db",
                    hex::encode(rand::random::<[u8; 8]>())
                ));
                sovryn_store::keys::write_secret_file(&path, &index)?;
                out.push(ForeignSnapshot { name, index: path });
            }
            Err(e) => {
                tracing::warn!("{}: {e}; refused", bucket.url());
                taken.snapshots.insert(name);
                refused = true;
            }
        }
    }
    if refused {
        taken.save(state_dir)?;
    }
    Ok(out)
}

/// Remembers that this node took snapshot `name`'s states.
pub fn taken(state_dir: &Path, name: &str) -> Result<()> {
    let mut taken = Taken::load(state_dir);
    if taken.snapshots.insert(name.to_owned()) {
        taken.save(state_dir)?;
    }
    Ok(())
}

/// The folder's packs in `bucket` that hold any of `wanted`.
pub async fn packs_holding(
    bucket: &Bucket,
    codec: &ChunkCodec,
    folder_id: &str,
    state_dir: &Path,
    wanted: &HashSet<ChunkId>,
) -> Result<Vec<ObjectPath>> {
    // Read, not written: the push's cache is the push's to keep.
    let mut cache = Cache::load(state_dir);
    cache
        .refresh(bucket, &codec.keys().remote, folder_id)
        .await?;
    let dir = layout::packs(&bucket.prefix, folder_id);
    Ok(cache
        .packs
        .iter()
        .filter(|(_, ids)| ids.iter().any(|id| wanted.contains(id)))
        .map(|(name, _)| dir.clone().join(name.as_str()))
        .collect())
}

/// The chunks of `wanted` that pack `pack` holds, every chunk of the pack
/// checked under `codec` first (a pack with one bad chunk is refused
/// whole: an error).
pub async fn read_wanted(
    bucket: &Bucket,
    pack: &ObjectPath,
    codec: &ChunkCodec,
    folder_id: &str,
    wanted: &HashSet<ChunkId>,
) -> Result<Vec<SealedChunk>> {
    let (chunks, _) = read_pack(bucket, pack, &codec.keys().remote, folder_id, codec).await?;
    Ok(chunks
        .into_iter()
        .filter(|c| wanted.contains(&c.id))
        .collect())
}
