//! Frames on a stream: `[u32 BE length][u8 kind][payload]`.
//!
//! Kind 0 is a JSON [`Msg`]; kind 1 is a chunk: its 32-byte id, then its
//! plaintext; kind 2 is a sealed chunk: its id, its plaintext length (u32
//! BE), then the bytes as stored (encrypted under the folder key, maybe
//! compressed). Lengths are capped so a peer cannot make us allocate at will.

use serde::{Deserialize, Serialize};
use sovryn_store::{ChunkId, Entry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The one ALPN of the sync protocol.
pub const ALPN: &[u8] = b"sovryn/sync/2";
/// Protocol version carried in `Hello`.
pub const VERSION: u32 = 2;
/// Largest JSON message.
pub const MAX_MSG: usize = 64 * 1024 * 1024;
/// Largest chunk frame (chunks are at most 256 KiB; some slack).
pub const MAX_CHUNK: usize = 1024 * 1024;

const KIND_MSG: u8 = 0;
const KIND_CHUNK: u8 = 1;
const KIND_SEALED: u8 = 2;

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

/// A record the peer sent whose chunk list does not decode.
#[derive(Debug, thiserror::Error)]
#[error("bad chunk list for {path}: {why}")]
pub struct BadChunkList {
    /// The record's path.
    pub path: String,
    /// What is wrong.
    pub why: String,
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

    /// Unpacks the state, chunk list restored.
    pub fn into_entry(self) -> Result<(String, u64, Entry), BadChunkList> {
        use base64::Engine as _;
        let bad = |why: String| BadChunkList {
            path: self.path.clone(),
            why,
        };
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
        let mut entry = self.entry;
        entry.chunks = raw
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                ChunkId(id)
            })
            .collect();
        Ok((self.path, self.seq, entry))
    }
}

/// A protocol message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// First message on the control stream, both ways.
    Hello {
        /// Protocol version.
        version: u32,
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
    /// On a fresh stream: send me these chunks.
    GetChunks {
        /// Chunk ids.
        ids: Vec<ChunkId>,
        /// Send them sealed (kind 2 frames) rather than as plaintext.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sealed: bool,
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
}

/// A frame read from a stream.
#[derive(Debug)]
pub enum Frame {
    /// A message.
    Msg(Msg),
    /// A chunk's id and plaintext.
    Chunk(ChunkId, Vec<u8>),
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

/// Writes a chunk frame.
pub async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: &ChunkId,
    data: &[u8],
) -> anyhow::Result<()> {
    anyhow::ensure!(data.len() + 33 <= MAX_CHUNK, "chunk too large");
    let mut buf = Vec::with_capacity(data.len() + 37);
    buf.extend_from_slice(&((data.len() + 33) as u32).to_be_bytes());
    buf.push(KIND_CHUNK);
    buf.extend_from_slice(&id.0);
    buf.extend_from_slice(data);
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
        KIND_CHUNK => {
            anyhow::ensure!(
                (33..=MAX_CHUNK).contains(&len),
                "chunk frame of bad size ({len} bytes)"
            );
            let mut id = [0u8; 32];
            r.read_exact(&mut id).await?;
            let mut data = vec![0u8; len - 33];
            r.read_exact(&mut data).await?;
            Ok(Some(Frame::Chunk(ChunkId(id), data)))
        }
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
        Some(Frame::Chunk(..) | Frame::Sealed(..)) => anyhow::bail!("unexpected chunk frame"),
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
                sealed: false,
            },
        )
        .await
        .unwrap();
        write_chunk(&mut a, &ChunkId([1; 32]), b"hello")
            .await
            .unwrap();
        write_sealed(&mut a, &ChunkId([2; 32]), 9, b"sealed")
            .await
            .unwrap();
        drop(a);
        match read_frame(&mut b).await.unwrap() {
            Some(Frame::Msg(Msg::GetChunks { ids, sealed })) => {
                assert_eq!(ids[0], ChunkId([7; 32]));
                assert!(!sealed);
            }
            other => panic!("{other:?}"),
        }
        match read_frame(&mut b).await.unwrap() {
            Some(Frame::Chunk(id, d)) => {
                assert_eq!(id, ChunkId([1; 32]));
                assert_eq!(d, b"hello");
            }
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
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use sovryn_store::{EntryKind, VersionVector};

    fn entry(chunks: Vec<ChunkId>) -> Entry {
        Entry {
            kind: EntryKind::File,
            deleted: false,
            size: 10,
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
        let (path, seq, e) = back.into_entry().unwrap();
        assert_eq!((path.as_str(), seq), ("big.bin", 7));
        assert_eq!(e.chunks, ids);
    }

    #[test]
    fn a_broken_chunk_list_is_an_error() {
        let mut rec = WireRecord::new("x".into(), 1, entry(vec![ChunkId([1; 32])]), false);
        rec.chunks.pop();
        assert!(rec.into_entry().is_err());
        let mut rec = WireRecord::new("x".into(), 1, entry(vec![]), false);
        rec.chunks = "!!!".into();
        assert!(rec.into_entry().is_err());
    }
}
