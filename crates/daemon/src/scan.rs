//! Scanning on the node: what the watcher and the periodic rescan record, and what a scan would record now (status).

use super::*;

impl Daemon {
    /// Scans `paths` (`""`: everything) and announces what changed.
    pub async fn rescan(&self, paths: Vec<String>) -> Result<()> {
        Ok(self.scan_paths(paths).await?)
    }

    pub(crate) async fn scan_paths(&self, paths: Vec<String>) -> anyhow::Result<()> {
        let new_ignore_rules = paths
            .iter()
            .any(|p| p.rsplit('/').next() == Some(sovryn_engine::rules::IGNORE_FILE));
        // Files that still look as recorded (most often what this node just
        // wrote itself: a peer's files applied, an agent's write) are left
        // out with a read-only handle, so the writer is not taken to find
        // nothing: between two sync batches it belongs to the next apply.
        let paths = self
            .shared
            .with_view(move |v| still_as_recorded_dropped(v, paths))
            .await?;
        if paths.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let (seq, changed) = self
            .shared
            .with_node_bulk(move |n| {
                // One scan for the whole set: one commit group (one pack sync,
                // one transaction per 2000 files or 16 MiB) instead of one per
                // path. Peers hear of each group as it is committed, so they
                // fetch it while the rest is read (`publish` passes on only
                // a sequence newer than the last).
                // Large files are made durable in steps while read, and
                // each step is passed on, so peers fetch them meanwhile.
                let mut tell = |p: &ScanProgress| match &p.durable {
                    Some((first, chunks)) => shared.announce_durable(&p.current, *first, chunks),
                    None => shared.publish(p.committed, Vec::new()),
                };
                let opts = ScanOptions {
                    announce_large: shared.fetches_ahead(),
                    ..Default::default()
                };
                let changed = match scan_roots(n, paths, &opts, &mut tell) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("scanning: {e}");
                        Vec::new()
                    }
                };
                Ok((n.store.sequence()?, changed))
            })
            .await?;
        tracing::debug!("scan recorded {} changes, sequence {seq}", changed.len());
        return_freed_memory();
        self.shared.publish(seq, changed);
        if new_ignore_rules {
            // What a taken-back line skipped so far comes from the peers.
            self.net.refetch_all().await?;
        }
        Ok(())
    }

    /// What the periodic rescan must look at: paths whose stat differs
    /// from the index, new paths (a new directory as a whole) and recorded
    /// paths gone from disk. Found with a read-only store handle and a
    /// plain walk, so the node's lock is held only to scan what changed.
    pub(crate) async fn changed_on_disk(&self) -> anyhow::Result<Vec<String>> {
        use std::collections::HashMap;
        let recorded: HashMap<String, Option<sovryn_store::DiskStat>> = self
            .shared
            .with_reader(|s| Ok(s.live_disk_stats()?))
            .await?;
        let root = self.root.clone();
        let out = tokio::task::spawn_blocking(move || changed_paths(&root, recorded))
            .await
            .context("walking the folder")?;
        Ok(out)
    }

    /// What a scan would record now (`status` on a running node): the
    /// paths whose stat differs from the index, scanned without recording.
    pub(crate) async fn unrecorded(&self) -> anyhow::Result<Vec<String>> {
        let candidates = self.changed_on_disk().await?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let fallback = candidates.clone();
        let changed = self
            .shared
            .with_node(move |n| {
                let opts = ScanOptions {
                    dry_run: true,
                    ..Default::default()
                };
                Ok(scan_roots(
                    n,
                    candidates,
                    &opts,
                    &mut |_: &ScanProgress| {},
                )?)
            })
            .await;
        // A file changing under the dry run: what differs by its stat is
        // the honest answer until the next look.
        Ok(changed.unwrap_or_else(|e| {
            tracing::debug!("dry-run scan for status: {e}");
            fallback
        }))
    }
}

/// Scans `paths` (reduced by [`roots`], kept by the rules) as one group and
/// returns what changed; when something vanished or became ignored in
/// between, path by path, skipping those.
/// `progress` hears the scan's progress (the sequence of each group as it
/// is committed, the durable chunks of large files).
fn scan_roots(
    n: &mut Node,
    paths: Vec<String>,
    opts: &ScanOptions,
    progress: &mut dyn FnMut(&ScanProgress),
) -> Result<Vec<String>, sovryn_engine::Error> {
    let wanted = scannable(n, roots(paths))?;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    match n.scan(&wanted, opts, progress) {
        Ok(r) => Ok(r.changed),
        Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {
            let mut changed = Vec::new();
            for p in wanted {
                match n.scan(std::slice::from_ref(&p), opts, progress) {
                    Ok(r) => changed.extend(r.changed),
                    Err(sovryn_engine::Error::NotFound(_) | sovryn_engine::Error::Usage(_)) => {}
                    Err(e) => tracing::warn!("scanning {p:?}: {e}"),
                }
            }
            Ok(changed)
        }
        Err(e) => Err(e),
    }
}

/// `paths` without the regular files whose stat is the one recorded when
/// they were last written or scanned (a racy stat is never equal, so such a
/// file is scanned). Directories, new and ignored paths stay.
fn still_as_recorded_dropped(view: &dyn sovryn_engine::View, paths: Vec<String>) -> Vec<String> {
    let (root, store) = (view.root(), view.store());
    paths
        .into_iter()
        .filter(|p| {
            if p.is_empty() || p.rsplit('/').next() == Some(sovryn_engine::rules::IGNORE_FILE) {
                return true;
            }
            let Ok(m) = std::fs::symlink_metadata(root.join(p)) else {
                return true;
            };
            if !m.is_file() {
                return true;
            }
            let now = sovryn_engine::fsutil::stat_of(&m);
            !matches!(
                store.file(p),
                Ok(Some(r)) if !r.entry.deleted && r.disk == Some(now)
            )
        })
        .collect()
}

/// Hands the heap's free pages back to the system. A scan of a large
/// folder allocates and frees hundreds of MB at once, and glibc keeps what
/// was freed: a node with 1,000,000 files indexed stayed at its peak.
pub(crate) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Deletes temp files a killed run left behind (a write never renamed into place).
pub(crate) fn remove_stale_temp_files(root: &std::path::Path) {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(sovryn_engine::fsutil::TEMP_PREFIX))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The paths to scan: `""` alone when everything is wanted, else the set
/// without paths that lie under another one in it.
pub(crate) fn roots(mut paths: Vec<String>) -> Vec<String> {
    if paths.iter().any(|p| p.is_empty()) {
        return vec![String::new()];
    }
    paths.sort();
    paths.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        if let Some(last) = out.last() {
            if p.strip_prefix(last.as_str())
                .is_some_and(|r| r.starts_with('/'))
            {
                continue;
            }
        }
        out.push(p);
    }
    out
}

/// The paths under `root` whose stat differs from `recorded` (path → stat
/// of live records), new paths (a new directory as a whole, not its
/// entries) and recorded paths gone from disk.
pub(crate) fn changed_paths(
    root: &std::path::Path,
    recorded: std::collections::HashMap<String, Option<sovryn_store::DiskStat>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_owned()
        } else {
            root.join(&dir)
        };
        let Ok(rd) = std::fs::read_dir(&abs) else {
            continue;
        };
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(sovryn_engine::fsutil::TEMP_PREFIX) {
                continue;
            }
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            seen.insert(rel.clone());
            let stat = sovryn_engine::fsutil::stat_of(&m);
            match recorded.get(&rel) {
                // New (or ignored): the scan walks it with the rules.
                None => out.push(rel),
                // A directory's own mtime moves with its entries, which
                // are compared one by one.
                Some(Some(d)) if m.is_dir() => {
                    if d.mode != stat.mode {
                        out.push(rel.clone());
                    }
                    stack.push(rel);
                }
                Some(d) => {
                    if *d != Some(stat) {
                        out.push(rel.clone());
                    }
                    if m.is_dir() {
                        stack.push(rel);
                    }
                }
            }
        }
    }
    out.extend(recorded.into_keys().filter(|p| !seen.contains(p)));
    out.sort();
    out
}

/// The roots a scan can take together: `""` (everything) as is; otherwise
/// paths that are on disk and kept by the rules, or gone from disk but
/// recorded (their tombstones). Gone-and-unknown and ignored paths are dropped.
pub(crate) fn scannable(n: &Node, roots: Vec<String>) -> Result<Vec<String>, sovryn_store::Error> {
    n.rules.reload();
    let mut out = Vec::with_capacity(roots.len());
    for mut p in roots {
        if p.is_empty() {
            return Ok(vec![p]);
        }
        // New ignore rules: what they now keep or drop lies beside them.
        if p.rsplit('/').next() == Some(sovryn_engine::rules::IGNORE_FILE) {
            p = p
                .rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default();
            if p.is_empty() {
                return Ok(vec![p]);
            }
        }
        match std::fs::symlink_metadata(n.root().join(&p)) {
            Ok(m) => {
                let is_dir = m.is_dir() && !m.file_type().is_symlink();
                if n.rules.keeps(&p, is_dir) {
                    out.push(p);
                }
            }
            Err(_) => {
                if n.store.file(&p)?.is_some() {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{changed_paths, roots};

    #[test]
    fn changed_paths_finds_what_the_index_lacks() {
        use std::collections::HashMap;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/same.txt"), b"x").unwrap();
        std::fs::write(root.join("d/edited.txt"), b"x").unwrap();
        std::fs::write(root.join("d/e/new.txt"), b"x").unwrap();
        std::fs::create_dir_all(root.join("fresh/deep")).unwrap();
        std::fs::write(root.join("fresh/deep/f"), b"x").unwrap();
        let stat = |rel: &str| {
            Some(sovryn_engine::fsutil::stat_of(
                &std::fs::symlink_metadata(root.join(rel)).unwrap(),
            ))
        };
        let mut recorded = HashMap::new();
        for p in ["d", "d/e", "d/same.txt", "d/edited.txt"] {
            recorded.insert(p.to_string(), stat(p));
        }
        recorded.insert("gone.txt".to_string(), None);
        std::fs::write(root.join("d/edited.txt"), b"longer").unwrap();
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            changed_paths(root, recorded),
            v(&["d/e/new.txt", "d/edited.txt", "fresh", "gone.txt"])
        );
    }

    #[test]
    fn scan_roots() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(roots(v(&["a/b", "a", "ab", "a/c/d"])), v(&["a", "ab"]));
        assert_eq!(roots(v(&["x", ""])), v(&[""]));
    }
}
