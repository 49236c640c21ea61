//! Which paths this node records and keeps: `.sovrynignore` files (gitignore
//! syntax, at any depth), the config's local ignore patterns, and selective
//! sync (include/exclude). Ignored paths are never recorded nor synced;
//! excluded paths are not kept on this node but their history stays.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::config::SyncConfig;
use crate::fsutil::TEMP_PREFIX;
use crate::{Error, Result};

/// Name of the per-directory ignore file.
pub const IGNORE_FILE: &str = ".sovrynignore";

/// The compiled rules of one node.
pub struct Rules {
    root: PathBuf,
    local_ignore: Gitignore,
    include: Option<Gitignore>,
    exclude: Gitignore,
    dir_files: RefCell<HashMap<String, Option<Gitignore>>>,
}

fn build(root: &Path, patterns: &[String]) -> Result<Gitignore> {
    let mut b = GitignoreBuilder::new(root);
    for p in patterns {
        b.add_line(None, p)
            .map_err(|e| Error::Config(format!("bad pattern '{p}': {e}")))?;
    }
    b.build().map_err(|e| Error::Config(e.to_string()))
}

impl Rules {
    /// Compiles the rules for a storage root.
    pub fn new(root: &Path, sync: &SyncConfig) -> Result<Self> {
        Ok(Rules {
            root: root.to_owned(),
            local_ignore: build(root, &sync.ignore)?,
            include: if sync.include.is_empty() {
                None
            } else {
                Some(build(root, &sync.include)?)
            },
            exclude: build(root, &sync.exclude)?,
            dir_files: RefCell::new(HashMap::new()),
        })
    }

    fn dir_rules(&self, dir: &str) -> Option<Gitignore> {
        if let Some(g) = self.dir_files.borrow().get(dir) {
            return g.clone();
        }
        let abs = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let file = abs.join(IGNORE_FILE);
        let g = if file.is_file() {
            let mut b = GitignoreBuilder::new(&abs);
            match b.add(&file) {
                Some(e) => {
                    tracing::warn!("{}: {e}", file.display());
                    None
                }
                None => b.build().ok(),
            }
        } else {
            None
        };
        self.dir_files
            .borrow_mut()
            .insert(dir.to_owned(), g.clone());
        g
    }

    /// Forgets cached `.sovrynignore` contents (call when one changes).
    pub fn reload(&self) {
        self.dir_files.borrow_mut().clear();
    }

    /// Whether `rel` is ignored: never recorded, never synced.
    pub fn ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if name == IGNORE_FILE || name.starts_with(TEMP_PREFIX) {
            return true;
        }
        if self
            .local_ignore
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
        {
            return true;
        }
        // .sovrynignore files in every ancestor directory, deepest deciding last.
        let parts: Vec<&str> = rel.split('/').collect();
        let mut ignored = false;
        for depth in 0..parts.len() {
            let dir = parts[..depth].join("/");
            if let Some(g) = self.dir_rules(&dir) {
                let sub = parts[depth..].join("/");
                let m = g.matched_path_or_any_parents(&sub, is_dir);
                if m.is_ignore() {
                    ignored = true;
                } else if m.is_whitelist() {
                    ignored = false;
                }
            }
        }
        ignored
    }

    /// Whether selective sync keeps `rel` off this node.
    pub fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        if self
            .exclude
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
        {
            return true;
        }
        match &self.include {
            // Directories stay traversable so included files below them can be reached.
            Some(inc) if !is_dir => !inc.matched_path_or_any_parents(rel, is_dir).is_ignore(),
            _ => false,
        }
    }

    /// Whether this node records and keeps `rel`.
    pub fn keeps(&self, rel: &str, is_dir: bool) -> bool {
        !self.ignored(rel, is_dir) && !self.excluded(rel, is_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_files_config_and_selective_sync() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/gen")).unwrap();
        std::fs::write(root.join(IGNORE_FILE), "*.log\nbuild/\n").unwrap();
        std::fs::write(root.join("src").join(IGNORE_FILE), "gen/\n!keep.log\n").unwrap();
        let sync = SyncConfig {
            ignore: vec!["*.tmp".into()],
            include: vec![],
            exclude: vec!["videos/**".into()],
            ..Default::default()
        };
        let r = Rules::new(root, &sync).unwrap();
        assert!(r.ignored("a.log", false));
        assert!(r.ignored("build", true));
        assert!(r.ignored("build/x.o", false));
        assert!(r.ignored("src/gen", true));
        assert!(!r.ignored("src/keep.log", false));
        assert!(r.ignored("x.tmp", false));
        assert!(r.ignored(".sovrynignore", false));
        assert!(!r.ignored("src/main.rs", false));
        assert!(r.excluded("videos/a.mp4", false));
        assert!(!r.excluded("docs/a.md", false));
        let inc = SyncConfig {
            include: vec!["docs/**".into()],
            ..Default::default()
        };
        let r = Rules::new(root, &inc).unwrap();
        assert!(!r.excluded("docs/a.md", false));
        assert!(r.excluded("other.md", false));
    }
}
