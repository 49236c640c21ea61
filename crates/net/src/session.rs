//! One connection with a peer: duplicate resolution, the membership
//! proof, the Hello with index epochs and log checks, then the index
//! exchange and the chunk server running side by side.

use super::*;

/// How long to wait for the peer's `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// The sending half of a session's control stream ([`crate::seals::Control`]).
pub(crate) type ControlSend = Arc<crate::seals::Control>;

pub(crate) fn meta_key(peer: &EndpointId) -> String {
    format!("peer.{peer}.seq")
}

/// The `meta` key of the last state applied from `peer`'s log ([`LogCheck`]).
pub(crate) fn check_key(peer: &EndpointId) -> String {
    format!("peer.{peer}.check")
}

/// The store's `meta` key of this node's index epoch.
const INDEX_EPOCH: &str = "index_epoch";

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
pub(crate) fn msg_name(m: &Msg) -> &'static str {
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
        Msg::Coming { .. } => "coming",
        Msg::Devices { .. } => "devices",
        Msg::Vault { .. } => "vault",
        Msg::Seals { .. } => "seals",
    }
}

impl SyncNet {
    pub(crate) async fn run_session(self: Arc<Self>, conn: Connection, dialer: bool) {
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
                // Batches this session prepared will never be applied by it.
                s.incoming.remove(&conn.stable_id());
                s.established.remove(&conn.stable_id());
                let cs = conn.stats();
                s.closed_bytes.0 += cs.udp_tx.bytes;
                s.closed_bytes.1 += cs.udp_rx.bytes;
                if let Err(e) = &res {
                    record_error(&mut s.status, e);
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
            .with_node_bulk(move |n| {
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
                coming: true,
                devices: true,
                vault: true,
                seals: true,
            },
        )
        .await?;
        let hello = tokio::time::timeout(HELLO_TIMEOUT, wire::read_msg(&mut recv))
            .await
            .context("no Hello from the peer")??;
        let hello = match hello {
            Some(Msg::Error { message }) => bail!("peer refused: {message}"),
            Some(m) => m,
            None => bail!("peer closed the stream before Hello"),
        };
        let kind = msg_name(&hello);
        let Msg::Hello {
            folder_id,
            name: their_name,
            seq: their_seq,
            want_since: their_want,
            epoch: their_epoch,
            want_epoch: their_want_epoch,
            check: their_check,
            coming: hears_coming,
            devices: hears_devices,
            vault: hears_vault,
            seals: hears_seals,
            ..
        } = hello
        else {
            bail!("expected Hello, got {kind}");
        };
        // Both proved the folder key, so the ids agree; a mismatch is a
        // bug or a forgery.
        anyhow::ensure!(
            folder_id == self.folder_id,
            "folder id mismatch after proof"
        );
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
                .with_node_bulk(move |n| {
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
            // What the peer already applied of our log counts as
            // acknowledged: after a pause or a reconnect with nothing new,
            // no index message (and so no ack) would ever come.
            s.acked_upto = s.acked_upto.max(their_want);
            s.last_error = None;
        });
        // The control stream's sending half carries our index messages and
        // our acks of theirs.
        let send = Arc::new(crate::seals::Control::new(
            send,
            self.shared.codec.clone(),
            hears_seals,
        ));
        drop(cfg);
        let device_sender = {
            let me = self.clone();
            let send = send.clone();
            async move {
                me.send_devices(peer, send, hears_devices, hears_vault)
                    .await
            }
        };
        let sender = {
            let me = self.clone();
            let send = send.clone();
            async move { me.send_index(peer, send, their_want, hears_coming).await }
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
            r = device_sender => r.context("sending the device list"),
            r = sender => r.context("sending"),
            r = server => r.context("serving chunks"),
            r = receiver => r.context("receiving"),
        }
    }

    /// The peer's rights as configured now: every decision of a session
    /// reads them, so narrowing a peer takes effect at once.
    pub(crate) fn rights(&self, peer: &EndpointId) -> Result<PeerConfig> {
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

    /// Notes that `peer` has applied this node's log up to `upto`: in the
    /// status at once, and in the store (for [`sovryn_engine::peer_state`])
    /// off this task.
    pub(crate) fn acknowledged(self: &Arc<Self>, peer: &EndpointId, upto: u64) {
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
                .with_node_bulk(move |n| {
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
