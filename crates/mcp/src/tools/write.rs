//! Writing tools: every write records a version and reaches the peers.

use super::*;

#[tool_router(router = write_router, vis = "pub(crate)")]
impl SovrynServer {
    #[tool(
        description = "Create or overwrite a file with the given content (parent directories are created). Every write is a new version: the old content stays in the history and can be restored. `encoding`: utf-8 (default) or base64 for binary.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn write_file(
        &self,
        Parameters(a): Parameters<WriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WriteOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let bytes = match a.encoding {
            Encoding::Utf8 => a.content.into_bytes(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(a.content.trim())
                .map_err(|e| format!("content is not valid base64: {e}"))?,
        };
        if bytes.len() > MAX_WRITE_BYTES {
            return Err(format!(
                "content is {} bytes; the most one write takes is {MAX_WRITE_BYTES}",
                bytes.len()
            ));
        }
        let actor = p.actor();
        let writer = self.shared.state.node.clone();
        let r = rel.clone();
        let started = std::time::Instant::now();
        // Through the writer's queue: agents writing at once share a commit.
        let written =
            tokio::task::spawn_blocking(move || writer.write_file(&r, bytes, Some(actor), None))
                .await
                .map_err(|e| format!("internal error: {e}"))?
                .map_err(|e| e.to_string())?;
        metrics::histogram!("file_write_duration_seconds", "via" => "mcp")
            .record(started.elapsed().as_secs_f64());
        let rec = written.record;
        let out = WriteOut {
            path: rec.path,
            version: label(rec.label),
            size: rec.entry.size,
            content_hash: rec.entry.content_hash(),
            created: written.created,
        };
        self.changed([rel]);
        Ok(Json(out))
    }

    #[tool(
        description = "Edit a text file by exact-text replacement: each `old_text` must occur exactly once (include surrounding lines to make it unique) and is replaced by `new_text`, in order. Returns a unified diff. With `dry_run` nothing is written. The previous content stays in the history.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn edit_file(
        &self,
        Parameters(a): Parameters<EditArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<EditOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        if a.edits.is_empty() {
            return Err("no edits given".into());
        }
        let actor = p.actor();
        if a.dry_run {
            let (r, edits) = (rel.clone(), a.edits);
            let plan = self
                .on_node(move |node| {
                    node.capture(&r).map_err(|e| e.to_string())?;
                    edit_plan(node, &r, &edits)
                })
                .await?;
            return Ok(Json(EditOut {
                path: rel,
                diff: plan.diff,
                dry_run: true,
                version: None,
            }));
        }
        // Made from a read-only view, written through the writer's queue
        // (a group commit) on condition that the file is still the version
        // read: a write in between, or an edit on disk recorded first,
        // makes it read again.
        let edits = Arc::new(a.edits);
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            if attempt > EDIT_ATTEMPTS {
                // Still racing other writers: under the writer, where nothing
                // comes in between.
                let (r, e) = (rel.clone(), edits.clone());
                break self
                    .on_node(move |node| {
                        node.capture(&r).map_err(|e| e.to_string())?;
                        let plan = edit_plan(node, &r, &e)?;
                        let version = if plan.new == plan.old {
                            None
                        } else {
                            let rec = node
                                .write_file(&r, plan.new.as_bytes(), Some(&actor))
                                .map_err(|e| e.to_string())?;
                            Some(label(rec.label))
                        };
                        Ok(EditOut {
                            path: r,
                            diff: plan.diff,
                            dry_run: false,
                            version,
                        })
                    })
                    .await?;
            }
            let (r, e) = (rel.clone(), edits.clone());
            let plan = self.on_reader(move |view| edit_plan(view, &r, &e)).await?;
            if plan.new == plan.old {
                break EditOut {
                    path: rel.clone(),
                    diff: plan.diff,
                    dry_run: false,
                    version: None,
                };
            }
            let writer = self.shared.state.node.clone();
            let (r, actor2) = (rel.clone(), actor.clone());
            let written = tokio::task::spawn_blocking(move || {
                writer.write_file(&r, plan.new.into_bytes(), Some(actor2), Some(plan.label))
            })
            .await
            .map_err(|e| format!("internal error: {e}"))?;
            match written {
                Ok(w) => {
                    break EditOut {
                        path: rel.clone(),
                        diff: plan.diff,
                        dry_run: false,
                        version: Some(label(w.record.label)),
                    }
                }
                Err(sovryn_engine::Error::Stale(_)) => continue,
                Err(e) => return Err(e.to_string()),
            }
        };
        if out.version.is_some() {
            self.changed([rel]);
        }
        Ok(Json(out))
    }

    #[tool(
        description = "Create a directory and any missing parents. Succeeds if it exists already.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn create_directory(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CreateDirOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let actor = p.actor();
        let r = rel.clone();
        let made = self
            .on_node(move |node| node.create_dir(&r, Some(&actor)).map_err(|e| e.to_string()))
            .await?;
        let created = !made.is_empty();
        self.changed(made.into_iter().map(|r| r.path));
        Ok(Json(CreateDirOut { path: rel, created }))
    }

    #[tool(
        description = "Delete a file, symlink or directory (`recursive` for a non-empty directory). Deleted paths keep their history: restore_version brings them back.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn delete_file(
        &self,
        Parameters(a): Parameters<DeleteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DeleteOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let actor = p.actor();
        let recs = self
            .on_node(move |node| {
                if !p.scope.is_all() {
                    let outside = node
                        .store
                        .live_paths_under(&rel)
                        .map_err(|e| e.to_string())?
                        .iter()
                        .any(|(path, _, _)| !p.scope.allows(path));
                    if outside {
                        return Err(format!("{rel} holds paths outside this token's scope; delete inside it instead"));
                    }
                }
                node.delete_path(&rel, a.recursive, Some(&actor)).map_err(|e| e.to_string())
            })
            .await?;
        let deleted: Vec<String> = recs.into_iter().map(|r| r.path).collect();
        self.changed(deleted.clone());
        Ok(Json(DeleteOut { deleted }))
    }

    #[tool(
        description = "Move or rename a file or directory. The destination must not exist. History stays with the old path; the new path's first version notes where it came from.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn move_file(
        &self,
        Parameters(a): Parameters<MoveArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<MoveOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let from = scoped(&p, &a.source)?;
        let to = scoped(&p, &a.destination)?;
        let actor = p.actor();
        let (f, t) = (from.clone(), to.clone());
        let recs = self
            .on_node(move |node| {
                if !p.scope.is_all() {
                    let outside = node
                        .store
                        .live_paths_under(&f)
                        .map_err(|e| e.to_string())?
                        .iter()
                        .any(|(path, _, _)| !p.scope.allows(path));
                    if outside {
                        return Err(format!("{f} holds paths outside this token's scope"));
                    }
                }
                node.move_path(&f, &t, Some(&actor))
                    .map_err(|e| e.to_string())
            })
            .await?;
        let moved = recs
            .iter()
            .filter(|r| !r.entry.deleted && (r.path == to || r.path.starts_with(&format!("{to}/"))))
            .count();
        self.changed(recs.into_iter().map(|r| r.path));
        Ok(Json(MoveOut {
            source: from,
            destination: to,
            entries_moved: moved,
        }))
    }

    #[tool(
        description = "Rescan a file or directory on disk now and record what changed (edits not recorded yet), so a running node sends them to its peers. Returns what was recorded.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn force_sync_path(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ForceSyncOut>, String> {
        let p = self.caller(&ctx, Capability::Write)?;
        let rel = scoped(&p, &a.path)?;
        let opts = ScanOptions {
            actor: Some(p.actor()),
            ..Default::default()
        };
        let (out, cancelled) = self
            .on_node_work(&ctx, move |node, work| {
                confine(node, &rel)?;
                let (r, cancelled) = rescan(node, &rel, &p.scope, &opts, work)?;
                Ok((
                    ForceSyncOut {
                        path: rel,
                        entries: r.entries,
                        added: r.added,
                        modified: r.modified,
                        deleted: r.deleted,
                        changed: r.changed,
                        sequence: node.store.sequence().map_err(|e| e.to_string())?,
                    },
                    cancelled,
                ))
            })
            .await?;
        // What was recorded before a cancellation is announced all the same.
        self.changed(out.changed.iter().cloned());
        if cancelled {
            return Err(CANCELLED.into());
        }
        Ok(Json(out))
    }
}

/// Paths one scan of a large rescan takes (one commit group at most).
const RESCAN_BATCH: usize = 256;

/// Rescans `rel` for `force_sync_path`. A directory is split into batches of
/// its leaves (files, links, empty directories, and recorded paths gone
/// from disk), scanned one after the other, so a cancellation stops between
/// batches and progress counts paths. Each recorded version is a whole,
/// stable read of a file (the scanner never records a torn one); what a
/// cancelled rescan did not reach is left for the next scan. Returns the
/// merged report and whether it was cancelled. Only paths in `scope` are
/// scanned: a token never records (nor learns the names of) what lies
/// outside it.
fn rescan(
    node: &mut Node,
    rel: &str,
    scope: &crate::tokens::PathScope,
    opts: &ScanOptions,
    work: &Work,
) -> Result<(sovryn_engine::scan::ScanReport, bool), String> {
    let abs = node.root().join(rel);
    let is_dir = std::fs::symlink_metadata(&abs)
        .map(|m| m.is_dir() && !m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_dir {
        work.progress(0.0, Some(1.0), || format!("scanning {rel}"));
        let r = node
            .scan(&[rel.to_owned()], opts, &mut |_| {})
            .map_err(|e| e.to_string())?;
        work.progress(1.0, Some(1.0), || format!("scanned {rel}"));
        return Ok((r, false));
    }
    node.rules.reload();
    let mut leaves = rescan_leaves(node, rel)?;
    if !scope.is_all() {
        leaves.retain(|p| scope.allows(p));
        if leaves.is_empty() {
            // Scanning the directory itself would walk what lies below it.
            return Ok((sovryn_engine::scan::ScanReport::default(), false));
        }
    }
    let total = leaves.len() as f64;
    let mut report = sovryn_engine::scan::ScanReport::default();
    work.progress(0.0, Some(total), || {
        format!("scanning {} paths under {}", leaves.len(), display(rel))
    });
    if leaves.is_empty() {
        // Nothing below: scan the directory itself (its own record).
        let r = node
            .scan(&[rel.to_owned()], opts, &mut |_| {})
            .map_err(|e| e.to_string())?;
        return Ok((r, false));
    }
    let mut done = 0usize;
    for batch in leaves.chunks(RESCAN_BATCH) {
        if work.cancelled() {
            return Ok((report, true));
        }
        let r = match node.scan(batch, opts, &mut |_| {}) {
            Ok(r) => r,
            // Something vanished or became ignored meanwhile: path by path.
            Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                let mut merged = sovryn_engine::scan::ScanReport::default();
                for p in batch {
                    match node.scan(std::slice::from_ref(p), opts, &mut |_| {}) {
                        Ok(r) => merge_report(&mut merged, r),
                        Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                merged
            }
            Err(e) => return Err(e.to_string()),
        };
        merge_report(&mut report, r);
        done += batch.len();
        work.progress(done as f64, Some(total), || {
            format!(
                "scanned {done} of {} paths under {}",
                leaves.len(),
                display(rel)
            )
        });
    }
    Ok((report, false))
}

fn display(rel: &str) -> &str {
    if rel.is_empty() {
        "/"
    } else {
        rel
    }
}

fn merge_report(into: &mut sovryn_engine::scan::ScanReport, r: sovryn_engine::scan::ScanReport) {
    into.entries += r.entries;
    into.added += r.added;
    into.modified += r.modified;
    into.deleted += r.deleted;
    into.unstable += r.unstable;
    into.bytes_hashed += r.bytes_hashed;
    let room = 1000usize.saturating_sub(into.changed.len());
    into.changed.extend(r.changed.into_iter().take(room));
}

/// The leaves under directory `rel` for a batched rescan: kept files,
/// links and empty directories on disk, and recorded live paths gone from
/// disk (only the topmost of a gone subtree), sorted.
fn rescan_leaves(node: &Node, rel: &str) -> Result<Vec<String>, String> {
    let root = node.root().to_owned();
    let mut on_disk = std::collections::HashSet::new();
    let mut leaves = Vec::new();
    let mut stack = vec![rel.to_owned()];
    while let Some(dir) = stack.pop() {
        let abs = root.join(&dir);
        let Ok(rd) = std::fs::read_dir(&abs) else {
            continue;
        };
        let mut kept_children = 0usize;
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(sovryn_engine::fsutil::TEMP_PREFIX) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            let is_dir = ft.is_dir() && !ft.is_symlink();
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if !node.rules.keeps(&path, is_dir) {
                continue;
            }
            kept_children += 1;
            on_disk.insert(path.clone());
            if is_dir {
                stack.push(path);
            } else {
                leaves.push(path);
            }
        }
        if kept_children == 0 && dir != rel {
            leaves.push(dir);
        }
    }
    let mut gone: Vec<String> = node
        .store
        .live_paths_under(rel)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| p != rel && !on_disk.contains(p))
        .collect();
    gone.sort();
    let mut top: Vec<String> = Vec::new();
    for p in gone {
        if top.last().is_some_and(|t| {
            p.strip_prefix(t.as_str())
                .is_some_and(|r| r.starts_with('/'))
        }) {
            continue;
        }
        top.push(p);
    }
    leaves.extend(top);
    leaves.sort();
    Ok(leaves)
}

/// Times `edit_file` tries to apply its edits from a read-only view before
/// doing it under the writer (when other writers keep changing the file).
const EDIT_ATTEMPTS: u32 = 3;

/// An edit worked out against a file's current version.
struct EditPlan {
    label: u64,
    old: String,
    new: String,
    diff: String,
}

/// Applies `edits` in order to the current text of `r`: each `old_text`
/// must occur exactly once in the text the edits before it left.
fn edit_plan(view: &dyn View, r: &str, edits: &[Edit]) -> Result<EditPlan, String> {
    confine(view, r)?;
    let rec = live(view, r)?;
    let bytes = load_text_or_bytes(view, r, &rec.entry)?;
    if !is_text(&bytes) {
        return Err(format!("{r} is not a UTF-8 text file; use write_file"));
    }
    let old = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    let mut new = old.clone();
    for (i, e) in edits.iter().enumerate() {
        if e.old_text.is_empty() {
            return Err(format!("edit {}: old_text is empty", i + 1));
        }
        match new.matches(&e.old_text).count() {
            0 => return Err(format!("edit {}: old_text was not found in {r} (after the edits before it); read the file and copy the text exactly", i + 1)),
            1 => new = new.replacen(&e.old_text, &e.new_text, 1),
            n => return Err(format!("edit {}: old_text occurs {n} times in {r}; include more surrounding text so it occurs once", i + 1)),
        }
    }
    let diff = similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{r}@v{}", rec.label), &format!("{r}@edited"))
        .to_string();
    Ok(EditPlan {
        label: rec.label,
        old,
        new,
        diff,
    })
}
