//! Large files written ahead of their record. A peer still reading a large
//! file announces each step of it that is durable there ([`Msg::Coming`]);
//! those chunks are fetched, and their plaintext written at their offsets
//! into a temp file in the storage root. When the record arrives and names
//! the same chunks first, the assembly takes that file over and writes
//! only the rest. Nothing is put under the real name here, and nothing is
//! applied: a file that is never taken over (it changed while read, the
//! record differs, the session ends) is removed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use sovryn_engine::View;

use super::*;
use crate::assemble::create_temp;
use crate::transfer::PlainSink;
use crate::wire::Coming;

/// Files written ahead at once, per session: a notice of another file
/// beyond them is not acted on (its record is fetched as usual).
const MAX_AHEAD_FILES: usize = 4;

/// Chunks one file written ahead may name (32 bytes each in memory): past
/// them (a 64 GiB file), the rest waits for the record like any file.
const MAX_AHEAD_CHUNKS: usize = 1 << 20;

/// Steps fetched at once: the next one starts while the last is still
/// arriving, so the fetch does not drain between steps. (Two nodes pinned
/// to one core each, 1 GiB: 5.55-5.67 s without writing ahead, 4.56-4.60 s
/// with; sharing two cores, 4.41-4.92 s and 4.25-4.77 s.)
const MAX_STEPS: usize = 2;

/// A session's files written ahead, by path.
pub(crate) struct Ahead {
    root: PathBuf,
    files: HashMap<String, AheadFile>,
    /// Steps being fetched: each ends with its write and whether it is whole.
    steps: tokio::task::JoinSet<Result<(AheadWrite, bool)>>,
}

struct AheadFile {
    tmp: PathBuf,
    /// Shared with the steps being written (positioned writes only).
    out: Arc<File>,
    /// The chunks announced so far, in file order; the file holds them all.
    chunks: Vec<ChunkId>,
    /// Where the next announced chunk goes.
    end: u64,
}

/// A temp file holding a record's first `cursor` chunks (`offset` bytes),
/// for the assembly to go on with.
pub(crate) struct Adopted {
    pub(crate) tmp: PathBuf,
    pub(crate) out: File,
    pub(crate) cursor: usize,
    pub(crate) offset: u64,
}

impl Ahead {
    /// No files yet; temp files go to `root` (the storage root).
    pub(crate) fn new(root: PathBuf) -> Self {
        Ahead {
            root,
            files: HashMap::new(),
            steps: tokio::task::JoinSet::new(),
        }
    }

    /// The write of a notice's chunks, or `None` when it is not acted on:
    /// a first step starts the file over; a later step must follow the
    /// last one exactly, or the file is given up.
    pub(crate) fn plan(&mut self, c: Coming) -> Option<AheadWrite> {
        let rel = c.path.as_str().to_owned();
        if c.first == 0 {
            self.give_up(&rel);
            if self.files.len() >= MAX_AHEAD_FILES {
                return None;
            }
            let tmp = sovryn_engine::fsutil::temp_in(&self.root);
            let out = match create_temp(&tmp) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("{rel}: not written ahead: {e}");
                    return None;
                }
            };
            self.files.insert(
                rel.clone(),
                AheadFile {
                    tmp,
                    out: Arc::new(out),
                    chunks: Vec::new(),
                    end: 0,
                },
            );
        }
        let file = self.files.get_mut(&rel)?;
        if c.first != file.chunks.len() || file.chunks.len() + c.chunks.len() > MAX_AHEAD_CHUNKS {
            self.give_up(&rel);
            return None;
        }
        let out = file.out.clone();
        let writeback = sovryn_store::pack::Writeback::from(file.end);
        let mut places: HashMap<ChunkId, Vec<(u64, u32)>> = HashMap::new();
        for (id, len) in c.chunks {
            places.entry(id).or_default().push((file.end, len));
            file.chunks.push(id);
            file.end += u64::from(len);
        }
        Some(AheadWrite {
            rel,
            out,
            places,
            ok: true,
            writeback,
            reach: 0,
        })
    }

    /// Waits for the steps being fetched until at most `running` remain;
    /// a step that did not write every chunk with its announced length
    /// gives its file up. Only a failing connection is an error.
    pub(crate) async fn settle(&mut self, running: usize) -> Result<()> {
        while self.steps.len() > running {
            let Some(done) = self.steps.join_next().await else {
                break;
            };
            let (w, complete) = done.context("fetching ahead panicked")??;
            if !(w.ok && complete && w.places.is_empty()) {
                self.give_up(&w.rel);
            }
        }
        Ok(())
    }

    /// The files written ahead whose chunks are the first of their record
    /// in `list`, handed over once every step is written; files of the
    /// other paths the message `named` (states not taken here) are given up.
    pub(crate) async fn adopt(
        &mut self,
        list: &[(String, Entry)],
        named: &[String],
    ) -> Result<HashMap<String, Adopted>> {
        self.settle(0).await?;
        for rel in named {
            if !list.iter().any(|(r, _)| r == rel) {
                self.give_up(rel);
            }
        }
        let mut out = HashMap::new();
        for (rel, e) in list {
            let Some(f) = self.files.remove(rel) else {
                continue;
            };
            let fits = !e.deleted
                && e.kind == sovryn_store::EntryKind::File
                && e.chunks.len() >= f.chunks.len()
                && e.chunks[..f.chunks.len()] == f.chunks[..];
            match Arc::try_unwrap(f.out) {
                Ok(file) if fits => {
                    out.insert(
                        rel.clone(),
                        Adopted {
                            tmp: f.tmp,
                            out: file,
                            cursor: f.chunks.len(),
                            offset: f.end,
                        },
                    );
                }
                _ => {
                    let _ = std::fs::remove_file(&f.tmp);
                }
            }
        }
        Ok(out)
    }

    fn give_up(&mut self, rel: &str) {
        if let Some(f) = self.files.remove(rel) {
            let _ = std::fs::remove_file(&f.tmp);
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.steps.abort_all();
        for f in self.files.values() {
            let _ = std::fs::remove_file(&f.tmp);
        }
    }
}

/// One announced step being written: each chunk's plaintext at its offset.
pub(crate) struct AheadWrite {
    rel: String,
    out: Arc<File>,
    /// Where each chunk still to write goes (offset, announced length).
    places: HashMap<ChunkId, Vec<(u64, u32)>>,
    ok: bool,
    /// The file's writeback, up to `reach`, the furthest byte written.
    writeback: sovryn_store::pack::Writeback,
    reach: u64,
}

impl AheadWrite {
    /// Writes the chunks this node already has, read from `view`.
    pub(crate) fn write_had(&mut self, view: &dyn View) {
        let ids: Vec<ChunkId> = self.places.keys().copied().collect();
        for id in ids {
            match view.store().read_chunk(&id) {
                Ok(plain) => self.put(&id, &plain),
                Err(sovryn_store::Error::MissingChunk(_)) => {}
                Err(e) => {
                    tracing::debug!("{}: chunk {id} not readable here: {e}", self.rel);
                    self.ok = false;
                    self.places.remove(&id);
                }
            }
        }
    }

    /// The chunks still to fetch.
    pub(crate) fn missing(&self) -> Vec<ChunkId> {
        self.places.keys().copied().collect()
    }

    fn put(&mut self, id: &ChunkId, plain: &[u8]) {
        let Some(places) = self.places.remove(id) else {
            return;
        };
        for (offset, len) in places {
            // The announced length placed every later chunk: a chunk of
            // another length makes the whole file wrong.
            if plain.len() != len as usize {
                self.ok = false;
                return;
            }
            if let Err(e) = self.out.write_all_at(plain, offset) {
                tracing::debug!("{}: writing ahead: {e}", self.rel);
                self.ok = false;
                return;
            }
            self.reach = self.reach.max(offset + u64::from(len));
        }
        self.writeback.wrote(&self.out, self.reach);
    }
}

impl PlainSink for AheadWrite {
    fn wanted_ids(&self) -> HashSet<ChunkId> {
        self.places.keys().copied().collect()
    }
    fn received(&mut self, _view: &dyn View, id: &ChunkId, plain: Vec<u8>) {
        self.put(id, &plain);
    }
}

impl SyncNet {
    /// Acts on a peer's [`Msg::Coming`]: fetches the announced chunks and
    /// writes them ahead, when the peer's rights let its states in here.
    /// A chunk the peer lacks or a bad length gives the file up; only a
    /// failing connection is an error.
    pub(crate) async fn fetch_ahead(
        self: &Arc<Self>,
        peer: &EndpointId,
        conn: &Connection,
        ahead: &mut Option<Ahead>,
        c: Coming,
        receiving: &Arc<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<()> {
        let cfg = self.rights(peer)?;
        if cfg.read_only || !allowlist::accepted_from(&cfg, c.path.as_str()) {
            return Ok(());
        }
        // Nor what this node's own rules leave out (checked once a file).
        if c.first == 0 {
            let rel = c.path.as_str().to_owned();
            let kept = self
                .shared
                .with_node_bulk(move |n| Ok(n.rules.keeps(&rel, false)))
                .await?;
            if !kept {
                return Ok(());
            }
        }
        if ahead.is_none() {
            let root = self
                .shared
                .with_view(|v| sovryn_engine::View::root(v).to_path_buf())
                .await?;
            *ahead = Some(Ahead::new(root));
        }
        let Some(files) = ahead.as_mut() else {
            return Ok(());
        };
        files.settle(MAX_STEPS - 1).await?;
        let Some(mut w) = files.plan(c) else {
            return Ok(());
        };
        let me = self.clone();
        let conn = conn.clone();
        let receiving = receiving.clone();
        files.steps.spawn(async move {
            let w = me
                .shared
                .with_view(move |v| {
                    w.write_had(v);
                    w
                })
                .await?;
            let missing = w.missing();
            let (lacking, back) = me.fetch_chunks(&conn, missing, Some(w), receiving).await?;
            let w = back.context("the step's write went missing")?;
            Ok((w, lacking.is_empty()))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sovryn_engine::paths::RelPath;
    use sovryn_store::EntryKind;

    fn id(b: u8) -> ChunkId {
        ChunkId([b; 32])
    }

    fn step(first: usize, chunks: &[(u8, &[u8])]) -> Coming {
        Coming {
            path: RelPath::parse("big.bin").unwrap(),
            first,
            chunks: chunks
                .iter()
                .map(|(b, d)| (id(*b), d.len() as u32))
                .collect(),
        }
    }

    fn write(ahead: &mut Ahead, c: Coming, data: &[(u8, &[u8])]) -> bool {
        let Some(mut w) = ahead.plan(c) else {
            return false;
        };
        for (b, d) in data {
            w.put(&id(*b), d);
        }
        ahead.steps.spawn(async move { Ok((w, true)) });
        true
    }

    fn record(ids: &[u8]) -> (String, Entry) {
        let chunks: Vec<ChunkId> = ids.iter().map(|b| id(*b)).collect();
        let e = serde_json::from_value(serde_json::json!({
            "kind": EntryKind::File, "size": 0, "mode": 0o644, "mtime_ns": 0,
            "vv": {}, "author": "", "time_ns": 0, "chunks": chunks,
        }))
        .unwrap();
        ("big.bin".to_owned(), e)
    }

    fn temps(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn steps_written_ahead_are_taken_over_by_the_record_they_begin() {
        let dir = tempfile::tempdir().unwrap();
        let mut ahead = Ahead::new(dir.path().to_path_buf());
        let s1: &[(u8, &[u8])] = &[(1, b"abc"), (2, b"defg")];
        assert!(write(&mut ahead, step(0, s1), s1));
        // Written out of order within a step: each goes to its offset.
        let s2: &[(u8, &[u8])] = &[(3, b"hi"), (1, b"abc")];
        assert!(write(&mut ahead, step(2, s2), &[(1, b"abc"), (3, b"hi")]));
        let mut adopted = ahead.adopt(&[record(&[1, 2, 3, 1, 4])], &[]).await.unwrap();
        let a = adopted.remove("big.bin").expect("taken over");
        assert_eq!((a.cursor, a.offset), (4, 12));
        assert_eq!(std::fs::read(&a.tmp).unwrap(), b"abcdefghiabc");
        std::fs::remove_file(&a.tmp).unwrap();
    }

    #[tokio::test]
    async fn a_file_written_ahead_that_does_not_fit_is_given_up_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut ahead = Ahead::new(dir.path().to_path_buf());
        let s1: &[(u8, &[u8])] = &[(1, b"abc")];
        // A record with other chunks (the file changed while read).
        assert!(write(&mut ahead, step(0, s1), s1));
        assert!(ahead
            .adopt(&[record(&[9, 1])], &[])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(temps(dir.path()), 0);
        // A step that skips ahead gives the file up at once.
        assert!(write(&mut ahead, step(0, s1), s1));
        assert!(!write(&mut ahead, step(5, s1), s1));
        assert_eq!(temps(dir.path()), 0);
        // A chunk of another length than announced.
        assert!(write(&mut ahead, step(0, s1), &[(1, b"abcd")]));
        assert!(ahead.adopt(&[record(&[1])], &[]).await.unwrap().is_empty());
        // A state the message named but this node did not take.
        assert!(write(&mut ahead, step(0, s1), s1));
        assert!(ahead
            .adopt(&[], &["big.bin".to_owned()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(temps(dir.path()), 0);
        // Whatever is left when the session ends is removed.
        assert!(write(&mut ahead, step(0, s1), s1));
        drop(ahead);
        assert_eq!(temps(dir.path()), 0);
    }
}
