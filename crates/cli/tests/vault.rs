//! The config vault between running nodes: created on one, opened on the
//! others with the passphrase, a change on one appears on the others,
//! concurrent changes of different entries both survive, and what is on
//! disk is sealed.

mod common;
mod mesh;

use std::time::{Duration, Instant};

use mesh::Peer;

fn show(p: &Peer) -> serde_json::Value {
    serde_json::from_str(&p.ok(&["--json", "vault", "show"])).unwrap()
}

/// Waits until `check` holds for `p`'s vault.
fn wait_vault(p: &Peer, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + mesh::CONVERGE;
    loop {
        let v = show(p);
        if check(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {v}\n{}", p.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_vault_reaches_every_device_and_merges_concurrent_changes() {
    let (mut a, mut b, mut c) = mesh::trio();
    let pass = a.dir.path().join("vault-pass");
    std::fs::write(&pass, "a long vault passphrase\n").unwrap();
    let wrong = a.dir.path().join("wrong-pass");
    std::fs::write(&wrong, "not it\n").unwrap();
    let pf = pass.to_str().unwrap();
    a.ok(&["vault", "init", "--vault-passphrase-file", pf]);
    a.up();
    b.up();
    c.up();
    // The sealed vault reaches C; a wrong passphrase does not open it.
    let deadline = Instant::now() + mesh::CONVERGE;
    while !c.home.join("vault.json").exists() {
        assert!(Instant::now() < deadline, "no vault on C:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = c.fails_with(&[
        "vault",
        "unlock",
        "--vault-passphrase-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(err.contains("does not open"), "{err}");
    assert!(!c.home.join("vault.key").exists());
    c.ok(&["vault", "unlock", "--vault-passphrase-file", pf]);
    b.ok(&["vault", "unlock", "--vault-passphrase-file", pf]);

    a.ok(&["vault", "set", "theme", "MARKER-dark-theme"]);
    wait_vault(&c, "A's setting on C", |v| {
        v["theme"] == "MARKER-dark-theme"
    });

    // A and C change different entries at once.
    a.ok(&["vault", "set", "editor", "\"helix\""]);
    c.ok(&[
        "vault",
        "set",
        "mcpServers",
        r#"{"files":{"command":"sovryn"}}"#,
    ]);
    for p in [&a, &b, &c] {
        wait_vault(p, "both changes", |v| {
            v["editor"] == "helix" && v["mcpServers"]["files"]["command"] == "sovryn"
        });
    }
    for p in [&a, &b, &c] {
        let bytes = std::fs::read(p.home.join("vault.json")).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("MARKER"), "plaintext on disk");
        assert!(!text.contains("helix"), "plaintext on disk");
        // The vault key is sealed by the node's key, not kept as text.
        let kept = std::fs::read(p.home.join("vault.key")).unwrap();
        assert!(
            !String::from_utf8_lossy(&kept).contains("\"key\""),
            "vault key in the clear"
        );
    }
}

#[test]
fn a_lost_device_is_rebuilt_from_a_member_with_the_vault_passphrase() {
    let mut a = Peer::new("alpha", None);
    let mut b = Peer::new("beta", Some(&a.folder_key()));
    a.trust(&b);
    b.trust(&a);
    let pass = a.dir.path().join("vault-pass");
    std::fs::write(&pass, "a long vault passphrase\n").unwrap();
    let pf = pass.to_str().unwrap().to_owned();
    a.ok(&["vault", "init", "--vault-passphrase-file", &pf]);
    a.ok(&["vault", "set", "theme", "\"solarized\""]);
    a.up();
    b.up();
    a.write("work/report.txt", b"quarterly numbers");
    b.wait_for_file("work/report.txt");
    // B keeps the sealed vault and trusts the recovery identity A listed.
    let deadline = Instant::now() + mesh::CONVERGE;
    while !(b.home.join("vault.json").exists()
        && b.ok(&["--json", "peers", "list"]).contains("recovery"))
    {
        assert!(
            Instant::now() < deadline,
            "B never got the vault:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.kill();

    let mut n = Peer::newcomer();
    let from = format!("{}@127.0.0.1:{}", b.id, b.port);
    let listen = format!("127.0.0.1:{}", n.port);
    let root = n.root.to_str().unwrap().to_owned();
    let wrong = n.dir.path().join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let args = |pf: &str| {
        vec![
            "--passphrase-file".to_owned(),
            pf.to_owned(),
            "recover".into(),
            "--from".into(),
            from.clone(),
            "--storage-path".into(),
            root.clone(),
            "--listen".into(),
            listen.clone(),
        ]
    };
    let bad = args(wrong.to_str().unwrap());
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let err = n.fails_with(&bad);
    assert!(err.contains("does not open"), "{err}");
    assert!(!n.home.exists(), "a wrong passphrase wrote a home");

    let good = args(&pf);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    n.ok(&good);
    n.root = std::fs::canonicalize(&n.root).unwrap();
    n.up();
    n.wait_for_file("work/report.txt");
    assert_eq!(
        std::fs::read(n.root.join("work/report.txt")).unwrap(),
        b"quarterly numbers"
    );
    assert_eq!(show(&n)["theme"], "solarized");
}
