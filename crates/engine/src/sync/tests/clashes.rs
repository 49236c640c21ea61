//! Type clashes (file, directory, symlink at one path or an ancestor) and
//! deletions that race with additions: every order converges to the same
//! tree on both nodes and every write survives (tree, conflict copy or
//! history).

use super::*;

/// What is on disk under a node's root: path → content, `dir` or `-> target`.
fn tree(t: &T) -> std::collections::BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, String::from_utf8_lossy(&fs::read(&p).unwrap()).into());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(t.node.root(), t.node.root(), &mut out);
    out
}

/// Exchanges new records both ways, both nodes learning of the other's
/// changes at once, until neither has anything new. No state may fail.
fn converge(a: &mut T, b: &mut T, mut since_a: u64, mut since_b: u64) {
    for round in 0..10 {
        let (la, lb) = (records(a, since_a), records(b, since_b));
        if la.is_empty() && lb.is_empty() {
            return;
        }
        since_a = a.node.store.sequence().unwrap();
        since_b = b.node.store.sequence().unwrap();
        let ra = apply(b, a, &lb);
        let rb = apply(a, b, &la);
        assert!(
            ra.failed.is_empty(),
            "round {round}: a failed {:?}",
            ra.failed
        );
        assert!(
            rb.failed.is_empty(),
            "round {round}: b failed {:?}",
            rb.failed
        );
        // What applying changed is new on each side, to send on.
        since_a = since_a.min(a.node.store.sequence().unwrap());
        since_b = since_b.min(b.node.store.sequence().unwrap());
        scan(a);
        scan(b);
    }
    panic!(
        "no convergence in 10 rounds: a {:?} b {:?}",
        tree(a),
        tree(b)
    );
}

fn seqs(a: &T, b: &T) -> (u64, u64) {
    (
        a.node.store.sequence().unwrap(),
        b.node.store.sequence().unwrap(),
    )
}

/// The content of the conflict copy of `rel`, if exactly one exists.
fn copy_of(t: &T, rel: &str) -> Option<String> {
    let copies: Vec<String> = tree(t)
        .into_iter()
        .filter(|(p, _)| p.starts_with(&format!("{rel}.sync-conflict-")))
        .map(|(_, c)| c)
        .collect();
    (copies.len() == 1).then(|| copies[0].clone())
}

#[test]
fn a_file_and_a_directory_at_one_path_converge_with_the_directory_keeping_it() {
    for a_first in [true, false] {
        let (mut a, mut b) = pair();
        let (sa, sb) = seqs(&a, &b);
        write(&a, "X", b"a file\n");
        write(&b, "X/inner.txt", b"inside\n");
        if a_first {
            scan(&mut a);
            std::thread::sleep(std::time::Duration::from_millis(5));
            scan(&mut b);
        } else {
            scan(&mut b);
            std::thread::sleep(std::time::Duration::from_millis(5));
            scan(&mut a);
        }
        converge(&mut a, &mut b, sa, sb);
        assert_eq!(tree(&a), tree(&b));
        assert_eq!(read(&a, "X/inner.txt").unwrap(), b"inside\n");
        assert_eq!(
            copy_of(&a, "X").as_deref(),
            Some("a file\n"),
            "{:?}",
            tree(&a)
        );
        // Later files under X reach both.
        let (sa, sb) = seqs(&a, &b);
        write(&b, "X/later.txt", b"later\n");
        scan(&mut b);
        converge(&mut a, &mut b, sa, sb);
        assert_eq!(read(&a, "X/later.txt").unwrap(), b"later\n");
    }
}

#[test]
fn a_symlink_and_a_directory_clash_the_same_way() {
    let (mut a, mut b) = pair();
    let (sa, sb) = seqs(&a, &b);
    std::os::unix::fs::symlink("elsewhere", a.node.root().join("L")).unwrap();
    write(&b, "L/x.txt", b"x\n");
    scan(&mut a);
    scan(&mut b);
    converge(&mut a, &mut b, sa, sb);
    assert_eq!(tree(&a), tree(&b));
    assert!(a.node.root().join("L").is_dir());
    assert_eq!(copy_of(&a, "L").as_deref(), Some("-> elsewhere"));
}

#[test]
fn a_file_and_a_symlink_clash_keeps_both() {
    let (mut a, mut b) = pair();
    let (sa, sb) = seqs(&a, &b);
    write(&a, "N", b"file\n");
    scan(&mut a);
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::os::unix::fs::symlink("target", b.node.root().join("N")).unwrap();
    scan(&mut b);
    converge(&mut a, &mut b, sa, sb);
    assert_eq!(tree(&a), tree(&b));
    let t = tree(&a);
    assert_eq!(t.get("N").map(String::as_str), Some("-> target"));
    assert_eq!(copy_of(&a, "N").as_deref(), Some("file\n"));
}

#[test]
fn deleting_what_is_not_there_is_a_no_op() {
    let (mut a, mut b) = pair();
    write(&b, "X/inner.txt", b"i\n");
    scan(&mut b);
    let (sa, sb) = seqs(&a, &b);
    // A file X here; the peer's tombstone for X/inner.txt arrives.
    write(&a, "X", b"file\n");
    scan(&mut a);
    fs::remove_dir_all(b.node.root().join("X")).unwrap();
    scan(&mut b);
    let tomb: Vec<(String, Entry)> = records(&b, 0)
        .into_iter()
        .filter(|(p, e)| p == "X/inner.txt" && e.deleted)
        .collect();
    assert_eq!(tomb.len(), 1);
    let r = apply(&b, &mut a, &tomb);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(read(&a, "X").unwrap(), b"file\n");
    converge(&mut a, &mut b, sa, sb);
    assert_eq!(tree(&a), tree(&b));
    // Applying the same states again changes nothing.
    let seq = a.node.store.sequence().unwrap();
    let again = apply(&b, &mut a, &records(&b, 0));
    assert!(again.failed.is_empty());
    assert_eq!(a.node.store.sequence().unwrap(), seq);
}

#[test]
fn a_deleted_directory_keeps_files_added_in_it_meanwhile() {
    let (mut a, mut b) = pair();
    write(&a, "D/old.txt", b"old\n");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let (sa, sb) = seqs(&a, &b);
    fs::remove_dir_all(a.node.root().join("D")).unwrap();
    scan(&mut a);
    write(&b, "D/new.txt", b"new\n");
    scan(&mut b);
    converge(&mut a, &mut b, sa, sb);
    assert_eq!(tree(&a), tree(&b));
    assert_eq!(read(&a, "D/new.txt").unwrap(), b"new\n");
    assert!(read(&a, "D/old.txt").is_none());
}

#[test]
fn a_file_replacing_a_directory_does_not_drop_files_added_in_it() {
    let (mut a, mut b) = pair();
    write(&a, "X/a.txt", b"a\n");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let (sa, sb) = seqs(&a, &b);
    fs::remove_dir_all(a.node.root().join("X")).unwrap();
    write(&a, "X", b"now a file\n");
    scan(&mut a);
    write(&b, "X/b.txt", b"b\n");
    scan(&mut b);
    converge(&mut a, &mut b, sa, sb);
    assert_eq!(tree(&a), tree(&b));
    assert_eq!(read(&a, "X/b.txt").unwrap(), b"b\n");
    assert_eq!(copy_of(&a, "X").as_deref(), Some("now a file\n"));
}

#[test]
fn the_same_vector_for_other_content_is_resolved_not_ignored() {
    // A node restored from an old copy reuses its counters: the same
    // vector arrives with other content. Both must end up equal.
    let (mut a, mut b) = pair();
    write(&a, "f.txt", b"base\n");
    scan(&mut a);
    sync(&a, &mut b, 0);
    let (sa, sb) = seqs(&a, &b);
    let mut forged = records(&a, 0)
        .into_iter()
        .find(|(p, _)| p == "f.txt")
        .unwrap();
    write(&a, "f.txt", b"other\n");
    scan(&mut a);
    let mine = records(&a, sa)
        .into_iter()
        .find(|(p, _)| p == "f.txt")
        .unwrap();
    forged.1 = mine.1.clone();
    // b holds v1 with a's first vector; make a's new state carry b's vector.
    forged.1.vv = b.node.store.file("f.txt").unwrap().unwrap().entry.vv;
    let r = apply(&a, &mut b, &[forged]);
    assert!(r.failed.is_empty());
    converge(&mut a, &mut b, sa, sb);
    assert_eq!(tree(&a), tree(&b));
}

#[test]
fn a_failed_download_leaves_no_temp_file_even_in_a_renamed_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("a/deep")).unwrap();
    let tmp = root.join(format!(
        "a/deep/{}0123456789abcdef",
        crate::fsutil::TEMP_PREFIX
    ));
    fs::write(&tmp, vec![0u8; 1 << 20]).unwrap();
    // The user renames the directory while the download is in flight.
    fs::rename(root.join("a"), root.join("b")).unwrap();
    remove_temp(root, &tmp);
    assert!(!root
        .join(format!(
            "b/deep/{}0123456789abcdef",
            crate::fsutil::TEMP_PREFIX
        ))
        .exists());
}
