//! The running node (`sovryn up`): the opened node shared between the
//! watcher, the periodic rescan, the sync service and (later) the MCP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use sovryn_engine::scan::ScanOptions;
use sovryn_engine::{Config, Home, Node};
use sovryn_net::{Shared, SharedNode, SyncNet};
use tokio::sync::{broadcast, mpsc};

/// Debounce window of the file watcher.
const WATCH_DELAY: Duration = Duration::from_millis(30);
/// Period of the full rescan that catches what the watcher missed.
const FULL_RESCAN: Duration = Duration::from_secs(60);

/// A running node: what other services (MCP) need to share it.
pub struct Daemon {
    /// The node, its change notifications and its sequence.
    pub shared: Shared,
    /// The sync service.
    pub net: Arc<SyncNet>,
    home: Home,
    /// Kept alive while the daemon runs.
    _watcher: sovryn_engine::watch::Watcher,
    watched: mpsc::UnboundedReceiver<Vec<String>>,
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
        let listen = listen.unwrap_or_else(|| node.config.listen.clone());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen address must be HOST:PORT, got '{listen}'"))?;
        let peers = node.config.peers.clone();
        let root = node.root().to_owned();
        let home = node.home.clone();
        remove_stale_temp_files(&root);
        let shared = Shared::new(node)?;
        let net = SyncNet::bind(shared.clone(), listen, &peers).await?;
        // Watch before the first scan so nothing falls between the two.
        let (tx, watched) = mpsc::unbounded_channel::<Vec<String>>();
        let watcher = sovryn_engine::watch::watch(&root, WATCH_DELAY, move |p| {
            let _ = tx.send(p);
        })?;
        let daemon = Daemon {
            shared,
            net,
            home,
            _watcher: watcher,
            watched,
        };
        daemon.rescan(vec![String::new()]).await?;
        Ok(daemon)
    }

    /// Scans `paths` (`""`: everything) and announces what changed.
    pub async fn rescan(&self, paths: Vec<String>) -> Result<()> {
        let (seq, changed) = self
            .shared
            .with_node(move |n| {
                let mut changed = Vec::new();
                for p in roots(paths) {
                    match n.scan(
                        std::slice::from_ref(&p),
                        &ScanOptions::default(),
                        &mut |_| {},
                    ) {
                        Ok(r) => changed.extend(r.changed),
                        // Gone before we looked, or ignored: nothing to record.
                        Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                        }
                        Err(e) => tracing::warn!("scanning {p:?}: {e}"),
                    }
                }
                Ok((n.store.sequence()?, changed))
            })
            .await?;
        tracing::debug!("scan recorded {} changes, sequence {seq}", changed.len());
        self.shared.publish(seq, changed);
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM: sync sessions, the watcher, the
    /// periodic rescan and reloading peers from `config.toml`.
    pub async fn run(mut self) -> Result<()> {
        let (_, mut rx) = mpsc::unbounded_channel();
        std::mem::swap(&mut rx, &mut self.watched);
        let this = Arc::new(self);
        let runner = tokio::spawn(this.net.clone().run());
        let scanner = {
            let this = this.clone();
            tokio::spawn(async move {
                let mut full = tokio::time::interval(FULL_RESCAN);
                full.tick().await;
                loop {
                    let mut paths = tokio::select! {
                        p = rx.recv() => match p { Some(p) => p, None => break },
                        _ = full.tick() => vec![String::new()],
                    };
                    while let Ok(more) = rx.try_recv() {
                        paths.extend(more);
                    }
                    tracing::debug!("rescanning {} paths", paths.len());
                    if let Err(e) = this.rescan(paths).await {
                        tracing::warn!("rescan: {e:#}");
                    }
                }
            })
        };
        let reloader = {
            let this = this.clone();
            tokio::spawn(async move {
                let path = this.home.config();
                let mut last = modified(&path);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = modified(&path);
                    if now != last {
                        last = now;
                        match Config::load(&this.home) {
                            Ok(c) => this.net.set_peers(&c.peers),
                            Err(e) => tracing::warn!("reloading config: {e}"),
                        }
                    }
                }
            })
        };
        let control = {
            let this = this.clone();
            let sock = control_socket(&this.home);
            let _ = std::fs::remove_file(&sock);
            let listener = tokio::net::UnixListener::bind(&sock)
                .with_context(|| format!("binding the control socket {}", sock.display()))?;
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let this = this.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.serve_control(stream).await {
                            tracing::info!("control client: {e:#}");
                        }
                    });
                }
            })
        };
        wait_for_signal().await?;
        eprintln!("stopping");
        control.abort();
        let _ = std::fs::remove_file(control_socket(&this.home));
        scanner.abort();
        reloader.abort();
        this.net.shutdown().await;
        runner.abort();
        this.shared
            .with_node(|n| Ok(n.store.flush()?))
            .await
            .context("flushing the store")?;
        Ok(())
    }
}

impl Daemon {
    fn status(&self, seq: u64) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.net.id().to_string(),
            "seq": seq,
            "peers": self.net.peer_status(),
        })
    }

    /// One request per line, one JSON answer per line.
    async fn serve_control(&self, stream: tokio::net::UnixStream) -> Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await? {
            let req: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let answer = match req["cmd"].as_str() {
                Some("status") => {
                    let seq = *self.shared.seq.borrow();
                    self.status(seq)
                }
                Some("sync") => {
                    let timeout =
                        Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(30_000));
                    self.sync_now(timeout).await
                }
                _ => serde_json::json!({"error": "unknown request"}),
            };
            let mut out = serde_json::to_vec(&answer)?;
            out.push(b'\n');
            w.write_all(&out).await?;
        }
        Ok(())
    }

    /// Scans everything, then waits until every configured peer is connected,
    /// has been sent our whole change log and has had everything it
    /// announced applied here.
    async fn sync_now(&self, timeout: Duration) -> serde_json::Value {
        if let Err(e) = self.rescan(vec![String::new()]).await {
            return serde_json::json!({"ok": false, "error": format!("scan: {e:#}")});
        }
        let seq = *self.shared.seq.borrow();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let peers = self.net.peer_status();
            let done = peers.iter().any(|p| p.connected > 0)
                && peers
                    .iter()
                    .filter(|p| p.connected > 0)
                    .all(|p| p.sent_upto >= seq && p.received_upto >= p.remote_seq);
            if done || tokio::time::Instant::now() >= deadline {
                let mut v = self.status(seq);
                v["ok"] = done.into();
                if !done {
                    v["error"] = if peers.is_empty() {
                        "no peers configured".into()
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

/// The running node's control socket in its home.
pub fn control_socket(home: &Home) -> PathBuf {
    home.dir.join("control.sock")
}

/// Sends one request to a running node; `None` when no node runs in `home`.
pub fn control_request(home: &Home, req: &serde_json::Value) -> Result<Option<serde_json::Value>> {
    use std::io::{BufRead, Write};
    let sock = control_socket(home);
    let stream = match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    Ok(Some(
        serde_json::from_str(&answer).context("bad answer from the node")?,
    ))
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

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
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

async fn wait_for_signal() -> Result<()> {
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
    use super::roots;

    #[test]
    fn scan_roots() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(roots(v(&["a/b", "a", "ab", "a/c/d"])), v(&["a", "ab"]));
        assert_eq!(roots(v(&["x", ""])), v(&[""]));
    }
}
