//! The MCP HTTP listener inside the node: started, stopped and restarted on request or on config changes.

use super::*;

impl Daemon {
    /// Starts the MCP HTTP listener if it is not running (`sovryn mcp
    /// start`), with the `mcp.*` settings of `config.toml` as they are now,
    /// whatever `mcp.enabled` says.
    pub(crate) async fn start_mcp_now(&self) -> serde_json::Value {
        if let Some(url) = self.mcp_url() {
            return serde_json::json!({"ok": true, "url": url, "already_running": true});
        }
        let config = match Config::load(&self.home) {
            Ok(c) => c,
            Err(e) => return serde_json::json!({"ok": false, "error": format!("{e:#}")}),
        };
        match start_mcp(&self.mcp_state, &config.mcp).await {
            Ok(m) => {
                let url = m.url.clone();
                tracing::info!("MCP listening on {url} (started by request)");
                let raced = match self.mcp.lock() {
                    Ok(mut slot) if slot.is_none() => {
                        *slot = Some(m);
                        None
                    }
                    _ => Some(m),
                };
                // Two requests at once: keep the first listener.
                if let Some(m) = raced {
                    let _ = m.stop.send(());
                    return serde_json::json!({"ok": true, "url": self.mcp_url(), "already_running": true});
                }
                serde_json::json!({"ok": true, "url": url, "already_running": false})
            }
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        }
    }

    /// Stops the MCP HTTP listener, if it runs (its sessions end).
    pub(crate) async fn stop_mcp(&self) -> bool {
        let mcp = self.mcp.lock().ok().and_then(|mut m| m.take());
        let Some(m) = mcp else {
            return false;
        };
        let _ = m.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), m.task).await {
            Ok(Ok(Err(e))) => tracing::warn!("MCP server: {e:#}"),
            Err(_) => tracing::warn!("MCP server did not stop within 5 s"),
            _ => {}
        }
        true
    }

    pub(crate) fn mcp_url(&self) -> Option<String> {
        self.mcp
            .lock()
            .ok()
            .and_then(|m| m.as_ref().map(|m| m.url.clone()))
    }
}

/// The MCP HTTP server running inside the daemon.
pub(crate) struct McpServer {
    pub(crate) url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<sovryn_mcp::Result<()>>,
}

/// Starts the MCP HTTP server on `mcp.bind:mcp.port` sharing the daemon's
/// node, change channel and path index. A server that cannot start (port in
/// use, bad settings) is an error the caller reports; sync runs on without it.
pub(crate) async fn start_mcp(
    state: &sovryn_mcp::McpState,
    config: &sovryn_engine::config::McpConfig,
) -> std::result::Result<McpServer, String> {
    let ip: std::net::IpAddr = config
        .bind
        .parse()
        .map_err(|_| format!("mcp.bind '{}' is not an IP address", config.bind))?;
    let addr = SocketAddr::new(ip, config.port);
    let options = sovryn_mcp::HttpOptions::from_config(config).map_err(|e| format!("{e:#}"))?;
    let state = state.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel::<SocketAddr>();
    let task = tokio::spawn(sovryn_mcp::serve_http_with(
        state,
        addr,
        options,
        async move {
            let _ = stopped.await;
        },
        move |a| {
            let _ = bound_tx.send(a);
        },
    ));
    let scheme = if config.tls_cert.is_some() && config.tls_key.is_some() {
        "https"
    } else {
        "http"
    };
    match bound_rx.await {
        Ok(bound) => {
            let url = format!("{scheme}://{bound}/mcp");
            Ok(McpServer { url, stop, task })
        }
        Err(_) => Err(match task.await {
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(())) => "it stopped at once".into(),
            Err(e) => e.to_string(),
        }),
    }
}
