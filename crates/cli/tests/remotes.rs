//! Remotes as backup targets: a bucket on a real S3-compatible server
//! (moto, from PyPI, started here on 127.0.0.1), and a directory. What
//! they hold reveals no name or content, a node is rebuilt from one alone,
//! a push cut off resumes without sending again what is there, a changed
//! object is refused, retention reaches them, a running node keeps them
//! current.

mod common;
mod mesh;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh::{files_under, noise, recover_new, tree, with_vault, Peer};

const BUCKET_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/bucket.py");

/// A moto S3 server on 127.0.0.1, stopped when dropped.
struct S3 {
    child: Child,
    endpoint: String,
    keys: tempfile::TempDir,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    /// Starts one, or None (with the reason) where moto is not installed;
    /// under CI its absence is a failure.
    fn start() -> Option<S3> {
        let have = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto is not installed (pip install 'moto[server]'); .ci/run installs it"
            );
            eprintln!("skipped: moto is not installed (pip install 'moto[server]')");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let keys = tempfile::tempdir().unwrap();
        std::fs::write(keys.path().join("access"), "test-access\n").unwrap();
        std::fs::write(keys.path().join("secret"), "test-secret\n").unwrap();
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            keys,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        s3.bucket(&["create", "bkt"]);
        Some(s3)
    }

    fn bucket(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(BUCKET_PY)
            .arg(&self.endpoint)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bucket.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn keys(&self) -> Vec<String> {
        self.bucket(&["list", "bkt"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The options naming the bucket and how to sign in.
    fn args(&self) -> Vec<String> {
        let k = self.keys.path();
        vec![
            "--endpoint".into(),
            self.endpoint.clone(),
            "--access-key-file".into(),
            k.join("access").display().to_string(),
            "--secret-key-file".into(),
            k.join("secret").display().to_string(),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A node whose folder is backed up to the bucket (vault made, remote added).
fn backed_up(s3: &S3, extra: &[&str]) -> (Peer, PathBuf) {
    let (a, pf) = with_vault("alpha");
    let mut add = vec![
        "remotes".to_owned(),
        "add".into(),
        "bk".into(),
        "s3://bkt/backups".into(),
    ];
    add.extend(s3.args());
    add.extend(extra.iter().map(|s| s.to_string()));
    a.ok(&strs(&add));
    (a, pf)
}

/// `recover --from s3://…` into a fresh home.
fn recover(s3: &S3, pass_file: &Path) -> (Peer, std::process::Output) {
    recover_new(pass_file, &["s3://bkt/backups"], &s3.args())
}

#[test]
fn a_bucket_shows_no_name_or_content_and_rebuilds_a_node_alone() {
    let Some(s3) = S3::start() else { return };
    let (a, pass) = backed_up(&s3, &[]);
    for i in 0..200 {
        a.write(
            &format!("MARKERdir{}/MARKERfile{i:03}.txt", i % 7),
            format!("MARKERcontent {i} of the secret plans\n").as_bytes(),
        );
    }
    a.ok(&["add", a.root.to_str().unwrap()]);
    let edited = a.root.join("MARKERdir0/MARKERfile000.txt");
    for v in 2..=3 {
        std::fs::write(&edited, format!("MARKERcontent version {v}\n")).unwrap();
        a.ok(&["add", edited.to_str().unwrap()]);
    }
    let pushed = a.json(&["remotes", "sync"]);
    assert!(
        pushed["pushed"][0]["folders"][0]["report"]["chunks"]
            .as_u64()
            .unwrap()
            >= 200,
        "{pushed}"
    );
    let status = a.json(&["remotes", "status"]);
    assert_eq!(
        status["remotes"][0]["folders"][0]["up_to_date"], true,
        "{status}"
    );

    // Nothing in a key or an object names or shows a file.
    let keys = s3.keys();
    assert!(keys.iter().any(|k| k == "backups/v"), "{keys:?}");
    let dump = tempfile::tempdir().unwrap();
    s3.bucket(&["dump", "bkt", dump.path().to_str().unwrap()]);
    let mut objects = 0;
    for k in &keys {
        assert!(!k.contains("MARKER") && !k.contains("txt"), "{k}");
        let body = std::fs::read(dump.path().join(k)).unwrap();
        assert!(
            !body.windows(6).any(|w| w == b"MARKER") && !body.windows(7).any(|w| w == b"secret "),
            "{k} shows plaintext"
        );
        // Packs and snapshots come in size classes: powers of two.
        if !k.ends_with("/v") {
            assert!(body.len().is_power_of_two(), "{k}: {} bytes", body.len());
        }
        objects += 1;
    }
    assert!(objects >= 3);

    // A wrong passphrase: refused, nothing written.
    let wrong = a.dir.path().join("wrong.pass");
    std::fs::write(&wrong, "not the passphrase at all").unwrap();
    let (r, out) = recover(&s3, &wrong);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("passphrase"),
        "{out:?}"
    );
    assert!(!r.home.exists());

    // A fresh machine from the bucket alone (A is not running).
    let (r, out) = recover(&s3, &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&r.root), tree(&a.root));
    let rel = "MARKERdir0/MARKERfile000.txt";
    let history = |p: &Peer| {
        let v = p.json(&["versions", p.root.join(rel).to_str().unwrap()]);
        serde_json::to_string(&v).unwrap()
    };
    assert_eq!(history(&r), history(&a));
    assert_eq!(a.history(rel).len(), 3);
    let verify = r.ok(&["verify"]);
    assert!(verify.contains(": ok"), "{verify}");
    // What was written out counts as on disk: a scan finds nothing new.
    let scan = r.ok(&["add", r.root.to_str().unwrap()]);
    assert!(scan.contains("0 added, 0 modified, 0 deleted"), "{scan}");
}

#[test]
fn a_push_cut_off_resumes_without_sending_again_what_is_there() {
    let Some(s3) = S3::start() else { return };
    // 16 MiB/s: the 48 MiB take about 3 s, long enough to cut off.
    let (a, pass) = backed_up(&s3, &["--max-kib-per-sec", "16384"]);
    for i in 0..48u64 {
        a.write(&format!("big/{i:02}.bin"), &noise(i, 1 << 20));
    }
    a.ok(&["add", a.root.to_str().unwrap()]);
    // Killed as soon as the first pack is in the bucket (48 MiB: 4 packs).
    let mut push = a
        .cmd(&["remotes", "sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The push records each pack once the bucket has it.
    let state = a.home.join("remote-state/bk/cache.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state.exists() {
        assert!(Instant::now() < deadline, "no pack was ever written");
        std::thread::sleep(Duration::from_millis(5));
    }
    push.kill().unwrap();
    let status = push.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the push ended before it was cut off"
    );
    let packs_before = s3.keys().iter().filter(|k| k.contains("/p/")).count();
    assert!(packs_before < 4, "{packs_before} packs");
    assert!(
        !s3.keys().iter().any(|k| k.contains("/s/")),
        "a snapshot before its chunks"
    );

    let again = a.json(&["remotes", "sync"]);
    let report = &again["pushed"][0]["folders"][0]["report"];
    let (sent, present) = (
        report["chunks"].as_u64().unwrap(),
        report["chunks_present"].as_u64().unwrap(),
    );
    assert!(present > 0, "nothing was taken as there: {again}");
    let total = a.json(&["stats"])["chunks"].as_u64().unwrap();
    assert_eq!(sent + present, total, "{again}");

    let (r, out) = recover(&s3, &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..48u64 {
        let rel = format!("big/{i:02}.bin");
        assert!(
            std::fs::read(r.root.join(&rel)).unwrap() == noise(i, 1 << 20),
            "{rel}"
        );
    }
}

#[test]
fn a_changed_object_in_the_bucket_is_refused_and_leaves_nothing() {
    let Some(s3) = S3::start() else { return };
    let (a, pass) = backed_up(&s3, &[]);
    a.write("notes.txt", b"the original words");
    a.ok(&["add", a.root.to_str().unwrap()]);
    a.ok(&["remotes", "sync"]);
    let pack = s3.keys().into_iter().find(|k| k.contains("/p/")).unwrap();
    s3.bucket(&["flip", "bkt", &pack, "40"]);
    let (r, out) = recover(&s3, &pass);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fails authentication"), "{err}");
    assert!(!r.home.exists(), "a half-made node was left");
    assert!(!r.root.join("notes.txt").exists());
}

#[test]
fn retention_reaches_the_bucket_without_breaking_recovery() {
    let Some(s3) = S3::start() else { return };
    let (a, pass) = backed_up(&s3, &[]);
    let doc = a.root.join("doc.bin");
    for v in 0..5u64 {
        a.write("doc.bin", &noise(100 + v, 300_000));
        a.ok(&["add", doc.to_str().unwrap()]);
    }
    a.write("other.txt", b"stays as it is");
    a.ok(&["add", a.root.to_str().unwrap()]);
    a.ok(&["remotes", "sync"]);
    let du = || s3.bucket(&["du", "bkt"]).trim().parse::<u64>().unwrap();
    let before = du();

    a.ok(&["config", "set", "retention.keep_last", "2"]);
    a.ok(&["gc"]);
    assert_eq!(a.history("doc.bin").len(), 2);
    let pushed = a.json(&["remotes", "sync"]);
    let report = &pushed["pushed"][0]["folders"][0]["report"];
    assert!(report["pruned_chunks"].as_u64().unwrap() > 0, "{pushed}");
    assert!(report["packs_deleted"].as_u64().unwrap() > 0, "{pushed}");
    let after = du();
    assert!(after < before, "the bucket kept {after} bytes of {before}");

    let (r, out) = recover(&s3, &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(r.root.join("doc.bin")).unwrap(),
        noise(104, 300_000)
    );
    assert_eq!(tree(&r.root).len(), tree(&a.root).len());
    let history = |p: &Peer| {
        serde_json::to_string(&p.json(&["versions", p.root.join("doc.bin").to_str().unwrap()]))
            .unwrap()
    };
    assert_eq!(history(&r), history(&a));
    let verify = r.ok(&["verify"]);
    assert!(verify.contains(": ok"), "{verify}");
}

#[test]
fn a_running_node_keeps_the_bucket_current_by_itself() {
    let Some(s3) = S3::start() else { return };
    let (mut a, pass) = backed_up(&s3, &["--every", "1"]);
    a.up();
    a.write("first.txt", b"the first words");
    a.write("second.txt", b"the second words");
    // No `remotes sync`: the node pushes both files and a snapshot itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = a.json(&["remotes", "status"]);
        let f = &s["remotes"][0]["folders"][0];
        if f["up_to_date"] == true && f["chunks"].as_u64() == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bucket never caught up: {s}\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (r, out) = recover(&s3, &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(r.root.join("second.txt")).unwrap(),
        b"the second words"
    );
    assert_eq!(
        std::fs::read(r.root.join("first.txt")).unwrap(),
        b"the first words"
    );
    a.down();
}

#[test]
fn a_directory_remote_shows_no_name_and_rebuilds_a_node_alone() {
    let (a, pf) = with_vault("alpha");
    let nas = tempfile::tempdir().unwrap();
    let url = format!("file://{}/sovryn", nas.path().display());
    a.ok(&["remotes", "add", "nas", &url]);
    for i in 0..50 {
        a.write(
            &format!("MARKERdir/MARKERfile{i}.txt"),
            format!("MARKERcontent {i}").as_bytes(),
        );
    }
    a.ok(&["add", a.root.to_str().unwrap()]);
    a.ok(&["remotes", "sync"]);
    let objects = files_under(&nas.path().join("sovryn"));
    assert!(
        objects.len() >= 3,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (name, body) in &objects {
        assert!(!name.contains("MARKER"), "{name}");
        assert!(
            !body.windows(6).any(|w| w == b"MARKER"),
            "{name} shows plaintext"
        );
    }
    let (r, out) = recover_new(&pf, &[&url], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&r.root), tree(&a.root));
    assert!(r.ok(&["verify"]).contains(": ok"));
}
