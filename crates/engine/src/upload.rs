//! Files that arrive as a stream (an HTTP upload): written to a temp file
//! beside the target while no lock is held, then put in place and recorded
//! in one step, read back from disk by the scanner, so a file of any size
//! passes through a bounded amount of memory. A cut upload leaves nothing:
//! the temp file goes when its [`UploadSlot`] is dropped, and the target is
//! untouched until the rename.

use std::fs;
use std::path::{Path, PathBuf};

use sovryn_store::FileRecord;

use crate::fsutil::{self, sync_file};
use crate::node::Node;
use crate::ops::parent_of;
use crate::paths;
use crate::scan::ScanOptions;
use crate::{Error, Result};

/// Where an upload is written until it is complete.
#[derive(Debug)]
pub struct UploadSlot {
    rel: String,
    temp: PathBuf,
}

impl UploadSlot {
    /// The temp file to write (created empty, mode 0644).
    pub fn temp(&self) -> &Path {
        &self.temp
    }

    /// The path it will be recorded under.
    pub fn rel(&self) -> &str {
        &self.rel
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        // Gone already once put in place.
        let _ = fs::remove_file(&self.temp);
    }
}

/// Refuses a target that is a directory or a link.
fn check_target(rel: &str, target: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(target) {
        if m.is_dir() {
            return Err(Error::Usage(format!("{rel} is a directory")));
        }
        if m.file_type().is_symlink() {
            return Err(Error::Usage(format!(
                "{rel} is a symbolic link; links are never written through"
            )));
        }
    }
    Ok(())
}

impl Node {
    /// Prepares an upload to `rel`: the path is checked and kept by this
    /// node's rules, the target is not a directory or a link, its missing
    /// parent directories are made and recorded (for `actor`), and an
    /// empty temp file waits beside it.
    pub fn begin_upload(&mut self, rel: &str, actor: Option<&str>) -> Result<UploadSlot> {
        let rel = self.checked_rel(rel)?;
        if !self.rules.keeps(&rel, false) {
            return Err(Error::Usage(format!(
                "{rel} is ignored or excluded on this node"
            )));
        }
        let target = paths::confined(self.root(), &rel)?;
        check_target(&rel, &target)?;
        let parent = parent_of(&rel);
        if !parent.is_empty() {
            self.create_dir(parent, actor)?;
        }
        let temp = fsutil::temp_beside(&target);
        {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::ops::NEW_FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)
                .map_err(|e| Error::io(&temp, e))?;
        }
        Ok(UploadSlot { rel, temp })
    }

    /// Puts a complete upload in place (synced, renamed over the target,
    /// the directory synced) and records it as a version by `actor`, read
    /// back from disk. What was on disk at the target and not recorded yet
    /// is recorded first, so it stays in the history.
    pub fn finish_upload(&mut self, slot: UploadSlot, actor: Option<&str>) -> Result<FileRecord> {
        let target = paths::confined(self.root(), &slot.rel)?;
        check_target(&slot.rel, &target)?;
        self.capture(&slot.rel)?;
        sync_file(&slot.temp)?;
        fs::rename(&slot.temp, &target).map_err(|e| Error::io(&target, e))?;
        if let Some(dir) = target.parent() {
            sync_file(dir)?;
        }
        let opts = ScanOptions {
            actor: actor.map(str::to_owned),
            ..ScanOptions::default()
        };
        self.scan(std::slice::from_ref(&slot.rel), &opts, &mut |_| {})?;
        self.store
            .file(&slot.rel)?
            .filter(|r| !r.entry.deleted)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{} changed on disk while it was put in place; try again",
                    slot.rel
                ))
            })
    }
}
