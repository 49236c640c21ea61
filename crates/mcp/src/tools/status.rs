//! Status tools: figures and sync state.

use super::*;

#[tool_router(router = status_router, vis = "pub(crate)")]
impl SovrynServer {
    #[tool(
        description = "The node's figures: files, directories, versions, bytes in the tree and in storage, dedup and compression ratios.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_stats(&self, ctx: RequestContext<RoleServer>) -> Result<Json<StatsOut>, String> {
        self.caller(&ctx, Capability::Status)?;
        let node_name = self.shared.node_name.clone();
        self.on_reader(move |node| {
            let s = node.store().stats().map_err(|e| e.to_string())?;
            Ok(StatsOut {
                node_name,
                files: s.files,
                directories: s.dirs,
                symlinks: s.symlinks,
                versions: s.versions,
                tree_bytes: s.tree_bytes,
                logical_bytes: s.logical_bytes,
                stored_bytes: s.stored_bytes,
                dedup_ratio: s.dedup_ratio,
                compression_ratio: s.compression_ratio,
                sequence: s.sequence,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Sync state of this node: change-log sequence, whether sync is paused, how many peers are configured and how many conflict copies are in the folder.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_sync_status(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SyncStatusOut>, String> {
        let p = self.caller(&ctx, Capability::Status)?;
        let (node_name, home) = (self.shared.node_name.clone(), self.shared.home.clone());
        self.on_reader(move |node| {
            Ok(SyncStatusOut {
                node_name,
                sequence: node.store().sequence().map_err(|e| e.to_string())?,
                paused: sovryn_engine::Home { dir: home.clone() }.is_paused(),
                peers: current_peers(&home)?.len(),
                conflicts: visible_conflicts(node, &p)?.len(),
            })
        })
        .await
        .map(Json)
    }
}
