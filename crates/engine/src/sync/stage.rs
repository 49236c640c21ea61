//! Large files of remote states written out ahead of their apply, from a
//! read-only view, so the folder's writer is held only to put them in place
//! and record them (a rename and a commit), not for the seconds a large
//! file takes to decrypt and write. An agent's write waits for the commit,
//! not for the copy.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sovryn_store::{ChunkId, Entry, EntryKind};

use crate::view::View;

/// Files smaller than this are written under the writer as before: there
/// the batch's one `syncfs` is cheaper than one fsync each.
pub const STAGE_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// Whether `entry` is a live file large enough to be written out off the
/// writer (assembled as it arrives, or staged) rather than in the apply.
pub fn written_ahead(entry: &Entry) -> bool {
    !entry.deleted && entry.kind == EntryKind::File && entry.size >= STAGE_MIN_BYTES
}

/// Remote files written ahead to temp files in the storage root (durable,
/// mode 0600). Those not taken by the apply are removed on drop; after a
/// crash the startup sweep of temp files removes them.
#[derive(Default)]
pub struct Staged {
    files: HashMap<String, (Vec<ChunkId>, PathBuf)>,
}

impl Staged {
    /// Writes each live file of at least [`STAGE_MIN_BYTES`] among
    /// `records` from `view`'s store. One that cannot be written (a chunk
    /// not there yet, a full disk) is left to the apply, which writes it
    /// itself or reports it.
    pub fn prepare(view: &dyn View, records: &[(String, Entry)]) -> Staged {
        let mut out = Staged::default();
        for (rel, entry) in records {
            if !written_ahead(entry) {
                continue;
            }
            let tmp = crate::fsutil::temp_in(view.root());
            match write_staged(view, entry, &tmp) {
                Ok(()) => {
                    if let Some((_, old)) =
                        out.files.insert(rel.clone(), (entry.chunks.clone(), tmp))
                    {
                        let _ = fs::remove_file(old);
                    }
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    tracing::debug!("{rel}: not staged: {e}");
                }
            }
        }
        out
    }

    /// The staged file holding `entry`'s content for `rel`, taken out.
    pub fn take(&mut self, rel: &str, entry: &Entry) -> Option<PathBuf> {
        match self.files.remove(rel) {
            Some((chunks, tmp)) if chunks == entry.chunks => Some(tmp),
            Some((_, tmp)) => {
                let _ = fs::remove_file(tmp);
                None
            }
            None => None,
        }
    }

    /// Adds a file written elsewhere (assembled while its chunks arrived):
    /// `tmp` holds, durably, the content `chunks` name.
    pub fn insert(&mut self, rel: String, chunks: Vec<ChunkId>, tmp: PathBuf) {
        if let Some((_, old)) = self.files.insert(rel, (chunks, tmp)) {
            let _ = fs::remove_file(old);
        }
    }

    /// Whether `rel` is staged.
    pub fn contains(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }

    /// Takes over every file of `other`.
    pub fn extend(&mut self, mut other: Staged) {
        for (rel, (chunks, tmp)) in other.files.drain() {
            self.insert(rel, chunks, tmp);
        }
    }

    /// How many files are staged.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (_, (_, tmp)) in self.files.drain() {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn write_staged(view: &dyn View, entry: &Entry, tmp: &Path) -> crate::Result<()> {
    let io = |e| crate::Error::io(tmp, e);
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    // Every chunk is opened and checked against its id as it is read.
    view.store().write_content(entry, &mut w)?;
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)?;
    Ok(())
}
