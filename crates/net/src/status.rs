//! What a node knows about its peers (status, counters) and the
//! `test-network` probe.

use super::*;

/// Where the link with a peer stands, in words a person can act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No session and nothing known against it (not reached yet).
    #[default]
    Offline,
    /// A session is open: both sides proved they hold the folder key.
    Connected,
    /// This node paused sync (`sovryn resume`).
    Paused,
    /// The peer paused sync (`sovryn resume` there).
    PeerPaused,
    /// The peer keeps another folder: it must join with this folder's key.
    WrongFolderKey,
    /// The peer does not list this node (`sovryn peers add` there).
    NotAllowedThere,
    /// The last session or dial failed: see `last_error`.
    Error,
}

/// What this node knows about a peer right now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    /// Endpoint id.
    pub id: String,
    /// Configured name, else the name it announced.
    pub name: Option<String>,
    /// Where the link stands.
    pub state: LinkState,
    /// Sessions open with it (proven: past the membership proof).
    pub connected: u32,
    /// File states announced by it and not yet applied here (change-log
    /// entries; those being fetched count as files).
    pub to_receive_files: u64,
    /// Bytes of the files being fetched from it that have not arrived yet.
    pub to_receive_bytes: u64,
    /// File states of this node's change log it has not acknowledged yet
    /// (within its scope).
    pub to_send_files: u64,
    /// Their bytes (file sizes).
    pub to_send_bytes: u64,
    /// Chunk bytes received from it per second, over the last 3 seconds.
    pub receive_rate: u64,
    /// Chunk bytes sent to it per second, over the last 3 seconds.
    pub send_rate: u64,
    /// What kind of failure `last_error` is.
    #[serde(skip)]
    pub(crate) problem: LinkState,
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

/// Bytes per second over the last few whole seconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Meter {
    /// (second since the process started, bytes in it), by second modulo 4.
    seconds: [(u64, u64); 4],
}

impl Meter {
    fn now() -> u64 {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs()
    }

    /// Counts `n` bytes now.
    pub(crate) fn add(&mut self, n: u64) {
        let now = Self::now();
        let slot = &mut self.seconds[(now % 4) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += n;
    }

    /// The mean over the last 3 whole seconds.
    pub(crate) fn rate(&self) -> u64 {
        let now = Self::now();
        let total: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| *s < now && now - *s <= 3)
            .map(|(_, b)| b)
            .sum();
        total / 3
    }
}

/// Files being fetched from a peer: prepared batches not yet applied.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Incoming {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Chunk bytes (plaintext) that arrived for them.
    pub(crate) fetched: u64,
}

/// Classifies a session's or a dial's failure (its error chain).
fn error_state(text: &str) -> LinkState {
    if text.contains(&format!("(code {})", allowlist::PAUSED_CODE)) {
        LinkState::PeerPaused
    } else if text.contains("membership proof failed")
        // TLS: the peer serves no folder of this ALPN (another folder key,
        // or a release before folder ALPNs).
        || text.contains("doesn't support any known protocol")
        || text.contains("no application protocol")
    {
        LinkState::WrongFolderKey
    } else if text.contains("not an allowed peer") {
        LinkState::NotAllowedThere
    } else {
        LinkState::Error
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
pub(crate) const MAX_PROBE: u64 = 64 << 20;

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
    // Counters start at zero: rate() and alerts work before the first event.
    for c in [
        "files_synced_total",
        "sync_conflicts_total",
        "sync_errors_total",
    ] {
        metrics::counter!(c).increment(0);
    }
    metrics::describe_gauge!(
        "storage_available_bytes",
        metrics::Unit::Bytes,
        "Bytes free on the file system holding the node's home"
    );
}

/// Asks the peer for `bytes` of filler on a fresh stream; returns the bytes
/// read and the seconds they took.
pub(crate) async fn probe(conn: &Connection, bytes: u64) -> Result<(u64, f64)> {
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

impl SyncNet {
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

    /// Status of every configured peer (and, while this node is paused,
    /// of the peers it paused), without what is left to send (see
    /// [`SyncNet::peer_report`]).
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut peers = self.allow.all();
        peers.extend(self.allow.paused_peers());
        let mut out: Vec<PeerStatus> = peers
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
                        // A connection still proving membership is not a session.
                        s.connected = p.established.len() as u32;
                        s.receive_rate = p.recv_meter.rate();
                        s.send_rate = p.send_meter.rate();
                        let files: u64 = p.incoming.values().map(|i| i.files).sum();
                        s.to_receive_files =
                            files.max(s.remote_seq.saturating_sub(s.received_upto));
                        s.to_receive_bytes = p
                            .incoming
                            .values()
                            .map(|i| i.bytes.saturating_sub(i.fetched))
                            .sum();
                        s
                    }
                    None => PeerStatus::default(),
                };
                s.state = if self.allow.is_paused_for(&id) {
                    LinkState::Paused
                } else if s.connected > 0 {
                    LinkState::Connected
                } else if s.last_error.is_some() {
                    s.problem
                } else {
                    LinkState::Offline
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

    /// [`SyncNet::peer_status`] plus what is left to send to each peer:
    /// the states of this node's change log after what it acknowledged,
    /// within its scope (read from the store).
    pub async fn peer_report(&self) -> Vec<PeerStatus> {
        let mut out = self.peer_status();
        let scopes: Vec<(u64, Option<PeerConfig>)> = out
            .iter()
            .map(|p| {
                let cfg =
                    p.id.parse::<EndpointId>()
                        .ok()
                        .and_then(|id| self.allow.get(&id));
                (p.acked_upto, cfg)
            })
            .collect();
        let pending = self
            .shared
            .with_reader(move |s| {
                scopes
                    .into_iter()
                    .map(|(from, cfg)| {
                        let mut files = 0u64;
                        let mut bytes = 0u64;
                        for (_, path, _, deleted, size) in s.path_changes_since(from)? {
                            if cfg.as_ref().is_none_or(|c| sent_to(c, &path)) {
                                files += 1;
                                bytes += if deleted { 0 } else { size };
                            }
                        }
                        Ok((files, bytes))
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })
            .await;
        match pending {
            Ok(pending) => {
                for (p, (files, bytes)) in out.iter_mut().zip(pending) {
                    p.to_send_files = files;
                    p.to_send_bytes = bytes;
                }
            }
            Err(e) => tracing::warn!("reading what is left to send: {e}"),
        }
        out
    }

    /// Counts chunk bytes sent to `peer`, or received from it on `conn`.
    pub(crate) fn count_chunk(&self, peer: &EndpointId, conn: Option<usize>, n: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let p = st.entry(*peer).or_default();
        match conn {
            None => p.send_meter.add(n),
            Some(c) => {
                p.recv_meter.add(n);
                if let Some(i) = p.incoming.get_mut(&c) {
                    i.fetched += n;
                }
            }
        }
    }

    /// Adds (or, with `done`, removes) a batch of files being fetched by
    /// the session on `conn`. Per session: a duplicate connection that
    /// ends takes only its own batches along.
    pub(crate) fn incoming(
        &self,
        peer: &EndpointId,
        conn: usize,
        files: u64,
        bytes: u64,
        done: bool,
    ) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut st.entry(*peer).or_default().incoming;
        let i = map.entry(conn).or_default();
        if done {
            i.files = i.files.saturating_sub(files);
            i.bytes = i.bytes.saturating_sub(bytes);
            i.fetched = i.fetched.saturating_sub(bytes);
            if i.files == 0 {
                map.remove(&conn);
            }
        } else {
            i.files += files;
            i.bytes += bytes;
        }
    }

    pub(crate) fn update_status(&self, peer: &EndpointId, f: impl FnOnce(&mut PeerStatus)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st.entry(*peer).or_default().status);
    }
}

/// Records a session's or a dial's failure in the peer's status: the cases
/// a person can act on in words, the rest as the error chain.
pub(crate) fn record_error(status: &mut PeerStatus, e: &anyhow::Error) {
    let text = format!("{e:#}");
    status.problem = error_state(&text);
    status.last_error = Some(describe_error(status.problem, text));
}

fn describe_error(state: LinkState, text: String) -> String {
    match state {
        LinkState::PeerPaused => "the peer has paused sync ('sovryn resume' there)".into(),
        LinkState::WrongFolderKey => "the peer keeps another folder (another folder key, or a sovryn too old to serve this one): join with 'sovryn init --folder-key-file' using 'sovryn folder-key' of a member".into(),
        LinkState::NotAllowedThere => {
            format!("{text} (add this node there with 'sovryn peers add')")
        }
        _ => text,
    }
}
