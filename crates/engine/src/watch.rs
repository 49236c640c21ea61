//! Watching the storage root: debounced file-system events turned into the
//! relative paths to rescan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::{self, RecursiveMode};
use notify_debouncer_full::{new_debouncer_opt, DebounceEventResult, Debouncer, NoCache};

use crate::fsutil::TEMP_PREFIX;
use crate::{Error, Result};

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, NoCache>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// The relative path of `abs` under `root`, or `None` for the root itself,
/// paths outside it, names that are not UTF-8, and Sovryn's temp files.
pub fn relative(root: &Path, abs: &Path) -> Option<String> {
    let rel = abs.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        let s = c.as_os_str().to_str()?;
        if s.starts_with(TEMP_PREFIX) {
            return None;
        }
        parts.push(s);
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Watches `root` recursively. `on_change` gets the set of relative paths
/// touched within each debounce window (`""` when the kernel lost events and
/// everything must be rescanned). It runs on the watcher's thread.
pub fn watch(
    root: &Path,
    delay: Duration,
    mut on_change: impl FnMut(Vec<String>) + Send + 'static,
) -> Result<Watcher> {
    let base: PathBuf = root.to_owned();
    let handler = move |res: DebounceEventResult| {
        let mut paths = BTreeSet::new();
        match res {
            Ok(events) => {
                for ev in events {
                    if ev.need_rescan() {
                        paths.insert(String::new());
                    }
                    // Opening and reading (the scanner's own, too) change nothing.
                    if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
                    {
                        continue;
                    }
                    for p in &ev.paths {
                        if let Some(rel) = relative(&base, p) {
                            paths.insert(rel);
                        }
                    }
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!("watcher: {e}");
                }
                paths.insert(String::new());
            }
        }
        if !paths.is_empty() {
            on_change(paths.into_iter().collect());
        }
    };
    let tick = (delay / 4).max(Duration::from_millis(5));
    // Symlinks are never followed: a link to `/` in the folder must not make
    // the watcher walk the whole system, and a link to a directory inside
    // the tree must not take over that directory's watch (inotify shares one
    // watch per inode, and would report its events under the link's path).
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut debouncer = new_debouncer_opt::<_, notify::RecommendedWatcher, _>(
        delay,
        Some(tick),
        handler,
        // No file-id cache: it walks the tree following symlinks, and
        // rename events name both paths, which is all a rescan needs.
        NoCache::new(),
        config,
    )
    .map_err(|e| Error::Config(format!("cannot start the file watcher: {e}")))?;
    debouncer
        .watch(root, RecursiveMode::Recursive)
        .map_err(|e| Error::Config(format!("cannot watch {}: {e}", root.display())))?;
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

/// Watches one file through its directory (non-recursively, so a file
/// replaced by a rename, as `config.toml` is, stays followed): `on_change`
/// runs once per debounce window in which it was written, created, replaced
/// or removed. It runs on the watcher's thread.
pub fn watch_file(
    file: &Path,
    delay: Duration,
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<Watcher> {
    let dir = file
        .parent()
        .ok_or_else(|| Error::Config(format!("{} has no directory", file.display())))?
        .to_owned();
    let name = file.file_name().map(|n| n.to_owned());
    let handler = move |res: DebounceEventResult| {
        let touched = match res {
            Ok(events) => events.iter().any(|ev| {
                !matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
                    && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
            }),
            Err(_) => true,
        };
        if touched {
            on_change();
        }
    };
    let tick = (delay / 4).max(Duration::from_millis(5));
    let mut debouncer = new_debouncer_opt::<_, notify::RecommendedWatcher, _>(
        delay,
        Some(tick),
        handler,
        NoCache::new(),
        notify::Config::default(),
    )
    .map_err(|e| Error::Config(format!("cannot start the file watcher: {e}")))?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Config(format!("cannot watch {}: {e}", dir.display())))?;
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let root = Path::new("/r");
        assert_eq!(
            relative(root, Path::new("/r/a/b.txt")).as_deref(),
            Some("a/b.txt")
        );
        assert_eq!(relative(root, Path::new("/r")), None);
        assert_eq!(relative(root, Path::new("/other/x")), None);
        assert_eq!(
            relative(root, Path::new(&format!("/r/a/{TEMP_PREFIX}0123"))),
            None
        );
    }

    #[test]
    fn reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = watch(&root, Duration::from_millis(50), move |p| {
            let _ = tx.send(p);
        })
        .unwrap();
        let wait_for = |want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut seen = BTreeSet::new();
            while !seen.contains(want) && std::time::Instant::now() < deadline {
                if let Ok(p) = rx.recv_timeout(Duration::from_millis(200)) {
                    seen.extend(p);
                }
            }
            assert!(seen.contains(want), "waiting for {want}, saw {seen:?}");
        };
        // A new directory is reported itself (what is created inside it
        // before its watch is set up is found by scanning it).
        std::fs::create_dir(root.join("d")).unwrap();
        wait_for("d");
        std::fs::write(root.join("d/f.txt"), b"x").unwrap();
        wait_for("d/f.txt");
        std::fs::remove_file(root.join("d/f.txt")).unwrap();
        wait_for("d/f.txt");
    }

    /// inotify watches this process holds (from `/proc/self/fdinfo`).
    fn inotify_watches() -> usize {
        let mut n = 0;
        for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                n += text
                    .lines()
                    .filter(|l| l.starts_with("inotify wd:"))
                    .count();
            }
        }
        n
    }

    #[test]
    fn symlinks_are_never_followed_and_never_blind_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("root");
        let outside = root.with_file_name("outside");
        for d in 0..50 {
            std::fs::create_dir_all(outside.join(format!("d{d}/e"))).unwrap();
        }
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("secret")).unwrap();
        // A link out of the tree, and a link to a directory inside it.
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("docs/dirlink")).unwrap();
        let before = inotify_watches();
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = watch(&root, Duration::from_millis(50), move |p| {
            let _ = tx.send(p);
        })
        .unwrap();
        let added = inotify_watches() - before;
        // root, docs, secret: not the 101 directories behind `out`.
        assert!(added <= 4, "{added} watches for a tree of 3 directories");
        std::fs::write(outside.join("d1/e/x.txt"), b"x").unwrap();
        std::fs::write(root.join("secret/new.txt"), b"x").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = BTreeSet::new();
        while !seen.contains("secret/new.txt") && std::time::Instant::now() < deadline {
            if let Ok(p) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend(p);
            }
        }
        assert!(seen.contains("secret/new.txt"), "saw {seen:?}");
        assert!(
            !seen
                .iter()
                .any(|p| p.starts_with("out/") || p.starts_with("docs/dirlink/")),
            "{seen:?}"
        );
    }
}
