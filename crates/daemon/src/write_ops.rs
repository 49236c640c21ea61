//! Commands that write the store (`add`, `scan`, `restore`, `gc`), in one
//! place whether they run here or in the running node: while a node runs it
//! holds the store's writer lock, so these commands ask it over the control
//! socket (typed requests below) instead of failing; without one they open
//! the store themselves. Either way the same [`execute`] does the work.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sovryn_engine::scan::{ScanOptions, ScanReport};
use sovryn_engine::{Home, Node, View};
use sovryn_store::GcReport;

/// A write a command asks for (paths already resolved against the folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    /// Record these paths (all: empty), with an optional note.
    Scan {
        /// Relative paths; empty means the whole folder.
        paths: Vec<String>,
        /// A note on the versions recorded.
        message: Option<String>,
    },
    /// Bring a version back as a new version.
    Restore {
        /// Relative path.
        path: String,
        /// A label (`v2`) or a version id prefix.
        version: String,
    },
    /// Prune old versions by the retention policy and free their chunks.
    Gc,
}

/// What a [`WriteOp`] did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "done", rename_all = "snake_case")]
pub enum WriteOutcome {
    /// A scan's report.
    Scanned(ScanReport),
    /// A restore.
    Restored {
        /// The path.
        path: String,
        /// Its new label here.
        label: u64,
        /// The new version's id.
        id: String,
        /// The label restored from.
        from_label: u64,
        /// The id restored from.
        from_id: String,
    },
    /// What gc did.
    Collected(GcReport),
}

impl WriteOutcome {
    /// The paths whose records changed (to announce to peers).
    pub fn changed(&self) -> Vec<String> {
        match self {
            WriteOutcome::Scanned(r) => r.changed.clone(),
            WriteOutcome::Restored { path, .. } => vec![path.clone()],
            WriteOutcome::Collected(_) => Vec::new(),
        }
    }
}

/// Runs `op` on an opened node; `progress` sees a scan's progress.
pub fn execute(
    node: &mut Node,
    op: WriteOp,
    progress: &mut dyn FnMut(&sovryn_engine::scan::ScanProgress),
) -> Result<WriteOutcome, sovryn_engine::Error> {
    Ok(match op {
        WriteOp::Scan { paths, message } => {
            let opts = ScanOptions {
                message,
                ..Default::default()
            };
            WriteOutcome::Scanned(node.scan(&paths, &opts, progress)?)
        }
        WriteOp::Restore { path, version } => {
            let from = node.find_version(&path, &version)?;
            let rec = node.restore(&path, &version, None)?;
            WriteOutcome::Restored {
                id: sovryn_store::version_id(&path, &rec.entry),
                path,
                label: rec.label,
                from_label: from.label,
                from_id: from.id(),
            }
        }
        WriteOp::Gc => {
            let policy = node.config.retention.clone();
            WriteOutcome::Collected(node.store.gc(&policy, sovryn_store::now_ns())?)
        }
    })
}

/// Asks the running node to do `op`; `None` when no node runs here.
pub fn via_daemon(home: &Home, op: &WriteOp) -> Result<Option<WriteOutcome>> {
    let req = crate::control::Request::Write { op: op.clone() };
    let Some(answer) = crate::control::request(home, &req)? else {
        return Ok(None);
    };
    if answer["ok"].as_bool() != Some(true) {
        return Err(Error::Failed(
            answer["error"]
                .as_str()
                .unwrap_or("the running node refused")
                .to_owned(),
        ));
    }
    let outcome = serde_json::from_value(answer["outcome"].clone()).map_err(|e| {
        Error::Failed(format!(
            "the running node answered something this version does not know: {e}"
        ))
    })?;
    Ok(Some(outcome))
}
