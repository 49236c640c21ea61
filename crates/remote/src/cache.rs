//! What a node knows of a bucket's copy of a folder (`remote-state/NAME/
//! cache.json`), so a push or a pull does not read every pack's index
//! again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sovryn_store::{ChunkId, IndexMarker};

use crate::layout;
use crate::objects::{Bucket, Listed};
use crate::pack;
use crate::{Error, Result};

/// What this node knows of a bucket's contents.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Cache {
    /// Pack file name → the chunks in it.
    pub(crate) packs: BTreeMap<String, Vec<ChunkId>>,
    /// The index as it was when this node took its newest snapshot sent.
    #[serde(default)]
    pub(crate) snapshot_marker: Option<IndexMarker>,
    /// Every snapshot this node sent that may still be there: the others
    /// are another node's, which this one neither deletes nor prunes under.
    #[serde(default)]
    pub(crate) sent_snapshots: BTreeSet<String>,
    /// When the first marked pack this node saw may go (ms since the
    /// epoch): a push is due then even if nothing changed.
    #[serde(default)]
    pub(crate) marks_due_ms: Option<u64>,
}

impl Cache {
    fn path(dir: &Path) -> PathBuf {
        dir.join("cache.json")
    }

    pub(crate) fn load(dir: &Path) -> Cache {
        std::fs::read(Cache::path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Spec(e.to_string()))?;
        Ok(sovryn_store::keys::write_secret_file(
            &Cache::path(dir),
            &bytes,
        )?)
    }

    /// The newest snapshot this node sent, and its counter.
    pub(crate) fn newest_sent(&self) -> Option<(&str, u64)> {
        self.sent_snapshots
            .iter()
            .filter_map(|n| Some((n.as_str(), layout::counter_of(n)?)))
            .max_by_key(|(_, c)| *c)
    }

    /// Reads the indexes of the folder's packs in the bucket that the cache
    /// does not know yet; drops packs the bucket no longer has.
    pub(crate) async fn refresh(
        &mut self,
        bucket: &Bucket,
        key: &[u8; 32],
        folder_id: &str,
    ) -> Result<()> {
        let listed: Vec<Listed> = bucket
            .list(&layout::packs(&bucket.prefix, folder_id))
            .await?;
        let names: HashSet<&str> = listed
            .iter()
            .filter_map(|m| m.location.filename())
            .collect();
        self.packs.retain(|n, _| names.contains(n.as_str()));
        for meta in &listed {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if self.packs.contains_key(name) || meta.size < 4 {
                continue;
            }
            let trailer = bucket
                .get_range(&meta.location, meta.size - 4..meta.size)
                .await?;
            let len = pack::index_len(&trailer)? as u64;
            let Some(start) = meta.size.checked_sub(4 + len) else {
                tracing::warn!("bucket pack {name} is damaged; its chunks are sent again");
                continue;
            };
            let sealed = bucket
                .get_range(&meta.location, start..meta.size - 4)
                .await?;
            match pack::open_index(key, folder_id, name, &sealed, meta.size) {
                Ok(entries) => {
                    let ids = entries.into_iter().map(|e| e.id).collect();
                    self.packs.insert(name.to_owned(), ids);
                }
                Err(e) => tracing::warn!("{e}; its chunks are sent again"),
            }
        }
        Ok(())
    }
}
