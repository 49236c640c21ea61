//! End-to-end sync tests: two or three real `sovryn up` processes with
//! separate homes on 127.0.0.1.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
mod mesh;

use mesh::{converge, pair, tree, Peer, CONVERGE};

#[test]
fn two_nodes_converge_on_edits_deletes_renames_and_dirs() {
    let (mut a, mut b) = pair();
    // Something present before the nodes start.
    a.write("before.txt", b"from before\n");
    a.up();
    b.up();
    converge(&a, &b, "initial", |t| t.contains_key("before.txt"));

    a.write("notes/todo.md", b"buy milk\n");
    a.write("deep/er/still/file.bin", &[0u8, 1, 2, 3, 255]);
    std::fs::create_dir_all(a.root.join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("notes/todo.md", a.root.join("link")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    a.write("big.dat", &big);
    converge(&a, &b, "create", |t| {
        t.contains_key("notes/todo.md")
            && t.contains_key("empty/dir")
            && t.contains_key("link")
            && t.contains_key("big.dat")
            && t.contains_key("deep/er/still/file.bin")
    });
    assert_eq!(std::fs::read(b.root.join("big.dat")).unwrap(), big);

    // Edit, chmod, delete, rename (file and directory).
    a.write("notes/todo.md", b"buy milk\nwalk dog\n");
    std::fs::set_permissions(
        a.root.join("deep/er/still/file.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::remove_file(a.root.join("before.txt")).unwrap();
    std::fs::rename(a.root.join("big.dat"), a.root.join("moved.dat")).unwrap();
    std::fs::rename(a.root.join("deep"), a.root.join("shallow")).unwrap();
    std::fs::remove_dir(a.root.join("empty/dir")).unwrap();
    converge(&a, &b, "edit/delete/rename", |t| {
        t.get("notes/todo.md")
            .is_some_and(|v| v.ends_with("walk dog\n"))
            && !t.contains_key("before.txt")
            && t.contains_key("moved.dat")
            && !t.contains_key("big.dat")
            && t.contains_key("shallow/er/still/file.bin")
            && !t.contains_key("deep")
            && !t.contains_key("empty/dir")
    });
    assert!(tree(&b.root)["shallow/er/still/file.bin"].starts_with("file 640:"));

    // And the other way round.
    b.write("from-b.txt", b"hello from b\n");
    converge(&a, &b, "b to a", |t| t.contains_key("from-b.txt"));

    // The control socket: sync and live peer state.
    let out = b.ok(&["sync", "--timeout", "20"]);
    assert!(out.contains("in sync"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&a.ok(&["--json", "peers", "list"])).unwrap();
    assert_eq!(list["running"], true);
    assert_eq!(list["peers"][0]["id"], b.id.as_str());
    assert!(
        list["peers"][0]["status"]["connected"].as_u64().unwrap() >= 1,
        "{list}"
    );
    // B acknowledges everything A sent it (acks travel after each applied message).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&a.ok(&["--json", "peers", "list"])).unwrap();
        let st = &list["peers"][0]["status"];
        let (sent, acked) = (st["sent_upto"].as_u64(), st["acked_upto"].as_u64());
        if sent.is_some_and(|s| s > 0) && sent == acked {
            assert!(st["chunks_received"].as_u64().unwrap() >= 1, "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "not acknowledged: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }

    a.down();
    b.down();
}

#[test]
fn peers_add_list_remove() {
    let a = Peer::new("alpha", None);
    let b = Peer::new("beta", None);
    assert!(
        a.cmd(&["peers", "add", "not-an-id"])
            .output()
            .unwrap()
            .status
            .code()
            == Some(1)
    );
    assert!(!a
        .cmd(&["peers", "add", &a.id])
        .output()
        .unwrap()
        .status
        .success());
    assert!(!a
        .cmd(&["peers", "add", &b.id, "--address", "nonsense"])
        .output()
        .unwrap()
        .status
        .success());
    a.ok(&[
        "peers",
        "add",
        &b.id,
        "--address",
        "127.0.0.1:1",
        "--name",
        "bee",
        "--read-only",
        "--path",
        "docs/",
    ]);
    let list: serde_json::Value =
        serde_json::from_str(&a.ok(&["--json", "peers", "list"])).unwrap();
    assert_eq!(list["running"], false);
    assert_eq!(list["peers"][0]["id"], b.id.as_str());
    assert_eq!(list["peers"][0]["name"], "bee");
    assert_eq!(list["peers"][0]["read_only"], true);
    assert_eq!(list["peers"][0]["paths"][0], "docs");
    assert!(a.ok(&["peers", "list"]).contains("bee"));
    a.ok(&["peers", "remove", "bee"]);
    assert!(a.ok(&["peers", "list"]).contains("no peers"));
    assert!(!a
        .cmd(&["peers", "remove", "bee"])
        .output()
        .unwrap()
        .status
        .success());
    assert!(!a.cmd(&["sync"]).output().unwrap().status.success());
}

#[test]
fn unknown_peer_is_refused() {
    let mut a = Peer::new("alpha", None);
    // C knows A and has the folder key, but A never added C.
    let mut c = Peer::new("gamma", Some(&a.folder_key()));
    c.trust(&a);
    c.write("secret.txt", b"should not arrive\n");
    a.up();
    c.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = format!("unknown device {} asked to sync", c.id);
    while !a.log().contains(&needle) {
        assert!(
            Instant::now() < deadline,
            "A never refused C; A log:\n{}\nC log:\n{}",
            a.log(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(!a.root.join("secret.txt").exists());
    a.down();
    c.down();
}

/// Two allowlisted nodes with different folder keys: neither serves the
/// other's folder (the TLS handshake names it), both say so, and nothing
/// crosses.
#[test]
fn folder_mismatch_is_reported() {
    let mut a = Peer::new("alpha", None);
    let mut d = Peer::new("delta", None); // another folder key
    a.trust(&d);
    d.trust(&a);
    a.write("only-alpha.txt", b"alpha's\n");
    a.up();
    d.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = |p: &Peer| p.json(&["status"])["peers"][0]["state"].clone();
    while !(state(&a) == "wrong_folder_key" && state(&d) == "wrong_folder_key") {
        assert!(
            Instant::now() < deadline,
            "no folder mismatch reported; A:\n{}\nD:\n{}",
            a.log(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!d.root.join("only-alpha.txt").exists());
    a.down();
    d.down();
}

#[test]
fn concurrent_edits_make_a_conflict_copy() {
    let (mut a, mut b) = pair();
    a.write("doc.txt", b"original\n");
    a.up();
    b.up();
    converge(&a, &b, "initial", |t| t.contains_key("doc.txt"));
    b.down();
    // Edit on both sides while they cannot talk.
    a.write("doc.txt", b"edited on alpha\n");
    std::thread::sleep(Duration::from_millis(300));
    b.write("doc.txt", b"edited on beta\n");
    // Wait until A recorded its edit before B comes back.
    std::thread::sleep(Duration::from_millis(500));
    b.up();
    converge(&a, &b, "conflict", |t| {
        let copies: Vec<_> = t.keys().filter(|k| k.contains(".sync-conflict-")).collect();
        copies.len() == 1
    });
    let t = tree(&a.root);
    let copy = t
        .keys()
        .find(|k| k.contains(".sync-conflict-"))
        .unwrap()
        .clone();
    assert!(
        copy.starts_with("doc.sync-conflict-") && copy.ends_with("-alpha.txt"),
        "{copy}"
    );
    // The newer write (beta's) keeps the name; alpha's is in the copy.
    assert!(t["doc.txt"].ends_with(":edited on beta\n"), "{t:#?}");
    assert!(t[&copy].ends_with(":edited on alpha\n"));
    a.down();
    b.down();
}

#[test]
fn three_nodes_in_a_chain_converge() {
    // A — B — C: C never talks to A, changes travel through B's change log.
    let mut a = Peer::new("alpha", None);
    let key = a.folder_key();
    let mut b = Peer::new("beta", Some(&key));
    let mut c = Peer::new("gamma", Some(&key));
    a.trust(&b);
    b.trust(&a);
    b.trust(&c);
    c.trust(&b);
    a.up();
    b.up();
    c.up();
    a.write("from-a/one.txt", b"1\n");
    c.write("from-c/two.txt", b"2\n");
    converge(&a, &c, "chain", |t| {
        t.contains_key("from-a/one.txt") && t.contains_key("from-c/two.txt")
    });
    converge(&a, &b, "chain b", |t| t.contains_key("from-c/two.txt"));
    std::fs::remove_file(c.root.join("from-a/one.txt")).unwrap();
    converge(&a, &c, "chain delete", |t| {
        !t.contains_key("from-a/one.txt")
    });
    a.down();
    b.down();
    c.down();
}

#[test]
fn killed_receiver_resumes_without_torn_files() {
    let (mut a, mut b) = pair();
    let big: Vec<u8> = (0..40_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    a.write("big.bin", &big);
    for i in 0..200 {
        a.write(&format!("small/{i}.txt"), format!("file {i}\n").as_bytes());
    }
    a.up();
    b.up();
    // Kill B hard as soon as anything arrived.
    let deadline = Instant::now() + CONVERGE;
    while !b.root.join("small").exists() && !b.root.join("big.bin").exists() {
        assert!(Instant::now() < deadline, "nothing arrived: {}", b.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill();
    // Whatever is on disk is whole.
    if let Ok(data) = std::fs::read(b.root.join("big.bin")) {
        assert!(data == big, "torn big.bin ({} bytes)", data.len());
    }
    b.up();
    converge(&a, &b, "resume", |t| {
        t.contains_key("big.bin") && t.len() == 202
    });
    assert_eq!(std::fs::read(b.root.join("big.bin")).unwrap(), big);
    a.down();
    b.down();
}

#[test]
fn a_large_file_is_written_ahead_while_the_sender_reads_it() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    let deadline = Instant::now() + CONVERGE;
    while !(a.log().contains("session with") && b.log().contains("session with")) {
        assert!(Instant::now() < deadline, "no session: {}", b.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both nodes dial at start; the duplicate connection is closed within
    // a second, and files written ahead belong to the session that ends.
    // Wait until the sessions are quiet for 1.5 s.
    let mut seen = (a.log().len(), b.log().len());
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(1500) {
        assert!(
            Instant::now() < deadline,
            "sessions never settled: {}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
        let now = (a.log().len(), b.log().len());
        if now != seen {
            seen = now;
            quiet = Instant::now();
        }
    }
    // Made outside the folder and moved in whole: the running node reads
    // it and announces each durable 32 MiB step, which B fetches and
    // writes before the record exists.
    let mut big = vec![0u8; 100 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let staged = a.root.parent().unwrap().join("big.staged");
    std::fs::write(&staged, &big).unwrap();
    std::fs::rename(&staged, a.root.join("big.bin")).unwrap();
    converge(&a, &b, "large file", |t| t.contains_key("big.bin"));
    assert!(std::fs::read(b.root.join("big.bin")).unwrap() == big);
    assert!(
        b.log().contains("written ahead"),
        "B never took over a file written ahead:\n{}",
        b.log()
    );
    // Nothing left behind in the storage root.
    let temps: Vec<_> = std::fs::read_dir(&b.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".sovryn-tmp-"))
        .collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    a.down();
    b.down();
}

#[test]
fn read_only_peer_changes_are_not_applied() {
    let mut a = Peer::new("alpha", None);
    let mut b = Peer::new("beta", Some(&a.folder_key()));
    // A sends to B but does not take B's changes.
    a.ok(&[
        "peers",
        "add",
        &b.id,
        "--address",
        &format!("127.0.0.1:{}", b.port),
        "--read-only",
    ]);
    b.trust(&a);
    a.up();
    b.up();
    a.write("shared.txt", b"from a\n");
    let deadline = Instant::now() + CONVERGE;
    while !b.root.join("shared.txt").exists() {
        assert!(
            Instant::now() < deadline,
            "a's file never reached b: {}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    b.write("from-b.txt", b"rejected\n");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!a.root.join("from-b.txt").exists());
    a.down();
    b.down();
}

fn conflict_copies(t: &BTreeMap<String, String>) -> Vec<String> {
    t.keys()
        .filter(|k| k.contains(".sync-conflict-"))
        .cloned()
        .collect()
}

/// Offline edits on both sides (paused), then resumed: different lines
/// merge, the same line and binaries keep a conflict copy, delete against
/// edit keeps the edit, and nothing written is lost. Conflicts are listed
/// and resolved through the running node; a third node added later gets
/// the whole tree.
#[test]
fn offline_edits_merge_or_keep_conflict_copies() {
    let (mut a, mut b) = pair();
    let lines: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    a.write("notes.txt", lines.as_bytes());
    a.write("same.txt", b"one\ntwo\nthree\n");
    a.write("blob.bin", &[0, 1, 2, 3, 4, 5]);
    a.write("gone.txt", b"to be deleted on a, edited on b\n");
    a.write(
        "conf.json",
        b"{\n  \"x\": 1,\n  \"list\": [1, 2],\n  \"y\": {\"a\": 1}\n}\n",
    );
    a.up();
    b.up();
    converge(&a, &b, "initial", |t| t.len() == 5);

    for p in [&a, &b] {
        p.ok(&["pause"]);
        let st = p.json(&["status"]);
        assert_eq!(st["paused"], true, "{st}");
        assert_eq!(st["running"], true, "{st}");
    }
    assert!(!a.cmd(&["sync"]).output().unwrap().status.success());

    let notes_a = lines.replace("line 1\n", "line 1 edited on alpha\n");
    let notes_b = lines.replace("line 9\n", "line 9 edited on beta\n");
    a.write("notes.txt", notes_a.as_bytes());
    a.write("same.txt", b"one\nTWO from alpha\nthree\n");
    a.write("blob.bin", &[0, 1, 2, 3, 4, 0xAA]);
    std::fs::remove_file(a.root.join("gone.txt")).unwrap();
    a.write(
        "conf.json",
        b"{\n  \"x\": 2,\n  \"list\": [1, 2],\n  \"y\": {\"a\": 1}\n}\n",
    );
    a.settle();
    // B's writes are the newer ones.
    std::thread::sleep(Duration::from_millis(50));
    b.write("notes.txt", notes_b.as_bytes());
    b.write("same.txt", b"one\nTWO from beta\nthree\n");
    b.write("blob.bin", &[0, 1, 2, 3, 4, 0xBB]);
    b.write("gone.txt", b"edited on beta\n");
    b.write(
        "conf.json",
        b"{\n  \"x\": 1,\n  \"list\": [1, 2],\n  \"y\": {\"a\": 1, \"b\": 2}\n}\n",
    );
    b.settle();
    // Nothing crossed while paused.
    assert_eq!(
        std::fs::read_to_string(a.root.join("notes.txt")).unwrap(),
        notes_a
    );

    for p in [&a, &b] {
        p.ok(&["resume"]);
    }
    a.ok(&["sync", "--timeout", "20"]);
    b.ok(&["sync", "--timeout", "20"]);
    converge(&a, &b, "after resume", |t| {
        conflict_copies(t).len() == 2
            && t["notes.txt"].contains("alpha")
            && t["notes.txt"].contains("beta")
            && t.get("gone.txt")
                .is_some_and(|v| v.ends_with(":edited on beta\n"))
    });
    let t = tree(&a.root);
    let merged: String = lines
        .replace("line 1\n", "line 1 edited on alpha\n")
        .replace("line 9\n", "line 9 edited on beta\n");
    assert_eq!(t["notes.txt"], format!("file 644:{merged}"));
    assert!(
        t["same.txt"].ends_with(":one\nTWO from beta\nthree\n"),
        "{t:#?}"
    );
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.root.join("conf.json")).unwrap()).unwrap();
    assert_eq!(
        conf,
        serde_json::json!({"x": 2, "list": [1, 2], "y": {"a": 1, "b": 2}})
    );
    let copies = conflict_copies(&t);
    let same_copy = copies
        .iter()
        .find(|c| c.starts_with("same.sync-conflict-"))
        .expect("same.txt copy")
        .clone();
    let blob_copy = copies
        .iter()
        .find(|c| c.starts_with("blob.sync-conflict-") && c.ends_with("-alpha.bin"))
        .expect("blob.bin copy")
        .clone();
    assert!(t[&same_copy].ends_with(":one\nTWO from alpha\nthree\n"));
    assert_eq!(
        std::fs::read(a.root.join(&blob_copy)).unwrap(),
        [0, 1, 2, 3, 4, 0xAA]
    );
    assert_eq!(
        std::fs::read(b.root.join("blob.bin")).unwrap(),
        [0, 1, 2, 3, 4, 0xBB]
    );

    // Nothing written is lost: each side's own edits are in its history.
    assert!(a.history("notes.txt").contains(&notes_a));
    assert!(b.history("notes.txt").contains(&notes_b));
    assert!(a.history("notes.txt").contains(&merged));
    assert!(a
        .history("gone.txt")
        .contains(&"to be deleted on a, edited on b\n".to_string()));

    // conflicts list, on both sides.
    for p in [&a, &b] {
        let list = p.json(&["conflicts", "list"]);
        let list = list["conflicts"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        let originals: Vec<&str> = list
            .iter()
            .map(|c| c["original"].as_str().unwrap())
            .collect();
        assert_eq!(originals, vec!["blob.bin", "same.txt"]);
        assert!(list.iter().all(|c| c["author"] == "alpha"), "{list:?}");
    }
    let human = a.ok(&["conflicts", "list"]);
    assert!(human.contains(&same_copy) && human.contains("copy of same.txt"));

    // Resolve through the running nodes: alpha's version of same.txt wins;
    // both blobs are kept.
    let out = a.ok(&["conflicts", "resolve", "same.txt", "--keep", "remote"]);
    assert!(out.contains("resolved same.txt"), "{out}");
    let out = b.ok(&["conflicts", "resolve", &blob_copy, "--keep", "both"]);
    assert!(out.contains("blob.from-alpha.bin"), "{out}");
    assert!(!b
        .cmd(&["conflicts", "resolve", "notes.txt", "--keep", "local"])
        .output()
        .unwrap()
        .status
        .success());
    converge(&a, &b, "resolved", |t| {
        conflict_copies(t).is_empty()
            && t["same.txt"].ends_with(":one\nTWO from alpha\nthree\n")
            && t.contains_key("blob.from-alpha.bin")
    });
    assert!(b.json(&["conflicts", "list"])["conflicts"]
        .as_array()
        .unwrap()
        .is_empty());

    // A third node joins later and receives the whole tree, with its history.
    let mut c = Peer::new("gamma", Some(&a.folder_key()));
    c.trust(&a);
    a.ok(&[
        "peers",
        "add",
        &c.id,
        "--address",
        &format!("127.0.0.1:{}", c.port),
        "--name",
        "gamma",
    ]);
    c.up();
    converge(&a, &c, "third node", |t| {
        t.contains_key("blob.from-alpha.bin")
    });
    // Newest first: the merge, then what alpha had before it (its own
    // edit and the original), exactly as alpha keeps them.
    let c_history = c.history("notes.txt");
    assert_eq!(c_history.first(), Some(&merged), "{c_history:#?}");
    assert_eq!(c_history, a.history("notes.txt"));
    assert!(c_history.contains(&notes_a) && c_history.contains(&lines));
    assert_eq!(
        c.history("gone.txt"),
        a.history("gone.txt"),
        "a deleted-then-kept file's history travels too"
    );
    let st = a.json(&["status"]);
    assert_eq!(st["paused"], false);
    assert_eq!(st["peers"].as_array().unwrap().len(), 2, "{st}");

    // The daemon's log file, through `sovryn logs`.
    let logs = a.ok(&["logs"]);
    assert!(
        logs.contains("sync paused") && logs.contains("sync resumed"),
        "{logs}"
    );
    let json_line = a.ok(&["logs", "--json", "-n", "1"]);
    serde_json::from_str::<serde_json::Value>(json_line.trim()).unwrap();

    a.down();
    b.down();
    c.down();
}

/// xorshift64*: the randomized test's deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Where a write's token survives: a tree, a conflict copy, or history.
/// Every content each node ever recorded, of every path it ever held
/// (conflict copies deleted since included), read from its store once.
fn all_history(nodes: &[Peer]) -> Vec<String> {
    let key = sovryn_store::MasterKey::from_hex(&nodes[0].folder_key()).unwrap();
    let mut out = Vec::new();
    for n in nodes {
        let store =
            sovryn_store::Store::open(&n.home, &key, sovryn_store::Access::ReadOnly).unwrap();
        for rec in store.files_under("").unwrap() {
            for v in store.versions(&rec.path).unwrap() {
                if v.entry.deleted || v.entry.kind != sovryn_store::EntryKind::File {
                    continue;
                }
                if let Ok(bytes) = store.content(&v.entry) {
                    out.push(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
    }
    out
}

fn token_survives(trees: &[BTreeMap<String, String>], history: &[String], token: &str) -> bool {
    trees.iter().any(|t| t.values().any(|v| v.contains(token)))
        || history.iter().any(|c| c.contains(token))
}

/// Random creates, edits (whole rewrites and appended lines, so some merge),
/// renames and deletes on three nodes in a full mesh, with pauses
/// (disconnects), SIGTERM and SIGKILL restarts and writes while a node is
/// down. At the end every node syncs; the trees must be identical and every
/// recorded write must survive in a tree, a conflict copy or a history.
///
/// `SOVRYN_SEED=N` replays a run, `SOVRYN_RANDOM_OPS=N` sets its length
/// (default 60, about 20-40 s here).
#[test]
fn random_ops_on_three_nodes_converge() {
    let seed: u64 = std::env::var("SOVRYN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let ops: usize = std::env::var("SOVRYN_RANDOM_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("random_ops_on_three_nodes_converge: SOVRYN_SEED={seed} SOVRYN_RANDOM_OPS={ops}");
    let fail = |msg: String| -> ! {
        panic!("{msg}\n(replay with SOVRYN_SEED={seed} SOVRYN_RANDOM_OPS={ops})")
    };
    let mut rng = Rng(seed | 1);

    let a = Peer::new("alpha", None);
    let key = a.folder_key();
    let mut nodes = vec![
        a,
        Peer::new("beta", Some(&key)),
        Peer::new("gamma", Some(&key)),
    ];
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                nodes[i].trust(&nodes[j]);
            }
        }
    }
    for n in nodes.iter_mut() {
        n.up();
    }
    let pool: Vec<String> = [
        "a.txt",
        "b.md",
        "c.json",
        "d.bin",
        "x/e.txt",
        "x/f.txt",
        "y/z/g.txt",
        // A file and a directory at one path: `k` on one node, `k/inner.txt`
        // on another (type clashes, also made by the `retype` operation).
        "k",
        "k/inner.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // (token, node, path) of every write.
    let mut writes: Vec<(String, usize, String)> = Vec::new();
    // Paths written on a stopped node since it stopped: not written again
    // until it records them (an unrecorded write may rightly be overwritten).
    let mut dirty: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut paused = [false; 3];
    // When beta's home was copied, and (copy, restore) once it was restored.
    let mut copied_at: Option<usize> = None;
    let mut stopped_at = [0usize; 3];
    let mut restore_window: Option<(usize, usize)> = None;
    let mut trace = Vec::new();

    for op in 0..ops {
        let n = rng.below(3) as usize;
        let roll = rng.below(100);
        let path = rng.pick(&pool).clone();
        let token = format!("tok-{seed}-{op}-{}", nodes[n].id.get(..6).unwrap_or(""));
        let abs = nodes[n].root.join(&path);
        let exists = abs.is_file();
        let node_up = nodes[n].running();
        // Locally impossible writes: under a file, or over a directory.
        let impossible = abs.is_dir()
            || abs
                .ancestors()
                .skip(1)
                .take_while(|p| *p != nodes[n].root)
                .any(|p| p.exists() && !p.is_dir());
        let blocked = impossible || (!node_up && dirty[n].contains(&path));
        let what = match roll {
            // Only operations on the path itself wait for it (a stopped node
            // must still be started).
            0..=74 | 92..=97 if blocked => "skip".to_string(),
            0..=29 => {
                // A whole new content (binary for .bin).
                let body = if path.ends_with(".bin") {
                    let mut v = vec![0u8, 1, 2];
                    v.extend_from_slice(token.as_bytes());
                    v
                } else if path.ends_with(".json") {
                    format!("{{\"{token}\": {op}}}\n").into_bytes()
                } else {
                    format!("head\n{token}\nfoot\n").into_bytes()
                };
                nodes[n].write(&path, &body);
                writes.push((token.clone(), n, path.clone()));
                format!("write {path}")
            }
            30..=54 if exists && !path.ends_with(".bin") => {
                // An edit that keeps the rest: appends a line (or adds a key).
                let old = std::fs::read_to_string(&abs).unwrap_or_default();
                let new = if path.ends_with(".json") {
                    match serde_json::from_str::<serde_json::Value>(&old) {
                        Ok(serde_json::Value::Object(mut m)) => {
                            m.insert(token.clone(), op.into());
                            serde_json::to_string(&m).unwrap() + "\n"
                        }
                        _ => format!("{{\"{token}\": {op}}}\n"),
                    }
                } else if rng.below(2) == 0 {
                    format!("{old}{token}\n")
                } else {
                    format!("{token}\n{old}")
                };
                nodes[n].write(&path, new.as_bytes());
                writes.push((token.clone(), n, path.clone()));
                format!("edit {path}")
            }
            55..=64 if exists => {
                let to = rng.pick(&pool).clone();
                let dest = nodes[n].root.join(&to);
                if to == path
                    || dest.exists()
                    || dest.is_symlink()
                    || (!node_up && dirty[n].contains(&to))
                    || dest.starts_with(&abs)
                    || std::fs::create_dir_all(dest.parent().unwrap()).is_err()
                {
                    "skip".to_string()
                } else {
                    std::fs::rename(&abs, &dest).unwrap();
                    if !node_up {
                        dirty[n].push(to.clone());
                    }
                    format!("rename {path} {to}")
                }
            }
            65..=74 if exists => {
                std::fs::remove_file(&abs).unwrap();
                format!("delete {path}")
            }
            75..=82 => {
                if node_up {
                    let cmd = if paused[n] { "resume" } else { "pause" };
                    nodes[n].ok(&[cmd]);
                    paused[n] = !paused[n];
                    cmd.to_string()
                } else {
                    "skip".to_string()
                }
            }
            83..=91 => {
                if node_up {
                    stopped_at[n] = op;
                    if rng.below(2) == 0 {
                        nodes[n].settle();
                        nodes[n].down();
                        "sigterm".to_string()
                    } else {
                        // Only after the node recorded its writes: an
                        // unrecorded write dies with it by design.
                        nodes[n].settle();
                        nodes[n].kill();
                        "sigkill".to_string()
                    }
                } else if roll <= 85 && n == 1 && restore_window.is_none() {
                    // Beta's home, stopped, is copied, and later brought back
                    // from the copy (its index, change log and history go
                    // back; its folder stays as it is). Once per run, on one
                    // node: what it recorded in between and never sent is
                    // gone with its history, as with any restored backup;
                    // what reached the others must survive.
                    let backup = nodes[n].dir.path().join("home-copy");
                    if let Some(from) = copied_at.filter(|_| backup.exists()) {
                        std::fs::remove_dir_all(&nodes[n].home).unwrap();
                        std::fs::rename(&backup, &nodes[n].home).unwrap();
                        restore_window = Some((from, op));
                        "home restored from its copy".to_string()
                    } else {
                        // Writes made since it stopped are on its disk
                        // only; they are recorded after this copy.
                        copied_at = Some(stopped_at[n]);
                        let cp = Command::new("cp")
                            .arg("-a")
                            .arg(&nodes[n].home)
                            .arg(&backup)
                            .status()
                            .unwrap();
                        assert!(cp.success());
                        "home copied".to_string()
                    }
                } else {
                    nodes[n].up();
                    dirty[n].clear();
                    "start".to_string()
                }
            }
            92..=95 if node_up || !dirty[n].iter().any(|d| d.starts_with('k')) => {
                // Changes the type of `k`: a file becomes a directory with a
                // file in it, a directory becomes a file.
                let k = nodes[n].root.join("k");
                let (kind, written) = if k.is_dir() {
                    std::fs::remove_dir_all(&k).unwrap();
                    ("file", "k")
                } else {
                    if k.exists() || k.is_symlink() {
                        std::fs::remove_file(&k).unwrap();
                    }
                    ("dir", "k/inner.txt")
                };
                nodes[n].write(written, format!("{token}\n").as_bytes());
                writes.push((token.clone(), n, written.to_string()));
                if !node_up {
                    dirty[n].extend(["k".to_string(), "k/inner.txt".to_string()]);
                }
                format!("retype k {kind}")
            }
            96..=97 if node_up => {
                // A symlink appears or goes (clashes with files by name).
                let l = nodes[n].root.join("l");
                if l.is_symlink() {
                    std::fs::remove_file(&l).unwrap();
                    "unlink l".to_string()
                } else if l.exists() {
                    "skip".to_string()
                } else {
                    std::os::unix::fs::symlink("a.txt", &l).unwrap();
                    "symlink l".to_string()
                }
            }
            _ => {
                std::thread::sleep(Duration::from_millis(rng.below(400)));
                "sleep".to_string()
            }
        };
        if what.starts_with("write")
            || what.starts_with("edit")
            || what.starts_with("rename")
            || what.starts_with("retype")
            || what.ends_with("link l")
        {
            if nodes[n].running() {
                nodes[n].settle();
            } else if !what.starts_with("rename") {
                dirty[n].push(path.clone());
            }
        }
        trace.push(format!("{op}: {} {what}", ["alpha", "beta", "gamma"][n]));
        std::thread::sleep(Duration::from_millis(rng.below(120)));
    }

    // Bring everything back and sync.
    for (i, n) in nodes.iter_mut().enumerate() {
        if !n.running() {
            n.up();
        }
        if paused[i] {
            n.ok(&["resume"]);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for n in &nodes {
            let _ = n.cmd(&["sync", "--timeout", "10"]).output();
        }
        let trees: Vec<_> = nodes.iter().map(|n| tree(&n.root)).collect();
        if trees[0] == trees[1] && trees[1] == trees[2] {
            break;
        }
        if Instant::now() > deadline {
            fail(format!(
                "trees differ after sync\ntrace:\n{}\nA: {:#?}\nB: {:#?}\nC: {:#?}\nlogs:\n{}\n{}\n{}",
                trace.join("\n"),
                trees[0],
                trees[1],
                trees[2],
                nodes[0].log(),
                nodes[1].log(),
                nodes[2].log()
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Converged, `sovryn sync` completes on every node (nothing stuck "to
    // receive" or "to send").
    for (i, n) in nodes.iter().enumerate() {
        let out = n.cmd(&["sync", "--timeout", "30"]).output().unwrap();
        if !out.status.success() {
            fail(format!(
                "sync did not complete on node {i}: {}{}\ntrace:\n{}\nlog:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                trace.join("\n"),
                n.log()
            ));
        }
    }

    // Every write survives somewhere.
    let t = tree(&nodes[0].root);
    let trees: Vec<_> = nodes.iter().map(|n| tree(&n.root)).collect();
    let missing: Vec<&(String, usize, String)> = writes
        .iter()
        .filter(|(tok, _, _)| !token_survives(&trees, &[], tok))
        .collect();
    // Only when some write is not in a tree: every recorded version, once.
    let history = if missing.is_empty() {
        Vec::new()
    } else {
        all_history(&nodes)
    };
    let op_of = |tok: &str| tok.split('-').nth(2).and_then(|o| o.parse::<usize>().ok());
    let lost: Vec<&(String, usize, String)> = missing
        .into_iter()
        .filter(|(tok, n, _)| {
            // Beta's unsent writes between its home copy and the restore
            // went with its history: not a sync loss.
            let in_window = *n == 1
                && restore_window
                    .zip(op_of(tok))
                    .is_some_and(|((a, b), o)| o >= a && o <= b);
            !in_window && !token_survives(&trees, &history, tok)
        })
        .collect();
    if !lost.is_empty() {
        fail(format!(
            "{} of {} writes lost: {lost:?}\ntrace:\n{}\ntree: {t:#?}",
            lost.len(),
            writes.len(),
            trace.join("\n")
        ));
    }
    let count = |w: &str| trace.iter().filter(|t| t.contains(w)).count();
    if std::env::var_os("SOVRYN_TRACE").is_some() {
        eprintln!("trace:\n{}", trace.join("\n"));
    }
    eprintln!(
        "seed {seed}: {ops} ops, {} writes ({} type changes of k, {} symlink ops), {} restarts, {} homes restored, {} conflict copies, all converged",
        writes.len(),
        count("retype"),
        count("link l"),
        count("sigkill") + count("sigterm"),
        count("home restored"),
        conflict_copies(&t).len()
    );
    for n in nodes.iter_mut() {
        n.down();
    }
}
