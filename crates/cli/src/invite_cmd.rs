//! `sovryn invite` (on a member, through its running node) and `sovryn
//! join CODE` (on the new device, which needs no running node yet).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sovryn_daemon::control::{self, Request};
use sovryn_daemon::invites::Bundle;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::folders::{self, FolderName};
use sovryn_engine::identity::SecretKey;
use sovryn_engine::Config;
use sovryn_net::invite::{self, InviteCode};
use sovryn_store::MasterKey;

use crate::commands::Ctx;
use crate::output;

/// `sovryn invite`: opens an invite on the running node, prints its code
/// and, on a terminal, waits for the device to join.
pub fn invite(
    ctx: &Ctx,
    folders: Vec<String>,
    read_only: bool,
    backup: bool,
    expires: &str,
) -> Result<()> {
    let ttl = humantime::parse_duration(expires)
        .with_context(|| format!("--expires {expires}: give a duration such as 15m or 2h"))?;
    let answer = control::request(
        &ctx.home,
        &Request::Invite {
            folders,
            read_only,
            ttl_secs: ttl.as_secs().max(1),
            backup,
        },
    )?
    .with_context(|| {
        format!(
            "no node is running in {}: start it with `sovryn up`, then invite (the node \
             answers the new device)",
            ctx.home.dir.display()
        )
    })?;
    if answer["ok"] != true {
        bail!(
            "{}",
            answer["error"].as_str().unwrap_or("the invite was refused")
        );
    }
    if ctx.json {
        return output::json(&answer);
    }
    let code = answer["code"].as_str().unwrap_or_default();
    if backup {
        println!(
            "On the backup machine, run:\n\n    sovryn join {code} --backup --home DIR --listen HOST:PORT\n"
        );
    } else {
        println!("On the new device, run:\n\n    sovryn join {code} --storage-path DIR\n");
    }
    if std::io::stdout().is_terminal() {
        if let Ok(qr) = qrcode::QrCode::new(code.as_bytes()) {
            println!(
                "{}",
                qr.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            );
        }
    }
    let folders: Vec<&str> = answer["folders"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    println!(
        "It grants {}{}, works once and expires in {}.",
        folders.join(", "),
        if read_only { " (read-only)" } else { "" },
        humantime::format_duration(ttl)
    );
    let id = answer["invite"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + ttl;
    println!("Waiting for the device (Ctrl-C stops waiting; the invite stays open)...");
    while Instant::now() < deadline {
        let status = control::request(
            &ctx.home,
            &Request::InviteStatus {
                invite: id.clone(),
                wait_ms: 30_000,
            },
        )?
        .context("the node stopped; the invite is gone with it")?;
        let outcome = &status["outcome"];
        match outcome["state"].as_str() {
            Some("joined") => {
                println!(
                    "'{}' joined ({}).\nConfirmation: {}  (the new device shows the same)",
                    outcome["name"].as_str().unwrap_or("?"),
                    outcome["device"].as_str().unwrap_or("?"),
                    outcome["confirmation"].as_str().unwrap_or("?"),
                );
                return Ok(());
            }
            Some("failed") => bail!(
                "the invite failed: {}",
                outcome["reason"].as_str().unwrap_or("no reason given")
            ),
            _ => {}
        }
    }
    bail!("the invite expired unused")
}

/// `sovryn devices ...`.
#[derive(clap::Subcommand, Debug)]
pub enum DevicesAction {
    /// Devices that asked to sync without being listed (each once).
    Pending,
    /// Let a pending device sync the folders it asked for (it must still
    /// hold their keys).
    Approve {
        /// Its id.
        id: String,
        /// Take no changes from it.
        #[arg(long)]
        read_only: bool,
    },
    /// Refuse a device without a word from now on (until the node restarts).
    Deny {
        /// Its id.
        id: String,
    },
    /// Remove a device from every folder, on every member: the signed
    /// device list carries the revocation, and no member takes it back.
    Revoke {
        /// Its id.
        id: String,
    },
    /// The default folder's devices: configured peers, who vouched for each, revoked ones.
    List,
}

/// `sovryn devices ...` on the running node.
pub fn devices(ctx: &Ctx, action: DevicesAction) -> Result<()> {
    let request = match &action {
        DevicesAction::Revoke { id } => return revoke(ctx, id),
        DevicesAction::List => Request::DevicesList,
        DevicesAction::Pending => Request::DevicesPending,
        DevicesAction::Approve { id, read_only } => Request::DevicesApprove {
            id: id.clone(),
            read_only: *read_only,
        },
        DevicesAction::Deny { id } => Request::DevicesDeny { id: id.clone() },
    };
    let answer = control::request(&ctx.home, &request)?.with_context(|| {
        format!(
            "no node is running in {}: pending devices are what a running node saw",
            ctx.home.dir.display()
        )
    })?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("refused"));
    }
    if ctx.json {
        return output::json(&answer);
    }
    match action {
        DevicesAction::Pending => {
            let pending = answer["pending"].as_array().cloned().unwrap_or_default();
            if pending.is_empty() {
                println!("no device is waiting");
            }
            for p in pending {
                println!(
                    "{}  {} attempt(s), last {}",
                    p["id"].as_str().unwrap_or("?"),
                    p["attempts"],
                    crate::output::time(
                        p["last_seen"]
                            .as_i64()
                            .unwrap_or(0)
                            .saturating_mul(1_000_000_000)
                    ),
                );
            }
        }
        DevicesAction::Approve { id, .. } => println!("approved {id}"),
        DevicesAction::Deny { id } => println!("denied {id}"),
        DevicesAction::List => {
            for d in answer["devices"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}  {}{}  vouched for by {}",
                    d["id"].as_str().unwrap_or("?"),
                    d["name"].as_str().unwrap_or("-"),
                    if d["read_only"] == true {
                        " (read-only)"
                    } else {
                        ""
                    },
                    d["vouched_by"].as_array().map_or(0, |v| v.len()),
                );
            }
            for b in answer["backups"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}  {}  backup node (no key)",
                    b["id"].as_str().unwrap_or("?"),
                    b["name"].as_str().unwrap_or("-"),
                );
            }
            for r in answer["revoked"].as_array().cloned().unwrap_or_default() {
                println!("{}  revoked", r.as_str().unwrap_or("?"));
            }
        }
        DevicesAction::Revoke { .. } => {}
    }
    Ok(())
}

/// Revokes `id` in every folder of the node (each folder's running
/// service signs the revocation into its list).
fn revoke(ctx: &Ctx, id: &str) -> Result<()> {
    let mut done = Vec::new();
    for f in folders::list(&ctx.home)? {
        let answer = control::request(&f.home, &Request::DevicesRevoke { id: id.to_owned() })?
            .with_context(|| {
                format!(
                    "folder {} is not running: start the node (`sovryn up`), then revoke",
                    f.name.as_str()
                )
            })?;
        if answer["ok"] != true {
            bail!(
                "folder {}: {}",
                f.name.as_str(),
                answer["error"].as_str().unwrap_or("refused")
            );
        }
        done.push(f.name.as_str().to_owned());
    }
    if ctx.json {
        return output::json(&json!({"ok": true, "revoked": id, "folders": done}));
    }
    println!("revoked {id} in {}", done.join(", "));
    Ok(())
}

/// `sovryn join CODE`: creates this node, proves the code to the inviter
/// and takes the folders and keys it grants. Nothing is written unless
/// the inviter accepted.
pub fn join(
    ctx: &Ctx,
    code: &str,
    node: crate::new_node::NodeArgs,
    passphrase: Option<String>,
) -> Result<()> {
    let code = InviteCode::parse(code)?;
    if ctx.home.exists() {
        return join_existing(ctx, &code, node.storage()?);
    }
    // What would make the node's creation fail is checked before the code
    // is spent on the inviter.
    node.check(ctx)?;
    let addrs: Vec<SocketAddr> = node
        .listen
        .as_deref()
        .and_then(|l| l.parse::<SocketAddr>().ok())
        .filter(|a| !a.ip().is_unspecified())
        .into_iter()
        .collect();
    let secret = SecretKey::generate();
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let joined = runtime.block_on(invite::join_as(secret.clone(), &code, &node.name(), addrs))?;
    if joined.bundle.get("backup").and_then(|b| b.as_bool()) == Some(true) {
        bail!("this code invites a backup node; the inviter now pushes to this machine: run `sovryn remotes remove backup-…` there, and join with a member's code");
    }
    let bundle: Bundle = serde_json::from_value(joined.bundle)
        .context("the inviter sent a bundle this version does not read")?;
    let keys = granted_keys(&bundle)?;
    let inviter = inviter_peer(&joined.inviter, &code, &bundle)?;
    let created = node.create(ctx, passphrase, secret, keys, Some(inviter))?;
    // The inviter is reached through its relay: so is this node.
    if let Some(relay) = &code.relay {
        for f in &created.folders {
            Config::update(&f.home, |c| {
                c.sync.relay_url = relay.clone();
                Ok(())
            })?;
        }
    }
    let took = started.elapsed();
    if ctx.json {
        return output::json(&json!({
            "node_id": created.node_id.to_string(),
            "inviter": joined.inviter.to_string(),
            "confirmation": joined.confirmation,
            "folders": created.folders.iter().map(|f| json!({"name": f.name, "storage_path": f.path})).collect::<Vec<_>>(),
            "recovery_code": created.recovery_code,
            "seconds": took.as_secs_f64(),
        }));
    }
    println!(
        "Joined {} ({}) in {:.1} s.\nConfirmation: {}  (the inviting side shows the same)",
        bundle.inviter.name.as_deref().unwrap_or("the inviter"),
        joined.inviter.fmt_short(),
        took.as_secs_f64(),
        joined.confirmation
    );
    for f in &created.folders {
        println!("  folder {}: {}", f.name, f.path.display());
    }
    if let Some(code) = &created.recovery_code {
        println!("\nRECOVERY CODE (shown once; it opens the key if you forget the passphrase):\n\n    {code}\n");
    }
    println!("Start syncing with: sovryn up");
    Ok(())
}

/// The inviter as this node's peer: where the code says it listens.
/// The folders a bundle grants, with their keys.
fn granted_keys(bundle: &Bundle) -> Result<Vec<(FolderName, MasterKey)>> {
    bundle
        .folders
        .iter()
        .map(|f| {
            Ok((
                FolderName::parse(&f.name)?,
                MasterKey::from_hex(&f.key).context("the inviter sent a bad folder key")?,
            ))
        })
        .collect()
}

fn inviter_peer(
    inviter: &sovryn_engine::identity::PublicKey,
    code: &InviteCode,
    bundle: &Bundle,
) -> Result<PeerConfig> {
    Ok(PeerConfig::checked(
        inviter,
        code.addrs.iter().map(|a| a.to_string()).collect(),
        bundle.inviter.name.clone(),
        false,
        &[],
    )?)
}

/// `join` on a node that exists: the granted folders are added to it as
/// folders of their own (the inviter's default folder under the
/// inviter's name), the first at `storage_path`, the others beside it.
fn join_existing(ctx: &Ctx, code: &InviteCode, storage_path: &std::path::Path) -> Result<()> {
    let home = &ctx.home;
    // Everything that needs the user (the node's passphrase) or could be
    // refused here is done before the code is spent.
    let node_key = crate::unlock::master_key(home, ctx.passphrase_file.as_deref())?;
    let secret = sovryn_engine::identity::load(&home.identity())?;
    let node_id = secret.public();
    let config = Config::load(home)?;
    if std::path::absolute(storage_path)?.starts_with(std::path::absolute(&home.dir)?) {
        bail!("the storage path must not lie inside the node's home");
    }
    let addrs: Vec<SocketAddr> = config
        .listen
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| !a.ip().is_unspecified())
        .into_iter()
        .collect();
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let joined = runtime.block_on(invite::join_as(secret, code, &config.node_name, addrs))?;
    let bundle: Bundle = serde_json::from_value(joined.bundle)
        .context("the inviter sent a bundle this version does not read")?;
    let inviter = inviter_peer(&joined.inviter, code, &bundle)?;
    let mut placed = Vec::new();
    for (i, (granted, key)) in granted_keys(&bundle)?.into_iter().enumerate() {
        let name = if granted.is_default() {
            folder_name_for(bundle.inviter.name.as_deref())
        } else {
            granted
        };
        if folders::find(home, name.as_str()).is_ok() {
            bail!(
                "this node already has a folder named {}; the invite is spent: remove or rename \
                 that folder, then ask for a new one",
                name.as_str()
            );
        }
        let path = if i == 0 {
            storage_path.to_path_buf()
        } else {
            crate::new_node::beside(storage_path, name.as_str())
        };
        let made = folders::create(home, &name, &path, &node_key, Some(key))?;
        let fhome = folders::folder_home(home, &name);
        let peer = inviter.clone();
        let relay = code.relay.clone();
        Config::update(&fhome, |c| {
            c.upsert_peer(peer);
            if let Some(r) = relay {
                c.sync.relay_url = r;
            }
            Ok(())
        })?;
        // A running node serves it at once.
        let _ = control::request(
            home,
            &Request::OpenFolder {
                name: name.to_string(),
            },
        );
        placed.push((name.as_str().to_owned(), made.storage_path));
    }
    if ctx.json {
        return output::json(&json!({
            "node_id": node_id.to_string(),
            "inviter": joined.inviter.to_string(),
            "confirmation": joined.confirmation,
            "folders": placed.iter().map(|(n, p)| json!({"name": n, "storage_path": p})).collect::<Vec<_>>(),
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    println!(
        "Joined {} ({}).\nConfirmation: {}  (the inviting side shows the same)",
        bundle.inviter.name.as_deref().unwrap_or("the inviter"),
        joined.inviter.fmt_short(),
        joined.confirmation
    );
    for (n, p) in &placed {
        println!("  new folder {n}: {}", p.display());
    }
    Ok(())
}

/// A folder name from the inviter's node name (its default folder, seen
/// from a node that has a default folder of its own).
fn folder_name_for(inviter: Option<&str>) -> FolderName {
    let cleaned: String = inviter
        .unwrap_or("shared")
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    FolderName::parse(&cleaned)
        .ok()
        .filter(|n| !n.is_default())
        .unwrap_or_else(|| {
            FolderName::parse("shared").unwrap_or_else(|_| FolderName::default_folder())
        })
}
