//! `sovryn folders`: the node's folders, each with its own key, storage
//! path and peers (see `sovryn_engine::folders`). A running node is told
//! of each change and applies it at once.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

use sovryn_daemon::control::{self, Request};
use sovryn_engine::config::PeerConfig;
use sovryn_engine::folders::{self, FolderName};
use sovryn_engine::identity::PublicKey;
use sovryn_engine::{Config, Home, Node};
use sovryn_store::MasterKey;

use crate::output;
use crate::unlock;

/// `sovryn folders` actions.
#[derive(Subcommand, Debug)]
pub enum FoldersAction {
    /// The node's folders: name, id, storage path, peers.
    List,
    /// A new folder with its own random key (or, with --key-file, a folder
    /// another node shares: 'sovryn -F NAME folder-key' there).
    Add {
        /// Its name (a-z, 0-9, '-', '_').
        name: String,
        /// The directory to keep in sync (created if missing).
        #[arg(long)]
        path: PathBuf,
        /// A file holding the folder's key, to join a folder of another node.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Stop syncing a folder here; its history moves to
    /// HOME/removed-folders (delete it to free the space), its files stay.
    Remove {
        /// The folder.
        name: String,
    },
    /// Share a folder with a peer (an endpoint id, or a peer another
    /// folder of this node knows, by id or name); again to change its rights.
    Share {
        /// The folder.
        name: String,
        /// Endpoint id or name of a known peer.
        peer: String,
        /// The peer receives this folder but its changes are not applied.
        #[arg(long)]
        read_only: bool,
        /// Only paths under this prefix; repeat for several.
        #[arg(long = "paths", alias = "path")]
        paths: Vec<String>,
        /// Where to reach it (HOST:PORT), when no other folder knows it.
        #[arg(long = "address")]
        addresses: Vec<String>,
    },
    /// Stop sharing a folder with a peer.
    Unshare {
        /// The folder.
        name: String,
        /// Endpoint id or name.
        peer: String,
    },
}

/// Runs a `folders` action on the node at `node`.
pub fn run(
    node: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    action: FoldersAction,
) -> Result<()> {
    match action {
        FoldersAction::List => list(node, json),
        FoldersAction::Add {
            name,
            path,
            key_file,
        } => add(node, passphrase_file, json, &name, &path, key_file),
        FoldersAction::Remove { name } => remove(node, json, &name),
        FoldersAction::Share {
            name,
            peer,
            read_only,
            paths,
            addresses,
        } => share(node, json, &name, &peer, read_only, paths, addresses),
        FoldersAction::Unshare { name, peer } => {
            let folder = folders::find(node, &name)?;
            let removed = Config::update(&folder.home, |c| c.remove_peer(&peer))?;
            sovryn_daemon::notify_config_changed(&folder.home);
            if json {
                return output::json(&json!({"folder": name, "removed": removed}));
            }
            println!("folder {name} is no longer shared with {peer}");
            Ok(())
        }
    }
}

fn list(node: &Home, json: bool) -> Result<()> {
    let all = folders::list(node)?;
    if all.is_empty() {
        bail!(
            "no node in {}; run 'sovryn init --storage-path DIR'",
            node.dir.display()
        );
    }
    let served = control::request(node, &Request::Status).ok().flatten();
    let running = |name: &FolderName| -> Option<bool> {
        let s = served.as_ref()?;
        if name.is_default() {
            return Some(true);
        }
        Some(
            s["folders"]
                .as_array()?
                .iter()
                .any(|f| f["name"] == name.as_str() && f["running"] == true),
        )
    };
    let mut rows = Vec::new();
    for f in &all {
        let config = Config::load(&f.home)?;
        let id = Node::key_file(&f.home)?.folder_id()?;
        rows.push(json!({
            "name": f.name.as_str(),
            "id": id,
            "path": config.storage_path,
            "peers": config.peers,
            "running": running(&f.name).unwrap_or(false),
        }));
    }
    if json {
        return output::json(&json!({"node_running": served.is_some(), "folders": rows}));
    }
    for r in &rows {
        let peers: Vec<String> = r["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                p["name"]
                    .as_str()
                    .or(p["id"].as_str())
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect();
        let line = format!(
            "{:<12}  {}  {}  peers: {}{}",
            r["name"].as_str().unwrap_or("?"),
            r["id"].as_str().map_or("?", |id| id.get(..8).unwrap_or(id)),
            r["path"].as_str().unwrap_or("?"),
            if peers.is_empty() {
                "none".to_string()
            } else {
                peers.join(", ")
            },
            if served.is_some() && r["running"] != true {
                "  (not served: see 'sovryn logs')"
            } else {
                ""
            }
        );
        println!("{}", output::printable(&line));
    }
    Ok(())
}

fn add(
    node: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    name: &str,
    path: &Path,
    key_file: Option<PathBuf>,
) -> Result<()> {
    let name = FolderName::parse(name)?;
    let folder_key = match key_file {
        Some(f) => {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("reading the folder key from {}", f.display()))?;
            Some(MasterKey::from_hex(text.trim()).context("that file does not hold a folder key")?)
        }
        None => None,
    };
    let node_key = unlock::master_key(node, passphrase_file)?;
    let made = folders::create(node, &name, path, &node_key, folder_key)?;
    // A running node serves it at once.
    let served = match control::request(
        node,
        &Request::OpenFolder {
            name: name.to_string(),
        },
    ) {
        Ok(Some(a)) if a["ok"] == true => Some(true),
        Ok(Some(a)) => {
            eprintln!(
                "warning: the running node did not start serving it: {}",
                a["error"].as_str().unwrap_or("no reason given")
            );
            Some(false)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("warning: the running node was not told: {e:#}");
            Some(false)
        }
    };
    if json {
        return output::json(&json!({
            "name": name.as_str(),
            "id": made.folder_id,
            "path": made.storage_path,
            "served": served.unwrap_or(false),
        }));
    }
    println!(
        "folder {name} ({}) at {}",
        made.folder_id,
        made.storage_path.display()
    );
    println!("share it: 'sovryn folders share {name} PEER'; its key for the peer: 'sovryn -F {name} folder-key'");
    Ok(())
}

fn remove(node: &Home, json: bool, name: &str) -> Result<()> {
    let name = FolderName::parse(name)?;
    // A running node must have stopped serving it before its home moves.
    let answer = control::request(
        node,
        &Request::CloseFolder {
            name: name.to_string(),
        },
    )
    .context("asking the running node to stop serving the folder; nothing was changed")?;
    if let Some(a) = answer {
        if a["ok"] != true {
            bail!(
                "the running node could not stop serving it: {}",
                a["error"].as_str().unwrap_or("no reason given")
            );
        }
    }
    let kept = folders::remove(node, &name)?;
    if json {
        return output::json(&json!({"removed": name.as_str(), "history": kept}));
    }
    println!(
        "folder {name} is no longer synced here; its files stay, its history is in {}",
        kept.display()
    );
    Ok(())
}

fn share(
    node: &Home,
    json: bool,
    name: &str,
    who: &str,
    read_only: bool,
    paths: Vec<String>,
    addresses: Vec<String>,
) -> Result<()> {
    let folder = folders::find(node, name)?;
    // A peer another folder knows brings its id, name and addresses.
    let known = folders::list(node)?
        .iter()
        .filter_map(|f| Config::load(&f.home).ok())
        .flat_map(|c| c.peers)
        .find(|p| p.id == who || p.name.as_deref() == Some(who));
    let id: PublicKey = match &known {
        Some(p) => p.id.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        None => who.trim().parse().map_err(|e| {
            anyhow::anyhow!("'{who}' is neither a known peer nor an endpoint id: {e}")
        })?,
    };
    if id == sovryn_engine::identity::load(&node.identity())?.public() {
        bail!("that is this node's own id");
    }
    // Addresses given here win; else those the other folder knows.
    let addresses = match (&known, addresses.is_empty()) {
        (Some(k), true) => k.addresses.clone(),
        _ => addresses,
    };
    let known_name = known.and_then(|p| p.name);
    let peer = PeerConfig::checked(&id, addresses, known_name, read_only, &paths)?;
    let (updated, peer) = Config::update(&folder.home, |c| Ok(c.upsert_peer(peer)))?;
    sovryn_daemon::notify_config_changed(&folder.home);
    if json {
        return output::json(&json!({"folder": name, "peer": peer, "updated": updated}));
    }
    println!(
        "folder {name} {} with {}{}{}",
        if updated { "still shared" } else { "shared" },
        peer.name.as_deref().unwrap_or(&peer.id),
        if peer.read_only { " (read-only)" } else { "" },
        if peer.paths.is_empty() {
            String::new()
        } else {
            format!(" (paths: {})", peer.paths.join(", "))
        }
    );
    Ok(())
}
