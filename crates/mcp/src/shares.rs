//! Share links (`/s/<token>`): a path of the folder handed to whoever has
//! the link, until it expires, is revoked or has served its downloads.
//! Kept in `mcp.db` beside the tokens: the link's token only as its
//! SHA-256 (a lookup by hash is the whole check, so validation costs one
//! indexed read), an optional password only as an Argon2id hash.

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{invalid, Result};

/// Shortest password a link takes.
pub const MIN_PASSWORD: usize = 8;

/// A link as its owner sees it (never its token).
#[derive(Debug, Clone, Serialize)]
pub struct ShareInfo {
    /// Its id (what `share revoke` takes).
    pub id: String,
    /// The path it hands out, from the folder root.
    pub path: String,
    /// Who made it (a token's name, or `cli`).
    pub created_by: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it stops working (RFC 3339), if ever.
    pub expires: Option<String>,
    /// Downloads it serves at most, if limited.
    pub max_downloads: Option<u64>,
    /// Downloads served so far.
    pub downloads: u64,
    /// Whether it asks for a password.
    pub password: bool,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A link that works now, as the server uses it.
#[derive(Debug, Clone)]
pub struct Share {
    /// Its id.
    pub id: String,
    /// The path it hands out.
    pub path: String,
    /// Its password's Argon2id hash (PHC string), if it has one.
    pub password_hash: Option<String>,
}

/// What a new link is.
#[derive(Debug, Clone, Default)]
pub struct NewShare {
    /// The path (already checked: normalised, in the caller's scope).
    pub path: String,
    /// Seconds it lasts, if it expires.
    pub expires_in: Option<i64>,
    /// A password it asks for.
    pub password: Option<String>,
    /// Downloads it serves at most.
    pub max_downloads: Option<u64>,
    /// Who makes it.
    pub created_by: String,
}

/// The share links of a node (`mcp.db`).
pub struct ShareStore {
    db: Connection,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339_ms(ms: i64) -> String {
    sovryn_api::rfc3339(ms.saturating_mul(1_000_000))
}

/// An Argon2id hash (PHC string) of `password` with a fresh salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| crate::error::Error::Invalid(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| crate::error::Error::Invalid(format!("hashing the password: {e}")))
}

/// Whether `password` matches the PHC hash `phc`.
pub fn password_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Spends about the time a wrong password costs, for a request whose link
/// does not work: whether a link exists does not show in the time taken.
pub fn waste_a_password_check(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(phc) = DUMMY
        .get_or_init(|| hash_password("not a password anyone has").ok())
        .as_deref()
    {
        let _ = password_matches(phc, password);
    }
}

impl ShareStore {
    /// Opens (creating) the links table in `home`'s `mcp.db`.
    pub fn open(home: &Path) -> Result<Self> {
        Ok(ShareStore {
            db: crate::tokens::open_db(
                home,
                "CREATE TABLE IF NOT EXISTS shares(
                id TEXT PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                path TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                expires_ms INTEGER,
                password TEXT,
                max_downloads INTEGER,
                downloads INTEGER NOT NULL DEFAULT 0,
                revoked INTEGER NOT NULL DEFAULT 0
            );",
            )?,
        })
    }

    /// Makes a link; returns it and its token (shown once, never stored).
    pub fn create(&self, s: NewShare) -> Result<(ShareInfo, String)> {
        if let Some(p) = &s.password {
            if p.chars().count() < MIN_PASSWORD {
                invalid!("a link's password has at least {MIN_PASSWORD} characters");
            }
        }
        if s.expires_in.is_some_and(|e| e <= 0) {
            invalid!("a link must last at least a second");
        }
        if s.max_downloads == Some(0) {
            invalid!("a link limited to 0 downloads would never work");
        }
        let token = hex::encode(rand::random::<[u8; 24]>());
        let id = hex::encode(rand::random::<[u8; 6]>());
        let password = s.password.as_deref().map(hash_password).transpose()?;
        let t = now_ms();
        let expires = s
            .expires_in
            .map(|e| t.saturating_add(e.saturating_mul(1000)));
        self.db.execute(
            "INSERT INTO shares(id, hash, path, created_by, created_ms, expires_ms, password, max_downloads)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                hash(&token),
                s.path,
                s.created_by,
                t,
                expires,
                password,
                s.max_downloads.map(|m| m as i64)
            ],
        )?;
        let info = self
            .list()?
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| crate::error::Error::Invalid("the new link vanished".into()))?;
        Ok((info, token))
    }

    /// Every link, newest first.
    pub fn list(&self) -> Result<Vec<ShareInfo>> {
        let mut stmt = self.db.prepare(
            "SELECT id, path, created_by, created_ms, expires_ms, max_downloads, downloads,
                    password IS NOT NULL, revoked FROM shares ORDER BY created_ms DESC, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ShareInfo {
                id: r.get(0)?,
                path: r.get(1)?,
                created_by: r.get(2)?,
                created: rfc3339_ms(r.get(3)?),
                expires: r.get::<_, Option<i64>>(4)?.map(rfc3339_ms),
                max_downloads: r.get::<_, Option<i64>>(5)?.map(|m| m.max(0) as u64),
                downloads: r.get::<_, i64>(6)?.max(0) as u64,
                password: r.get(7)?,
                revoked: r.get::<_, i64>(8)? != 0,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes link `id`: it stops working at once.
    pub fn revoke(&self, id: &str) -> Result<()> {
        let n = self
            .db
            .execute("UPDATE shares SET revoked = 1 WHERE id = ?1", [id])?;
        if n == 0 {
            invalid!("no link with id '{id}' (see `sovryn share list`)");
        }
        Ok(())
    }

    /// Revokes every working link `who` made; how many.
    pub fn revoke_made_by(&self, who: &str) -> Result<usize> {
        Ok(self.db.execute(
            "UPDATE shares SET revoked = 1 WHERE created_by = ?1 AND revoked = 0",
            [who],
        )?)
    }

    /// The link `token` opens, if it works now (known, not revoked, not
    /// expired, downloads left).
    pub fn lookup(&self, token: &str) -> Result<Option<Share>> {
        Ok(self
            .db
            .query_row(
                "SELECT id, path, password FROM shares WHERE hash = ?1 AND revoked = 0
                   AND (expires_ms IS NULL OR expires_ms > ?2)
                   AND (max_downloads IS NULL OR downloads < max_downloads)",
                params![hash(token), now_ms()],
                |r| {
                    Ok(Share {
                        id: r.get(0)?,
                        path: r.get(1)?,
                        password_hash: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Counts a download of link `id`; false when it had none left (two
    /// downloads at once cannot both take the last one).
    pub fn take_download(&self, id: &str) -> Result<bool> {
        let n = self.db.execute(
            "UPDATE shares SET downloads = downloads + 1
              WHERE id = ?1 AND (max_downloads IS NULL OR downloads < max_downloads)",
            [id],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_until_revoked_expired_or_used_up() {
        let home = tempfile::tempdir().unwrap();
        let store = ShareStore::open(home.path()).unwrap();
        let (info, token) = store
            .create(NewShare {
                path: "docs/a.txt".into(),
                max_downloads: Some(2),
                created_by: "cli".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(!info.password && info.max_downloads == Some(2));
        let share = store.lookup(&token).unwrap().unwrap();
        assert_eq!(share.path, "docs/a.txt");
        assert!(store.lookup("nope").unwrap().is_none());
        assert!(store.take_download(&share.id).unwrap());
        assert!(store.take_download(&share.id).unwrap());
        assert!(!store.take_download(&share.id).unwrap());
        assert!(store.lookup(&token).unwrap().is_none(), "used up");

        let (info, token) = store
            .create(NewShare {
                path: "docs".into(),
                password: Some("correct horse".into()),
                created_by: "cli".into(),
                ..Default::default()
            })
            .unwrap();
        let share = store.lookup(&token).unwrap().unwrap();
        let phc = share.password_hash.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(password_matches(&phc, "correct horse"));
        assert!(!password_matches(&phc, "wrong horse"));
        store.revoke(&info.id).unwrap();
        assert!(store.lookup(&token).unwrap().is_none(), "revoked");
        assert!(store.revoke("nope").is_err());
        // Nothing stored names the token.
        let raw = std::fs::read(crate::tokens::db_path(home.path())).unwrap();
        assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
        assert!(store
            .create(NewShare {
                path: "x".into(),
                password: Some("short".into()),
                ..Default::default()
            })
            .is_err());
    }
}
