//! Conflict copies in the tree: listing them and resolving them.
//!
//! A conflict copy is named `name.sync-conflict-YYYYMMDD-HHMMSS-<node>.ext`
//! (see [`crate::sync::conflict_name`]): the time and node of the write it
//! holds. Resolving one is ordinary local operations (delete, write, move),
//! so the outcome is versioned and syncs like any edit.

use serde::Serialize;
use sovryn_store::EntryKind;

use crate::node::Node;
use crate::sync::is_conflict_copy;
use crate::view::View;
use crate::{paths, Error, Result};

const MARK: &str = ".sync-conflict-";

/// A conflict copy present in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConflictCopy {
    /// The copy's path.
    pub path: String,
    /// The path it is a copy of.
    pub original: String,
    /// The node whose write the copy holds.
    pub author: String,
    /// When that write was made, `YYYY-MM-DD HH:MM:SS` UTC.
    pub time: String,
    /// Whether the original path currently holds a file.
    pub original_exists: bool,
    /// Size of the copy in bytes.
    pub size: u64,
}

/// Which side a resolution keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The file under the original name; the copy is deleted.
    Local,
    /// The copy's content replaces the original; the copy is deleted.
    Remote,
    /// Both: the copy is renamed to a name without the conflict marker.
    Both,
}

impl std::str::FromStr for Keep {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Keep::Local),
            "remote" => Ok(Keep::Remote),
            "both" => Ok(Keep::Both),
            _ => Err(Error::Usage(format!(
                "--keep must be local, remote or both, not '{s}'"
            ))),
        }
    }
}

/// What a resolution did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resolution {
    /// The conflict copy resolved.
    pub copy: String,
    /// The original path.
    pub original: String,
    /// Where the copy went with `--keep both`.
    pub renamed_to: Option<String>,
    /// Every path whose record changed.
    pub changed: Vec<String>,
}

/// Splits a conflict copy's path into (original, author, time).
pub fn parse_conflict_name(rel: &str) -> Option<(String, String, String)> {
    let (dir, name) = match rel.rfind('/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => ("", rel),
    };
    let at = name.find(MARK)?;
    let stem = &name[..at];
    let rest = &name[at + MARK.len()..];
    // YYYYMMDD-HHMMSS-
    let b = rest.as_bytes();
    if b.len() < 16
        || !b[..8].iter().all(u8::is_ascii_digit)
        || b[8] != b'-'
        || !b[9..15].iter().all(u8::is_ascii_digit)
        || b[15] != b'-'
    {
        return None;
    }
    let time = format!(
        "{}-{}-{} {}:{}:{}",
        &rest[..4],
        &rest[4..6],
        &rest[6..8],
        &rest[9..11],
        &rest[11..13],
        &rest[13..15]
    );
    // The node name is sanitised to [alnum-_], so the extension starts at
    // the first dot after it.
    let tail = &rest[16..];
    let (author, ext) = match tail.find('.') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, ""),
    };
    if author.is_empty() {
        return None;
    }
    Some((format!("{dir}{stem}{ext}"), author.to_owned(), time))
}

/// Conflict copies currently in the tree (recorded, live, on disk).
pub(crate) fn copies_in(view: &(impl View + ?Sized)) -> Result<Vec<ConflictCopy>> {
    let mut out = Vec::new();
    for rec in view.store().files_under("")? {
        if rec.entry.deleted || rec.entry.kind != EntryKind::File || !is_conflict_copy(&rec.path) {
            continue;
        }
        let Ok(abs) = paths::confined(view.root(), &rec.path) else {
            continue;
        };
        if !abs.is_file() {
            continue;
        }
        let (original, author, time) = parse_conflict_name(&rec.path).unwrap_or_else(|| {
            (
                rec.path.replace(MARK, "."),
                rec.entry.author.clone(),
                String::new(),
            )
        });
        let original_exists = paths::confined(view.root(), &original)
            .map(|p| p.is_file())
            .unwrap_or(false);
        out.push(ConflictCopy {
            path: rec.path,
            original,
            author,
            time,
            original_exists,
            size: rec.entry.size,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

impl Node {
    /// Finds the conflict copy `rel` names: the copy itself, or an original
    /// with exactly one copy.
    fn conflict_copy_for(&self, rel: &str) -> Result<ConflictCopy> {
        let all = self.conflict_copies()?;
        if let Some(c) = all.iter().find(|c| c.path == rel) {
            return Ok(c.clone());
        }
        let of: Vec<&ConflictCopy> = all.iter().filter(|c| c.original == rel).collect();
        match of.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NotFound(format!(
                "{rel} is not a conflict copy and has none (see 'sovryn conflicts list')"
            ))),
            many => Err(Error::Usage(format!(
                "{rel} has {} conflict copies; name one: {}",
                many.len(),
                many.iter()
                    .map(|c| c.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Resolves the conflict copy `rel` names (the copy, or an original with
    /// one copy), keeping `keep`.
    pub fn resolve_conflict(
        &mut self,
        rel: &str,
        keep: Keep,
        actor: Option<&str>,
    ) -> Result<Resolution> {
        let copy = self.conflict_copy_for(rel)?;
        let mut res = Resolution {
            copy: copy.path.clone(),
            original: copy.original.clone(),
            ..Default::default()
        };
        match keep {
            Keep::Local => {
                let recs = self.delete_path(&copy.path, false, actor)?;
                res.changed.extend(recs.into_iter().map(|r| r.path));
            }
            Keep::Remote => {
                self.capture(&copy.path)?;
                let entry = self.record(&copy.path)?.entry;
                let bytes = self.store.content(&entry)?;
                let rec = self.write_file(&copy.original, &bytes, actor)?;
                res.changed.push(rec.path);
                let recs = self.delete_path(&copy.path, false, actor)?;
                res.changed.extend(recs.into_iter().map(|r| r.path));
            }
            Keep::Both => {
                let target = self.free_name(&copy.original, &copy.author)?;
                let recs = self.move_path(&copy.path, &target, actor)?;
                res.changed.extend(recs.into_iter().map(|r| r.path));
                res.renamed_to = Some(target);
            }
        }
        res.changed.sort();
        res.changed.dedup();
        Ok(res)
    }

    /// `dir/stem.from-<author>.ext`, or with `-2`, `-3`… when taken.
    fn free_name(&self, original: &str, author: &str) -> Result<String> {
        let (dir, name) = match original.rfind('/') {
            Some(i) => (&original[..=i], &original[i + 1..]),
            None => ("", original),
        };
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        for n in 1.. {
            let tail = if n == 1 {
                String::new()
            } else {
                format!("-{n}")
            };
            let cand = format!("{dir}{stem}.from-{author}{tail}{ext}");
            let on_disk = paths::confined(self.root(), &cand)?
                .symlink_metadata()
                .is_ok();
            let live = self.store.file(&cand)?.is_some_and(|r| !r.entry.deleted);
            if !on_disk && !live {
                return Ok(cand);
            }
        }
        unreachable!("some name is free")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conflict_names() {
        assert_eq!(
            parse_conflict_name("docs/a.sync-conflict-20261121-123456-laptop.md"),
            Some((
                "docs/a.md".into(),
                "laptop".into(),
                "2026-11-21 12:34:56".into()
            ))
        );
        assert_eq!(
            parse_conflict_name("Makefile.sync-conflict-20261121-123456-my_box"),
            Some((
                "Makefile".into(),
                "my_box".into(),
                "2026-11-21 12:34:56".into()
            ))
        );
        assert_eq!(
            parse_conflict_name("x.tar.sync-conflict-19700101-000000-n-1.gz")
                .unwrap()
                .0,
            "x.tar.gz"
        );
        assert_eq!(parse_conflict_name("a.txt"), None);
        assert_eq!(parse_conflict_name("a.sync-conflict-x.txt"), None);
    }
}
