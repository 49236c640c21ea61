//! A node whose disk fills while files arrive: it stays up, corrupts
//! nothing, and finishes the sync once space returns. Needs a small file
//! system of its own (a tmpfs, mounted by the test as root); skips
//! otherwise, saying so.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, random_bytes, TestNode};

/// A tmpfs mounted over a directory; unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?
            .status
            .success();
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    /// Remounts read-write with a new size.
    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,rw,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_corrupts_nothing_and_sync_finishes_when_space_returns() {
    let a_port = free_port();
    let b_port = free_port();
    let a = TestNode::with_listen("alpha", &format!("127.0.0.1:{a_port}"), None);
    // Beta's home and folder on a 24 MiB file system of their own.
    let b = TestNode::uninit();
    let Some(fs) = Tmpfs::mount(b.dir.path(), "24m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and mount(8))");
        return;
    };
    let keyfile = a.dir.path().join("key");
    std::fs::write(&keyfile, a.folder_key()).unwrap();
    b.ok(&[
        "init",
        "--storage-path",
        b.root.to_str().unwrap(),
        "--node-id",
        "beta",
        "--listen",
        &format!("127.0.0.1:{b_port}"),
        "--no-passphrase",
        "--folder-key-file",
        keyfile.to_str().unwrap(),
    ]);
    b.ok(&["config", "set", "mcp.enabled", "false"]);
    b.no_lan_discovery();
    a.trust(&b.id(), Some(&format!("127.0.0.1:{b_port}")));
    b.trust(&a.id(), Some(&format!("127.0.0.1:{a_port}")));
    // 40 MiB of incompressible files: twice that is needed on beta (its
    // store and its folder), more than three times what it has.
    for i in 0..10u64 {
        a.write(&format!("big/f{i}.bin"), &random_bytes(4 << 20, i + 1));
    }
    a.write("small.txt", b"small\n");
    let _a_up = a.up();
    let b_up = b.up();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b_up.log().contains("No space left") && !b_up.log().contains("disk is full") {
        assert!(
            Instant::now() < deadline,
            "beta never ran out of space:\n{}",
            b_up.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Full: still up, answering, no torn file under a real name.
    std::thread::sleep(Duration::from_secs(2));
    assert!(b.json(&["status"]).is_object());
    for i in 0..10u64 {
        let p = b.path(&format!("big/f{i}.bin"));
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(m.len(), 4 << 20, "a torn file under {}", p.display());
        }
    }
    // Space returns: the sync completes, the store verifies.
    fs.resize("256m");
    let out = b.run(&["sync", "--timeout", "120"]);
    assert!(
        out.status.success(),
        "sync did not complete after space returned: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        b_up.log()
    );
    for i in 0..10u64 {
        let got = std::fs::read(b.path(&format!("big/f{i}.bin"))).unwrap();
        assert!(got == random_bytes(4 << 20, i + 1), "big/f{i}.bin differs");
    }
    let v = b.json(&["verify"]);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    drop(b_up);
}

/// A state that passes every check but cannot be written here (its
/// directory is a read-only file system) is reported, does not hold up the
/// states behind it, and is applied by a later retry once it can be.
#[test]
fn a_state_that_cannot_be_applied_is_reported_and_retried() {
    let a_port = free_port();
    let b_port = free_port();
    let a = TestNode::with_listen("alpha", &format!("127.0.0.1:{a_port}"), None);
    let b = TestNode::with_listen(
        "beta",
        &format!("127.0.0.1:{b_port}"),
        Some(&a.folder_key()),
    );
    std::fs::create_dir_all(b.path("ro")).unwrap();
    let Some(fs) = Tmpfs::mount(&b.path("ro"), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and mount(8))");
        return;
    };
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs.0)
        .output()
        .unwrap();
    assert!(ro.status.success());
    a.trust(&b.id(), Some(&format!("127.0.0.1:{b_port}")));
    b.trust(&a.id(), Some(&format!("127.0.0.1:{a_port}")));
    a.write("ro/blocked.txt", b"waits for a writable disk\n");
    a.write("z-after.txt", b"behind it\n");
    let _a_up = a.up();
    let b_up = b.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.path("z-after.txt").exists() {
        assert!(Instant::now() < deadline, "blocked:\n{}", b_up.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b
        .json(&["peers", "list"])
        .to_string()
        .contains("could not be applied")
    {
        assert!(Instant::now() < deadline, "not reported:\n{}", b_up.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!b.path("ro/blocked.txt").exists());
    fs.resize("4m"); // remount read-write
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.path("ro/blocked.txt").exists() {
        assert!(Instant::now() < deadline, "never retried:\n{}", b_up.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = b.run(&["sync", "--timeout", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
