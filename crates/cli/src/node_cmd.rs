//! Commands of a running node: `up` and `peers`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::identity::PublicKey;
use sovryn_engine::{Config, Home, Node};
use sovryn_store::Access;

use crate::daemon::Daemon;
use crate::output;
use crate::unlock;

/// Commands that run the node or manage its peers.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Run the node in the foreground: watch the folder and sync with peers.
    Up {
        /// Override the sync listen address (HOST:PORT) for this run.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Scan now and wait until every connected peer is caught up both ways (needs 'sovryn up').
    Sync {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Manage the peers this node syncs with.
    Peers {
        #[command(subcommand)]
        action: PeersAction,
    },
}

/// `sovryn peers` actions.
#[derive(Subcommand, Debug)]
pub enum PeersAction {
    /// Trust a peer (by its endpoint id, 'sovryn id' on it). Adding it again updates it.
    Add {
        /// The peer's endpoint id.
        id: String,
        /// Where to reach it (HOST:PORT); repeat for several.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// A name for it.
        #[arg(long)]
        name: Option<String>,
        /// Send it our changes but do not apply its own.
        #[arg(long)]
        read_only: bool,
        /// Only exchange paths under this prefix; repeat for several.
        #[arg(long = "path")]
        paths: Vec<String>,
    },
    /// List trusted peers (with their live state when the node is up).
    List,
    /// Stop trusting a peer (by id or name).
    Remove {
        /// Endpoint id or name.
        peer: String,
    },
}

/// Runs a node command.
pub fn run(
    home: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    cmd: NodeCommand,
) -> Result<()> {
    match cmd {
        NodeCommand::Up { listen } => up(home, passphrase_file, listen),
        NodeCommand::Sync { timeout } => sync(home, json, timeout),
        NodeCommand::Peers { action } => peers(home, json, action),
    }
}

fn up(home: &Home, passphrase_file: Option<&Path>, listen: Option<String>) -> Result<()> {
    let key = unlock::master_key(home, passphrase_file)?;
    let node = Node::open(home.clone(), &key, Access::ReadWrite)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let name = node.config.node_name.clone();
        let root = node.root().to_owned();
        let daemon = Daemon::start(node, listen).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "node {name} ({})", daemon.net.id())?;
        writeln!(out, "folder {}", root.display())?;
        for a in daemon.net.bound_sockets() {
            writeln!(out, "listening on {a}")?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
        drop(out);
        daemon.run().await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

fn sync(home: &Home, json: bool, timeout: u64) -> Result<()> {
    let req = json!({"cmd": "sync", "timeout_ms": timeout.saturating_mul(1000)});
    let Some(answer) = crate::daemon::control_request(home, &req)? else {
        bail!("the node is not running here; start it with 'sovryn up'");
    };
    let ok = answer["ok"].as_bool().unwrap_or(false);
    if json {
        output::json(&answer)?;
    } else {
        for p in answer["peers"].as_array().into_iter().flatten() {
            println!(
                "{}  {}  {}",
                p["id"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("-"),
                if p["connected"].as_u64().unwrap_or(0) > 0 {
                    "connected"
                } else {
                    "offline"
                }
            );
        }
        if ok {
            println!("in sync (sequence {})", answer["seq"]);
        }
    }
    if !ok {
        bail!("{}", answer["error"].as_str().unwrap_or("not in sync"));
    }
    Ok(())
}

fn check_address(a: &str) -> Result<()> {
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => bail!("address must be HOST:PORT, got '{a}'"),
    }
}

fn peers(home: &Home, json: bool, action: PeersAction) -> Result<()> {
    let mut config = Config::load(home)?;
    match action {
        PeersAction::Add {
            id,
            addresses,
            name,
            read_only,
            paths,
        } => {
            let key: PublicKey = id
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("'{id}' is not an endpoint id: {e}"))?;
            let me = sovryn_engine::identity::load(&home.identity())?.public();
            if key == me {
                bail!("that is this node's own id");
            }
            for a in &addresses {
                check_address(a)?;
            }
            let mut clean_paths = Vec::new();
            for p in &paths {
                clean_paths.push(sovryn_engine::paths::normalize_rel(p)?);
            }
            let peer = PeerConfig {
                id: key.to_string(),
                addresses,
                name,
                read_only,
                paths: clean_paths,
            };
            let updated = match config.peers.iter_mut().find(|p| p.id == peer.id) {
                Some(p) => {
                    *p = peer.clone();
                    true
                }
                None => {
                    config.peers.push(peer.clone());
                    false
                }
            };
            config.save(home)?;
            if json {
                output::json(&json!({"peer": peer, "updated": updated}))
            } else {
                println!(
                    "{} peer {}{}",
                    if updated { "updated" } else { "added" },
                    peer.id,
                    peer.name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
                Ok(())
            }
        }
        PeersAction::List => {
            let live = crate::daemon::control_request(home, &json!({"cmd": "status"}))
                .ok()
                .flatten();
            let live_of = |id: &str| {
                live.as_ref().and_then(|l| {
                    l["peers"]
                        .as_array()?
                        .iter()
                        .find(|p| p["id"].as_str() == Some(id))
                        .cloned()
                })
            };
            if json {
                let list: Vec<serde_json::Value> = config
                    .peers
                    .iter()
                    .map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        if let Some(l) = live_of(&p.id) {
                            v["status"] = l;
                        }
                        v
                    })
                    .collect();
                return output::json(&json!({"running": live.is_some(), "peers": list}));
            }
            if config.peers.is_empty() {
                println!(
                    "no peers; add one with 'sovryn peers add ENDPOINT_ID --address HOST:PORT'"
                );
            }
            for p in &config.peers {
                let state = match live_of(&p.id) {
                    Some(l) if l["connected"].as_u64().unwrap_or(0) > 0 => format!(
                        "  connected, sent {} received {}",
                        l["sent_upto"], l["received_upto"]
                    ),
                    Some(l) => match l["last_error"].as_str() {
                        Some(e) => format!("  offline ({e})"),
                        None => "  offline".to_string(),
                    },
                    None => String::new(),
                };
                println!(
                    "{}  {}  {}{}{}{state}",
                    p.id,
                    p.name.as_deref().unwrap_or("-"),
                    if p.addresses.is_empty() {
                        "(no address)".to_string()
                    } else {
                        p.addresses.join(",")
                    },
                    if p.read_only { "  read-only" } else { "" },
                    if p.paths.is_empty() {
                        String::new()
                    } else {
                        format!("  paths: {}", p.paths.join(","))
                    }
                );
            }
            Ok(())
        }
        PeersAction::Remove { peer } => {
            let before = config.peers.len();
            config
                .peers
                .retain(|p| p.id != peer && p.name.as_deref() != Some(peer.as_str()));
            if config.peers.len() == before {
                bail!("no peer '{peer}' (see 'sovryn peers list')");
            }
            config.save(home)?;
            if json {
                output::json(&json!({"removed": before - config.peers.len()}))
            } else {
                println!("removed {peer}");
                Ok(())
            }
        }
    }
}
