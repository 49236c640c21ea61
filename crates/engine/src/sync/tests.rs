//! Applying remote states between real nodes in temp dirs.

mod clashes;

use super::*;
use crate::config::Home;
use crate::node::InitOptions;
use crate::view::View;
use sovryn_store::{Access, MasterKey};

struct T {
    _dir: tempfile::TempDir,
    node: Node,
}

fn node(name: &str, key: &MasterKey) -> T {
    let dir = tempfile::tempdir().unwrap();
    let home = Home {
        dir: dir.path().join("home"),
    };
    Node::init(
        &home,
        InitOptions {
            storage_path: dir.path().join("root"),
            node_name: Some(name.into()),
            folder_key: Some(key.to_hex()),
            ..Default::default()
        },
    )
    .unwrap();
    let node = Node::open(home, key, Access::ReadWrite).unwrap();
    T { _dir: dir, node }
}

fn pair() -> (T, T) {
    let key = MasterKey::generate();
    (node("alpha", &key), node("beta", &key))
}

fn write(t: &T, rel: &str, data: &[u8]) {
    let p = t.node.root().join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn read(t: &T, rel: &str) -> Option<Vec<u8>> {
    fs::read(t.node.root().join(rel)).ok()
}

fn scan(t: &mut T) {
    t.node
        .scan(&[], &ScanOptions::default(), &mut |_| {})
        .unwrap();
}

/// Sends every record of `from` after `since` to `to`, as the network does.
fn sync(from: &T, to: &mut T, since: u64) -> ApplyReport {
    let list = records(from, since);
    apply(from, to, &list)
}

fn records(from: &T, since: u64) -> Vec<(String, Entry)> {
    let recs = from.node.store.changes_since(since, 10_000).unwrap();
    recs.into_iter().map(|r| (r.path, r.entry)).collect()
}

fn apply(from: &T, to: &mut T, list: &[(String, Entry)]) -> ApplyReport {
    for id in to.node.missing_chunks(list.iter().map(|(_, e)| e)).unwrap() {
        let data = from.node.store.read_chunk(&id).unwrap();
        to.node.store.put_chunk(&id, &data).unwrap();
    }
    to.node.apply_remote(list).unwrap()
}

fn vv_of(t: &T, rel: &str) -> sovryn_store::VersionVector {
    t.node.store.file(rel).unwrap().unwrap().entry.vv
}

#[test]
fn create_edit_delete_and_echo() {
    let (mut a, mut b) = pair();
    write(&a, "d/f.txt", b"one");
    fs::create_dir_all(a.node.root().join("empty")).unwrap();
    scan(&mut a);
    let r = sync(&a, &mut b, 0);
    assert!(r.failed.is_empty() && r.conflicts.is_empty());
    assert_eq!(read(&b, "d/f.txt").unwrap(), b"one");
    assert!(b.node.root().join("empty").is_dir());
    assert_eq!(vv_of(&a, "d/f.txt"), vv_of(&b, "d/f.txt"));
    // Applying again, or echoing back, changes nothing.
    let seq_b = b.node.store.sequence().unwrap();
    assert_eq!(sync(&a, &mut b, 0).applied, 0);
    assert_eq!(b.node.store.sequence().unwrap(), seq_b);
    let seq_a = a.node.store.sequence().unwrap();
    assert_eq!(sync(&b, &mut a, 0).applied, 0);
    assert_eq!(a.node.store.sequence().unwrap(), seq_a);
    // A scan on b right after applying records nothing new.
    scan(&mut b);
    assert_eq!(b.node.store.sequence().unwrap(), seq_b);

    let since = a.node.store.sequence().unwrap();
    write(&a, "d/f.txt", b"two");
    scan(&mut a);
    sync(&a, &mut b, since);
    assert_eq!(read(&b, "d/f.txt").unwrap(), b"two");

    let since = a.node.store.sequence().unwrap();
    fs::remove_dir_all(a.node.root().join("d")).unwrap();
    fs::remove_dir(a.node.root().join("empty")).unwrap();
    scan(&mut a);
    let r = sync(&a, &mut b, since);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(!b.node.root().join("d").exists());
    assert!(!b.node.root().join("empty").exists());
    assert!(b.node.store.file("d/f.txt").unwrap().unwrap().entry.deleted);
}

#[test]
fn concurrent_edits_keep_both() {
    let (mut a, mut b) = pair();
    write(&a, "doc.md", b"base");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let since_a = a.node.store.sequence().unwrap();
    let since_b = b.node.store.sequence().unwrap();
    write(&a, "doc.md", b"from alpha");
    scan(&mut a);
    std::thread::sleep(std::time::Duration::from_millis(5));
    write(&b, "doc.md", b"from beta");
    scan(&mut b);
    // Both learn of the other's edit at once; b's write is newer and
    // keeps the name on both sides.
    let (la, lb) = (records(&a, since_a), records(&b, since_b));
    let ra = apply(&b, &mut a, &lb);
    let rb = apply(&a, &mut b, &la);
    assert_eq!(ra.conflicts.len(), 1);
    assert_eq!(ra.conflicts, rb.conflicts);
    let copy = &ra.conflicts[0];
    assert!(
        copy.starts_with("doc.sync-conflict-") && copy.ends_with("-alpha.md"),
        "{copy}"
    );
    for t in [&a, &b] {
        assert_eq!(read(t, "doc.md").unwrap(), b"from beta");
        assert_eq!(read(t, copy).unwrap(), b"from alpha");
    }
    // Another round converges: same content, merged vectors, no new copies.
    let (sa, sb) = (since_a, since_b);
    let ra = sync(&b, &mut a, sb);
    let rb = sync(&a, &mut b, sa);
    assert!(ra.conflicts.is_empty() && rb.conflicts.is_empty());
    sync(&b, &mut a, 0);
    sync(&a, &mut b, 0);
    assert_eq!(vv_of(&a, "doc.md"), vv_of(&b, "doc.md"));
    assert_eq!(vv_of(&a, copy), vv_of(&b, copy));
}

/// Both sides edit `rel` (from `base`) while apart, then exchange.
fn both_edit(rel: &str, base: &[u8], on_a: &[u8], on_b: &[u8]) -> (T, T, ApplyReport, ApplyReport) {
    let (mut a, mut b) = pair();
    write(&a, rel, base);
    scan(&mut a);
    sync(&a, &mut b, 0);
    let (since_a, since_b) = (
        a.node.store.sequence().unwrap(),
        b.node.store.sequence().unwrap(),
    );
    write(&a, rel, on_a);
    scan(&mut a);
    std::thread::sleep(std::time::Duration::from_millis(5));
    write(&b, rel, on_b);
    scan(&mut b);
    let (la, lb) = (records(&a, since_a), records(&b, since_b));
    let ra = apply(&b, &mut a, &lb);
    let rb = apply(&a, &mut b, &la);
    (a, b, ra, rb)
}

/// Exchanges everything both ways until nothing changes.
fn settle(a: &mut T, b: &mut T) {
    for _ in 0..4 {
        sync(b, a, 0);
        sync(a, b, 0);
    }
}

#[test]
fn concurrent_text_edits_on_different_lines_merge() {
    let (mut a, mut b, ra, rb) = both_edit(
        "notes.md",
        b"one\ntwo\nthree\nfour\nfive\n",
        b"ONE\ntwo\nthree\nfour\nfive\n",
        b"one\ntwo\nthree\nfour\nFIVE\n",
    );
    assert_eq!(ra.merged, vec!["notes.md".to_string()], "{ra:?}");
    assert_eq!(rb.merged, vec!["notes.md".to_string()], "{rb:?}");
    assert!(ra.conflicts.is_empty() && rb.conflicts.is_empty());
    for t in [&a, &b] {
        assert_eq!(
            read(t, "notes.md").unwrap(),
            b"ONE\ntwo\nthree\nfour\nFIVE\n"
        );
    }
    // The two merges have the same content: the next round only merges vectors.
    let seq = a.node.store.sequence().unwrap();
    settle(&mut a, &mut b);
    assert_eq!(vv_of(&a, "notes.md"), vv_of(&b, "notes.md"));
    assert!(a.node.store.sequence().unwrap() <= seq + 1);
    // History keeps both sides' own writes.
    let texts: Vec<Vec<u8>> = a
        .node
        .store
        .versions("notes.md")
        .unwrap()
        .iter()
        .map(|v| a.node.store.content(&v.entry).unwrap())
        .collect();
    assert!(texts.contains(&b"ONE\ntwo\nthree\nfour\nfive\n".to_vec()));
    let files: Vec<_> = a.node.store.files_under("").unwrap();
    assert!(files.iter().all(|f| !is_conflict_copy(&f.path)));
}

#[test]
fn concurrent_json_edits_merge_structurally() {
    let (mut a, mut b, ra, _) = both_edit(
        "conf.json",
        br#"{"a":1,"b":{"x":1}}"#,
        br#"{"a":2,"b":{"x":1}}"#,
        br#"{"a":1,"b":{"x":1,"y":2}}"#,
    );
    assert_eq!(ra.merged.len(), 1, "{ra:?}");
    settle(&mut a, &mut b);
    for t in [&a, &b] {
        let v: serde_json::Value = serde_json::from_slice(&read(t, "conf.json").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a":2,"b":{"x":1,"y":2}}));
    }
    assert_eq!(vv_of(&a, "conf.json"), vv_of(&b, "conf.json"));
}

#[test]
fn same_line_and_binary_edits_keep_a_conflict_copy() {
    for (rel, base, on_a, on_b) in [
        ("s.txt", &b"x\ny\n"[..], &b"x\nA\n"[..], &b"x\nB\n"[..]),
        (
            "b.bin",
            &b"\0\x01\x02"[..],
            &b"\0\x01A"[..],
            &b"\0\x01B"[..],
        ),
    ] {
        let (mut a, mut b, ra, rb) = both_edit(rel, base, on_a, on_b);
        assert!(ra.merged.is_empty() && rb.merged.is_empty());
        assert_eq!(ra.conflicts.len(), 1, "{ra:?}");
        assert_eq!(ra.conflicts, rb.conflicts);
        settle(&mut a, &mut b);
        for t in [&a, &b] {
            assert_eq!(read(t, rel).unwrap(), on_b);
            assert_eq!(read(t, &ra.conflicts[0]).unwrap(), on_a);
        }
        let copies = a.node.conflict_copies().unwrap();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].original, rel);
        assert_eq!(copies[0].author, "alpha");
    }
}

#[test]
fn resolving_conflicts() {
    use crate::conflicts::Keep;
    for keep in [Keep::Local, Keep::Remote, Keep::Both] {
        let (mut a, mut b, ra, _) = both_edit("d.txt", b"0\n", b"A\n", b"B\n");
        settle(&mut a, &mut b);
        let copy = ra.conflicts[0].clone();
        let r = a.node.resolve_conflict("d.txt", keep, None).unwrap();
        assert_eq!(r.copy, copy);
        assert!(!a.node.root().join(&copy).exists());
        assert!(a.node.conflict_copies().unwrap().is_empty());
        let kept = read(&a, "d.txt").unwrap();
        match keep {
            Keep::Local => assert_eq!(kept, b"B\n"),
            Keep::Remote => assert_eq!(kept, b"A\n"),
            Keep::Both => {
                assert_eq!(kept, b"B\n");
                let to = r.renamed_to.unwrap();
                assert_eq!(to, "d.from-alpha.txt");
                assert_eq!(read(&a, &to).unwrap(), b"A\n");
            }
        }
        // The resolution syncs like any edit.
        settle(&mut a, &mut b);
        assert_eq!(read(&b, "d.txt").unwrap(), kept);
        assert!(b.node.conflict_copies().unwrap().is_empty());
    }
}

#[test]
fn delete_against_edit_keeps_the_edit() {
    let (mut a, mut b) = pair();
    write(&a, "f", b"v1");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let since_a = a.node.store.sequence().unwrap();
    fs::remove_file(a.node.root().join("f")).unwrap();
    scan(&mut a);
    write(&b, "f", b"v2 edited");
    scan(&mut b);
    sync(&a, &mut b, since_a);
    assert_eq!(read(&b, "f").unwrap(), b"v2 edited");
    sync(&b, &mut a, 0);
    assert_eq!(read(&a, "f").unwrap(), b"v2 edited");
    assert_eq!(vv_of(&a, "f"), vv_of(&b, "f"));
}

#[test]
fn unscanned_local_change_is_not_overwritten() {
    let (mut a, mut b) = pair();
    write(&a, "f.txt", b"v1");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let since = a.node.store.sequence().unwrap();
    write(&a, "f.txt", b"v2 from alpha");
    scan(&mut a);
    // b edits without a scan; the remote update must not clobber it.
    std::thread::sleep(std::time::Duration::from_millis(5));
    write(&b, "f.txt", b"local edit on beta, longer");
    let r = sync(&a, &mut b, since);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    let mut contents = vec![
        read(&b, "f.txt").unwrap(),
        read(&b, &r.conflicts[0]).unwrap(),
    ];
    contents.sort();
    assert_eq!(
        contents,
        vec![
            b"local edit on beta, longer".to_vec(),
            b"v2 from alpha".to_vec()
        ]
    );
}

#[test]
fn directory_replaced_by_a_file() {
    let (mut a, mut b) = pair();
    write(&a, "x/inner.txt", b"in");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let since = a.node.store.sequence().unwrap();
    fs::remove_dir_all(a.node.root().join("x")).unwrap();
    write(&a, "x", b"now a file");
    scan(&mut a);
    let r = sync(&a, &mut b, since);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(read(&b, "x").unwrap(), b"now a file");
}

#[test]
fn malformed_and_ignored_paths_are_skipped() {
    let (mut a, mut b) = pair();
    write(&a, "ok.txt", b"ok");
    scan(&mut a);
    let mut list: Vec<(String, Entry)> = a
        .node
        .store
        .changes_since(0, 10)
        .unwrap()
        .into_iter()
        .map(|r| (r.path, r.entry))
        .collect();
    let e = list[0].1.clone();
    list.push(("../escape".into(), e.clone()));
    list.push(("/abs".into(), e.clone()));
    list.push((".sovrynignore".into(), e));
    for id in b.node.missing_chunks(list.iter().map(|(_, e)| e)).unwrap() {
        let d = a.node.store.read_chunk(&id).unwrap();
        b.node.store.put_chunk(&id, &d).unwrap();
    }
    let r = b.node.apply_remote(&list).unwrap();
    assert_eq!(r.skipped, 3);
    assert_eq!(read(&b, "ok.txt").unwrap(), b"ok");
}

#[test]
fn conflict_names() {
    // 2026-11-21 12:34:56 UTC
    let t = 1_795_264_496i64 * 1_000_000_000;
    assert_eq!(
        conflict_name("docs/a.md", "laptop", t),
        "docs/a.sync-conflict-20261121-123456-laptop.md"
    );
    assert_eq!(
        conflict_name("Makefile", "my box", t),
        "Makefile.sync-conflict-20261121-123456-my_box"
    );
    assert_eq!(
        conflict_name(".bashrc", "x", 0),
        ".bashrc.sync-conflict-19700101-000000-x"
    );
    assert!(is_conflict_copy("a/b.sync-conflict-19700101-000000-x.txt"));
    assert!(!is_conflict_copy("a/b.txt"));
}

#[test]
fn a_staged_large_file_is_placed_and_a_stale_or_racing_one_is_not() {
    let (mut a, mut b) = pair();
    let big: Vec<u8> = (0..STAGE_MIN_BYTES as usize + 12_345)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    write(&a, "big.bin", &big);
    write(&a, "small.txt", b"small");
    scan(&mut a);
    let list = records(&a, 0);
    for id in b.node.missing_chunks(list.iter().map(|(_, e)| e)).unwrap() {
        let data = a.node.store.read_chunk(&id).unwrap();
        b.node.store.put_chunk(&id, &data).unwrap();
    }
    b.node.store.flush().unwrap();
    // Written out from a read-only handle, then put in place by the apply.
    let reader = b.node.reader().unwrap();
    let staged = Staged::prepare(&reader, &list);
    assert_eq!(staged.len(), 1, "only the large file is staged");
    let report = b.node.apply_remote_staged(&list, staged).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(read(&b, "big.bin").unwrap(), big);
    assert_eq!(read(&b, "small.txt").unwrap(), b"small");
    let temps = |t: &T| {
        fs::read_dir(t.node.root())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(crate::fsutil::TEMP_PREFIX)
            })
            .count()
    };
    assert_eq!(temps(&b), 0, "no temp file is left behind");

    // A staged copy of other content (the state moved on meanwhile) is not
    // used: the apply writes the content it records.
    let mut big2 = big.clone();
    big2[0] ^= 1;
    write(&a, "big.bin", &big2);
    scan(&mut a);
    let newer = records(&a, 2);
    let stale = Staged::prepare(&reader, &list);
    for id in b.node.missing_chunks(newer.iter().map(|(_, e)| e)).unwrap() {
        let data = a.node.store.read_chunk(&id).unwrap();
        b.node.store.put_chunk(&id, &data).unwrap();
    }
    let report = b.node.apply_remote_staged(&newer, stale).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(read(&b, "big.bin").unwrap(), big2);
    assert_eq!(temps(&b), 0);
}
