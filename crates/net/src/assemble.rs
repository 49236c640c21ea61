//! Files written while their chunks arrive: each received chunk is opened
//! and checked once (by the storing task), and its plaintext goes both to
//! the store (sealed, as received) and into the file's temp file at its
//! place. Chunks this node already had are read from the store when the
//! file's write reaches them. A file whose assembly cannot finish (a chunk
//! missing, too much arriving out of order, a write error) is dropped and
//! left to the apply, which writes it from the store; nothing is ever put
//! under the real name here.
//!
//! Large files ([`written_ahead`]) are synced here, off the writer. Smaller
//! ones (from [`ASSEMBLE_MIN_BYTES`]) get a temp file only once their first
//! chunk can be written, close it when complete, and are made durable by
//! the apply's flush (one `syncfs` for a batch of many), like the files it
//! writes itself.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sovryn_engine::sync::{written_ahead, Staged};
use sovryn_engine::View;
use sovryn_store::{ChunkId, Entry, EntryKind};

/// Plaintext held for chunks that arrived before the ones ahead of them,
/// per batch (at most): beyond it, the file is left to the apply. The
/// fetch has at most 32 streams of 16 chunks in flight per peer.
const MAX_PENDING_BYTES: usize = 64 << 20;

/// Large files assembled at once (each holds an open file from the start):
/// a batch announcing more leaves the rest to the staging after the fetch.
const MAX_LARGE_FILES: usize = 16;

/// Files smaller than this are left to the apply: for a file of a few KiB
/// the extra temp file and rename cost more than writing it in the apply
/// (10,000 files of 1 KiB took 0.15 s longer assembled).
const ASSEMBLE_MIN_BYTES: u64 = 64 << 10;

/// Smaller files with a temp file open at once (between their first chunk
/// and their last): beyond it, a file is left to the apply.
const MAX_OPEN_SMALL: usize = 64;

enum Output {
    /// No chunk written yet (smaller files open their temp file lazily).
    NotStarted,
    Open(File),
    /// Every chunk written, the file closed (smaller files).
    Complete,
    /// Given up (its temp file removed) or handed over.
    Gone,
}

struct FileAsm {
    rel: String,
    chunks: Vec<ChunkId>,
    tmp: PathBuf,
    /// Synced here (large) or by the apply's flush.
    large: bool,
    out: Output,
    /// Index of the next chunk to write, and where it goes.
    cursor: usize,
    offset: u64,
    /// This file's writeback (large files).
    writeback: sovryn_store::pack::Writeback,
    /// Chunks that arrived ahead of the cursor, by index.
    pending: HashMap<usize, std::sync::Arc<Vec<u8>>>,
}

/// The files of one batch of remote states being assembled.
pub(crate) struct Assembly {
    files: Vec<FileAsm>,
    /// Where each fetched chunk goes: (file, chunk index) pairs.
    wanted: HashMap<ChunkId, Vec<(usize, usize)>>,
    pending_bytes: usize,
    open_small: usize,
}

pub(crate) fn create_temp(tmp: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
}

impl Assembly {
    /// Temp files (in the storage root) for the live files of `list` that
    /// need some of `fetching`, and for those written ahead (`adopted`),
    /// which go on from where they are.
    pub(crate) fn start(
        root: &Path,
        list: &[(String, Entry)],
        fetching: &[ChunkId],
        mut adopted: HashMap<String, crate::ahead::Adopted>,
    ) -> Self {
        let fetching: std::collections::HashSet<&ChunkId> = fetching.iter().collect();
        let mut out = Assembly {
            files: Vec::new(),
            wanted: HashMap::new(),
            pending_bytes: 0,
            open_small: 0,
        };
        let mut large = 0;
        for (rel, e) in list {
            if let Some(a) = adopted.remove(rel) {
                out.push_file(
                    rel,
                    e,
                    &fetching,
                    a.tmp,
                    Output::Open(a.out),
                    true,
                    a.cursor,
                    a.offset,
                );
                continue;
            }
            if e.deleted
                || e.kind != EntryKind::File
                || e.size < ASSEMBLE_MIN_BYTES
                || !e.chunks.iter().any(|c| fetching.contains(c))
            {
                continue;
            }
            let is_large = written_ahead(e);
            if is_large && large >= MAX_LARGE_FILES {
                continue;
            }
            let tmp = sovryn_engine::fsutil::temp_in(root);
            let output = if is_large {
                match create_temp(&tmp) {
                    Ok(f) => {
                        large += 1;
                        Output::Open(f)
                    }
                    Err(e) => {
                        tracing::debug!("{rel}: not assembled: {e}");
                        continue;
                    }
                }
            } else {
                Output::NotStarted
            };
            out.push_file(rel, e, &fetching, tmp, output, is_large, 0, 0);
        }
        for a in adopted.into_values() {
            let _ = std::fs::remove_file(&a.tmp);
        }
        out
    }

    /// Adds a file whose chunks from `cursor` on (at `offset`) are to be
    /// written, waiting for those among `fetching`.
    #[allow(clippy::too_many_arguments)]
    fn push_file(
        &mut self,
        rel: &str,
        e: &Entry,
        fetching: &std::collections::HashSet<&ChunkId>,
        tmp: PathBuf,
        out: Output,
        large: bool,
        cursor: usize,
        offset: u64,
    ) {
        let index = self.files.len();
        for (i, c) in e.chunks.iter().enumerate().skip(cursor) {
            if fetching.contains(c) {
                self.wanted.entry(*c).or_default().push((index, i));
            }
        }
        self.files.push(FileAsm {
            rel: rel.to_owned(),
            chunks: e.chunks.clone(),
            tmp,
            large,
            out,
            cursor,
            offset,
            writeback: sovryn_store::pack::Writeback::from(offset),
            pending: HashMap::new(),
        });
    }

    /// Whether a file being assembled needs chunk `id`.
    #[cfg(test)]
    pub(crate) fn wants(&self, id: &ChunkId) -> bool {
        self.wanted.contains_key(id)
    }

    /// The chunks the files being assembled wait for.
    pub(crate) fn wanted_ids(&self) -> std::collections::HashSet<ChunkId> {
        self.wanted.keys().copied().collect()
    }

    /// Whether no file is being assembled.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Takes the checked plaintext of `id` and writes what it lets each
    /// file write, reading chunks this node already had from `view`.
    pub(crate) fn received(&mut self, view: &dyn View, id: &ChunkId, plain: Vec<u8>) {
        let Some(places) = self.wanted.remove(id) else {
            return;
        };
        let plain = std::sync::Arc::new(plain);
        for (f, i) in places {
            let Some(file) = self.files.get_mut(f) else {
                continue;
            };
            if !matches!(file.out, Output::NotStarted | Output::Open(_)) {
                continue;
            }
            file.pending.insert(i, plain.clone());
            self.pending_bytes += plain.len();
            self.advance(view, f);
        }
        if self.pending_bytes > MAX_PENDING_BYTES {
            // Too far out of order: give up the file holding the most.
            if let Some(f) = (0..self.files.len()).max_by_key(|&f| self.files[f].pending.len()) {
                tracing::debug!(
                    "{}: chunks too far out of order; left to the apply",
                    self.files[f].rel
                );
                self.abandon(f);
            }
        }
    }

    /// Writes file `f` from its cursor as far as the chunks allow.
    fn advance(&mut self, view: &dyn View, f: usize) {
        let wanted = &self.wanted;
        let file = &mut self.files[f];
        let mut freed = 0usize;
        let mut opened = false;
        let ok = loop {
            let Some(id) = file.chunks.get(file.cursor) else {
                break true;
            };
            let data = match file.pending.remove(&file.cursor) {
                Some(d) => {
                    freed += d.len();
                    d
                }
                // Still to arrive (at this or a later place of the file).
                None if wanted
                    .get(id)
                    .is_some_and(|p| p.contains(&(f, file.cursor))) =>
                {
                    break true
                }
                // Had here before: from the store.
                None => match view.store().read_chunk(id) {
                    Ok(d) => std::sync::Arc::new(d),
                    Err(e) => {
                        tracing::debug!("{}: chunk {id} not readable here: {e}", file.rel);
                        break false;
                    }
                },
            };
            if matches!(file.out, Output::NotStarted) {
                if self.open_small >= MAX_OPEN_SMALL {
                    break false;
                }
                match create_temp(&file.tmp) {
                    Ok(out) => {
                        file.out = Output::Open(out);
                        opened = true;
                    }
                    Err(e) => {
                        tracing::debug!("{}: not assembled: {e}", file.rel);
                        break false;
                    }
                }
            }
            let Output::Open(out) = &file.out else {
                break false;
            };
            if let Err(e) = out.write_all_at(&data, file.offset) {
                tracing::debug!("{}: writing its temp file: {e}", file.rel);
                break false;
            }
            file.offset += data.len() as u64;
            file.cursor += 1;
            if file.large {
                file.writeback.wrote(out, file.offset);
            }
        };
        if opened {
            self.open_small += 1;
        }
        // A smaller file closes its temp file once complete.
        if ok
            && !file.large
            && file.cursor == file.chunks.len()
            && matches!(file.out, Output::Open(_))
        {
            file.out = Output::Complete;
            self.open_small = self.open_small.saturating_sub(1);
        }
        self.pending_bytes = self.pending_bytes.saturating_sub(freed);
        if !ok {
            self.abandon(f);
        }
    }

    fn abandon(&mut self, f: usize) {
        let file = &mut self.files[f];
        let held: usize = file.pending.values().map(|d| d.len()).sum();
        file.pending.clear();
        self.pending_bytes = self.pending_bytes.saturating_sub(held);
        let had = std::mem::replace(&mut file.out, Output::Gone);
        if matches!(had, Output::Open(_)) && !file.large {
            self.open_small = self.open_small.saturating_sub(1);
        }
        if matches!(had, Output::Open(_) | Output::Complete) {
            let _ = std::fs::remove_file(&file.tmp);
        }
    }

    /// After the fetch: finishes each file from the store (its remaining
    /// chunks were here before), syncs the large ones and hands the
    /// complete ones over as [`Staged`] files.
    pub(crate) fn finish(mut self, view: &dyn View) -> Staged {
        self.wanted.clear();
        let mut staged = Staged::default();
        for f in 0..self.files.len() {
            self.advance(view, f);
            let file = &mut self.files[f];
            let complete = file.cursor == file.chunks.len();
            let handed = match std::mem::replace(&mut file.out, Output::Gone) {
                Output::Open(out) => complete && (!file.large || out.sync_all().is_ok()),
                Output::Complete => complete,
                Output::NotStarted | Output::Gone => continue,
            };
            if handed {
                staged.insert(file.rel.clone(), file.chunks.clone(), file.tmp.clone());
            } else {
                let _ = std::fs::remove_file(&file.tmp);
            }
        }
        staged
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        for f in &mut self.files {
            if matches!(
                std::mem::replace(&mut f.out, Output::Gone),
                Output::Open(_) | Output::Complete
            ) {
                let _ = std::fs::remove_file(&f.tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sovryn_engine::scan::ScanOptions;
    use sovryn_engine::{Home, InitOptions, Node};
    use sovryn_store::{Access, MasterKey};

    fn node(dir: &std::path::Path, name: &str, key: &MasterKey) -> Node {
        let home = Home {
            dir: dir.join(format!("{name}-home")),
        };
        Node::init(
            &home,
            InitOptions {
                storage_path: dir.join(name),
                folder_key: Some(key.to_hex()),
                ..Default::default()
            },
        )
        .unwrap();
        Node::open(home, key, Access::ReadWrite).unwrap()
    }

    fn temps(root: &std::path::Path) -> usize {
        std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(sovryn_engine::fsutil::TEMP_PREFIX)
            })
            .count()
    }

    /// `a` holds a large file; `b` had every other chunk of it already.
    fn setup() -> (tempfile::TempDir, Node, Node, Entry, Vec<u8>, Vec<ChunkId>) {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let mut a = node(dir.path(), "a", &key);
        let mut b = node(dir.path(), "b", &key);
        let mut content = vec![0u8; sovryn_engine::sync::STAGE_MIN_BYTES as usize + 777_777];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut content);
        std::fs::write(a.root().join("big.bin"), &content).unwrap();
        a.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        let entry = a.store.file("big.bin").unwrap().unwrap().entry;
        assert!(entry.chunks.len() > 20, "{}", entry.chunks.len());
        let mut fetching = Vec::new();
        for (i, id) in entry.chunks.iter().enumerate() {
            if i % 2 == 0 {
                b.store
                    .put_chunk(id, &a.store.read_chunk(id).unwrap())
                    .unwrap();
            } else {
                fetching.push(*id);
            }
        }
        b.store.flush().unwrap();
        (dir, a, b, entry, content, fetching)
    }

    #[test]
    fn a_file_assembled_from_chunks_arriving_out_of_order_is_byte_identical() {
        let (_d, a, b, entry, content, fetching) = setup();
        let list = vec![("big.bin".to_string(), entry.clone())];
        let mut asm = Assembly::start(b.root(), &list, &fetching, HashMap::new());
        assert!(!asm.is_empty());
        let reader = b.reader().unwrap();
        for id in fetching.iter().rev() {
            assert!(asm.wants(id));
            asm.received(&reader, id, a.store.read_chunk(id).unwrap());
        }
        let mut staged = asm.finish(&reader);
        assert_eq!(staged.len(), 1);
        let tmp = staged.take("big.bin", &entry).unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), content);
        std::fs::remove_file(tmp).unwrap();
        assert_eq!(temps(b.root()), 0);
    }

    #[test]
    fn an_unfinished_assembly_leaves_nothing_behind() {
        let (_d, a, b, entry, _content, fetching) = setup();
        let list = vec![("big.bin".to_string(), entry)];
        let reader = b.reader().unwrap();
        // A chunk never arrives: the file is not handed over.
        let mut asm = Assembly::start(b.root(), &list, &fetching, HashMap::new());
        for id in &fetching[1..] {
            asm.received(&reader, id, a.store.read_chunk(id).unwrap());
        }
        assert!(asm.finish(&reader).is_empty());
        assert_eq!(temps(b.root()), 0);
        // A fetch that fails midway (a chunk failed its check) drops it.
        let mut asm = Assembly::start(b.root(), &list, &fetching, HashMap::new());
        asm.received(
            &reader,
            &fetching[0],
            a.store.read_chunk(&fetching[0]).unwrap(),
        );
        assert_eq!(temps(b.root()), 1);
        drop(asm);
        assert_eq!(temps(b.root()), 0);
        assert!(!b.root().join("big.bin").exists());
    }

    #[test]
    fn a_smaller_file_gets_its_temp_file_with_its_first_chunk_and_is_handed_over_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let mut a = node(dir.path(), "a", &key);
        let b = node(dir.path(), "b", &key);
        let mut content = vec![0u8; 300_000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut content);
        std::fs::write(a.root().join("mid.bin"), &content).unwrap();
        a.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        let entry = a.store.file("mid.bin").unwrap().unwrap().entry;
        assert!(entry.chunks.len() >= 2, "{}", entry.chunks.len());
        let list = vec![("mid.bin".to_string(), entry.clone())];
        let mut asm = Assembly::start(b.root(), &list, &entry.chunks, HashMap::new());
        assert!(!asm.is_empty());
        assert_eq!(
            temps(b.root()),
            0,
            "no temp file before a chunk can be written"
        );
        let reader = b.reader().unwrap();
        for id in entry.chunks.iter().rev() {
            asm.received(&reader, id, a.store.read_chunk(id).unwrap());
        }
        assert_eq!(temps(b.root()), 1);
        let mut staged = asm.finish(&reader);
        let tmp = staged.take("mid.bin", &entry).unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), content);
        std::fs::remove_file(tmp).unwrap();
        assert_eq!(temps(b.root()), 0);
    }
}
