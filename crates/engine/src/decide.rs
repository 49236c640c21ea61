//! The sync decision for one path: what a node does with a peer's state
//! given its own. Pure (no disk, no store), so that the same function
//! drives the puller ([`crate::sync`]) and the deterministic simulation
//! that explores many interleavings of messages between nodes
//! (`crates/engine/tests/simulation.rs`).

use sovryn_store::{Causality, Entry, EntryKind, VersionVector};

/// What to do with a peer's state of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing: this node's state is as new, or newer.
    Ignore,
    /// Record this tombstone; nothing on disk to remove.
    Tombstone(Entry),
    /// Write this state to disk and record it.
    Place(Entry),
    /// Record this state; what is on disk stays as it is.
    Record(Entry),
    /// A type clash or a removal of a directory that still holds entries:
    /// the directory keeps the name. A live remote file or link is kept as
    /// a conflict copy (`copy_remote`); the directory is recorded with both
    /// vectors plus one local edit.
    KeepDir {
        /// Keep the remote state as a conflict copy first.
        copy_remote: bool,
    },
    /// A type clash the remote directory wins: the local file or link is
    /// kept as a conflict copy, then this state is written.
    CopyLocalThenPlace(Entry),
    /// Two different live states of the same kind, concurrent: try a
    /// content merge (written in order `first`, `second`, carrying `vv`);
    /// when it is not clean, the newer write (`remote_wins`) keeps the name
    /// and the other, unless a directory, becomes a conflict copy. The
    /// winner carries `vv`.
    Resolve {
        /// The remote state is the newer write.
        remote_wins: bool,
        /// Both vectors plus one local edit.
        vv: VersionVector,
    },
}

/// How two concurrent states are ordered: the later write wins, ties by
/// author, then content. The same on every node.
pub fn newer(a: &Entry, b: &Entry) -> bool {
    (a.time_ns, &a.author, a.content_hash()) > (b.time_ns, &b.author, b.content_hash())
}

fn live_dir(e: &Entry) -> bool {
    e.kind == EntryKind::Dir && !e.deleted
}

fn live_other(e: &Entry) -> bool {
    e.kind != EntryKind::Dir && !e.deleted
}

/// Who decides: this node's version-vector id and the floor of its next
/// counter (its clock, see [`VersionVector::advance`]).
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// The node's version-vector id.
    pub id: &'a str,
    /// Milliseconds since the epoch (or any clock that only goes forward).
    pub now_ms: u64,
}

/// What to do with `remote` at a path whose state here is `local`.
/// `dir_has_entries` tells whether the local directory at the path still
/// holds anything (asked only when it matters).
pub fn decide(
    local: Option<&Entry>,
    remote: &Entry,
    me: Me<'_>,
    dir_has_entries: &mut dyn FnMut() -> bool,
) -> Decision {
    let Some(l) = local else {
        return if remote.deleted {
            // A tombstone for something never seen here: recorded so the
            // histories agree.
            Decision::Tombstone(remote.clone())
        } else {
            Decision::Place(remote.clone())
        };
    };
    match remote.vv.compare(&l.vv) {
        Causality::Equal if l.same_content(remote) || (l.deleted && remote.deleted) => {
            Decision::Ignore
        }
        // The same vector for other content: a node restored from an old
        // copy reused its counters. Resolved like concurrent edits.
        Causality::Equal => resolve(l, remote, me, dir_has_entries),
        Causality::DominatedBy => Decision::Ignore,
        Causality::Dominates => {
            let removes_dir = remote.deleted || remote.kind != EntryKind::Dir;
            if live_dir(l) && removes_dir && dir_has_entries() {
                Decision::KeepDir {
                    copy_remote: !remote.deleted,
                }
            } else if l.deleted && remote.deleted {
                Decision::Tombstone(remote.clone())
            } else {
                Decision::Place(remote.clone())
            }
        }
        Causality::Concurrent => resolve(l, remote, me, dir_has_entries),
    }
}

fn resolve(
    l: &Entry,
    remote: &Entry,
    me: Me<'_>,
    dir_has_entries: &mut dyn FnMut() -> bool,
) -> Decision {
    let mut merged = l.vv.clone();
    merged.merge(&remote.vv);
    // Same outcome on both sides: merge the vectors, nothing to write.
    if (l.deleted && remote.deleted) || (!l.deleted && !remote.deleted && l.same_content(remote)) {
        let mut entry = if newer(remote, l) {
            remote.clone()
        } else {
            l.clone()
        };
        entry.vv = merged;
        return Decision::Record(entry);
    }
    // Type clashes: the directory keeps the name on every node.
    if live_dir(l) && live_other(remote) {
        return Decision::KeepDir { copy_remote: true };
    }
    if live_other(l) && live_dir(remote) {
        let mut entry = remote.clone();
        entry.vv = merged;
        entry.vv.advance(me.id, me.now_ms);
        return Decision::CopyLocalThenPlace(entry);
    }
    if live_dir(l) && remote.deleted && dir_has_entries() {
        return Decision::KeepDir { copy_remote: false };
    }
    merged.advance(me.id, me.now_ms);
    if remote.deleted {
        // Delete against edit: the edit stays.
        let mut entry = l.clone();
        entry.vv = merged;
        return Decision::Record(entry);
    }
    if l.deleted {
        let mut entry = remote.clone();
        entry.vv = merged;
        return Decision::Place(entry);
    }
    Decision::Resolve {
        remote_wins: newer(remote, l),
        vv: merged,
    }
}

/// A peer's deletion of a path that cannot exist here (an ancestor is a
/// file or a symlink): nothing to remove; the tombstone to record so the
/// histories agree, or `None` when this node's state is as new or newer.
pub fn tombstone_under_file(local: Option<&Entry>, remote: &Entry) -> Option<Entry> {
    if local.is_some_and(|l| {
        matches!(
            remote.vv.compare(&l.vv),
            Causality::Equal | Causality::DominatedBy
        )
    }) {
        return None;
    }
    let mut entry = remote.clone();
    if let Some(l) = local {
        entry.vv.merge(&l.vv);
    }
    Some(entry)
}

/// The directory that replaces `local` (a file, a link, a tombstone or a
/// directory) in a type clash: `(prev, base)` for the node's next local
/// state, where `prev` carries both vectors (so one local edit on top of
/// it dominates both) and `base` is the directory (mode 0755 when new).
pub fn superseding_dir(local: &Entry, remote: Option<&Entry>) -> (Entry, Entry) {
    let mut base = local.clone();
    if base.kind != EntryKind::Dir || base.deleted {
        base.mode = 0o755;
    }
    base.kind = EntryKind::Dir;
    base.deleted = false;
    base.chunks.clear();
    base.size = 0;
    base.target = None;
    base.message = None;
    let mut prev = local.clone();
    if let Some(r) = remote {
        prev.vv.merge(&r.vv);
    }
    (prev, base)
}

/// What a candidate conflict-copy name holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSlot {
    /// Nothing (or only a tombstone, and nothing on disk): usable.
    Free,
    /// A live copy with the loser's very content: nothing to do.
    SameCopy,
    /// Something else: try the next name.
    Taken,
}

/// The name of the conflict copy of `loser` at `rel`: the first of
/// `conflict_name_n(rel, author, time, 0, 1, …)` that `slot` calls free,
/// the same on every node; `None` when one already holds that content.
pub fn conflict_copy_name<E>(
    rel: &str,
    loser: &Entry,
    mut slot: impl FnMut(&str) -> Result<NameSlot, E>,
) -> Result<Option<String>, E> {
    for n in 0.. {
        let name = crate::sync::conflict_name_n(rel, &loser.author, loser.time_ns, n);
        match slot(&name)? {
            NameSlot::Free => return Ok(Some(name)),
            NameSlot::SameCopy => return Ok(None),
            NameSlot::Taken => {}
        }
    }
    Ok(None)
}
