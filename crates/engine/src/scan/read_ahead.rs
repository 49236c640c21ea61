//! Files of one directory read and sealed ahead of the scanner, a window
//! at a time, on worker threads: a directory of many new small files is
//! bound by one read and one seal after another otherwise (and, from a
//! cold cache, by the disk's latency for each read).
//!
//! A window starts only at a file the scanner found changed, so an
//! unchanged rescan reads nothing more than before. What a worker read is
//! used only if the file's stat is still the one it read under.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sovryn_store::{ChunkCodec, DiskStat, PreparedContent};

use crate::fsutil::stat_of;
use crate::node::{Node, LARGE_INGEST_BYTES};

/// Files in one window at most.
const WINDOW_FILES: usize = 256;
/// Bytes in one window at most (what its sealed chunks hold in memory).
const WINDOW_BYTES: u64 = 32 * 1024 * 1024;
/// Worker threads: more than the cores, so reads from a cold cache overlap.
const WORKERS: usize = 8;

/// A file read and sealed by a worker, under the stat it had when opened.
pub(crate) struct ReadFile {
    pub(crate) stat: DiskStat,
    pub(crate) content: PreparedContent,
    /// When the worker opened it (ns since the epoch).
    pub(crate) read_ns: i64,
}

/// The scanner's read-ahead over one directory's files.
#[derive(Default)]
pub(crate) struct ReadAhead {
    /// Files of the directory not reached yet, in scan order.
    upcoming: VecDeque<String>,
    /// Files read ahead, not taken yet.
    ready: HashMap<String, ReadFile>,
    /// The files of the last window, read or not.
    tried: HashSet<String>,
}

impl ReadAhead {
    /// A read-ahead over these files, in the order the scanner visits them.
    pub(crate) fn new(files: impl IntoIterator<Item = String>) -> Self {
        ReadAhead {
            upcoming: files.into_iter().collect(),
            ..Default::default()
        }
    }

    /// What was read ahead of `rel`, a changed file the scanner is about
    /// to ingest; when nothing was, reads a window from it when there are
    /// more changed files after it. `None`: the scanner reads it itself.
    pub(crate) fn take(&mut self, node: &Node, rel: &str) -> Option<ReadFile> {
        while let Some(next) = self.upcoming.front() {
            if next.as_str() > rel {
                break;
            }
            self.upcoming.pop_front();
        }
        if let Some(f) = self.ready.remove(rel) {
            return Some(f);
        }
        // A worker could not read it: the scanner says why.
        if self.tried.contains(rel) {
            return None;
        }
        let window = self.window(node, rel);
        // Tried either way: a lone changed file must not make every later
        // one look the rest of the directory over again.
        self.tried = window.iter().map(|(r, _)| r.clone()).collect();
        if window.len() < 2 {
            return None;
        }
        let limit = node.text_limit();
        self.ready = read_window(node.store.codec(), window, limit);
        self.ready.remove(rel)
    }

    /// `rel` and the changed files after it, within the window's bounds.
    fn window(&self, node: &Node, rel: &str) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut candidates = std::iter::once(rel.to_owned()).chain(self.upcoming.iter().cloned());
        // Files looked at, changed or not: a window never costs more than
        // this many stats however few of them changed.
        let mut looked = 0;
        while out.len() < WINDOW_FILES && bytes < WINDOW_BYTES && looked < 4 * WINDOW_FILES {
            let Some(c) = candidates.next() else { break };
            looked += 1;
            let Ok(abs) = crate::paths::confined(node.root(), &c) else {
                continue;
            };
            let Ok(meta) = fs::symlink_metadata(&abs) else {
                continue;
            };
            if !meta.is_file() || meta.len() >= LARGE_INGEST_BYTES {
                continue;
            }
            let stat = stat_of(&meta);
            let unchanged = node
                .store
                .file(&c)
                .ok()
                .flatten()
                .is_some_and(|p| !p.entry.deleted && p.disk == Some(stat));
            if !unchanged {
                bytes += meta.len();
                out.push((c, abs));
            }
        }
        out
    }
}

/// Reads and seals every file of `window` on [`WORKERS`] threads. Files
/// that cannot be read are left out (the scanner reads them itself and
/// reports what is wrong).
fn read_window(
    codec: &ChunkCodec,
    window: Vec<(String, PathBuf)>,
    text_limit: u64,
) -> HashMap<String, ReadFile> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(HashMap::with_capacity(window.len()));
    std::thread::scope(|scope| {
        for _ in 0..WORKERS.min(window.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((rel, abs)) = window.get(i) else {
                    return;
                };
                let read = (|| -> Option<ReadFile> {
                    let read_ns = sovryn_store::now_ns();
                    let f = fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(abs)
                        .ok()?;
                    let stat = stat_of(&f.metadata().ok()?);
                    let content = codec.prepare(f, text_limit).ok()?;
                    (content.size() == stat.size).then_some(ReadFile {
                        stat,
                        content,
                        read_ns,
                    })
                })();
                if let Some(r) = read {
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rel.clone(), r);
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::node;
    use crate::scan::ScanOptions;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d/f{i:03}")).collect()
    }

    /// A directory of many small files, some alike, some text, recorded
    /// through the read-ahead exactly as its bytes are.
    #[test]
    fn files_read_ahead_are_recorded_as_they_are_on_disk() {
        let (_dir, mut n) = node();
        fs::create_dir(n.root().join("d")).unwrap();
        let mut want = HashMap::new();
        for (i, rel) in names(300).into_iter().enumerate() {
            let data = match i % 3 {
                0 => format!("text file {i}\n").into_bytes(),
                1 => vec![7u8; 5000],
                _ => {
                    let mut b = vec![0u8; 1 + i * 97];
                    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
                    b
                }
            };
            fs::write(n.root().join(&rel), &data).unwrap();
            want.insert(rel, data);
        }
        let report = n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(report.added, 301);
        for (rel, data) in &want {
            let rec = n.store.file(rel).unwrap().unwrap();
            assert_eq!(&n.store.content(&rec.entry).unwrap(), data, "{rel}");
        }
        // Files written within a second of their read are read once more
        // ("racy"); after that, a rescan of what did not change reads nothing.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        let again = n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        assert_eq!((again.added, again.modified, again.bytes_hashed), (0, 0, 0));
    }

    /// A window holds only changed files; a file that changed after its
    /// window was read is recorded as it is now, not as it was read.
    #[test]
    fn a_window_skips_unchanged_files_and_a_stale_read_is_not_used() {
        let (_dir, mut n) = node();
        fs::create_dir(n.root().join("d")).unwrap();
        for rel in names(10) {
            fs::write(n.root().join(&rel), "first").unwrap();
        }
        n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        // Past the racy second: the files just recorded count as unchanged.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        n.scan(&[], &ScanOptions::default(), &mut |_| {}).unwrap();
        for rel in ["d/f004", "d/f005", "d/f008"] {
            fs::write(n.root().join(rel), "second, longer").unwrap();
        }
        let mut ahead = ReadAhead::new(names(10));
        let read = ahead.take(&n, "d/f004").expect("read ahead");
        assert_eq!(read.content.size(), 14);
        let tried: HashSet<&str> = ahead.tried.iter().map(String::as_str).collect();
        assert_eq!(tried, HashSet::from(["d/f004", "d/f005", "d/f008"]));

        fs::write(n.root().join("d/f005"), "third, longer still").unwrap();
        let stale = ahead.take(&n, "d/f005").expect("read with the window");
        let (entry, _) = n.disk_entry("d/f005", None, Some(stale)).unwrap().unwrap();
        assert_eq!(n.store.content(&entry).unwrap(), b"third, longer still");

        // A lone changed file is read by the scanner itself.
        let mut lone = ReadAhead::new(names(10));
        fs::write(n.root().join("d/f008"), "x").unwrap();
        n.scan(
            &["d/f004".into(), "d/f005".into()],
            &ScanOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert!(lone.take(&n, "d/f008").is_none());
    }
}
