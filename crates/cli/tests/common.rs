//! Helpers for end-to-end tests that run the real `sovryn` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A node in a temp dir: its home and storage path.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub root: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sovryn")
}

impl TestNode {
    /// A node initialised without a passphrase.
    pub fn new(name: &str) -> Self {
        let n = Self::uninit();
        n.ok(&[
            "init",
            "--storage-path",
            n.root.to_str().unwrap(),
            "--node-id",
            name,
            "--no-passphrase",
        ]);
        n.no_lan_discovery();
        n
    }

    /// A node listening on `listen` (e.g. `127.0.0.1:PORT`) with MCP off;
    /// `folder_key` joins an existing mesh. mDNS is off, like every test
    /// node's outside a network namespace the test made itself.
    pub fn with_listen(name: &str, listen: &str, folder_key: Option<&str>) -> Self {
        let n = Self::uninit();
        let keyfile = n.dir.path().join("folder.key");
        let mut args = vec![
            "init",
            "--storage-path",
            n.root.to_str().unwrap(),
            "--node-id",
            name,
            "--listen",
            listen,
            "--no-passphrase",
        ];
        if let Some(k) = folder_key {
            std::fs::write(&keyfile, k).unwrap();
            args.push("--folder-key-file");
            args.push(keyfile.to_str().unwrap());
        }
        n.ok(&args);
        n.ok(&["config", "set", "mcp.enabled", "false"]);
        n.no_lan_discovery();
        n
    }

    /// Turns LAN discovery (mDNS multicast) off: test nodes talk to
    /// 127.0.0.1 only.
    pub fn no_lan_discovery(&self) {
        self.ok(&["config", "set", "sync.mdns", "false"]);
    }

    /// This node's endpoint id.
    pub fn id(&self) -> String {
        self.ok(&["id"]).trim().to_owned()
    }

    /// The shared folder key (to join another node to this mesh).
    pub fn folder_key(&self) -> String {
        self.ok(&["folder-key"]).trim().to_owned()
    }

    /// Trusts `id`, reachable at `address` (or found by discovery when `None`).
    pub fn trust(&self, id: &str, address: Option<&str>) {
        let mut args = vec!["peers", "add", id];
        if let Some(a) = address {
            args.extend(["--address", a]);
        }
        self.ok(&args);
    }

    /// Starts `sovryn up` and waits until it prints `ready`.
    pub fn up(&self) -> Running {
        Running::start(self.cmd(&["--log", "warn,sovryn_net=info", "up"]))
    }

    /// A temp dir with paths but no node.
    pub fn uninit() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let root = dir.path().join("root");
        TestNode { dir, home, root }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--home")
            .arg(&self.home)
            .args(args)
            .current_dir(self.dir.path());
        c.env_remove("SOVRYN_HOME")
            .env_remove("SOVRYN_PASSPHRASE_FILE")
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "sovryn {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn stats(&self) -> serde_json::Value {
        self.json(&["stats"])
    }
}

/// Stdout of a `sovryn` run that must have succeeded (else its output).
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "sovryn {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Bytes of every file under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A free UDP port on 127.0.0.1 (free when asked; fine for tests).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `sovryn up` (or any command that prints `ready` when it is);
/// killed with SIGKILL when dropped.
pub struct Running {
    pub child: Option<std::process::Child>,
    /// Its stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Spawns `cmd` and waits up to 30 s for a `ready` line on its stdout.
    pub fn start(cmd: Command) -> Self {
        Self::start_logging_to(cmd, Default::default())
    }

    /// [`Running::start`], appending its stderr to `stderr` (a log that
    /// outlives one run, e.g. across restarts of a node).
    pub fn start_logging_to(
        mut cmd: Command,
        stderr: std::sync::Arc<std::sync::Mutex<String>>,
    ) -> Self {
        use std::io::{BufRead, Read};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let log = stderr.clone();
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
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let mut r = Running {
            child: Some(child),
            stderr,
        };
        if rx.recv_timeout(std::time::Duration::from_secs(30)).is_err() {
            r.kill9();
            panic!("node did not start: {}", r.log());
        }
        r
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, then reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGTERM and waits (up to 15 s) for a clean exit; panics otherwise.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(st.success(), "node exited with {st}: {}", self.log());
                    return;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("node did not stop on SIGTERM: {}", self.log());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
    }
}
