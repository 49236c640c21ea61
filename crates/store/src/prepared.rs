//! A file's content chunked, named and sealed without the store, so many
//! small files can be read and sealed at once on worker threads (their
//! reads overlap on the disk, their sealing uses every core). The store
//! then only appends what is new, in order ([`Store::ingest_prepared`]).

use std::collections::HashSet;
use std::io::Read;

use crate::chunk::{ChunkCodec, ChunkId, SealedChunk};
use crate::store::{Ingested, Store, TextKeeper};
use crate::{Error, Result};

/// A file's content ready to be appended: every chunk sealed once (its
/// first occurrence in the file), the ids in file order.
pub struct PreparedContent {
    ids: Vec<ChunkId>,
    sealed: Vec<SealedChunk>,
    size: u64,
    text: Option<String>,
}

impl PreparedContent {
    /// Bytes read.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl ChunkCodec {
    /// Reads `reader` to its end, cutting, naming and sealing its chunks
    /// as [`Store::ingest`] would, and keeping the text when it is UTF-8
    /// and at most `text_limit` bytes. Needs no store: callers run it on
    /// as many threads as they like.
    pub fn prepare<R: Read>(&self, reader: R, text_limit: u64) -> Result<PreparedContent> {
        let mut ids = Vec::new();
        let mut sealed = Vec::new();
        let mut seen = HashSet::new();
        let mut size = 0u64;
        let mut text = TextKeeper::new(text_limit);
        for chunk in self.chunker(reader) {
            let chunk = chunk.map_err(|e| {
                Error::Read(match e {
                    fastcdc::v2020::Error::IoError(io) => io,
                    other => std::io::Error::other(other.to_string()),
                })
            })?;
            size += chunk.data.len() as u64;
            text.add(&chunk.data, size);
            let id = self.id_of(&chunk.data);
            if seen.insert(id) {
                sealed.push(self.seal(id, &chunk.data)?);
            }
            ids.push(id);
        }
        Ok(PreparedContent {
            ids,
            sealed,
            size,
            text: text.finish(),
        })
    }
}

impl Store {
    /// Appends a prepared content's chunks the store lacks. Like
    /// [`Store::ingest`], they become durable and indexed at the next
    /// flush or commit.
    pub fn ingest_prepared(&mut self, content: PreparedContent) -> Result<Ingested> {
        self.writable()?;
        let mut new_bytes = 0;
        for s in content.sealed {
            if self.has_chunk(&s.id)? {
                continue;
            }
            new_bytes += s.raw_len as u64;
            self.append_sealed(s)?;
        }
        self.flush_if_full()?;
        Ok(Ingested {
            chunks: content.ids,
            size: content.size,
            text: content.text,
            new_bytes,
        })
    }
}
