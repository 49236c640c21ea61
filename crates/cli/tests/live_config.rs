//! Config changes take effect on a running node without a restart:
//! `sovryn remove`, `.sovrynignore` lines (added and taken back),
//! retention, bandwidth; and concurrent writers of `config.toml` keep
//! each other's changes.

use std::time::Duration;

mod common;
mod mesh;

use mesh::{converge, pair};

#[test]
fn rules_and_retention_apply_to_a_running_node() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    a.write("seen.txt", b"1");
    converge(&a, &b, "first file", |t| t.contains_key("seen.txt"));

    // A new .sovrynignore line on A: matching files stay on A only.
    a.write(".sovrynignore", b"*.log\n");
    a.settle();
    a.write("build.log", b"noise");
    a.write("notes.txt", b"kept");
    b.wait_for_file("notes.txt");
    a.settle();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.root.join("build.log").exists(),
        "an ignored file was synced"
    );
    // The rule taken back: the file is recorded and synced at once.
    std::fs::remove_file(a.root.join(".sovrynignore")).unwrap();
    converge(&a, &b, "unignored", |t| t.contains_key("build.log"));

    // B ignores what A sends, then takes its line back: it fetches it.
    b.write(".sovrynignore", b"*.bak\n");
    b.settle();
    a.write("x.bak", b"backup");
    a.write("y.txt", b"marker");
    b.wait_for_file("y.txt");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.root.join("x.bak").exists(), "B took a file it ignores");
    std::fs::remove_file(b.root.join(".sovrynignore")).unwrap();
    converge(&a, &b, "unignored on the receiver", |t| {
        t.contains_key("x.bak")
    });

    // `sovryn remove` on B: B keeps nothing more under sub/.
    b.write("sub/old.txt", b"before");
    converge(&a, &b, "sub", |t| t.contains_key("sub/old.txt"));
    b.ok(&["remove", "sub"]);
    a.write("sub/new.txt", b"after");
    a.write("other.txt", b"after");
    b.wait_for_file("other.txt");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.root.join("sub/new.txt").exists(),
        "a removed path was still synced"
    );
    // ... and `keep` takes it back.
    b.ok(&["keep", "sub"]);
    b.wait_for_file("sub/new.txt");

    // Retention: the running node's gc uses the value set a moment ago.
    for i in 0..5 {
        a.write("many.txt", format!("version {i}").as_bytes());
        a.settle();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(a.history("many.txt").len() >= 5);
    a.ok(&["config", "set", "retention.keep_last", "2"]);
    a.ok(&["gc"]);
    assert_eq!(
        a.history("many.txt").len(),
        2,
        "{:?}",
        a.history("many.txt")
    );
    a.down();
    b.down();
}

#[test]
fn concurrent_config_writers_keep_each_others_changes() {
    let a = mesh::Peer::new("alpha", None);
    // Ten `peers add` at once: every one of them is in config.toml after.
    let ids: Vec<String> = (0..10)
        .map(|_| mesh::Peer::new("x", None).id.clone())
        .collect();
    std::thread::scope(|s| {
        for id in &ids {
            let a = &a;
            s.spawn(move || a.ok(&["peers", "add", id, "--address", "127.0.0.1:9"]));
        }
    });
    let list = a.json(&["peers", "list"]);
    let got = list["peers"].as_array().unwrap().len();
    assert_eq!(got, ids.len(), "{list}");
}
