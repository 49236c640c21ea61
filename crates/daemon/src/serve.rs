//! Answering the control socket: status, sync, writes and queries.

use super::*;

impl Daemon {
    pub(crate) async fn status(&self, seq: u64) -> serde_json::Value {
        let mcp = self.mcp_url();
        serde_json::json!({
            "node_id": self.net.id().to_string(),
            "pid": std::process::id(),
            "seq": seq,
            "folder_id": self.shared.folder_id(),
            "paused": self.home.is_paused(),
            "listening": self.net.bound_sockets().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "mcp_url": mcp,
            "peers": self.net.peer_report().await,
            "folders": self.served_folders().await,
        })
    }

    /// One request per line, one JSON answer per line. `mcp_stdio` turns
    /// the rest of the connection into an MCP session (`sovryn mcp serve
    /// --stdio` pipes its stdin/stdout to it).
    pub(crate) async fn serve_control(&self, stream: tokio::net::UnixStream) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await? {
            use crate::control::Request;
            let req = match crate::control::parse(&line) {
                Ok(r) => r,
                Err(error) => {
                    let mut out =
                        serde_json::to_vec(&serde_json::json!({"ok": false, "error": error}))?;
                    out.push(b'\n');
                    w.write_all(&out).await?;
                    continue;
                }
            };
            if let Request::McpStdio = req {
                w.write_all(b"{\"ok\":true}\n").await?;
                // The reader keeps what it buffered past the request line.
                let reader = lines.into_inner();
                sovryn_mcp::serve_io(self.mcp_state.clone(), reader, w)
                    .await
                    .context("MCP session on the control socket")?;
                return Ok(());
            }
            let answer = match req {
                Request::McpStart => self.start_mcp_now().await,
                Request::McpStop => {
                    let stopped = self.stop_mcp().await;
                    serde_json::json!({"ok": true, "stopped": stopped})
                }
                Request::Status => {
                    let seq = *self.shared.seq.borrow();
                    self.status(seq).await
                }
                // add, scan, restore, gc from the command line: this node
                // holds the store, so it does them (see write_ops.rs).
                Request::Write { op } => self.write(op).await,
                Request::ReloadConfig => self.reload_config().await,
                Request::OpenFolder { name } => {
                    let opened = match sovryn_engine::folders::FolderName::parse(&name) {
                        Ok(n) => self.open_folder(&n).await,
                        Err(e) => Err(e.into()),
                    };
                    match opened {
                        Ok(path) => serde_json::json!({"ok": true, "path": path}),
                        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                    }
                }
                Request::CloseFolder { name } => {
                    match sovryn_engine::folders::FolderName::parse(&name) {
                        Ok(n) => {
                            serde_json::json!({"ok": true, "closed": self.close_folder(&n).await})
                        }
                        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                    }
                }
                Request::Unrecorded => match self.unrecorded().await {
                    Ok(paths) => serde_json::json!({"ok": true, "paths": paths}),
                    Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                },
                Request::Query { query } => {
                    match self
                        .shared
                        .with_view(move |r| sovryn_api::ask(r, query))
                        .await
                    {
                        Ok(Ok(answer)) => serde_json::json!({"ok": true, "answer": answer}),
                        Ok(Err(e)) => serde_json::json!({"ok": false, "error": e.to_string()}),
                        Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
                    }
                }
                Request::TestNetwork { peer, probe_bytes } => {
                    let peers = self.net.test_network(peer.as_deref(), probe_bytes).await;
                    serde_json::json!({"ok": true, "peers": peers})
                }
                Request::Stop => {
                    self.stop.notify_one();
                    serde_json::json!({"ok": true, "stopping": true})
                }
                Request::Sync { timeout_ms } => {
                    self.sync_now(Duration::from_millis(timeout_ms)).await
                }
                Request::McpStdio => unreachable_answer(),
                Request::Invite {
                    folders,
                    read_only,
                    ttl_secs,
                    backup,
                } => {
                    crate::invites::invite_now(
                        self,
                        folders,
                        read_only,
                        backup,
                        std::time::Duration::from_secs(ttl_secs),
                    )
                    .await
                }
                Request::InviteStatus { invite, wait_ms } => {
                    crate::invites::invite_status_now(
                        self,
                        &invite,
                        std::time::Duration::from_millis(wait_ms),
                    )
                    .await
                }
                Request::DevicesPending => crate::devices::pending_now(self),
                Request::SharedStateChanged => {
                    self.net.shared_state_changed();
                    serde_json::json!({"ok": true})
                }
                Request::DevicesApprove { id, read_only } => {
                    crate::devices::approve_now(self, &id, read_only).await
                }
                Request::DevicesDeny { id } => crate::devices::deny_now(self, &id),
                Request::DevicesRevoke { id } => crate::devices::revoke_now(self, &id).await,
                Request::DevicesList => crate::devices::list_now(self).await,
                Request::Pause => crate::requests::pause_now(self, true).await,
                Request::Resume => crate::requests::pause_now(self, false).await,
                Request::ConflictsResolve { path, keep } => {
                    crate::requests::resolve_now(self, path, keep).await
                }
            };
            let mut out = serde_json::to_vec(&answer)?;
            out.push(b'\n');
            w.write_all(&out).await?;
        }
        Ok(())
    }

    /// Runs a typed write (`write_ops::WriteOp`) and announces what changed.
    pub(crate) async fn write(&self, op: crate::write_ops::WriteOp) -> serde_json::Value {
        let done = self
            .shared
            .with_node(move |n| {
                let out = crate::write_ops::execute(n, op, &mut |_| {})?;
                Ok((out, n.store.sequence()?))
            })
            .await;
        match done {
            Ok((out, seq)) => {
                self.shared.publish(seq, out.changed());
                serde_json::json!({"ok": true, "outcome": out})
            }
            Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
        }
    }

    /// Scans everything, then waits until every configured peer is connected,
    /// has been sent our whole change log and has had everything it
    /// announced applied here. Returns at once when there is no peer to
    /// wait for: none configured, sync paused, or every peer refusing for
    /// a reason only a person can fix (another folder key, not listed
    /// there, paused there).
    pub(crate) async fn sync_now(&self, timeout: Duration) -> serde_json::Value {
        use sovryn_net::LinkState;
        if let Err(e) = self.rescan(vec![String::new()]).await {
            return serde_json::json!({"ok": false, "error": format!("scan: {e:#}")});
        }
        let seq = *self.shared.seq.borrow();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let peers = self.net.peer_status();
            let connected = |p: &&sovryn_net::PeerStatus| p.state == LinkState::Connected;
            let done = peers.iter().any(|p| connected(&p))
                && peers
                    .iter()
                    .filter(connected)
                    // Applied there (acknowledged), not only sent.
                    .all(|p| p.acked_upto >= seq && p.received_upto >= p.remote_seq);
            let stuck = |p: &sovryn_net::PeerStatus| {
                matches!(
                    p.state,
                    LinkState::Paused
                        | LinkState::PeerPaused
                        | LinkState::WrongFolderKey
                        | LinkState::NotAllowedThere
                )
            };
            let hopeless = !peers.is_empty() && peers.iter().all(stuck);
            if done || peers.is_empty() || hopeless || tokio::time::Instant::now() >= deadline {
                let mut v = self.status(seq).await;
                v["ok"] = done.into();
                if !done {
                    v["error"] = if peers.is_empty() {
                        "no peers configured".into()
                    } else if peers.iter().all(|p| p.state == LinkState::Paused) {
                        "sync is paused on this node; run 'sovryn resume' first".into()
                    } else if hopeless {
                        let why: Vec<String> = peers
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}: {}",
                                    p.name.as_deref().unwrap_or(&p.id),
                                    p.last_error.as_deref().unwrap_or("paused")
                                )
                            })
                            .collect();
                        format!("no peer can sync: {}", why.join("; ")).into()
                    } else if peers.iter().all(|p| p.connected == 0) {
                        "no peer is connected".into()
                    } else {
                        "timed out waiting for peers".into()
                    };
                }
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `McpStdio` is answered before the match (it takes over the connection).
pub(crate) fn unreachable_answer() -> serde_json::Value {
    serde_json::json!({"ok": false, "error": "mcp_stdio takes over the connection"})
}
