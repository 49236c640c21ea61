//! `sovryn share create|list|revoke`: share links to a path of the node's
//! folder, served by the node's HTTP listener at `/s/<token>`
//! (`sovryn_mcp::shares`).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use sovryn_mcp::shares::{NewShare, ShareStore};

use crate::commands::Ctx;
use crate::output;

/// What `sovryn share` does.
#[derive(Debug, Subcommand)]
pub enum ShareAction {
    /// Make a link to a file or directory; prints its URL (shown once).
    Create {
        /// The file or directory (relative to the current directory).
        path: String,
        /// How long it works: 30m, 24h, 7d… (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
        /// A file holding the password the link asks for (at least 8 characters).
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        /// Downloads it serves at most.
        #[arg(long)]
        max_downloads: Option<u64>,
    },
    /// The links made, and how much each was used.
    List,
    /// Stop a link working, by its id.
    Revoke {
        /// Its id (`sovryn share list`).
        id: String,
    },
}

/// Where the node's listener answers, as a link names it.
fn base_url(ctx: &Ctx) -> Result<String> {
    let mcp = sovryn_engine::Config::load(&ctx.home)?.mcp;
    let host = match mcp.bind.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_owned(),
        b if b.contains(':') => format!("[{b}]"),
        b => b.to_owned(),
    };
    let scheme = if mcp.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{host}:{}", mcp.port))
}

/// Runs `sovryn share ACTION`.
pub fn share(ctx: &Ctx, action: ShareAction) -> Result<()> {
    if !ctx.home.exists() {
        bail!(sovryn_engine::Error::NoNode(ctx.home.dir.clone()));
    }
    let store = ShareStore::open(&ctx.home.dir)?;
    match action {
        ShareAction::Create {
            path,
            expires,
            password_file,
            max_downloads,
        } => {
            let rel = ctx.resolve(&path)?;
            // It must be there: a link to nothing helps nobody.
            ctx.ask(sovryn_api::Query::List { path: rel.clone() })
                .with_context(|| format!("{path} is not in the folder"))?;
            let password = password_file
                .map(|f| {
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                })
                .transpose()?;
            let expires_in = expires
                .as_deref()
                .map(sovryn_mcp::tokens::parse_duration)
                .transpose()?;
            let (info, token) = store.create(NewShare {
                path: rel,
                expires_in,
                password,
                max_downloads,
                created_by: "cli".into(),
            })?;
            let url = format!("{}/s/{token}", base_url(ctx)?);
            if ctx.json {
                return output::json(&json!({
                    "url": url, "id": info.id, "expires": info.expires, "share": info,
                }));
            }
            println!("{url}");
            eprintln!(
                "link {} to /{}{}{}; the URL is shown only this once",
                info.id,
                info.path,
                info.expires
                    .as_deref()
                    .map(|e| format!(", until {e}"))
                    .unwrap_or_default(),
                if info.password {
                    ", with a password"
                } else {
                    ""
                }
            );
            Ok(())
        }
        ShareAction::List => {
            let all = store.list()?;
            if ctx.json {
                return output::json(&json!({ "shares": all }));
            }
            if all.is_empty() {
                println!("no links (make one with `sovryn share create PATH`)");
            }
            for s in all {
                let state = if s.revoked {
                    "revoked".to_owned()
                } else {
                    s.expires
                        .as_deref()
                        .map(|e| format!("until {e}"))
                        .unwrap_or_else(|| "no expiry".into())
                };
                let uses = match s.max_downloads {
                    Some(m) => format!("{}/{m} downloads", s.downloads),
                    None => format!("{} downloads", s.downloads),
                };
                println!(
                    "{}  /{}  {state}  {uses}{}",
                    s.id,
                    s.path,
                    if s.password { "  password" } else { "" }
                );
            }
            Ok(())
        }
        ShareAction::Revoke { id } => {
            store.revoke(&id)?;
            if ctx.json {
                return output::json(&json!({"ok": true, "revoked": id}));
            }
            println!("revoked link {id}");
            Ok(())
        }
    }
}
