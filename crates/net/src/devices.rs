//! Gossip of the folder's signed device list (`sovryn_engine::devices`):
//! each session sends this node's operations when it starts and whenever
//! the list or the configured peers change, and merges the peer's. What
//! the merged list says is written into the folder's configured peers (a
//! member another member added is trusted here; a revoked one is removed),
//! and the daemon applies the config as it applies any other edit.

use super::*;
use sovryn_engine::devices::{apply_to_config, rotate_after_revocation, DeviceList, DeviceOp};

impl SyncNet {
    /// This node's operations for the folder, after vouching for every
    /// configured peer it has not vouched for yet.
    async fn device_ops(&self) -> Result<Vec<DeviceOp>, Error> {
        let folder = self.folder_id.clone();
        self.shared
            .with_node_bulk(move |n| {
                let peers = sovryn_engine::Config::load(&n.home)?.peers;
                Ok(DeviceList::update(&n.home, |list| {
                    list.vouch(&folder, &n.secret, &peers);
                    Ok(list.ops.clone())
                })?)
            })
            .await
    }

    /// Whether `peer` is configured here with full rights (not read-only,
    /// not limited to some paths).
    fn full_member(&self, peer: &EndpointId) -> bool {
        self.rights(peer)
            .is_ok_and(|p| !p.read_only && p.paths.is_empty())
    }

    /// Sends the device list (and, to a full member on the node's first
    /// folder, the vault) now and after every change, while the session
    /// lasts (never returns for a peer that hears neither).
    pub(crate) async fn send_devices(
        &self,
        peer: EndpointId,
        send: ControlSend,
        hears: bool,
        hears_vault: bool,
    ) -> Result<()> {
        if !hears {
            return std::future::pending().await;
        }
        let mut changed = self.devices_changed.subscribe();
        loop {
            let ops = self.device_ops().await?;
            send.send_devices(&Msg::Devices { ops }).await?;
            // The vault is the node's, sent on its first folder's sessions,
            // to full members only.
            if hears_vault && self.owner && self.full_member(&peer) {
                let envelope = self
                    .shared
                    .with_node(|n| Ok(sovryn_engine::vault::load_envelope(&n.home)?))
                    .await?;
                if let Some(envelope) = envelope {
                    send.send(&Msg::Vault { envelope }).await?;
                }
            }
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Merges operations a peer (or a backup node relaying them) sent;
    /// when any was new, writes what the list now says into the configured
    /// peers and tells the other sessions. Each is checked: only one
    /// signed by a device this node trusts counts.
    pub async fn merge_devices(&self, from: &EndpointId, ops: Vec<DeviceOp>) -> Result<()> {
        let folder = self.folder_id.clone();
        let me = self.endpoint.id();
        let (new, config_changed) = self
            .shared
            .with_node_bulk(move |n| {
                let peers = sovryn_engine::Config::load(&n.home)?.peers;
                let roots = sovryn_engine::devices::signing_roots(&me, &peers);
                let (new, list) = DeviceList::update(&n.home, |list| {
                    Ok((list.merge(&folder, &roots, ops), list.clone()))
                })?;
                if new == 0 {
                    return Ok((0, false));
                }
                // A revocation this node has no newer seal epoch for (the
                // revoker's has not reached it): it starts one itself.
                if rotate_after_revocation(&mut n.store, &list)? {
                    tracing::info!("device list: a revocation; new seal epoch started");
                }
                Ok((new, apply_to_config(&n.home, &me, &list)?))
            })
            .await?;
        // In force before this returns (a revoked device gets nothing
        // more), not when the daemon's config watcher gets to it.
        if config_changed {
            match self.config_hook.get() {
                Some(apply) => apply().await,
                None => {
                    let peers = self
                        .shared
                        .with_node(|n| Ok(sovryn_engine::Config::load(&n.home)?.peers))
                        .await?;
                    self.set_peers(&peers);
                }
            }
        }
        if new > 0 {
            tracing::info!(
                "device list: {new} new operation(s) from {}{}",
                from.fmt_short(),
                if config_changed {
                    "; peers updated"
                } else {
                    ""
                }
            );
            self.devices_changed.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Merges a peer's vault into this node's; when it changed, the other
    /// sessions send it on.
    pub(crate) async fn merge_vault(
        &self,
        from: &EndpointId,
        envelope: sovryn_engine::vault::Envelope,
    ) -> Result<()> {
        if !self.owner || !self.full_member(from) {
            return Ok(());
        }
        let (home, wrap) = self
            .shared
            .with_node(|n| {
                Ok((
                    n.home.clone(),
                    sovryn_engine::vault::KeyWrap::of(n.store.codec().keys()),
                ))
            })
            .await?;
        let changed = tokio::task::spawn_blocking(move || {
            sovryn_engine::vault::merge_received(&home, &wrap, &envelope)
        })
        .await
        .context("vault merge panicked")?;
        match changed {
            Ok(true) => {
                tracing::info!("vault: merged a newer copy from {}", from.fmt_short());
                self.devices_changed.send_modify(|v| *v += 1);
            }
            Ok(false) => {}
            // Not fatal to the session: a peer with another vault (or a
            // damaged copy) does not stop sync.
            Err(e) => tracing::warn!("vault from {}: {e}", from.fmt_short()),
        }
        Ok(())
    }
}
