//! `status` and `sync` tell the truth about each peer: a transfer in
//! progress shows what is left and how fast it moves on both sides, a
//! paused node and a paused peer say so, a peer with another folder key is
//! an error with its fix, and `sync` returns at once when no peer can sync.

use std::time::{Duration, Instant};

mod common;
mod mesh;

use mesh::{pair, Peer};

/// The first peer in `status --json`.
fn peer_status(n: &Peer) -> serde_json::Value {
    n.json(&["status"])["peers"][0].clone()
}

/// Polls `status --json` until `want` holds for its first peer.
fn wait_for(n: &Peer, what: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = peer_status(n);
        if want(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last status {p}\nlog:\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_transfer_shows_what_is_left_and_its_rate_on_both_sides() {
    let (mut a, mut b) = pair();
    // 12 MiB at most 2 MiB/s into B: six seconds of transfer to look at.
    b.ok(&["config", "set", "sync.max_recv_kib_per_sec", "2048"]);
    a.up();
    b.up();
    wait_for(&b, "connected", |p| p["state"] == "connected");
    // Made outside the folder and renamed in: one state of one file.
    let outside = a.dir.path().join("big.bin");
    std::fs::write(&outside, common::random_bytes(12 << 20, 7)).unwrap();
    std::fs::rename(&outside, a.root.join("big.bin")).unwrap();
    let recv = wait_for(&b, "B receiving", |p| {
        p["to_receive_bytes"].as_u64().unwrap_or(0) > 0
            && p["receive_rate"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(recv["state"], "connected");
    assert!(recv["to_receive_files"].as_u64().unwrap() >= 1, "{recv}");
    assert!(
        recv["to_receive_bytes"].as_u64().unwrap() <= 12 << 20,
        "{recv}"
    );
    let rate = recv["receive_rate"].as_u64().unwrap();
    assert!(
        rate <= 4 << 20,
        "the limit is 2 MiB/s, shown {rate}: {recv}"
    );
    let send = wait_for(&a, "A sending", |p| {
        p["to_send_bytes"].as_u64().unwrap_or(0) >= 12 << 20
            && p["send_rate"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(send["to_send_files"], 1, "{send}");
    let human = b.ok(&["status"]);
    assert!(
        human.contains("receiving 1 file(s)") && human.contains("to go at"),
        "{human}"
    );
    // Done: nothing left either way.
    mesh::converge(&a, &b, "big file", |t| t.contains_key("big.bin"));
    let done = wait_for(&a, "A in sync", |p| p["to_send_files"] == 0);
    assert_eq!(done["to_send_bytes"], 0);
    wait_for(&b, "B in sync", |p| {
        p["to_receive_files"] == 0 && p["to_receive_bytes"] == 0
    });
    assert!(b.ok(&["status"]).contains("connected, in sync"));
    a.down();
    b.down();
}

#[test]
fn paused_nodes_and_peers_say_paused_and_sync_returns_at_once() {
    let (mut a, mut b) = pair();
    a.up();
    b.up();
    wait_for(&a, "connected", |p| p["state"] == "connected");
    a.ok(&["pause"]);
    let here = wait_for(&a, "A paused", |p| p["state"] == "paused");
    assert_eq!(here["connected"], 0);
    assert!(a
        .ok(&["status"])
        .contains("paused (sync is paused on this node"));
    let there = wait_for(&b, "B sees A paused", |p| p["state"] == "peer_paused");
    assert!(
        there["last_error"].as_str().unwrap().contains("paused"),
        "{there}"
    );
    assert!(b.ok(&["peers", "list"]).contains("paused by the peer"));
    // Nothing can sync: B's `sync` says why at once instead of timing out.
    let started = Instant::now();
    let err = b.fails_with(&["sync", "--timeout", "60"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("no peer can sync") && err.contains("paused"),
        "{err}"
    );
    a.ok(&["resume"]);
    wait_for(&a, "A resumed", |p| p["state"] == "connected");
    a.ok(&["sync", "--timeout", "30"]);
    b.ok(&["sync", "--timeout", "30"]);
    a.down();
    b.down();
}

#[test]
fn a_peer_with_another_folder_key_is_an_error_with_its_fix() {
    let mut a = Peer::new("alpha", None);
    let mut c = Peer::new("gamma", None); // its own folder key
    a.trust(&c);
    c.trust(&a);
    a.up();
    c.up();
    let p = wait_for(&a, "wrong key", |p| p["state"] == "wrong_folder_key");
    assert_eq!(p["connected"], 0, "{p}");
    assert!(
        p["last_error"].as_str().unwrap().contains("folder-key"),
        "{p}"
    );
    let human = a.ok(&["status"]);
    assert!(
        human.contains("error: the peer keeps another folder"),
        "{human}"
    );
    let started = Instant::now();
    let err = a.fails_with(&["sync", "--timeout", "60"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.contains("another folder"), "{err}");
    a.down();
    c.down();
}
