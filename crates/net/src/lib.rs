//! Sovryn's peer-to-peer sync over iroh.
//!
//! One QUIC connection per peer on ALPN `sovryn/sync/2` (see
//! `docs/protocol.md`). Only endpoint ids in the allowlist get past the TLS
//! handshake ([`Allowlist`], run in iroh's `after_handshake` hook). On a
//! connection both sides send `Hello`, then stream their change log to each
//! other from where the other left off, then every new local change as it
//! is committed. Missing chunks are fetched on separate streams and checked
//! against their ids before they are stored.

pub mod membership;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iroh::address_lookup::AddrFilter;
use iroh::endpoint::{presets, AfterHandshakeOutcome, Connection, EndpointHooks};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, RelayUrl, SecretKey};
use iroh_mainline_address_lookup::DhtAddressLookup;
use iroh_mdns_address_lookup::MdnsAddressLookup;
use serde::Serialize;
use sovryn_engine::config::{PeerConfig, SyncConfig};
use sovryn_engine::Node;
use sovryn_store::{Causality, ChunkCodec, ChunkId, Entry, SealedChunk, Store};
use tokio::sync::{broadcast, watch};

pub use wire::ALPN;
use wire::{Frame, LogCheck, Msg, PeerRecord, WireRecord};

/// Errors of the sync service's public API. (Sessions with peers report
/// their failures as `anyhow` chains in logs and peer status: they never
/// reach a caller.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] sovryn_store::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] sovryn_engine::Error),
    /// The endpoint could not be set up: a bad or busy listen address, a
    /// bad relay URL.
    #[error("{0}")]
    Endpoint(String),
    /// A worker task panicked or a lock was poisoned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Most records per `Index` message (the receiver applies up to 2000 in
/// one group: one pair of `syncfs` and one transaction).
const INDEX_BATCH: usize = 2000;
/// Most chunk ids named by the records of one `Index` message (keeps the
/// JSON well under the frame cap when files are large).
const INDEX_CHUNKS: usize = 16_384;
/// Chunk ids per `GetChunks` stream.
const CHUNKS_PER_REQUEST: usize = 128;
/// `GetChunks` streams in flight per peer.
const FETCH_STREAMS: usize = 4;
/// Received chunk bytes checked and stored together (at most).
const PUT_BYTES: usize = 8 << 20;
/// Received chunks queued for checking and storing (at most 256 KiB each).
const STORE_QUEUE: usize = 256;
/// Chunks read from the store per blocking call when serving.
const SERVE_GROUP: usize = 16;
/// Read-only store handles for the change log and chunk reads.
const READERS: usize = 3;
/// How long after a state failed to apply its session ends, so the next
/// one retries it.
const APPLY_RETRY: Duration = Duration::from_secs(5);
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
    /// Read-only handles on the same store: the change log and chunk reads
    /// served to peers never wait for the node's writes.
    readers: Arc<Vec<Mutex<Store>>>,
    /// The folder's codec, to check and seal received chunks off the lock.
    codec: ChunkCodec,
}

impl Shared {
    /// Wraps an opened node.
    pub fn new(node: Node) -> Result<Self, Error> {
        let seq = node.store.sequence()?;
        let readers = (0..READERS)
            .map(|_| node.store.reader().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let codec = node.store.codec().clone();
        Ok(Shared {
            node: Arc::new(Mutex::new(node)),
            changes: broadcast::channel(4096).0,
            seq: watch::channel(seq).0,
            readers: Arc::new(readers),
            codec,
        })
    }

    /// Runs `f` with a read-only store handle, on a blocking thread. It
    /// sees everything committed, never what a writer has only appended.
    pub async fn with_reader<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let free = readers.iter().find_map(|r| r.try_lock().ok());
            let guard = match free {
                Some(g) => g,
                None => readers[0]
                    .lock()
                    .map_err(|_| Error::Internal("store reader lock poisoned".into()))?,
            };
            f(&guard)
        })
        .await
        .map_err(|e| Error::Internal(format!("store reader task: {e}")))?
    }

    /// Runs `f` with the node locked, on a blocking thread.
    pub async fn with_node<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = node
                .lock()
                .map_err(|_| Error::Internal("node lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Internal(format!("node task: {e}")))?
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
    /// Bytes sent to it on the wire (QUIC packets: UDP payloads, headers,
    /// acks and retransmissions included) since this node started.
    pub bytes_sent: u64,
    /// Bytes received from it on the wire, counted the same way.
    pub bytes_received: u64,
    /// Chunks fetched from it since this node started, checked and appended
    /// to the store (indexed at its next flush, at most 32 MiB later).
    pub chunks_received: u64,
    /// Our change log acknowledged by it (applied there) up to this sequence.
    pub acked_upto: u64,
    /// QUIC packets to it declared lost on the open connections.
    pub lost_packets: u64,
}

#[derive(Default)]
struct PeerState {
    status: PeerStatus,
    /// Wire bytes (sent, received) of connections already closed.
    closed_bytes: (u64, u64),
    /// Open connections and whether this node dialed each.
    conns: Vec<(Connection, bool)>,
    /// Connections whose handshake completed (by `stable_id`): only those
    /// are probed for liveness, a probe must not race a handshake.
    established: std::collections::HashSet<usize>,
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
    /// Bandwidth limits (`sync.max_send_kib_per_sec`, `sync.max_recv_kib_per_sec`).
    limits: RwLock<Limits>,
    /// How peers are found (fixed at bind).
    discovery: Discovery,
}

/// A token bucket in KiB: one cell per KiB.
type Bucket = Arc<governor::DefaultDirectRateLimiter>;

/// Upload and download limits; `None` is unlimited.
#[derive(Default, Clone)]
struct Limits {
    send: Option<Bucket>,
    recv: Option<Bucket>,
}

fn bucket(kib_per_sec: u64) -> Option<Bucket> {
    let rate = std::num::NonZeroU32::new(u32::try_from(kib_per_sec).unwrap_or(u32::MAX))?;
    // A burst of at least one whole chunk (256 KiB) so any chunk can pass.
    let burst = rate.max(std::num::NonZeroU32::new(256).unwrap_or(std::num::NonZeroU32::MIN));
    Some(Arc::new(governor::RateLimiter::direct(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

/// Waits until `bytes` may pass `bucket`.
async fn throttle(bucket: Option<Bucket>, bytes: usize) {
    let Some(b) = bucket else { return };
    let kib = bytes.div_ceil(1024).clamp(1, 256) as u32;
    if let Some(n) = std::num::NonZeroU32::new(kib) {
        let _ = b.until_n_ready(n).await;
    }
}

/// What `sovryn test-network` reports about one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkTest {
    /// Endpoint id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Whether a session is open or one could be opened.
    pub reachable: bool,
    /// Time to open a connection, when none was open (ms).
    pub connect_ms: Option<f64>,
    /// Round-trip time of the connection's selected path (ms).
    pub rtt_ms: Option<f64>,
    /// Bytes downloaded from the peer for the throughput probe.
    pub probe_bytes: u64,
    /// Download throughput from the peer (MiB/s).
    pub download_mib_per_sec: Option<f64>,
    /// What went wrong.
    pub error: Option<String>,
}

/// Largest throughput probe a node answers.
const MAX_PROBE: u64 = 64 << 20;

/// Registers the sync metrics' descriptions with the global recorder
/// (the MCP server's `/metrics` exports them).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "files_synced_total",
        "Remote file states written and recorded on this node"
    );
    metrics::describe_counter!(
        "bytes_transferred_total",
        metrics::Unit::Bytes,
        "Chunk bytes sent to and received from peers (label direction)"
    );
    metrics::describe_counter!(
        "sync_conflicts_total",
        "Conflict copies made while applying remote states"
    );
    metrics::describe_counter!(
        "sync_errors_total",
        "Sync sessions that ended in an error, and remote states that could not be applied"
    );
    metrics::describe_histogram!(
        "sync_latency_seconds",
        metrics::Unit::Seconds,
        "From receiving a peer's index message to its states being on disk and recorded"
    );
    metrics::describe_gauge!(
        "peer_connections_active",
        "Open sync connections with peers"
    );
    metrics::describe_gauge!(
        "storage_used_bytes",
        metrics::Unit::Bytes,
        "Bytes of the encrypted chunk store (pack files)"
    );
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

/// How a node finds its peers and is found by them, beyond the addresses
/// configured with `sovryn peers add --address` (from the `sync` section of
/// `config.toml`; fixed when the endpoint binds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Discovery {
    /// mDNS on the local network (`sync.mdns`; off when listening on loopback).
    pub mdns: bool,
    /// The BitTorrent mainline DHT (`sync.dht`).
    pub dht: bool,
    /// The relay server (`sync.relay_url`), which every peer is assumed to use too.
    #[serde(serialize_with = "ser_relay")]
    pub relay: Option<RelayUrl>,
}

fn ser_relay<S: serde::Serializer>(r: &Option<RelayUrl>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(u) => s.serialize_some(&u.to_string()),
        None => s.serialize_none(),
    }
}

impl Discovery {
    /// The discovery a node listening on `listen` runs with `sync`. mDNS is
    /// left off on a loopback `listen` address: it would announce addresses
    /// no other machine can reach (and test nodes on 127.0.0.1 stay silent).
    pub fn from_config(sync: &SyncConfig, listen: SocketAddr) -> Result<Self, Error> {
        let relay = match sync.relay() {
            Some(u) => Some(u.parse::<RelayUrl>().map_err(|e| {
                Error::Endpoint(format!("sync.relay_url '{u}' is not a valid URL: {e}"))
            })?),
            None => None,
        };
        Ok(Discovery {
            mdns: sync.mdns && !listen.ip().is_loopback(),
            dht: sync.dht,
            relay,
        })
    }

    /// Whether a peer configured without addresses can still be dialed:
    /// by an address lookup, or through the shared relay.
    pub fn finds_peers(&self) -> bool {
        self.mdns || self.dht || self.relay.is_some()
    }
}

/// The mDNS service name Sovryn nodes announce (`_sovryn._udp.local`), so
/// they only see each other, not every iroh application on the network.
const MDNS_SERVICE: &str = "sovryn";

/// Adds the address lookups `discovery` asks for to a bound endpoint. One
/// that cannot start (e.g. no multicast-capable interface) is logged and
/// left out; the node still runs with its configured addresses.
fn add_address_lookups(endpoint: &Endpoint, discovery: &mut Discovery) -> Result<(), Error> {
    let services = endpoint
        .address_lookup()
        .map_err(|e| Error::Endpoint(format!("the endpoint's address lookup: {e}")))?;
    if discovery.mdns {
        match MdnsAddressLookup::builder()
            .service_name(MDNS_SERVICE)
            .build(endpoint.id())
        {
            Ok(mdns) => {
                services.add(mdns);
                tracing::info!("LAN discovery (mDNS) on");
            }
            Err(e) => {
                tracing::warn!("LAN discovery (mDNS) could not start: {e}");
                discovery.mdns = false;
            }
        }
    }
    if discovery.dht {
        // With a relay, only the relay URL is published (the node's IP
        // addresses stay out of the public DHT); without one, the direct
        // addresses are, or the record would be empty.
        let filter = if discovery.relay.is_some() {
            AddrFilter::relay_only()
        } else {
            AddrFilter::unfiltered()
        };
        match DhtAddressLookup::builder()
            .secret_key(endpoint.secret_key().clone())
            .addr_filter(filter)
            .build()
        {
            Ok(dht) => {
                services.add(dht);
                tracing::info!("DHT discovery (mainline) on");
            }
            Err(e) => {
                tracing::warn!("DHT discovery could not start: {e}");
                discovery.dht = false;
            }
        }
    }
    Ok(())
}

impl SyncNet {
    /// Binds the endpoint on `listen` with the node's key. Peers are reached
    /// at their configured addresses, and, as the node's `sync` config says
    /// ([`Discovery`]), found by mDNS on the LAN (on by default), the
    /// mainline DHT (off by default) and through a relay (none by default).
    pub async fn bind(
        shared: Shared,
        listen: SocketAddr,
        peers: &[PeerConfig],
    ) -> Result<Arc<Self>, Error> {
        let (secret, folder_id, name, short_id, sync): (
            SecretKey,
            String,
            String,
            String,
            SyncConfig,
        ) = {
            let n = shared
                .node
                .lock()
                .map_err(|_| Error::Internal("node lock poisoned".into()))?;
            (
                n.secret.clone(),
                n.store.folder_id().to_owned(),
                n.config.node_name.clone(),
                n.short_id.clone(),
                n.config.sync.clone(),
            )
        };
        let mut discovery = Discovery::from_config(&sync, listen)?;
        if sync.mdns && !discovery.mdns {
            tracing::info!("LAN discovery (mDNS) off: listening on loopback {listen}");
        }
        let relay_mode = match &discovery.relay {
            Some(url) => RelayMode::custom([url.clone()]),
            None => RelayMode::Disabled,
        };
        let allow = Allowlist::default();
        allow.replace(peer_map(peers));
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(secret)
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(relay_mode)
            .hooks(allow.clone())
            .clear_ip_transports()
            .bind_addr(listen)
            .map_err(|e| Error::Endpoint(format!("bad listen address {listen}: {e}")))?
            .bind()
            .await
            .map_err(|e| Error::Endpoint(format!("binding the sync endpoint on {listen}: {e}")))?;
        add_address_lookups(&endpoint, &mut discovery)?;
        if let Some(url) = &discovery.relay {
            tracing::info!("relay {url}");
        }
        Ok(Arc::new(SyncNet {
            endpoint,
            shared,
            allow,
            state: Mutex::new(HashMap::new()),
            folder_id,
            name,
            short_id,
            limits: RwLock::new(Limits::default()),
            discovery,
        }))
    }

    /// How this node finds peers (what actually started).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// This endpoint's id (the node id).
    pub fn id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The sockets actually bound.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Replaces the allowlist. Sessions with peers no longer in it are
    /// closed, and so are sessions with peers whose rights (read-only, path
    /// scope) changed: every decision of a session reads the allowlist, and
    /// the peer reconnects at once under its new rights.
    pub fn set_peers(&self, peers: &[PeerConfig]) {
        let map = peer_map(peers);
        // The new rights are in force before any session is told.
        let old = self.allow.all();
        self.allow.replace(map.clone());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (id, s) in st.iter_mut() {
            let before = old.iter().find(|(o, _)| o == id).map(|(_, c)| c);
            let reason: Option<(u32, &[u8])> = match (map.get(id), before) {
                (None, _) => Some((403, b"peer removed")),
                (Some(now), Some(b)) if now.read_only != b.read_only || now.paths != b.paths => {
                    Some((3, b"rights changed"))
                }
                _ => None,
            };
            if let Some((code, why)) = reason {
                for (c, _) in s.conns.drain(..) {
                    c.close(code.into(), why);
                }
                s.next_dial = None;
                s.dialing = false;
            }
        }
        st.retain(|id, _| map.contains_key(id));
    }

    /// Sets the bandwidth limits in KiB/s (0: unlimited), for every peer together.
    pub fn set_bandwidth(&self, send_kib_per_sec: u64, recv_kib_per_sec: u64) {
        if let Ok(mut l) = self.limits.write() {
            *l = Limits {
                send: bucket(send_kib_per_sec),
                recv: bucket(recv_kib_per_sec),
            };
        }
    }

    fn limits(&self) -> Limits {
        self.limits.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Tests the configured peers (or the one with `only` as id or name):
    /// reachability (dialing when no session is open), the round-trip time
    /// and the download throughput of a `probe_bytes` transfer.
    pub async fn test_network(&self, only: Option<&str>, probe_bytes: u64) -> Vec<NetworkTest> {
        let mut out = Vec::new();
        for (id, cfg) in self.allow.all() {
            if let Some(o) = only {
                if id.to_string() != o && cfg.name.as_deref() != Some(o) {
                    continue;
                }
            }
            let mut t = NetworkTest {
                id: id.to_string(),
                name: cfg.name.clone(),
                ..Default::default()
            };
            let open = {
                let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.get(&id)
                    .and_then(|s| s.conns.first().map(|(c, _)| c.clone()))
            };
            let conn = match open {
                Some(c) => Some(c),
                None if cfg.addresses.is_empty() && !self.discovery.finds_peers() => {
                    t.error = Some("not connected and no address to dial".into());
                    None
                }
                None => {
                    let started = Instant::now();
                    match self.dial(id, &cfg).await {
                        Ok(c) => {
                            t.connect_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                            Some(c)
                        }
                        Err(e) => {
                            t.error = Some(format!("{e:#}"));
                            None
                        }
                    }
                }
            };
            if let Some(conn) = conn {
                t.reachable = true;
                t.rtt_ms = conn
                    .paths()
                    .iter()
                    .find(|p| p.is_selected())
                    .map(|p| p.rtt().as_secs_f64() * 1000.0);
                match tokio::time::timeout(Duration::from_secs(30), probe(&conn, probe_bytes)).await
                {
                    Ok(Ok((n, secs))) => {
                        t.probe_bytes = n;
                        if secs > 0.0 {
                            t.download_mib_per_sec = Some(n as f64 / secs / (1024.0 * 1024.0));
                        }
                    }
                    Ok(Err(e)) => t.error = Some(format!("throughput probe: {e:#}")),
                    Err(_) => t.error = Some("throughput probe timed out".into()),
                }
            }
            out.push(t);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Status of every configured peer.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PeerStatus> = self
            .allow
            .all()
            .into_iter()
            .map(|(id, cfg)| {
                let mut s = match st.get(&id) {
                    Some(p) => {
                        let mut s = p.status.clone();
                        let (mut tx, mut rx) = p.closed_bytes;
                        let mut lost = 0;
                        for (c, _) in &p.conns {
                            let cs = c.stats();
                            tx += cs.udp_tx.bytes;
                            rx += cs.udp_rx.bytes;
                            lost += cs.lost_packets;
                        }
                        s.bytes_sent = tx;
                        s.bytes_received = rx;
                        s.lost_packets = lost;
                        s
                    }
                    None => PeerStatus::default(),
                };
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
                        if cfg.addresses.is_empty() && !self.discovery.finds_peers() {
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
        // Peers of a mesh with a relay share it; without addresses, the
        // address lookups (mDNS, DHT) resolve the id.
        if let Some(url) = &self.discovery.relay {
            addr = addr.with_relay_url(url.clone());
        }
        let conn = tokio::time::timeout(Duration::from_secs(15), self.endpoint.connect(addr, ALPN))
            .await
            .context("timed out")??;
        Ok(conn)
    }

    async fn run_session(self: Arc<Self>, conn: Connection, dialer: bool) {
        let peer = conn.remote_id();
        let suspects = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = st.entry(peer).or_default();
            s.status.connected += 1;
            metrics::gauge!("peer_connections_active").increment(1.0);
            // A node dials only while it has no session with the peer, and
            // the peer likewise: an older connection in the same direction
            // is one the other side has given up on (it restarted).
            for (c, d) in &s.conns {
                if *d == dialer {
                    tracing::info!("replacing a stale connection with {}", peer.fmt_short());
                    c.close(1u32.into(), b"replaced");
                }
            }
            s.conns.retain(|(_, d)| *d != dialer);
            s.conns.push((conn.clone(), dialer));
            // Both sides may have dialed: keep the connection dialed by the
            // smaller id, which both sides agree on, and close the other.
            let preferred = self.endpoint.id() < peer;
            if dialer == preferred {
                for (c, d) in &s.conns {
                    if *d != preferred {
                        tracing::info!("closing a duplicate connection with {}", peer.fmt_short());
                        c.close(1u32.into(), b"duplicate");
                    }
                }
                Vec::new()
            } else {
                let established = &s.established;
                let older: Vec<Connection> = s
                    .conns
                    .iter()
                    .filter(|(_, d)| *d == preferred)
                    .map(|(c, _)| c.clone())
                    .collect();
                // One still in its handshake is fresh: the rule applies at once.
                if older.iter().any(|c| !established.contains(&c.stable_id())) {
                    tracing::info!("closing a duplicate connection with {}", peer.fmt_short());
                    conn.close(1u32.into(), b"duplicate");
                    Vec::new()
                } else {
                    older
                }
            }
        };
        // This connection loses to an older one in the preferred direction,
        // unless that one is dead: after a crash and a quick restart the
        // peer no longer knows it, and keeping it would stall sync until
        // it times out. A probe on it answers within a round trip if alive.
        for old in suspects {
            let alive = matches!(
                tokio::time::timeout(Duration::from_millis(1500), probe(&old, 0)).await,
                Ok(Ok(_))
            );
            if alive {
                tracing::info!("closing a duplicate connection with {}", peer.fmt_short());
                conn.close(1u32.into(), b"duplicate");
            } else {
                tracing::info!("closing a dead connection with {}", peer.fmt_short());
                old.close(1u32.into(), b"stale");
            }
        }
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = st.entry(peer).or_default();
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
        metrics::gauge!("peer_connections_active").decrement(1.0);
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = st.get_mut(&peer) {
                s.status.connected = s.status.connected.saturating_sub(1);
                s.conns.retain(|(c, _)| c.stable_id() != conn.stable_id());
                s.established.remove(&conn.stable_id());
                let cs = conn.stats();
                s.closed_bytes.0 += cs.udp_tx.bytes;
                s.closed_bytes.1 += cs.udp_rx.bytes;
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
                metrics::counter!("sync_errors_total").increment(1);
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
        self.prove_membership(&conn, &mut send, &mut recv).await?;
        let key = meta_key(&peer);
        let ekey = epoch_key(&peer);
        let ckey = check_key(&peer);
        let (my_seq, my_epoch, want_since, want_epoch, check) = self
            .shared
            .with_node(move |n| {
                let want = n
                    .store
                    .meta(&key)?
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let want_epoch = n
                    .store
                    .meta(&ekey)?
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let check: Option<LogCheck> = n
                    .store
                    .meta(&ckey)?
                    .and_then(|v| serde_json::from_str(&v).ok());
                Ok((
                    n.store.sequence()?,
                    index_epoch(n)?,
                    want,
                    want_epoch,
                    check,
                ))
            })
            .await?;
        wire::write_msg(
            &mut send,
            &Msg::Hello {
                folder_id: self.folder_id.clone(),
                name: self.name.clone(),
                short_id: self.short_id.clone(),
                seq: my_seq,
                want_since,
                epoch: my_epoch,
                want_epoch,
                check,
            },
        )
        .await?;
        let hello = tokio::time::timeout(HELLO_TIMEOUT, wire::read_msg(&mut recv))
            .await
            .context("no Hello from the peer")??;
        let (their_name, their_seq, their_want, their_epoch, their_want_epoch, their_check) =
            match hello {
                Some(Msg::Hello {
                    folder_id,
                    name,
                    seq,
                    want_since,
                    epoch,
                    want_epoch,
                    check,
                    ..
                }) => {
                    // Both proved the folder key, so the ids agree; a mismatch
                    // is a bug or a forgery.
                    anyhow::ensure!(
                        folder_id == self.folder_id,
                        "folder id mismatch after proof"
                    );
                    (name, seq, want_since, epoch, want_epoch, check)
                }
                Some(Msg::Error { message }) => bail!("peer refused: {message}"),
                Some(other) => bail!("expected Hello, got {}", msg_name(&other)),
                None => bail!("peer closed the stream before Hello"),
            };
        // Where each side's change log resumes. Both sides decide the same
        // from the same two Hellos: another epoch, or a log that went back
        // below what the other side applied (a store restored from an old
        // copy), means everything again from zero.
        // The peer's last applied state of this node's log must still be
        // there (or superseded by a later state that includes it): if not,
        // this store was restored from an old copy, even when its sequence
        // has since grown past where it was.
        let lost = match their_check {
            Some(c) => {
                self.shared
                    .with_reader(move |s| {
                        Ok(match s.file(&c.path)? {
                            Some(rec) => {
                                rec.seq < c.seq
                                    || !matches!(
                                        rec.entry.vv.compare(&c.vv),
                                        Causality::Equal | Causality::Dominates
                                    )
                            }
                            None => true,
                        })
                    })
                    .await?
            }
            None => false,
        };
        let their_from = if their_want_epoch == my_epoch && their_want <= my_seq && !lost {
            their_want
        } else {
            0
        };
        let restarts = want_epoch != their_epoch || their_seq < want_since;
        let want_since = if restarts { 0 } else { want_since };
        {
            let key = meta_key(&peer);
            let ekey = epoch_key(&peer);
            // Our own log went backwards (this store was restored): a new
            // epoch, so every other peer starts over with it too.
            let rotate = their_want_epoch == my_epoch && (their_want > my_seq || lost);
            self.shared
                .with_node(move |n| {
                    if restarts {
                        n.store.set_meta(&key, "0")?;
                    }
                    n.store.set_meta(&ekey, &their_epoch.to_string())?;
                    if rotate {
                        let fresh: u64 = rand::random::<u64>().max(1);
                        n.store.set_meta(INDEX_EPOCH, &fresh.to_string())?;
                    }
                    Ok(())
                })
                .await?;
            if restarts && want_epoch != 0 {
                tracing::warn!(
                    "{}: its change log restarted (epoch or sequence went back); exchanging everything again",
                    peer.fmt_short()
                );
            }
            if rotate {
                tracing::warn!(
                    "{} applied this node's log up to {their_want} (this node's end: {my_seq}), including a state this store no longer has: it was restored from an old copy; new index epoch",
                    peer.fmt_short()
                );
            }
        }
        let their_want = their_from;
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.entry(peer)
                .or_default()
                .established
                .insert(conn.stable_id());
        }
        self.update_status(&peer, |s| {
            if s.name.is_none() {
                s.name = Some(their_name.clone());
            }
            s.remote_seq = their_seq;
            s.received_upto = want_since;
            s.last_error = None;
        });
        // The control stream's sending half carries our index messages and
        // our acks of theirs.
        let send = Arc::new(tokio::sync::Mutex::new(send));
        drop(cfg);
        let sender = {
            let me = self.clone();
            let send = send.clone();
            async move { me.send_index(peer, send, their_want).await }
        };
        let server = {
            let me = self.clone();
            let conn = conn.clone();
            async move { me.serve_chunks(conn).await }
        };
        let receiver = {
            let me = self.clone();
            let conn = conn.clone();
            async move { me.receive_index(peer, &conn, recv, send).await }
        };
        tokio::select! {
            r = sender => r.context("sending"),
            r = server => r.context("serving chunks"),
            r = receiver => r.context("receiving"),
        }
    }

    /// The peer's rights as configured now: every decision of a session
    /// reads them, so narrowing a peer takes effect at once.
    fn rights(&self, peer: &EndpointId) -> Result<PeerConfig> {
        self.allow.get(peer).context("peer is no longer allowed")
    }

    /// Both sides prove they hold the folder key (see [`membership`]);
    /// nothing else is sent before the peer's proof checks out.
    async fn prove_membership(
        &self,
        conn: &Connection,
        send: &mut iroh::endpoint::SendStream,
        recv: &mut iroh::endpoint::RecvStream,
    ) -> Result<()> {
        let me = self.endpoint.id();
        let peer = conn.remote_id();
        let key = self.shared.codec.keys().membership;
        let mine = membership::nonce();
        wire::write_msg(
            send,
            &Msg::Challenge {
                version: wire::VERSION,
                nonce: hex::encode(mine),
            },
        )
        .await?;
        let theirs = match tokio::time::timeout(HELLO_TIMEOUT, wire::read_msg(recv))
            .await
            .context("no challenge from the peer")??
        {
            Some(Msg::Challenge { version, nonce }) => {
                anyhow::ensure!(
                    version == wire::VERSION,
                    "peer speaks protocol version {version}, this node {}",
                    wire::VERSION
                );
                membership::parse_nonce(&nonce).context("peer sent a malformed nonce")?
            }
            Some(Msg::Error { message }) => bail!("peer refused: {message}"),
            Some(other) => bail!("expected a challenge, got {}", msg_name(&other)),
            None => bail!("peer closed the stream before its challenge"),
        };
        anyhow::ensure!(theirs != mine, "peer echoed this node's nonce");
        let proof = membership::prove(&key, &me, &peer, &mine, &theirs);
        wire::write_msg(
            send,
            &Msg::Proof {
                mac: proof.to_hex().to_string(),
            },
        )
        .await?;
        let mac = match tokio::time::timeout(HELLO_TIMEOUT, wire::read_msg(recv))
            .await
            .context("no membership proof from the peer")??
        {
            Some(Msg::Proof { mac }) => mac,
            Some(Msg::Error { message }) => bail!("peer refused: {message}"),
            Some(other) => bail!("expected a membership proof, got {}", msg_name(&other)),
            None => bail!("peer closed the stream before its membership proof"),
        };
        if !membership::verify(&key, &peer, &me, &theirs, &mine, &mac) {
            let message = "membership proof failed: the peer does not hold this folder's key (join with the folder key of a member)";
            let _ = wire::write_msg(
                send,
                &Msg::Error {
                    message: "membership proof failed: you do not hold this folder's key".into(),
                },
            )
            .await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.close(2u32.into(), b"not a member");
            bail!(message);
        }
        Ok(())
    }

    async fn send_index(&self, peer: EndpointId, send: ControlSend, from: u64) -> Result<()> {
        if from == 0 {
            self.send_history(&peer, &send).await?;
        }
        let peer_s = peer.to_string();
        let mut sent = from;
        let mut rx = self.shared.seq.subscribe();
        loop {
            rx.borrow_and_update();
            let after = sent;
            let p = peer_s.clone();
            // Each record with whether the peer itself announced exactly
            // this state (then sending it back would only echo it).
            let batch = self
                .shared
                .with_reader(move |s| {
                    s.changes_since(after, INDEX_BATCH)?
                        .into_iter()
                        .map(|r| {
                            let echo = s.peer_seen(&p, &r.path)?.as_ref() == Some(&r.entry.vv);
                            Ok((r, echo))
                        })
                        .collect::<Result<Vec<_>, Error>>()
                })
                .await?;
            if batch.is_empty() {
                if rx.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            // Split so no message names too many chunks; each message's
            // `upto` is the last record it covers (skipped or not).
            let cfg = self.rights(&peer)?;
            let mut records: Vec<WireRecord> = Vec::new();
            let mut chunks = 0usize;
            let n = batch.len();
            for (i, (r, echo)) in batch.into_iter().enumerate() {
                let seq = r.seq;
                if sent_to(&cfg, &r.path) && !echo {
                    chunks += r.entry.chunks.len();
                    records.push(WireRecord::new(r.path, r.seq, r.entry, false));
                }
                if chunks >= INDEX_CHUNKS || i + 1 == n {
                    sent = seq;
                    tracing::debug!("sending {} records up to {sent}", records.len());
                    let msg = Msg::Index {
                        records: std::mem::take(&mut records),
                        upto: sent,
                    };
                    wire::write_msg(&mut *send.lock().await, &msg).await?;
                    chunks = 0;
                    self.update_status(&peer, |s| s.sent_upto = sent);
                }
            }
        }
    }

    /// Sends every older version this node keeps (within the peer's scope)
    /// as `history` records, to a peer that has none of this node's log yet,
    /// so a node that joins later gets the history and not only the tree.
    async fn send_history(&self, peer: &EndpointId, send: &ControlSend) -> Result<()> {
        let mut after: Option<(String, u64)> = None;
        let mut total = 0usize;
        loop {
            let from = after.clone();
            let batch = self
                .shared
                .with_reader(move |s| {
                    Ok(s.history_after(from.as_ref().map(|(p, l)| (p.as_str(), *l)), INDEX_BATCH)?)
                })
                .await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = Some((last.path.clone(), last.label));
            let cfg = self.rights(peer)?;
            let mut records = Vec::new();
            let mut chunks = 0usize;
            let n = batch.len();
            for (i, v) in batch.into_iter().enumerate() {
                if sent_to(&cfg, &v.path) {
                    chunks += v.entry.chunks.len();
                    records.push(WireRecord::new(v.path, 0, v.entry, true));
                }
                if (chunks >= INDEX_CHUNKS || i + 1 == n) && !records.is_empty() {
                    total += records.len();
                    let msg = Msg::Index {
                        records: std::mem::take(&mut records),
                        upto: 0,
                    };
                    wire::write_msg(&mut *send.lock().await, &msg).await?;
                    chunks = 0;
                }
            }
        }
        if total > 0 {
            tracing::info!("sent {total} older versions to a new peer");
        }
        Ok(())
    }

    /// Serves the peer's chunk requests, each on its own stream, sealed as
    /// stored. A peer limited to some paths gets only chunks named by kept
    /// versions of paths in its scope: it cannot confirm a guess about a
    /// file outside it by asking for the guessed chunk's id.
    async fn serve_chunks(self: Arc<Self>, conn: Connection) -> Result<()> {
        let peer = conn.remote_id();
        let scoped = Arc::new(ScopedChunks::default());
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let shared = self.shared.clone();
            let limit = self.limits().send;
            let me = self.clone();
            let scoped = scoped.clone();
            tokio::spawn(async move {
                let r: Result<()> = async {
                    let ids = match wire::read_msg(&mut recv).await? {
                        Some(Msg::GetChunks { ids }) => ids,
                        Some(Msg::Probe { bytes }) => {
                            // Throughput test: that many bytes of filler.
                            let mut left = bytes.min(MAX_PROBE);
                            let block = vec![0u8; 256 * 1024];
                            while left > 0 {
                                let n = left.min(block.len() as u64) as usize;
                                throttle(limit.clone(), n).await;
                                tokio::io::AsyncWriteExt::write_all(&mut send, &block[..n])
                                    .await?;
                                left -= n as u64;
                            }
                            send.finish()?;
                            let _ = send.stopped().await;
                            return Ok(());
                        }
                        _ => bail!("expected GetChunks"),
                    };
                    anyhow::ensure!(ids.len() <= 1024, "too many chunks asked");
                    let cfg = me.rights(&peer)?;
                    let allowed = if cfg.paths.is_empty() {
                        None
                    } else {
                        Some(scoped.allowed(&shared, &cfg.paths, &ids).await?)
                    };
                    // Read ahead on a blocking thread while the stream is written.
                    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
                    let reader = tokio::spawn(async move {
                        for group in ids.chunks(SERVE_GROUP) {
                            let group = group.to_vec();
                            let allowed = allowed.clone();
                            // The stored bytes as they are: the peer checks them.
                            let found = shared
                                .with_reader(move |s| {
                                    Ok(group
                                        .into_iter()
                                        .map(|id| {
                                            let ok = allowed.as_ref().is_none_or(|a| a.contains(&id));
                                            let c = if ok { s.read_sealed(&id).ok() } else { None };
                                            (id, c)
                                        })
                                        .collect::<Vec<_>>())
                                })
                                .await?;
                            if tx.send(found).await.is_err() {
                                break;
                            }
                        }
                        anyhow::Ok(())
                    });
                    while let Some(found) = rx.recv().await {
                        for (id, data) in found {
                            match data {
                                Some(c) => {
                                    throttle(limit.clone(), c.sealed.len()).await;
                                    wire::write_sealed(&mut send, &id, c.raw_len, &c.sealed).await?;
                                    metrics::counter!("bytes_transferred_total", "direction" => "sent")
                                        .increment(c.sealed.len() as u64);
                                }
                                None => wire::write_msg(&mut send, &Msg::NoChunk { id }).await?,
                            }
                        }
                    }
                    reader.await.context("chunk reader panicked")??;
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

    /// Open connections to peers other than `origin`'s, one per peer:
    /// more places to fetch chunks from.
    fn other_connections(&self, origin: &Connection) -> Vec<Connection> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.iter()
            .filter(|(id, _)| **id != origin.remote_id())
            .filter_map(|(_, s)| s.conns.first().map(|(c, _)| c.clone()))
            .collect()
    }

    /// Fetches `ids`, spreading the requests over the peer that announced
    /// them (`origin`) and every other connected peer, up to
    /// [`FETCH_STREAMS`] streams each; what another peer lacks is asked of
    /// `origin`. Reading the streams never waits for the disk: received
    /// chunks queue for one storing task that checks them in parallel and
    /// appends them. Returns the ids `origin` lacks too.
    async fn fetch_chunks(
        self: &Arc<Self>,
        origin: &Connection,
        ids: Vec<ChunkId>,
    ) -> Result<Vec<ChunkId>> {
        let mut sources = vec![origin.clone()];
        sources.extend(self.other_connections(origin));
        let mut groups: std::collections::VecDeque<(Vec<ChunkId>, usize)> = ids
            .chunks(CHUNKS_PER_REQUEST)
            .enumerate()
            .map(|(i, g)| (g.to_vec(), i % sources.len()))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel::<(EndpointId, Received)>(STORE_QUEUE);
        let storer = tokio::spawn(self.clone().store_received(rx));
        let mut in_flight = vec![0usize; sources.len()];
        let mut lacking = Vec::new();
        let mut running = tokio::task::JoinSet::new();
        let result: Result<()> = async {
            loop {
                // Start what the free streams allow, in order.
                let mut i = 0;
                while i < groups.len() {
                    let src = groups[i].1;
                    if in_flight[src] < FETCH_STREAMS {
                        let Some((group, src)) = groups.remove(i) else {
                            break;
                        };
                        in_flight[src] += 1;
                        let me = self.clone();
                        let conn = sources[src].clone();
                        let tx = tx.clone();
                        running.spawn(async move {
                            let r = me.fetch_group(&conn, group.clone(), &tx).await;
                            (src, group, r)
                        });
                    } else {
                        i += 1;
                    }
                }
                let Some(done) = running.join_next().await else {
                    return Ok(());
                };
                let (src, group, r) = done.context("chunk fetch panicked")?;
                in_flight[src] -= 1;
                match r {
                    Ok(missing) if missing.is_empty() => {}
                    Ok(missing) if src == 0 => lacking.extend(missing),
                    // Another peer lacked some: ask the origin.
                    Ok(missing) => groups.push_back((missing, 0)),
                    Err(e) if src != 0 => {
                        tracing::debug!("chunks from another peer: {e:#}");
                        groups.push_back((group, 0));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        .await;
        drop(tx);
        running.abort_all();
        let stored = storer.await.context("chunk storing task panicked")?;
        // The storing task's failure (a full disk) is the cause of the
        // fetchers' "storing stopped": report it first.
        stored.context("storing received chunks")?;
        result?;
        Ok(lacking)
    }

    /// One `GetChunks` stream: asks `conn` for `group` and queues each chunk
    /// that comes back for [`Self::store_received`]. Returns the ids the
    /// peer said it lacks.
    async fn fetch_group(
        &self,
        conn: &Connection,
        group: Vec<ChunkId>,
        queue: &tokio::sync::mpsc::Sender<(EndpointId, Received)>,
    ) -> Result<Vec<ChunkId>> {
        let peer = conn.remote_id();
        let (mut send, mut recv) = conn.open_bi().await?;
        let ask = Msg::GetChunks { ids: group.clone() };
        wire::write_msg(&mut send, &ask).await?;
        send.finish()?;
        let mut wanted: std::collections::HashSet<ChunkId> = group.into_iter().collect();
        let mut lacking = Vec::new();
        let limit = self.limits().recv;
        while let Some(frame) = wire::read_frame(&mut recv).await? {
            let received = match frame {
                Frame::Sealed(id, _, _) if !wanted.remove(&id) => {
                    bail!("peer sent a chunk that was not asked for")
                }
                Frame::Sealed(id, raw_len, sealed) => {
                    self.received(&limit, sealed.len()).await;
                    Received::Sealed(SealedChunk {
                        id,
                        raw_len,
                        sealed,
                    })
                }
                Frame::Msg(Msg::NoChunk { id }) if wanted.remove(&id) => {
                    lacking.push(id);
                    continue;
                }
                Frame::Msg(m) => bail!("unexpected {} message on a chunk stream", msg_name(&m)),
            };
            queue
                .send((peer, received))
                .await
                .map_err(|_| anyhow::anyhow!("chunk storing stopped"))?;
        }
        anyhow::ensure!(
            wanted.is_empty(),
            "peer sent {} chunks too few",
            wanted.len()
        );
        Ok(lacking)
    }

    /// Counts `n` received bytes and waits for the download limit.
    async fn received(&self, limit: &Option<Bucket>, n: usize) {
        metrics::counter!("bytes_transferred_total", "direction" => "received").increment(n as u64);
        // Reading slower makes QUIC flow control slow the sender.
        throttle(limit.clone(), n).await;
    }

    /// Drains the queue of received chunks: whatever has arrived (up to
    /// [`PUT_BYTES`]) is checked and stored in one go, while the streams go
    /// on filling the queue.
    async fn store_received(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<(EndpointId, Received)>,
    ) -> Result<()> {
        let mut buf: Vec<(EndpointId, Received)> = Vec::new();
        let mut bytes = 0usize;
        loop {
            let next = if buf.is_empty() {
                rx.recv().await
            } else {
                match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                        self.put_chunks(std::mem::take(&mut buf)).await?;
                        bytes = 0;
                        continue;
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match next {
                Some(item) => {
                    bytes += item.1.len();
                    buf.push(item);
                    if bytes >= PUT_BYTES {
                        self.put_chunks(std::mem::take(&mut buf)).await?;
                        bytes = 0;
                    }
                }
                None => return self.put_chunks(buf).await,
            }
        }
    }

    /// Checks received chunks against their ids (opening sealed ones) and
    /// seals plaintext ones, in parallel and off the node's lock; then
    /// appends them under it and counts them for the peers they came from.
    async fn put_chunks(&self, chunks: Vec<(EndpointId, Received)>) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut per_peer: HashMap<EndpointId, u64> = HashMap::new();
        for (peer, _) in &chunks {
            *per_peer.entry(*peer).or_default() += 1;
        }
        let codec = self.shared.codec.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            chunks
                .into_par_iter()
                .map(|(_, c)| match c {
                    // Opened under the folder key and hashed against its id.
                    Received::Sealed(s) => codec.check_sealed(&s).map(|()| s),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .context("sealing task panicked")??;
        self.shared
            .with_node(move |n| {
                n.store.put_sealed(sealed)?;
                Ok(())
            })
            .await?;
        for (peer, n) in per_peer {
            self.update_status(&peer, |s| s.chunks_received += n);
        }
        Ok(())
    }

    /// Receives the peer's index messages. Two stages run at once: the
    /// first reads a message, keeps the states that may win here and
    /// fetches their chunks; the second applies prepared messages in order,
    /// records how far the peer's log is applied and acknowledges it. So the
    /// next message's chunks travel while the previous one is written to disk.
    async fn receive_index(
        self: &Arc<Self>,
        peer: EndpointId,
        conn: &Connection,
        mut recv: iroh::endpoint::RecvStream,
        send: ControlSend,
    ) -> Result<()> {
        struct Prepared {
            list: Vec<(String, Entry)>,
            /// Older versions of paths this node does not have, oldest first.
            history: Vec<(String, Entry)>,
            seq_of: HashMap<String, u64>,
            upto: u64,
            received: Instant,
            /// The newest state of the peer's log in this message.
            last: Option<LogCheck>,
        }
        let peer_s = peer.to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(2);
        let fetcher = async move {
            loop {
                let msg = match wire::read_msg(&mut recv).await? {
                    Some(m) => m,
                    None => return anyhow::Ok(()),
                };
                let received = Instant::now();
                let (records, upto) = match msg {
                    Msg::Index { records, upto } => {
                        tracing::debug!("received {} records up to {upto}", records.len());
                        (records, upto)
                    }
                    Msg::Ack { upto } => {
                        self.acknowledged(&peer, upto);
                        continue;
                    }
                    Msg::Error { message } => bail!("peer: {message}"),
                    other => bail!("unexpected message {other:?}"),
                };
                let cfg = self.rights(&peer)?;
                let mut seq_of: HashMap<String, u64> = HashMap::new();
                let mut current: Vec<(String, Entry)> = Vec::new();
                let mut history: Vec<(String, Entry)> = Vec::new();
                let now = sovryn_store::now_ns();
                let mut refused = 0usize;
                let mut last: Option<LogCheck> = None;
                for r in records {
                    // Checked once, here. A bad record is dropped (and
                    // reported), never applied; it must not wedge the
                    // states behind it either.
                    let PeerRecord {
                        path,
                        seq,
                        entry,
                        history: is_history,
                    } = match r.into_record(now) {
                        Ok(r) => r,
                        Err(e) => {
                            if refused == 0 {
                                tracing::warn!("{}: refused a record: {e}", peer.fmt_short());
                            }
                            refused += 1;
                            continue;
                        }
                    };
                    if !is_history && last.as_ref().is_none_or(|l| seq > l.seq) {
                        last = Some(LogCheck {
                            seq,
                            path: path.as_str().to_owned(),
                            vv: entry.vv.clone(),
                        });
                    }
                    // Nothing outside the peer's scope, ancestors included.
                    if !accepted_from(&cfg, path.as_str()) {
                        continue;
                    }
                    let path = path.into_string();
                    if is_history {
                        history.push((path, entry));
                    } else {
                        seq_of.insert(path.clone(), seq);
                        current.push((path, entry));
                    }
                }
                if refused > 0 {
                    metrics::counter!("sync_errors_total").increment(refused as u64);
                    self.update_status(&peer, |s| {
                        s.last_error = Some(format!("refused {refused} malformed record(s)"))
                    });
                }
                let read_only = cfg.read_only;
                let who = peer_s.clone();
                // Remember what the peer has; keep only states that may win
                // here (and history of paths this node lacks); find the
                // chunks they need.
                let (list, history, missing, history_missing) = self
                    .shared
                    .with_node(move |n| {
                        let seen: Vec<(String, sovryn_store::VersionVector)> = current
                            .iter()
                            .map(|(p, e)| (p.clone(), e.vv.clone()))
                            .collect();
                        if !seen.is_empty() {
                            n.store.record_peer_seen(&who, &seen)?;
                        }
                        let mut keep = Vec::new();
                        let mut old = Vec::new();
                        if !read_only {
                            for (path, entry) in current {
                                let useful = match n.store.file(&path)? {
                                    None => true,
                                    Some(l) => match entry.vv.compare(&l.entry.vv) {
                                        Causality::DominatedBy => false,
                                        // The same vector for other content
                                        // (a restored node reused counters).
                                        Causality::Equal => {
                                            !(l.entry.same_content(&entry)
                                                || (l.entry.deleted && entry.deleted))
                                        }
                                        _ => true,
                                    },
                                };
                                if useful {
                                    keep.push((path, entry));
                                }
                            }
                            for (path, entry) in history {
                                if n.store.file(&path)?.is_none() {
                                    old.push((path, entry));
                                }
                            }
                        }
                        let missing = n.missing_chunks(keep.iter().map(|(_, e)| e))?;
                        let mut history_missing = n.missing_chunks(old.iter().map(|(_, e)| e))?;
                        let wanted: std::collections::HashSet<&ChunkId> = missing.iter().collect();
                        history_missing.retain(|id| !wanted.contains(id));
                        Ok((keep, old, missing, history_missing))
                    })
                    .await?;
                let mut history = history;
                if !missing.is_empty() || !history_missing.is_empty() {
                    let n = missing.len() + history_missing.len();
                    let need: std::collections::HashSet<ChunkId> =
                        missing.iter().copied().collect();
                    let mut all = missing;
                    all.extend(history_missing);
                    let lacking = self.fetch_chunks(conn, all).await?;
                    if let Some(id) = lacking.iter().find(|id| need.contains(id)) {
                        bail!("peer lacks chunk {id}");
                    }
                    // Older versions whose chunks the peer no longer keeps are skipped.
                    let gone: std::collections::HashSet<ChunkId> = lacking.into_iter().collect();
                    history.retain(|(_, e)| !e.chunks.iter().any(|c| gone.contains(c)));
                    tracing::debug!("fetched {n} chunks");
                }
                let prepared = Prepared {
                    list,
                    history,
                    seq_of,
                    upto,
                    received,
                    last,
                };
                if tx.send(prepared).await.is_err() {
                    return Ok(());
                }
            }
        };
        let applier = async {
            let key = meta_key(&peer);
            let ckey = check_key(&peer);
            // Once a state failed to apply, this session never records past
            // it, and ends a while later: the next one is sent everything
            // from just before it again, so it is retried without blocking
            // what came after it meanwhile.
            let mut floor: Option<u64> = None;
            let mut retry_at: Option<tokio::time::Instant> = None;
            loop {
                let next = match retry_at {
                    Some(t) => tokio::select! {
                        m = rx.recv() => m,
                        _ = tokio::time::sleep_until(t) => {
                            bail!("states that could not be applied are retried: reconnecting")
                        }
                    },
                    None => rx.recv().await,
                };
                let Some(Prepared {
                    list,
                    history,
                    seq_of,
                    upto,
                    received,
                    last,
                }) = next
                else {
                    break;
                };
                let any = !list.is_empty();
                let key = key.clone();
                let ckey = ckey.clone();
                // History messages (upto 0) do not move the peer's position.
                let history_only = upto == 0;
                let (seq, changed, upto, new_floor, failed) = self
                    .shared
                    .with_node(move |n| {
                        let added = add_history(n, history)?;
                        if added > 0 {
                            tracing::debug!("added {added} older versions");
                        }
                        let report = if list.is_empty() {
                            Default::default()
                        } else {
                            n.apply_remote(&list)?
                        };
                        if history_only {
                            return Ok((n.store.sequence()?, report.changed, 0, floor, Vec::new()));
                        }
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
                        if let Some(c) = &last {
                            let text = serde_json::to_string(c)
                                .map_err(|e| Error::Internal(e.to_string()))?;
                            n.store.set_meta(&ckey, &text)?;
                        }
                        for c in &report.conflicts {
                            tracing::warn!("conflict: kept the other version as {c}");
                        }
                        metrics::counter!("files_synced_total").increment(report.applied);
                        metrics::counter!("sync_conflicts_total")
                            .increment(report.conflicts.len() as u64);
                        metrics::counter!("sync_errors_total")
                            .increment(report.failed.len() as u64);
                        Ok((
                            n.store.sequence()?,
                            report.changed,
                            upto,
                            floor,
                            report.failed,
                        ))
                    })
                    .await?;
                if !failed.is_empty() && retry_at.is_none() {
                    let (path, why) = &failed[0];
                    let message = format!(
                        "{} state(s) could not be applied (first: {path}: {why}); retrying in {} s",
                        failed.len(),
                        APPLY_RETRY.as_secs()
                    );
                    tracing::warn!("{}: {message}", peer.fmt_short());
                    self.update_status(&peer, |s| s.last_error = Some(message));
                    retry_at = Some(tokio::time::Instant::now() + APPLY_RETRY);
                }
                tracing::debug!("applied; sequence {seq}");
                if any {
                    metrics::histogram!("sync_latency_seconds")
                        .record(received.elapsed().as_secs_f64());
                }
                floor = new_floor;
                self.shared.publish(seq, changed);
                if history_only {
                    continue;
                }
                self.update_status(&peer, |s| {
                    s.received_upto = upto;
                    s.remote_seq = s.remote_seq.max(upto);
                });
                wire::write_msg(&mut *send.lock().await, &Msg::Ack { upto }).await?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(fetcher, applier)?;
        Ok(())
    }

    /// Notes that `peer` has applied this node's log up to `upto`: in the
    /// status at once, and in the store (for [`sovryn_engine::peer_state`])
    /// off this task.
    fn acknowledged(self: &Arc<Self>, peer: &EndpointId, upto: u64) {
        let mut newer = false;
        self.update_status(peer, |s| {
            if upto > s.acked_upto {
                s.acked_upto = upto;
                newer = true;
            }
        });
        if !newer {
            return;
        }
        let me = self.clone();
        let peer = *peer;
        tokio::spawn(async move {
            let key = sovryn_engine::peer_state::acked_key(&peer.to_string());
            let me2 = me.clone();
            let r = me
                .shared
                .with_node(move |n| {
                    // The newest value when this runs, so a late task never
                    // writes an older one over a newer.
                    let upto = {
                        let st = me2.state.lock().unwrap_or_else(|e| e.into_inner());
                        st.get(&peer).map(|s| s.status.acked_upto).unwrap_or(0)
                    };
                    n.store.set_meta(&key, &upto.to_string())?;
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("recording an acknowledgement: {e:#}");
            }
        });
    }
}

/// The store's `meta` key of this node's index epoch.
const INDEX_EPOCH: &str = "index_epoch";

/// The `meta` key of the last state applied from `peer`'s log ([`LogCheck`]).
fn check_key(peer: &EndpointId) -> String {
    format!("peer.{peer}.check")
}

/// The `meta` key of the epoch of `peer`'s log that its stored position counts in.
fn epoch_key(peer: &EndpointId) -> String {
    format!("peer.{peer}.epoch")
}

/// This node's index epoch, created on first use (never 0: 0 means "none").
fn index_epoch(n: &Node) -> Result<u64, Error> {
    if let Some(e) = n
        .store
        .meta(INDEX_EPOCH)?
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|e| *e != 0)
    {
        return Ok(e);
    }
    let fresh: u64 = rand::random::<u64>().max(1);
    n.store.set_meta(INDEX_EPOCH, &fresh.to_string())?;
    Ok(fresh)
}

/// A message's type, for errors (never its content, which the peer chose).
fn msg_name(m: &Msg) -> &'static str {
    match m {
        Msg::Challenge { .. } => "challenge",
        Msg::Proof { .. } => "proof",
        Msg::Hello { .. } => "hello",
        Msg::Index { .. } => "index",
        Msg::Ack { .. } => "ack",
        Msg::Error { .. } => "error",
        Msg::GetChunks { .. } => "get_chunks",
        Msg::Probe { .. } => "probe",
        Msg::NoChunk { .. } => "no_chunk",
    }
}

/// Adds received older versions (grouped by path, oldest first) to the
/// node's history. Returns how many were new.
fn add_history(n: &mut Node, history: Vec<(String, Entry)>) -> Result<usize, Error> {
    let mut added = 0;
    let mut rest = history.as_slice();
    while let Some((path, _)) = rest.first() {
        let run = rest.iter().take_while(|(p, _)| p == path).count();
        let entries: Vec<Entry> = rest[..run].iter().map(|(_, e)| e.clone()).collect();
        added += n.store.add_history(path, &entries)?;
        rest = &rest[run..];
    }
    Ok(added)
}

/// A chunk as it came off the wire, not yet checked.
enum Received {
    Sealed(SealedChunk),
}

impl Received {
    fn len(&self) -> usize {
        match self {
            Received::Sealed(s) => s.sealed.len(),
        }
    }
}

/// The chunk ids a path-scoped peer may be served, built from the store
/// when first needed and rebuilt when it asks for an id not in it and the
/// store has changed since (new versions name new chunks).
#[derive(Default)]
struct ScopedChunks {
    cache: tokio::sync::Mutex<Option<ScopedSet>>,
}

struct ScopedSet {
    prefixes: Vec<String>,
    seq: u64,
    built: Instant,
    ids: Arc<std::collections::HashSet<ChunkId>>,
}

impl ScopedChunks {
    async fn allowed(
        &self,
        shared: &Shared,
        prefixes: &[String],
        asked: &[ChunkId],
    ) -> Result<Arc<std::collections::HashSet<ChunkId>>> {
        let mut cache = self.cache.lock().await;
        let seq = *shared.seq.borrow();
        let fresh = cache.as_ref().is_some_and(|c| {
            c.prefixes == prefixes
                && (asked.iter().all(|id| c.ids.contains(id))
                    || (c.seq == seq && c.built.elapsed() < Duration::from_secs(1)))
        });
        if !fresh {
            let p = prefixes.to_vec();
            let ids = shared
                .with_reader(move |s| Ok(s.chunk_ids_under(&p)?))
                .await?;
            *cache = Some(ScopedSet {
                prefixes: prefixes.to_vec(),
                seq,
                built: Instant::now(),
                ids: Arc::new(ids),
            });
        }
        cache
            .as_ref()
            .map(|c| c.ids.clone())
            .context("scoped chunk set missing")
    }
}

/// The sending half of a session's control stream, shared by the index
/// sender and the acknowledgements of the receiver.
type ControlSend = Arc<tokio::sync::Mutex<iroh::endpoint::SendStream>>;

/// Whether `path` is within the prefixes a peer is limited to, or one of
/// their ancestor directories (which it needs to hold them).
pub fn in_scope(cfg: &PeerConfig, path: &str) -> bool {
    accepted_from(cfg, path)
        || cfg.paths.iter().any(|p| {
            p.trim_matches('/')
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// What is sent to a peer: its scope and the ancestors of its scope.
fn sent_to(cfg: &PeerConfig, path: &str) -> bool {
    in_scope(cfg, path)
}

/// What is taken from a peer: only paths at or under its prefixes (never
/// an ancestor directory of them, whose mode or existence it must not change).
pub fn accepted_from(cfg: &PeerConfig, path: &str) -> bool {
    cfg.paths.is_empty()
        || cfg.paths.iter().any(|p| {
            let p = p.trim_matches('/');
            p.is_empty()
                || path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Asks the peer for `bytes` of filler on a fresh stream; returns the bytes
/// read and the seconds they took.
async fn probe(conn: &Connection, bytes: u64) -> Result<(u64, f64)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let started = Instant::now();
    wire::write_msg(&mut send, &Msg::Probe { bytes }).await?;
    send.finish()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = tokio::io::AsyncReadExt::read(&mut recv, &mut buf).await?;
        if got == 0 {
            break;
        }
        n += got as u64;
    }
    Ok((n, started.elapsed().as_secs_f64()))
}
