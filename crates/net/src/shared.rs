//! The opened node shared by the daemon's tasks, and read-only store
//! handles for the change log and chunk reads.

use super::*;
use sovryn_engine::{ReadPool, View};

/// Read-only store handles for the change log and chunk reads.
const READERS: usize = 3;

/// The opened node, shared between the daemon's tasks: its one writer.
pub type SharedNode = Arc<sovryn_engine::Writer>;

/// The node plus the notifications its commits raise.
#[derive(Clone)]
pub struct Shared {
    /// The node. Lock it only inside `spawn_blocking` (see [`Shared::with_node`]).
    pub node: SharedNode,
    /// Relative paths whose record changed (scans and applied remote states).
    pub changes: broadcast::Sender<String>,
    /// The store's newest change-log sequence.
    pub seq: watch::Sender<u64>,
    /// Read-only handles on the same store: the change log and chunk reads
    /// served to peers never wait for the node's writes.
    readers: Arc<ReadPool>,
    /// The folder's codec, to check and seal received chunks off the lock.
    pub(crate) codec: ChunkCodec,
    /// Chunks of large files being scanned, durable already: sessions
    /// pass them on to peers that fetch ahead ([`wire::Msg::Coming`]).
    pub(crate) durable: broadcast::Sender<Arc<DurableChunks>>,
}

/// Chunks of `path`, a file still being read, now durable and servable.
#[derive(Debug)]
pub(crate) struct DurableChunks {
    pub(crate) path: String,
    pub(crate) first: usize,
    pub(crate) chunks: Vec<(sovryn_store::ChunkId, u32)>,
}

impl Shared {
    /// Wraps an opened node.
    pub fn new(node: Node) -> Result<Self, Error> {
        let seq = node.store.sequence()?;
        let readers = ReadPool::new(&node, READERS)?;
        let codec = node.store.codec().clone();
        Ok(Shared {
            node: Arc::new(sovryn_engine::Writer::new(node)),
            changes: broadcast::channel(4096).0,
            seq: watch::channel(seq).0,
            readers: Arc::new(readers),
            codec,
            durable: broadcast::channel(64).0,
        })
    }

    /// Runs `f` with a read-only store handle, on a blocking thread. It
    /// sees everything committed, never what a writer has only appended.
    pub async fn with_reader<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.with_view(move |r| f(r.store())).await?
    }

    /// This folder's public id (the same on every node of the mesh).
    pub fn folder_id(&self) -> &str {
        &self.codec.keys().folder_id
    }

    /// Runs `f` with a read-only view of the folder (store and working
    /// tree), on a blocking thread; it never waits for the writer.
    pub async fn with_view<R: Send + 'static>(
        &self,
        f: impl FnOnce(&sovryn_engine::Reader) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || f(&readers.get()))
            .await
            .map_err(|e| Error::Internal(format!("store reader task: {e}")))
    }

    /// Runs `f` with a read-only handle of its own, on a blocking thread:
    /// for long work (writing out a large file) that must not hold one of
    /// the shared handles that serve peers.
    pub async fn with_own_reader<R: Send + 'static>(
        &self,
        f: impl FnOnce(&sovryn_engine::Reader) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let reader = self.with_node_bulk(|n| Ok(n.reader()?)).await?;
        tokio::task::spawn_blocking(move || f(&reader))
            .await
            .map_err(|e| Error::Internal(format!("store reader task: {e}")))
    }

    /// Runs `f` with a read-only view now, on this (blocking) thread.
    pub(crate) fn on_reader_now<R>(&self, f: impl FnOnce(&sovryn_engine::Reader) -> R) -> R {
        f(&self.readers.get())
    }

    /// Runs `f` with the node locked, on a blocking thread, as an
    /// interactive caller (a command, an agent): before waiting bulk work.
    pub async fn with_node<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.on_writer(false, f).await
    }

    /// Runs one batch of bulk work (a sync batch, a rescan) with the node
    /// locked, on a blocking thread, after every interactive caller waiting.
    pub async fn with_node_bulk<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        self.on_writer(true, f).await
    }

    async fn on_writer<R: Send + 'static>(
        &self,
        bulk: bool,
        f: impl FnOnce(&mut Node) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let held = if bulk { node.lock_bulk() } else { node.lock() };
            let mut guard = held.map_err(|e| Error::Internal(e.to_string()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Internal(format!("node task: {e}")))?
    }

    /// Whether a session passes notices of durable chunks on (a peer that
    /// fetches ahead is connected): only then are large files made
    /// durable in steps while scanned.
    pub fn fetches_ahead(&self) -> bool {
        self.durable.receiver_count() > 0
    }

    /// Tells the sync sessions that `chunks` of `path` (from its chunk
    /// `first` on), a file a scan is still reading, are durable here.
    pub fn announce_durable(
        &self,
        path: &str,
        first: usize,
        chunks: &[(sovryn_store::ChunkId, u32)],
    ) {
        let _ = self.durable.send(Arc::new(DurableChunks {
            path: path.to_owned(),
            first,
            chunks: chunks.to_vec(),
        }));
    }

    /// Announces committed changes: the new sequence to sync sessions and
    /// each path to subscribers of [`Shared::changes`].
    pub fn publish(&self, seq: u64, paths: impl IntoIterator<Item = String>) {
        self.seq.send_if_modified(|s| {
            if seq > *s {
                *s = seq;
                true
            } else {
                false
            }
        });
        for p in paths {
            let _ = self.changes.send(p);
        }
    }
}
