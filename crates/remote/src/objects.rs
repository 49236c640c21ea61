//! Where a remote keeps its objects, as the four operations pushing and
//! restoring need ([`Objects`]): an S3 bucket or a directory through
//! `object_store`, or a backup peer over iroh (`sovryn_net::backup`).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{Error, Result};

/// One object of a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its name.
    pub location: Path,
    /// Its size in bytes.
    pub size: u64,
}

/// A place that keeps objects by name.
pub trait Objects: Send + Sync + 'static {
    /// Stores `bytes` as `path`, atomically and durably.
    fn put<'a>(&'a self, path: &'a Path, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>>;
    /// The object (or `range` of it); None when there is none.
    fn get<'a>(
        &'a self,
        path: &'a Path,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Every object under `prefix`.
    fn list<'a>(&'a self, prefix: &'a Path) -> BoxFuture<'a, Result<Vec<Listed>>>;
    /// Removes `path` (no error when it is gone already).
    fn delete<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<()>>;
    /// Hands a folder's signed device list (its operations as JSON) to a
    /// remote that takes part in it (a backup peer: who may write follows
    /// it); others keep no such thing.
    fn share_device_list<'a>(
        &'a self,
        _folder_id: &'a str,
        _ops: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        async { Ok(()) }.boxed()
    }
    /// A folder's signed device list as the remote keeps it (operations,
    /// JSON): a backup peer relays it between members that are never
    /// online together; a bucket keeps none.
    fn device_list<'a>(&'a self, _folder_id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        async { Ok(None) }.boxed()
    }
    /// Lets go of connections (a backup peer's endpoint).
    fn close(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

/// An opened remote and the prefix this node's objects live under.
#[derive(Clone)]
pub struct Bucket {
    objects: Arc<dyn Objects>,
    pub(crate) prefix: Path,
    url: String,
    /// Upload rate limit.
    pub(crate) max_bytes_per_sec: Option<u64>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.url)
    }
}

impl Bucket {
    /// A remote keeping its objects in `objects` under `prefix`.
    pub fn new(
        objects: Arc<dyn Objects>,
        prefix: Path,
        url: String,
        max_bytes_per_sec: Option<u64>,
    ) -> Self {
        Bucket {
            objects,
            prefix,
            url,
            max_bytes_per_sec,
        }
    }

    /// Its URL (`s3://BUCKET/PREFIX`, `file:///DIR`, `peer://ID@HOST:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Hands a folder's signed device list to the remote, if it takes part
    /// in it (a backup peer).
    pub async fn share_device_list(&self, folder_id: &str, ops: Vec<u8>) -> Result<()> {
        self.objects.share_device_list(folder_id, ops).await
    }

    /// The folder's signed device list the remote keeps, if it keeps one
    /// (to be checked like any peer's).
    pub async fn device_list(&self, folder_id: &str) -> Result<Option<Vec<u8>>> {
        self.objects.device_list(folder_id).await
    }

    /// Lets go of connections; call before dropping a backup peer's.
    pub async fn close(&self) {
        self.objects.close().await
    }

    pub(crate) async fn put(&self, path: &Path, bytes: Vec<u8>) -> Result<()> {
        self.objects.put(path, bytes).await
    }

    pub(crate) async fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        self.objects.get(path, None).await
    }

    pub(crate) async fn get_range(&self, path: &Path, range: Range<u64>) -> Result<Bytes> {
        self.objects
            .get(path, Some(range))
            .await?
            .ok_or_else(|| Error::Tampered(format!("{path} vanished while being read")))
    }

    pub(crate) async fn list(&self, prefix: &Path) -> Result<Vec<Listed>> {
        self.objects.list(prefix).await
    }

    pub(crate) async fn delete(&self, path: &Path) -> Result<()> {
        self.objects.delete(path).await
    }
}

/// A directory as [`Objects`] (created 0700 when missing): each object is
/// written whole and synced, file and directory, before it counts.
pub fn directory(dir: &std::path::Path) -> Result<Arc<dyn Objects>> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Io {
            path: dir.to_owned(),
            source: e,
        })?;
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?);
    Ok(Arc::new(ObjectStoreObjects::new(
        store,
        Some(dir.to_owned()),
    )))
}

/// An `object_store` store as [`Objects`]; `dir` for a local directory,
/// whose puts are synced (file and directory) before they count.
pub(crate) struct ObjectStoreObjects {
    store: Arc<dyn ObjectStore>,
    dir: Option<PathBuf>,
}

impl ObjectStoreObjects {
    /// Wraps `store`.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, dir: Option<PathBuf>) -> Self {
        ObjectStoreObjects { store, dir }
    }
}

impl Objects for ObjectStoreObjects {
    fn put<'a>(&'a self, path: &'a Path, bytes: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        async move {
            self.store
                .put(path, object_store::PutPayload::from(bytes))
                .await?;
            if let Some(dir) = &self.dir {
                let file = dir.join(path.as_ref());
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let synced = std::fs::File::open(&file).and_then(|f| f.sync_all());
                    synced.map_err(|e| Error::Io {
                        path: file.clone(),
                        source: e,
                    })?;
                    Ok(sovryn_store::fsync_parent(&file)?)
                })
                .await
                .map_err(|e| Error::Spec(format!("syncing a put: {e}")))??;
            }
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        path: &'a Path,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        async move {
            let got = match range {
                Some(r) => self.store.get_range(path, r).await,
                None => match self.store.get(path).await {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                },
            };
            match got {
                Ok(b) => Ok(Some(b)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a Path) -> BoxFuture<'a, Result<Vec<Listed>>> {
        async move {
            let metas: Vec<object_store::ObjectMeta> =
                self.store.list(Some(prefix)).try_collect().await?;
            Ok(metas
                .into_iter()
                .map(|m| Listed {
                    location: m.location,
                    size: m.size,
                })
                .collect())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<()>> {
        async move {
            match self.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }
}
