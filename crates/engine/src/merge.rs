//! Merging concurrent edits of one file.
//!
//! When two nodes changed a file concurrently (neither version vector
//! dominates), [`crate::sync`] asks [`Node::merge_concurrent`] first:
//!
//! * the common ancestor is the newest local version whose vector is
//!   dominated by (or equal to) both sides' vectors;
//! * text files (UTF-8 without NUL, each side at most [`MAX_MERGE_BYTES`])
//!   merge three-way, line by line ([`merge_text`]);
//! * `.json` files merge structurally ([`merge_json`]): object keys merge
//!   recursively, a value changed on one side only takes that change, and
//!   a value changed differently on both sides is not clean;
//! * a clean merge becomes a new version carrying both vectors plus one
//!   local edit, which syncs back to the peers.
//!
//! Both nodes compute the same merge: the inputs are ordered by write
//! (older first, then newer, as [`crate::sync`] orders concurrent writes),
//! not by which side is local, so the results have the same content and
//! the next exchange only merges their vectors.
//!
//! Anything else (no ancestor, binaries, big files, overlapping edits)
//! returns `None` and the caller keeps both writes with a conflict copy.

use serde_json::{Map, Value};
use sovryn_store::{Causality, Entry, EntryKind, VersionVector};

use crate::node::Node;
use crate::Result;

/// Largest file (each of ancestor, local, remote) merged as text.
pub const MAX_MERGE_BYTES: u64 = 8 << 20;

/// Whether `bytes` is text we merge: UTF-8 without NUL bytes.
fn as_text(bytes: &[u8]) -> Option<&str> {
    if bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Three-way line merge of `ours` and `theirs` against `base`; `None` when
/// both sides changed the same lines (or lines next to each other)
/// differently.
pub fn merge_text(base: &str, ours: &str, theirs: &str) -> Option<String> {
    if ours == theirs {
        return Some(ours.to_owned());
    }
    if ours == base {
        return Some(theirs.to_owned());
    }
    if theirs == base {
        return Some(ours.to_owned());
    }
    diffy::merge(base, ours, theirs).ok()
}

/// Three-way merge of JSON values; `Err` when a value changed differently on
/// both sides (`None`: absent).
fn merge_value(
    base: Option<&Value>,
    ours: Option<&Value>,
    theirs: Option<&Value>,
) -> std::result::Result<Option<Value>, ()> {
    if ours == theirs {
        return Ok(ours.cloned());
    }
    if ours == base {
        return Ok(theirs.cloned());
    }
    if theirs == base {
        return Ok(ours.cloned());
    }
    match (ours, theirs) {
        (Some(Value::Object(o)), Some(Value::Object(t))) => {
            let empty = Map::new();
            let b = match base {
                Some(Value::Object(b)) => b,
                _ => &empty,
            };
            let mut out = Map::new();
            let keys = o.keys().chain(t.keys().filter(|k| !o.contains_key(*k)));
            for k in keys {
                if let Some(v) = merge_value(b.get(k), o.get(k), t.get(k))? {
                    out.insert(k.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
        _ => Err(()),
    }
}

/// Structural three-way merge of JSON documents; `None` when one of them
/// does not parse or a value changed differently on both sides. When the
/// line merge is clean and means the same document, its text (the authors'
/// formatting) is kept; otherwise the merged document is written out pretty
/// (when `ours` spans lines) or compact.
pub fn merge_json(base: &str, ours: &str, theirs: &str) -> Option<String> {
    let b: Value = serde_json::from_str(base).ok()?;
    let o: Value = serde_json::from_str(ours).ok()?;
    let t: Value = serde_json::from_str(theirs).ok()?;
    let merged = merge_value(Some(&b), Some(&o), Some(&t)).ok()??;
    if let Some(text) = merge_text(base, ours, theirs) {
        if serde_json::from_str::<Value>(&text).ok().as_ref() == Some(&merged) {
            return Some(text);
        }
    }
    let mut out = if ours.trim_end().contains('\n') {
        serde_json::to_string_pretty(&merged).ok()?
    } else {
        serde_json::to_string(&merged).ok()?
    };
    if ours.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

/// Whether `rel` is merged as JSON.
fn is_json(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel).to_ascii_lowercase();
    name.ends_with(".json")
}

/// Merges file contents by the rules above; `None` when not clean.
pub fn merge_content(rel: &str, base: &[u8], ours: &[u8], theirs: &[u8]) -> Option<Vec<u8>> {
    let cap = MAX_MERGE_BYTES as usize;
    if base.len() > cap || ours.len() > cap || theirs.len() > cap {
        return None;
    }
    let (b, o, t) = (as_text(base)?, as_text(ours)?, as_text(theirs)?);
    let merged = if is_json(rel) {
        merge_json(b, o, t)?
    } else {
        merge_text(b, o, t)?
    };
    Some(merged.into_bytes())
}

fn at_most(v: &VersionVector, bound: &VersionVector) -> bool {
    matches!(v.compare(bound), Causality::Equal | Causality::DominatedBy)
}

impl Node {
    /// The newest local version of `rel` whose vector is dominated by (or
    /// equal to) both `a` and `b`.
    pub fn common_ancestor(
        &self,
        rel: &str,
        a: &VersionVector,
        b: &VersionVector,
    ) -> Result<Option<Entry>> {
        Ok(self
            .store
            .versions(rel)?
            .into_iter()
            .find(|v| at_most(&v.entry.vv, a) && at_most(&v.entry.vv, b))
            .map(|v| v.entry))
    }

    /// Tries to merge two concurrent states of the file `rel`. `first` is the
    /// older write, `second` the newer. Returns the merged state (not yet
    /// written or recorded) carrying `vv`, or `None` when the merge is not
    /// clean or does not apply.
    pub fn merge_concurrent(
        &mut self,
        rel: &str,
        first: &Entry,
        second: &Entry,
        vv: VersionVector,
    ) -> Result<Option<Entry>> {
        let file = |e: &Entry| e.kind == EntryKind::File && !e.deleted && e.size <= MAX_MERGE_BYTES;
        if !file(first) || !file(second) {
            return Ok(None);
        }
        let Some(base) = self.common_ancestor(rel, &first.vv, &second.vv)? else {
            return Ok(None);
        };
        if !file(&base) {
            return Ok(None);
        }
        let (b, f, s) = (
            self.store.content(&base)?,
            self.store.content(first)?,
            self.store.content(second)?,
        );
        let Some(merged) = merge_content(rel, &b, &f, &s) else {
            return Ok(None);
        };
        let limit = if self.config.search.enabled {
            self.config.search.max_text_bytes
        } else {
            0
        };
        let ing = self.store.ingest(std::io::Cursor::new(&merged), limit)?;
        // A permission change on one side wins; on both, the newer write's.
        let mode = if second.mode & 0o7777 != base.mode & 0o7777 {
            second.mode
        } else {
            first.mode
        };
        let now = sovryn_store::now_ns();
        tracing::info!(
            "{rel}: merged concurrent edits by {} and {}",
            first.author,
            second.author
        );
        Ok(Some(Entry {
            kind: EntryKind::File,
            deleted: false,
            size: ing.size,
            mode,
            mtime_ns: now,
            target: None,
            vv,
            author: self.config.node_name.clone(),
            actor: None,
            time_ns: now,
            message: Some(format!(
                "merged concurrent edits by {} and {}",
                first.author, second.author
            )),
            chunks: ing.chunks,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_merges_different_lines() {
        let base = "a\nb\nc\nd\ne\n";
        let ours = "a\nB\nc\nd\ne\n";
        let theirs = "a\nb\nc\nd\nE\n";
        assert_eq!(merge_text(base, ours, theirs).unwrap(), "a\nB\nc\nd\nE\n");
        // The same line changed differently: not clean.
        assert!(merge_text(base, "a\nX\nc\nd\ne\n", "a\nY\nc\nd\ne\n").is_none());
        // The same change on both sides is clean.
        assert_eq!(merge_text(base, ours, ours).unwrap(), ours);
    }

    #[test]
    fn binary_and_oversized_are_not_merged() {
        assert!(merge_content("x.bin", b"a\0", b"b\0", b"c\0").is_none());
        assert!(merge_content("x.txt", &[0xff, 0xfe], b"a", b"b").is_none());
        let big = vec![b'a'; MAX_MERGE_BYTES as usize + 1];
        assert!(merge_content("x.txt", &big, b"a", b"b").is_none());
    }

    #[test]
    fn json_merges_structurally() {
        let base = r#"{"name":"x","opts":{"a":1,"b":2},"list":[1]}"#;
        let ours = r#"{"name":"x","opts":{"a":10,"b":2},"list":[1],"new":true}"#;
        let theirs = r#"{"name":"y","opts":{"a":1,"b":2,"c":3},"list":[1]}"#;
        let m: Value = serde_json::from_str(&merge_json(base, ours, theirs).unwrap()).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"name":"y","opts":{"a":10,"b":2,"c":3},"list":[1],"new":true})
        );
        // Conflicting scalar changes are not clean.
        assert!(merge_json(base, r#"{"name":"p"}"#, r#"{"name":"q"}"#).is_none());
        // A key deleted on one side and untouched on the other goes.
        let m = merge_json(r#"{"a":1,"b":2}"#, r#"{"a":1}"#, r#"{"a":1,"b":2,"c":3}"#).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&m).unwrap(),
            serde_json::json!({"a":1,"c":3})
        );
        // Invalid JSON is not merged as JSON.
        assert!(merge_content("c.json", b"{", b"{1", b"{2").is_none());
    }

    #[test]
    fn pretty_json_keeps_its_layout_when_lines_merge() {
        let base = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3\n}\n";
        let ours = "{\n  \"a\": 10,\n  \"b\": 2,\n  \"c\": 3\n}\n";
        let theirs = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 30\n}\n";
        assert_eq!(
            merge_json(base, ours, theirs).unwrap(),
            "{\n  \"a\": 10,\n  \"b\": 2,\n  \"c\": 30\n}\n"
        );
        // Adjacent lines conflict as text but not as JSON: written out pretty.
        let ours = "{\n  \"a\": 1,\n  \"b\": 20,\n  \"c\": 3\n}\n";
        let theirs = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 30\n}\n";
        let m = merge_json(base, ours, theirs).unwrap();
        assert!(m.contains('\n') && m.ends_with("}\n"), "{m}");
        assert_eq!(
            serde_json::from_str::<Value>(&m).unwrap(),
            serde_json::json!({"a":1,"b":20,"c":30})
        );
    }

    /// An edit script: for each base line, keep it, drop it, or replace
    /// it; and lines inserted before it.
    fn edited(base: &[String], ops: &[(u8, u8)], tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, line) in base.iter().enumerate() {
            let (op, ins) = ops[i % ops.len()];
            for j in 0..ins {
                out.push(format!("{tag}-ins-{i}-{j}"));
            }
            match op % 4 {
                0 | 1 => out.push(line.clone()),
                2 => {}
                _ => out.push(format!("{tag}-rep-{i}")),
            }
        }
        out
    }

    fn joined(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    proptest! {
        /// A clean merge keeps every line either side added, and never
        /// invents a line that none of the three had.
        #[test]
        fn clean_merge_never_loses_an_added_line(
            n in 0usize..30,
            ours_ops in proptest::collection::vec((0u8..8, 0u8..2), 1..30),
            theirs_ops in proptest::collection::vec((0u8..8, 0u8..2), 1..30),
        ) {
            let base: Vec<String> = (0..n).map(|i| format!("base-{i}")).collect();
            let ours = edited(&base, &ours_ops, "o");
            let theirs = edited(&base, &theirs_ops, "t");
            let (b, o, t) = (joined(&base), joined(&ours), joined(&theirs));
            if let Some(m) = merge_text(&b, &o, &t) {
                let lines: Vec<&str> = m.lines().collect();
                for added in ours.iter().chain(&theirs).filter(|l| !base.contains(l)) {
                    prop_assert!(lines.contains(&added.as_str()), "lost {added}: {m}");
                }
                for l in &lines {
                    prop_assert!(
                        base.iter().chain(&ours).chain(&theirs).any(|x| x == l),
                        "invented {l}"
                    );
                }
                // A base line dropped by one side and kept by the other is gone.
                for l in &base {
                    if !ours.contains(l) || !theirs.contains(l) {
                        prop_assert!(!lines.contains(&l.as_str()), "resurrected {l}: {m}");
                    }
                }
                // Merging is symmetric in content.
                prop_assert_eq!(merge_text(&b, &t, &o), Some(m.clone()));
            }
        }
    }
}
