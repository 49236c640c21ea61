//! Where a path stands with each peer: has the peer got this node's current
//! state of it, or does it hold a newer or diverging one?
//!
//! Two facts feed it, both kept in the store by the sync service: the
//! version vector each peer last announced for the path
//! ([`Store::peer_seen`]) and how far each peer has acknowledged this
//! node's change log (the `peer.<id>.acked` metadata, see [`acked_key`]).

use serde::Serialize;
use sovryn_store::{Causality, Store};

use crate::Result;

/// How a path compares between this node and one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathSyncState {
    /// The peer has this node's current state (or announced the same one).
    InSync,
    /// This node's current state has not reached the peer yet.
    Pending,
    /// The peer announced a newer state; this node is pulling it.
    Incoming,
    /// Both sides changed it concurrently; the next exchange merges or
    /// makes a conflict copy.
    Diverged,
    /// The peer has never told this node about the path and has not
    /// acknowledged it.
    Unknown,
}

/// One peer's view of a path.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPathState {
    /// The peer's endpoint id.
    pub peer: String,
    /// Where the path stands with it.
    pub state: PathSyncState,
}

/// The metadata key under which the sequence of this node's change log that
/// `peer` has acknowledged applying is kept.
pub fn acked_key(peer: &str) -> String {
    format!("peer.{peer}.acked")
}

/// Where `path` stands with each of `peers` (endpoint ids).
pub fn path_states(store: &Store, path: &str, peers: &[String]) -> Result<Vec<PeerPathState>> {
    let local = store.file(path)?;
    let mut out = Vec::with_capacity(peers.len());
    for peer in peers {
        let seen = store.peer_seen(peer, path)?;
        let acked: u64 = store
            .meta(&acked_key(peer))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let state = match (&local, seen) {
            (None, None) => PathSyncState::Unknown,
            (None, Some(_)) => PathSyncState::Incoming,
            (Some(l), seen) => {
                let delivered = l.seq <= acked;
                match seen.map(|vv| vv.compare(&l.entry.vv)) {
                    Some(Causality::Equal) => PathSyncState::InSync,
                    Some(Causality::Dominates) => PathSyncState::Incoming,
                    Some(Causality::Concurrent) if !delivered => PathSyncState::Diverged,
                    _ if delivered => PathSyncState::InSync,
                    Some(_) => PathSyncState::Pending,
                    None if acked > 0 => PathSyncState::Pending,
                    None => PathSyncState::Unknown,
                }
            }
        };
        out.push(PeerPathState {
            peer: peer.clone(),
            state,
        });
    }
    Ok(out)
}
