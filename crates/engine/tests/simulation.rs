//! A deterministic simulation of the sync decisions, in the manner of
//! Dropbox's CanopyCheck: three nodes, their trees in memory, local edits
//! (files, directories, deletions, a path turned from a file into a
//! directory and back) and index messages between them, delivered in an
//! order a seed chooses. No disk, no processes, no network: many thousands
//! of interleavings per second, each driven by the same decision function
//! as the puller ([`sovryn_engine::decide`]).
//!
//! After every schedule the nodes exchange everything until quiet, and the
//! checks are: every node holds the same live tree with the same vectors
//! (convergence, and no state bouncing for ever between nodes); no live
//! path lies under a file (a tree the disk could hold); every write
//! survives in the tree unless a node knowingly replaced or deleted it.
//!
//! `SOVRYN_SIM_CASES` sets the number of schedules (default 100,000),
//! `SOVRYN_SIM_SEED` replays one.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use sovryn_engine::decide::{
    conflict_copy_name, decide, superseding_dir, tombstone_under_file, Decision, Me, NameSlot,
};
use sovryn_store::{ChunkId, Entry, EntryKind, VersionVector};

const POOL: &[&str] = &["a", "k", "k/i", "k/j", "d/x"];
const NODES: usize = 3;

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn content(token: u64) -> Vec<ChunkId> {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&token.to_be_bytes());
    vec![ChunkId(id)]
}

fn token_of(e: &Entry) -> Option<u64> {
    let c = e.chunks.first()?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&c.0[..8]);
    Some(u64::from_be_bytes(b))
}

fn live(e: &Entry) -> bool {
    !e.deleted
}

fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|i| parts[..i].join("/")).collect()
}

/// An index message: the sender's states, oldest first.
type Message = Vec<(String, Entry)>;
/// A copy of a node's home: its tree, change log and newest sequence.
type HomeCopy = (BTreeMap<String, Entry>, BTreeMap<String, u64>, u64);

struct Node {
    me: String,
    name: String,
    tree: BTreeMap<String, Entry>,
    seq_of: BTreeMap<String, u64>,
    seq: u64,
}

struct World {
    nodes: Vec<Node>,
    /// `sent[i][j]`: node i's log sent to j up to this sequence.
    sent: [[u64; NODES]; NODES],
    /// Index messages from i to j, in order.
    queues: Vec<Vec<VecDeque<Message>>>,
    clock: i64,
    next_token: u64,
    /// Tokens of writes a node knowingly replaced or deleted.
    superseded: HashSet<u64>,
    written: Vec<u64>,
    /// A copy of a node's home (tree and change log) taken earlier.
    snapshots: Vec<Option<HomeCopy>>,
}

impl World {
    fn new() -> Self {
        World {
            nodes: (0..NODES)
                .map(|i| Node {
                    me: format!("{i:016x}"),
                    name: format!("n{i}"),
                    tree: BTreeMap::new(),
                    seq_of: BTreeMap::new(),
                    seq: 0,
                })
                .collect(),
            sent: [[0; NODES]; NODES],
            queues: (0..NODES)
                .map(|_| (0..NODES).map(|_| VecDeque::new()).collect())
                .collect(),
            clock: 1_000,
            next_token: 1,
            superseded: HashSet::new(),
            written: Vec::new(),
            snapshots: vec![None; NODES],
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    /// Records `entry` at `path` on node `n` (a new change-log entry).
    fn record(&mut self, n: usize, path: &str, entry: Entry) {
        let node = &mut self.nodes[n];
        node.seq += 1;
        node.seq_of.insert(path.to_owned(), node.seq);
        node.tree.insert(path.to_owned(), entry);
    }

    /// A local state on node `n`: its previous vector plus one edit.
    fn local_entry(&mut self, n: usize, prev: Option<&Entry>, mut base: Entry) -> Entry {
        let now = self.tick();
        let mut vv = prev.map(|p| p.vv.clone()).unwrap_or_default();
        vv.advance(&self.nodes[n].me, now as u64);
        base.vv = vv;
        base.author = self.nodes[n].name.clone();
        base.time_ns = now;
        base
    }

    fn bare(kind: EntryKind) -> Entry {
        Entry {
            kind,
            deleted: false,
            size: 0,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            mtime_ns: 0,
            target: None,
            vv: VersionVector::new(),
            author: String::new(),
            actor: None,
            time_ns: 0,
            message: None,
            chunks: Vec::new(),
        }
    }

    fn live_at(&self, n: usize, path: &str) -> Option<&Entry> {
        self.nodes[n].tree.get(path).filter(|e| live(e))
    }

    fn has_live_below(&self, n: usize, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.nodes[n]
            .tree
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .any(|(_, e)| live(e))
    }

    // ---- local operations (what a user does on one node) ----

    fn write_file(&mut self, n: usize, path: &str) {
        if ancestors(path)
            .iter()
            .any(|a| self.live_at(n, a).is_some_and(|e| e.kind != EntryKind::Dir))
            || self
                .live_at(n, path)
                .is_some_and(|e| e.kind == EntryKind::Dir)
        {
            return;
        }
        for a in ancestors(path) {
            if self.live_at(n, &a).is_none() {
                let prev = self.nodes[n].tree.get(&a).cloned();
                let e = self.local_entry(n, prev.as_ref(), Self::bare(EntryKind::Dir));
                self.record(n, &a, e);
            }
        }
        let prev = self.nodes[n].tree.get(path).cloned();
        if let Some(t) = prev.as_ref().filter(|p| live(p)).and_then(token_of) {
            self.superseded.insert(t);
        }
        let token = self.next_token;
        self.next_token += 1;
        let mut base = Self::bare(EntryKind::File);
        base.chunks = content(token);
        base.size = 1;
        let e = self.local_entry(n, prev.as_ref(), base);
        self.record(n, path, e);
        self.written.push(token);
    }

    fn delete(&mut self, n: usize, path: &str) {
        let Some(_) = self.live_at(n, path) else {
            return;
        };
        // Deepest first, as `rm -r` and the scanner's tombstones.
        let prefix = format!("{path}/");
        let mut doomed: Vec<String> = self.nodes[n]
            .tree
            .iter()
            .filter(|(p, e)| live(e) && (*p == path || p.starts_with(&prefix)))
            .map(|(p, _)| p.clone())
            .collect();
        doomed.sort_by(|a, b| b.cmp(a));
        for p in doomed {
            let prev = self.nodes[n].tree.get(&p).cloned();
            let Some(prev) = prev else { continue };
            if let Some(t) = token_of(&prev) {
                self.superseded.insert(t);
            }
            let mut base = prev.clone();
            base.deleted = true;
            base.chunks.clear();
            base.size = 0;
            let e = self.local_entry(n, Some(&prev), base);
            self.record(n, &p, e);
        }
    }

    /// `k` changes type: a file becomes a directory with a file in it, a
    /// directory becomes a file.
    fn retype(&mut self, n: usize) {
        match self.live_at(n, "k").map(|e| e.kind) {
            Some(EntryKind::Dir) => {
                self.delete(n, "k");
                self.write_file(n, "k");
            }
            Some(_) => {
                self.delete(n, "k");
                self.write_file(n, "k/i");
            }
            None => self.write_file(n, "k/i"),
        }
    }

    fn snapshot(&mut self, n: usize) {
        let node = &self.nodes[n];
        self.snapshots[n] = Some((node.tree.clone(), node.seq_of.clone(), node.seq));
    }

    /// The node's home comes back from the snapshot; its folder (the live
    /// tree, what is on disk) stays. Its change log and counters go back:
    /// peers detect it (index epochs) and exchange everything again with
    /// it; the scanner then records what the disk holds, reusing counters.
    fn restore(&mut self, n: usize) {
        let Some((tree, seq_of, seq)) = self.snapshots[n].take() else {
            return;
        };
        let disk: BTreeMap<String, Entry> = self.nodes[n]
            .tree
            .iter()
            .filter(|(_, e)| live(e))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        let node = &mut self.nodes[n];
        node.tree = tree;
        node.seq_of = seq_of;
        // A restored log keeps its old length; the epoch check resets
        // positions either way.
        node.seq = node.seq.max(seq);
        for j in 0..NODES {
            self.sent[n][j] = 0;
            self.sent[j][n] = 0;
            self.queues[n][j].clear();
            self.queues[j][n].clear();
        }
        // The scan: what is on disk but recorded otherwise, then what is
        // recorded but gone from disk.
        for (p, d) in &disk {
            let rec = self.nodes[n].tree.get(p).cloned();
            if rec.as_ref().is_some_and(|r| live(r) && r.same_content(d)) {
                continue;
            }
            let mut base = d.clone();
            base.message = None;
            let e = self.local_entry(n, rec.as_ref(), base);
            self.record(n, p, e);
        }
        let gone: Vec<String> = self.nodes[n]
            .tree
            .iter()
            .filter(|(p, e)| live(e) && !disk.contains_key(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone.into_iter().rev() {
            let Some(prev) = self.nodes[n].tree.get(&p).cloned() else {
                continue;
            };
            let mut base = prev.clone();
            base.deleted = true;
            base.chunks.clear();
            let e = self.local_entry(n, Some(&prev), base);
            self.record(n, &p, e);
        }
    }

    // ---- the exchange ----

    fn send(&mut self, i: usize, j: usize) {
        let from = self.sent[i][j];
        let mut batch: Vec<(u64, String)> = self.nodes[i]
            .seq_of
            .iter()
            .filter(|(_, s)| **s > from)
            .map(|(p, s)| (*s, p.clone()))
            .collect();
        if batch.is_empty() {
            self.sent[i][j] = self.nodes[i].seq;
            return;
        }
        batch.sort();
        let records = batch
            .into_iter()
            .map(|(_, p)| {
                let e = self.nodes[i].tree[&p].clone();
                (p, e)
            })
            .collect();
        self.sent[i][j] = self.nodes[i].seq;
        self.queues[i][j].push_back(records);
    }

    fn deliver(&mut self, i: usize, j: usize) -> bool {
        let Some(batch) = self.queues[i][j].pop_front() else {
            return false;
        };
        self.apply(j, batch);
        true
    }

    /// `Node::apply_remote`'s order and rules on node `n`.
    fn apply(&mut self, n: usize, mut batch: Vec<(String, Entry)>) {
        batch.sort_by(|a, b| match (a.1.deleted, b.1.deleted) {
            (false, false) => a.0.cmp(&b.0),
            (true, true) => b.0.cmp(&a.0),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
        });
        for (path, remote) in batch {
            self.apply_one(n, &path, &remote);
        }
        self.scan_ancestors(n);
    }

    fn apply_one(&mut self, n: usize, path: &str, remote: &Entry) {
        let blocking = ancestors(path)
            .into_iter()
            .find(|a| self.live_at(n, a).is_some_and(|e| e.kind != EntryKind::Dir));
        if let Some(anc) = blocking {
            if remote.deleted {
                let local = self.nodes[n].tree.get(path).cloned();
                if let Some(e) = tombstone_under_file(local.as_ref(), remote) {
                    self.record(n, path, e);
                }
                return;
            }
            // The directory keeps the name: the file at `anc` is copied aside.
            let Some(local) = self.live_at(n, &anc).cloned() else {
                return;
            };
            self.conflict_copy(n, &anc, &local);
            let dir = self.dir_superseding(n, &local, None);
            self.record(n, &anc, dir);
        }
        let local = self.nodes[n].tree.get(path).cloned();
        let me = self.nodes[n].me.clone();
        let below = self.has_live_below(n, path);
        let now = self.tick() as u64;
        let me = Me {
            id: &me,
            now_ms: now,
        };
        let decision = decide(local.as_ref(), remote, me, &mut || below);
        match decision {
            Decision::Ignore => {}
            Decision::Tombstone(e) | Decision::Record(e) => self.record(n, path, e),
            Decision::Place(e) => self.place(n, path, e),
            Decision::KeepDir { copy_remote } => {
                let Some(local) = local else {
                    panic!("KeepDir without a local state at {path}")
                };
                if copy_remote {
                    self.conflict_copy(n, path, remote);
                }
                let dir = self.dir_superseding(n, &local, Some(remote));
                self.record(n, path, dir);
            }
            Decision::CopyLocalThenPlace(e) => {
                if let Some(l) = &local {
                    self.conflict_copy(n, path, l);
                }
                self.place(n, path, e);
            }
            Decision::Resolve { remote_wins, vv } => {
                let Some(l) = local else {
                    panic!("Resolve without a local state at {path}")
                };
                // Contents here are opaque (like binary files): no merge.
                let (winner, loser) = if remote_wins {
                    (remote.clone(), l)
                } else {
                    (l, remote.clone())
                };
                if loser.kind != EntryKind::Dir {
                    self.conflict_copy(n, path, &loser);
                }
                let mut e = winner;
                e.vv = vv;
                self.place(n, path, e);
            }
        }
    }

    /// Writing a state: a deletion of a directory that still holds entries
    /// keeps it on disk (the scanner then records it again).
    fn place(&mut self, n: usize, path: &str, e: Entry) {
        self.record(n, path, e);
    }

    fn dir_superseding(&mut self, n: usize, local: &Entry, remote: Option<&Entry>) -> Entry {
        let (prev, base) = superseding_dir(local, remote);
        self.local_entry(n, Some(&prev), base)
    }

    /// `Node::sync_conflict_copy`: the name from the loser's author and time.
    fn conflict_copy(&mut self, n: usize, rel: &str, loser: &Entry) {
        let tree = &self.nodes[n].tree;
        let Ok(Some(name)) = conflict_copy_name(rel, loser, |name| {
            Ok::<_, ()>(match tree.get(name) {
                Some(rec) if live(rec) && rec.same_content(loser) => NameSlot::SameCopy,
                None => NameSlot::Free,
                Some(rec) if rec.deleted => NameSlot::Free,
                _ => NameSlot::Taken,
            })
        }) else {
            return;
        };
        let prev = self.nodes[n].tree.get(&name).cloned();
        let mut base = loser.clone();
        base.message = Some(format!("conflict copy of {rel}"));
        let e = self.local_entry(n, prev.as_ref(), base);
        self.record(n, &name, e);
    }

    /// What the scanner finds after files were written under directories
    /// that have no live record: it records those directories.
    fn scan_ancestors(&mut self, n: usize) {
        let lives: Vec<String> = self.nodes[n]
            .tree
            .iter()
            .filter(|(_, e)| live(e))
            .map(|(p, _)| p.clone())
            .collect();
        for p in lives {
            for a in ancestors(&p) {
                if self.live_at(n, &a).is_none() {
                    let prev = self.nodes[n].tree.get(&a).cloned();
                    let e = self.local_entry(n, prev.as_ref(), Self::bare(EntryKind::Dir));
                    self.record(n, &a, e);
                }
            }
        }
    }

    fn check_tree_shape(&self, n: usize) -> Result<(), String> {
        for (p, e) in &self.nodes[n].tree {
            if !live(e) {
                continue;
            }
            for a in ancestors(p) {
                match self.live_at(n, &a) {
                    Some(x) if x.kind == EntryKind::Dir => {}
                    other => {
                        return Err(format!(
                            "node {n}: {p} is live under {a}, which is {:?}",
                            other.map(|x| x.kind)
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Exchanges everything until no node records anything new.
    fn settle(&mut self, rng: &mut Rng) -> Result<usize, String> {
        for round in 0..40 {
            let before: Vec<u64> = self.nodes.iter().map(|n| n.seq).collect();
            let mut pairs: Vec<(usize, usize)> = (0..NODES)
                .flat_map(|i| (0..NODES).filter(move |j| *j != i).map(move |j| (i, j)))
                .collect();
            // A shuffled order of links each round.
            for k in (1..pairs.len()).rev() {
                pairs.swap(k, rng.below(k as u64 + 1) as usize);
            }
            for (i, j) in pairs {
                self.send(i, j);
                while self.deliver(i, j) {}
            }
            let quiet = (0..NODES)
                .all(|i| (0..NODES).all(|j| i == j || self.sent[i][j] == self.nodes[i].seq))
                && self.queues.iter().flatten().all(|q| q.is_empty());
            let after: Vec<u64> = self.nodes.iter().map(|n| n.seq).collect();
            if quiet && before == after {
                return Ok(round);
            }
        }
        Err("no quiet state after 40 rounds of full exchange: states bounce".into())
    }

    fn live_tree(&self, n: usize) -> BTreeMap<String, (EntryKind, Vec<ChunkId>, VersionVector)> {
        self.nodes[n]
            .tree
            .iter()
            .filter(|(_, e)| live(e))
            .map(|(p, e)| (p.clone(), (e.kind, e.chunks.clone(), e.vv.clone())))
            .collect()
    }
}

/// One schedule: random local edits, sends and deliveries, then settling.
fn run(seed: u64, events: usize) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w = World::new();
    let mut trace = Vec::new();
    for _ in 0..events {
        let n = rng.below(NODES as u64) as usize;
        let roll = rng.below(100);
        match roll {
            0..=29 => {
                let p = POOL[rng.below(POOL.len() as u64) as usize];
                w.write_file(n, p);
                trace.push(format!("n{n} write {p}"));
            }
            30..=39 => {
                let p = POOL[rng.below(POOL.len() as u64) as usize];
                let p = if rng.below(2) == 0 {
                    p.split('/').next().unwrap_or(p)
                } else {
                    p
                };
                w.delete(n, p);
                trace.push(format!("n{n} delete {p}"));
            }
            40..=49 => {
                w.retype(n);
                trace.push(format!("n{n} retype k"));
            }
            50..=74 => {
                let j = (n + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
                w.send(n, j);
                trace.push(format!("n{n} send to n{j}"));
            }
            75..=94 => {
                let i = (n + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
                if w.deliver(i, n) {
                    trace.push(format!("n{n} applies a message from n{i}"));
                }
            }
            95..=97 => {
                w.snapshot(n);
                trace.push(format!("n{n} home copied"));
            }
            _ => {
                if w.snapshots[n].is_some() {
                    w.restore(n);
                    trace.push(format!("n{n} home restored from the copy"));
                }
            }
        }
        for k in 0..NODES {
            w.check_tree_shape(k)
                .map_err(|e| format!("{e}\ntrace:\n{}", trace.join("\n")))?;
        }
    }
    let fail = |msg: String, w: &World| {
        let trees: Vec<String> = (0..NODES)
            .map(|k| format!("{:#?}", w.live_tree(k)))
            .collect();
        format!(
            "{msg}\ntrace:\n{}\ntrees:\n{}",
            trace.join("\n"),
            trees.join("\n")
        )
    };
    w.settle(&mut rng).map_err(|e| fail(e, &w))?;
    for k in 0..NODES {
        w.check_tree_shape(k).map_err(|e| fail(e, &w))?;
    }
    let first = w.live_tree(0);
    for k in 1..NODES {
        if w.live_tree(k) != first {
            return Err(fail(format!("node {k} differs from node 0"), &w));
        }
    }
    let present: BTreeSet<u64> = first
        .values()
        .filter_map(|(_, c, _)| c.first())
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c.0[..8]);
            u64::from_be_bytes(b)
        })
        .collect();
    let lost: Vec<u64> = w
        .written
        .iter()
        .copied()
        .filter(|t| !present.contains(t) && !w.superseded.contains(t))
        .collect();
    if !lost.is_empty() {
        return Err(fail(format!("writes lost: {lost:?}"), &w));
    }
    Ok(())
}

#[test]
fn the_sync_decisions_converge_on_every_explored_interleaving() {
    let cases: u64 = std::env::var("SOVRYN_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seeds: Vec<u64> = match std::env::var("SOVRYN_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(s) => vec![s],
        None => (1..=cases).collect(),
    };
    let started = std::time::Instant::now();
    for seed in &seeds {
        let events = 8 + (seed % 17) as usize;
        if let Err(e) = run(*seed, events) {
            panic!("seed {seed} ({events} events) failed (replay: SOVRYN_SIM_SEED={seed}):\n{e}");
        }
    }
    eprintln!(
        "{} interleavings explored in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}
