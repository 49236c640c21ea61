//! Frames on a stream: `[u32 BE length][u8 kind][payload]`.
//!
//! Kind 0 is a JSON [`Msg`]; kind 2 is a sealed chunk: its id, its
//! plaintext length (u32 BE), then the bytes as stored (encrypted under the
//! folder key, maybe compressed). Kind 1 (a plaintext chunk) belonged to
//! protocol 2 and is refused: nothing travels in plaintext. Lengths are
//! capped so a peer cannot make us allocate at will.
//!
//! Everything a peer sends is checked here, once: [`WireRecord::into_record`]
//! turns a record into a [`PeerRecord`] whose path is a [`RelPath`], whose
//! mode has no setuid, setgid or sticky bit, whose size agrees with its
//! chunk list and whose times and texts are bounded.

use serde::{Deserialize, Serialize};
use sovryn_engine::paths::RelPath;
use sovryn_store::{ChunkId, Entry, EntryKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN prefix of the sync protocol. Each folder is its own protocol on
/// a node's one endpoint: `sovryn/sync/3/<folder id>`.
pub const ALPN_PREFIX: &str = "sovryn/sync/3/";

/// The ALPN of the folder whose public id is `folder_id`.
pub fn alpn(folder_id: &str) -> Vec<u8> {
    format!("{ALPN_PREFIX}{folder_id}").into_bytes()
}
/// Protocol version carried in `Challenge`.
pub const VERSION: u32 = 3;
/// Largest JSON message.
pub const MAX_MSG: usize = 64 * 1024 * 1024;
/// Largest chunk frame (chunks are at most 256 KiB; some slack).
pub const MAX_CHUNK: usize = 1024 * 1024;

const KIND_MSG: u8 = 0;
/// Protocol 2's plaintext chunk frame, refused since protocol 3.
const KIND_PLAIN_CHUNK: u8 = 1;
const KIND_SEALED: u8 = 2;

/// Largest chunk plaintext (FastCDC's maximum).
pub const MAX_CHUNK_PLAIN: u64 = 256 * 1024;
/// Largest symlink target, note, author or actor name accepted from a peer.
pub const MAX_TEXT: usize = 4096;
/// Most version-vector entries accepted in one record.
pub const MAX_VV: usize = 4096;
/// How far in the future a peer's timestamps may lie (clock skew): later
/// ones are pulled back to now plus this, so a peer cannot make its writes
/// look newer than every later one.
pub const MAX_SKEW_NS: i64 = 24 * 3600 * 1_000_000_000;

/// A path's state as sent to a peer.
///
/// The chunk list travels apart from the entry, as one base64 string of the
/// raw 32-byte ids (43 characters per chunk instead of 66 as hex JSON): a
/// 1 GiB file names about 16,000 chunks, and its whole list goes out again
/// whenever one byte of it changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRecord {
    /// Relative path.
    pub path: String,
    /// Its position in the sender's change log (0 for history).
    pub seq: u64,
    /// The state, with its chunk list moved to `chunks`.
    pub entry: Entry,
    /// The chunk ids, raw and concatenated, base64 (standard, no padding).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunks: String,
    /// An older version of the path, for the receiver's history only (sent to
    /// a peer that has none of this node's log yet); never applied to disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
}

/// A record the peer sent that does not hold a valid state.
#[derive(Debug, thiserror::Error)]
#[error("bad record for {path:?}: {why}")]
pub struct BadRecord {
    /// The record's path, as sent.
    pub path: String,
    /// What is wrong.
    pub why: String,
}

/// A peer's record, checked: see [`WireRecord::into_record`].
#[derive(Debug, Clone)]
pub struct PeerRecord {
    /// The path, normalised and confined.
    pub path: RelPath,
    /// Its position in the sender's change log (0 for history).
    pub seq: u64,
    /// The state, chunk list restored, mode masked, times bounded.
    pub entry: Entry,
    /// An older version for the receiver's history only.
    pub history: bool,
}

impl WireRecord {
    /// Packs a state for the wire.
    pub fn new(path: String, seq: u64, mut entry: Entry, history: bool) -> Self {
        use base64::Engine as _;
        let mut raw = Vec::with_capacity(entry.chunks.len() * 32);
        for c in entry.chunks.drain(..) {
            raw.extend_from_slice(&c.0);
        }
        let chunks = base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw);
        WireRecord {
            path,
            seq,
            entry,
            chunks,
            history,
        }
    }

    /// Unpacks and checks the state: the path must be a normalised
    /// relative path; setuid, setgid and sticky bits are dropped; a file's
    /// size must fit its chunk list (each chunk at most 256 KiB, none for an
    /// empty file), other kinds and deletions carry no chunks; texts and the
    /// version vector are bounded; a time later than `now_ns` plus
    /// [`MAX_SKEW_NS`] is pulled back to it.
    pub fn into_record(self, now_ns: i64) -> Result<PeerRecord, BadRecord> {
        use base64::Engine as _;
        let bad = |why: String| BadRecord {
            path: self.path.chars().take(256).collect(),
            why,
        };
        let path = RelPath::parse(&self.path).map_err(|e| bad(e.to_string()))?;
        if !self.entry.chunks.is_empty() {
            return Err(bad("chunk ids inside the entry".into()));
        }
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(self.chunks.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        if raw.len() % 32 != 0 {
            return Err(bad(format!(
                "{} bytes is not a whole number of ids",
                raw.len()
            )));
        }
        let mut entry = self.entry.clone();
        entry.chunks = raw
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                ChunkId(id)
            })
            .collect();
        let n = entry.chunks.len() as u64;
        let is_file = entry.kind == EntryKind::File && !entry.deleted;
        if is_file {
            if (entry.size == 0) != (n == 0) || entry.size > n.saturating_mul(MAX_CHUNK_PLAIN) {
                return Err(bad(format!(
                    "a size of {} bytes does not fit {n} chunks",
                    entry.size
                )));
            }
        } else if n != 0 {
            return Err(bad("chunks on a directory, symlink or deletion".into()));
        }
        match (&entry.kind, &entry.target) {
            (EntryKind::Symlink, Some(t)) if !entry.deleted => {
                if t.is_empty() || t.len() > MAX_TEXT || t.contains('\0') {
                    return Err(bad("bad symlink target".into()));
                }
            }
            (EntryKind::Symlink, None) if !entry.deleted => {
                return Err(bad("a symlink without a target".into()))
            }
            (EntryKind::Symlink, _) => {}
            (_, Some(_)) => return Err(bad("a target on something not a symlink".into())),
            (_, None) => {}
        }
        let texts = [
            Some(&entry.author),
            entry.actor.as_ref(),
            entry.message.as_ref(),
        ];
        if texts.iter().flatten().any(|t| t.len() > MAX_TEXT) {
            return Err(bad("author, actor or message too long".into()));
        }
        if entry.vv.nodes() > MAX_VV {
            return Err(bad("version vector too large".into()));
        }
        // Modes from outside never carry setuid, setgid or sticky.
        entry.mode &= 0o777;
        let latest = now_ns.saturating_add(MAX_SKEW_NS);
        entry.time_ns = entry.time_ns.clamp(0, latest);
        entry.mtime_ns = entry.mtime_ns.clamp(0, latest);
        Ok(PeerRecord {
            path,
            seq: self.seq,
            entry,
            history: self.history,
        })
    }
}

/// A state of a node's log as a peer applied it: where it was and what it
/// said, so the node can tell whether its log still holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogCheck {
    /// Its sequence in the node's log.
    pub seq: u64,
    /// Its path.
    pub path: String,
    /// Its version vector.
    pub vv: sovryn_store::VersionVector,
}

/// A protocol message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// First message on the control stream, both ways: a fresh random
    /// nonce the other side's membership proof must cover.
    Challenge {
        /// Protocol version.
        version: u32,
        /// 32 random bytes, hex.
        nonce: String,
    },
    /// Second message, both ways: proof of holding the folder key, a MAC
    /// under the folder's membership key over both endpoint ids and both
    /// nonces (see `membership.rs`).
    Proof {
        /// 32 bytes, hex.
        mac: String,
    },
    /// Third message, both ways, only after the peer's proof checked out.
    Hello {
        /// The folder's public id; both sides must agree.
        folder_id: String,
        /// The sender's node name.
        name: String,
        /// The sender's version-vector id.
        short_id: String,
        /// The sender's newest change-log sequence.
        seq: u64,
        /// Send me your changes after this sequence of yours.
        want_since: u64,
        /// The sender's index epoch: random, changed whenever its change
        /// log restarts (a store restored from an old copy).
        epoch: u64,
        /// The receiver's epoch that `want_since` counts in; another epoch
        /// than the receiver's own means "send everything".
        want_epoch: u64,
        /// The last state the sender applied from the receiver's log. A
        /// receiver whose own record of that path is older, or sits
        /// before that sequence, was restored from an old copy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<LogCheck>,
        /// The sender understands `Coming` messages (absent: an older node).
        #[serde(default)]
        coming: bool,
        /// The sender understands `Devices` messages (absent: an older node).
        #[serde(default)]
        devices: bool,
        /// The sender understands `Vault` messages (absent: an older node).
        #[serde(default)]
        vault: bool,
        /// The sender understands `Seals` messages (absent: an older node).
        #[serde(default)]
        seals: bool,
    },
    /// The folder's seal epochs (`sovryn_store::epochs`), sent before any
    /// message that may name chunks sealed under one the receiver lacks.
    Seals {
        /// Every epoch the sender knows, at most `sovryn_store::epochs::MAX_EPOCHS`.
        epochs: Vec<sovryn_store::epochs::EpochSecret>,
    },
    /// The node's config vault, sealed (`sovryn_engine::vault`): a peer
    /// without the vault key keeps the newest as it is.
    Vault {
        /// The envelope.
        envelope: sovryn_engine::vault::Envelope,
    },
    /// The sender's operations on the folder's signed device list (each
    /// checked, and counted only when signed by a trusted member).
    Devices {
        /// Operations, at most `sovryn_engine::devices::MAX_OPS`.
        ops: Vec<sovryn_engine::devices::DeviceOp>,
    },
    /// Changed records, oldest first; `upto` is the sender's sequence they bring the receiver to.
    Index {
        /// Records.
        records: Vec<WireRecord>,
        /// Sequence covered.
        upto: u64,
    },
    /// The receiver of `Index` messages has applied the sender's log up to
    /// `upto` (sent after each applied message).
    Ack {
        /// The sender's sequence now applied by the receiver.
        upto: u64,
    },
    /// A fatal problem; the connection closes after it.
    Error {
        /// What went wrong.
        message: String,
    },
    /// On a fresh stream: send me these chunks (sealed, as stored).
    GetChunks {
        /// Chunk ids.
        ids: Vec<ChunkId>,
    },
    /// On a fresh stream: send me this many bytes of filler, then finish
    /// (`sovryn test-network` measures throughput with it).
    Probe {
        /// Bytes wanted (a node sends at most 64 MiB).
        bytes: u64,
    },
    /// Reply to `GetChunks` for a chunk the sender lacks.
    NoChunk {
        /// The chunk id.
        id: ChunkId,
    },
    /// On the control stream, to a peer whose `Hello` set `coming`: chunks
    /// of a large file the sender is still reading, durable and servable
    /// there, so the receiver can fetch and write them before the record.
    /// Not a state: nothing is applied until the record arrives.
    Coming {
        /// The file's path.
        path: String,
        /// Index of the first of these chunks in the file.
        first: u64,
        /// Their ids, raw and concatenated, base64 (standard, no padding).
        chunks: String,
        /// Each one's plaintext length.
        lens: Vec<u32>,
    },
}

/// Most chunks one `Coming` message names (32 MiB in 16 KiB chunks, the
/// smallest a large file has).
pub const MAX_COMING: usize = 2048;

/// A checked [`Msg::Coming`]: which chunks, at which offsets of `path`.
#[derive(Debug, Clone)]
pub struct Coming {
    /// The file's path.
    pub path: RelPath,
    /// Index in the file of the first chunk.
    pub first: usize,
    /// Each chunk with its plaintext length, in file order.
    pub chunks: Vec<(ChunkId, u32)>,
}

impl Coming {
    /// The message announcing `chunks` of `path` from chunk `first` on.
    pub fn msg(path: &str, first: usize, chunks: &[(ChunkId, u32)]) -> Msg {
        use base64::Engine as _;
        let mut raw = Vec::with_capacity(chunks.len() * 32);
        for (id, _) in chunks {
            raw.extend_from_slice(&id.0);
        }
        Msg::Coming {
            path: path.to_owned(),
            first: first as u64,
            chunks: base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw),
            lens: chunks.iter().map(|(_, l)| *l).collect(),
        }
    }

    /// Checks a `Coming` message's fields: a normalised path, one length
    /// per id, at most [`MAX_COMING`] chunks, each 1 byte to 256 KiB.
    pub fn parse(path: &str, first: u64, chunks: &str, lens: Vec<u32>) -> Result<Self, BadRecord> {
        use base64::Engine as _;
        let bad = |why: String| BadRecord {
            path: path.chars().take(256).collect(),
            why,
        };
        let rel = RelPath::parse(path).map_err(|e| bad(e.to_string()))?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(chunks.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        if raw.len() % 32 != 0 || raw.len() / 32 != lens.len() {
            return Err(bad("ids and lengths do not pair up".into()));
        }
        if lens.len() > MAX_COMING {
            return Err(bad(format!("{} chunks in one message", lens.len())));
        }
        if lens
            .iter()
            .any(|&l| l == 0 || u64::from(l) > MAX_CHUNK_PLAIN)
        {
            return Err(bad("a chunk length out of range".into()));
        }
        let first = usize::try_from(first)
            .ok()
            .filter(|f| *f <= 1 << 32)
            .ok_or_else(|| bad("first chunk out of range".into()))?;
        let chunks = raw
            .chunks_exact(32)
            .zip(lens)
            .map(|(c, l)| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                (ChunkId(id), l)
            })
            .collect();
        Ok(Coming {
            path: rel,
            first,
            chunks,
        })
    }
}

/// A frame read from a stream.
#[derive(Debug)]
pub enum Frame {
    /// A message.
    Msg(Msg),
    /// A sealed chunk: id, plaintext length, stored bytes (unchecked).
    Sealed(ChunkId, u32, Vec<u8>),
}

/// Writes a message frame.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg) -> anyhow::Result<()> {
    let body = serde_json::to_vec(msg)?;
    anyhow::ensure!(
        body.len() < MAX_MSG,
        "message too large ({} bytes)",
        body.len()
    );
    let mut buf = Vec::with_capacity(body.len() + 5);
    buf.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    buf.push(KIND_MSG);
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Writes a sealed-chunk frame.
pub async fn write_sealed<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: &ChunkId,
    raw_len: u32,
    sealed: &[u8],
) -> anyhow::Result<()> {
    anyhow::ensure!(sealed.len() + 37 <= MAX_CHUNK, "sealed chunk too large");
    let mut buf = Vec::with_capacity(sealed.len() + 41);
    buf.extend_from_slice(&((sealed.len() + 37) as u32).to_be_bytes());
    buf.push(KIND_SEALED);
    buf.extend_from_slice(&id.0);
    buf.extend_from_slice(&raw_len.to_be_bytes());
    buf.extend_from_slice(sealed);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            anyhow::ensure!(got == 0, "stream ended inside a frame header");
            return Ok(None);
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(len >= 1, "empty frame");
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind).await?;
    match kind[0] {
        KIND_MSG => {
            anyhow::ensure!(len <= MAX_MSG, "message frame too large ({len} bytes)");
            let mut body = vec![0u8; len - 1];
            r.read_exact(&mut body).await?;
            Ok(Some(Frame::Msg(serde_json::from_slice(&body)?)))
        }
        KIND_PLAIN_CHUNK => anyhow::bail!("plaintext chunk frames are refused (protocol 2)"),
        KIND_SEALED => {
            anyhow::ensure!(
                (37..=MAX_CHUNK).contains(&len),
                "sealed chunk frame of bad size ({len} bytes)"
            );
            let mut head = [0u8; 36];
            r.read_exact(&mut head).await?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&head[..32]);
            let raw_len = u32::from_be_bytes([head[32], head[33], head[34], head[35]]);
            let mut data = vec![0u8; len - 37];
            r.read_exact(&mut data).await?;
            Ok(Some(Frame::Sealed(ChunkId(id), raw_len, data)))
        }
        k => anyhow::bail!("unknown frame kind {k}"),
    }
}

/// Reads one frame that must be a message.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<Option<Msg>> {
    match read_frame(r).await? {
        None => Ok(None),
        Some(Frame::Msg(m)) => Ok(Some(m)),
        Some(Frame::Sealed(..)) => anyhow::bail!("unexpected chunk frame"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_caps() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_msg(
            &mut a,
            &Msg::GetChunks {
                ids: vec![ChunkId([7; 32])],
            },
        )
        .await
        .unwrap();
        write_sealed(&mut a, &ChunkId([2; 32]), 9, b"sealed")
            .await
            .unwrap();
        drop(a);
        match read_frame(&mut b).await.unwrap() {
            Some(Frame::Msg(Msg::GetChunks { ids })) => assert_eq!(ids[0], ChunkId([7; 32])),
            other => panic!("{other:?}"),
        }
        match read_frame(&mut b).await.unwrap() {
            Some(Frame::Sealed(id, raw, d)) => {
                assert_eq!(
                    (id, raw, d.as_slice()),
                    (ChunkId([2; 32]), 9, &b"sealed"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(read_frame(&mut b).await.unwrap().is_none());

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        a.write_all(&[KIND_MSG]).await.unwrap();
        assert!(read_frame(&mut b).await.is_err());
    }

    #[tokio::test]
    async fn plaintext_chunk_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut frame = (38u32).to_be_bytes().to_vec();
        frame.push(KIND_PLAIN_CHUNK);
        frame.extend_from_slice(&[1u8; 32]);
        frame.extend_from_slice(b"plain");
        a.write_all(&frame).await.unwrap();
        drop(a);
        let err = read_frame(&mut b).await.unwrap_err().to_string();
        assert!(err.contains("plaintext"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("SOVRYN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]
        /// Fuzz target: any bytes at all make the frame decoder return a
        /// frame, an end or an error, never panic or allocate past the caps.
        #[test]
        fn frame_decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = bytes.as_slice();
                for _ in 0..8 {
                    match read_frame(&mut r).await {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            });
        }

        /// Fuzz target: a frame holding any JSON-ish text decodes or fails cleanly.
        #[test]
        fn message_decoder_never_panics(body in "\\PC{0,300}") {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(KIND_MSG);
            frame.extend_from_slice(body.as_bytes());
            rt.block_on(async {
                let _ = read_frame(&mut frame.as_slice()).await;
            });
        }
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use sovryn_store::{EntryKind, VersionVector};

    fn entry(chunks: Vec<ChunkId>) -> Entry {
        Entry {
            kind: EntryKind::File,
            deleted: false,
            size: 10 * chunks.len() as u64,
            mode: 0o644,
            mtime_ns: 1,
            target: None,
            vv: VersionVector::new(),
            author: "a".into(),
            actor: None,
            time_ns: 2,
            message: None,
            chunks,
        }
    }

    const NOW: i64 = 1_800_000_000_000_000_000;

    #[test]
    fn a_coming_notice_round_trips_and_bad_ones_are_refused() {
        let chunks = vec![(ChunkId([1; 32]), 65536u32), (ChunkId([2; 32]), 17)];
        let Msg::Coming {
            path,
            first,
            chunks: ids,
            lens,
        } = Coming::msg("dir/big.bin", 4, &chunks)
        else {
            panic!("not a Coming message");
        };
        let c = Coming::parse(&path, first, &ids, lens.clone()).unwrap();
        assert_eq!(
            (c.path.as_str(), c.first, c.chunks),
            ("dir/big.bin", 4, chunks)
        );
        // Paths outside the folder, lengths that do not pair up or are out
        // of range, too many chunks, an absurd first index.
        assert!(Coming::parse("../x", 0, &ids, lens.clone()).is_err());
        assert!(Coming::parse("/etc/x", 0, &ids, lens.clone()).is_err());
        assert!(Coming::parse("a", 0, &ids, vec![1]).is_err());
        assert!(Coming::parse("a", 0, &ids, vec![0, 1]).is_err());
        assert!(Coming::parse("a", 0, &ids, vec![1, 256 * 1024 + 1]).is_err());
        assert!(Coming::parse("a", u64::MAX, &ids, lens).is_err());
        let many = vec![(ChunkId([3; 32]), 1u32); MAX_COMING + 1];
        let Msg::Coming {
            chunks: ids, lens, ..
        } = Coming::msg("a", 0, &many)
        else {
            panic!("not a Coming message");
        };
        assert!(Coming::parse("a", 0, &ids, lens).is_err());
    }

    #[test]
    fn chunk_lists_travel_as_compact_base64() {
        let ids: Vec<ChunkId> = (0..1000u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                ChunkId(id)
            })
            .collect();
        let rec = WireRecord::new("big.bin".into(), 7, entry(ids.clone()), false);
        let json = serde_json::to_string(&rec).unwrap();
        // 43 base64 characters per id, and nothing else per chunk.
        assert!(json.len() < 1000 * 43 + 400, "{} bytes", json.len());
        let back: WireRecord = serde_json::from_str(&json).unwrap();
        let r = back.into_record(NOW).unwrap();
        assert_eq!((r.path.as_str(), r.seq), ("big.bin", 7));
        assert_eq!(r.entry.chunks, ids);
    }

    #[test]
    fn a_broken_chunk_list_is_an_error() {
        let mut rec = WireRecord::new("x".into(), 1, entry(vec![ChunkId([1; 32])]), false);
        rec.chunks.pop();
        assert!(rec.into_record(NOW).is_err());
        let mut rec = WireRecord::new("x".into(), 1, entry(vec![]), false);
        rec.chunks = "!!!".into();
        assert!(rec.into_record(NOW).is_err());
    }

    #[test]
    fn hostile_records_are_refused_or_defused() {
        let one = vec![ChunkId([1; 32])];
        for path in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            "a\\..\\b",
            "",
            "a\0b",
        ] {
            let rec = WireRecord::new(path.into(), 1, entry(one.clone()), false);
            assert!(rec.into_record(NOW).is_err(), "{path:?} accepted");
        }
        // Size that does not fit the chunk list, chunks on a directory.
        let mut e = entry(one.clone());
        e.size = 300 * 1024;
        assert!(WireRecord::new("f".into(), 1, e, false)
            .into_record(NOW)
            .is_err());
        let mut e = entry(one.clone());
        e.kind = EntryKind::Dir;
        assert!(WireRecord::new("d".into(), 1, e, false)
            .into_record(NOW)
            .is_err());
        let mut e = entry(vec![]);
        e.kind = EntryKind::Symlink;
        e.size = 0;
        assert!(WireRecord::new("l".into(), 1, e, false)
            .into_record(NOW)
            .is_err());
        // setuid, setgid and sticky go; times from the far future come back.
        let mut e = entry(one);
        e.mode = 0o7755;
        e.time_ns = i64::MAX;
        e.mtime_ns = -5;
        let r = WireRecord::new("f".into(), 1, e, false)
            .into_record(NOW)
            .unwrap();
        assert_eq!(r.entry.mode, 0o755);
        assert_eq!(r.entry.time_ns, NOW + MAX_SKEW_NS);
        assert_eq!(r.entry.mtime_ns, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("SOVRYN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]
        /// Fuzz target for the index-record decoder: any path, chunk text,
        /// mode, size and times give an error or a record that holds only
        /// valid values.
        #[test]
        fn record_decoder_accepts_only_valid_states(
            path in "[a-z./\\\\]{0,12}",
            chunks in "[A-Za-z0-9+/!]{0,90}",
            mode in proptest::prelude::any::<u32>(),
            size in proptest::prelude::any::<u64>(),
            time in proptest::prelude::any::<i64>(),
            kind in 0u8..3,
            deleted in proptest::prelude::any::<bool>(),
        ) {
            let mut e = entry(vec![]);
            e.kind = [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][kind as usize];
            e.mode = mode;
            e.size = size;
            e.time_ns = time;
            e.mtime_ns = time;
            e.deleted = deleted;
            if e.kind == EntryKind::Symlink {
                e.target = Some("t".into());
            }
            let mut rec = WireRecord::new(path.clone(), 1, e, false);
            rec.chunks = chunks;
            if let Ok(r) = rec.into_record(NOW) {
                proptest::prop_assert_eq!(r.path.as_str(), path.as_str());
                proptest::prop_assert!(!path.split('/').any(|p| p.is_empty() || p == "." || p == ".."));
                proptest::prop_assert_eq!(r.entry.mode & !0o777, 0);
                proptest::prop_assert!(r.entry.time_ns >= 0 && r.entry.time_ns <= NOW + MAX_SKEW_NS);
                if r.entry.kind == EntryKind::File && !r.entry.deleted {
                    proptest::prop_assert!(r.entry.size <= r.entry.chunks.len() as u64 * MAX_CHUNK_PLAIN);
                } else {
                    proptest::prop_assert!(r.entry.chunks.is_empty());
                }
            }
        }
    }
}
