//! A backup node: `sovryn join CODE --backup --home DIR --listen ADDR`
//! makes one from an `invite --backup` code, `sovryn up` runs it. It has
//! an identity, the members that may write to it (the inviter), and the
//! sealed objects they push (`HOME/objects`); no key, no storage path.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sovryn_engine::identity::SecretKey;
use sovryn_engine::Home;
use sovryn_net::backup::BackupServer;
use sovryn_net::invite::{self, InviteCode};

use crate::commands::Ctx;
use crate::new_node::NodeArgs;
use crate::output;

const BACKUP_FILE: &str = "backup.json";
const DEFAULT_LISTEN: &str = "0.0.0.0:7777";

/// A backup node's settings (`HOME/backup.json`).
#[derive(Debug, Serialize, Deserialize)]
struct BackupConfig {
    /// Its name.
    name: String,
    /// Where it listens.
    listen: String,
    /// The members that may write (endpoint ids).
    members: Vec<String>,
}

/// Whether `home` is a backup node's.
pub fn is_backup_home(home: &Home) -> bool {
    home.dir.join(BACKUP_FILE).exists()
}

/// `sovryn join CODE --backup`: becomes a backup node of the inviter.
pub fn join(ctx: &Ctx, code: &str, node: &NodeArgs) -> Result<()> {
    let code = InviteCode::parse(code)?;
    if ctx.home.exists() || is_backup_home(&ctx.home) {
        bail!(
            "a node is already initialised in {}; a backup node needs a home of its own (--home DIR)",
            ctx.home.dir.display()
        );
    }
    if node.storage_path.is_some() {
        bail!("a backup node keeps no files: drop --storage-path");
    }
    let listen = node.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.into());
    let sock: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen}: not HOST:PORT"))?;
    if sock.ip().is_unspecified() {
        bail!("--listen {listen}: give the address members reach this backup node at (HOST:PORT)");
    }
    let secret = SecretKey::generate();
    let runtime = tokio::runtime::Runtime::new()?;
    let joined = runtime.block_on(invite::join_as(
        secret.clone(),
        &code,
        &node.name(),
        vec![sock],
    ))?;
    let backup = joined.bundle.get("backup").and_then(|b| b.as_bool()) == Some(true);
    if !backup {
        bail!(
            "this code invites a member, not a backup node; the inviter now lists this machine \
             as a member: revoke it there (`sovryn devices revoke {}`) and invite with --backup",
            secret.public()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.home.dir)
        .with_context(|| format!("{}", ctx.home.dir.display()))?;
    sovryn_engine::identity::store(&ctx.home.identity(), secret.clone())?;
    let config = BackupConfig {
        name: node.name(),
        listen: listen.clone(),
        members: vec![joined.inviter.to_string()],
    };
    sovryn_store::keys::write_secret_file(
        &ctx.home.dir.join(BACKUP_FILE),
        &serde_json::to_vec_pretty(&config)?,
    )?;
    if ctx.json {
        return output::json(&json!({
            "node_id": secret.public().to_string(),
            "backup": true,
            "inviter": joined.inviter.to_string(),
            "confirmation": joined.confirmation,
            "listen": listen,
        }));
    }
    println!(
        "Backup node {} for {}.\nConfirmation: {}  (the inviting side shows the same)\nStart it with: sovryn --home {} up",
        secret.public(),
        joined.inviter.fmt_short(),
        joined.confirmation,
        ctx.home.dir.display()
    );
    Ok(())
}

/// `sovryn up` on a backup node: serves its objects until stopped.
pub fn serve(home: &Home, listen: Option<String>) -> Result<()> {
    let config: BackupConfig = serde_json::from_slice(
        &std::fs::read(home.dir.join(BACKUP_FILE)).context("reading backup.json")?,
    )
    .context("backup.json is damaged")?;
    let secret = sovryn_engine::identity::load(&home.identity())?;
    let listen = listen.unwrap_or(config.listen);
    let sock: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen}"))?;
    let mut members = Vec::new();
    for m in &config.members {
        members.push(
            m.parse()
                .with_context(|| format!("backup.json: member {m}"))?,
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let endpoint = sovryn_net::backup::bind(secret, sock).await?;
        let server = BackupServer::open(&home.dir, members)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "backup node {} ({})", config.name, endpoint.id())?;
        for a in endpoint.bound_sockets() {
            writeln!(out, "listening on {a}")?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = server.run(endpoint.clone()) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        endpoint.close().await;
        anyhow::Ok(())
    })
}
