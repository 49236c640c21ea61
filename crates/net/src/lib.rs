//! Sovryn's peer-to-peer sync over iroh.
//!
//! One QUIC connection per peer on ALPN `sovryn/sync/1` (see
//! `docs/protocol.md`). Only endpoint ids in the allowlist get past the TLS
//! handshake ([`Allowlist`], run in iroh's `after_handshake` hook). On a
//! connection both sides send `Hello`, then stream their change log to each
//! other from where the other left off, then every new local change as it
//! is committed. Missing chunks are fetched on separate streams and checked
//! against their ids before they are stored.

pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iroh::endpoint::{presets, AfterHandshakeOutcome, Connection, EndpointHooks};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey};
use serde::Serialize;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::Node;
use sovryn_store::{Causality, ChunkId, Entry};
use tokio::sync::{broadcast, watch};

pub use wire::ALPN;
use wire::{Frame, Msg, WireRecord};

/// Records per `Index` message.
const INDEX_BATCH: usize = 500;
/// Chunk ids per `GetChunks` stream.
const CHUNKS_PER_REQUEST: usize = 256;
/// How long to wait for the peer's `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// The opened node, shared between the daemon's tasks.
pub type SharedNode = Arc<Mutex<Node>>;

/// The node plus the notifications its commits raise.
#[derive(Clone)]
pub struct Shared {
    /// The node. Lock it only inside `spawn_blocking` (see [`Shared::with_node`]).
    pub node: SharedNode,
    /// Relative paths whose record changed (scans and applied remote states).
    pub changes: broadcast::Sender<String>,
    /// The store's newest change-log sequence.
    pub seq: watch::Sender<u64>,
}

impl Shared {
    /// Wraps an opened node.
    pub fn new(node: Node) -> Result<Self> {
        let seq = node.store.sequence()?;
        Ok(Shared {
            node: Arc::new(Mutex::new(node)),
            changes: broadcast::channel(4096).0,
            seq: watch::channel(seq).0,
        })
    }

    /// Runs `f` with the node locked, on a blocking thread.
    pub async fn with_node<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = node
                .lock()
                .map_err(|_| anyhow::anyhow!("node lock poisoned"))?;
            f(&mut guard)
        })
        .await
        .context("node task panicked")?
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

/// The allowlist: endpoint ids that may connect, checked right after the
/// TLS handshake, before any application byte.
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Arc<RwLock<HashMap<EndpointId, PeerConfig>>>);

impl Allowlist {
    /// The peer's config when it is allowed.
    pub fn get(&self, id: &EndpointId) -> Option<PeerConfig> {
        self.0.read().ok()?.get(id).cloned()
    }
    fn all(&self) -> Vec<(EndpointId, PeerConfig)> {
        self.0
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }
    fn replace(&self, peers: HashMap<EndpointId, PeerConfig>) {
        if let Ok(mut m) = self.0.write() {
            *m = peers;
        }
    }
}

impl EndpointHooks for Allowlist {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let allowed = self
            .0
            .read()
            .map(|m| m.contains_key(&conn.remote_id()))
            .unwrap_or(false);
        if allowed {
            AfterHandshakeOutcome::Accept
        } else {
            tracing::warn!(
                "refused a connection from unknown endpoint {}",
                conn.remote_id()
            );
            AfterHandshakeOutcome::Reject {
                error_code: 403u32.into(),
                reason: b"not an allowed peer".to_vec(),
            }
        }
    }
}

/// Parses peer configs into the allowlist map, skipping (and logging) bad ids.
pub fn peer_map(peers: &[PeerConfig]) -> HashMap<EndpointId, PeerConfig> {
    let mut out = HashMap::new();
    for p in peers {
        match p.id.parse::<EndpointId>() {
            Ok(id) => {
                out.insert(id, p.clone());
            }
            Err(e) => tracing::warn!("peer {}: bad endpoint id: {e}", p.id),
        }
    }
    out
}

/// What this node knows about a peer right now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    /// Endpoint id.
    pub id: String,
    /// Configured name, else the name it announced.
    pub name: Option<String>,
    /// Open sessions with it.
    pub connected: u32,
    /// Its newest sequence as of its `Hello`.
    pub remote_seq: u64,
    /// Its change log applied here up to this sequence.
    pub received_upto: u64,
    /// Our change log sent to it up to this sequence.
    pub sent_upto: u64,
    /// The last error of a session or a dial.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct PeerState {
    status: PeerStatus,
    /// Open connections and whether this node dialed each.
    conns: Vec<(Connection, bool)>,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Duration,
}

/// The sync service: an iroh endpoint and the sessions with peers.
pub struct SyncNet {
    endpoint: Endpoint,
    shared: Shared,
    allow: Allowlist,
    state: Mutex<HashMap<EndpointId, PeerState>>,
    folder_id: String,
    name: String,
    short_id: String,
}

impl std::fmt::Debug for SyncNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncNet")
            .field("id", &self.endpoint.id())
            .finish()
    }
}

fn meta_key(peer: &EndpointId) -> String {
    format!("peer.{peer}.seq")
}

impl SyncNet {
    /// Binds the endpoint on `listen` with the node's key. Relays and
    /// address lookup are off: peers are reached at their configured addresses.
    pub async fn bind(
        shared: Shared,
        listen: SocketAddr,
        peers: &[PeerConfig],
    ) -> Result<Arc<Self>> {
        let (secret, folder_id, name, short_id): (SecretKey, String, String, String) = {
            let n = shared
                .node
                .lock()
                .map_err(|_| anyhow::anyhow!("node lock poisoned"))?;
            (
                n.secret.clone(),
                n.store.folder_id().to_owned(),
                n.config.node_name.clone(),
                n.short_id.clone(),
            )
        };
        let allow = Allowlist::default();
        allow.replace(peer_map(peers));
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(secret)
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(RelayMode::Disabled)
            .hooks(allow.clone())
            .clear_ip_transports()
            .bind_addr(listen)
            .with_context(|| format!("bad listen address {listen}"))?
            .bind()
            .await
            .with_context(|| format!("binding the sync endpoint on {listen}"))?;
        Ok(Arc::new(SyncNet {
            endpoint,
            shared,
            allow,
            state: Mutex::new(HashMap::new()),
            folder_id,
            name,
            short_id,
        }))
    }

    /// This endpoint's id (the node id).
    pub fn id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The sockets actually bound.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Replaces the allowlist; sessions with peers no longer in it are closed.
    pub fn set_peers(&self, peers: &[PeerConfig]) {
        let map = peer_map(peers);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (id, s) in st.iter_mut() {
            if !map.contains_key(id) {
                for (c, _) in s.conns.drain(..) {
                    c.close(403u32.into(), b"peer removed");
                }
            }
        }
        st.retain(|id, _| map.contains_key(id));
        self.allow.replace(map);
    }

    /// Status of every configured peer.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PeerStatus> = self
            .allow
            .all()
            .into_iter()
            .map(|(id, cfg)| {
                let mut s = st.get(&id).map(|s| s.status.clone()).unwrap_or_default();
                s.id = id.to_string();
                if cfg.name.is_some() {
                    s.name = cfg.name.clone();
                }
                s
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Accepts connections and dials configured peers until the endpoint closes.
    pub async fn run(self: Arc<Self>) {
        let dialer = tokio::spawn(self.clone().dial_loop());
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => me.run_session(conn, false).await,
                    Err(e) => tracing::info!("incoming connection failed: {e}"),
                }
            });
        }
        dialer.abort();
    }

    /// Closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        self.endpoint.close().await;
    }

    async fn dial_loop(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let due: Vec<(EndpointId, PeerConfig)> = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.allow
                    .all()
                    .into_iter()
                    .filter(|(id, cfg)| {
                        if cfg.addresses.is_empty() {
                            return false;
                        }
                        let s = st.entry(*id).or_default();
                        if s.dialing
                            || s.status.connected > 0
                            || s.next_dial.is_some_and(|t| t > now)
                        {
                            return false;
                        }
                        s.dialing = true;
                        true
                    })
                    .collect()
            };
            for (id, cfg) in due {
                let me = self.clone();
                tokio::spawn(async move {
                    let res = me.dial(id, &cfg).await;
                    let conn = {
                        let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
                        let s = st.entry(id).or_default();
                        match res {
                            Ok(conn) => {
                                s.backoff = Duration::ZERO;
                                s.next_dial = None;
                                Some(conn)
                            }
                            Err(e) => {
                                tracing::info!("dialing {}: {e:#}", id.fmt_short());
                                s.dialing = false;
                                s.status.last_error = Some(format!("{e:#}"));
                                s.backoff = (s.backoff * 2)
                                    .clamp(Duration::from_millis(500), Duration::from_secs(30));
                                s.next_dial = Some(Instant::now() + s.backoff);
                                None
                            }
                        }
                    };
                    if let Some(conn) = conn {
                        me.run_session(conn, true).await;
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn dial(&self, id: EndpointId, cfg: &PeerConfig) -> Result<Connection> {
        let mut addr = EndpointAddr::new(id);
        for a in &cfg.addresses {
            match tokio::net::lookup_host(a.as_str()).await {
                Ok(it) => {
                    for sa in it {
                        addr = addr.with_ip_addr(sa);
                    }
                }
                Err(e) => tracing::warn!("peer address {a}: {e}"),
            }
        }
        let conn = tokio::time::timeout(Duration::from_secs(15), self.endpoint.connect(addr, ALPN))
            .await
            .context("timed out")??;
        Ok(conn)
    }

    async fn run_session(self: Arc<Self>, conn: Connection, dialer: bool) {
        let peer = conn.remote_id();
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = st.entry(peer).or_default();
            s.status.connected += 1;
            s.conns.push((conn.clone(), dialer));
            // Both sides may have dialed: keep the connection dialed by the
            // smaller id, which both sides agree on, and close the other.
            let preferred = self.endpoint.id() < peer;
            if s.conns.iter().any(|(_, d)| *d == preferred) {
                for (c, d) in &s.conns {
                    if *d != preferred {
                        tracing::info!("closing a duplicate connection with {}", peer.fmt_short());
                        c.close(1u32.into(), b"duplicate");
                    }
                }
            }
            if dialer {
                s.dialing = false;
            }
        }
        tracing::info!(
            "session with {} ({})",
            peer.fmt_short(),
            if dialer { "dialed" } else { "accepted" }
        );
        let res = self.clone().session(conn.clone(), dialer).await;
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = st.get_mut(&peer) {
                s.status.connected = s.status.connected.saturating_sub(1);
                s.conns.retain(|(c, _)| c.stable_id() != conn.stable_id());
                if let Err(e) = &res {
                    s.status.last_error = Some(format!("{e:#}"));
                }
                if dialer {
                    s.next_dial = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }
        let duplicate = matches!(
            conn.close_reason(),
            Some(iroh::endpoint::ConnectionError::LocallyClosed)
        ) || matches!(
            conn.close_reason(),
            Some(iroh::endpoint::ConnectionError::ApplicationClosed(ref c)) if c.error_code == 1u32.into()
        );
        match res {
            Ok(()) => tracing::info!("session with {} ended", peer.fmt_short()),
            Err(e) if duplicate => {
                tracing::info!("session with {} closed: {e:#}", peer.fmt_short())
            }
            Err(e) => {
                tracing::warn!("session with {}: {e:#}", peer.fmt_short());
                eprintln!("sync with {}: {e:#}", peer.fmt_short());
            }
        }
        conn.close(0u32.into(), b"bye");
    }

    fn update_status(&self, peer: &EndpointId, f: impl FnOnce(&mut PeerStatus)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st.entry(*peer).or_default().status);
    }

    async fn session(self: Arc<Self>, conn: Connection, dialer: bool) -> Result<()> {
        let peer = conn.remote_id();
        let cfg = self.allow.get(&peer).context("peer is not allowed")?;
        let (mut send, mut recv) = if dialer {
            conn.open_bi().await?
        } else {
            conn.accept_bi().await?
        };
        let key = meta_key(&peer);
        let (my_seq, want_since) = self
            .shared
            .with_node(move |n| {
                let want = n
                    .store
                    .meta(&key)?
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                Ok((n.store.sequence()?, want))
            })
            .await?;
        wire::write_msg(
            &mut send,
            &Msg::Hello {
                version: wire::VERSION,
                folder_id: self.folder_id.clone(),
                name: self.name.clone(),
                short_id: self.short_id.clone(),
                seq: my_seq,
                want_since,
            },
        )
        .await?;
        let hello = tokio::time::timeout(HELLO_TIMEOUT, wire::read_msg(&mut recv))
            .await
            .context("no Hello from the peer")??;
        let (their_name, their_seq, their_want) = match hello {
            Some(Msg::Hello {
                version,
                folder_id,
                name,
                seq,
                want_since,
                ..
            }) => {
                if folder_id != self.folder_id {
                    let message = format!(
                        "folder mismatch: this node keeps folder {}, the peer keeps {folder_id}; join with 'sovryn init --folder-key-file' using 'sovryn folder-key' of a member",
                        self.folder_id
                    );
                    let _ = wire::write_msg(
                        &mut send,
                        &Msg::Error {
                            message: message.clone(),
                        },
                    )
                    .await;
                    let _ = send.finish();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    conn.close(2u32.into(), b"folder mismatch");
                    bail!(message);
                }
                if version != wire::VERSION {
                    bail!(
                        "peer speaks protocol version {version}, this node {}",
                        wire::VERSION
                    );
                }
                (name, seq, want_since)
            }
            Some(Msg::Error { message }) => bail!("peer refused: {message}"),
            Some(other) => bail!("expected Hello, got {other:?}"),
            None => bail!("peer closed the stream before Hello"),
        };
        self.update_status(&peer, |s| {
            if s.name.is_none() {
                s.name = Some(their_name.clone());
            }
            s.remote_seq = their_seq;
            s.received_upto = want_since;
            s.last_error = None;
        });
        let sender = {
            let me = self.clone();
            let cfg = cfg.clone();
            async move { me.send_index(peer, &cfg, send, their_want).await }
        };
        let server = {
            let me = self.clone();
            let conn = conn.clone();
            async move { me.serve_chunks(conn).await }
        };
        let receiver = {
            let me = self.clone();
            let conn = conn.clone();
            async move { me.receive_index(peer, &cfg, &conn, recv).await }
        };
        tokio::select! {
            r = sender => r.context("sending"),
            r = server => r.context("serving chunks"),
            r = receiver => r.context("receiving"),
        }
    }

    async fn send_index(
        &self,
        peer: EndpointId,
        cfg: &PeerConfig,
        mut send: iroh::endpoint::SendStream,
        from: u64,
    ) -> Result<()> {
        let mut sent = from;
        let mut rx = self.shared.seq.subscribe();
        loop {
            rx.borrow_and_update();
            let after = sent;
            let batch = self
                .shared
                .with_node(move |n| Ok(n.store.changes_since(after, INDEX_BATCH)?))
                .await?;
            let Some(last) = batch.last() else {
                if rx.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            };
            sent = last.seq;
            let records: Vec<WireRecord> = batch
                .into_iter()
                .filter(|r| in_scope(cfg, &r.path))
                .map(|r| WireRecord {
                    path: r.path,
                    seq: r.seq,
                    entry: r.entry,
                })
                .collect();
            tracing::debug!("sending {} records up to {sent}", records.len());
            wire::write_msg(
                &mut send,
                &Msg::Index {
                    records,
                    upto: sent,
                },
            )
            .await?;
            self.update_status(&peer, |s| s.sent_upto = sent);
        }
    }

    async fn serve_chunks(&self, conn: Connection) -> Result<()> {
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let r: Result<()> = async {
                    let Some(Msg::GetChunks { ids }) = wire::read_msg(&mut recv).await? else {
                        bail!("expected GetChunks");
                    };
                    anyhow::ensure!(ids.len() <= 4 * CHUNKS_PER_REQUEST, "too many chunks asked");
                    for group in ids.chunks(16) {
                        let group = group.to_vec();
                        let found = shared
                            .with_node(move |n| {
                                Ok(group
                                    .into_iter()
                                    .map(|id| (id, n.store.read_chunk(&id).ok()))
                                    .collect::<Vec<_>>())
                            })
                            .await?;
                        for (id, data) in found {
                            match data {
                                Some(d) => wire::write_chunk(&mut send, &id, &d).await?,
                                None => wire::write_msg(&mut send, &Msg::NoChunk { id }).await?,
                            }
                        }
                    }
                    send.finish()?;
                    let _ = send.stopped().await;
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    tracing::info!("chunk request: {e:#}");
                }
            });
        }
    }

    async fn fetch_chunks(&self, conn: &Connection, ids: Vec<ChunkId>) -> Result<()> {
        for group in ids.chunks(CHUNKS_PER_REQUEST) {
            let (mut send, mut recv) = conn.open_bi().await?;
            wire::write_msg(
                &mut send,
                &Msg::GetChunks {
                    ids: group.to_vec(),
                },
            )
            .await?;
            send.finish()?;
            let mut wanted: std::collections::HashSet<ChunkId> = group.iter().copied().collect();
            let mut buf: Vec<(ChunkId, Vec<u8>)> = Vec::new();
            let mut buf_bytes = 0usize;
            while let Some(frame) = wire::read_frame(&mut recv).await? {
                match frame {
                    Frame::Chunk(id, data) => {
                        anyhow::ensure!(
                            wanted.remove(&id),
                            "peer sent a chunk that was not asked for"
                        );
                        buf_bytes += data.len();
                        buf.push((id, data));
                        if buf_bytes >= 8 << 20 {
                            self.put_chunks(std::mem::take(&mut buf)).await?;
                            buf_bytes = 0;
                        }
                    }
                    Frame::Msg(Msg::NoChunk { id }) => bail!("peer lacks chunk {id}"),
                    Frame::Msg(m) => bail!("unexpected message on a chunk stream: {m:?}"),
                }
            }
            self.put_chunks(buf).await?;
            anyhow::ensure!(
                wanted.is_empty(),
                "peer sent {} chunks too few",
                wanted.len()
            );
        }
        Ok(())
    }

    async fn put_chunks(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.shared
            .with_node(move |n| {
                for (id, data) in &chunks {
                    // put_chunk checks the data against its id.
                    n.store.put_chunk(id, data)?;
                }
                Ok(())
            })
            .await
    }

    async fn receive_index(
        &self,
        peer: EndpointId,
        cfg: &PeerConfig,
        conn: &Connection,
        mut recv: iroh::endpoint::RecvStream,
    ) -> Result<()> {
        let key = meta_key(&peer);
        // Once a state failed to apply, this session never records past it.
        let mut floor: Option<u64> = None;
        loop {
            let msg = match wire::read_msg(&mut recv).await? {
                Some(m) => m,
                None => return Ok(()),
            };
            let (records, upto) = match msg {
                Msg::Index { records, upto } => {
                    tracing::debug!("received {} records up to {upto}", records.len());
                    (records, upto)
                }
                Msg::Error { message } => bail!("peer: {message}"),
                other => bail!("unexpected message {other:?}"),
            };
            let mut seq_of: HashMap<String, u64> = HashMap::new();
            let list: Vec<(String, Entry)> = if cfg.read_only {
                Vec::new()
            } else {
                records
                    .into_iter()
                    .filter(|r| in_scope(cfg, &r.path))
                    .map(|r| {
                        seq_of.insert(r.path.clone(), r.seq);
                        (r.path, r.entry)
                    })
                    .collect()
            };
            // Keep only states that may win here, and find the chunks they need.
            let (list, missing) = self
                .shared
                .with_node(move |n| {
                    let mut keep = Vec::new();
                    for (path, entry) in list {
                        let local = n.store.file(&path)?;
                        let useful = match &local {
                            None => true,
                            Some(l) => !matches!(
                                entry.vv.compare(&l.entry.vv),
                                Causality::Equal | Causality::DominatedBy
                            ),
                        };
                        if useful {
                            keep.push((path, entry));
                        }
                    }
                    let missing = n.missing_chunks(keep.iter().map(|(_, e)| e))?;
                    Ok((keep, missing))
                })
                .await?;
            if !missing.is_empty() {
                let n = missing.len();
                self.fetch_chunks(conn, missing).await?;
                tracing::debug!("fetched {n} chunks");
            }
            let key = key.clone();
            let (seq, changed, upto, new_floor) = self
                .shared
                .with_node(move |n| {
                    let report = if list.is_empty() {
                        Default::default()
                    } else {
                        n.apply_remote(&list)?
                    };
                    // A state that failed is asked for again from just before
                    // it on the next session.
                    let floor = report
                        .failed
                        .iter()
                        .filter_map(|(p, _)| seq_of.get(p))
                        .map(|s| s.saturating_sub(1))
                        .chain(floor)
                        .min();
                    let upto = floor.map_or(upto, |f| f.min(upto));
                    n.store.set_meta(&key, &upto.to_string())?;
                    for c in &report.conflicts {
                        tracing::warn!("conflict: kept the other version as {c}");
                    }
                    Ok((n.store.sequence()?, report.changed, upto, floor))
                })
                .await?;
            tracing::debug!("applied; sequence {seq}");
            floor = new_floor;
            self.shared.publish(seq, changed);
            self.update_status(&peer, |s| {
                s.received_upto = upto;
                s.remote_seq = s.remote_seq.max(upto);
            });
        }
    }
}

/// Whether `path` is within the prefixes a peer is limited to.
pub fn in_scope(cfg: &PeerConfig, path: &str) -> bool {
    cfg.paths.is_empty()
        || cfg.paths.iter().any(|p| {
            let p = p.trim_matches('/');
            p.is_empty()
                || path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
                || p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}
