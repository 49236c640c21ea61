//! A mesh of real `sovryn up` processes on 127.0.0.1 for end-to-end
//! tests: nodes with their own homes and ports, their trees, convergence.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{bin, free_port, Running};

pub const CONVERGE: Duration = Duration::from_secs(20);

pub struct Peer {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub root: PathBuf,
    pub port: u16,
    pub id: String,
    /// The running `sovryn up`, if any.
    pub node: Option<Running>,
    /// Its stderr, over every run.
    pub stderr: Arc<Mutex<String>>,
}

impl Peer {
    /// A node; `folder_key` joins an existing mesh.
    pub fn new(name: &str, folder_key: Option<&str>) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let root = dir.path().join("root");
        let port = free_port();
        let mut p = Peer {
            home,
            root: root.clone(),
            port,
            id: String::new(),
            node: None,
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

    /// A device with a home and a port but no node yet (it joins or
    /// recovers).
    pub fn newcomer() -> Peer {
        let dir = tempfile::tempdir().unwrap();
        Peer {
            home: dir.path().join("home"),
            root: dir.path().join("root"),
            port: free_port(),
            id: String::new(),
            node: None,
            stderr: Arc::new(Mutex::new(String::new())),
            dir,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
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

    pub fn ok(&self, args: &[&str]) -> String {
        crate::common::succeeded(args, self.cmd(args).output().unwrap())
    }

    /// Waits until `rel` is on this node's disk.
    pub fn wait_for_file(&self, rel: &str) {
        let deadline = Instant::now() + CONVERGE;
        while !self.root.join(rel).exists() {
            assert!(
                Instant::now() < deadline,
                "{rel} never arrived:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails_with(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            !out.status.success(),
            "sovryn {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn folder_key(&self) -> String {
        self.ok(&["folder-key"]).trim().to_owned()
    }

    pub fn trust(&self, other: &Peer) {
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
    pub fn up(&mut self) {
        let cmd = self.cmd(&["--log", "warn,sovryn_net=info,sovryn_daemon=info", "up"]);
        self.node = Some(Running::start_logging_to(cmd, self.stderr.clone()));
    }

    /// Stops the node with SIGTERM and checks it exits cleanly.
    pub fn down(&mut self) {
        if let Some(mut r) = self.node.take() {
            r.stop();
        }
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn running(&self) -> bool {
        self.node.is_some()
    }

    /// Kills the node with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut r) = self.node.take() {
            r.kill9();
        }
    }

    /// Waits until the node recorded everything on disk (status sees no
    /// unrecorded change), so a later write cannot hide an earlier one.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = self.json(&["status"]);
            if st["pending_changes"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node never recorded its changes: {st}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Every content `path` ever had here (live versions), via `versions` and `cat --version`.
    pub fn history(&self, path: &str) -> Vec<String> {
        let out = self.cmd(&["--json", "versions", path]).output().unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        let vs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut contents = Vec::new();
        for v in vs["versions"].as_array().unwrap() {
            if v["deleted"] == true {
                continue;
            }
            let label = v["version"].as_str().unwrap();
            let out = self
                .cmd(&["cat", path, "--version", label])
                .output()
                .unwrap();
            if out.status.success() {
                contents.push(String::from_utf8_lossy(&out.stdout).into_owned());
            }
        }
        contents
    }
}

/// The vault passphrase of the backup tests.
pub const VAULT_PASSPHRASE: &str = "a long vault passphrase for the tests";

/// A node named `name` with a vault sealed by [`VAULT_PASSPHRASE`], and
/// the file holding that passphrase.
pub fn with_vault(name: &str) -> (Peer, PathBuf) {
    let a = Peer::new(name, None);
    let pf = a.dir.path().join("vault.pass");
    std::fs::write(&pf, VAULT_PASSPHRASE).unwrap();
    a.ok(&[
        "vault",
        "init",
        "--vault-passphrase-file",
        pf.to_str().unwrap(),
    ]);
    (a, pf)
}

/// `sovryn --json recover --from F...` (with `extra` options) into a fresh
/// home, the passphrase from `pass`.
pub fn recover_new(pass: &Path, from: &[&str], extra: &[String]) -> (Peer, std::process::Output) {
    let r = Peer::newcomer();
    let listen = format!("127.0.0.1:{}", r.port);
    let root = r.root.to_str().unwrap().to_owned();
    let mut args = vec![
        "--json",
        "--passphrase-file",
        pass.to_str().unwrap(),
        "recover",
    ];
    for f in from {
        args.extend(["--from", f]);
    }
    args.extend(["--storage-path", &root, "--listen", &listen]);
    args.extend(extra.iter().map(String::as_str));
    let out = r.cmd(&args).output().unwrap();
    (r, out)
}

/// Every file under `dir`, with its path from `dir`.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// What a tree holds: path → "dir", "link:TARGET", or "file MODE:CONTENT".
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    pub fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
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
pub fn converge(a: &Peer, b: &Peer, what: &str, check: impl Fn(&BTreeMap<String, String>) -> bool) {
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

pub fn pair() -> (Peer, Peer) {
    let a = Peer::new("alpha", None);
    let b = Peer::new("beta", Some(&a.folder_key()));
    a.trust(&b);
    b.trust(&a);
    (a, b)
}

/// Three members of one folder, each trusting the other two (not started).
pub fn trio() -> (Peer, Peer, Peer) {
    let a = Peer::new("alpha", None);
    let key = a.folder_key();
    let b = Peer::new("beta", Some(&key));
    let c = Peer::new("gamma", Some(&key));
    for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        x.trust(y);
    }
    (a, b, c)
}

/// Random bytes (incompressible), different for each seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
