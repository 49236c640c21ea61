//! People who sign in to the dashboard and the file API with a password
//! (`sovryn users add|list|passwd|remove`), kept in `mcp.db`: the password
//! only as an Argon2id hash. Each user works in a workspace of their own,
//! `workspaces/NAME` in the node's folder, and sees nothing else: what a
//! user may reach is a path scope, the same confinement a token's scope
//! gives every listing, search, share and API call. An admin sees the
//! whole folder.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{invalid, Result};
use crate::shares::{hash_password, password_matches, waste_a_password_check, MIN_PASSWORD};
use crate::tokens::{Capability, PathScope, Principal};

/// Where users' workspaces lie in the node's folder.
pub const WORKSPACES: &str = "workspaces";

/// A user as listed (never the password).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserInfo {
    /// The name they sign in with.
    pub name: String,
    /// Whether they see and manage the whole folder.
    pub admin: bool,
    /// Their workspace, from the folder root.
    pub workspace: String,
    /// Bytes their workspace may hold, if limited.
    pub quota: Option<u64>,
}

impl UserInfo {
    /// What they may do, as a principal (`user:NAME`): read and write in
    /// their workspace; an admin everything, everywhere.
    pub fn principal(&self) -> Result<Principal> {
        let (capabilities, globs) = if self.admin {
            (
                vec![
                    Capability::Read,
                    Capability::Write,
                    Capability::Status,
                    Capability::Admin,
                ],
                Vec::new(),
            )
        } else {
            (
                vec![Capability::Read, Capability::Write],
                vec![self.workspace.clone(), format!("{}/**", self.workspace)],
            )
        };
        // Never a fallback to "everything": a scope that does not parse is
        // an error.
        Ok(Principal {
            name: format!("user:{}", self.name),
            capabilities,
            scope: PathScope::new(&globs)?,
            expires: None,
        })
    }
}

/// The users of a node (`mcp.db`).
pub struct UserStore {
    db: Connection,
    /// The node's home (tokens and links of a removed user are revoked).
    home: std::path::PathBuf,
}

/// Checks a user name: 1 to 32 of `a-z`, `0-9`, `-`, `_`, starting with a
/// letter (it names a directory and appears in paths).
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        invalid!(
            "'{name}' is not a user name (1 to 32 of a-z, 0-9, - and _, starting with a letter)"
        );
    }
    Ok(())
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD {
        invalid!("a password has at least {MIN_PASSWORD} characters");
    }
    Ok(())
}

/// A row of `SELECT name, admin, quota`.
fn info_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserInfo> {
    Ok(info(r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?))
}

fn info(name: String, admin: bool, quota: Option<i64>) -> UserInfo {
    UserInfo {
        workspace: format!("{WORKSPACES}/{name}"),
        name,
        admin,
        quota: quota.map(|q| q.max(0) as u64),
    }
}

impl UserStore {
    /// Opens (creating) the users table in `home`'s `mcp.db`.
    pub fn open(home: &Path) -> Result<Self> {
        Ok(UserStore {
            home: home.to_owned(),
            db: crate::tokens::open_db(
                home,
                "CREATE TABLE IF NOT EXISTS users(
                name TEXT PRIMARY KEY,
                password TEXT NOT NULL,
                admin INTEGER NOT NULL DEFAULT 0,
                quota INTEGER,
                created INTEGER NOT NULL
            );",
            )?,
        })
    }

    /// Adds a user.
    pub fn add(
        &self,
        name: &str,
        password: &str,
        admin: bool,
        quota: Option<u64>,
    ) -> Result<UserInfo> {
        check_name(name)?;
        check_password(password)?;
        if quota == Some(0) {
            invalid!("a quota of 0 bytes would refuse every upload");
        }
        let exists: Option<String> = self
            .db
            .query_row("SELECT name FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            invalid!("a user named '{name}' exists already");
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.db.execute(
            "INSERT INTO users(name, password, admin, quota, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                name,
                hash_password(password)?,
                admin as i64,
                quota.map(|q| q.min(i64::MAX as u64) as i64),
                created
            ],
        )?;
        Ok(info(name.to_owned(), admin, quota.map(|q| q as i64)))
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<UserInfo>> {
        let mut stmt = self
            .db
            .prepare("SELECT name, admin, quota FROM users ORDER BY name")?;
        let rows = stmt.query_map([], info_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets a user's password.
    pub fn passwd(&self, name: &str, password: &str) -> Result<()> {
        check_password(password)?;
        let n = self.db.execute(
            "UPDATE users SET password = ?2 WHERE name = ?1",
            params![name, hash_password(password)?],
        )?;
        if n == 0 {
            invalid!("no user named '{name}' (see `sovryn users list`)");
        }
        Ok(())
    }

    /// Removes a user (their workspace's files stay, with their history)
    /// and revokes what they made that would outlive them: their MCP tokens
    /// (`NAME.…`) and their share links. Returns how many of each.
    pub fn remove(&self, name: &str) -> Result<(usize, usize)> {
        let n = self
            .db
            .execute("DELETE FROM users WHERE name = ?1", [name])?;
        if n == 0 {
            invalid!("no user named '{name}' (see `sovryn users list`)");
        }
        let tokens = crate::tokens::TokenStore::open(&self.home)?;
        let mut revoked_tokens = 0;
        for t in tokens.list()? {
            let theirs = t
                .name
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with('.'));
            if theirs && !t.revoked {
                tokens.revoke(&t.name)?;
                revoked_tokens += 1;
            }
        }
        let links =
            crate::shares::ShareStore::open(&self.home)?.revoke_made_by(&format!("user:{name}"))?;
        Ok((revoked_tokens, links))
    }

    /// The user `name` if `password` is theirs. An unknown name costs a
    /// password check too: the time does not tell which names exist.
    pub fn verify(&self, name: &str, password: &str) -> Result<Option<UserInfo>> {
        let row: Option<(String, bool, Option<i64>)> = self
            .db
            .query_row(
                "SELECT password, admin, quota FROM users WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            Some((phc, admin, quota)) if password_matches(&phc, password) => {
                Some(info(name.to_owned(), admin, quota))
            }
            Some(_) => None,
            None => {
                waste_a_password_check(password);
                None
            }
        })
    }

    /// The user `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<UserInfo>> {
        // One indexed row: every request of a signed-in user asks.
        Ok(self
            .db
            .query_row(
                "SELECT name, admin, quota FROM users WHERE name = ?1",
                [name],
                info_row,
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_sign_in_with_their_password_and_reach_only_their_workspace() {
        let home = tempfile::tempdir().unwrap();
        let store = UserStore::open(home.path()).unwrap();
        let ann = store
            .add("ann", "ann's long password", false, Some(1 << 20))
            .unwrap();
        store
            .add("root", "the admin's password", true, None)
            .unwrap();
        assert!(store.add("ann", "another password", false, None).is_err());
        assert!(store
            .add("Bad Name", "a long password", false, None)
            .is_err());
        assert!(store.add("bob", "short", false, None).is_err());
        assert_eq!(
            store.verify("ann", "ann's long password").unwrap(),
            Some(ann.clone())
        );
        assert_eq!(store.verify("ann", "wrong password").unwrap(), None);
        assert_eq!(store.verify("nobody", "ann's long password").unwrap(), None);
        let p = ann.principal().unwrap();
        assert!(p.scope.allows("workspaces/ann/notes.txt") && p.scope.allows("workspaces/ann"));
        assert!(!p.scope.allows("workspaces/root/x") && !p.scope.allows("workspaces/annex/x"));
        assert!(!p.can(Capability::Admin));
        let admin = store.get("root").unwrap().unwrap().principal().unwrap();
        assert!(admin.is_unscoped_admin());
        store.passwd("ann", "a new long password").unwrap();
        assert!(store
            .verify("ann", "a new long password")
            .unwrap()
            .is_some());
        assert_eq!(store.remove("ann").unwrap(), (0, 0));
        assert!(store
            .verify("ann", "a new long password")
            .unwrap()
            .is_none());
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
