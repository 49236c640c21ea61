//! The index exchange: sending this node's change log (and older
//! versions to a new peer), receiving the peer's, fetching what its states
//! need and applying them, with acknowledgements and retries.

use super::*;

/// Most records per `Index` message (the receiver applies up to 2000 in
/// one group: one pair of `syncfs` and one transaction).
const INDEX_BATCH: usize = 2000;

/// Most chunk ids named by the records of one `Index` message (keeps the
/// JSON well under the frame cap when files are large).
const INDEX_CHUNKS: usize = 16_384;

/// How long after a state failed to apply its session ends, so the next
/// one retries it.
const APPLY_RETRY: Duration = Duration::from_secs(5);

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

/// The next notice of durable chunks, or never without a subscription.
async fn next_notice(
    rx: &mut Option<broadcast::Receiver<Arc<crate::shared::DurableChunks>>>,
) -> Result<Arc<crate::shared::DurableChunks>, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl SyncNet {
    pub(crate) async fn send_index(
        &self,
        peer: EndpointId,
        send: ControlSend,
        from: u64,
        hears_coming: bool,
    ) -> Result<()> {
        if from == 0 {
            self.send_history(&peer, &send).await?;
        }
        let peer_s = peer.to_string();
        let mut sent = from;
        let mut rx = self.shared.seq.subscribe();
        let mut durable = hears_coming.then(|| self.shared.durable.subscribe());
        loop {
            // Notices go out before the records read after them: a notice
            // is published before its file's record is committed.
            while let Some(Ok(d)) = durable.as_mut().map(|d| d.try_recv()) {
                self.send_coming(&peer, &send, &d).await?;
            }
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
                tokio::select! {
                    biased;
                    notice = next_notice(&mut durable) => match notice {
                        Ok(d) => self.send_coming(&peer, &send, &d).await?,
                        // Missed notices only mean less fetched ahead.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => durable = None,
                    },
                    changed = rx.changed() => if changed.is_err() {
                        return Ok(());
                    },
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
                    send.send(&msg).await?;
                    chunks = 0;
                    self.update_status(&peer, |s| s.sent_upto = sent);
                }
            }
        }
    }

    /// Passes on chunks of a file still being scanned to a peer that may
    /// have its record (one without a path scope: a scoped peer is served
    /// only chunks of versions in its scope, which these are not yet).
    async fn send_coming(
        &self,
        peer: &EndpointId,
        send: &ControlSend,
        d: &crate::shared::DurableChunks,
    ) -> Result<()> {
        let cfg = self.rights(peer)?;
        if !cfg.paths.is_empty() || !sent_to(&cfg, &d.path) {
            return Ok(());
        }
        for (i, part) in d.chunks.chunks(wire::MAX_COMING).enumerate() {
            let msg = wire::Coming::msg(&d.path, d.first + i * wire::MAX_COMING, part);
            send.send(&msg).await?;
        }
        Ok(())
    }

    /// Sends every older version this node keeps (within the peer's scope)
    /// as `history` records, to a peer that has none of this node's log yet,
    /// so a node that joins later gets the history and not only the tree.
    pub(crate) async fn send_history(&self, peer: &EndpointId, send: &ControlSend) -> Result<()> {
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
                    send.send(&msg).await?;
                    chunks = 0;
                }
            }
        }
        if total > 0 {
            tracing::info!("sent {total} older versions to a new peer");
        }
        Ok(())
    }

    /// Receives the peer's index messages. Two stages run at once: the
    /// first reads a message, keeps the states that may win here and
    /// fetches their chunks; the second applies prepared messages in order,
    /// records how far the peer's log is applied and acknowledges it. So the
    /// next message's chunks travel while the previous one is written to disk.
    pub(crate) async fn receive_index(
        self: &Arc<Self>,
        peer: EndpointId,
        conn: &Connection,
        mut recv: iroh::endpoint::RecvStream,
        send: ControlSend,
    ) -> Result<()> {
        struct Prepared {
            list: Vec<(String, Entry)>,
            /// Large files of `list` written while their chunks arrived.
            assembled: sovryn_engine::sync::Staged,
            /// Older versions of paths this node does not have, oldest first.
            history: Vec<(String, Entry)>,
            seq_of: HashMap<String, u64>,
            upto: u64,
            received: Instant,
            /// The newest state of the peer's log in this message.
            last: Option<LogCheck>,
            /// Files and bytes of `list` counted as incoming in the status.
            incoming: (u64, u64),
        }
        let gate = {
            let mut map = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(peer)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
                .clone()
        };
        // Held by this session and by its chunk storing task, which may
        // outlive it by the chunks already queued.
        let permit = Arc::new(
            tokio::time::timeout(Duration::from_secs(30), gate.acquire_owned())
                .await
                .context("the previous session with this peer is still storing chunks")?
                .context("receiving gate closed")?,
        );
        let peer_s = peer.to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(2);
        let fetcher = async move {
            let mut ahead: Option<crate::ahead::Ahead> = None;
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
                    Msg::Coming {
                        path,
                        first,
                        chunks,
                        lens,
                    } => {
                        match wire::Coming::parse(&path, first, &chunks, lens) {
                            Ok(c) => {
                                self.fetch_ahead(&peer, conn, &mut ahead, c, &permit)
                                    .await?
                            }
                            Err(e) => tracing::debug!("{}: {e}", peer.fmt_short()),
                        }
                        continue;
                    }
                    Msg::Devices { ops } => {
                        if ops.len() > sovryn_engine::devices::MAX_OPS {
                            bail!("a device list of {} operations", ops.len());
                        }
                        self.merge_devices(&peer, ops).await?;
                        continue;
                    }
                    Msg::Vault { envelope } => {
                        self.merge_vault(&peer, envelope).await?;
                        continue;
                    }
                    Msg::Seals { epochs } => {
                        self.merge_seals(&peer, epochs).await?;
                        continue;
                    }
                    Msg::Error { message } => bail!("peer: {message}"),
                    other => bail!("unexpected {} message", msg_name(&other)),
                };
                // Chunks still being fetched ahead are stored before this
                // message's missing chunks are worked out: none twice.
                if let Some(a) = ahead.as_mut() {
                    a.settle(0).await?;
                }
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
                let named: Vec<String> = current.iter().map(|(p, _)| p.clone()).collect();
                let read_only = cfg.read_only;
                let who = peer_s.clone();
                // Remember what the peer has; keep only states that may win
                // here (and history of paths this node lacks); find the
                // chunks they need.
                let (list, history, missing, history_missing) = self
                    .shared
                    .with_node_bulk(move |n| {
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
                            keep = n.useful_states(current)?;
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
                let incoming = (
                    list.len() as u64,
                    list.iter()
                        .filter(|(_, e)| !e.deleted)
                        .map(|(_, e)| e.size)
                        .sum::<u64>(),
                );
                self.incoming(&peer, conn.stable_id(), incoming.0, incoming.1, false);
                let mut assembled = sovryn_engine::sync::Staged::default();
                let adopted = match ahead.as_mut() {
                    Some(a) => a.adopt(&list, &named).await?,
                    None => HashMap::new(),
                };
                for (rel, a) in &adopted {
                    tracing::info!("{rel}: {} MiB written ahead taken over", a.offset >> 20);
                }
                if !missing.is_empty() || !history_missing.is_empty() || !adopted.is_empty() {
                    let n = missing.len() + history_missing.len();
                    let need: std::collections::HashSet<ChunkId> =
                        missing.iter().copied().collect();
                    let mut all = missing;
                    all.extend(history_missing);
                    // Files are written while their chunks arrive.
                    let root = self
                        .shared
                        .with_view(|v| sovryn_engine::View::root(v).to_path_buf())
                        .await?;
                    let assembly = Some(Assembly::start(&root, &list, &all, adopted))
                        .filter(|a| !a.is_empty());
                    let (lacking, assembly) = self
                        .fetch_chunks(conn, all, assembly, permit.clone())
                        .await?;
                    if let Some(a) = assembly {
                        self.shared.with_node_bulk(|n| Ok(n.store.flush()?)).await?;
                        assembled = self.shared.with_own_reader(move |v| a.finish(v)).await?;
                    }
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
                    assembled,
                    history,
                    seq_of,
                    upto,
                    received,
                    last,
                    incoming,
                };
                if tx.send(prepared).await.is_err() {
                    return Ok(());
                }
            }
        };
        let conn_id = conn.stable_id();
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
                    assembled,
                    history,
                    seq_of,
                    upto,
                    received,
                    last,
                    incoming,
                }) = next
                else {
                    break;
                };
                let any = !list.is_empty();
                let key = key.clone();
                let ckey = ckey.clone();
                // History messages (upto 0) do not move the peer's position.
                let history_only = upto == 0;
                let staged = self.stage_large_files(&list, assembled).await?;
                let (seq, changed, upto, new_floor, failed) = self
                    .shared
                    .with_node_bulk(move |n| {
                        let added = add_history(n, history)?;
                        if added > 0 {
                            tracing::debug!("added {added} older versions");
                        }
                        let report = if list.is_empty() {
                            Default::default()
                        } else {
                            n.apply_remote_staged(&list, staged)?
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
                self.incoming(&peer, conn_id, incoming.0, incoming.1, true);
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
                send.send(&Msg::Ack { upto }).await?;
            }
            anyhow::Ok(())
        };
        tokio::try_join!(fetcher, applier)?;
        Ok(())
    }
}

impl SyncNet {
    /// Writes the large files among `list` not assembled already out from a read-only handle
    /// (after making the fetched chunks readable to it), so the writer is
    /// held only to rename them into place and commit.
    async fn stage_large_files(
        &self,
        list: &[(String, sovryn_store::Entry)],
        mut staged: sovryn_engine::sync::Staged,
    ) -> Result<sovryn_engine::sync::Staged, Error> {
        let big: Vec<(String, sovryn_store::Entry)> = list
            .iter()
            .filter(|(rel, e)| sovryn_engine::sync::written_ahead(e) && !staged.contains(rel))
            .cloned()
            .collect();
        if big.is_empty() {
            return Ok(staged);
        }
        self.shared.with_node_bulk(|n| Ok(n.store.flush()?)).await?;
        let more = self
            .shared
            .with_own_reader(move |v| sovryn_engine::sync::Staged::prepare(v, &big))
            .await?;
        staged.extend(more);
        Ok(staged)
    }

    /// Asks every peer for its whole change log again (this node now keeps
    /// paths it skipped before: a rule was taken back). Positions are
    /// reset, then the sessions close and reconnect from zero; states this
    /// node already has cost a comparison, the skipped ones are fetched.
    pub async fn refetch_all(&self) -> Result<(), Error> {
        let peers: Vec<EndpointId> = self.allow.all().into_iter().map(|(id, _)| id).collect();
        let ids = peers.clone();
        self.shared
            .with_node_bulk(move |n| {
                for p in &ids {
                    n.store.set_meta(&meta_key(p), "0")?;
                    n.store.set_meta(&check_key(p), "")?;
                }
                Ok(())
            })
            .await?;
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for id in peers {
            if let Some(s) = st.get(&id) {
                for (c, _) in &s.conns {
                    c.close(4u32.into(), b"rules changed");
                }
            }
        }
        Ok(())
    }
}
