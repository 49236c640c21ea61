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

mod catch_up;
pub mod control;
mod devices;
mod error;
mod folders;
pub mod invites;
pub mod local_socket;
mod mcp;
mod reload;
mod remotes;
mod requests;
mod scan;
mod serve;
mod supervisor;
pub mod write_ops;

pub use error::{Error, Result};
pub use reload::notify_config_changed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mcp::{start_mcp, McpServer};
use scan::remove_stale_temp_files;
use sovryn_engine::scan::{ScanOptions, ScanProgress};
use sovryn_engine::{Config, Home, Node};
use sovryn_net::{Shared, SyncNet};
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
    /// Set for a folder served on another folder's endpoint: it stops when
    /// this is cancelled (by that folder), not on signals.
    attached: Option<tokio_util::sync::CancellationToken>,
    /// The node's other folders (kept by the endpoint's owner).
    pub(crate) folders: tokio::sync::Mutex<folders::FolderRuns>,
    /// Config changes as they are applied (see `reload.rs`).
    pub config_events: broadcast::Sender<sovryn_engine::config::ConfigChange>,
    /// Held by the reload in progress.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// Fires when the file watcher sees `config.toml` change.
    config_touched: Arc<Notify>,
    _config_watcher: sovryn_engine::watch::Watcher,
}

impl Daemon {
    /// Opens the sync endpoint for an opened node and scans it once.
    pub async fn start(node: Node, listen: Option<String>) -> Result<Self> {
        Ok(Self::open(node, Bind::Listen(listen)).await?)
    }

    async fn open(node: Node, bind: Bind<'_>) -> anyhow::Result<Self> {
        // A pause outlives restarts.
        let paused = node.home.is_paused();
        let peers = node.config.peers.clone();
        let config_listen = node.config.listen.clone();
        let mcp_config = node.config.mcp.clone();
        let limits = (
            node.config.sync.max_send_kib_per_sec,
            node.config.sync.max_recv_kib_per_sec,
        );
        let root = node.root().to_owned();
        let home = node.home.clone();
        remove_stale_temp_files(&root);
        let shared = Shared::new(node)?;
        let (net, attached) = match bind {
            Bind::Listen(listen) => {
                let listen = listen.unwrap_or_else(|| config_listen.clone());
                let listen: SocketAddr = listen
                    .parse()
                    .with_context(|| format!("listen address must be HOST:PORT, got '{listen}'"))?;
                (SyncNet::bind(shared.clone(), listen, &peers).await?, None)
            }
            Bind::On(owner) => (
                owner.attach(shared.clone(), &peers).await?,
                Some(tokio_util::sync::CancellationToken::new()),
            ),
        };
        if paused {
            net.pause(&peers);
        }
        net.set_bandwidth(limits.0, limits.1);
        sovryn_net::describe_metrics();
        let live = net.clone();
        let mcp_state =
            sovryn_mcp::McpState::with_channel(shared.node.clone(), shared.changes.clone())?
                .with_live_peers(Arc::new(move || {
                    serde_json::to_value(live.peer_status()).unwrap_or_default()
                }));
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
            attached,
            folders: Default::default(),
            config_events: broadcast::channel(64).0,
            reloading: tokio::sync::Mutex::new(()),
            config_touched,
            _config_watcher: config_watcher,
        };
        daemon.rescan(vec![String::new()]).await?;
        Ok(daemon)
    }

    /// Runs until SIGINT, SIGTERM or a stop request: sync sessions, the
    /// watcher, the periodic rescan, config events and the control socket.
    /// Once those run (sync accepting connections, the control socket
    /// answering), opens the node's other folders with `node_key` and calls
    /// `ready` with what each gave: a folder's first scan never holds up
    /// the others.
    pub async fn run(
        self,
        node_key: sovryn_store::MasterKey,
        ready: impl FnOnce(Vec<(String, Result<PathBuf>)>) + Send + 'static,
    ) -> Result<()> {
        self.net
            .invites()
            .set_handler(invites::join_handler(self.home.clone(), node_key.clone()));
        let then: AfterStart = Box::new(move |this: Arc<Daemon>| {
            Box::pin(async move {
                let opened = this.open_folders(node_key).await;
                ready(opened);
            })
        });
        Ok(self.serve(Some(then)).await?)
    }

    async fn serve(mut self, after_start: Option<AfterStart>) -> anyhow::Result<()> {
        let (_, mut rx) = mpsc::channel(1);
        std::mem::swap(&mut rx, &mut self.watched);
        let this = Arc::new(self);
        {
            let weak = Arc::downgrade(&this);
            this.net.on_config_written(Arc::new(move || {
                let weak = weak.clone();
                Box::pin(async move {
                    if let Some(d) = weak.upgrade() {
                        d.reload_config().await;
                    }
                })
            }));
        }
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
        if this.attached.is_none() {
            let packs = sovryn_store::Store::pack_dir(&this.home.dir);
            let home = this.home.dir.clone();
            tasks.spawn("storage gauge", async move {
                loop {
                    metrics::gauge!("storage_used_bytes").set(dir_bytes(&packs) as f64);
                    if let Ok(free) = sovryn_engine::fsutil::available_bytes(&home) {
                        metrics::gauge!("storage_available_bytes").set(free as f64);
                    }
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
        {
            let this = this.clone();
            tasks.spawn("remotes", async move {
                // Not fatal to the node: a remote that cannot be pushed to
                // is retried, and its errors are logged.
                if let Err(e) = remotes::keep_current(this).await {
                    tracing::warn!("remotes: {e:#}");
                }
                std::future::pending().await
            });
        }
        if let Some(then) = after_start {
            tokio::spawn(then(this.clone()));
        }
        let attached = this.attached.clone();
        let stopped = tasks
            .run_until(async {
                tokio::select! {
                    r = wait_for_signal(), if attached.is_none() => r,
                    _ = this.stop.notified() => Ok(()),
                    _ = cancelled(attached.as_ref()) => Ok(()),
                }
            })
            .await;
        match &this.attached {
            None => eprintln!("stopping"),
            Some(_) => eprintln!("folder {} stopping", this.root.display()),
        }
        // The other folders first: they are served on this one's endpoint.
        this.stop_folders().await;
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

/// Work started once a daemon's tasks run.
type AfterStart = Box<
    dyn FnOnce(Arc<Daemon>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// Where a folder's sync service runs: on its own endpoint (the node's
/// first folder) or on the endpoint of another folder of the node.
enum Bind<'a> {
    Listen(Option<String>),
    On(&'a Arc<SyncNet>),
}

/// The running node's control socket in its home.
pub fn control_socket(home: &Home) -> PathBuf {
    home.dir.join("control.sock")
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

/// Waits for `token`, forever when there is none.
async fn cancelled(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
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
