//! Peer tools: node administration (unscoped admin tokens only).

use super::*;

#[tool_router(router = peers_router, vis = "pub(crate)")]
impl SovrynServer {
    #[tool(
        description = "The peers this node syncs with, from its configuration: endpoint id, name, addresses, read-only flag and path prefixes.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_peers(&self, ctx: RequestContext<RoleServer>) -> Result<Json<PeersOut>, String> {
        self.caller(&ctx, Capability::Status)?;
        let home = self.shared.home.clone();
        self.on_reader(move |_| {
            Ok(PeersOut {
                peers: current_peers(&home)?
                    .into_iter()
                    .map(PeerOut::from)
                    .collect(),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Add a peer to sync with (or replace the one with the same id): its endpoint id (64 hex digits), addresses (`HOST:PORT`), optional name, read-only flag and path prefixes. A running node picks the change up within a second.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn add_peer(
        &self,
        Parameters(a): Parameters<AddPeerArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<AddPeerOut>, String> {
        let p = self.granter(&ctx, "add_peer")?;
        let id = a.endpoint_id.trim();
        let key: PublicKey = id
            .parse()
            .map_err(|e| format!("'{id}' is not an endpoint id (64 hex digits): {e}"))?;
        let peer = PeerConfig::checked(
            &key,
            a.addresses,
            a.name,
            a.read_only.unwrap_or(false),
            &a.paths.unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        // A peer gets read (and, unless read-only, write) over its paths: the
        // caller must hold all of that itself.
        let granted: Vec<Capability> = if peer.read_only {
            vec![Capability::Read]
        } else {
            vec![Capability::Read, Capability::Write]
        };
        let globs: Vec<String> = peer.paths.iter().map(|p| format!("{p}/**")).collect();
        let scope = crate::tokens::PathScope::new(&globs).map_err(|e| e.to_string())?;
        if !p.may_grant(&granted, &scope) {
            return Err("a token cannot give a peer more than it holds itself".into());
        }
        self.on_node(move |node| {
            let me = sovryn_engine::identity::load(&node.home.identity())
                .map_err(|e| e.to_string())?
                .public();
            if key == me {
                return Err("that is this node's own endpoint id".into());
            }
            let (updated, peer) = edit_peers(node, |config| Ok(config.upsert_peer(peer)))?;
            Ok(AddPeerOut {
                peer: peer.into(),
                updated,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Stop syncing with a peer: removes it (by endpoint id or name) from the configuration. A running node drops it within a second.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn remove_peer(
        &self,
        Parameters(a): Parameters<RemovePeerArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RemovePeerOut>, String> {
        self.granter(&ctx, "remove_peer")?;
        let which = a.endpoint_id_or_name.trim().to_owned();
        self.on_node(move |node| {
            let removed = edit_peers(node, |config| {
                let gone: Vec<String> = config
                    .peers
                    .iter()
                    .filter(|p| p.id == which || p.name.as_deref() == Some(which.as_str()))
                    .map(|p| p.id.clone())
                    .collect();
                config
                    .remove_peer(&which)
                    .map_err(|_| format!("no peer '{which}' (see get_peers)"))?;
                Ok(gone)
            })?;
            Ok(RemovePeerOut {
                removed,
                peers: node.config.peers.len(),
            })
        })
        .await
        .map(Json)
    }
}

/// Lets `f` edit the peers of `config.toml` (under its lock; a running
/// daemon reloads it) and updates the node's copy.
fn edit_peers<T>(
    node: &mut Node,
    f: impl FnOnce(&mut Config) -> Result<T, String>,
) -> Result<T, String> {
    let mut refused = None;
    let (out, peers) = Config::update(&node.home, |config| {
        match f(config) {
            Ok(out) => Ok((out, config.peers.clone())),
            Err(e) => {
                // Nothing is saved: the edit was refused.
                refused = Some(e);
                Err(sovryn_engine::Error::Usage(String::new()))
            }
        }
    })
    .map_err(|e| refused.take().unwrap_or_else(|| e.to_string()))?;
    node.config.peers = peers;
    Ok(out)
}
