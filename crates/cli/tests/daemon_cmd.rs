//! `sovryn daemon start|stop|status` with the real binary.

mod common;

use common::TestNode;

#[test]
fn daemon_start_status_stop() {
    let n = TestNode::uninit();
    n.ok(&[
        "init",
        "--storage-path",
        n.root.to_str().unwrap(),
        "--node-id",
        "bg",
        "--listen",
        "127.0.0.1:0",
        "--mcp-port",
        "0",
        "--no-passphrase",
    ]);
    let st = n.json(&["daemon", "status"]);
    assert_eq!(st["running"], false);

    let started = n.json(&["daemon", "start"]);
    assert_eq!(started["running"], true, "{started}");
    let pid = started["pid"].as_i64().unwrap();
    assert!(started["listening"][0]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(started["mcp_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    // A second start refuses; status reports the same process.
    assert!(n.fails(&["daemon", "start"]).contains("already running"));
    let st = n.json(&["daemon", "status"]);
    assert_eq!(st["pid"].as_i64(), Some(pid));

    // The background node syncs the folder: a new file is recorded.
    n.write("seen.txt", b"hello");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while n.json(&["daemon", "status"])["seq"].as_u64().unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the file was never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let stopped = n.json(&["daemon", "stop"]);
    assert_eq!(stopped["stopped"], true, "{stopped}");
    // SAFETY: kill(2) with signal 0 only probes the pid.
    assert_ne!(
        unsafe { libc::kill(pid as i32, 0) },
        0,
        "pid {pid} still alive"
    );
    assert_eq!(n.json(&["daemon", "status"])["running"], false);
    assert_eq!(n.json(&["daemon", "stop"])["stopped"], false);
    let log = std::fs::read_to_string(n.home.join("daemon.log")).unwrap();
    assert!(log.contains("ready") && log.contains("stopping"), "{log}");
}

/// A passphrase-protected node started once with its passphrase: every
/// command from another terminal works without it (the running node
/// answers reads from its own handles and does the writes).
#[test]
fn a_locked_running_node_serves_every_command_without_the_passphrase() {
    let n = TestNode::uninit();
    let pass = n.dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    let p = pass.to_str().unwrap();
    let root = n.root.to_str().unwrap();
    n.ok(&[
        "--passphrase-file",
        p,
        "init",
        "--storage-path",
        root,
        "--node-id",
        "locked",
        "--listen",
        "127.0.0.1:0",
        "--mcp-port",
        "0",
    ]);
    // Without the node and without the passphrase: refused, nothing asked.
    assert!(n.fails(&["versions", "a.md"]).contains("locked"));
    n.ok(&["--passphrase-file", p, "daemon", "start"]);
    n.write("a.md", b"one\n");
    n.ok(&["add", "a.md", "-m", "first"]);
    n.write("a.md", b"two\nwords to find\n");
    n.ok(&["scan"]);
    let v = n.json(&["versions", "a.md"]);
    let versions = v["versions"].as_array().unwrap();
    assert!(versions.len() >= 2, "{v}");
    assert!(versions.iter().any(|x| x["message"] == "first"), "{v}");
    let first_id = versions.last().unwrap()["id"].as_str().unwrap()[..8].to_owned();
    assert_eq!(n.ok(&["cat", "a.md", "--version", &first_id]), "one\n");
    assert!(n
        .ok(&["diff", "a.md", &first_id])
        .contains("+words to find"));
    assert_eq!(n.json(&["search", "words"])["hits"][0]["path"], "a.md");
    assert_eq!(n.json(&["ls"])["entries"][0]["path"], "a.md");
    assert!(n.json(&["stats"])["files"].as_u64().unwrap() >= 1);
    assert_eq!(
        n.json(&["verify"])["problems"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        n.json(&["conflicts", "list"])["conflicts"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let st = n.json(&["status"]);
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["pending_changes"], 0, "{st}");
    n.ok(&["restore", "a.md", &first_id]);
    assert_eq!(std::fs::read(n.root.join("a.md")).unwrap(), b"one\n");
    n.ok(&["gc"]);
    n.ok(&["daemon", "stop"]);
}
