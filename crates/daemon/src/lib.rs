//! Sovryn's running node (`sovryn up`, `sovryn daemon start`): the opened
//! node shared by the watcher, the periodic rescan, the sync service and the
//! MCP HTTP server (when `mcp.enabled`), under one supervisor; config change
//! events ([`reload`]); and the typed control protocol on its local socket
//! ([`control`]), through which every command of the command line reaches a
//! running node.
//!
//! * [`control`]: the versioned request protocol and its client.
//! * [`write_ops`]: the writes the command line asks for (add, scan,
//!   restore, gc), run here or by the command line itself.
//! * [`local_socket`]: sockets only this user may use.

pub mod control;
mod error;
pub mod local_socket;
mod reload;
mod requests;
mod supervisor;
pub mod write_ops;

pub use error::{Error, Result};
pub use reload::notify_config_changed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sovryn_engine::scan::ScanOptions;
use sovryn_engine::{Config, Home, Node};
use sovryn_net::{Shared, SharedNode, SyncNet};
use supervisor::Supervisor;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

/// Debounce window of the file watcher (most of the change-to-peer latency).
const WATCH_DELAY: Duration = Duration::from_millis(10);
/// Batches of watched paths queued for the scanner (at most).
const WATCH_QUEUE: usize = 1024;
/// Period of the full rescan that catches what the watcher missed.
const FULL_RESCAN: Duration = Duration::from_secs(60);

/// A running node: what other services (MCP) need to share it.
pub struct Daemon {
    /// The node, its change notifications and its sequence.
    pub shared: Shared,
    /// The sync service.
    pub net: Arc<SyncNet>,
    pub(crate) home: Home,
    root: PathBuf,
    /// Kept alive while the daemon runs.
    _watcher: sovryn_engine::watch::Watcher,
    watched: mpsc::Receiver<Vec<String>>,
    /// Set when a batch did not fit the queue: the scanner rescans everything.
    watch_overflow: Arc<std::sync::atomic::AtomicBool>,
    /// What the MCP servers share (node, changes, path index).
    mcp_state: sovryn_mcp::McpState,
    /// The embedded MCP HTTP server, when enabled and bound.
    mcp: std::sync::Mutex<Option<McpServer>>,
    /// Notified by a `stop` request on the control socket.
    stop: Notify,
    /// Config changes as they are applied (see `reload.rs`).
    pub config_events: broadcast::Sender<sovryn_engine::config::ConfigChange>,
    /// Held by the reload in progress.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// Fires when the file watcher sees `config.toml` change.
    config_touched: Arc<Notify>,
    _config_watcher: sovryn_engine::watch::Watcher,
}

/// The MCP HTTP server running inside the daemon.
struct McpServer {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<sovryn_mcp::Result<()>>,
}

// `node` and `changes` are the handles the MCP server takes (`McpState`).
#[allow(dead_code)]
impl Daemon {
    /// The opened node (lock it only on blocking threads).
    pub fn node(&self) -> SharedNode {
        self.shared.node.clone()
    }

    /// Relative paths whose records change, as they change.
    pub fn changes(&self) -> broadcast::Sender<String> {
        self.shared.changes.clone()
    }

    /// Opens the sync endpoint for an opened node and scans it once.
    pub async fn start(node: Node, listen: Option<String>) -> Result<Self> {
        Ok(Self::open(node, listen).await?)
    }

    async fn open(node: Node, listen: Option<String>) -> anyhow::Result<Self> {
        let listen = listen.unwrap_or_else(|| node.config.listen.clone());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen address must be HOST:PORT, got '{listen}'"))?;
        // A pause outlives restarts.
        let paused = node.home.is_paused();
        let peers = node.config.peers.clone();
        let mcp_config = node.config.mcp.clone();
        let limits = (
            node.config.sync.max_send_kib_per_sec,
            node.config.sync.max_recv_kib_per_sec,
        );
        let root = node.root().to_owned();
        let home = node.home.clone();
        remove_stale_temp_files(&root);
        let shared = Shared::new(node)?;
        let net = SyncNet::bind(shared.clone(), listen, &peers).await?;
        if paused {
            net.pause(&peers);
        }
        net.set_bandwidth(limits.0, limits.1);
        sovryn_net::describe_metrics();
        let mcp_state =
            sovryn_mcp::McpState::with_channel(shared.node.clone(), shared.changes.clone())?;
        let mcp = if mcp_config.enabled {
            match start_mcp(&mcp_state, &mcp_config).await {
                Ok(m) => {
                    println!("MCP listening on {}", m.url);
                    Some(m)
                }
                Err(e) => {
                    eprintln!("warning: MCP not started: {e}");
                    None
                }
            }
        } else {
            None
        };
        // Watch before the first scan so nothing falls between the two.
        // Bounded: when the scanner falls behind, batches are not queued
        // without end; one full rescan replaces whatever did not fit.
        let (tx, watched) = mpsc::channel::<Vec<String>>(WATCH_QUEUE);
        let watch_overflow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let overflow = watch_overflow.clone();
        let watcher = sovryn_engine::watch::watch(&root, WATCH_DELAY, move |p| {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(p) {
                overflow.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::debug!("watch queue full: a full rescan follows");
            }
        })?;
        let config_touched = Arc::new(Notify::new());
        let touched = config_touched.clone();
        let config_watcher = sovryn_engine::watch::watch_file(
            &home.config(),
            crate::reload::CONFIG_DEBOUNCE,
            move || touched.notify_one(),
        )?;
        let daemon = Daemon {
            shared,
            net,
            home,
            root,
            _watcher: watcher,
            watched,
            watch_overflow,
            mcp_state,
            mcp: std::sync::Mutex::new(mcp),
            stop: Notify::new(),
            config_events: broadcast::channel(64).0,
            reloading: tokio::sync::Mutex::new(()),
            config_touched,
            _config_watcher: config_watcher,
        };
        daemon.rescan(vec![String::new()]).await?;
        Ok(daemon)
    }

    /// Scans `paths` (`""`: everything) and announces what changed.
    pub async fn rescan(&self, paths: Vec<String>) -> Result<()> {
        Ok(self.scan_paths(paths).await?)
    }

    async fn scan_paths(&self, paths: Vec<String>) -> anyhow::Result<()> {
        let new_ignore_rules = paths
            .iter()
            .any(|p| p.rsplit('/').next() == Some(sovryn_engine::rules::IGNORE_FILE));
        let (seq, changed) = self
            .shared
            .with_node(move |n| {
                let mut changed = Vec::new();
                // One scan for the whole set: one commit group (one pack sync,
                // one transaction per 2000 files) instead of one per path.
                let wanted = scannable(n, roots(paths))?;
                if wanted.is_empty() {
                    return Ok((n.store.sequence()?, changed));
                }
                match n.scan(&wanted, &ScanOptions::default(), &mut |_| {}) {
                    Ok(r) => changed.extend(r.changed),
                    // Something vanished or became ignored in between: path by path.
                    Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                        for p in wanted {
                            match n.scan(
                                std::slice::from_ref(&p),
                                &ScanOptions::default(),
                                &mut |_| {},
                            ) {
                                Ok(r) => changed.extend(r.changed),
                                Err(
                                    sovryn_engine::Error::NotFound(_)
                                    | sovryn_engine::Error::Usage(_),
                                ) => {}
                                Err(e) => tracing::warn!("scanning {p:?}: {e}"),
                            }
                        }
                    }
                    Err(e) => tracing::warn!("scanning: {e}"),
                }
                Ok((n.store.sequence()?, changed))
            })
            .await?;
        tracing::debug!("scan recorded {} changes, sequence {seq}", changed.len());
        self.shared.publish(seq, changed);
        if new_ignore_rules {
            // What a taken-back line skipped so far comes from the peers.
            self.net.refetch_all().await?;
        }
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM: sync sessions, the watcher, the
    /// periodic rescan and reloading peers from `config.toml`.
    pub async fn run(self) -> Result<()> {
        Ok(self.serve().await?)
    }

    async fn serve(mut self) -> anyhow::Result<()> {
        let (_, mut rx) = mpsc::channel(1);
        std::mem::swap(&mut rx, &mut self.watched);
        let this = Arc::new(self);
        let mut tasks = Supervisor::new();
        {
            let net = this.net.clone();
            tasks.spawn("sync", async move {
                net.run().await;
                Ok(())
            });
        }
        {
            let this = this.clone();
            tasks.spawn("scanner", async move {
                let mut full = tokio::time::interval(FULL_RESCAN);
                full.tick().await;
                loop {
                    let mut paths = tokio::select! {
                        p = rx.recv() => match p {
                            Some(p) => p,
                            None => anyhow::bail!("the file watcher stopped"),
                        },
                        _ = full.tick() => match this.changed_on_disk().await {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!("comparing the disk with the index: {e:#}");
                                vec![String::new()]
                            }
                        },
                    };
                    while let Ok(more) = rx.try_recv() {
                        paths.extend(more);
                    }
                    if this
                        .watch_overflow
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        paths.push(String::new());
                    }
                    tracing::debug!("rescanning {} paths", paths.len());
                    if let Err(e) = this.scan_paths(paths).await {
                        tracing::warn!("rescan: {e:#}");
                    }
                }
            });
        }
        {
            let this = this.clone();
            tasks.spawn("config", async move {
                loop {
                    this.config_touched.notified().await;
                    this.reload_config().await;
                }
            });
        }
        {
            let packs = sovryn_store::Store::pack_dir(&this.home.dir);
            tasks.spawn("storage gauge", async move {
                loop {
                    metrics::gauge!("storage_used_bytes").set(dir_bytes(&packs) as f64);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            });
        }
        {
            let this = this.clone();
            let listener = local_socket::bind_private(&control_socket(&this.home))?;
            tasks.spawn("control socket", async move {
                loop {
                    let (stream, _) = listener.accept().await.context("accepting")?;
                    if !local_socket::same_user(&stream) {
                        continue;
                    }
                    let this = this.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.serve_control(stream).await {
                            tracing::info!("control client: {e:#}");
                        }
                    });
                }
            });
        }
        // Writes that do not come from a scan or a peer (MCP tools) are
        // announced on `changes` only: pick up the new sequence so sync
        // sessions push them at once.
        {
            let shared = this.shared.clone();
            let mut rx = shared.changes.subscribe();
            tasks.spawn("change announcer", async move {
                loop {
                    match rx.recv().await {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                    while rx.try_recv().is_ok() {}
                    match shared.with_reader(|s| Ok(s.sequence()?)).await {
                        Ok(seq) => shared.publish(seq, std::iter::empty()),
                        Err(e) => tracing::warn!("reading the sequence: {e:#}"),
                    }
                }
            });
        }
        let stopped = tasks
            .run_until(async {
                tokio::select! {
                    r = wait_for_signal() => r,
                    _ = this.stop.notified() => Ok(()),
                }
            })
            .await;
        eprintln!("stopping");
        this.stop_mcp().await;
        let _ = std::fs::remove_file(control_socket(&this.home));
        this.net.shutdown().await;
        tasks.shutdown().await;
        this.shared
            .with_node(|n| Ok(n.store.flush()?))
            .await
            .context("flushing the store")?;
        stopped
    }
}

impl Daemon {
    /// What the periodic rescan must look at: paths whose stat differs
    /// from the index, new paths (a new directory as a whole) and recorded
    /// paths gone from disk. Found with a read-only store handle and a
    /// plain walk, so the node's lock is held only to scan what changed.
    async fn changed_on_disk(&self) -> anyhow::Result<Vec<String>> {
        use std::collections::HashMap;
        let recorded: HashMap<String, Option<sovryn_store::DiskStat>> = self
            .shared
            .with_reader(|s| {
                Ok(s.files_under("")?
                    .into_iter()
                    .filter(|r| !r.entry.deleted)
                    .map(|r| (r.path, r.disk))
                    .collect())
            })
            .await?;
        let root = self.root.clone();
        let out = tokio::task::spawn_blocking(move || changed_paths(&root, recorded))
            .await
            .context("walking the folder")?;
        Ok(out)
    }

    /// What a scan would record now (`status` on a running node): the
    /// paths whose stat differs from the index, scanned without recording.
    async fn unrecorded(&self) -> anyhow::Result<Vec<String>> {
        let candidates = self.changed_on_disk().await?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let fallback = candidates.clone();
        let changed = self
            .shared
            .with_node(move |n| {
                let wanted = scannable(n, roots(candidates))?;
                if wanted.is_empty() {
                    return Ok(Vec::new());
                }
                let opts = ScanOptions {
                    dry_run: true,
                    ..Default::default()
                };
                match n.scan(&wanted, &opts, &mut |_| {}) {
                    Ok(r) => Ok(r.changed),
                    // Something vanished meanwhile: path by path.
                    Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                        let mut out = Vec::new();
                        for p in wanted {
                            if let Ok(r) = n.scan(std::slice::from_ref(&p), &opts, &mut |_| {}) {
                                out.extend(r.changed);
                            }
                        }
                        Ok(out)
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await;
        // A file changing under the dry run: what differs by its stat is
        // the honest answer until the next look.
        Ok(changed.unwrap_or_else(|e| {
            tracing::debug!("dry-run scan for status: {e}");
            fallback
        }))
    }

    async fn status(&self, seq: u64) -> serde_json::Value {
        let mcp = self.mcp_url();
        serde_json::json!({
            "node_id": self.net.id().to_string(),
            "pid": std::process::id(),
            "seq": seq,
            "folder_id": self.shared.folder_id(),
            "paused": self.home.is_paused(),
            "listening": self.net.bound_sockets().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "mcp_url": mcp,
            "peers": self.net.peer_report().await,
        })
    }

    /// Starts the MCP HTTP listener if it is not running (`sovryn mcp
    /// start`), with the `mcp.*` settings of `config.toml` as they are now,
    /// whatever `mcp.enabled` says.
    pub(crate) async fn start_mcp_now(&self) -> serde_json::Value {
        if let Some(url) = self.mcp_url() {
            return serde_json::json!({"ok": true, "url": url, "already_running": true});
        }
        let config = match Config::load(&self.home) {
            Ok(c) => c,
            Err(e) => return serde_json::json!({"ok": false, "error": format!("{e:#}")}),
        };
        match start_mcp(&self.mcp_state, &config.mcp).await {
            Ok(m) => {
                let url = m.url.clone();
                tracing::info!("MCP listening on {url} (started by request)");
                let raced = match self.mcp.lock() {
                    Ok(mut slot) if slot.is_none() => {
                        *slot = Some(m);
                        None
                    }
                    _ => Some(m),
                };
                // Two requests at once: keep the first listener.
                if let Some(m) = raced {
                    let _ = m.stop.send(());
                    return serde_json::json!({"ok": true, "url": self.mcp_url(), "already_running": true});
                }
                serde_json::json!({"ok": true, "url": url, "already_running": false})
            }
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        }
    }

    /// Stops the MCP HTTP listener, if it runs (its sessions end).
    pub(crate) async fn stop_mcp(&self) -> bool {
        let mcp = self.mcp.lock().ok().and_then(|mut m| m.take());
        let Some(m) = mcp else {
            return false;
        };
        let _ = m.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), m.task).await {
            Ok(Ok(Err(e))) => tracing::warn!("MCP server: {e:#}"),
            Err(_) => tracing::warn!("MCP server did not stop within 5 s"),
            _ => {}
        }
        true
    }

    fn mcp_url(&self) -> Option<String> {
        self.mcp
            .lock()
            .ok()
            .and_then(|m| m.as_ref().map(|m| m.url.clone()))
    }

    /// One request per line, one JSON answer per line. `mcp_stdio` turns
    /// the rest of the connection into an MCP session (`sovryn mcp serve
    /// --stdio` pipes its stdin/stdout to it).
    async fn serve_control(&self, stream: tokio::net::UnixStream) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await? {
            use crate::control::Request;
            let req = match crate::control::parse(&line) {
                Ok(r) => r,
                Err(error) => {
                    let mut out =
                        serde_json::to_vec(&serde_json::json!({"ok": false, "error": error}))?;
                    out.push(b'\n');
                    w.write_all(&out).await?;
                    continue;
                }
            };
            if let Request::McpStdio = req {
                w.write_all(b"{\"ok\":true}\n").await?;
                // The reader keeps what it buffered past the request line.
                let reader = lines.into_inner();
                sovryn_mcp::serve_io(self.mcp_state.clone(), reader, w)
                    .await
                    .context("MCP session on the control socket")?;
                return Ok(());
            }
            let answer = match req {
                Request::McpStart => self.start_mcp_now().await,
                Request::McpStop => {
                    let stopped = self.stop_mcp().await;
                    serde_json::json!({"ok": true, "stopped": stopped})
                }
                Request::Status => {
                    let seq = *self.shared.seq.borrow();
                    self.status(seq).await
                }
                // add, scan, restore, gc from the command line: this node
                // holds the store, so it does them (see write_ops.rs).
                Request::Write { op } => self.write(op).await,
                Request::ReloadConfig => self.reload_config().await,
                Request::Unrecorded => match self.unrecorded().await {
                    Ok(paths) => serde_json::json!({"ok": true, "paths": paths}),
                    Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                },
                Request::Query { query } => {
                    match self
                        .shared
                        .with_view(move |r| sovryn_api::ask(r, query))
                        .await
                    {
                        Ok(Ok(answer)) => serde_json::json!({"ok": true, "answer": answer}),
                        Ok(Err(e)) => serde_json::json!({"ok": false, "error": e.to_string()}),
                        Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                    }
                }
                Request::TestNetwork { peer, probe_bytes } => {
                    let peers = self.net.test_network(peer.as_deref(), probe_bytes).await;
                    serde_json::json!({"ok": true, "peers": peers})
                }
                Request::Stop => {
                    self.stop.notify_one();
                    serde_json::json!({"ok": true, "stopping": true})
                }
                Request::Sync { timeout_ms } => {
                    self.sync_now(Duration::from_millis(timeout_ms)).await
                }
                Request::McpStdio => unreachable_answer(),
                Request::Pause => crate::requests::pause_now(self, true).await,
                Request::Resume => crate::requests::pause_now(self, false).await,
                Request::ConflictsResolve { path, keep } => {
                    crate::requests::resolve_now(self, path, keep).await
                }
            };
            let mut out = serde_json::to_vec(&answer)?;
            out.push(b'\n');
            w.write_all(&out).await?;
        }
        Ok(())
    }

    /// Runs a typed write (`write_ops::WriteOp`) and announces what changed.
    async fn write(&self, op: crate::write_ops::WriteOp) -> serde_json::Value {
        let done = self
            .shared
            .with_node(move |n| {
                let out = crate::write_ops::execute(n, op, &mut |_| {})?;
                Ok((out, n.store.sequence()?))
            })
            .await;
        match done {
            Ok((out, seq)) => {
                self.shared.publish(seq, out.changed());
                serde_json::json!({"ok": true, "outcome": out})
            }
            Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
        }
    }

    /// Scans everything, then waits until every configured peer is connected,
    /// has been sent our whole change log and has had everything it
    /// announced applied here. Returns at once when there is no peer to
    /// wait for: none configured, sync paused, or every peer refusing for
    /// a reason only a person can fix (another folder key, not listed
    /// there, paused there).
    async fn sync_now(&self, timeout: Duration) -> serde_json::Value {
        use sovryn_net::LinkState;
        if let Err(e) = self.rescan(vec![String::new()]).await {
            return serde_json::json!({"ok": false, "error": format!("scan: {e:#}")});
        }
        let seq = *self.shared.seq.borrow();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let peers = self.net.peer_status();
            let connected = |p: &&sovryn_net::PeerStatus| p.state == LinkState::Connected;
            let done = peers.iter().any(|p| connected(&p))
                && peers
                    .iter()
                    .filter(connected)
                    // Applied there (acknowledged), not only sent.
                    .all(|p| p.acked_upto >= seq && p.received_upto >= p.remote_seq);
            let stuck = |p: &sovryn_net::PeerStatus| {
                matches!(
                    p.state,
                    LinkState::Paused
                        | LinkState::PeerPaused
                        | LinkState::WrongFolderKey
                        | LinkState::NotAllowedThere
                )
            };
            let hopeless = !peers.is_empty() && peers.iter().all(stuck);
            if done || peers.is_empty() || hopeless || tokio::time::Instant::now() >= deadline {
                let mut v = self.status(seq).await;
                v["ok"] = done.into();
                if !done {
                    v["error"] = if peers.is_empty() {
                        "no peers configured".into()
                    } else if peers.iter().all(|p| p.state == LinkState::Paused) {
                        "sync is paused on this node; run 'sovryn resume' first".into()
                    } else if hopeless {
                        let why: Vec<String> = peers
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}: {}",
                                    p.name.as_deref().unwrap_or(&p.id),
                                    p.last_error.as_deref().unwrap_or("paused")
                                )
                            })
                            .collect();
                        format!("no peer can sync: {}", why.join("; ")).into()
                    } else if peers.iter().all(|p| p.connected == 0) {
                        "no peer is connected".into()
                    } else {
                        "timed out waiting for peers".into()
                    };
                }
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `McpStdio` is answered before the match (it takes over the connection).
fn unreachable_answer() -> serde_json::Value {
    serde_json::json!({"ok": false, "error": "mcp_stdio takes over the connection"})
}

/// Starts the MCP HTTP server on `mcp.bind:mcp.port` sharing the daemon's
/// node, change channel and path index. A server that cannot start (port in
/// use, bad settings) is an error the caller reports; sync runs on without it.
async fn start_mcp(
    state: &sovryn_mcp::McpState,
    config: &sovryn_engine::config::McpConfig,
) -> std::result::Result<McpServer, String> {
    let ip: std::net::IpAddr = config
        .bind
        .parse()
        .map_err(|_| format!("mcp.bind '{}' is not an IP address", config.bind))?;
    let addr = SocketAddr::new(ip, config.port);
    let options = sovryn_mcp::HttpOptions::from_config(config).map_err(|e| format!("{e:#}"))?;
    let state = state.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel::<SocketAddr>();
    let task = tokio::spawn(sovryn_mcp::serve_http_with(
        state,
        addr,
        options,
        async move {
            let _ = stopped.await;
        },
        move |a| {
            let _ = bound_tx.send(a);
        },
    ));
    let scheme = if config.tls_cert.is_some() && config.tls_key.is_some() {
        "https"
    } else {
        "http"
    };
    match bound_rx.await {
        Ok(bound) => {
            let url = format!("{scheme}://{bound}/mcp");
            Ok(McpServer { url, stop, task })
        }
        Err(_) => Err(match task.await {
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(())) => "it stopped at once".into(),
            Err(e) => e.to_string(),
        }),
    }
}

/// The running node's control socket in its home.
pub fn control_socket(home: &Home) -> PathBuf {
    home.dir.join("control.sock")
}

/// Deletes temp files a killed run left behind (a write never renamed into place).
fn remove_stale_temp_files(root: &std::path::Path) {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(sovryn_engine::fsutil::TEMP_PREFIX))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Bytes of the files directly in `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The paths to scan: `""` alone when everything is wanted, else the set
/// without paths that lie under another one in it.
fn roots(mut paths: Vec<String>) -> Vec<String> {
    if paths.iter().any(|p| p.is_empty()) {
        return vec![String::new()];
    }
    paths.sort();
    paths.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        if let Some(last) = out.last() {
            if p.strip_prefix(last.as_str())
                .is_some_and(|r| r.starts_with('/'))
            {
                continue;
            }
        }
        out.push(p);
    }
    out
}

/// The paths under `root` whose stat differs from `recorded` (path → stat
/// of live records), new paths (a new directory as a whole, not its
/// entries) and recorded paths gone from disk.
fn changed_paths(
    root: &std::path::Path,
    recorded: std::collections::HashMap<String, Option<sovryn_store::DiskStat>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_owned()
        } else {
            root.join(&dir)
        };
        let Ok(rd) = std::fs::read_dir(&abs) else {
            continue;
        };
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(sovryn_engine::fsutil::TEMP_PREFIX) {
                continue;
            }
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            seen.insert(rel.clone());
            let stat = sovryn_engine::fsutil::stat_of(&m);
            match recorded.get(&rel) {
                // New (or ignored): the scan walks it with the rules.
                None => out.push(rel),
                // A directory's own mtime moves with its entries, which
                // are compared one by one.
                Some(Some(d)) if m.is_dir() => {
                    if d.mode != stat.mode {
                        out.push(rel.clone());
                    }
                    stack.push(rel);
                }
                Some(d) => {
                    if *d != Some(stat) {
                        out.push(rel.clone());
                    }
                    if m.is_dir() {
                        stack.push(rel);
                    }
                }
            }
        }
    }
    out.extend(recorded.into_keys().filter(|p| !seen.contains(p)));
    out.sort();
    out
}

/// The roots a scan can take together: `""` (everything) as is; otherwise
/// paths that are on disk and kept by the rules, or gone from disk but
/// recorded (their tombstones). Gone-and-unknown and ignored paths are dropped.
fn scannable(n: &Node, roots: Vec<String>) -> Result<Vec<String>, sovryn_store::Error> {
    n.rules.reload();
    let mut out = Vec::with_capacity(roots.len());
    for mut p in roots {
        if p.is_empty() {
            return Ok(vec![p]);
        }
        // New ignore rules: what they now keep or drop lies beside them.
        if p.rsplit('/').next() == Some(sovryn_engine::rules::IGNORE_FILE) {
            p = p
                .rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default();
            if p.is_empty() {
                return Ok(vec![p]);
            }
        }
        match std::fs::symlink_metadata(n.root().join(&p)) {
            Ok(m) => {
                let is_dir = m.is_dir() && !m.file_type().is_symlink();
                if n.rules.keeps(&p, is_dir) {
                    out.push(p);
                }
            }
            Err(_) => {
                if n.store.file(&p)?.is_some() {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{changed_paths, roots};

    #[test]
    fn changed_paths_finds_what_the_index_lacks() {
        use std::collections::HashMap;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/same.txt"), b"x").unwrap();
        std::fs::write(root.join("d/edited.txt"), b"x").unwrap();
        std::fs::write(root.join("d/e/new.txt"), b"x").unwrap();
        std::fs::create_dir_all(root.join("fresh/deep")).unwrap();
        std::fs::write(root.join("fresh/deep/f"), b"x").unwrap();
        let stat = |rel: &str| {
            Some(sovryn_engine::fsutil::stat_of(
                &std::fs::symlink_metadata(root.join(rel)).unwrap(),
            ))
        };
        let mut recorded = HashMap::new();
        for p in ["d", "d/e", "d/same.txt", "d/edited.txt"] {
            recorded.insert(p.to_string(), stat(p));
        }
        recorded.insert("gone.txt".to_string(), None);
        std::fs::write(root.join("d/edited.txt"), b"longer").unwrap();
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            changed_paths(root, recorded),
            v(&["d/e/new.txt", "d/edited.txt", "fresh", "gone.txt"])
        );
    }

    #[test]
    fn scan_roots() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(roots(v(&["a/b", "a", "ab", "a/c/d"])), v(&["a", "ab"]));
        assert_eq!(roots(v(&["x", ""])), v(&[""]));
    }
}
