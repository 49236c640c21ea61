//! Invites on the running node: `sovryn invite` opens one, and a device
//! that proves the invite's secret (`sovryn_net::invite`) is recorded as a
//! peer of every folder the invite grants and is sent those folders' keys
//! and the devices this node knows.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::devices::{DeviceList, DeviceOp, OpKind, Role};
use sovryn_engine::folders::{self, FolderName};
use sovryn_engine::{Config, Home};
use sovryn_net::invite::{JoinHandler, JoinRequest};
use sovryn_store::MasterKey;

use crate::Daemon;

/// The longest an invite may stay open.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an invite grants, as the join handler reads it back.
#[derive(Debug, Serialize, Deserialize)]
struct Grant {
    folders: Vec<String>,
    read_only: bool,
    #[serde(default)]
    backup: bool,
}

/// What a backup peer is sent: who invited it, and no key.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupBundle {
    /// Always true (a member's bundle has no such field).
    pub backup: bool,
    /// The inviting node, the one member that may write to it.
    pub inviter: Device,
}

/// What a joiner is sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bundle {
    /// The folders granted, each with its key.
    pub folders: Vec<GrantedFolder>,
    /// The inviting node.
    pub inviter: Device,
    /// The other devices the inviter syncs its default folder with.
    pub devices: Vec<Device>,
}

/// A folder a joiner is given.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantedFolder {
    /// Its name on the inviter.
    pub name: String,
    /// Its key (hex).
    pub key: String,
    /// Whether the inviter takes no changes from the joiner.
    pub read_only: bool,
}

/// A device of the mesh.
#[derive(Debug, Serialize, Deserialize)]
pub struct Device {
    /// Its endpoint id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// Where it listens.
    pub addresses: Vec<String>,
}

/// `invite` on the running node: checks the folders, opens the invite.
pub(crate) async fn invite_now(
    d: &Daemon,
    folder_names: Vec<String>,
    read_only: bool,
    backup: bool,
    ttl: Duration,
) -> serde_json::Value {
    let home = match d.shared.with_node(|n| Ok(n.home.clone())).await {
        Ok(h) => h,
        Err(e) => return json!({"ok": false, "error": format!("{e:#}")}),
    };
    let node = folders::node_of(&home).unwrap_or(home);
    let mut names = Vec::new();
    for raw in if folder_names.is_empty() {
        vec![folders::DEFAULT.to_owned()]
    } else {
        folder_names
    } {
        match folders::find(&node, &raw) {
            Ok(f) => names.push(f.name.as_str().to_owned()),
            Err(e) => return json!({"ok": false, "error": format!("{e}")}),
        }
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return json!({"ok": false, "error": "an invite lasts between 1 second and 7 days"});
    }
    let grant = json!(Grant {
        folders: names.clone(),
        read_only,
        backup,
    });
    match d.net.create_invite(ttl, grant) {
        Ok(code) => json!({
            "ok": true,
            "code": code.encode(),
            "invite": hex::encode(code.invite),
            "folders": names,
            "read_only": read_only,
            "backup": backup,
            "expires_in_secs": ttl.as_secs(),
        }),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// What became of an invite, waiting up to `wait` while it is open.
pub(crate) async fn invite_status_now(
    d: &Daemon,
    invite: &str,
    wait: Duration,
) -> serde_json::Value {
    let Some(id) = hex::decode(invite)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
    else {
        return json!({"ok": false, "error": "not an invite id"});
    };
    match d
        .net
        .invites()
        .outcome(id, wait.min(Duration::from_secs(60)))
        .await
    {
        Some(o) => json!({"ok": true, "outcome": o}),
        None => json!({"ok": false, "error": "no such invite"}),
    }
}

/// The handler that admits a joiner: `node` is the node's home (its
/// default folder), `node_key` its key (which opens the other folders').
pub(crate) fn join_handler(node: Home, node_key: MasterKey) -> JoinHandler {
    std::sync::Arc::new(move |req: JoinRequest| {
        admit(&node, &node_key, req).map_err(|e| format!("{e:#}"))
    })
}

fn admit(node: &Home, node_key: &MasterKey, req: JoinRequest) -> anyhow::Result<serde_json::Value> {
    let grant = Grant::deserialize(&req.grant)?;
    if grant.backup {
        return admit_backup(node, node_key, req, grant);
    }
    let addresses: Vec<String> = req.addrs.iter().map(|a| a.to_string()).collect();
    let name = Some(req.name.clone()).filter(|n| !n.trim().is_empty());
    let mut granted = Vec::new();
    for raw in &grant.folders {
        let fname = FolderName::parse(raw)?;
        let home = folders::folder_home(node, &fname);
        let key = folder_key(node_key, &fname, &home)?;
        let peer = PeerConfig::checked(
            &req.joiner,
            addresses.clone(),
            name.clone(),
            grant.read_only,
            &[],
        )?;
        Config::update(&home, |c| Ok(c.upsert_peer(peer)))?;
        // The folder's service takes the new peer now (its config watcher
        // would, a moment later).
        let _ = crate::control::request(&home, &crate::control::Request::ReloadConfig);
        granted.push(GrantedFolder {
            name: raw.clone(),
            key: key.to_hex(),
            read_only: grant.read_only,
        });
    }
    // The other members reach the joiner through the signed device list
    // of each folder it was granted, not through this bundle (which would
    // tell it about folders it was not granted).
    let devices = Vec::new();
    tracing::info!(
        "{} ({}) joined: folders {}",
        req.joiner.fmt_short(),
        req.name,
        grant.folders.join(", ")
    );
    Ok(serde_json::to_value(Bundle {
        folders: granted,
        inviter: this_node(node)?,
        devices,
    })?)
}

/// The key of folder `name` (at `home`), which the node's key opens.
fn folder_key(node_key: &MasterKey, name: &FolderName, home: &Home) -> anyhow::Result<MasterKey> {
    Ok(if name.is_default() {
        node_key.clone()
    } else {
        folders::open_key(home, node_key)?
    })
}

/// This node as a joiner is told of it.
fn this_node(node: &Home) -> anyhow::Result<Device> {
    Ok(Device {
        id: sovryn_engine::identity::load(&node.identity())?
            .public()
            .to_string(),
        name: Some(Config::load(node)?.node_name),
        addresses: Vec::new(),
    })
}

/// A backup peer joined: an add with the backup role, signed here, goes
/// into the device list of each folder the invite names, so every member
/// learns of it and pushes those folders' sealed objects to it (as a
/// remote, `crate::remotes`). It is sent no key.
fn admit_backup(
    node: &Home,
    node_key: &MasterKey,
    req: JoinRequest,
    grant: Grant,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        !req.addrs.is_empty(),
        "the backup node gave no address to reach it (join with --listen HOST:PORT)"
    );
    let addresses: Vec<String> = req.addrs.iter().map(|a| a.to_string()).collect();
    let secret = sovryn_engine::identity::load(&node.identity())?;
    let name = Some(req.name.clone()).filter(|n| !n.trim().is_empty() && n.len() <= 64);
    for raw in &grant.folders {
        let fname = FolderName::parse(raw)?;
        let home = folders::folder_home(node, &fname);
        let folder_id = folder_key(node_key, &fname, &home)?.derive().folder_id;
        DeviceList::update(&home, |list| {
            list.ops.push(DeviceOp::new(
                &folder_id,
                &secret,
                OpKind::Add,
                &req.joiner,
                name.clone(),
                Role::Backup,
                addresses.clone(),
            ));
            Ok(())
        })?;
        let (_, listed) = crate::remotes::listed_backups(&home, &secret.public())?;
        sovryn_remote::target::follow_listed_backups(&node.dir, fname.as_str(), &listed)?;
        // Members hear of it now (the folder's sessions send the list).
        let _ = crate::control::request(&home, &crate::control::Request::SharedStateChanged);
    }
    tracing::info!(
        "backup node {} ({}) joined: it keeps {} sealed",
        req.joiner.fmt_short(),
        req.name,
        grant.folders.join(", ")
    );
    Ok(serde_json::to_value(BackupBundle {
        backup: true,
        inviter: this_node(node)?,
    })?)
}
