//! Devices that asked to sync without being listed (`sovryn devices
//! pending`), and the user's decision: approve (a peer of each folder it
//! asked for; it must still prove the folder's key before anything moves)
//! or deny (refused silently).

use serde_json::json;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::devices::{
    apply_to_config, rotate_after_revocation, signing_roots, DeviceList, DeviceOp, OpKind, Role,
};
use sovryn_engine::identity::PublicKey;
use sovryn_engine::Config;

use crate::Daemon;

/// The devices waiting for a decision.
pub(crate) fn pending_now(d: &Daemon) -> serde_json::Value {
    json!({"ok": true, "pending": d.net.knocks().pending()})
}

/// A device id from the command line, or the answer refusing it.
fn device_id(id: &str) -> Result<PublicKey, serde_json::Value> {
    id.trim()
        .parse()
        .map_err(|_| json!({"ok": false, "error": format!("{id} is not a device id")}))
}

/// Approves device `id` for every folder it asked for.
pub(crate) async fn approve_now(d: &Daemon, id: &str, read_only: bool) -> serde_json::Value {
    let key = match device_id(id) {
        Ok(k) => k,
        Err(answer) => return answer,
    };
    let Some(knock) = d.net.knocks().take(&key) else {
        return json!({"ok": false, "error": format!("{id} is not pending (see `sovryn devices pending`)")});
    };
    let homes = d.net.folder_homes(&knock.alpns).await;
    // Config files and the folders' control sockets: off the runtime.
    let added = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        let mut folders = Vec::new();
        for home in homes {
            PeerConfig::checked(&key, Vec::new(), None, read_only, &[])
                .and_then(|peer| Config::update(&home, |c| Ok(c.upsert_peer(peer))))
                .map_err(|e| e.to_string())?;
            let _ = crate::control::request(&home, &crate::control::Request::ReloadConfig);
            folders.push(home.dir.display().to_string());
        }
        Ok(folders)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match added {
        Ok(folders) => {
            tracing::info!("approved device {}", key.fmt_short());
            json!({"ok": true, "approved": id, "folders": folders})
        }
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Denies device `id`: refused without a word from now on.
pub(crate) fn deny_now(d: &Daemon, id: &str) -> serde_json::Value {
    match device_id(id) {
        Ok(key) => {
            let was = d.net.knocks().deny(key);
            json!({"ok": true, "denied": id, "was_pending": was})
        }
        Err(answer) => answer,
    }
}

/// Revokes device `id` in this folder's signed device list: it is removed
/// from the configured peers here, and every member removes it as the
/// list reaches them; no member takes it back later. The folder moves to
/// a new seal epoch, so what is written from now on is sealed under a key
/// the device never had.
pub(crate) async fn revoke_now(d: &Daemon, id: &str) -> serde_json::Value {
    let key = match device_id(id) {
        Ok(k) => k,
        Err(answer) => return answer,
    };
    let me = d.net.id();
    if key == me {
        return json!({"ok": false, "error": "a node cannot revoke itself; revoke it from another member"});
    }
    let done = d
        .shared
        .with_node_bulk(move |n| {
            let folder = n.store.folder_id().to_owned();
            let list = DeviceList::update(&n.home, |list| {
                list.ops.push(DeviceOp::new(
                    &folder,
                    &n.secret,
                    OpKind::Revoke,
                    &key,
                    None,
                    Role::Member,
                    Vec::new(),
                ));
                Ok(list.clone())
            })?;
            Ok(apply_to_config(&n.home, &me, &list)?)
        })
        .await;
    match done {
        Ok(_) => {
            let reload = d.reload_config().await;
            if reload["ok"] != true {
                return reload;
            }
            // Only now that the device is cut off: new chunks go under a
            // key it never had, which members get over their sessions
            // (after the list, before any record that needs it).
            let rotated = d
                .shared
                .with_node_bulk(|n| {
                    let list = DeviceList::load(&n.home)?;
                    Ok(rotate_after_revocation(&mut n.store, &list)?)
                })
                .await;
            if let Err(e) = rotated {
                return json!({"ok": false, "error": format!("revoked, but the folder key did not rotate: {e:#}")});
            }
            d.net.shared_state_changed();
            tracing::info!("revoked device {}", key.fmt_short());
            json!({"ok": true, "revoked": id})
        }
        Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
    }
}

/// The folder's members as its device list and configured peers say.
pub(crate) async fn list_now(d: &Daemon) -> serde_json::Value {
    let listed = d
        .shared
        .with_node(move |n| {
            let list = DeviceList::load(&n.home)?;
            let peers = Config::load(&n.home)?.peers;
            let members = list.members(&signing_roots(&n.secret.public(), &peers));
            let devices: Vec<serde_json::Value> = peers
                .iter()
                .map(|p| {
                    let vouched: Vec<&str> = list
                        .ops
                        .iter()
                        .filter(|o| o.device == p.id && o.kind == OpKind::Add)
                        .map(|o| o.by.as_str())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    json!({
                        "id": p.id,
                        "name": p.name,
                        "read_only": p.read_only,
                        "addresses": p.addresses,
                        "vouched_by": vouched,
                    })
                })
                .collect();
            let backups: Vec<serde_json::Value> = members
                .backups
                .values()
                .map(|o| json!({"id": o.device, "name": o.name, "addresses": o.addresses, "added_by": o.by}))
                .collect();
            Ok(json!({
                "ok": true,
                "devices": devices,
                "backups": backups,
                "revoked": members.revoked,
                "operations": list.ops.len(),
            }))
        })
        .await;
    done_or_error(listed)
}

fn done_or_error(r: Result<serde_json::Value, sovryn_net::Error>) -> serde_json::Value {
    r.unwrap_or_else(|e| json!({"ok": false, "error": format!("{e:#}")}))
}
