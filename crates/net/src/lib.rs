//! Sovryn's peer-to-peer sync over iroh.
//!
//! One QUIC connection per peer on ALPN `sovryn/sync/3` (see
//! `docs/protocol.md`). Only endpoint ids in the allowlist get past the TLS
//! handshake ([`Allowlist`], run in iroh's `after_handshake` hook). On a
//! connection both sides prove they hold the folder key ([`membership`]),
//! send `Hello`, then stream their change log to each other from where the
//! other left off, then every new local change as it is committed. Missing
//! chunks are fetched on separate streams and checked against their ids
//! before they are stored.
//!
//! Modules: [`endpoint`] (binding, discovery, dialing), `session` (one
//! connection: handshake and the tasks below), `index` (the index
//! exchange), `transfer` (chunks), [`allowlist`], `bandwidth`, [`status`],
//! [`shared`], [`wire`] (frames and the boundary checks of peer data).

mod ahead;
pub mod allowlist;
mod assemble;
pub mod backup;
mod bandwidth;
mod devices;
pub mod endpoint;
mod index;
pub mod invite;
pub mod knocks;
pub mod membership;
pub mod recovery;
mod seals;
mod session;
pub mod shared;
pub mod status;
mod transfer;
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

use allowlist::sent_to;
pub use allowlist::{accepted_from, in_scope, peer_map, Allowlist, Gate};
use assemble::Assembly;
use bandwidth::{bucket, throttle, Bucket, Limits};
pub use endpoint::Discovery;
use session::{check_key, meta_key, msg_name, ControlSend};
pub use shared::{Shared, SharedNode};
pub use status::{describe_metrics, LinkState, NetworkTest, PeerStatus};
use status::{probe, record_error, MAX_PROBE};
pub use wire::{alpn, ALPN_PREFIX};
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

#[derive(Default)]
struct PeerState {
    status: PeerStatus,
    /// Wire bytes (sent, received) of connections already closed.
    closed_bytes: (u64, u64),
    /// Chunk bytes per second, each way.
    send_meter: status::Meter,
    recv_meter: status::Meter,
    /// Files being fetched from it, per session (connection's stable id).
    incoming: HashMap<usize, status::Incoming>,
    /// Open connections and whether this node dialed each.
    conns: Vec<(Connection, bool)>,
    /// Connections whose handshake completed (by `stable_id`): only those
    /// are probed for liveness, a probe must not race a handshake.
    established: std::collections::HashSet<usize>,
    dialing: bool,
    next_dial: Option<Instant>,
    backoff: Duration,
}

/// The sync service of one folder: its sessions with peers, on the node's
/// iroh endpoint (its own, or shared with the other folders: see
/// [`SyncNet::attach`]).
pub struct SyncNet {
    endpoint: Endpoint,
    /// This folder's ALPN on the endpoint.
    alpn: Vec<u8>,
    /// Whether this service bound the endpoint (it accepts connections for
    /// every folder and closes the endpoint at shutdown).
    owner: bool,
    /// The endpoint's hook (every folder's allowlist by ALPN).
    gate: Gate,
    /// The folders served on the endpoint, by ALPN.
    routes: Arc<RwLock<HashMap<Vec<u8>, std::sync::Weak<SyncNet>>>>,
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
    /// The dialing task while [`SyncNet::run`] runs (stopped at shutdown).
    dialer: Mutex<Option<tokio::task::AbortHandle>>,
    /// One permit per peer: a session receives the peer's index only once
    /// the one before it (a duplicate connection closed mid-fetch) has
    /// stored what it had received, so no chunk is fetched twice.
    receiving: Mutex<HashMap<EndpointId, Arc<tokio::sync::Semaphore>>>,
    /// Bumped when the device list or the configured peers change: each
    /// session sends the list again.
    devices_changed: watch::Sender<u64>,
    /// Applies `config.toml` after this service wrote it (the daemon's
    /// reload, so every config change goes one way, one at a time).
    config_hook: std::sync::OnceLock<ConfigHook>,
}

/// What applies the folder's `config.toml` once the sync service changed it.
pub type ConfigHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

impl std::fmt::Debug for SyncNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncNet")
            .field("id", &self.endpoint.id())
            .finish()
    }
}
