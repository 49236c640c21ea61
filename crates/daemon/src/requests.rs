//! Requests of the control socket that change the node's state: pause and
//! resume, resolving a conflict copy.

use serde_json::json;
use sovryn_engine::Config;

use crate::Daemon;

/// `pause` / `resume` on the running node: the marker (kept across
/// restarts), then the sessions.
pub(crate) async fn pause_now(d: &Daemon, pause: bool) -> serde_json::Value {
    let home = match d.shared.with_node(|n| Ok(n.home.clone())).await {
        Ok(h) => h,
        Err(e) => return json!({"ok": false, "error": format!("{e:#}")}),
    };
    if pause {
        return match std::fs::write(home.pause_marker(), b"") {
            Ok(()) => {
                d.net
                    .pause(&Config::load(&home).map(|c| c.peers).unwrap_or_default());
                tracing::info!("sync paused");
                json!({"ok": true, "paused": true})
            }
            Err(e) => json!({"ok": false, "error": format!("writing the pause marker: {e}")}),
        };
    }
    let _ = std::fs::remove_file(home.pause_marker());
    match Config::load(&home) {
        Ok(c) => {
            d.net.resume(&c.peers);
            tracing::info!("sync resumed");
            json!({"ok": true, "paused": false})
        }
        Err(e) => json!({"ok": false, "error": format!("reading the config: {e}")}),
    }
}

/// `conflicts resolve` on the running node.
pub(crate) async fn resolve_now(d: &Daemon, path: String, keep: String) -> serde_json::Value {
    let done = d
        .shared
        .with_node(move |n| {
            let keep: sovryn_engine::conflicts::Keep = keep.parse()?;
            let r = n.resolve_conflict(&path, keep, None)?;
            Ok((r, n.store.sequence()?))
        })
        .await;
    match done {
        Ok((r, seq)) => {
            d.shared.publish(seq, r.changed.clone());
            json!({"ok": true, "resolution": r})
        }
        Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
    }
}
