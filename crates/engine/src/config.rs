//! A node's home directory and its `config.toml`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sovryn_store::RetentionPolicy;

use crate::{Error, Result};

/// The files of a node's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    /// The directory itself.
    pub dir: PathBuf,
}

impl Home {
    /// The home at `dir`, or `$SOVRYN_HOME`, or `$XDG_DATA_HOME/sovryn`, or `~/.local/share/sovryn`.
    pub fn locate(dir: Option<PathBuf>) -> Result<Self> {
        if let Some(d) = dir {
            return Ok(Home { dir: absolute(&d)? });
        }
        if let Some(d) = std::env::var_os("SOVRYN_HOME").filter(|d| !d.is_empty()) {
            return Ok(Home {
                dir: absolute(Path::new(&d))?,
            });
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Ok(Home {
                dir: PathBuf::from(d).join("sovryn"),
            });
        }
        let home = std::env::var_os("HOME")
            .ok_or_else(|| Error::Usage("set --home, $SOVRYN_HOME or $HOME".into()))?;
        Ok(Home {
            dir: PathBuf::from(home).join(".local/share/sovryn"),
        })
    }
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// The node's ed25519 secret key (mode 0600).
    pub fn identity(&self) -> PathBuf {
        self.dir.join("identity.key")
    }
    /// The master key file (mode 0600), plain or passphrase-wrapped.
    pub fn keyfile(&self) -> PathBuf {
        self.dir.join("master.key")
    }
    /// The marker file that keeps sync paused (across restarts too).
    pub fn pause_marker(&self) -> PathBuf {
        self.dir.join("paused")
    }
    /// Whether sync is paused on this node.
    pub fn is_paused(&self) -> bool {
        self.pause_marker().exists()
    }
    /// Whether a node was initialised here.
    pub fn exists(&self) -> bool {
        self.config().exists()
    }
}

/// Makes `p` absolute against the current directory (without resolving symlinks).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?;
        Ok(cwd.join(p))
    }
}

/// `p` with symlinks resolved, as far as it exists (the rest appended).
pub(crate) fn canonical_prefix(p: &Path) -> PathBuf {
    let mut existing = p.to_owned();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = fs::canonicalize(&existing) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => return p.to_owned(),
        }
    }
}

/// Refuses a storage path that contains the home or lies inside it: the
/// scanner would record the keys, the config and the index and sync them
/// to every peer.
pub fn check_apart(home: &Path, storage: &Path) -> Result<()> {
    let (h, s) = (canonical_prefix(home), canonical_prefix(storage));
    if h.starts_with(&s) || s.starts_with(&h) {
        return Err(Error::Usage(format!(
            "the home ({}) and the storage path ({}) must not contain each other",
            h.display(),
            s.display()
        )));
    }
    Ok(())
}

/// Checks a peer address: `HOST:PORT` (an IP address or a host name).
pub fn check_peer_address(a: &str) -> Result<()> {
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(Error::Config(format!(
            "address must be HOST:PORT, got '{a}'"
        ))),
    }
}

/// A change of `config.toml` as a running node acts on it (see
/// [`Config::changes_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigChange {
    /// Peers added, removed, or their rights or addresses changed.
    Peers,
    /// Ignore, include or exclude rules (`sovryn remove`, `keep`).
    Rules,
    /// Bandwidth limits.
    Bandwidth,
    /// Retention of old versions.
    Retention,
    /// Full-text search settings.
    Search,
    /// The MCP listener's settings.
    Mcp,
    /// Settings a running node cannot change (listen address, node name,
    /// storage path, discovery): they apply at the next start.
    NeedsRestart(&'static str),
}

/// MCP listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct McpConfig {
    /// Serve MCP over HTTP while the node runs.
    pub enabled: bool,
    /// Address the HTTP listener binds.
    pub bind: String,
    /// Port of the HTTP listener.
    pub port: u16,
    /// Host names accepted besides loopback and the bind address (DNS rebinding guard).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides loopback ones (`https://app.example:443`, `http://tool:*`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Client networks allowed to connect (`10.0.0.0/8`, `192.168.1.7`); empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<String>,
    /// HS256 secret (32 bytes or more) for JWT bearer tokens; prefer `jwt_secret_file`,
    /// since `config.toml` is world-readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 JWT secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The audience a JWT's `aud` must name; none: `aud` is not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// The issuer a JWT's `iss` must be; none: `iss` is not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// TLS certificate chain (PEM); with `tls_key`, the listener speaks HTTPS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enabled: true,
            bind: "127.0.0.1".into(),
            port: 8765,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            allow_cidrs: Vec::new(),
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// What this node keeps and never syncs, bandwidth limits, and how peers
/// are found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncConfig {
    /// Gitignore-style patterns ignored on this node (added to `.sovrynignore` files).
    pub ignore: Vec<String>,
    /// Selective sync: when non-empty, only paths matching one of these are kept.
    pub include: Vec<String>,
    /// Selective sync: paths matching these are not kept on this node.
    pub exclude: Vec<String>,
    /// Upload limit for chunk data to all peers together, KiB/s (0: none).
    pub max_send_kib_per_sec: u64,
    /// Download limit for chunk data from all peers together, KiB/s (0: none).
    pub max_recv_kib_per_sec: u64,
    /// LAN discovery: announce this node and find peers by endpoint id with
    /// mDNS on the local network (not when `listen` is a loopback address).
    pub mdns: bool,
    /// Internet discovery: publish and look up addresses in the BitTorrent
    /// mainline DHT (signed pkarr records).
    pub dht: bool,
    /// A relay server (`https://relay.example.org`, e.g. a self-hosted
    /// `iroh-relay`) for peers that cannot reach each other directly;
    /// empty: no relay.
    pub relay_url: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            ignore: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            max_send_kib_per_sec: 0,
            max_recv_kib_per_sec: 0,
            mdns: true,
            dht: false,
            relay_url: String::new(),
        }
    }
}

impl SyncConfig {
    /// The relay URL, when one is configured (`relay_url` not blank).
    pub fn relay(&self) -> Option<&str> {
        Some(self.relay_url.trim()).filter(|u| !u.is_empty())
    }
}

/// Full-text search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchConfig {
    /// Index text files for `search`. The index holds plaintext words.
    pub enabled: bool,
    /// Largest file indexed, bytes.
    pub max_text_bytes: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            enabled: true,
            max_text_bytes: 1024 * 1024,
        }
    }
}

/// `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// This node's name (shown as the author of its versions).
    pub node_name: String,
    /// The folder this node keeps in sync.
    pub storage_path: PathBuf,
    /// UDP address the sync endpoint binds.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// MCP listener.
    #[serde(default)]
    pub mcp: McpConfig,
    /// Version retention for `gc`.
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// Ignore and selective-sync patterns.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Full-text search.
    #[serde(default)]
    pub search: SearchConfig,
    /// The peers this node syncs with (`sovryn peers add`); nobody else may connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
}

/// A trusted peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// Its endpoint id (64 hex digits).
    pub id: String,
    /// Where to reach it (`HOST:PORT`); empty when it only connects to us.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// A name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// It receives our changes but its own are not applied here.
    #[serde(default)]
    pub read_only: bool,
    /// When non-empty, only these path prefixes are exchanged with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Added because the folder's signed device list says so, not by this
    /// node's user: it goes when the list stops saying so, and it neither
    /// vouches nor is vouched for here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_list: bool,
}

impl PeerConfig {
    /// A peer entry from what a user or an agent typed: addresses checked,
    /// path prefixes normalised (confined to the folder), an empty name
    /// taken for none.
    pub fn checked(
        id: &crate::identity::PublicKey,
        addresses: Vec<String>,
        name: Option<String>,
        read_only: bool,
        paths: &[String],
    ) -> Result<Self> {
        for a in &addresses {
            check_peer_address(a)?;
        }
        let paths = paths
            .iter()
            .map(|p| crate::paths::normalize_rel(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(PeerConfig {
            id: id.to_string(),
            addresses,
            name: name.filter(|n| !n.trim().is_empty()),
            read_only,
            paths,
            via_list: false,
        })
    }
}

fn default_listen() -> String {
    "0.0.0.0:7777".into()
}

/// Whether a config key holds a secret (never printed back).
pub fn is_secret_key(key: &str) -> bool {
    key.ends_with("secret") || key.ends_with("password")
}

/// Keys `sovryn config get/set` accepts.
pub const CONFIG_KEYS: &[&str] = &[
    "node_name",
    "storage_path",
    "listen",
    "mcp.enabled",
    "mcp.bind",
    "mcp.port",
    "mcp.allowed_hosts",
    "mcp.allowed_origins",
    "mcp.allow_cidrs",
    "mcp.jwt_secret",
    "mcp.jwt_secret_file",
    "mcp.jwt_audience",
    "mcp.jwt_issuer",
    "mcp.tls_cert",
    "mcp.tls_key",
    "retention.keep_last",
    "retention.keep_within_secs",
    "retention.staggered",
    "retention.staggered_max_age_secs",
    "sync.ignore",
    "sync.include",
    "sync.exclude",
    "sync.max_send_kib_per_sec",
    "sync.max_recv_kib_per_sec",
    "sync.mdns",
    "sync.dht",
    "sync.relay_url",
    "search.enabled",
    "search.max_text_bytes",
];

impl Config {
    /// A config with defaults for everything but the name and folder.
    pub fn new(node_name: String, storage_path: PathBuf) -> Self {
        Config {
            node_name,
            storage_path,
            listen: default_listen(),
            mcp: McpConfig::default(),
            retention: RetentionPolicy::default(),
            sync: SyncConfig::default(),
            search: SearchConfig::default(),
            peers: Vec::new(),
        }
    }

    /// Reads `config.toml` from `home`.
    pub fn load(home: &Home) -> Result<Self> {
        let path = home.config();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoNode(home.dir.clone()));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Writes `config.toml` (write, fsync, rename; mode 0600: it may hold
    /// `mcp.jwt_secret`). Refuses a storage path that overlaps the home.
    pub fn save(&self, home: &Home) -> Result<()> {
        check_apart(&home.dir, &self.storage_path)?;
        let text = toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        crate::fsutil::write_atomic(&home.config(), text.as_bytes(), 0o600)
    }

    /// What changed from `old` to this config, each concern once.
    pub fn changes_from(&self, old: &Config) -> Vec<ConfigChange> {
        let mut out = Vec::new();
        if self.peers != old.peers {
            out.push(ConfigChange::Peers);
        }
        let (a, b) = (&self.sync, &old.sync);
        if a.ignore != b.ignore || a.include != b.include || a.exclude != b.exclude {
            out.push(ConfigChange::Rules);
        }
        if a.max_send_kib_per_sec != b.max_send_kib_per_sec
            || a.max_recv_kib_per_sec != b.max_recv_kib_per_sec
        {
            out.push(ConfigChange::Bandwidth);
        }
        if self.retention != old.retention {
            out.push(ConfigChange::Retention);
        }
        if self.search != old.search {
            out.push(ConfigChange::Search);
        }
        if self.mcp != old.mcp {
            out.push(ConfigChange::Mcp);
        }
        for (name, differs) in [
            ("listen", self.listen != old.listen),
            ("node_name", self.node_name != old.node_name),
            ("storage_path", self.storage_path != old.storage_path),
            (
                "sync.mdns, sync.dht, sync.relay_url",
                a.mdns != b.mdns || a.dht != b.dht || a.relay_url != b.relay_url,
            ),
        ] {
            if differs {
                out.push(ConfigChange::NeedsRestart(name));
            }
        }
        out
    }

    /// Changes `config.toml` under an exclusive lock (`config.lock` in the
    /// home): load, `f`, save. Concurrent writers (two commands, the CLI
    /// and an agent's `add_peer`) queue instead of losing each other's
    /// change. Nothing is saved when `f` fails.
    pub fn update<T>(home: &Home, f: impl FnOnce(&mut Config) -> Result<T>) -> Result<T> {
        with_lock(home, "config.lock", || {
            let mut config = Config::load(home)?;
            let out = f(&mut config)?;
            config.save(home)?;
            Ok(out)
        })
    }

    /// Trusts `peer`, or updates it when its id is known: its rights
    /// (read-only, paths) become what `peer` says, while a name and
    /// addresses it does not give are kept, not dropped. Returns whether it
    /// was known and the entry as it now stands.
    pub fn upsert_peer(&mut self, peer: PeerConfig) -> (bool, PeerConfig) {
        match self.peers.iter_mut().find(|p| p.id == peer.id) {
            Some(p) => {
                let mut merged = peer;
                if merged.addresses.is_empty() {
                    merged.addresses = p.addresses.clone();
                }
                if merged.name.is_none() {
                    merged.name = p.name.clone();
                }
                *p = merged.clone();
                (true, merged)
            }
            None => {
                self.peers.push(peer.clone());
                (false, peer)
            }
        }
    }

    /// Stops trusting the peer with this id or name; an error when there is none.
    pub fn remove_peer(&mut self, who: &str) -> Result<usize> {
        let before = self.peers.len();
        self.peers
            .retain(|p| p.id != who && p.name.as_deref() != Some(who));
        if self.peers.len() == before {
            return Err(Error::NotFound(format!(
                "no peer '{who}' (see 'sovryn peers list')"
            )));
        }
        Ok(before - self.peers.len())
    }

    /// The value at a dotted key, as TOML.
    pub fn get(&self, key: &str) -> Result<String> {
        if !CONFIG_KEYS.contains(&key) {
            return Err(Error::Config(format!(
                "unknown key '{key}'; keys: {}",
                CONFIG_KEYS.join(", ")
            )));
        }
        let value = toml::Value::try_from(self).map_err(|e| Error::Config(e.to_string()))?;
        let mut cur = Some(&value);
        for part in key.split('.') {
            cur = cur.and_then(|v| v.get(part));
        }
        Ok(match cur {
            None => "(unset)".into(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        })
    }

    /// Sets a dotted key from text (a TOML literal, or a bare string), validating the result.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<()> {
        if !CONFIG_KEYS.contains(&key) {
            return Err(Error::Config(format!(
                "unknown key '{key}'; keys: {}",
                CONFIG_KEYS.join(", ")
            )));
        }
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        let mut value = toml::Value::try_from(&*self).map_err(|e| Error::Config(e.to_string()))?;
        let parts: Vec<&str> = key.split('.').collect();
        let mut table = value
            .as_table_mut()
            .ok_or_else(|| Error::Config("config is not a table".into()))?;
        for part in &parts[..parts.len() - 1] {
            table = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| Error::Config(format!("{part} is not a section")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), parsed);
        let updated: Config = value
            .try_into()
            .map_err(|e| Error::Config(format!("invalid value for {key}: {e}")))?;
        updated.validate()?;
        *self = updated;
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        if self.node_name.trim().is_empty() || self.node_name.contains(['/', '\0']) {
            return Err(Error::Config(
                "node_name must be non-empty and contain no '/'".into(),
            ));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Config(format!(
                "listen must be HOST:PORT, got '{}'",
                self.listen
            )));
        }
        if self.mcp.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(Error::Config(format!(
                "mcp.bind must be an IP address, got '{}'",
                self.mcp.bind
            )));
        }
        for c in &self.mcp.allow_cidrs {
            if !valid_cidr(c) {
                return Err(Error::Config(format!(
                    "mcp.allow_cidrs: '{c}' is not a CIDR block (e.g. 10.0.0.0/8, 192.168.1.7)"
                )));
            }
        }
        if self.mcp.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(Error::Config(
                "mcp.jwt_secret must be at least 32 bytes".into(),
            ));
        }
        if !self.storage_path.is_absolute() {
            return Err(Error::Config("storage_path must be absolute".into()));
        }
        if let Some(url) = self.sync.relay() {
            check_relay_url(url)?;
        }
        Ok(())
    }
}

/// Checks a relay URL: `http://` or `https://`, then a host name or IP
/// address (IPv6 in brackets), an optional port and an optional path.
pub fn check_relay_url(url: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::Config(format!(
            "sync.relay_url: {why}, got '{url}' (expected e.g. https://relay.example.org, \
             or empty for no relay)"
        ))
    };
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(bad("the URL must start with https:// or http://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("the URL has no host"));
    }
    if authority.contains('@') {
        return Err(bad("user names and passwords are not supported in the URL"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the URL contains spaces or control characters"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in the host"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("the bracketed host is not an IPv6 address"));
        }
        match after {
            "" => (ip, None),
            p => (
                ip,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after the IPv6 address"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the URL has no host"));
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad("the host is not a valid host name or IP address"));
    }
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
    }
    Ok(())
}

/// `ADDR` or `ADDR/PREFIX` with a prefix the address family allows.
fn valid_cidr(s: &str) -> bool {
    let (addr, prefix) = match s.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s.trim(), None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|n| n <= max))
}

/// Runs `f` holding the exclusive lock file `name` in `home` (processes
/// and threads that edit one file of the home take turns).
pub fn with_lock<T>(home: &Home, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    sovryn_store::with_file_lock(&home.dir.join(name), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_security_keys_validate() {
        let mut c = Config::new("a".into(), "/tmp/x".into());
        c.set("mcp.allow_cidrs", "[\"10.0.0.0/8\", \"::1\"]")
            .unwrap();
        assert_eq!(c.mcp.allow_cidrs.len(), 2);
        assert!(c.set("mcp.allow_cidrs", "[\"10.0.0.0/33\"]").is_err());
        c.set("mcp.tls_cert", "/etc/cert.pem").unwrap(); // the key is checked when serving
        assert!(c.set("mcp.jwt_secret", "short").is_err());
        c.set("mcp.jwt_secret_file", "/etc/sovryn/jwt").unwrap();
        assert_eq!(c.get("mcp.jwt_secret").unwrap(), "(unset)");
        c.set("mcp.allowed_origins", "[\"https://app.example.com\"]")
            .unwrap();
        assert_eq!(
            c.mcp.allowed_origins,
            vec!["https://app.example.com".to_string()]
        );
    }

    #[test]
    fn set_validates_and_round_trips() {
        let mut c = Config::new("a".into(), "/tmp/x".into());
        c.set("mcp.port", "9000").unwrap();
        assert_eq!(c.mcp.port, 9000);
        c.set("retention.keep_last", "5").unwrap();
        assert_eq!(c.retention.keep_last, Some(5));
        assert_eq!(c.get("retention.keep_last").unwrap(), "5");
        c.set("sync.exclude", "[\"big/**\"]").unwrap();
        assert_eq!(c.sync.exclude, vec!["big/**".to_string()]);
        assert!(c.set("mcp.port", "not a port").is_err());
        assert!(c.set("listen", "nonsense").is_err());
        assert!(c.set("no.such", "1").is_err());
        assert_eq!(c.mcp.port, 9000);
    }

    #[test]
    fn discovery_keys_default_set_and_validate() {
        let mut c = Config::new("a".into(), "/tmp/x".into());
        // LAN discovery on, DHT and relay off by default.
        assert!(c.sync.mdns);
        assert!(!c.sync.dht);
        assert_eq!(c.sync.relay(), None);
        assert_eq!(c.get("sync.mdns").unwrap(), "true");
        assert_eq!(c.get("sync.dht").unwrap(), "false");
        assert_eq!(c.get("sync.relay_url").unwrap(), "");

        c.set("sync.mdns", "false").unwrap();
        c.set("sync.dht", "true").unwrap();
        assert!(!c.sync.mdns && c.sync.dht);
        assert!(c.set("sync.mdns", "maybe").is_err());
        assert!(!c.sync.mdns);

        for ok in [
            "https://relay.example.org",
            "https://relay.example.org./",
            "http://10.0.0.1:3340",
            "https://[2001:db8::1]:443/relay",
            "HTTPS://Relay.Example.org",
        ] {
            c.set("sync.relay_url", ok).unwrap();
            assert_eq!(c.sync.relay(), Some(ok));
        }
        for bad in [
            "relay.example.org",
            "ftp://relay.example.org",
            "https://",
            "https://:443",
            "https://relay.example.org:99999",
            "https://relay.example.org:0",
            "https://user:pw@relay.example.org",
            "https://relay example.org",
            "https://[::1",
            "https://[not-v6]",
        ] {
            let e = c.set("sync.relay_url", bad).unwrap_err().to_string();
            assert!(e.contains("sync.relay_url"), "{bad}: {e}");
        }
        // The last good value stays; empty turns the relay off.
        assert_eq!(c.sync.relay(), Some("HTTPS://Relay.Example.org"));
        c.set("sync.relay_url", "\"\"").unwrap();
        assert_eq!(c.sync.relay(), None);

        // A config.toml written before these keys existed gets the defaults.
        let old: Config = toml::from_str(
            "node_name = \"a\"\nstorage_path = \"/tmp/x\"\n[sync]\nexclude = [\"big/**\"]\n",
        )
        .unwrap();
        assert!(old.sync.mdns && !old.sync.dht && old.sync.relay().is_none());
    }
}
