//! Bearer tokens for MCP clients, kept in `mcp.db` in the node's home.
//!
//! A token is shown once when created; only its SHA-256 is stored. Each token
//! has capabilities (`read`, `write`, `admin`, `status`; `admin` implies all)
//! and optional path globs: a token with globs sees nothing outside them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{invalid as bail, Error, Result, WithContext};
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

/// One component of a scope glob.
#[derive(Debug, Clone)]
enum Part {
    /// `**`: any number of whole components, none included.
    Any,
    /// A name without wildcards, compared as is.
    Literal(String),
    /// A lone `*`: any one (non-empty) component.
    Star,
    /// A glob on one component (`*.md`, `v?`, `[ab]*`). Matched against a
    /// single component, which never holds a `/`: a `*` cannot cross one.
    Glob(globset::GlobMatcher),
}

impl Part {
    fn parse(comp: &str, whole: &str) -> Result<Self> {
        if comp == "**" {
            return Ok(Part::Any);
        }
        if comp == "*" {
            return Ok(Part::Star);
        }
        if !comp.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            return Ok(Part::Literal(comp.to_owned()));
        }
        let glob = globset::GlobBuilder::new(comp)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                Error::Invalid(format!(
                    "bad path glob '{whole}': {e} ('*' matches within one path component, '**' alone spans components)"
                ))
            })?;
        Ok(Part::Glob(glob.compile_matcher()))
    }

    fn matches(&self, comp: &str) -> bool {
        match self {
            Part::Any | Part::Star => !comp.is_empty(),
            Part::Literal(l) => l == comp,
            Part::Glob(g) => g.is_match(comp),
        }
    }
}

/// A scope glob split into components.
#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<Part>,
}

/// Most components a scope glob may have.
const MAX_GLOB_PARTS: usize = 64;

impl Pattern {
    /// The pattern positions reachable after `path`'s components, or `None`
    /// when none is. Positions are indexes into `parts` (`parts.len()`: all
    /// matched); a `**` may match no component, so it is skipped for free.
    fn run(&self, path: &str) -> Option<Vec<bool>> {
        let n = self.parts.len();
        let mut cur = vec![false; n + 1];
        cur[0] = true;
        self.close(&mut cur);
        let mut next = vec![false; n + 1];
        for comp in path.split('/') {
            next.iter_mut().for_each(|x| *x = false);
            let mut any = false;
            for i in (0..n).filter(|&i| cur[i]) {
                match &self.parts[i] {
                    Part::Any if !comp.is_empty() => {
                        next[i] = true;
                        any = true;
                    }
                    p if !matches!(p, Part::Any) && p.matches(comp) => {
                        next[i + 1] = true;
                        any = true;
                    }
                    _ => {}
                }
            }
            if !any {
                return None;
            }
            self.close(&mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        Some(cur)
    }

    /// Adds the positions after each reachable `**` (it may match nothing).
    fn close(&self, states: &mut [bool]) {
        for i in 0..self.parts.len() {
            if states[i] && matches!(self.parts[i], Part::Any) {
                states[i + 1] = true;
            }
        }
    }

    /// Whether `path` matches the whole pattern. `docs/**` matches `docs`
    /// itself (the root of the subtree it grants) and everything below.
    fn matches(&self, path: &str) -> bool {
        self.run(path).is_some_and(|s| s[self.parts.len()])
    }

    /// Whether something strictly below the directory `path` can match.
    fn below(&self, path: &str) -> bool {
        self.run(path)
            .is_some_and(|s| s[..self.parts.len()].iter().any(|x| *x))
    }
}

/// Path globs limiting what a token sees. No globs: the whole folder.
///
/// A glob is matched component by component: `*`, `?` and classes stay
/// within one path component, and only a `**` component spans several
/// (`docs/**` is `docs` and everything below it). A path matching a glob
/// does not bring what lies below it: a `notes/*.md` token may use
/// `notes/y.md` but not `notes/y.md/secret.txt`. Directories on the way
/// to a glob (`notes` for `notes/*.md`) are [`PathScope::leads_into`]:
/// listable, showing only what leads into the scope.
#[derive(Debug, Clone, Default)]
pub struct PathScope {
    globs: Vec<String>,
    /// `None`: everything.
    patterns: Option<Vec<Pattern>>,
}

impl PathScope {
    /// A scope from globs (`docs/**`, `notes/*.md`); empty means everything.
    pub fn new(globs: &[String]) -> Result<Self> {
        if globs.is_empty() {
            return Ok(Self::default());
        }
        let mut patterns = Vec::new();
        let mut clean = Vec::new();
        for g in globs {
            let g = g.trim().trim_start_matches("./").trim_start_matches('/');
            // Empty and `.` components say nothing (`docs//a`, `docs/./a`).
            let comps: Vec<&str> = g
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            if comps.is_empty() || comps.contains(&"..") || g.contains('\0') {
                bail!("bad path glob '{g}'");
            }
            if comps.len() > MAX_GLOB_PARTS {
                bail!("path glob '{g}' has more than {MAX_GLOB_PARTS} components");
            }
            let mut parts = comps
                .iter()
                .map(|c| Part::parse(c, g))
                .collect::<Result<Vec<_>>>()?;
            // A plain path (no wildcard at all) names that file or that
            // directory with everything in it, as `--paths docs` reads; only
            // a wildcard's matches stay without their subtrees.
            if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
                parts.push(Part::Any);
            }
            patterns.push(Pattern { parts });
            clean.push(g.to_owned());
        }
        Ok(PathScope {
            globs: clean,
            patterns: Some(patterns),
        })
    }

    /// The globs, as given.
    pub fn globs(&self) -> &[String] {
        &self.globs
    }

    /// Whether the scope is the whole folder.
    pub fn is_all(&self) -> bool {
        self.patterns.is_none()
    }

    /// Whether `rel` itself lies in the scope (matches one of its globs).
    pub fn allows(&self, rel: &str) -> bool {
        let Some(patterns) = &self.patterns else {
            return true;
        };
        !rel.is_empty() && patterns.iter().any(|p| p.matches(rel))
    }

    /// Whether `rel` is a directory on the way to something in the scope
    /// (listable, showing only what leads into the scope).
    pub fn leads_into(&self, rel: &str) -> bool {
        let Some(patterns) = &self.patterns else {
            return true;
        };
        rel.is_empty() || patterns.iter().any(|p| p.below(rel))
    }

    /// Whether `rel` may appear in a listing (allowed, or leading into the scope).
    pub fn visible(&self, rel: &str) -> bool {
        self.allows(rel) || self.leads_into(rel)
    }

    /// Whether everything `other` covers is covered by this scope too, as
    /// far as the globs tell (conservative: `false` when unsure). A scope
    /// covers another when it is the whole folder, or when each of the
    /// other's globs is one of its own or lies under one of its
    /// `literal/prefix/**` globs.
    pub fn covers(&self, other: &PathScope) -> bool {
        if self.is_all() {
            return true;
        }
        if other.is_all() {
            return false;
        }
        other.globs.iter().all(|g| {
            self.globs.iter().any(|mine| {
                if mine == g {
                    return true;
                }
                let wild = |t: &str| t.contains(['*', '?', '[', ']', '{', '}', '\\']);
                // `base/**`, or a plain path (which brings its subtree).
                let base = match mine.strip_suffix("/**") {
                    Some(b) => b,
                    None if mine == "**" => return true,
                    None if !wild(mine) => mine.as_str(),
                    None => return false,
                };
                !wild(base) && (g == base || g.starts_with(&format!("{base}/")))
            })
        })
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
    /// When its credential stops being valid (seconds since the epoch);
    /// `None`: never (it can still be revoked).
    pub expires: Option<i64>,
}

impl Principal {
    /// The local user running `sovryn mcp serve --stdio`: everything.
    pub fn stdio() -> Self {
        Principal {
            name: "stdio".into(),
            capabilities: vec![Capability::Admin],
            scope: PathScope::default(),
            expires: None,
        }
    }

    /// Whether it holds `admin` over the whole folder. Peer and token
    /// administration need that: a peer or a token is not confined to a
    /// token's path scope, so a scoped admin could otherwise hand out
    /// what it cannot reach itself.
    pub fn is_unscoped_admin(&self) -> bool {
        self.can(Capability::Admin) && self.scope.is_all()
    }

    /// Whether it may grant `caps` over `scope` to someone else: it must
    /// hold every one of them, over at least that scope. Any tool that
    /// grants rights checks this, so a token never hands out more than it has.
    pub fn may_grant(&self, caps: &[Capability], scope: &PathScope) -> bool {
        caps.iter().all(|c| self.can(*c)) && self.scope.covers(scope)
    }

    /// The actor recorded with versions this principal makes: `mcp:` and
    /// the token's name, or a signed-in user's `user:NAME` as it is.
    pub fn actor(&self) -> String {
        if self.name.starts_with("user:") {
            self.name.clone()
        } else {
            format!("mcp:{}", self.name)
        }
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

/// Opens (creating) `mcp.db` in `home` (mode 0600, WAL, a 5 s busy
/// timeout) and makes sure `schema` (`CREATE TABLE IF NOT EXISTS …`) is
/// there: the tokens, share links and users each keep a table of it.
pub(crate) fn open_db(home: &Path, schema: &str) -> Result<Connection> {
    let path = db_path(home);
    let db = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.execute_batch(schema)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(db)
}

/// The token file of a home.
pub fn db_path(home: &Path) -> PathBuf {
    home.join("mcp.db")
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A short, non-reversible tag of a presented credential for logs
/// (`sha256:` and 8 hex digits of its hash, the start of what `mcp.db`
/// stores for a real token): enough to tell attempts apart, useless to
/// replay.
pub fn fingerprint(secret: &str) -> String {
    let h = hash(secret);
    format!("sha256:{}", &h[..8])
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
        Ok(TokenStore {
            db: open_db(
                home,
                "CREATE TABLE IF NOT EXISTS tokens(
                name TEXT PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                capabilities TEXT NOT NULL,
                paths TEXT NOT NULL,
                created INTEGER NOT NULL,
                expires INTEGER,
                revoked INTEGER NOT NULL DEFAULT 0
            );",
            )?,
        })
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
            expires: info.expires,
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
    pub(crate) fn data_version(&self) -> Result<i64> {
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
            expires: info.expires,
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

    fn scope(globs: &[&str]) -> PathScope {
        PathScope::new(&globs.iter().map(|g| g.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_star_stays_in_its_component_and_brings_no_subtree() {
        // The review's cases: a file-name glob and a directory glob.
        let md = scope(&["notes/*.md"]);
        assert!(md.allows("notes/y.md"));
        assert!(!md.allows("notes/y.md/secret.txt"));
        assert!(!md.allows("notes/new.md/any/thing.sh"));
        assert!(!md.visible("notes/y.md/secret.txt"));
        assert!(!md.leads_into("notes/y.md"));
        assert!(md.leads_into("notes") && !md.allows("notes"));
        let dir = scope(&["docs/*"]);
        assert!(dir.allows("docs/sub") && dir.allows("docs/a.md"));
        for p in ["docs/sub/deep", "docs/sub/deep/x.txt", "docs/sub/x"] {
            assert!(!dir.allows(p) && !dir.visible(p), "{p}");
        }
        // `**` is the only way to a subtree, and includes its root.
        let tree = scope(&["docs/**"]);
        assert!(tree.allows("docs") && tree.allows("docs/sub/deep/x.txt"));
        assert!(!tree.allows("docsx") && !tree.allows("other/docs/x"));
        let mid = scope(&["src/**/*.rs"]);
        assert!(mid.allows("src/lib.rs") && mid.allows("src/a/b/c.rs"));
        assert!(!mid.allows("src/a") && mid.leads_into("src/a") && mid.leads_into("src"));
        assert!(!mid.allows("src/a.rs/x"));
        let any = scope(&["**/*.md"]);
        assert!(any.allows("a.md") && any.allows("x/y/z.md") && !any.allows("x/y.md/z"));
        assert!(any.leads_into("x") && !any.allows("x"));
        let q = scope(&["v?/[ab]*.txt", "{x,y}/*"]);
        assert!(q.allows("v1/a1.txt") && !q.allows("v12/a.txt") && !q.allows("v1/c.txt"));
        assert!(q.allows("x/1") && q.allows("y/2") && !q.allows("z/1") && !q.allows("x/1/2"));
        // A plain path is that file or directory with its subtree.
        let lit = scope(&["docs"]);
        assert!(lit.allows("docs") && lit.allows("docs/a/b") && !lit.allows("docsx"));
        // Bad globs are refused, not widened.
        for bad in ["", "/", "..", "a/../b", "{a,b/c}", "a/[b"] {
            assert!(
                PathScope::new(&[bad.to_string()]).is_err(),
                "{bad} should be refused"
            );
        }
        // Redundant separators are harmless.
        assert!(scope(&["./docs//*.md"]).allows("docs/a.md"));
    }

    #[test]
    fn a_scoped_admin_grants_no_more_than_it_has() {
        let p = |globs: &[&str], caps: &[Capability]| Principal {
            name: "t".into(),
            capabilities: caps.to_vec(),
            scope: scope(globs),
            expires: None,
        };
        let full = Principal::stdio();
        assert!(full.is_unscoped_admin());
        let docs_admin = p(&["docs/**"], &[Capability::Admin]);
        assert!(!docs_admin.is_unscoped_admin());
        let rw = [Capability::Read, Capability::Write];
        assert!(full.may_grant(&rw, &PathScope::default()));
        assert!(!docs_admin.may_grant(&rw, &PathScope::default()));
        assert!(docs_admin.may_grant(&rw, &scope(&["docs/**"])));
        assert!(docs_admin.may_grant(&rw, &scope(&["docs/a/**", "docs/x.md"])));
        assert!(!docs_admin.may_grant(&rw, &scope(&["docsx/**"])));
        assert!(!docs_admin.may_grant(&rw, &scope(&["*/**"])));
        let reader = p(&[], &[Capability::Read]);
        assert!(reader.may_grant(&[Capability::Read], &PathScope::default()));
        assert!(!reader.may_grant(&rw, &PathScope::default()));
        let star = p(&["docs/*"], &[Capability::Admin]);
        assert!(!star.may_grant(&rw, &scope(&["docs/a/**"])));
    }

    mod fuzz {
        use super::super::PathScope;
        use proptest::prelude::*;

        /// Path components: plain names, dots, and glob characters.
        fn component() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-c]{1,3}",
                "[a-c.]{1,4}",
                Just("*".to_string()),
                Just("**".to_string()),
                "[a-c]?\\*[a-c.]{0,2}",
                "[a-c*?\\[\\]!{},\\\\.-]{1,5}",
            ]
        }

        fn glob() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::collection::vec(component(), 1..5).prop_map(|c| c.join("/")),
                // Anything at all, slashes and NULs included.
                "\\PC{0,12}",
            ]
        }

        /// Normalised paths (no empty, `.` or `..` components), with glob
        /// characters in names too.
        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec("[a-c*?][a-c.*?]{0,2}", 1..6).prop_map(|c| c.join("/"))
        }

        /// The reference for globs of literal and `*` components only.
        fn naive(glob: &str, path: &str) -> bool {
            let (g, p): (Vec<&str>, Vec<&str>) =
                (glob.split('/').collect(), path.split('/').collect());
            if !g.contains(&"*") {
                // A plain path: itself and its subtree.
                return p.len() >= g.len() && g.iter().zip(&p).all(|(g, p)| g == p);
            }
            g.len() == p.len() && g.iter().zip(&p).all(|(g, p)| *g == "*" || g == p)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn never_panics_and_a_star_never_crosses_a_slash(g in glob(), paths in prop::collection::vec(path(), 1..6)) {
                let Ok(s) = PathScope::new(std::slice::from_ref(&g)) else {
                    return Ok(());
                };
                let comps: Vec<&str> = g.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
                // A plain path (no wildcard) brings its subtree, like `path/**`.
                let has_any = comps.contains(&"**")
                    || comps.iter().all(|c| !c.contains(['*', '?', '[', ']', '{', '}', '\\']));
                for p in &paths {
                    let allowed = s.allows(p);
                    let _ = s.leads_into(p);
                    let _ = s.visible(p);
                    if !has_any {
                        // Without `**`, a match has exactly the glob's components:
                        // no `*`, `?` or class ever matched a `/`.
                        if allowed {
                            prop_assert_eq!(p.split('/').count(), comps.len(), "{} matched {}", g, p);
                            // And nothing below a match is in the scope.
                            let below = format!("{p}/x");
                            prop_assert!(!s.allows(&below), "{} allowed {}", g, below);
                            prop_assert!(!s.visible(&below), "{} shows {}", g, below);
                        }
                    }
                }
            }

            #[test]
            fn literal_and_star_globs_match_like_the_reference(
                comps in prop::collection::vec(prop_oneof!["[a-c]{1,2}", Just("*".to_string())], 1..4),
                paths in prop::collection::vec(prop::collection::vec("[a-c]{1,2}", 1..5).prop_map(|c| c.join("/")), 1..8),
            ) {
                let g = comps.join("/");
                let s = PathScope::new(std::slice::from_ref(&g)).unwrap();
                for p in &paths {
                    prop_assert_eq!(s.allows(p), naive(&g, p), "{} on {}", g, p);
                }
            }
        }
    }
}
