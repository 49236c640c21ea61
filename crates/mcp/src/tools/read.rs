//! Reading tools: files, listings, metadata, search.

use super::*;

fn read_entry(
    node: &dyn View,
    rel: &str,
    version: u64,
    e: &Entry,
    a: &ReadArgs,
    work: &Work,
) -> Result<ReadOut, String> {
    let bytes = load_with(node, rel, e, work)?;
    let size = bytes.len() as u64;
    if !is_text(&bytes) {
        if a.head.is_some() || a.tail.is_some() {
            return Err(format!(
                "{rel} is binary; head/tail work on text. Use offset/length (bytes) instead"
            ));
        }
        let start = a.offset.unwrap_or(0).min(size) as usize;
        let want = a.length.map(|l| l as usize).unwrap_or(usize::MAX);
        let end = start.saturating_add(want).min(bytes.len());
        let cap_end = end.min(start + MAX_READ_BYTES);
        return Ok(ReadOut {
            path: rel.into(),
            version: label(version),
            size,
            encoding: "base64".into(),
            content: base64::engine::general_purpose::STANDARD.encode(&bytes[start..cap_end]),
            total_lines: None,
            start: start as u64,
            truncated: cap_end < end,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let n = lines.len() as u64;
    if [
        a.head.is_some(),
        a.tail.is_some(),
        a.offset.is_some() || a.length.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count()
        > 1
    {
        return Err("use only one of head, tail, or offset/length".into());
    }
    let (start, end) = if let Some(h) = a.head {
        (0, h.min(n))
    } else if let Some(t) = a.tail {
        (n.saturating_sub(t), n)
    } else {
        let s = a.offset.unwrap_or(0).min(n);
        (s, a.length.map(|l| s.saturating_add(l).min(n)).unwrap_or(n))
    };
    let part: String = lines[start as usize..end as usize].concat();
    let cut = cut_utf8(&part, MAX_READ_BYTES);
    Ok(ReadOut {
        path: rel.into(),
        version: label(version),
        size,
        encoding: "utf-8".into(),
        truncated: cut.len() < part.len(),
        content: cut.to_owned(),
        total_lines: Some(n),
        start,
    })
}

#[tool_router(router = read_router, vis = "pub(crate)")]
impl SovrynServer {
    /// Reads a file of the folder (current or past version): text as UTF-8 with
    /// optional line ranges, binary as base64. Large files come in pages.
    #[tool(
        description = "Read a file. Text comes back as UTF-8 (use head/tail, or offset/length in lines, for big files); binary files come back base64-encoded (offset/length in bytes). Content over 512 KiB is cut: check `truncated` and read on with `offset`. `version` (e.g. v2) reads a past version.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_file(
        &self,
        Parameters(a): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        // A small file while the node is free: read it right here, without
        // the hop to the blocking pool (two thread wake-ups, most of the
        // server's time for a 4 KiB read). Anything bigger, or a busy node,
        // goes the usual way.
        if ctx.meta.get_progress_token().is_none() {
            if let Some(reader) = self.shared.state.reads.try_get() {
                confine(&*reader, &rel)?;
                let (n, e) = state_of(&*reader, &rel, a.version.as_deref())?;
                if e.size <= INLINE_READ_BYTES {
                    return read_entry(&*reader, &rel, n, &e, &a, &Work::none()).map(Json);
                }
            }
        }
        self.on_reader_work(&ctx, move |node, work| {
            confine(node, &rel)?;
            let (n, e) = state_of(node, &rel, a.version.as_deref())?;
            read_entry(node, &rel, n, &e, &a, work)
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Read several files at once (up to 50). Each item has either `file` (as read_file returns it) or `error`; one failure does not fail the others.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn read_multiple_files(
        &self,
        Parameters(a): Parameters<ReadManyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ReadManyOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        if a.paths.len() > 50 {
            return Err(format!(
                "{} paths asked for; read at most 50 at a time",
                a.paths.len()
            ));
        }
        self.on_reader_work(&ctx, move |node, work| {
            let mut budget = 4 * MAX_READ_BYTES;
            let mut files = Vec::new();
            let total = a.paths.len() as f64;
            // Each file's chunk loop checks for cancellation without reports
            // of its own: the unit here is files.
            let per_file = work.silent();
            for (i, raw) in a.paths.into_iter().enumerate() {
                work.check()?;
                work.progress(i as f64, Some(total), || format!("reading {raw}"));
                let one = (|| {
                    let rel = scoped_read(&p, &raw)?;
                    confine(node, &rel)?;
                    let (n, e) = state_of(node, &rel, None)?;
                    let args = ReadArgs {
                        path: rel.clone(),
                        version: None,
                        offset: None,
                        length: None,
                        head: None,
                        tail: None,
                    };
                    let mut out = read_entry(node, &rel, n, &e, &args, &per_file)?;
                    if out.content.len() > budget {
                        out.content = cut_utf8(&out.content, budget).to_owned();
                        if out.encoding == "base64" {
                            out.content.truncate(out.content.len() / 4 * 4);
                        }
                        out.truncated = true;
                    }
                    budget -= out.content.len();
                    Ok::<_, String>(out)
                })();
                if one.as_ref().is_err_and(|e| e == CANCELLED) {
                    return Err(CANCELLED.into());
                }
                files.push(match one {
                    Ok(f) => ReadManyItem {
                        path: raw,
                        file: Some(f),
                        error: None,
                    },
                    Err(e) => ReadManyItem {
                        path: raw,
                        file: None,
                        error: Some(e),
                    },
                });
            }
            work.progress(total, Some(total), || "done".into());
            Ok(ReadManyOut { files })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "List a directory's entries, sorted by name, in pages: a header line (`DIR: N entries`, and `(more: cursor C)` when a page follows; pass C as `cursor`), a column line, then one tab-separated line per entry: kind (`file`, `directory` or `symlink`), size in bytes, version, modification time (RFC 3339), name. `limit`: entries per page (default 200, at most 1000). Omit `path` for the root.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_directory(
        &self,
        Parameters(a): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Listing, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_dir(&p, &a.path)?;
        let limit = a.limit.unwrap_or(200).clamp(1, 1000) as usize;
        let start: usize = match &a.cursor {
            Some(c) => c
                .parse()
                .map_err(|_| format!("bad cursor '{c}'; pass next_cursor as given"))?,
            None => 0,
        };
        let listings = self.shared.state.listings.clone();
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let rows = listings
                .get(node, &rel, |rows| {
                    rows.into_iter().map(ListedEntry::from).collect()
                })
                .map_err(|e| match e {
                    sovryn_api::Error::Engine(sovryn_engine::Error::NotFound(_)) => not_found(&rel),
                    e => e.to_string(),
                })?;
            // A file lists as itself; this tool lists directories only.
            if let [only] = &rows[..] {
                if only.path == rel && only.kind != EntryKind::Dir {
                    return Err(format!(
                        "{rel} is a {}, not a directory; use get_file_metadata or read_file",
                        kind_name(only.kind)
                    ));
                }
            }
            let all: Vec<&ListedEntry> = rows.iter().filter(|e| p.scope.visible(&e.path)).collect();
            let total = all.len();
            let page = all.get(start..).unwrap_or_default();
            let page = &page[..page.len().min(limit)];
            let next = start + page.len();
            Ok(Listing {
                path: rel,
                total,
                next_cursor: (next < total).then(|| next.to_string()),
                lines: page.iter().map(|e| e.line.as_str()).collect(),
            })
        })
        .await
    }

    #[tool(
        description = "A recursive tree of a directory (names, kinds, file sizes), down to `max_depth` (default 5) and at most `max_entries` (default 1000).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn directory_tree(
        &self,
        Parameters(a): Parameters<TreeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TreeOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_dir(&p, &a.path)?;
        let max_depth = a.max_depth.unwrap_or(5).clamp(1, 64) as usize;
        let max_entries = a.max_entries.unwrap_or(1000).clamp(1, 100_000) as usize;
        paths::confined(&self.shared.root, &rel).map_err(|e| e.to_string())?;
        let index = self.shared.state.index.clone();
        let ct = ctx.ct.clone();
        tokio::task::spawn_blocking(move || {
            index.read(|all| {
                if !rel.is_empty() {
                    match all.get(&rel) {
                        None => return Err(not_found(&rel)),
                        Some((EntryKind::Dir, _)) => {}
                        Some(_) => return Err(format!("{rel} is not a directory")),
                    }
                }
                let base_depth = if rel.is_empty() {
                    0
                } else {
                    rel.matches('/').count() + 1
                };
                // parent -> (path, kind, size) of its entries, in path order.
                type Kids<'a> = BTreeMap<&'a str, Vec<(&'a str, EntryKind, u64)>>;
                let mut children: Kids = BTreeMap::new();
                let mut count = 0usize;
                let mut truncated = false;
                for (i, (path, (kind, size))) in crate::index::under(all, &rel).enumerate() {
                    if i % 4096 == 4095 && ct.is_cancelled() {
                        return Err(CANCELLED.to_string());
                    }
                    if *path == rel || !p.scope.visible(path) {
                        continue;
                    }
                    if path.matches('/').count() - base_depth >= max_depth {
                        continue;
                    }
                    if count >= max_entries {
                        truncated = true;
                        break;
                    }
                    count += 1;
                    let parent = path.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
                    children
                        .entry(parent)
                        .or_default()
                        .push((path.as_str(), *kind, *size));
                }
                fn build(
                    dir: &str,
                    children: &mut Kids,
                    depth: usize,
                    max: usize,
                ) -> Vec<TreeNode> {
                    let recs = children.remove(dir).unwrap_or_default();
                    recs.into_iter()
                        .map(|(path, kind, size)| {
                            let is_dir = kind == EntryKind::Dir;
                            TreeNode {
                                name: path.rsplit('/').next().unwrap_or_default().to_owned(),
                                kind: kind_name(kind).into(),
                                size: (!is_dir).then_some(size),
                                children: (is_dir && depth + 1 < max)
                                    .then(|| build(path, children, depth + 1, max)),
                            }
                        })
                        .collect()
                }
                let entries = build(&rel, &mut children, 0, max_depth);
                Ok(TreeOut {
                    path: rel.clone(),
                    entries,
                    truncated,
                })
            })?
        })
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map(Json)
    }

    #[tool(
        description = "A path's metadata: kind, size, mode, modification time, version label, number of versions, content hash, who made the version, and its sync state with each configured peer (`sync`: in_sync, pending, incoming, diverged or unknown; listed only for tokens with the status capability).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_file_metadata(
        &self,
        Parameters(a): Parameters<MetaArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<MetaOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let rel = scoped_read(&p, &a.path)?;
        let home = self.shared.home.clone();
        self.on_reader(move |node| {
            confine(node, &rel)?;
            let cur = node
                .store()
                .file(&rel)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| not_found(&rel))?;
            let (n, e) = match &a.version {
                Some(_) => state_of(node, &rel, a.version.as_deref())?,
                None if cur.entry.deleted => {
                    return Err(format!(
                        "{rel} is deleted (last version v{}); see get_version_history",
                        cur.label
                    ))
                }
                None => (cur.label, cur.entry.clone()),
            };
            let versions = node
                .store()
                .versions(&rel)
                .map_err(|e| e.to_string())?
                .len();
            // Peer ids and names are node administration, not file data:
            // only a token that may see the node's status gets them.
            let sync = if p.can(Capability::Status) {
                let peers = current_peers(&home)?;
                let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
                sovryn_engine::peer_state::path_states(node.store(), &rel, &ids)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .zip(&peers)
                    .map(|(st, cfg)| PeerSyncOut {
                        peer: st.peer,
                        name: cfg.name.clone(),
                        state: st.state.into(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Ok(MetaOut {
                path: rel,
                kind: kind_name(e.kind).into(),
                size: e.size,
                mode: format!("{:04o}", e.mode & 0o7777),
                modified: rfc3339(e.mtime_ns),
                version: label(n),
                current_version: label(cur.label),
                versions,
                content_hash: e.content_hash(),
                author: e.author.clone(),
                actor: e.actor.clone(),
                target: e.target.clone(),
                deleted: e.deleted,
                sync,
            })
        })
        .await
        .map(Json)
    }

    #[tool(
        description = "Search files: `query` finds words in file contents (full-text, with snippets, best first); `name` is a glob on file names (`*.md`) or, with a `/`, on paths (`docs/**/*.rs`). Give either or both; `path` limits the search to a directory.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn search_files(
        &self,
        Parameters(a): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SearchOut>, String> {
        let p = self.caller(&ctx, Capability::Read)?;
        let prefix = match &a.path {
            Some(d) => scoped_dir(&p, d)?,
            None => String::new(),
        };
        let limit = a.limit.unwrap_or(20).clamp(1, 200) as usize;
        let glob = match a.name.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(g) => Some(NameGlob::new(g)?),
            None => None,
        };
        let query = a.query.filter(|q| !q.trim().is_empty());
        if query.is_none() && glob.is_none() {
            return Err("give `query` (words in contents) or `name` (a glob), or both".into());
        }
        let name_ok = move |path: &str| glob.as_ref().is_none_or(|g| g.is_match(path));
        let Some(q) = query else {
            // Names only: the in-memory path index, not the node or its records.
            paths::confined(&self.shared.root, &prefix).map_err(|e| e.to_string())?;
            let index = self.shared.state.index.clone();
            let ct = ctx.ct.clone();
            return tokio::task::spawn_blocking(move || {
                index.read(|all| {
                    let mut matches = Vec::new();
                    let mut truncated = false;
                    for (i, (path, (kind, _))) in crate::index::under(all, &prefix).enumerate() {
                        if i % 4096 == 4095 && ct.is_cancelled() {
                            return Err(CANCELLED.to_string());
                        }
                        if path.is_empty() || !p.scope.allows(path) || !name_ok(path) {
                            continue;
                        }
                        if matches.len() >= limit {
                            truncated = true;
                            break;
                        }
                        matches.push(SearchMatch {
                            kind: kind_name(*kind).into(),
                            path: path.clone(),
                            snippet: None,
                        });
                    }
                    Ok(SearchOut { matches, truncated })
                })?
            })
            .await
            .map_err(|e| format!("internal error: {e}"))?
            .map(Json);
        };
        self.on_reader_work(&ctx, move |node, work| {
            let mut matches = Vec::new();
            let mut truncated = false;
            for hit in node
                .store()
                .search(&q, &prefix, 100_000)
                .map_err(|e| e.to_string())?
            {
                if !p.scope.allows(&hit.path) || !name_ok(&hit.path) {
                    continue;
                }
                if matches.len() >= limit {
                    truncated = true;
                    break;
                }
                matches.push(SearchMatch {
                    path: hit.path,
                    kind: "file".into(),
                    snippet: Some(hit.snippet),
                });
            }
            work.check()?;
            Ok(SearchOut { matches, truncated })
        })
        .await
        .map(Json)
    }
}

/// The `name` glob of `search_files`: case-insensitive, on file names, or
/// on whole paths when it holds a `/`.
struct NameGlob {
    glob: globset::GlobMatcher,
    full: bool,
    /// The longest literal run of the glob (lowercase ASCII, 2 bytes or
    /// more), which every match contains: most names are rejected by a
    /// byte search before the glob's regex runs.
    needle: Option<Vec<u8>>,
}

impl NameGlob {
    fn new(g: &str) -> Result<Self, String> {
        let full = g.contains('/');
        let glob = globset::GlobBuilder::new(g)
            .case_insensitive(true)
            .literal_separator(full)
            .build()
            .map_err(|e| format!("bad name glob '{g}': {e}"))?
            .compile_matcher();
        // Classes, alternatives and escapes make runs ambiguous: no needle.
        let needle = if g.contains(['[', ']', '{', '}', '\\']) || !g.is_ascii() {
            None
        } else {
            g.split(['*', '?'])
                .max_by_key(|run| run.len())
                .filter(|run| run.len() >= 2)
                .map(|run| run.to_ascii_lowercase().into_bytes())
        };
        Ok(NameGlob { glob, full, needle })
    }

    fn is_match(&self, path: &str) -> bool {
        let cand = if self.full {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        // Non-ASCII names may case-fold onto ASCII letters: the regex decides.
        if let (Some(n), true) = (&self.needle, cand.is_ascii()) {
            let hay = cand.as_bytes();
            if !hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)) {
                return false;
            }
        }
        self.glob.is_match(cand)
    }
}

#[cfg(test)]
mod name_glob_tests {
    use super::NameGlob;

    #[test]
    fn the_needle_never_rejects_a_match() {
        let cases = [
            ("f0042*.txt", "docs/F0042-report.TXT", true),
            ("f0042*.txt", "docs/f0043.txt", false),
            ("*.md", "a/b/README.MD", true),
            ("*.md", "a/b.md/c.rs", false),
            ("docs/**/*.rs", "docs/x/y/lib.rs", true),
            ("docs/**/*.rs", "src/lib.rs", false),
            ("[ab]c*", "bcd", true),
            ("x?z", "XYZ", true),
        ];
        for (g, path, want) in cases {
            let m = NameGlob::new(g).unwrap();
            assert_eq!(m.is_match(path), want, "{g} on {path}");
        }
        // Whatever the regex does with non-ASCII case folding, the needle
        // does not change the answer.
        for (g, name) in [("ke*", "\u{212A}elvin"), ("stra*", "STRAßE"), ("*ss*", "ẞ")] {
            let plain = globset::GlobBuilder::new(g)
                .case_insensitive(true)
                .build()
                .unwrap()
                .compile_matcher();
            assert_eq!(
                NameGlob::new(g).unwrap().is_match(name),
                plain.is_match(name),
                "{g} on {name}"
            );
        }
        assert!(NameGlob::new("f0042*.txt").unwrap().needle.is_some());
        assert!(NameGlob::new("{a,b}*").unwrap().needle.is_none());
    }
}
