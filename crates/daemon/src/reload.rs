//! Config change events of the running node. When `config.toml` changes
//! (a `sovryn` command tells the node over the control socket; the file
//! watcher catches edits by hand and by agents' peer tools), one reload
//! diffs it against the node's config, applies each [`ConfigChange`] where
//! it belongs, and publishes it to subscribers. No polling.

use std::time::Duration;

use serde_json::json;
use sovryn_engine::config::ConfigChange;
use sovryn_engine::Config;

use crate::Daemon;

/// How long the file watcher gathers events before a reload.
pub const CONFIG_DEBOUNCE: Duration = Duration::from_millis(100);

impl Daemon {
    /// Reloads `config.toml` and applies what changed; answers with the
    /// changes (typed, as JSON).
    pub async fn reload_config(&self) -> serde_json::Value {
        // One reload at a time: two would apply the same diff twice.
        let _one = self.reloading.lock().await;
        let new = match Config::load(&self.home) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reloading config: {e}");
                return json!({"ok": false, "error": format!("{e:#}")});
            }
        };
        let old = match self.shared.with_node(|n| Ok(n.config.clone())).await {
            Ok(c) => c,
            Err(e) => return json!({"ok": false, "error": format!("{e:#}")}),
        };
        let changes = new.changes_from(&old);
        // A rule taken back: paths skipped so far must come from the peers.
        let widened = old
            .sync
            .exclude
            .iter()
            .any(|r| !new.sync.exclude.contains(r))
            || old.sync.ignore.iter().any(|r| !new.sync.ignore.contains(r))
            || old.sync.include != new.sync.include;
        for change in &changes {
            match change {
                ConfigChange::Peers => {
                    if self.home.is_paused() {
                        self.net.pause(&new.peers);
                    } else {
                        self.net.resume(&new.peers);
                    }
                }
                ConfigChange::Bandwidth => self
                    .net
                    .set_bandwidth(new.sync.max_send_kib_per_sec, new.sync.max_recv_kib_per_sec),
                ConfigChange::Mcp => self.restart_mcp(&new.mcp).await,
                ConfigChange::NeedsRestart(what) => {
                    tracing::warn!("config: {what} take effect at the next start")
                }
                // The node's own: applied below.
                ConfigChange::Rules | ConfigChange::Retention | ConfigChange::Search => {}
            }
        }
        if !changes.is_empty() {
            let applied = self
                .shared
                .with_node(move |n| Ok(n.apply_config(new)?))
                .await;
            if let Err(e) = applied {
                tracing::warn!("applying the config: {e:#}");
                return json!({"ok": false, "error": format!("{e:#}")});
            }
            if changes.contains(&ConfigChange::Rules) {
                // Paths newly kept are recorded now, not at the next edit.
                if let Err(e) = self.rescan(vec![String::new()]).await {
                    tracing::warn!("rescan after new rules: {e:#}");
                }
                if widened {
                    if let Err(e) = self.net.refetch_all().await {
                        tracing::warn!("asking peers for what the old rules skipped: {e}");
                    }
                }
            }
            for c in &changes {
                let _ = self.config_events.send(*c);
            }
            tracing::info!("config reloaded: {changes:?}");
        }
        json!({"ok": true, "changes": changes})
    }

    /// The MCP listener under new settings: restarted when it runs or is
    /// enabled, stopped when disabled.
    async fn restart_mcp(&self, mcp: &sovryn_engine::config::McpConfig) {
        let was_running = self.stop_mcp().await;
        if mcp.enabled || was_running {
            if !mcp.enabled {
                tracing::info!("MCP stopped: mcp.enabled is false");
                return;
            }
            let answer = self.start_mcp_now().await;
            if answer["ok"] != true {
                tracing::warn!("MCP not restarted: {}", answer["error"]);
            }
        }
    }
}

/// Tells a running node that `config.toml` changed, and waits until it
/// applied the change. Nothing to do when no node runs.
pub fn notify_config_changed(home: &sovryn_engine::Home) {
    match crate::control::request(home, &crate::control::Request::ReloadConfig) {
        Ok(Some(answer)) if answer["ok"] != true => {
            eprintln!(
                "warning: the running node could not apply the change: {}",
                answer["error"].as_str().unwrap_or("no reason given")
            )
        }
        Err(e) => eprintln!("warning: the running node was not told of the change: {e:#}"),
        _ => {}
    }
}
