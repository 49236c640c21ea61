//! Conflict tools: listing and resolving conflict copies.

use super::*;

#[tool_router(router = conflicts_router, vis = "pub(crate)")]
impl SovrynServer {
    #[tool(
        description = "Conflict copies in the folder (`name.sync-conflict-<time>-<node>.ext`): each copy, its original, the node and time of the write it holds. Resolve them with resolve_conflict.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_conflicts(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ConflictsOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        self.on_reader(move |node| {
            Ok(ConflictsOut {
                conflicts: visible_conflicts(node, &p)?
                    .into_iter()
                    .map(ConflictOut::from)
                    .collect(),
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Resolve a conflict copy (`path`: the copy, or an original with exactly one copy). `keep`: `local` keeps the original and deletes the copy, `remote` puts the copy's content in the original and deletes the copy, `both` renames the copy to `name.from-<node>.ext`. Everything stays in the history.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn resolve_conflict(
        &self,
        Parameters(a): Parameters<ResolveArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ResolveOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let actor = p.actor();
        let res = self
            .on_node(move |node| {
                confine(node, &rel)?;
                let copy = visible_copy_for(node, &p, &rel)?;
                node.resolve_conflict(&copy, a.keep.into(), Some(&actor))
                    .map_err(|e| e.to_string())
            })
            .await?;
        self.changed(res.changed.iter().cloned());
        Ok(Json(ResolveOut {
            copy: res.copy,
            original: res.original,
            renamed_to: res.renamed_to,
            changed: res.changed,
        }))
    }
}

/// The conflict copy `rel` names (the copy, or an original with one copy),
/// among those `p` may see; its original must be in the scope too.
pub(crate) fn visible_copy_for(
    node: &dyn View,
    p: &Principal,
    rel: &str,
) -> Result<String, String> {
    let all = visible_conflicts(node, p)?;
    let copy = match all.iter().find(|c| c.path == rel) {
        Some(c) => c,
        None => match all
            .iter()
            .filter(|c| c.original == rel)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [one] => *one,
            [] => {
                return Err(format!(
                    "{rel} is not a conflict copy and has none (see list_conflicts)"
                ))
            }
            many => {
                return Err(format!(
                    "{rel} has {} conflict copies; name one: {}",
                    many.len(),
                    many.iter()
                        .map(|c| c.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        },
    };
    if !p.scope.allows(&copy.original) {
        return Err(format!(
            "{}: outside the paths this token may use",
            copy.original
        ));
    }
    Ok(copy.path.clone())
}
