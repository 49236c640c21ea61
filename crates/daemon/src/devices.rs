//! Devices that asked to sync without being listed (`sovryn devices
//! pending`), and the user's decision: approve (a peer of each folder it
//! asked for; it must still prove the folder's key before anything moves)
//! or deny (refused silently).

use serde_json::json;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::identity::PublicKey;
use sovryn_engine::Config;

use crate::Daemon;

/// The devices waiting for a decision.
pub(crate) fn pending_now(d: &Daemon) -> serde_json::Value {
    json!({"ok": true, "pending": d.net.knocks().pending()})
}

/// Approves device `id` for every folder it asked for.
pub(crate) async fn approve_now(d: &Daemon, id: &str, read_only: bool) -> serde_json::Value {
    let Ok(key) = id.trim().parse::<PublicKey>() else {
        return json!({"ok": false, "error": format!("{id} is not a device id")});
    };
    let Some(knock) = d.net.knocks().take(&key) else {
        return json!({"ok": false, "error": format!("{id} is not pending (see `sovryn devices pending`)")});
    };
    let homes = d.net.folder_homes(&knock.alpns).await;
    let mut folders = Vec::new();
    for home in homes {
        let added = PeerConfig::checked(&key, Vec::new(), None, read_only, &[])
            .and_then(|peer| Config::update(&home, |c| Ok(c.upsert_peer(peer))));
        if let Err(e) = added {
            return json!({"ok": false, "error": format!("{e}")});
        }
        let _ = crate::control::request(&home, &crate::control::Request::ReloadConfig);
        folders.push(home.dir.display().to_string());
    }
    tracing::info!("approved device {}", key.fmt_short());
    json!({"ok": true, "approved": id, "folders": folders})
}

/// Denies device `id`: refused without a word from now on.
pub(crate) fn deny_now(d: &Daemon, id: &str) -> serde_json::Value {
    match id.trim().parse::<PublicKey>() {
        Ok(key) => {
            let was = d.net.knocks().deny(key);
            json!({"ok": true, "denied": id, "was_pending": was})
        }
        Err(_) => json!({"ok": false, "error": format!("{id} is not a device id")}),
    }
}
