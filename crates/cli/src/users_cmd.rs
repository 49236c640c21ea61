//! `sovryn users add|list|passwd|remove`: the people who sign in to the
//! dashboard (`sovryn_mcp::users`), each in a workspace of their own.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use sovryn_mcp::users::UserStore;

use crate::commands::Ctx;
use crate::output;

/// What `sovryn users` does.
#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Add a user (the password from --password-file, or asked on the terminal).
    Add {
        /// The name they sign in with (a-z, 0-9, - and _).
        name: String,
        /// They see and manage the whole folder.
        #[arg(long)]
        admin: bool,
        /// The most their workspace may hold: 500M, 10G… (default: no limit).
        #[arg(long)]
        quota: Option<String>,
        /// A file holding the password (at least 8 characters).
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
    },
    /// The users, their workspaces and quotas.
    List,
    /// Set a user's password.
    Passwd {
        /// The user.
        name: String,
        /// A file holding the new password.
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
    },
    /// Remove a user (their workspace's files stay, with their history).
    Remove {
        /// The user.
        name: String,
    },
}

/// `500M`, `10G`, `1T`, `4096` (bytes) as bytes.
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a size (e.g. 500M, 10G)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        u => bail!("'{u}' is not a size unit (K, M, G, T)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s} is too large"))
}

fn password(file: Option<&std::path::Path>) -> Result<String> {
    match crate::unlock::passphrase(file, "password: ")? {
        Some(p) => Ok(p),
        None => bail!("give the password with --password-file F (no terminal to ask on)"),
    }
}

/// Runs `sovryn users ACTION`; `folders` (the global `--folder`) are
/// folders a new user sees whole besides their workspace (only `default`,
/// the folder the node's listener serves, so far).
pub fn users(ctx: &Ctx, action: UsersAction, folders: &[String]) -> Result<()> {
    if !ctx.home.exists() {
        bail!(sovryn_engine::Error::NoNode(ctx.home.dir.clone()));
    }
    let store = UserStore::open(&ctx.home.dir)?;
    match action {
        UsersAction::Add {
            name,
            admin,
            quota,
            password_file,
        } => {
            for f in folders {
                if f != sovryn_engine::folders::DEFAULT {
                    bail!(
                        "only the node's default folder is served to users so far, not '{f}' \
                         (give --admin to let them see it whole)"
                    );
                }
            }
            // Seeing the default folder whole is what an admin does.
            let admin = admin || !folders.is_empty();
            let quota = quota.as_deref().map(parse_size).transpose()?;
            let pw = password(password_file.as_deref())?;
            let u = store.add(&name, &pw, admin, quota)?;
            if ctx.json {
                return output::json(&json!({"ok": true, "user": u}));
            }
            println!(
                "user {} added: {}{}",
                u.name,
                if u.admin {
                    "admin, the whole folder".to_owned()
                } else {
                    format!("workspace /{}", u.workspace)
                },
                u.quota
                    .map(|q| format!(", quota {}", output::bytes(q)))
                    .unwrap_or_default()
            );
            Ok(())
        }
        UsersAction::List => {
            let all = store.list()?;
            if ctx.json {
                return output::json(&json!({"users": all}));
            }
            if all.is_empty() {
                println!("no users (add one with `sovryn users add NAME`)");
            }
            for u in all {
                println!(
                    "{}  {}  {}",
                    u.name,
                    if u.admin { "admin" } else { &u.workspace },
                    u.quota
                        .map(|q| format!("quota {}", output::bytes(q)))
                        .unwrap_or_else(|| "no quota".into())
                );
            }
            Ok(())
        }
        UsersAction::Passwd {
            name,
            password_file,
        } => {
            let pw = password(password_file.as_deref())?;
            store.passwd(&name, &pw)?;
            if ctx.json {
                return output::json(&json!({"ok": true, "user": name}));
            }
            println!("password of {name} set");
            Ok(())
        }
        UsersAction::Remove { name } => {
            let (tokens, links) = store.remove(&name)?;
            if ctx.json {
                return output::json(&json!({
                    "ok": true, "removed": name, "tokens_revoked": tokens, "links_revoked": links,
                }));
            }
            println!(
                "user {name} removed (their workspace's files stay); {tokens} token(s) and {links} share link(s) of theirs revoked"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("ten").is_err() && parse_size("5X").is_err());
    }
}
