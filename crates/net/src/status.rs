//! What a node knows about its peers (status, counters) and the
//! `test-network` probe.

use super::*;

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

    pub(crate) fn update_status(&self, peer: &EndpointId, f: impl FnOnce(&mut PeerStatus)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st.entry(*peer).or_default().status);
    }
}

/// A session's or a dial's failure as the peer's status shows it: the
/// cases a person can act on in words, the rest as the error chain.
pub(crate) fn describe_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if text.contains(&format!("(code {})", allowlist::PAUSED_CODE)) {
        "the peer has paused sync ('sovryn resume' there)".into()
    } else if text.contains("membership proof failed") {
        "the peer keeps another folder (another folder key): join with 'sovryn init --folder-key-file' using 'sovryn folder-key' of a member".into()
    } else if text.contains("not an allowed peer") {
        format!("{text} (add this node there with 'sovryn peers add')")
    } else {
        text
    }
}
