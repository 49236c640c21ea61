//! A member catching up from a remote (`sovryn_remote::pull`): the states
//! other members' snapshots carry, fetched from a backup node or a bucket
//! while some member is offline, decided like a peer's (version
//! vectors; conflicts kept as copies) and written out. Chunks come from
//! the remote's packs, each checked under the folder key; a pack that fails
//! is refused, logged, and what it held is looked for in the other packs.

use std::collections::HashSet;
use std::sync::Arc;

use sovryn_remote::{pull, Bucket};
use sovryn_store::ChunkId;

use crate::Daemon;

/// What one round took from a remote.
#[derive(Debug, Default)]
pub(crate) struct Caught {
    /// Snapshots whose states were taken.
    pub snapshots: usize,
    /// Paths written or changed here.
    pub changed: usize,
    /// Chunks fetched.
    pub chunks: usize,
}

/// Whether a remote may hold what no session brings: some configured
/// member is not connected (or none is configured). With every member
/// connected, the sessions carry what a remote could, and sooner.
pub(crate) fn someone_away(d: &Daemon) -> bool {
    let peers = d.net.peer_status();
    peers.is_empty() || peers.iter().any(|p| p.connected == 0)
}

/// Takes the states of the other members' snapshots in `bucket` that this
/// node has not taken yet (`state_dir` keeps which).
pub(crate) async fn take_foreign_states(
    d: &Arc<Daemon>,
    spec: &sovryn_remote::RemoteSpec,
    bucket: &Bucket,
    state_dir: &std::path::Path,
) -> anyhow::Result<Caught> {
    // The writer's codec: its clones see the seal epochs a snapshot brings.
    let (codec, folder_id) = d
        .shared
        .with_node(|n| Ok((n.store.codec().clone(), n.store.folder_id().to_owned())))
        .await?;
    // First the device list a backup node relays: a revocation made while
    // this node was away is in force before any seal epoch it started is
    // taken from a snapshot.
    if let Some(from) = spec.peer().and_then(|(id, _)| id.parse().ok()) {
        if let Some(body) = bucket.device_list(&folder_id).await? {
            let ops: Vec<sovryn_engine::devices::DeviceOp> = serde_json::from_slice(&body)?;
            anyhow::ensure!(
                ops.len() <= 2 * sovryn_engine::devices::MAX_OPS,
                "a device list of {} operations",
                ops.len()
            );
            d.net.merge_devices(&from, ops).await?;
        }
    }
    let mut caught = Caught::default();
    for snap in pull::foreign_snapshots(bucket, &codec, &folder_id, state_dir).await? {
        let index = snap.index.clone();
        let (useful, missing) = d
            .shared
            .with_node_bulk(move |n| {
                let (states, epochs) = n.store.states_in_snapshot(&index)?;
                n.store.add_epochs(&epochs)?;
                let useful = n.useful_states(states.into_iter().map(|r| (r.path, r.entry)))?;
                let missing = n.missing_chunks(useful.iter().map(|(_, e)| e))?;
                Ok((useful, missing))
            })
            .await?;
        let mut wanted: HashSet<ChunkId> = missing.into_iter().collect();
        if !wanted.is_empty() {
            for pack in pull::packs_holding(bucket, &codec, &folder_id, state_dir, &wanted).await? {
                match pull::read_wanted(bucket, &pack, &codec, &folder_id, &wanted).await {
                    Ok(chunks) => {
                        for c in &chunks {
                            wanted.remove(&c.id);
                        }
                        caught.chunks += d
                            .shared
                            .with_node_bulk(move |n| Ok(n.store.put_sealed(chunks)?))
                            .await?;
                    }
                    Err(e) => tracing::warn!(
                        "{}: {e}; refused, its chunks are looked for elsewhere",
                        bucket.url()
                    ),
                }
                if wanted.is_empty() {
                    break;
                }
            }
        }
        let complete = wanted.is_empty();
        let (seq, changed) = d
            .shared
            .with_node_bulk(move |n| {
                // States whose chunks could not be had wait for the next round.
                let ready: Vec<_> = useful
                    .into_iter()
                    .filter(|(_, e)| e.chunks.iter().all(|c| !wanted.contains(c)))
                    .collect();
                let report = n.apply_remote(&ready)?;
                Ok((n.store.sequence()?, report.changed))
            })
            .await?;
        caught.changed += changed.len();
        d.shared.publish(seq, changed);
        if complete {
            pull::taken(state_dir, &snap.name)?;
            caught.snapshots += 1;
        } else {
            tracing::warn!(
                "{}: snapshot {}: some chunks are not to be had intact; tried again next round",
                bucket.url(),
                snap.name
            );
        }
    }
    Ok(caught)
}
