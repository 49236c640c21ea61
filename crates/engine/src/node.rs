//! An opened node and its local operations.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sovryn_store::keys::KdfParams;
use sovryn_store::{
    Access, Change, DiskStat, Entry, EntryKind, FileRecord, KeyFile, MasterKey, Store,
};

use crate::config::{Config, Home};
use crate::fsutil::{self, disk_stat, set_mode, temp_beside};
use crate::identity::{self, PublicKey, SecretKey};
use crate::paths;
use crate::rules::Rules;
use crate::view::View;
use crate::{Error, Result};

/// Files at least this large are ingested with reading and chunking on a
/// thread of their own ([`Store::ingest_large`]).
pub(crate) const LARGE_INGEST_BYTES: u64 = 8 * 1024 * 1024;

/// What `init` needs.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The folder to keep in sync (created if missing).
    pub storage_path: PathBuf,
    /// Node name; defaults to the host name.
    pub node_name: Option<String>,
    /// Sync listen address.
    pub listen: Option<String>,
    /// MCP port.
    pub mcp_port: Option<u16>,
    /// Wrap the master key with this passphrase.
    pub passphrase: Option<String>,
    /// Join an existing mesh: use its folder key instead of a fresh one.
    pub folder_key: Option<String>,
    /// Argon2id cost (defaults are the production values).
    pub kdf: Option<KdfParams>,
    /// The node's identity, when it already has one (a device that joined
    /// with an invite proved this key to the inviter); `None`: a new one.
    pub identity: Option<identity::SecretKey>,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// The node's endpoint id.
    pub node_id: PublicKey,
    /// Shown once when a passphrase was set.
    pub recovery_code: Option<String>,
    /// The folder's public id.
    pub folder_id: String,
    /// The config written.
    pub config: Config,
}

/// A node opened with its key: config, identity, rules and store.
pub struct Node {
    /// Its home directory.
    pub home: Home,
    /// The home directory's (device, inode): the scanner never enters it,
    /// whatever a path setting says.
    pub home_dir_id: (u64, u64),
    /// Its configuration.
    pub config: Config,
    /// Its identity.
    pub secret: SecretKey,
    /// 16-hex-digit id used in version vectors.
    pub short_id: String,
    /// Ignore and selective-sync rules.
    pub rules: Rules,
    /// The store.
    pub store: Store,
}

/// Milliseconds since the epoch: the floor of a node's next vector counter.
pub fn now_ms() -> u64 {
    u64::try_from(sovryn_store::now_ns() / 1_000_000).unwrap_or(0)
}

/// Makes the home private: the directory 0700 and every file in it (and in
/// its subdirectories: packs) 0600, whatever the umask made them. It holds
/// keys, `mcp.jwt_secret` and the plaintext words of the search index.
pub fn tighten_home(home: &Home) -> Result<()> {
    fn walk(dir: &Path, depth: usize) -> Result<()> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
        for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() && depth < 2 {
                walk(&p, depth + 1)?;
            } else if ft.is_file() {
                let mode = e.metadata().map(|m| m.mode() & 0o777).unwrap_or(0);
                if mode & 0o077 != 0 {
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
                        .map_err(|err| Error::io(&p, err))?;
                }
            } else if ft.is_socket() && p.file_name().is_some_and(|n| n == "control.sock") {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o600));
            }
        }
        Ok(())
    }
    walk(&home.dir, 0)
}

/// This machine's host name: the default name of a node.
pub fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Parses `v3`, `V3` or `3` into a label number.
pub fn parse_label(spec: &str) -> Result<u64> {
    spec.trim()
        .trim_start_matches(['v', 'V'])
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::Usage(format!(
                "'{spec}' is not a version; versions look like v1, v2, …"
            ))
        })
}

impl Node {
    /// Creates a node: identity, key file, config, empty store.
    pub fn init(home: &Home, opts: InitOptions) -> Result<InitOutcome> {
        if home.exists() {
            return Err(Error::AlreadyInitialised(home.dir.clone()));
        }
        let storage = crate::config::absolute(&opts.storage_path)?;
        fs::create_dir_all(&storage).map_err(|e| Error::io(&storage, e))?;
        let storage = fs::canonicalize(&storage).map_err(|e| Error::io(&storage, e))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home.dir)
            .map_err(|e| Error::io(&home.dir, e))?;
        // An existing home is tightened too: it holds keys and plaintext words.
        fs::set_permissions(&home.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&home.dir, e))?;
        crate::config::check_apart(&home.dir, &storage)?;
        let mut config = Config::new(opts.node_name.unwrap_or_else(hostname), storage);
        if let Some(l) = opts.listen {
            config.listen = l;
        }
        if let Some(p) = opts.mcp_port {
            config.mcp.port = p;
        }
        config.validate()?;
        let master = match &opts.folder_key {
            Some(k) => MasterKey::from_hex(k)?,
            None => MasterKey::generate(),
        };
        let (keyfile, recovery_code) = match &opts.passphrase {
            Some(p) => {
                let code = sovryn_store::keys::random_code();
                (
                    KeyFile::wrapped(&master, p, &code, opts.kdf.unwrap_or_default())?,
                    Some(code),
                )
            }
            None => (KeyFile::plain(&master), None),
        };
        let secret = match &opts.identity {
            Some(k) => identity::store(&home.identity(), k.clone())?,
            None => identity::create(&home.identity())?,
        };
        keyfile.save(&home.keyfile())?;
        let store = Store::open(&home.dir, &master, Access::ReadWrite)?;
        let folder_id = store.folder_id().to_owned();
        drop(store);
        // The config is written last: its presence means init completed.
        config.save(home)?;
        tighten_home(home)?;
        Ok(InitOutcome {
            node_id: secret.public(),
            recovery_code,
            folder_id,
            config,
        })
    }

    /// The key file of an initialised home.
    pub fn key_file(home: &Home) -> Result<KeyFile> {
        if !home.exists() {
            return Err(Error::NoNode(home.dir.clone()));
        }
        Ok(KeyFile::load(&home.keyfile())?)
    }

    /// Opens an initialised node.
    pub fn open(home: Home, master: &MasterKey, access: Access) -> Result<Self> {
        let config = Config::load(&home)?;
        crate::config::check_apart(&home.dir, &config.storage_path)?;
        if access == Access::ReadWrite {
            tighten_home(&home)?;
        }
        let home_dir_id = fs::metadata(&home.dir)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| Error::io(&home.dir, e))?;
        let secret = identity::load(&home.identity())?;
        let short_id = identity::short_id(&secret.public());
        let rules = Rules::new(&config.storage_path, &config.sync)?;
        let store = Store::open(&home.dir, master, access)?;
        Ok(Node {
            home,
            home_dir_id,
            config,
            secret,
            short_id,
            rules,
            store,
        })
    }

    /// Takes a changed `config.toml` into a running node: sync rules
    /// (ignore, include, exclude: `sovryn remove`), retention, search and
    /// the rest apply at once. The storage path, node name and listen
    /// address need a restart; they are kept, and the returned list names
    /// those that differ.
    pub fn apply_config(&mut self, mut config: Config) -> Result<Vec<&'static str>> {
        let mut needs_restart = Vec::new();
        if config.storage_path != self.config.storage_path {
            needs_restart.push("storage_path");
            config.storage_path = self.config.storage_path.clone();
        }
        if config.node_name != self.config.node_name {
            needs_restart.push("node_name");
            config.node_name = self.config.node_name.clone();
        }
        if config.listen != self.config.listen {
            needs_restart.push("listen");
            config.listen = self.config.listen.clone();
        }
        if config.sync != self.config.sync {
            self.rules = Rules::new(&self.config.storage_path, &config.sync)?;
        }
        self.config = config;
        Ok(needs_restart)
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.config.storage_path
    }

    /// This node's endpoint id.
    pub fn node_id(&self) -> PublicKey {
        self.secret.public()
    }

    /// Resolves a user-typed path (see [`paths::resolve_user_path`]).
    pub fn resolve(&self, cwd: &Path, raw: &str) -> Result<String> {
        paths::resolve_user_path(self.root(), cwd, raw)
    }

    /// A new local state derived from `prev`: its vector plus one edit by this node.
    pub fn local_entry(&self, prev: Option<&Entry>, mut base: Entry, actor: Option<&str>) -> Entry {
        let mut vv = prev.map(|p| p.vv.clone()).unwrap_or_default();
        vv.advance(&self.short_id, now_ms());
        base.vv = vv;
        base.author = self.config.node_name.clone();
        base.actor = actor.map(str::to_owned);
        base.time_ns = sovryn_store::now_ns();
        base
    }

    /// Writes every live path of the store into the storage path (after
    /// the store was rebuilt from a backup) and records what is on disk;
    /// how many files it wrote. Parents come before what they hold.
    pub fn materialize_all(&mut self) -> Result<u64> {
        let mut files = 0;
        for rec in self.store.files_under("")? {
            if rec.entry.deleted {
                continue;
            }
            let disk = self.materialize(&rec.path, &rec.entry)?;
            self.store.set_disk_stat(&rec.path, disk)?;
            if rec.entry.kind == sovryn_store::EntryKind::File {
                files += 1;
            }
        }
        Ok(files)
    }

    /// Writes a state to disk under the root, crash-safely: content goes to a
    /// temp file that is fsynced and renamed over the target. Returns what is
    /// now on disk (`None` for a deletion).
    pub fn materialize(&self, rel: &str, entry: &Entry) -> Result<Option<DiskStat>> {
        let target = paths::confined(self.root(), rel)?;
        if rel.is_empty() {
            return Err(Error::BadPath("cannot replace the storage root".into()));
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let existing = fs::symlink_metadata(&target).ok();
        if entry.deleted {
            match existing {
                Some(m) if m.is_dir() => match fs::remove_dir(&target) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                        tracing::info!("{rel}: directory not empty, kept");
                        return Ok(Some(disk_stat(&target)?));
                    }
                    Err(e) => return Err(Error::io(&target, e)),
                },
                Some(_) => fs::remove_file(&target).map_err(|e| Error::io(&target, e))?,
                None => {}
            }
            return Ok(None);
        }
        match entry.kind {
            EntryKind::Dir => {
                if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                    fs::remove_file(&target).map_err(|e| Error::io(&target, e))?;
                }
                fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
                set_mode(&target, entry.mode)?;
            }
            EntryKind::Symlink => {
                let link = entry.target.clone().unwrap_or_default();
                let tmp = temp_beside(&target);
                std::os::unix::fs::symlink(&link, &tmp).map_err(|e| Error::io(&tmp, e))?;
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    fs::remove_dir(&target).map_err(|e| Error::io(&target, e))?;
                }
                fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
            }
            EntryKind::File => {
                let tmp = self.write_temp(&target, entry.mode, true, |f| {
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                    self.store.write_content(entry, &mut w)?;
                    w.flush().map_err(|e| Error::io(&target, e))
                })?;
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    fs::remove_dir(&target).map_err(|e| Error::io(&target, e))?;
                }
                fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
            }
        }
        sovryn_store::fsync_parent(&target)?;
        Ok(Some(fsutil::mark_racy(
            disk_stat(&target)?,
            sovryn_store::now_ns(),
        )))
    }

    /// Writes a file's content (`fill` writes it) with `mode` to a new temp
    /// file beside `target` (synced when `sync`) and returns its path; on
    /// failure nothing is left behind.
    pub(crate) fn write_temp(
        &self,
        target: &Path,
        mode: u32,
        sync: bool,
        fill: impl FnOnce(&mut fs::File) -> Result<()>,
    ) -> Result<PathBuf> {
        let tmp = temp_beside(target);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let written = (|| -> Result<()> {
            fill(&mut f)?;
            if sync {
                f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            }
            set_mode(&tmp, mode)
        })();
        match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Brings back version `label` of `rel` as a new version (history is never rewritten).
    pub fn restore(&mut self, rel: &str, spec: &str, actor: Option<&str>) -> Result<FileRecord> {
        let old = self.find_version(rel, spec)?;
        let current = self.record(rel)?;
        let mut base = old.entry.clone();
        base.mode &= 0o777;
        base.message = Some(format!("restored from v{}", old.label));
        let mut entry = self.local_entry(Some(&current.entry), base, actor);
        let disk = self.materialize(rel, &entry)?;
        if let Some(d) = disk {
            entry.mtime_ns = d.mtime_ns;
        }
        let text = self.text_of(&entry)?;
        let rec = self.store.commit(&[Change {
            path: rel.to_owned(),
            entry,
            disk,
            text,
        }])?;
        rec.into_iter()
            .next()
            .ok_or_else(|| Error::NotFound("restore recorded nothing".into()))
    }

    /// The searchable text of a state, when it is a small UTF-8 file.
    pub fn text_of(&self, entry: &Entry) -> Result<Option<String>> {
        if !self.config.search.enabled
            || entry.kind != EntryKind::File
            || entry.deleted
            || entry.size > self.config.search.max_text_bytes
        {
            return Ok(None);
        }
        let bytes = self.store.content(entry)?;
        Ok(if bytes.contains(&0) {
            None
        } else {
            String::from_utf8(bytes).ok()
        })
    }

    /// The most bytes of a file kept as text for search (0: none).
    pub(crate) fn text_limit(&self) -> u64 {
        if self.config.search.enabled {
            self.config.search.max_text_bytes
        } else {
            0
        }
    }

    /// The state of `rel` as it is on disk right now (not recorded).
    /// `durable` hears of a large file's chunks as they become durable
    /// ([`Store::ingest_large`]); `read_ahead` is its content read by a
    /// worker, used when the file's stat is still the one it was read under.
    pub(crate) fn disk_entry(
        &mut self,
        rel: &str,
        durable: Option<&mut sovryn_store::DurableChunks<'_>>,
        read_ahead: Option<crate::scan::ReadFile>,
    ) -> Result<Option<(Entry, Option<String>)>> {
        let path = paths::confined(self.root(), rel)?;
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let stat = fsutil::stat_of(&meta);
        let (kind, chunks, size, target, text) = if meta.file_type().is_symlink() {
            let t = fs::read_link(&path)
                .map_err(|e| Error::io(&path, e))?
                .to_string_lossy()
                .into_owned();
            (
                EntryKind::Symlink,
                Vec::new(),
                t.len() as u64,
                Some(t),
                None,
            )
        } else if meta.is_dir() {
            (EntryKind::Dir, Vec::new(), 0, None, None)
        } else if let Some(read) = read_ahead.filter(|r| r.stat == stat) {
            let ing = self.store.ingest_prepared(read.content)?;
            (EntryKind::File, ing.chunks, ing.size, None, ing.text)
        } else {
            let f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let limit = self.text_limit();
            let reader = std::io::BufReader::with_capacity(1 << 20, f);
            // Large files are chunked on a thread of their own, ahead of sealing.
            let ing = if stat.size >= LARGE_INGEST_BYTES {
                self.store.ingest_large(reader, limit, durable)?
            } else {
                self.store.ingest(reader, limit)?
            };
            (EntryKind::File, ing.chunks, ing.size, None, ing.text)
        };
        Ok(Some((
            Entry {
                kind,
                deleted: false,
                size,
                mode: stat.mode & 0o7777,
                mtime_ns: stat.mtime_ns,
                target,
                vv: Default::default(),
                author: String::new(),
                actor: None,
                time_ns: 0,
                message: None,
                chunks,
            },
            text,
        )))
    }
}
