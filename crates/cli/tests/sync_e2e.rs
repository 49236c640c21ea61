//! End-to-end sync tests: two or three real `sovryn up` processes with
//! separate homes on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(20);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sovryn")
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Peer {
    dir: tempfile::TempDir,
    home: PathBuf,
    root: PathBuf,
    port: u16,
    id: String,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    /// A node; `folder_key` joins an existing mesh.
    fn new(name: &str, folder_key: Option<&str>) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let root = dir.path().join("root");
        let port = free_port();
        let mut p = Peer {
            home,
            root: root.clone(),
            port,
            id: String::new(),
            child: None,
            stderr: Arc::new(Mutex::new(String::new())),
            dir,
        };
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "init",
            "--storage-path",
            root.to_str().unwrap(),
            "--node-id",
            name,
            "--listen",
            &listen,
            "--no-passphrase",
        ];
        let keyfile = p.dir.path().join("folder.key");
        if let Some(k) = folder_key {
            std::fs::write(&keyfile, k).unwrap();
            args.push("--folder-key-file");
            args.push(keyfile.to_str().unwrap());
        }
        p.ok(&args);
        p.root = std::fs::canonicalize(&root).unwrap();
        p.id = p.ok(&["id"]).trim().to_owned();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--home")
            .arg(&self.home)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("SOVRYN_HOME")
            .env_remove("SOVRYN_PASSPHRASE_FILE")
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "sovryn {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn folder_key(&self) -> String {
        self.ok(&["folder-key"]).trim().to_owned()
    }

    fn trust(&self, other: &Peer) {
        self.ok(&[
            "peers",
            "add",
            &other.id,
            "--address",
            &format!("127.0.0.1:{}", other.port),
            "--name",
            "other",
        ]);
    }

    /// Starts `sovryn up` and waits until it is ready.
    fn up(&mut self) {
        let mut child = self
            .cmd(&["--log", "warn,sovryn_net=info", "up"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let log = self.stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("node did not start: {}", self.stderr.lock().unwrap());
        }
    }

    /// Stops the node with SIGTERM and checks it exits cleanly.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(
                        st.success(),
                        "node exited with {st}: {}",
                        self.stderr.lock().unwrap()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("node did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a tree holds: path → "dir", "link:TARGET", or "file MODE:CONTENT".
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if rel.rsplit('/').next().unwrap().starts_with(".sovryn-tmp-") {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link:{}", t.display()));
            } else if ft.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                let data = std::fs::read(&path).unwrap();
                out.insert(
                    rel,
                    format!("file {mode:o}:{}", String::from_utf8_lossy(&data)),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Waits until both trees are equal (and `check` holds), or fails showing both.
fn converge(a: &Peer, b: &Peer, what: &str, check: impl Fn(&BTreeMap<String, String>) -> bool) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (ta, tb) = (tree(&a.root), tree(&b.root));
        if ta == tb && check(&ta) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: trees did not converge\nA: {ta:#?}\nB: {tb:#?}\nA log:\n{}\nB log:\n{}",
                a.log(),
                b.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pair() -> (Peer, Peer) {
    let a = Peer::new("alpha", None);
    let b = Peer::new("beta", Some(&a.folder_key()));
    a.trust(&b);
    b.trust(&a);
    (a, b)
}

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
    let needle = format!("refused a connection from unknown endpoint {}", c.id);
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

#[test]
fn folder_mismatch_is_reported() {
    let mut a = Peer::new("alpha", None);
    let mut d = Peer::new("delta", None); // another folder key
    a.trust(&d);
    d.trust(&a);
    a.up();
    d.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.log().contains("folder mismatch") || d.log().contains("folder mismatch")) {
        assert!(
            Instant::now() < deadline,
            "no folder mismatch reported; A:\n{}\nD:\n{}",
            a.log(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    if let Some(mut child) = b.child.take() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
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
