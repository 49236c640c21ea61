//! Regression tests for silent divergence between real `sovryn up`
//! processes: type clashes, restarts and a node restored from an old copy
//! of its home. Each ends with identical trees and `sovryn sync` completing.

use std::time::{Duration, Instant};

mod common;
mod mesh;

use mesh::{converge, pair, tree};

/// `sovryn sync` completes on every node.
fn synced(nodes: &[&mesh::Peer]) {
    for n in nodes {
        n.ok(&["sync", "--timeout", "30"]);
    }
}

/// A file on one node and a directory at the same path on the other, both
/// made while they run: one exchange, the directory keeps the name, the
/// file is a conflict copy, later files under the directory reach both.
#[test]
fn a_file_directory_clash_converges_between_running_nodes() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.ok(&["pause"]);
    a.write("X", b"a file\n");
    b.write("X/inner.txt", b"inside\n");
    a.settle();
    b.settle();
    a.ok(&["resume"]);
    converge(&a, &b, "clash", |t| {
        t.get("X").map(String::as_str) == Some("dir")
            && t.keys().any(|k| k.starts_with("X.sync-conflict-"))
    });
    b.write("X/later.txt", b"later\n");
    converge(&a, &b, "later", |t| t.contains_key("X/later.txt"));
    synced(&[&a, &b]);
    let t = tree(&a.root);
    let copy = t
        .iter()
        .find(|(k, _)| k.starts_with("X.sync-conflict-"))
        .map(|(_, v)| v.clone());
    assert!(copy.is_some_and(|c| c.ends_with(":a file\n")), "{t:#?}");
    a.down();
    b.down();
}

/// SIGKILL and a restart within a second, three times: each time a change
/// made right after reaches the restarted node in seconds, not after the
/// stale connection's 30 s timeout.
#[test]
fn a_quick_restart_does_not_stall_sync() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("first.txt", b"1\n");
    converge(&a, &b, "first", |t| t.contains_key("first.txt"));
    for round in 0..3 {
        b.kill();
        std::thread::sleep(Duration::from_millis(700));
        b.up();
        let name = format!("after-restart-{round}.txt");
        a.write(&name, b"x\n");
        let started = Instant::now();
        while !b.root.join(&name).exists() {
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "round {round}: not on the restarted node after 8 s\nA:\n{}\nB:\n{}",
                a.log(),
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "round {round}: arrived {:?} after the write",
            started.elapsed()
        );
    }
    a.down();
    b.down();
}

/// A node whose home is restored from an older copy (its change log and
/// counters go back; its folder does not): both sides converge and every
/// write made on either side since the copy survives.
#[test]
fn a_node_restored_from_an_old_home_loses_nothing() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("before-copy.txt", b"0\n");
    converge(&a, &b, "before the copy", |t| {
        t.contains_key("before-copy.txt")
    });
    b.down();
    let backup = b.dir.path().join("home-backup");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&b.home)
        .arg(&backup)
        .status()
        .unwrap();
    assert!(cp.success());
    b.up();
    a.write("from-a-after-copy.txt", b"a1\n");
    b.write("from-b-after-copy.txt", b"b1\n");
    b.write("before-copy.txt", b"edited on b after the copy\n");
    converge(&a, &b, "after the copy", |t| {
        t.contains_key("from-a-after-copy.txt") && t.contains_key("from-b-after-copy.txt")
    });
    b.down();
    // The old home comes back; the folder keeps what it has.
    std::fs::remove_dir_all(&b.home).unwrap();
    std::fs::rename(&backup, &b.home).unwrap();
    b.up();
    b.write("from-b-after-restore.txt", b"b2\n");
    a.write("from-a-after-restore.txt", b"a2\n");
    converge(&a, &b, "after the restore", |t| {
        t.contains_key("from-a-after-restore.txt")
            && t.contains_key("from-b-after-restore.txt")
            && t.contains_key("from-a-after-copy.txt")
            && t.contains_key("from-b-after-copy.txt")
            && t.get("before-copy.txt")
                .is_some_and(|c| c.contains("edited on b"))
    });
    synced(&[&a, &b]);
    // A later edit on the restored node still reaches its peer.
    b.write("before-copy.txt", b"edited again on b\n");
    converge(&a, &b, "edit after the restore", |t| {
        t.get("before-copy.txt")
            .is_some_and(|c| c.contains("again"))
    });
    a.down();
    b.down();
}

/// A restored node that records more new changes than it lost before it
/// reconnects: its sequence is past where its peer had it, so sequence
/// numbers alone would let the peer skip its new changes. The peer's
/// last applied state is checked against the node's log instead.
#[test]
fn a_restored_node_that_wrote_more_than_it_lost_is_still_detected() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    b.write("e.txt", b"0\n");
    converge(&a, &b, "start", |t| t.contains_key("e.txt"));
    b.down();
    let backup = b.dir.path().join("home-backup");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&b.home)
        .arg(&backup)
        .status()
        .unwrap()
        .success());
    b.up();
    // Five states of one file after the copy: five sequence numbers the
    // restored node will not have, and one file its scan records once.
    for i in 1..=5 {
        b.write("e.txt", format!("{i}\n").as_bytes());
        b.settle();
        converge(&a, &b, "edits", |t| {
            t.get("e.txt")
                .is_some_and(|c| c.ends_with(&format!(":{i}\n")))
        });
    }
    b.down();
    a.down();
    std::fs::remove_dir_all(&b.home).unwrap();
    std::fs::rename(&backup, &b.home).unwrap();
    b.up();
    for i in 1..=6 {
        b.write(&format!("new-{i}.txt"), b"written after the restore\n");
    }
    b.settle();
    a.up();
    converge(&a, &b, "after the restore", |t| {
        (1..=6).all(|i| t.contains_key(&format!("new-{i}.txt")))
            && t.get("e.txt").is_some_and(|c| c.ends_with(":5\n"))
    });
    synced(&[&a, &b]);
    a.down();
    b.down();
}

/// After concurrent edits and a conflict, a version id names the same
/// content on both nodes (labels are per node), and restoring by id on
/// either gives the same bytes.
#[test]
fn version_ids_name_the_same_content_on_every_node() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("doc.bin", b"\x00base\n");
    converge(&a, &b, "base", |t| t.contains_key("doc.bin"));
    a.ok(&["pause"]);
    b.ok(&["pause"]);
    a.write("doc.bin", b"\x00from alpha\n");
    b.write("doc.bin", b"\x00from beta\n");
    a.settle();
    b.settle();
    a.ok(&["resume"]);
    b.ok(&["resume"]);
    converge(&a, &b, "conflict", |t| {
        t.keys().any(|k| k.starts_with("doc.sync-conflict-"))
    });
    synced(&[&a, &b]);
    let ids = |p: &mesh::Peer| -> Vec<String> {
        p.json(&["versions", "doc.bin"])["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (ia, ib) = (ids(&a), ids(&b));
    // One state is one row: no id twice in a node's history.
    for (name, ids) in [("A", &ia), ("B", &ib)] {
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{name} repeats a version: {ids:?}");
    }
    let shared: Vec<&String> = ia.iter().filter(|i| ib.contains(i)).collect();
    // The base and the state both ended with, at least.
    assert!(shared.len() >= 2, "A {ia:?} B {ib:?}");
    for id in &shared {
        let ca = a.ok(&["cat", "doc.bin", "--version", &id[..10]]);
        let cb = b.ok(&["cat", "doc.bin", "--version", &id[..10]]);
        assert_eq!(ca, cb, "{id} differs");
    }
    let base = shared
        .iter()
        .find(|id| a.ok(&["cat", "doc.bin", "--version", &id[..10]]) == "\x00base\n")
        .expect("the base version is on both nodes");
    // Restored by id on the running node: it does it and syncs it.
    a.ok(&["restore", "doc.bin", &base[..8]]);
    converge(&a, &b, "restored by id", |t| {
        t.get("doc.bin").is_some_and(|c| c.ends_with(":\x00base\n"))
    });
    b.write("doc.bin", b"\x00something else\n");
    b.settle();
    b.ok(&["restore", "doc.bin", &base[..8]]);
    assert_eq!(
        std::fs::read(b.root.join("doc.bin")).unwrap(),
        b"\x00base\n"
    );
    converge(&a, &b, "restored by id on B", |t| {
        t.get("doc.bin").is_some_and(|c| c.ends_with(":\x00base\n"))
    });
    a.down();
    b.down();
}

/// A paused node tells its peers so (their status says "paused", not "not
/// an allowed peer"), stays paused across a restart, and after resume
/// `sovryn sync` completes at once when there is nothing to do; with no
/// peer at all it returns at once too.
#[test]
fn pause_is_told_kept_and_sync_completes_after_resume() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("x.txt", b"x\n");
    converge(&a, &b, "start", |t| t.contains_key("x.txt"));
    synced(&[&a, &b]);
    a.ok(&["pause"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let peers = b.json(&["peers", "list"]).to_string();
        if peers.contains("paused sync") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never said the peer paused: {peers}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still paused after a restart: a write on A does not reach B.
    a.down();
    a.up();
    a.write("while-paused.txt", b"p\n");
    a.settle();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!b.root.join("while-paused.txt").exists());
    a.ok(&["resume"]);
    converge(&a, &b, "after resume", |t| {
        t.contains_key("while-paused.txt")
    });
    let started = Instant::now();
    synced(&[&a, &b]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "sync took {:?} with nothing to do",
        started.elapsed()
    );
    // A node with no peer returns at once.
    a.ok(&["peers", "remove", &b.id]);
    std::thread::sleep(Duration::from_millis(1500)); // the node reloads its config
    let started = Instant::now();
    let out = a.cmd(&["sync", "--timeout", "30"]).output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no peers"),
        "{out:?}"
    );
    a.down();
    b.down();
}

/// With the node running, the commands that write the store work from
/// another terminal (the node does them), and their changes reach peers.
#[test]
fn writing_commands_work_while_the_node_runs() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("notes.txt", b"first draft\n");
    a.ok(&["add", "notes.txt", "-m", "the first draft"]);
    a.write("notes.txt", b"second draft\n");
    a.ok(&["add", "notes.txt"]);
    // (The watcher may have recorded a write before `add` came; either
    // way both states are versions.)
    let v = a.json(&["versions", "notes.txt"]);
    assert!(
        v["versions"].as_array().is_some_and(|a| a.len() >= 2),
        "{v}"
    );
    a.ok(&["restore", "notes.txt", "v1"]);
    assert_eq!(
        std::fs::read(a.root.join("notes.txt")).unwrap(),
        b"first draft\n"
    );
    converge(&a, &b, "restored while running", |t| {
        t.get("notes.txt")
            .is_some_and(|c| c.ends_with(":first draft\n"))
    });
    a.ok(&["scan"]);
    a.ok(&["gc"]);
    a.ok(&["verify"]);
    assert!(a.ok(&["search", "draft"]).contains("notes.txt"));
    a.down();
    b.down();
}

/// `sovryn remove PATH` on a running node takes effect without a restart:
/// what is written there afterwards is neither recorded nor sent.
#[test]
fn remove_takes_effect_on_a_running_node() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("videos/one.bin", b"\x00one");
    converge(&a, &b, "before", |t| t.contains_key("videos/one.bin"));
    a.ok(&["remove", "videos"]);
    std::thread::sleep(Duration::from_millis(1500)); // the node reloads its config
    a.write("videos/two.bin", b"\x00two");
    a.write("kept.txt", b"still synced\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.root.join("kept.txt").exists() {
        assert!(Instant::now() < deadline, "kept.txt never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.root.join("videos/two.bin").exists());
    assert!(!a.ok(&["ls", "-l"]).contains("two.bin"));
    a.down();
    b.down();
}
