//! Bearer tokens for MCP clients, kept in `mcp.db` in the node's home.
//!
//! A token is shown once when created; only its SHA-256 is stored. Each token
//! has capabilities (`read`, `write`, `admin`, `status`; `admin` implies all)
//! and optional path globs: a token with globs sees nothing outside them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{invalid as bail, Error, Result, WithContext};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Read, list and search files and their history.
    Read,
    /// Write, edit, move, delete and restore files.
    Write,
    /// Everything.
    Admin,
    /// Node statistics and health.
    Status,
}

impl Capability {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Write => "write",
            Capability::Admin => "admin",
            Capability::Status => "status",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "read" => Capability::Read,
            "write" => Capability::Write,
            "admin" => Capability::Admin,
            "status" => Capability::Status,
            other => bail!("unknown capability '{other}' (use read, write, admin, status)"),
        })
    }
}

/// Path globs limiting what a token sees. No globs: the whole folder.
#[derive(Debug, Clone, Default)]
pub struct PathScope {
    globs: Vec<String>,
    set: Option<GlobSet>,
    /// Literal directory prefixes of the globs (before any wildcard).
    prefixes: Vec<String>,
}

fn literal_prefix(glob: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in glob.split('/') {
        if part.contains(['*', '?', '[', '{']) {
            break;
        }
        out.push(part);
    }
    out.join("/")
}

impl PathScope {
    /// A scope from globs (`docs/**`, `notes/*.md`); empty means everything.
    pub fn new(globs: &[String]) -> Result<Self> {
        if globs.is_empty() {
            return Ok(Self::default());
        }
        let mut b = GlobSetBuilder::new();
        let mut clean = Vec::new();
        for g in globs {
            let g = g.trim().trim_start_matches("./").trim_start_matches('/');
            if g.is_empty() || g.split('/').any(|p| p == "..") {
                bail!("bad path glob '{g}'");
            }
            b.add(
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .or_else(|_| Glob::new(g))
                    .map_err(|e| Error::Invalid(format!("bad path glob '{g}': {e}")))?,
            );
            clean.push(g.to_owned());
        }
        let prefixes = clean.iter().map(|g| literal_prefix(g)).collect();
        Ok(PathScope {
            set: Some(
                b.build()
                    .map_err(|e| Error::Invalid(format!("bad path globs: {e}")))?,
            ),
            globs: clean,
            prefixes,
        })
    }

    /// The globs, as given.
    pub fn globs(&self) -> &[String] {
        &self.globs
    }

    /// Whether the scope is the whole folder.
    pub fn is_all(&self) -> bool {
        self.set.is_none()
    }

    /// Whether `rel` (or a directory holding it) lies in the scope.
    pub fn allows(&self, rel: &str) -> bool {
        let Some(set) = &self.set else {
            return true;
        };
        if rel.is_empty() {
            return false;
        }
        if set.is_match(rel) || set.is_match(format!("{rel}/\u{1}")) {
            return true;
        }
        let mut cur = rel;
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if set.is_match(parent) {
                return true;
            }
            cur = parent;
        }
        false
    }

    /// Whether `rel` is a directory on the way to something in the scope
    /// (listable, showing only what leads into the scope).
    pub fn leads_into(&self, rel: &str) -> bool {
        if self.set.is_none() || rel.is_empty() {
            return true;
        }
        self.prefixes
            .iter()
            .any(|p| p == rel || p.starts_with(&format!("{rel}/")))
    }

    /// Whether `rel` may appear in a listing (allowed, or leading into the scope).
    pub fn visible(&self, rel: &str) -> bool {
        self.allows(rel) || self.leads_into(rel)
    }
}

/// Who is calling: a token, or the local stdio user.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token name (`stdio` for the local process).
    pub name: String,
    /// Capabilities.
    pub capabilities: Vec<Capability>,
    /// Path scope.
    pub scope: PathScope,
}

impl Principal {
    /// The local user running `sovryn mcp serve --stdio`: everything.
    pub fn stdio() -> Self {
        Principal {
            name: "stdio".into(),
            capabilities: vec![Capability::Admin],
            scope: PathScope::default(),
        }
    }

    /// The actor recorded with versions this principal makes.
    pub fn actor(&self) -> String {
        format!("mcp:{}", self.name)
    }

    /// Whether it holds `cap` (admin holds all).
    pub fn can(&self, cap: Capability) -> bool {
        self.capabilities
            .iter()
            .any(|c| *c == cap || *c == Capability::Admin)
    }
}

/// A stored token (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Its name (unique).
    pub name: String,
    /// Capabilities.
    pub capabilities: Vec<Capability>,
    /// Path globs (empty: everything).
    pub paths: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Expiry, seconds since the epoch.
    pub expires: Option<i64>,
    /// Revoked.
    pub revoked: bool,
}

impl TokenInfo {
    /// Whether it can be used at `now` (seconds).
    pub fn usable(&self, now: i64) -> bool {
        !self.revoked && self.expires.is_none_or(|e| e > now)
    }
}

/// The token table.
pub struct TokenStore {
    db: Connection,
}

/// The token file of a home.
pub fn db_path(home: &Path) -> PathBuf {
    home.join("mcp.db")
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses `30d`, `12h`, `45m`, `90s`, `2w` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("bad duration '{s}' (e.g. 30d, 12h, 45m)")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("bad duration unit in '{s}' (use s, m, h, d or w)"),
    };
    if n <= 0 {
        bail!("a duration must be positive: '{s}'");
    }
    Ok(n * mult)
}

fn info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    let caps: String = r.get(1)?;
    let paths: String = r.get(2)?;
    Ok(TokenInfo {
        name: r.get(0)?,
        capabilities: caps.split(',').filter_map(|c| c.parse().ok()).collect(),
        paths: serde_json::from_str(&paths).unwrap_or_default(),
        created: r.get(3)?,
        expires: r.get(4)?,
        revoked: r.get::<_, i64>(5)? != 0,
    })
}

impl TokenStore {
    /// Opens (creating) `mcp.db` in `home`.
    pub fn open(home: &Path) -> Result<Self> {
        let path = db_path(home);
        let db = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS tokens(
                name TEXT PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                capabilities TEXT NOT NULL,
                paths TEXT NOT NULL,
                created INTEGER NOT NULL,
                expires INTEGER,
                revoked INTEGER NOT NULL DEFAULT 0
            );",
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(TokenStore { db })
    }

    /// Creates a token and returns its secret (shown once).
    pub fn create(
        &self,
        name: &str,
        capabilities: &[Capability],
        paths: &[String],
        expires_in: Option<i64>,
    ) -> Result<String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("a token name uses letters, digits, '-', '_' and '.'");
        }
        if capabilities.is_empty() {
            bail!("a token needs at least one capability");
        }
        PathScope::new(paths)?;
        let exists: Option<i64> = self
            .db
            .query_row("SELECT revoked FROM tokens WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            bail!("a token named '{name}' exists already (revoke it or pick another name)");
        }
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let secret = format!("svn_{}", hex::encode(raw));
        let mut caps: Vec<Capability> = capabilities.to_vec();
        caps.sort();
        caps.dedup();
        let caps: Vec<&str> = caps.iter().map(|c| c.as_str()).collect();
        let t = now();
        self.db.execute(
            "INSERT INTO tokens(name, hash, capabilities, paths, created, expires, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            params![
                name,
                hash(&secret),
                caps.join(","),
                serde_json::to_string(paths).context("encoding the path globs")?,
                t,
                expires_in.map(|e| t + e)
            ],
        )?;
        Ok(secret)
    }

    /// Every token, by name.
    pub fn list(&self) -> Result<Vec<TokenInfo>> {
        let mut stmt = self.db.prepare(
            "SELECT name, capabilities, paths, created, expires, revoked FROM tokens ORDER BY name",
        )?;
        let rows = stmt.query_map([], info_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a token by name.
    pub fn revoke(&self, name: &str) -> Result<()> {
        let n = self
            .db
            .execute("UPDATE tokens SET revoked = 1 WHERE name = ?1", [name])?;
        if n == 0 {
            bail!("no token named '{name}'");
        }
        Ok(())
    }

    /// The principal a presented secret stands for, if it is valid now.
    pub fn verify(&self, secret: &str) -> Result<Option<Principal>> {
        let Some(info) = self.lookup(&hash(secret))?.filter(|i| i.usable(now())) else {
            return Ok(None);
        };
        Ok(Some(Principal {
            scope: PathScope::new(&info.paths)?,
            name: info.name,
            capabilities: info.capabilities,
        }))
    }

    fn lookup(&self, hash: &str) -> Result<Option<TokenInfo>> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT name, capabilities, paths, created, expires, revoked FROM tokens WHERE hash = ?1",
            )?
            .query_row([hash], info_from_row)
            .optional()?)
    }

    /// SQLite's `data_version`: changes when another connection commits.
    fn data_version(&self) -> Result<i64> {
        Ok(self
            .db
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }
}

/// A [`TokenStore`] with the valid tokens cached for the HTTP gateway.
///
/// A hit costs a SHA-256, `PRAGMA data_version` and a map lookup; the cache
/// is dropped whenever the table changes (a `sovryn mcp tokens revoke` or
/// `create` from another process or connection), so a revocation takes effect on the
/// next request. Expiry is checked on every call.
pub struct TokenVerifier {
    store: TokenStore,
    version: i64,
    cache: std::collections::HashMap<String, (TokenInfo, Principal)>,
}

/// Cached tokens at most (more are verified against the database each time).
const CACHE_CAP: usize = 4096;

impl TokenVerifier {
    /// Wraps an open store.
    pub fn new(store: TokenStore) -> Self {
        TokenVerifier {
            store,
            version: i64::MIN,
            cache: Default::default(),
        }
    }

    /// Whether the database answers.
    pub fn ping(&mut self) -> Result<()> {
        self.store.data_version().map(|_| ())
    }

    /// Like [`TokenStore::verify`].
    pub fn verify(&mut self, secret: &str) -> Result<Option<Principal>> {
        let v = self.store.data_version()?;
        if v != self.version {
            self.cache.clear();
            self.version = v;
        }
        let h = hash(secret);
        if let Some((info, p)) = self.cache.get(&h) {
            return Ok(info.usable(now()).then(|| p.clone()));
        }
        let Some(info) = self.store.lookup(&h)? else {
            return Ok(None);
        };
        let p = Principal {
            scope: PathScope::new(&info.paths)?,
            name: info.name.clone(),
            capabilities: info.capabilities.clone(),
        };
        let usable = info.usable(now());
        if self.cache.len() < CACHE_CAP {
            self.cache.insert(h, (info, p.clone()));
        }
        Ok(usable.then_some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenStore::open(dir.path()).unwrap();
        let secret = s
            .create("claude", &[Capability::Read], &["docs/**".into()], Some(60))
            .unwrap();
        let p = s.verify(&secret).unwrap().unwrap();
        assert_eq!(p.name, "claude");
        assert!(p.can(Capability::Read) && !p.can(Capability::Write));
        assert!(s.verify("svn_nope").unwrap().is_none());
        assert!(s.create("claude", &[Capability::Read], &[], None).is_err());
        s.revoke("claude").unwrap();
        assert!(s.verify(&secret).unwrap().is_none());
        assert!(s.revoke("nobody").is_err());
        let expired = s
            .create("old", &[Capability::Admin], &[], Some(-1))
            .unwrap();
        assert!(s.verify(&expired).unwrap().is_none());
        let list = s.list().unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|t| !t.usable(now())));
        let raw: String =
            s.db.query_row("SELECT hash FROM tokens", [], |r| r.get(0))
                .unwrap();
        assert!(!raw.contains(&secret[4..]));
    }

    #[test]
    fn the_cache_sees_revocations_from_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenStore::open(dir.path()).unwrap();
        let secret = s.create("a", &[Capability::Read], &[], None).unwrap();
        let mut v = TokenVerifier::new(TokenStore::open(dir.path()).unwrap());
        assert_eq!(v.verify(&secret).unwrap().unwrap().name, "a");
        assert_eq!(v.verify(&secret).unwrap().unwrap().name, "a");
        assert!(v.verify("svn_nope").unwrap().is_none());
        s.revoke("a").unwrap();
        assert!(v.verify(&secret).unwrap().is_none());
        let b = s.create("b", &[Capability::Write], &[], Some(-1)).unwrap();
        assert!(v.verify(&b).unwrap().is_none());
    }

    #[test]
    fn scopes_hide_what_is_outside() {
        let s = PathScope::new(&["docs/**".into(), "notes/a/*.md".into()]).unwrap();
        assert!(s.allows("docs/x.md") && s.allows("docs") && s.allows("docs/a/b"));
        assert!(!s.allows("secret.txt") && !s.allows("docsx/y"));
        assert!(s.allows("notes/a/x.md") && !s.allows("notes/a/b/x.md"));
        assert!(s.leads_into("notes") && s.leads_into("notes/a") && !s.leads_into("other"));
        assert!(PathScope::default().allows("anything"));
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert!(parse_duration("x").is_err());
    }
}
