//! Backup peers (`sovryn/backup/1`): a node that keeps members' sealed
//! objects (the packs, index snapshots and vault a remote holds,
//! `sovryn_remote`) and never holds a key. Each request is one stream: a
//! JSON header (at most 4 KiB, length-prefixed), the object's bytes for a
//! put; the answer likewise. Members (the ids the backup node lists) may
//! put and delete; anyone may read, as anyone may fetch a member's sealed
//! vault: nothing there opens without the folder key or the passphrase.

use std::collections::HashSet;
use std::ops::Range;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::{Endpoint, EndpointAddr, EndpointId, SecretKey};
use serde::{Deserialize, Serialize};
use sovryn_remote::{Listed, ObjectPath, Objects};

/// The protocol of backup peers.
pub const BACKUP_ALPN: &[u8] = b"sovryn/backup/1";
/// The largest object kept (a pack is 16 MiB at most).
pub const MAX_OBJECT: u64 = 64 << 20;
const MAX_HEADER: usize = 4096;
const MAX_LISTING: usize = 16 << 20;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Requests answered at once, over all connections (each may hold an
/// object in memory).
const MAX_REQUESTS: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Put {
        path: String,
        len: u64,
    },
    /// A folder's signed device list (its operations as JSON, `len` bytes
    /// following): who may write follows it.
    Devices {
        folder_id: String,
        len: u64,
    },
    /// The folder's signed device list as this node keeps it (members
    /// only: it names devices and their addresses).
    DeviceList {
        folder_id: String,
    },
    Get {
        path: String,
        range: Option<(u64, u64)>,
    },
    List {
        prefix: String,
    },
    Delete {
        path: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Get: whether the object is there; its bytes follow.
    #[serde(default)]
    found: bool,
    /// List: (name, size) of each object, in a body of this many bytes.
    #[serde(default)]
    len: u64,
}

async fn write_header<T: Serialize>(send: &mut SendStream, h: &T) -> anyhow::Result<()> {
    let body = serde_json::to_vec(h)?;
    anyhow::ensure!(body.len() <= MAX_HEADER, "header too large");
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

async fn read_header<T: for<'de> Deserialize<'de>>(recv: &mut RecvStream) -> anyhow::Result<T> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(len <= MAX_HEADER, "a header of {len} bytes");
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// An object name from a peer: 1 to 8 parts of letters, digits, `-`, `_`
/// and `.` (not `.` or `..` alone), 512 bytes at most.
fn object_name(rel: &str) -> anyhow::Result<ObjectPath> {
    let ok = !rel.is_empty()
        && rel.len() <= 512
        && rel.split('/').count() <= 8
        && rel.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    anyhow::ensure!(ok, "not an object name: {rel:?}");
    Ok(ObjectPath::from(rel))
}

/// A backup node's service: its objects, and who may write: the members
/// it was made for (the roots) and the full members their signed device
/// lists add, less those the lists revoke.
pub struct BackupServer {
    /// `HOME/objects`, kept as a directory remote keeps them.
    objects: Arc<dyn Objects>,
    /// `HOME/devices`: one device list per folder.
    devices: PathBuf,
    roots: HashSet<String>,
    members: RwLock<HashSet<EndpointId>>,
    serving: std::sync::atomic::AtomicUsize,
    requests: tokio::sync::Semaphore,
}

/// The largest device list taken (bytes of JSON).
const MAX_DEVICE_LIST: u64 = 8 << 20;

impl BackupServer {
    /// Serves the objects in `HOME/objects`, writable by `roots` and the
    /// members the device lists kept in `HOME/devices` add.
    pub fn open(
        home: &Path,
        roots: impl IntoIterator<Item = EndpointId>,
    ) -> anyhow::Result<Arc<Self>> {
        let objects = sovryn_remote::objects::directory(&home.join("objects"))?;
        let devices = home.join("devices");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&devices)?;
        let server = Arc::new(BackupServer {
            objects,
            devices,
            roots: roots.into_iter().map(|r| r.to_string()).collect(),
            members: RwLock::new(HashSet::new()),
            serving: Default::default(),
            requests: tokio::sync::Semaphore::new(MAX_REQUESTS),
        });
        server.recompute()?;
        Ok(server)
    }

    fn list_home(&self, folder_id: &str) -> anyhow::Result<sovryn_engine::Home> {
        anyhow::ensure!(
            folder_id.len() == 32 && folder_id.chars().all(|c| c.is_ascii_hexdigit()),
            "not a folder id: {folder_id:?}"
        );
        let dir = self.devices.join(folder_id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(sovryn_engine::Home { dir })
    }

    /// Who may write, from the roots and every folder's device list.
    fn recompute(&self) -> anyhow::Result<()> {
        let mut writers: HashSet<String> = self.roots.clone();
        let mut revoked = HashSet::new();
        for e in std::fs::read_dir(&self.devices)? {
            let home = sovryn_engine::Home { dir: e?.path() };
            let list = sovryn_engine::devices::DeviceList::load(&home)?;
            let members = list.members(&self.roots);
            writers.extend(
                members
                    .added
                    .iter()
                    .filter(|(_, op)| !op.read_only)
                    .map(|(id, _)| id.clone()),
            );
            revoked.extend(members.revoked);
        }
        let ids = writers
            .difference(&revoked)
            .filter_map(|id| id.parse::<EndpointId>().ok())
            .collect();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = ids;
        Ok(())
    }

    /// Merges a folder's device operations (each checked, counted only when
    /// a trusted member signed it), then recomputes who may write.
    fn merge_devices(&self, folder_id: &str, body: &[u8]) -> anyhow::Result<usize> {
        let ops: Vec<sovryn_engine::devices::DeviceOp> = serde_json::from_slice(body)?;
        anyhow::ensure!(
            ops.len() <= 2 * sovryn_engine::devices::MAX_OPS,
            "a device list of {} operations",
            ops.len()
        );
        let home = self.list_home(folder_id)?;
        let new = sovryn_engine::devices::DeviceList::update(&home, |l| {
            Ok(l.merge(folder_id, &self.roots, ops))
        })?;
        if new > 0 {
            self.recompute()?;
            tracing::info!("device list of folder {folder_id}: {new} new operation(s)");
        }
        Ok(new)
    }

    fn is_member(&self, id: &EndpointId) -> bool {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Accepts connections on `endpoint` until it closes.
    pub async fn run(self: Arc<Self>, endpoint: Endpoint) {
        use std::sync::atomic::Ordering;
        while let Some(incoming) = endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                if conn.alpn() != BACKUP_ALPN {
                    conn.close(404u32.into(), b"no such protocol");
                    return;
                }
                if me.serving.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    me.serving.fetch_sub(1, Ordering::SeqCst);
                    conn.close(429u32.into(), b"busy");
                    return;
                }
                me.serve_connection(conn).await;
                me.serving.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    async fn serve_connection(self: &Arc<Self>, conn: Connection) {
        let peer = conn.remote_id();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let me = self.clone();
            tokio::spawn(async move {
                let Ok(_permit) = me.requests.acquire().await else {
                    return;
                };
                let answered =
                    tokio::time::timeout(TIMEOUT, me.answer(&peer, &mut send, &mut recv)).await;
                let error = match answered {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some("timed out".to_owned()),
                };
                if let Some(error) = error {
                    tracing::info!("backup request from {}: {error}", peer.fmt_short());
                    let _ = write_header(
                        &mut send,
                        &Response {
                            error: Some(error),
                            ..Default::default()
                        },
                    )
                    .await;
                }
                let _ = send.finish();
            });
        }
    }

    async fn answer(
        &self,
        peer: &EndpointId,
        send: &mut SendStream,
        recv: &mut RecvStream,
    ) -> anyhow::Result<()> {
        let request: Request = read_header(recv).await?;
        let members_only = matches!(
            request,
            Request::Put { .. } | Request::Delete { .. } | Request::DeviceList { .. }
        );
        anyhow::ensure!(
            !members_only || self.is_member(peer),
            "{} is not a member of this backup node",
            peer.fmt_short()
        );
        match request {
            Request::Put { path, len } => {
                let name = object_name(&path)?;
                anyhow::ensure!(len <= MAX_OBJECT, "an object of {len} bytes");
                let mut body = vec![0u8; len as usize];
                recv.read_exact(&mut body).await?;
                self.objects.put(&name, body).await?;
                reply(send, false, &[]).await
            }
            Request::Get { path, range } => {
                let name = object_name(&path)?;
                let got = self.objects.get(&name, range.map(|(a, b)| a..b)).await?;
                reply(send, got.is_some(), &got.unwrap_or_default()).await
            }
            Request::List { prefix } => {
                let name = if prefix.is_empty() {
                    ObjectPath::default()
                } else {
                    object_name(&prefix)?
                };
                let listed: Vec<(String, u64)> = self
                    .objects
                    .list(&name)
                    .await?
                    .into_iter()
                    .map(|l| (l.location.to_string(), l.size))
                    .collect();
                reply(send, false, &serde_json::to_vec(&listed)?).await
            }
            Request::Devices { folder_id, len } => {
                anyhow::ensure!(len <= MAX_DEVICE_LIST, "a device list of {len} bytes");
                let mut body = vec![0u8; len as usize];
                recv.read_exact(&mut body).await?;
                self.merge_devices(&folder_id, &body)?;
                reply(send, false, &[]).await
            }
            Request::DeviceList { folder_id } => {
                let list = sovryn_engine::devices::DeviceList::load(&self.list_home(&folder_id)?)?;
                reply(send, true, &serde_json::to_vec(&list.ops)?).await
            }
            Request::Delete { path } => {
                self.objects.delete(&object_name(&path)?).await?;
                reply(send, false, &[]).await
            }
        }
    }
}

/// A request's answer: done, whether the object was `found` (a get), and
/// the `body` that follows.
async fn reply(send: &mut SendStream, found: bool, body: &[u8]) -> anyhow::Result<()> {
    write_header(
        send,
        &Response {
            ok: true,
            found,
            len: body.len() as u64,
            ..Default::default()
        },
    )
    .await?;
    send.write_all(body).await?;
    Ok(())
}

/// Binds a backup node's endpoint on `listen` under `secret`.
pub async fn bind(secret: SecretKey, listen: std::net::SocketAddr) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::builder(iroh::endpoint::presets::Minimal)
        .secret_key(secret)
        .alpns(vec![BACKUP_ALPN.to_vec()])
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr(listen)?
        .bind()
        .await?)
}

/// A backup peer as the objects of a remote (`peer://ID@HOST:PORT`),
/// dialled from an endpoint of the member's own identity.
pub struct PeerObjects {
    endpoint: Endpoint,
    addr: EndpointAddr,
    conn: tokio::sync::Mutex<Option<Connection>>,
}

impl PeerObjects {
    /// Dials `id` at `sock` as `secret` (a member's node key, or a throwaway
    /// one for reading).
    pub async fn new(
        secret: SecretKey,
        id: EndpointId,
        sock: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::builder(iroh::endpoint::presets::Minimal)
            .secret_key(secret)
            .alpns(Vec::new())
            .relay_mode(iroh::RelayMode::Disabled)
            .bind()
            .await?;
        Ok(PeerObjects {
            endpoint,
            addr: EndpointAddr::new(id).with_ip_addr(sock),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn connection(&self) -> anyhow::Result<Connection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            TIMEOUT,
            self.endpoint.connect(self.addr.clone(), BACKUP_ALPN),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the backup peer did not answer"))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One request: its header, a body, then the answer and its body.
    async fn call(
        &self,
        request: &Request,
        body: &[u8],
        limit: usize,
    ) -> anyhow::Result<(Response, Vec<u8>)> {
        let conn = self.connection().await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let sent = async {
            write_header(&mut send, request).await?;
            send.write_all(body).await?;
            send.finish()?;
            anyhow::Ok(())
        }
        .await;
        // A refusal stops the upload midway: its reason is in the answer.
        let response: Response = match (read_header(&mut recv).await, sent) {
            (Ok(r), _) => r,
            (Err(_), Err(e)) => return Err(e),
            (Err(e), Ok(())) => return Err(e),
        };
        if let Some(e) = response.error {
            anyhow::bail!("{e}");
        }
        anyhow::ensure!(
            response.len as usize <= limit,
            "an answer of {} bytes",
            response.len
        );
        let mut out = vec![0u8; response.len as usize];
        recv.read_exact(&mut out).await?;
        Ok((response, out))
    }

    async fn request(
        &self,
        request: Request,
        body: &[u8],
        limit: usize,
    ) -> sovryn_remote::Result<(Response, Vec<u8>)> {
        tokio::time::timeout(TIMEOUT, self.call(&request, body, limit))
            .await
            .map_err(|_| sovryn_remote::Error::Peer("no answer in time".into()))?
            .map_err(|e| sovryn_remote::Error::Peer(format!("{e:#}")))
    }
}

impl Objects for PeerObjects {
    fn share_device_list<'a>(
        &'a self,
        folder_id: &'a str,
        ops: Vec<u8>,
    ) -> BoxFuture<'a, sovryn_remote::Result<()>> {
        async move {
            let len = ops.len() as u64;
            self.request(
                Request::Devices {
                    folder_id: folder_id.to_owned(),
                    len,
                },
                &ops,
                0,
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn device_list<'a>(
        &'a self,
        folder_id: &'a str,
    ) -> BoxFuture<'a, sovryn_remote::Result<Option<Vec<u8>>>> {
        async move {
            let (_, body) = self
                .request(
                    Request::DeviceList {
                        folder_id: folder_id.to_owned(),
                    },
                    &[],
                    MAX_DEVICE_LIST as usize,
                )
                .await?;
            Ok(Some(body))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move { self.endpoint.close().await }.boxed()
    }

    fn put<'a>(
        &'a self,
        path: &'a sovryn_remote::ObjectPath,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, sovryn_remote::Result<()>> {
        async move {
            let len = bytes.len() as u64;
            self.request(
                Request::Put {
                    path: path.to_string(),
                    len,
                },
                &bytes,
                0,
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        path: &'a sovryn_remote::ObjectPath,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, sovryn_remote::Result<Option<Bytes>>> {
        async move {
            let (r, body) = self
                .request(
                    Request::Get {
                        path: path.to_string(),
                        range: range.map(|r| (r.start, r.end)),
                    },
                    &[],
                    MAX_OBJECT as usize,
                )
                .await?;
            Ok(r.found.then(|| Bytes::from(body)))
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a sovryn_remote::ObjectPath,
    ) -> BoxFuture<'a, sovryn_remote::Result<Vec<Listed>>> {
        async move {
            let (_, body) = self
                .request(
                    Request::List {
                        prefix: prefix.to_string(),
                    },
                    &[],
                    MAX_LISTING,
                )
                .await?;
            let listed: Vec<(String, u64)> = serde_json::from_slice(&body).map_err(|e| {
                sovryn_remote::Error::Peer(format!("a listing that does not parse: {e}"))
            })?;
            Ok(listed
                .into_iter()
                .map(|(name, size)| Listed {
                    location: sovryn_remote::ObjectPath::from(name.as_str()),
                    size,
                })
                .collect())
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        path: &'a sovryn_remote::ObjectPath,
    ) -> BoxFuture<'a, sovryn_remote::Result<()>> {
        async move {
            self.request(
                Request::Delete {
                    path: path.to_string(),
                },
                &[],
                0,
            )
            .await
            .map(drop)
        }
        .boxed()
    }
}

/// Opens remote `spec`: a backup peer (`peer://`) dialled as `secret` (the
/// member's node key), anything else through `sovryn_remote`.
pub async fn open_remote(
    spec: &sovryn_remote::RemoteSpec,
    creds: &sovryn_remote::Credentials,
    secret: SecretKey,
) -> sovryn_remote::Result<sovryn_remote::Bucket> {
    let Some((id, addr)) = spec.peer() else {
        return spec.open(creds);
    };
    let id: EndpointId = id
        .parse()
        .map_err(|_| sovryn_remote::Error::Spec(format!("{}: not an endpoint id", spec.url)))?;
    let objects = PeerObjects::new(secret, id, addr)
        .await
        .map_err(|e| sovryn_remote::Error::Peer(format!("{e:#}")))?;
    Ok(sovryn_remote::Bucket::new(
        Arc::new(objects),
        sovryn_remote::ObjectPath::default(),
        spec.url.clone(),
        spec.rate(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_stay_inside() {
        assert!(object_name("f1/p/abc").is_ok());
        for bad in ["", "/etc", "a/../b", "..", "a//b", "a b", "a/./b", "a#1"] {
            assert!(object_name(bad).is_err(), "{bad}");
        }
    }
}
