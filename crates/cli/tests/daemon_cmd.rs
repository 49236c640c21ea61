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
