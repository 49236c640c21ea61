//! Confining paths to the storage root.
//!
//! Every path from a user, a peer or an agent passes through here before it
//! touches the disk or the index. A relative path is `/`-separated with no
//! `.`/`..` components, no NUL, no leading `/`; `""` is the root.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// Normalises a path given relative to the storage root (by a peer or an agent).
pub fn normalize_rel(raw: &str) -> Result<String> {
    if raw.contains('\0') {
        return Err(Error::BadPath(format!("path contains a NUL byte: {raw:?}")));
    }
    if raw.starts_with('/')
        || raw.starts_with('\\')
        || (raw.len() >= 2 && raw.as_bytes()[1] == b':')
    {
        return Err(Error::BadPath(format!(
            "absolute paths are not allowed here: {raw}"
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(Error::Escape(raw.to_owned())),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Longest relative path accepted from a peer (Linux's `PATH_MAX`).
pub const MAX_REL_PATH: usize = 4096;
/// Longest path component accepted from a peer (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// A relative path known to be good: already normalised (no `.`, `..`,
/// empty or absolute components, no NUL, no backslash), not the root, not
/// one of Sovryn's temp names, within Linux's length limits. Peers' paths
/// are parsed into it once, at the boundary, so nothing behind it can hold
/// a bad one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Accepts `raw` only when it is already in normal form.
    pub fn parse(raw: &str) -> Result<Self> {
        let normal = normalize_rel(raw)?;
        if normal != raw {
            return Err(Error::BadPath(format!("not a normalised path: {raw:?}")));
        }
        if raw.is_empty() {
            return Err(Error::BadPath("the storage root itself".into()));
        }
        if raw.len() > MAX_REL_PATH {
            return Err(Error::BadPath(format!(
                "path longer than {MAX_REL_PATH} bytes"
            )));
        }
        for part in raw.split('/') {
            if part.len() > MAX_NAME {
                return Err(Error::BadPath(format!(
                    "a name longer than {MAX_NAME} bytes: {raw:?}"
                )));
            }
            if part.starts_with(crate::fsutil::TEMP_PREFIX) {
                return Err(Error::BadPath(format!("a temp file name: {raw:?}")));
            }
        }
        Ok(RelPath(normal))
    }

    /// The path as `/`-separated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves a path a user typed: relative to `cwd` when that lies inside the
/// storage root, else relative to the root; an absolute path must lie inside.
pub fn resolve_user_path(root: &Path, cwd: &Path, raw: &str) -> Result<String> {
    if raw.contains('\0') {
        return Err(Error::BadPath("path contains a NUL byte".into()));
    }
    let root = canonical_or_self(root);
    let given = Path::new(raw);
    let (base, rest): (Vec<String>, &Path) = if given.is_absolute() {
        (Vec::new(), given)
    } else {
        let cwd = canonical_or_self(cwd);
        match cwd.strip_prefix(&root) {
            Ok(inside) => (
                inside
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect(),
                given,
            ),
            Err(_) => {
                // Outside the folder: the path from here, when it lands
                // inside (`../Sovryn/notes.md`); else from the folder's root.
                let from_here = lexical_normalize(&cwd.join(given));
                if let Ok(inside) = from_here.strip_prefix(&root) {
                    return normalize_rel(&inside.to_string_lossy());
                }
                (Vec::new(), given)
            }
        }
    };
    let mut parts = base;
    let rest_components: Vec<Component> = if rest.is_absolute() {
        let lexical = lexical_normalize(rest);
        let stripped = lexical
            .strip_prefix(&root)
            .or_else(|_| lexical.strip_prefix(crate::config::absolute(&root).unwrap_or_default()))
            .map_err(|_| Error::Escape(raw.to_owned()))?
            .to_owned();
        return normalize_rel(&stripped.to_string_lossy());
    } else {
        rest.components().collect()
    };
    for c in rest_components {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(Error::Escape(raw.to_owned()));
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(Error::Escape(raw.to_owned())),
        }
    }
    normalize_rel(&parts.join("/"))
}

fn canonical_or_self(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    // Resolve symlinks in the existing prefix so /tmp vs /private/tmp style aliases compare equal.
    let mut existing = out.clone();
    let mut tail = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent().map(|p| p.to_owned()),
        ) {
            (Some(name), Some(parent)) => {
                tail.push(name);
                existing = parent;
            }
            _ => return out,
        }
    }
    let mut resolved = canonical_or_self(&existing);
    for name in tail.into_iter().rev() {
        resolved.push(name);
    }
    resolved
}

/// The on-disk path of `rel` under `root`, refusing any existing ancestor that
/// is a symlink (so nothing is ever read or written through a link out of the tree).
pub fn confined(root: &Path, rel: &str) -> Result<PathBuf> {
    let rel = normalize_rel(rel)?;
    let mut cur = root.to_owned();
    let parts: Vec<&str> = if rel.is_empty() {
        Vec::new()
    } else {
        rel.split('/').collect()
    };
    for (i, part) in parts.iter().enumerate() {
        cur.push(part);
        if i + 1 < parts.len() {
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::Escape(format!(
                        "{rel} (through the symlink {})",
                        parts[..=i].join("/")
                    )))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(Error::BadPath(format!(
                        "{} is not a directory",
                        parts[..=i].join("/")
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths_are_normalised_and_confined() {
        assert_eq!(normalize_rel("a//b/./c").unwrap(), "a/b/c");
        assert_eq!(normalize_rel("").unwrap(), "");
        assert!(matches!(normalize_rel("../x"), Err(Error::Escape(_))));
        assert!(matches!(normalize_rel("a/../../x"), Err(Error::Escape(_))));
        assert!(normalize_rel("/etc/passwd").is_err());
        assert!(normalize_rel("a\0b").is_err());
    }

    #[test]
    fn user_paths_resolve_against_cwd_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("docs/sub")).unwrap();
        let outside = dir.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        assert_eq!(
            resolve_user_path(&root, &root.join("docs"), "a.md").unwrap(),
            "docs/a.md"
        );
        assert_eq!(
            resolve_user_path(&root, &root.join("docs/sub"), "../b.md").unwrap(),
            "docs/b.md"
        );
        assert_eq!(
            resolve_user_path(&root, &outside, "docs/a.md").unwrap(),
            "docs/a.md"
        );
        let abs = root.join("docs/c.md");
        assert_eq!(
            resolve_user_path(&root, &outside, abs.to_str().unwrap()).unwrap(),
            "docs/c.md"
        );
        assert!(matches!(
            resolve_user_path(&root, &root, "../x"),
            Err(Error::Escape(_))
        ));
        assert!(matches!(
            resolve_user_path(&root, &root, "/etc/passwd"),
            Err(Error::Escape(_))
        ));
    }

    #[test]
    fn symlinked_ancestors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("link")).unwrap();
        assert!(confined(&root, "link/x").is_err());
        assert!(confined(&root, "link").is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("SOVRYN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
        ))]
        /// Fuzz target for the path normaliser and `RelPath`: whatever the
        /// input, an accepted path has no empty, `.` or `..` component, no
        /// NUL, no backslash, is not absolute, and `confined` keeps it
        /// under the root.
        #[test]
        fn accepted_paths_stay_inside(raw in "[a-z./\\\\\\x00:]{0,24}") {
            if let Ok(n) = normalize_rel(&raw) {
                proptest::prop_assert!(!n.starts_with('/'));
                proptest::prop_assert!(!n.contains('\0') && !n.contains('\\'));
                proptest::prop_assert!(n.is_empty() || !n.split('/').any(|p| p.is_empty() || p == "." || p == ".."));
                let root = std::path::Path::new("/srv/root");
                if let Ok(abs) = confined(root, &n) {
                    proptest::prop_assert!(abs.starts_with(root));
                }
            }
            if let Ok(r) = RelPath::parse(&raw) {
                proptest::prop_assert_eq!(r.as_str(), raw.as_str());
                let normal = normalize_rel(&raw).ok();
                proptest::prop_assert_eq!(normal.as_deref(), Some(raw.as_str()));
            }
        }
    }

    #[test]
    fn a_relative_path_from_outside_that_lands_inside_is_taken_from_here() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        let beside = dir.path().join("beside");
        std::fs::create_dir_all(&beside).unwrap();
        assert_eq!(
            resolve_user_path(&root, &beside, "../root/docs/a.md").unwrap(),
            "docs/a.md"
        );
        // Not landing inside: taken from the folder's root, as before.
        assert_eq!(
            resolve_user_path(&root, &beside, "docs/a.md").unwrap(),
            "docs/a.md"
        );
    }

    #[test]
    fn rel_paths_from_peers_must_be_in_normal_form() {
        assert_eq!(RelPath::parse("docs/a.txt").unwrap().as_str(), "docs/a.txt");
        for bad in ["", "a//b", "./a", "a/", "/a", "../a", "a\\b", "a\0b"] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RelPath::parse(&"x".repeat(256)).is_err());
        assert!(RelPath::parse(&format!("d/{}123", crate::fsutil::TEMP_PREFIX)).is_err());
    }
}
