//! LAN discovery end to end: two `sovryn up` nodes, each in a network
//! namespace of its own joined by a veth pair (10.231.0.1/24 and
//! 10.231.0.2/24), trust each other by endpoint id only (no `--address`)
//! and find each other with mDNS.
//!
//! mDNS multicast only ever runs inside the namespaces this test creates.
//! It needs root and `ip` (iproute2); without them it says why and passes
//! as skipped.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Running, TestNode};

/// Runs `ip ARGS`, returning its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two network namespaces joined by a veth pair; deleted when dropped
/// (which also deletes the veth pair).
struct Netns {
    names: [String; 2],
    created: Vec<String>,
}

impl Netns {
    /// Subnet of the veth pair: `10.231.0.0/24`.
    const ADDRS: [&'static str; 2] = ["10.231.0.1", "10.231.0.2"];

    fn create() -> Result<Self, String> {
        let tag = std::process::id();
        let mut ns = Netns {
            names: [format!("sovryn-a-{tag}"), format!("sovryn-b-{tag}")],
            created: Vec::new(),
        };
        for n in ns.names.clone() {
            ip(&["netns", "add", &n])?;
            ns.created.push(n);
        }
        let veth = [format!("sva{tag}"), format!("svb{tag}")];
        ip(&[
            "link",
            "add",
            &veth[0],
            "netns",
            &ns.names[0],
            "type",
            "veth",
            "peer",
            "name",
            &veth[1],
            "netns",
            &ns.names[1],
        ])?;
        for ((n, v), addr) in ns.names.iter().zip(&veth).zip(Self::ADDRS) {
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", v])?;
            ip(&["-n", n, "link", "set", v, "multicast", "on"])?;
            ip(&["-n", n, "link", "set", v, "up"])?;
            // mDNS sends on the interface the multicast group routes to.
            ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", v])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.created {
            if let Err(e) = ip(&["netns", "del", n]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create network namespaces".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("needs `ip` (iproute2)".into()),
    }
}

/// `sovryn up` for `node` inside namespace `ns`.
fn up_in(ns: &str, node: &TestNode) -> Running {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, common::bin(), "--home"])
        .arg(&node.home)
        .args(["--log", "warn,sovryn_net=info", "up"])
        .current_dir(node.dir.path())
        .env_remove("SOVRYN_HOME")
        .env_remove("SOVRYN_PASSPHRASE_FILE")
        .env("XDG_RUNTIME_DIR", node.dir.path().join("run"));
    Running::start(c)
}

fn wait_for(path: &Path, want: &[u8], limit: Duration, logs: &[&Running]) {
    let deadline = Instant::now() + limit;
    loop {
        if std::fs::read(path).is_ok_and(|d| d == want) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|r| r.log()).collect();
            panic!(
                "{} never arrived; logs:\n{}",
                path.display(),
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn peers_without_addresses_find_each_other_by_mdns() {
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED: discovery test: {why}");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: discovery test: cannot create network namespaces: {e}");
            return;
        }
    };
    // Listen on every address of the namespace; mDNS stays on (the default).
    let listen = "0.0.0.0:7777";
    let a = TestNode::with_listen("alpha", listen, None);
    let b = TestNode::with_listen("beta", listen, Some(&a.folder_key()));
    for n in [&a, &b] {
        n.ok(&["config", "set", "sync.mdns", "true"]);
        assert_eq!(n.ok(&["config", "get", "sync.mdns"]).trim(), "true");
    }
    let (ida, idb) = (a.id(), b.id());
    a.trust(&idb, None);
    b.trust(&ida, None);

    let started = Instant::now();
    let ra = up_in(&ns.names[0], &a);
    let rb = up_in(&ns.names[1], &b);
    a.write("hello.txt", b"found you by mDNS\n");
    wait_for(
        &b.path("hello.txt"),
        b"found you by mDNS\n",
        Duration::from_secs(60),
        &[&ra, &rb],
    );
    eprintln!(
        "mDNS: B had A's file {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    for r in [&ra, &rb] {
        assert!(r.log().contains("LAN discovery (mDNS) on"), "{}", r.log());
    }
    // And the other way, on the same session or a new one.
    b.write("back.txt", b"and back\n");
    wait_for(
        &a.path("back.txt"),
        b"and back\n",
        Duration::from_secs(30),
        &[&ra, &rb],
    );
    let peers = a.json(&["peers", "list"]);
    let p = &peers["peers"][0];
    assert_eq!(p["id"], idb.as_str(), "{peers}");
    assert!(p.get("addresses").is_none(), "{peers}");
    drop((ra, rb));
    drop(ns);
}

/// A relay that cannot be reached (a closed port on 127.0.0.1) does not get
/// in the way of peers with direct addresses; the node binds with it and
/// says so. Everything stays on loopback.
#[test]
fn unreachable_relay_leaves_direct_sync_working() {
    let (pa, pb) = (common::free_port(), common::free_port());
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let a = TestNode::with_listen("alpha", &la, None);
    let b = TestNode::with_listen("beta", &lb, Some(&a.folder_key()));
    let relay = format!("http://127.0.0.1:{}", common::free_port());
    for n in [&a, &b] {
        assert!(n
            .fails(&["config", "set", "sync.relay_url", "relay.example.org"])
            .contains("sync.relay_url"));
        n.ok(&["config", "set", "sync.relay_url", &relay]);
    }
    a.trust(&b.id(), Some(&lb));
    b.trust(&a.id(), Some(&la));
    let ra = a.up();
    let rb = b.up();
    a.write("direct.txt", b"direct, relay or not\n");
    wait_for(
        &b.path("direct.txt"),
        b"direct, relay or not\n",
        Duration::from_secs(30),
        &[&ra, &rb],
    );
    assert!(ra.log().contains("relay http://127.0.0.1:"), "{}", ra.log());
}
