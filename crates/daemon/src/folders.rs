//! The node's other folders: each opened with its key (sealed by the node's
//! key) and served as a daemon of its own (watcher, scanner, control socket
//! in its home, MCP when enabled) on the endpoint of the node's first
//! folder, which starts and stops them.

use std::collections::BTreeMap;

use sovryn_engine::folders::{self, FolderName};
use sovryn_store::{Access, MasterKey};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::Error;

/// The other folders the node serves, and the key that opens them.
#[derive(Default)]
pub(crate) struct FolderRuns {
    node_key: Option<MasterKey>,
    running: BTreeMap<FolderName, Running>,
    /// Folders being opened (their first scan can take a while; the lock
    /// is not held meanwhile).
    starting: std::collections::BTreeSet<FolderName>,
    /// Set once the node stops: a folder that finishes opening after it
    /// is stopped at once.
    closing: bool,
    /// Folders closed while they were opening: stopped once open.
    cancelled: std::collections::BTreeSet<FolderName>,
}

struct Running {
    root: PathBuf,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// A folder served beside the node's first one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServedFolder {
    /// Its name.
    pub name: String,
    /// Its storage path.
    pub path: PathBuf,
    /// Whether it still runs (a folder whose task failed does not).
    pub running: bool,
}

impl Daemon {
    /// Opens and serves every other folder of the node with `node_key` (the
    /// key of its first folder, this one). A folder that cannot open is
    /// reported and left out: the others still sync.
    pub(crate) async fn open_folders(&self, node_key: MasterKey) -> Vec<(String, Result<PathBuf>)> {
        self.folders.lock().await.node_key = Some(node_key);
        let list = match folders::list(&self.home) {
            Ok(l) => l,
            Err(e) => return vec![("*".into(), Err(e.into()))],
        };
        let mut out = Vec::new();
        for f in list.into_iter().filter(|f| !f.name.is_default()) {
            let opened = self.open_folder(&f.name).await;
            out.push((f.name.to_string(), opened));
        }
        out
    }

    /// Starts serving folder `name` (already serving it is fine). Boxed:
    /// the folder's own daemon answers control requests, which may open
    /// folders, a cycle of futures the compiler cannot size otherwise.
    pub(crate) fn open_folder<'a>(
        &'a self,
        name: &'a FolderName,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<PathBuf>> + Send + 'a>> {
        Box::pin(self.open_folder_now(name))
    }

    async fn open_folder_now(&self, name: &FolderName) -> Result<PathBuf> {
        if self.attached.is_some() {
            return Err(Error::Failed(
                "folders are opened by the node's first folder (its control socket is in the node's home)".into(),
            ));
        }
        let key = {
            let mut runs = self.folders.lock().await;
            if let Some(r) = runs.running.get(name).filter(|r| !r.done.is_finished()) {
                return Ok(r.root.clone());
            }
            if runs.closing || !runs.starting.insert(name.clone()) {
                return Err(Error::Failed(format!(
                    "folder {name} is being opened or the node is stopping"
                )));
            }
            runs.node_key.clone()
        };
        let opened = self.start_folder(name, key).await;
        let mut runs = self.folders.lock().await;
        runs.starting.remove(name);
        let cancelled = runs.cancelled.remove(name);
        let (root, run) = opened?;
        if cancelled {
            run.stop.cancel();
            let _ = run.done.await;
            return Err(Error::Failed(format!(
                "folder {name} was closed while it opened"
            )));
        }
        if runs.closing {
            run.stop.cancel();
            let _ = run.done.await;
            return Err(Error::Failed("the node is stopping".into()));
        }
        tracing::info!("serving folder {name} ({})", root.display());
        runs.running.insert(name.clone(), run);
        Ok(root)
    }

    /// Opens folder `name` and starts its daemon on this one's endpoint.
    async fn start_folder(
        &self,
        name: &FolderName,
        key: Option<MasterKey>,
    ) -> Result<(PathBuf, Running)> {
        let key = key.ok_or_else(|| {
            Error::Failed("this node was started without its key; restart it".into())
        })?;
        let folder = folders::find(&self.home, name.as_str())?;
        let home = folder.home.clone();
        let node = tokio::task::spawn_blocking(move || -> Result<Node> {
            let k = folders::open_key(&home, &key)?;
            Ok(Node::open(home, &k, Access::ReadWrite)?)
        })
        .await
        .map_err(|e| Error::Failed(format!("opening folder {name}: {e}")))??;
        let root = node.root().to_owned();
        let daemon = Daemon::open(node, Bind::On(&self.net)).await?;
        let stop = daemon
            .attached
            .clone()
            .ok_or_else(|| Error::Failed("an attached folder without its stop".into()))?;
        let label = name.to_string();
        let done = tokio::spawn(async move {
            if let Err(e) = daemon.serve(None).await {
                tracing::warn!("folder {label} stopped: {e:#}");
            }
        });
        Ok((root.clone(), Running { root, stop, done }))
    }

    /// Stops serving folder `name`; whether it was served.
    pub(crate) async fn close_folder(&self, name: &FolderName) -> bool {
        let run = {
            let mut runs = self.folders.lock().await;
            if runs.starting.contains(name) {
                // Stopped as soon as it is open.
                runs.cancelled.insert(name.clone());
                return true;
            }
            runs.running.remove(name)
        };
        match run {
            Some(r) => {
                r.stop.cancel();
                let _ = r.done.await;
                true
            }
            None => false,
        }
    }

    /// Stops every other folder and waits for each to flush.
    pub(crate) async fn stop_folders(&self) {
        let runs = {
            let mut all = self.folders.lock().await;
            all.closing = true;
            std::mem::take(&mut all.running)
        };
        for r in runs.values() {
            r.stop.cancel();
        }
        for (_, r) in runs {
            let _ = r.done.await;
        }
    }

    /// The other folders served here.
    pub async fn served_folders(&self) -> Vec<ServedFolder> {
        self.folders
            .lock()
            .await
            .running
            .iter()
            .map(|(name, r)| ServedFolder {
                name: name.to_string(),
                path: r.root.clone(),
                running: !r.done.is_finished(),
            })
            .collect()
    }
}
