//! An in-memory index of the live paths (kind and size), kept current from
//! the store's change log through a read-only store handle.
//!
//! Name searches, resource listings and directory trees read it instead of
//! decoding every record under the node's lock. Refreshing costs one indexed
//! query (`seq > last seen`), which returns nothing when nothing changed.
//! The change log is complete (every new state of a path gets a new
//! sequence, rows are never removed), so the index is exact, whatever
//! wrote the change (a scan, an agent, a peer).
//!
//! A refresh also tells which *files* appeared or disappeared: those become
//! `notifications/resources/list_changed` (see [`PathIndex::events`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sovryn_store::{EntryKind, Store};
use tokio::sync::broadcast;

/// Kind and size of a live path.
pub(crate) type PathInfo = (EntryKind, u64);

#[derive(Default)]
struct State {
    /// The newest change-log sequence applied.
    seq: u64,
    /// Live paths.
    paths: BTreeMap<String, PathInfo>,
    /// Whether the first refresh ran (it announces nothing).
    loaded: bool,
}

/// The path index of one node (shared by every session of its server).
pub(crate) struct PathIndex {
    /// A read-only store handle of its own (also serialises refreshes).
    reader: Mutex<Store>,
    state: RwLock<State>,
    /// Files created or deleted, per refresh.
    events: broadcast::Sender<Arc<Vec<String>>>,
    /// Whether the task following the `changes` channel runs.
    following: std::sync::atomic::AtomicBool,
}

impl PathIndex {
    pub(crate) fn new(reader: Store) -> Self {
        PathIndex {
            reader: Mutex::new(reader),
            state: RwLock::new(State::default()),
            events: broadcast::channel(256).0,
            following: Default::default(),
        }
    }

    /// Applies the change log since the last refresh (blocking: SQLite).
    pub(crate) fn refresh(&self) -> Result<(), String> {
        let store = self
            .reader
            .lock()
            .map_err(|_| "path index unavailable".to_string())?;
        let (seq, loaded) = {
            let st = self.state.read().map_err(|_| "path index poisoned")?;
            (st.seq, st.loaded)
        };
        let rows = store.path_changes_since(seq).map_err(|e| e.to_string())?;
        if rows.is_empty() && loaded {
            return Ok(());
        }
        let mut st = self.state.write().map_err(|_| "path index poisoned")?;
        let first_load = !st.loaded;
        st.loaded = true;
        let mut changed = Vec::new();
        for (seq, path, kind, deleted, size) in rows {
            st.seq = st.seq.max(seq);
            let was_file = st
                .paths
                .get(&path)
                .is_some_and(|(k, _)| *k == EntryKind::File);
            let is_file = !deleted && kind == EntryKind::File;
            if deleted {
                st.paths.remove(&path);
            } else {
                st.paths.insert(path.clone(), (kind, size));
            }
            if was_file != is_file && !first_load {
                changed.push(path);
            }
        }
        drop(st);
        if !changed.is_empty() {
            let _ = self.events.send(Arc::new(changed));
        }
        Ok(())
    }

    /// Refreshes, then runs `f` on the live paths.
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&BTreeMap<String, PathInfo>) -> R,
    ) -> Result<R, String> {
        self.refresh()?;
        let st = self.state.read().map_err(|_| "path index poisoned")?;
        Ok(f(&st.paths))
    }

    /// Files created or deleted from now on, in batches. The index follows
    /// `changes` (any message: refresh shortly after) from the first call.
    pub(crate) fn events(
        self: &Arc<Self>,
        changes: &broadcast::Sender<String>,
    ) -> broadcast::Receiver<Arc<Vec<String>>> {
        let rx = self.events.subscribe();
        if !self
            .following
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let me = self.clone();
            let mut changes = changes.subscribe();
            tokio::spawn(async move {
                // Load first, so later refreshes know what was there before.
                let first = me.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || first.refresh()).await {
                    tracing::warn!("path index: {e}");
                }
                loop {
                    match changes.recv().await {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    // Let a burst of changes land, then refresh once.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while changes.try_recv().is_ok() {}
                    let me2 = me.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me2.refresh()).await {
                        tracing::warn!("path index: {e}");
                    }
                }
            });
        }
        rx
    }
}

/// Live paths of `paths` at or under `prefix` (`""`: all), in path order.
pub(crate) fn under<'a>(
    paths: &'a BTreeMap<String, PathInfo>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a PathInfo)> + 'a {
    let prefix = prefix.trim_end_matches('/');
    let (own, below): (Option<(&String, &PathInfo)>, _) = if prefix.is_empty() {
        (None, paths.range::<str, _>(..))
    } else {
        // `a` itself, then `a/` .. `a0` ('0' follows '/'): exactly the paths below.
        let own = paths.get_key_value(prefix);
        let lo = format!("{prefix}/");
        let hi = format!("{prefix}0");
        (
            own,
            paths.range::<str, _>((
                std::ops::Bound::Included(lo.as_str()),
                std::ops::Bound::Excluded(hi.as_str()),
            )),
        )
    };
    own.into_iter().chain(below)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_a_prefix() {
        let mut m = BTreeMap::new();
        for p in ["a", "a.b", "a/x", "a/y/z", "a0", "b", "ab"] {
            m.insert(p.to_string(), (EntryKind::File, 1));
        }
        let got: Vec<&str> = under(&m, "a").map(|(p, _)| p.as_str()).collect();
        assert_eq!(got, ["a", "a/x", "a/y/z"]);
        assert_eq!(under(&m, "").count(), 7);
        assert_eq!(under(&m, "a/").count(), 3);
        assert_eq!(under(&m, "zz").count(), 0);
    }
}
