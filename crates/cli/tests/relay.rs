//! Invite, join and sync through a real relay, between two nodes that
//! cannot reach each other: a real `iroh-relay --dev` runs in one network
//! namespace, each node in a namespace of its own, routed to the relay and
//! to nothing else. Needs root (namespaces) and the `iroh-relay` binary
//! (`$SOVRYN_IROH_RELAY`, else on PATH; `.ci/run` installs it); skips with
//! a message saying which is missing otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

/// The relay's address, on the relay namespace's loopback.
const RELAY_IP: &str = "10.9.9.9";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ip_ok(args: &[&str]) {
    assert!(ip(args), "ip {args:?} failed");
}

/// Three namespaces, deleted on drop: `r` (the relay) and `a`, `d`, each
/// linked to `r` only; `r` forwards nothing.
struct Net {
    r: String,
    a: String,
    d: String,
}

impl Net {
    fn new() -> Option<Net> {
        let tag = std::process::id() % 100_000;
        let net = Net {
            r: format!("sovr{tag}"),
            a: format!("sova{tag}"),
            d: format!("sovd{tag}"),
        };
        if !ip(&["netns", "add", &net.r]) {
            return None;
        }
        ip_ok(&["netns", "add", &net.a]);
        ip_ok(&["netns", "add", &net.d]);
        for (ns, n) in [(&net.a, 1), (&net.d, 2)] {
            let outer = format!("vr{n}x{tag}");
            let inner = format!("vn{n}x{tag}");
            ip_ok(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip_ok(&["link", "set", &outer, "netns", &net.r]);
            ip_ok(&["link", "set", &inner, "netns", ns]);
            let (r_addr, n_addr) = (format!("10.{n}.0.1/24"), format!("10.{n}.0.2/24"));
            ip_ok(&["-n", &net.r, "addr", "add", &r_addr, "dev", &outer]);
            ip_ok(&["-n", &net.r, "link", "set", &outer, "up"]);
            ip_ok(&["-n", ns, "addr", "add", &n_addr, "dev", &inner]);
            ip_ok(&["-n", ns, "link", "set", &inner, "up"]);
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            ip_ok(&[
                "-n",
                ns,
                "route",
                "add",
                &format!("{RELAY_IP}/32"),
                "via",
                &format!("10.{n}.0.1"),
            ]);
        }
        ip_ok(&["-n", &net.r, "link", "set", "lo", "up"]);
        ip_ok(&[
            "-n",
            &net.r,
            "addr",
            "add",
            &format!("{RELAY_IP}/32"),
            "dev",
            "lo",
        ]);
        Some(net)
    }

    /// `cmd` run inside namespace `ns`.
    fn exec(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.a, &self.d, &self.r] {
            ip(&["netns", "del", ns]);
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SOVRYN_IROH_RELAY") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("iroh-relay"))
        .find(|p| p.exists())
}

fn sovryn(ns: &str, home: &Path, args: &[&str]) -> Command {
    let mut c = Net::exec(ns, Path::new(bin()));
    c.arg("--home").arg(home).args(args);
    c.env_remove("SOVRYN_HOME")
        .env_remove("SOVRYN_PASSPHRASE_FILE")
        .env("XDG_RUNTIME_DIR", home.with_extension("run"));
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn invite_join_and_sync_through_a_relay_with_no_direct_route() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let Some(relay_bin) = relay_binary() else {
        eprintln!("skipped: no iroh-relay binary (set SOVRYN_IROH_RELAY or put it on PATH)");
        return;
    };
    let Some(net) = Net::new() else {
        eprintln!("skipped: network namespaces are not available here (ip netns add failed)");
        return;
    };
    let _relay = Killed(
        Net::exec(&net.r, &relay_bin)
            .arg("--dev")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // No direct way between the two nodes: D has no route to A at all.
    assert!(
        !ip(&["-n", &net.d, "route", "get", "10.1.0.2"]),
        "the test network must not route D to A"
    );
    assert!(ip(&["-n", &net.d, "route", "get", RELAY_IP]));
    let relay_url = format!("http://{RELAY_IP}:3340");
    let dir = tempfile::tempdir().unwrap();
    let (ha, hd) = (dir.path().join("a"), dir.path().join("d"));
    let (ra, rd) = (dir.path().join("ra"), dir.path().join("rd"));
    ok(sovryn(
        &net.a,
        &ha,
        &[
            "init",
            "--storage-path",
            ra.to_str().unwrap(),
            "--listen",
            "10.1.0.2:7001",
            "--no-passphrase",
            "--node-id",
            "alpha",
        ],
    )
    .stdout(Stdio::null()));
    for (k, v) in [
        ("sync.relay_url", relay_url.as_str()),
        ("mcp.enabled", "false"),
        ("sync.mdns", "false"),
    ] {
        ok(&mut sovryn(&net.a, &ha, &["config", "set", k, v]));
    }
    std::fs::write(ra.join("through-the-relay.txt"), b"hello from alpha").unwrap();
    let _a = Killed(
        sovryn(&net.a, &ha, &["up"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The node answers on its control socket once it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        let out = sovryn(&net.a, &ha, &["--json", "invite"]).output().unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            break v["code"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no invite: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // D cannot reach A's address: the join goes through the relay.
    let joined = sovryn(
        &net.d,
        &hd,
        &[
            "join",
            &code,
            "--storage-path",
            rd.to_str().unwrap(),
            "--listen",
            "10.2.0.2:7002",
            "--no-passphrase",
            "--node-id",
            "delta",
        ],
    )
    .output()
    .unwrap();
    assert!(
        joined.status.success(),
        "join through the relay: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    for (k, v) in [("mcp.enabled", "false"), ("sync.mdns", "false")] {
        ok(&mut sovryn(&net.d, &hd, &["config", "set", k, v]));
    }
    let _d = Killed(
        sovryn(&net.d, &hd, &["up"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = rd.join("through-the-relay.txt");
    while !want.exists() {
        assert!(
            Instant::now() < deadline,
            "the file never came through the relay"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(&want).unwrap(), b"hello from alpha");
}
