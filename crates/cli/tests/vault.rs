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
    let mut a = Peer::new("alpha", None);
    let key = a.folder_key();
    let mut b = Peer::new("beta", Some(&key));
    let mut c = Peer::new("gamma", Some(&key));
    for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        x.trust(y);
    }
    let pass = a.dir.path().join("vault-pass");
    std::fs::write(&pass, "a long vault passphrase\n").unwrap();
    let wrong = a.dir.path().join("wrong-pass");
    std::fs::write(&wrong, "not it\n").unwrap();
    let pf = pass.to_str().unwrap();
    a.ok(&["--passphrase-file", pf, "vault", "init"]);
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
        "--passphrase-file",
        wrong.to_str().unwrap(),
        "vault",
        "unlock",
    ]);
    assert!(err.contains("does not open"), "{err}");
    assert!(!c.home.join("vault.key").exists());
    c.ok(&["--passphrase-file", pf, "vault", "unlock"]);
    b.ok(&["--passphrase-file", pf, "vault", "unlock"]);

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
    }
}
