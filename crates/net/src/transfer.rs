//! Chunk transfer: serving sealed chunks (within a scoped peer's rights)
//! and fetching missing ones from every connected peer, checked and stored
//! by a task that never stalls the streams.

use super::*;

/// Chunk ids per `GetChunks` stream.
const CHUNKS_PER_REQUEST: usize = 16;

/// `GetChunks` streams in flight per peer. QUIC grants each stream a
/// window of 1.25 MB; a busy receiver returns that credit late, so one
/// connection moved only 250 MiB/s with 4 streams of 128 chunks, and
/// 340 MiB/s with 32 of 16.
const FETCH_STREAMS: usize = 32;

/// No request starts more than this many requests past the oldest one
/// still running, so a slow stream cannot make the rest run far ahead
/// of a file's write (48 x 16 x 64 KiB = 48 MiB, within the assembly's
/// limit of what it holds out of order for chunks of the usual size).
const MAX_SPREAD: usize = 48;

/// Received chunk bytes checked and stored together (at most).
const PUT_BYTES: usize = 8 << 20;

/// Received chunks queued for checking and storing (at most 256 KiB each).
const STORE_QUEUE: usize = 256;

/// Chunks read from the store per blocking call when serving.
const SERVE_GROUP: usize = 16;

/// Where checked plaintext goes while chunks are fetched: files being
/// written as their chunks arrive.
pub(crate) trait PlainSink: Send + 'static {
    /// The chunks whose plaintext it wants.
    fn wanted_ids(&self) -> std::collections::HashSet<ChunkId>;
    /// Takes the checked plaintext of `id` (chunks this node already had
    /// are read from `view`).
    fn received(&mut self, view: &dyn sovryn_engine::View, id: &ChunkId, plain: Vec<u8>);
}

impl PlainSink for Assembly {
    fn wanted_ids(&self) -> std::collections::HashSet<ChunkId> {
        Assembly::wanted_ids(self)
    }
    fn received(&mut self, view: &dyn sovryn_engine::View, id: &ChunkId, plain: Vec<u8>) {
        Assembly::received(self, view, id, plain)
    }
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

impl SyncNet {
    /// Serves the peer's chunk requests, each on its own stream, sealed as
    /// stored. A peer limited to some paths gets only chunks named by kept
    /// versions of paths in its scope: it cannot confirm a guess about a
    /// file outside it by asking for the guessed chunk's id.
    pub(crate) async fn serve_chunks(self: Arc<Self>, conn: Connection) -> Result<()> {
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
                                    me.count_chunk(&peer, None, c.raw_len as u64);
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
    /// Large files being assembled (`assembly`) get each chunk's plaintext
    /// as it is checked, and come back with the chunks still to write.
    /// `receiving` is the session's permit to receive from the peer, held
    /// until the last chunk received is stored, even if the session ends.
    pub(crate) async fn fetch_chunks<S: PlainSink>(
        self: &Arc<Self>,
        origin: &Connection,
        ids: Vec<ChunkId>,
        assembly: Option<S>,
        receiving: Arc<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(Vec<ChunkId>, Option<S>)> {
        let mut sources = vec![origin.clone()];
        sources.extend(self.other_connections(origin));
        let mut groups: std::collections::VecDeque<(Vec<ChunkId>, usize, usize)> = ids
            .chunks(CHUNKS_PER_REQUEST)
            .enumerate()
            .map(|(i, g)| (g.to_vec(), i % sources.len(), i))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel::<(EndpointId, Received)>(STORE_QUEUE);
        let storing = self.clone().store_received(rx, assembly);
        let storer = tokio::spawn(async move {
            let stored = storing.await;
            drop(receiving);
            stored
        });
        let mut in_flight = vec![0usize; sources.len()];
        // Request numbers running (with a count each): none starts more
        // than MAX_SPREAD requests past the oldest still running.
        let mut running_at: std::collections::BTreeMap<usize, usize> = Default::default();
        let mut lacking = Vec::new();
        let mut running = tokio::task::JoinSet::new();
        let result: Result<()> = async {
            loop {
                // Start what the free streams allow, in order.
                let mut i = 0;
                while i < groups.len() {
                    let (src, at) = (groups[i].1, groups[i].2);
                    let near = running_at
                        .keys()
                        .next()
                        .is_none_or(|&oldest| at < oldest + MAX_SPREAD);
                    // Later groups are further on (retries come first).
                    if !near {
                        break;
                    }
                    if in_flight[src] < FETCH_STREAMS {
                        let Some((group, src, at)) = groups.remove(i) else {
                            break;
                        };
                        in_flight[src] += 1;
                        *running_at.entry(at).or_default() += 1;
                        let me = self.clone();
                        let conn = sources[src].clone();
                        let tx = tx.clone();
                        running.spawn(async move {
                            let r = me.fetch_group(&conn, group.clone(), &tx).await;
                            (src, group, at, r)
                        });
                    } else if sources.len() == 1 {
                        break;
                    } else {
                        i += 1;
                    }
                }
                let Some(done) = running.join_next().await else {
                    return Ok(());
                };
                let (src, group, at, r) = done.context("chunk fetch panicked")?;
                in_flight[src] -= 1;
                if let Some(n) = running_at.get_mut(&at) {
                    *n -= 1;
                    if *n == 0 {
                        running_at.remove(&at);
                    }
                }
                match r {
                    Ok(missing) if missing.is_empty() => {}
                    Ok(missing) if src == 0 => lacking.extend(missing),
                    // Another peer lacked some: ask the origin.
                    Ok(missing) => groups.push_front((missing, 0, at)),
                    Err(e) if src != 0 => {
                        tracing::debug!("chunks from another peer: {e:#}");
                        groups.push_front((group, 0, at));
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
        let assembly = stored.context("storing received chunks")?;
        result?;
        Ok((lacking, assembly))
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
                    self.count_chunk(&peer, Some(conn.stable_id()), u64::from(raw_len));
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

    /// Drains the queue of received chunks in two overlapping stages:
    /// whatever has arrived (up to [`PUT_BYTES`]) is checked on every core
    /// while the batch before it is written and stored, and the streams go
    /// on filling the queue meanwhile.
    async fn store_received<S: PlainSink>(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<(EndpointId, Received)>,
        assembly: Option<S>,
    ) -> Result<Option<S>> {
        let assembled = Arc::new(
            assembly
                .as_ref()
                .map(PlainSink::wanted_ids)
                .unwrap_or_default(),
        );
        let (checked_tx, checked_rx) = tokio::sync::mpsc::channel::<Checked>(1);
        let committer = tokio::spawn(self.clone().commit_checked(checked_rx, assembly));
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let mut checking_time = Duration::ZERO;
        let checking: Result<()> = async {
            let mut buf: Vec<(EndpointId, Received)> = Vec::new();
            let mut bytes = 0usize;
            let mut open = true;
            while open {
                let next = if buf.is_empty() {
                    let t = Instant::now();
                    let n = rx.recv().await;
                    waited += t.elapsed();
                    n
                } else {
                    match rx.try_recv() {
                        Ok(item) => Some(item),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            open = false;
                            None
                        }
                    }
                };
                match next {
                    Some(item) => {
                        bytes += item.1.len();
                        buf.push(item);
                        if bytes < PUT_BYTES {
                            continue;
                        }
                    }
                    None if buf.is_empty() => break,
                    None => {}
                }
                let t = Instant::now();
                let checked =
                    check_batch(&self.shared.codec, std::mem::take(&mut buf), &assembled).await?;
                checking_time += t.elapsed();
                bytes = 0;
                if checked_tx.send(checked).await.is_err() {
                    // The committer stopped: its error says why.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(checked_tx);
        let (assembly, written, stored) =
            committer.await.context("chunk storing task panicked")??;
        checking?;
        tracing::debug!(
            "storing received chunks: {:.2} s, of which {:.2} s waiting for the network; \
             checking {:.2} s, then writing {:.2} s and storing {:.2} s",
            started.elapsed().as_secs_f64(),
            waited.as_secs_f64(),
            checking_time.as_secs_f64(),
            written.as_secs_f64(),
            stored.as_secs_f64(),
        );
        Ok(assembly)
    }

    /// The second stage of [`Self::store_received`]: writes each checked
    /// batch's plaintext into the files being assembled, then appends its
    /// sealed chunks under the writer and counts them for their peers.
    async fn commit_checked<S: PlainSink>(
        self: Arc<Self>,
        mut batches: tokio::sync::mpsc::Receiver<Checked>,
        mut assembly: Option<S>,
    ) -> Result<(Option<S>, Duration, Duration)> {
        let (mut written, mut stored) = (Duration::ZERO, Duration::ZERO);
        while let Some(Checked { chunks, per_peer }) = batches.recv().await {
            // The plaintext file and the sealed pack are independent writes:
            // each waits on the disk in its own thread.
            let (plain, sealed): (Vec<_>, Vec<_>) = chunks
                .into_iter()
                .map(|(p, s)| (p.map(|p| (s.id, p)), s))
                .unzip();
            let shared = self.shared.clone();
            let assembling = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let mut assembly = assembly;
                if let Some(a) = &mut assembly {
                    shared.on_reader_now(|view| {
                        for (id, p) in plain.into_iter().flatten() {
                            a.received(view, &id, p);
                        }
                    });
                }
                (assembly, t.elapsed())
            });
            let t = Instant::now();
            let storing = self
                .shared
                .with_node_bulk(move |n| {
                    n.store.put_sealed(sealed)?;
                    Ok(())
                })
                .await;
            stored += t.elapsed();
            let (back, took) = assembling.await.context("assembling task panicked")?;
            assembly = back;
            written += took;
            storing?;
            for (peer, n) in per_peer {
                self.update_status(&peer, |s| s.chunks_received += n);
            }
        }
        Ok((assembly, written, stored))
    }
}

/// A batch of received chunks, each opened under the folder key and hashed
/// against its id, kept sealed as received; with its plaintext when a file
/// being assembled needs it.
struct Checked {
    chunks: Vec<(Option<Vec<u8>>, SealedChunk)>,
    per_peer: HashMap<EndpointId, u64>,
}

/// Checks `chunks`, split over the machine's cores on blocking threads
/// (not rayon's pool, whose idle spinning takes the CPU the streams and
/// the committer need).
async fn check_batch(
    codec: &ChunkCodec,
    chunks: Vec<(EndpointId, Received)>,
    assembled: &Arc<std::collections::HashSet<ChunkId>>,
) -> Result<Checked> {
    let mut per_peer: HashMap<EndpointId, u64> = HashMap::new();
    for (peer, _) in &chunks {
        *per_peer.entry(*peer).or_default() += 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_part = chunks.len().div_ceil(cores).max(4);
    let mut parts = Vec::new();
    let mut rest = chunks.into_iter().map(|(_, c)| c).peekable();
    while rest.peek().is_some() {
        let part: Vec<Received> = rest.by_ref().take(per_part).collect();
        let codec = codec.clone();
        let assembled = assembled.clone();
        parts.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|c| match c {
                    Received::Sealed(s) => codec
                        .open_sealed(&s)
                        .map(|plain| (assembled.contains(&s.id).then_some(plain), s)),
                })
                .collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut out = Vec::new();
    for part in parts {
        out.extend(part.await.context("checking task panicked")??);
    }
    Ok(Checked {
        chunks: out,
        per_peer,
    })
}
