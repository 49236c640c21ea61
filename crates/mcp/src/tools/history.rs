//! History tools: versions, restores, diffs.

use super::*;

#[tool_router(router = history_router, vis = "pub(crate)")]
impl SovrynServer {
    #[tool(
        description = "A path's versions, newest first: label, time, size, author and actor (mcp:<token> for agent writes), deletions and notes. Works for deleted paths too.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_version_history(
        &self,
        Parameters(a): Parameters<HistoryArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<HistoryOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        let limit = a.limit.unwrap_or(50).clamp(1, 10_000) as usize;
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let cur = node
                .store()
                .file(&rel)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| not_found(&rel))?;
            let versions = node
                .store()
                .versions(&rel)
                .map_err(|e| e.to_string())?
                .iter()
                .take(limit)
                .map(sovryn_api::version_info)
                .collect();
            Ok(HistoryOut {
                path: rel,
                current: label(cur.label),
                versions,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Bring back a past version of a file (also of a deleted one) as a new version; nothing in the history is lost.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn restore_version(
        &self,
        Parameters(a): Parameters<RestoreArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RestoreOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let spec = a.version.trim().to_owned();
        let actor = p.actor();
        let r = rel.clone();
        let (rec, n) = self
            .on_node_work(&ctx, move |node, work| {
                confine(node, &r)?;
                node.store
                    .file(&r)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| not_found(&r))?;
                // A label (`v2`) or a version id (the same on every node).
                let old = node.find_version(&r, &spec).map_err(|e| e.to_string())?;
                let n = old.label;
                // First read and check every chunk of the version (the long
                // part, cancellable, with progress); nothing is written yet.
                // Then capture + restore run to the end: the file is either
                // restored as a new version or untouched.
                let total = old.entry.size as f64;
                let mut done = 0u64;
                work.progress(0.0, Some(total), || format!("checking v{n} of {r}"));
                for id in &old.entry.chunks {
                    work.check()?;
                    done += node.store.read_chunk(id).map_err(|e| e.to_string())?.len() as u64;
                    work.progress(done as f64, Some(total), || {
                        format!("checked {done} of {} bytes of v{n}", old.entry.size)
                    });
                }
                work.check()?;
                node.capture(&r).map_err(|e| e.to_string())?;
                node.restore(&r, &format!("v{n}"), Some(&actor))
                    .map(|rec| (rec, n))
                    .map_err(|e| e.to_string())
            })
            .await?;
        self.changed([rel.clone()]);
        Ok(Json(RestoreOut {
            path: rel,
            version: label(rec.label),
            restored_from: label(n),
        }))
    }

    #[tool(
        description = "A unified diff between two versions of a file (`to` defaults to the current version).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn diff_versions(
        &self,
        Parameters(a): Parameters<DiffArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DiffOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let (na, ea) = state_of(node, &rel, Some(&a.from))?;
            let (nb, eb) = state_of(node, &rel, a.to.as_deref())?;
            let (la, lb) = (label(na), label(nb));
            let diff = node
                .diff(&rel, (&la, &ea), (&lb, &eb))
                .map_err(|e| e.to_string())?;
            Ok(DiffOut {
                path: rel,
                from: la,
                to: lb,
                diff,
            })
        })
        .await
        .map(Json)
    }
}
