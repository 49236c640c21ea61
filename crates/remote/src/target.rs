//! Which buckets a node backs up to (`HOME/remotes.json`), their
//! credentials (`HOME/remotes/NAME.credentials`, mode 0600), and an opened
//! bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::objects::{Bucket, ObjectStoreObjects};
use crate::{Error, Result};

const SPECS_FILE: &str = "remotes.json";
const CREDENTIALS_DIR: &str = "remotes";

/// One remote as the user described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    /// Its name (letters, digits, `-`, `_`; at most 32).
    pub name: String,
    /// `s3://BUCKET/PREFIX`, `file:///DIR` or `peer://ID@HOST:PORT`.
    pub url: String,
    /// The S3 endpoint (`http://127.0.0.1:9000`); none: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The folders it keeps (names); empty: every folder of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
    /// Upload rate limit in KiB/s; none: as fast as the link goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kib_per_sec: Option<u64>,
    /// How often a running node looks whether the bucket needs a push, in
    /// seconds (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    /// A backup node a folder's signed device list brought (not the
    /// user's own remote): it follows the list ([`follow_listed_backups`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_list: bool,
}

/// An access key pair. Never printed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// No keys (a `file://` remote).
    pub fn none() -> Self {
        Credentials {
            access_key: String::new(),
            secret_key: String::new(),
        }
    }

    /// A key pair read from two files (each trimmed; neither may be empty).
    pub fn from_files(access: &Path, secret: &Path) -> Result<Self> {
        let read = |p: &Path| -> Result<String> {
            let s = std::fs::read_to_string(p).map_err(|e| Error::Io {
                path: p.to_owned(),
                source: e,
            })?;
            let s = s.trim().to_owned();
            if s.is_empty() || s.len() > 1024 || s.chars().any(char::is_control) {
                return Err(Error::Spec(format!("{}: not a key", p.display())));
            }
            Ok(s)
        };
        Ok(Credentials {
            access_key: read(access)?,
            secret_key: read(secret)?,
        })
    }
}

impl RemoteSpec {
    /// Remote `name` at `url`, with no other option set.
    pub fn new(name: &str, url: String) -> Self {
        RemoteSpec {
            name: name.to_owned(),
            url,
            endpoint: None,
            region: None,
            folders: Vec::new(),
            max_kib_per_sec: None,
            every_secs: None,
            via_list: false,
        }
    }

    /// For `peer://ID@HOST:PORT`, the peer's id (hex) and address.
    pub fn peer(&self) -> Option<(String, std::net::SocketAddr)> {
        match parse_location(&self.url) {
            Ok(Location::Peer { id, addr }) => Some((id, addr)),
            _ => None,
        }
    }

    /// Whether it takes an access key pair (an S3 bucket does).
    pub fn needs_keys(&self) -> bool {
        matches!(parse_location(&self.url), Ok(Location::S3 { .. }))
    }

    /// How often a running node looks whether the bucket needs a push.
    pub fn every(&self) -> Duration {
        Duration::from_secs(self.every_secs.unwrap_or(15).clamp(1, 24 * 3600))
    }

    /// Checks a spec given by the user.
    pub fn checked(self) -> Result<Self> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok_name {
            return Err(Error::Spec(format!(
                "'{}' is not a remote name (letters, digits, - and _, at most 32)",
                self.name
            )));
        }
        if !matches!(parse_location(&self.url)?, Location::S3 { .. })
            && (self.endpoint.is_some() || self.region.is_some())
        {
            return Err(Error::Spec(
                "only an s3:// remote takes --endpoint or --region".into(),
            ));
        }
        if let Some(e) = &self.endpoint {
            let u = url::Url::parse(e)
                .map_err(|_| Error::Spec(format!("--endpoint {e}: not a URL")))?;
            if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                return Err(Error::Spec(format!("--endpoint {e}: not an http(s) URL")));
            }
        }
        Ok(self)
    }

    /// Opens the bucket with `creds`. Requests are retried with backoff
    /// for up to 30 s before an error comes back.
    pub fn open(&self, creds: &Credentials) -> Result<Bucket> {
        let (bucket, prefix) = match parse_location(&self.url)? {
            Location::S3 { bucket, prefix } => (bucket, prefix),
            Location::Dir(dir) => return self.open_dir(dir),
            Location::Peer { .. } => {
                return Err(Error::Spec(format!(
                    "{}: a backup peer is reached through the node (sovryn_net::backup)",
                    self.url
                )))
            }
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(self.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(&creds.access_key)
            .with_secret_access_key(&creds.secret_key)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 6,
                retry_timeout: Duration::from_secs(30),
            });
        if let Some(e) = &self.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        Ok(Bucket::new(
            Arc::new(ObjectStoreObjects::new(Arc::new(b.build()?), None)),
            object_store::path::Path::from(prefix.as_str()),
            self.url.clone(),
            self.rate(),
        ))
    }

    /// The upload rate limit in bytes per second.
    pub fn rate(&self) -> Option<u64> {
        self.max_kib_per_sec.filter(|k| *k > 0).map(|k| k * 1024)
    }

    /// A directory as a bucket (created 0700 when missing).
    fn open_dir(&self, dir: PathBuf) -> Result<Bucket> {
        Ok(Bucket::new(
            crate::objects::directory(&dir)?,
            object_store::path::Path::default(),
            self.url.clone(),
            self.rate(),
        ))
    }
}

/// Where a remote keeps its objects.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// `s3://BUCKET/PREFIX`.
    S3 { bucket: String, prefix: String },
    /// `file:///ABSOLUTE/DIR`: a directory (a mounted disk, a NAS share).
    Dir(PathBuf),
    /// `peer://ID@HOST:PORT`: a backup peer (opened by `sovryn_net::backup`).
    Peer {
        /// Its endpoint id (64 hex digits).
        id: String,
        /// Where it listens.
        addr: std::net::SocketAddr,
    },
}

fn parse_location(url: &str) -> Result<Location> {
    if let Some(rest) = url.strip_prefix("peer://") {
        let bad = || Error::Spec(format!("{url}: not peer://ID@HOST:PORT"));
        let (id, addr) = rest.split_once('@').ok_or_else(bad)?;
        if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return Ok(Location::Peer {
            id: id.to_ascii_lowercase(),
            addr: addr.parse().map_err(|_| bad())?,
        });
    }
    if let Some(dir) = url.strip_prefix("file://") {
        let path = PathBuf::from(dir);
        let clean = path.is_absolute()
            && path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !clean {
            return Err(Error::Spec(format!(
                "{url}: not file:///ABSOLUTE/DIRECTORY (no . or .. parts)"
            )));
        }
        return Ok(Location::Dir(path));
    }
    let (bucket, prefix) = parse_url(url)?;
    Ok(Location::S3 { bucket, prefix })
}

/// `s3://BUCKET/PREFIX` as (bucket, prefix without slashes at either end).
fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = || {
        Error::Spec(format!(
            "{url}: not s3://BUCKET/PREFIX or file:///DIRECTORY"
        ))
    };
    let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let prefix = prefix.trim_matches('/');
    let prefix_ok = prefix.len() <= 256
        && prefix.split('/').all(|seg| {
            prefix.is_empty()
                || (!seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        });
    if !bucket_ok || !prefix_ok {
        return Err(bad());
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// The remotes configured in the node's home `home`.
pub fn load(home: &Path) -> Result<Vec<RemoteSpec>> {
    let path = home.join(SPECS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Spec(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

fn save(home: &Path, specs: &[RemoteSpec]) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(specs).map_err(|e| Error::Spec(format!("remotes: {e}")))?;
    Ok(sovryn_store::keys::write_secret_file(
        &home.join(SPECS_FILE),
        &bytes,
    )?)
}

fn credentials_path(home: &Path, name: &str) -> PathBuf {
    home.join(CREDENTIALS_DIR)
        .join(format!("{name}.credentials"))
}

/// Runs `f` on the remotes of `home` under their lock (the CLI and every
/// folder's daemon may change them).
fn locked<T>(home: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    sovryn_store::with_file_lock(&home.join("remotes.lock"), f)
}

/// Adds a remote (its name must be new), keeping its credentials beside.
pub fn add(home: &Path, spec: RemoteSpec, creds: &Credentials) -> Result<()> {
    let spec = spec.checked()?;
    locked(home, || add_locked(home, spec, creds))
}

fn add_locked(home: &Path, spec: RemoteSpec, creds: &Credentials) -> Result<()> {
    let mut all = load(home)?;
    if all.iter().any(|s| s.name == spec.name) {
        return Err(Error::Spec(format!(
            "a remote named '{}' exists; remove it first",
            spec.name
        )));
    }
    write_credentials(home, &spec.name, creds)?;
    all.push(spec);
    save(home, &all)
}

fn write_credentials(home: &Path, name: &str, creds: &Credentials) -> Result<()> {
    let dir = home.join(CREDENTIALS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        source: e,
    })?;
    let bytes = serde_json::to_vec(creds).map_err(|e| Error::Spec(e.to_string()))?;
    Ok(sovryn_store::keys::write_secret_file(
        &credentials_path(home, name),
        &bytes,
    )?)
}

fn remove_credentials(home: &Path, name: &str) -> Result<()> {
    let p = credentials_path(home, name);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { path: p, source: e }),
    }
}

/// Removes remote `name` and its credentials (what the bucket holds stays).
pub fn remove(home: &Path, name: &str) -> Result<()> {
    locked(home, || remove_locked(home, name))
}

fn remove_locked(home: &Path, name: &str) -> Result<()> {
    let mut all = load(home)?;
    let before = all.len();
    all.retain(|s| s.name != name);
    if all.len() == before {
        return Err(Error::Spec(format!("no remote named '{name}'")));
    }
    save(home, &all)?;
    remove_credentials(home, name)
}

/// A backup node a folder's signed device list names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBackup {
    /// Its node id (hex).
    pub id: String,
    /// Where it listens.
    pub address: std::net::SocketAddr,
}

/// Brings the remotes the device lists brought in line with folder
/// `folder`'s list, which names `listed` (revoked ones left out): each
/// becomes a remote keeping the folder (`backup-` and the start of its id),
/// and a remote the list brought keeps the folder no more once the list
/// drops it (and goes when it keeps no folder). The user's own remotes are
/// left alone. Returns whether anything changed.
pub fn follow_listed_backups(home: &Path, folder: &str, listed: &[ListedBackup]) -> Result<bool> {
    locked(home, || {
        let mut all = load(home)?;
        let before = all.clone();
        for b in listed {
            let url = format!("peer://{}@{}", b.id, b.address);
            match all
                .iter_mut()
                .find(|s| s.peer().is_some_and(|(id, _)| id == b.id))
            {
                Some(s) if s.via_list => {
                    s.url = url;
                    if !s.folders.iter().any(|f| f == folder) {
                        s.folders.push(folder.to_owned());
                    }
                }
                Some(_) => {}
                None => {
                    let short = b.id.get(..8).unwrap_or(&b.id);
                    let mut name = format!("backup-{short}");
                    while all.iter().any(|s| s.name == name) {
                        name.push('x');
                    }
                    let spec = RemoteSpec {
                        folders: vec![folder.to_owned()],
                        via_list: true,
                        ..RemoteSpec::new(&name, url)
                    }
                    .checked()?;
                    write_credentials(home, &spec.name, &Credentials::none())?;
                    all.push(spec);
                }
            }
        }
        let mut gone = Vec::new();
        for s in all.iter_mut().filter(|s| s.via_list) {
            let still = s
                .peer()
                .is_some_and(|(id, _)| listed.iter().any(|b| b.id == id));
            if !still {
                s.folders.retain(|f| f != folder);
                if s.folders.is_empty() {
                    gone.push(s.name.clone());
                }
            }
        }
        all.retain(|s| !gone.contains(&s.name));
        if all == before {
            return Ok(false);
        }
        save(home, &all)?;
        for name in gone {
            remove_credentials(home, &name)?;
        }
        Ok(true)
    })
}

/// Remote `name` and its credentials.
pub fn get(home: &Path, name: &str) -> Result<(RemoteSpec, Credentials)> {
    let spec = load(home)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Error::Spec(format!(
                "no remote named '{name}' (see `sovryn remotes list`)"
            ))
        })?;
    let p = credentials_path(home, name);
    let bytes = std::fs::read(&p).map_err(|e| Error::Io {
        path: p.clone(),
        source: e,
    })?;
    let creds =
        serde_json::from_slice(&bytes).map_err(|e| Error::Spec(format!("{}: {e}", p.display())))?;
    Ok((spec, creds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names_are_checked() {
        assert_eq!(
            parse_url("s3://my-bucket/a/b/").unwrap(),
            ("my-bucket".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        for bad in [
            "http://b/x",
            "s3://B/x",
            "s3://bk/../x",
            "s3://bk/a//b",
            "s3://b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let spec = |name: &str| RemoteSpec::new(name, "s3://bkt/p".into());
        assert!(spec("ok_1").checked().is_ok());
        assert_eq!(
            parse_location("file:///mnt/nas/x").unwrap(),
            Location::Dir("/mnt/nas/x".into())
        );
        for bad in ["file://relative", "file:///a/../b", "file://"] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
        assert!(spec("no/slash").checked().is_err());
        assert!(spec("").checked().is_err());
    }

    #[test]
    fn listed_backups_follow_the_device_list_and_the_users_remotes_stay() {
        let home = tempfile::tempdir().unwrap();
        let id = |c: char| std::iter::repeat_n(c, 64).collect::<String>();
        let b = |c: char, port: u16| ListedBackup {
            id: id(c),
            address: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        // The user's own remote on the node `c`.
        let own = RemoteSpec::new("mine", format!("peer://{}@127.0.0.1:9", id('c')));
        add(home.path(), own.clone(), &Credentials::none()).unwrap();
        assert!(follow_listed_backups(home.path(), "docs", &[b('a', 1), b('c', 2)]).unwrap());
        assert!(follow_listed_backups(home.path(), "photos", &[b('a', 3)]).unwrap());
        assert!(!follow_listed_backups(home.path(), "photos", &[b('a', 3)]).unwrap());
        let all = load(home.path()).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        let listed = &all[1];
        assert!(listed.via_list && listed.name == "backup-aaaaaaaa");
        assert_eq!(listed.folders, ["docs", "photos"]);
        assert!(listed.url.ends_with("@127.0.0.1:3"), "the newest address");
        assert!(get(home.path(), &listed.name).is_ok());
        assert_eq!(all[0], own);
        // Dropped by one folder's list, then the other's: gone.
        follow_listed_backups(home.path(), "docs", &[]).unwrap();
        assert_eq!(load(home.path()).unwrap()[1].folders, ["photos"]);
        follow_listed_backups(home.path(), "photos", &[]).unwrap();
        assert_eq!(load(home.path()).unwrap(), [own]);
        assert!(!credentials_path(home.path(), "backup-aaaaaaaa").exists());
    }
}
