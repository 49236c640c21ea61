//! A backup peer, as a user makes one: `invite --backup` on a member,
//! `join CODE --backup` on the backup machine, `up` there. It keeps the
//! member's folder sealed (no name or content anywhere in its home), a
//! machine is rebuilt from it alone with the passphrase, and what it
//! changed is refused.

mod common;
mod mesh;

use std::path::Path;

use mesh::{files_under, noise, recover_new, tree, with_vault, Peer};

/// A running member with a vault, and a running backup node it pushed to.
fn member_and_backup() -> (Peer, Peer, std::path::PathBuf) {
    let (mut a, pf) = with_vault("alpha");
    a.up();
    let code = a.json(&["invite", "--backup"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = Peer::newcomer();
    let joined = b.json(&[
        "join",
        &code,
        "--backup",
        "--node-id",
        "vault-box",
        "--listen",
        &format!("127.0.0.1:{}", b.port),
    ]);
    assert_eq!(joined["backup"], true, "{joined}");
    b.id = joined["node_id"].as_str().unwrap().to_owned();
    assert!(!b.root.exists(), "a backup node has no storage path");
    b.up();
    let remotes = a.json(&["remotes", "list"]);
    assert!(remotes.to_string().contains(&b.id), "{remotes}");
    (a, b, pf)
}

fn recover_from(b: &Peer, pass: &Path) -> (Peer, std::process::Output) {
    recover_from_all(b, &[], pass)
}

/// A machine rebuilt from `b` alone; the recovery must succeed (its
/// errors and the backup node's log are shown when it does not).
fn recovered_from(b: &Peer, pass: &Path) -> Peer {
    let (r, out) = recover_from(b, pass);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );
    r
}

/// `recover --json --from B [--from OTHER]...` into a fresh home.
fn recover_from_all(b: &Peer, others: &[&str], pass: &Path) -> (Peer, std::process::Output) {
    let from_b = format!("{}@127.0.0.1:{}", b.id, b.port);
    let mut from = vec![from_b.as_str()];
    from.extend_from_slice(others);
    recover_new(pass, &from, &[])
}

#[test]
fn a_backup_peer_keeps_no_name_or_content_and_rebuilds_a_machine_alone() {
    let (mut a, b, pass) = member_and_backup();
    for i in 0..200 {
        a.write(
            &format!("MARKERdir{}/MARKERfile{i:03}.txt", i % 5),
            format!("MARKERcontent {i}\n").as_bytes(),
        );
    }
    a.settle();
    let edited = "MARKERdir0/MARKERfile000.txt";
    std::fs::write(a.root.join(edited), "MARKERcontent edited\n").unwrap();
    a.settle();
    let pushed = a.json(&["remotes", "sync"]);
    let report = &pushed["pushed"][0]["folders"][0]["report"];
    // The running node may have pushed some already by itself.
    let total = report["chunks"].as_u64().unwrap() + report["chunks_present"].as_u64().unwrap();
    assert!(total >= 200, "{pushed}");

    // Nothing in the backup node's home names or shows a file.
    let held = files_under(&b.home);
    assert!(
        held.iter().any(|(n, _)| n.contains("objects/")),
        "{:?}",
        held.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    for (name, body) in &held {
        assert!(!name.contains("MARKER") && !name.contains(".txt"), "{name}");
        assert!(
            !body.windows(6).any(|w| w == b"MARKER"),
            "{name} shows plaintext"
        );
    }

    // The member is gone; the backup node alone rebuilds it.
    a.down();
    let r = recovered_from(&b, &pass);
    assert_eq!(tree(&r.root), tree(&a.root));
    let history = |p: &Peer| {
        serde_json::to_string(&p.json(&["versions", p.root.join(edited).to_str().unwrap()]))
            .unwrap()
    };
    assert_eq!(history(&r), history(&a));
    assert!(r.ok(&["verify"]).contains(": ok"));
}

#[test]
fn what_a_backup_peer_changed_is_refused_and_taken_from_elsewhere() {
    let (mut a, b, pass) = member_and_backup();
    // A second remote, a directory, keeps the same folder.
    let nas = tempfile::tempdir().unwrap();
    let nas_url = format!("file://{}/sovryn", nas.path().display());
    a.ok(&["remotes", "add", "nas", &nas_url]);
    a.write("notes.txt", b"the original words");
    a.settle();
    a.ok(&["remotes", "sync"]);
    a.down();
    let (pack, mut bytes) = files_under(&b.home)
        .into_iter()
        .find(|(n, _)| n.contains("/p/"))
        .unwrap();
    bytes[40] ^= 1;
    std::fs::write(b.home.join(&pack), &bytes).unwrap();

    // From the backup node alone: refused, nothing left behind.
    let (r, out) = recover_from(&b, &pass);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fails authentication"), "{err}");
    assert!(!r.home.exists());

    // With the directory as well: the damaged pack is refused (and said),
    // its chunks come from the directory.
    let (r, out) = recover_from_all(&b, &[&nas_url], &pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = report["folders"][0]["restored"]["refused"].to_string();
    assert!(refused.contains("fails authentication"), "{report}");
    assert_eq!(
        std::fs::read(r.root.join("notes.txt")).unwrap(),
        b"the original words"
    );
    assert!(r.ok(&["verify"]).contains(": ok"));
}

#[test]
fn only_members_write_to_a_backup_peer() {
    let (_a, b, _) = member_and_backup();
    // Another node, not the inviter, adds the backup node as a remote: its
    // pushes are refused, and the backup node keeps nothing of it.
    let c = Peer::new("gamma", None);
    c.write("mine.txt", b"not for the backup node");
    c.ok(&["add", c.root.to_str().unwrap()]);
    c.ok(&[
        "remotes",
        "add",
        "b",
        &format!("peer://{}@127.0.0.1:{}", b.id, b.port),
    ]);
    let err = c.fails_with(&["remotes", "sync"]);
    assert!(err.contains("not a member"), "{err}");
    let held = files_under(&b.home.join("objects"));
    assert!(
        held.is_empty(),
        "{:?}",
        held.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
}

#[test]
fn a_backup_peer_that_rolls_back_is_noticed_and_filled_again() {
    let (mut a, b, pass) = member_and_backup();
    a.write("first.txt", b"first");
    a.settle();
    a.ok(&["remotes", "sync"]);
    let before: Vec<(String, Vec<u8>)> = files_under(&b.home.join("objects"));
    a.write("second.txt", b"second");
    a.settle();
    a.ok(&["remotes", "sync"]);
    // The backup node goes back to what it held before the second push.
    std::fs::remove_dir_all(b.home.join("objects")).unwrap();
    for (name, body) in &before {
        let p = b.home.join("objects").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let pushed = a.json(&["remotes", "sync"]);
    let report = &pushed["pushed"][0]["folders"][0]["report"];
    assert_eq!(report["rolled_back"], true, "{pushed}");
    assert!(report["snapshot"].as_u64().is_some(), "{pushed}");
    a.down();
    let r = recovered_from(&b, &pass);
    assert_eq!(std::fs::read(r.root.join("second.txt")).unwrap(), b"second");
}

/// Waits until `check` holds, or fails saying `what` and showing `log`.
fn wait_until(what: &str, log: &Peer, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + mesh::CONVERGE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}\n{}",
            log.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A running member C that joined A's folder and learned of backup node B
/// from the signed device list A gossips (nothing set up by hand).
fn member_that_learns_of(a: &Peer, b: &Peer) -> Peer {
    let code = a.json(&["invite"])["code"].as_str().unwrap().to_owned();
    let mut c = Peer::newcomer();
    let root = c.root.to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{}", c.port);
    c.ok(&[
        "join",
        &code,
        "--storage-path",
        &root,
        "--node-id",
        "gamma",
        "--listen",
        &listen,
        "--no-passphrase",
    ]);
    c.id = c.ok(&["id"]).trim().to_owned();
    c.up();
    wait_until("A never listed C", a, || {
        std::fs::read_to_string(a.home.join("devices.json"))
            .unwrap_or_default()
            .contains(&c.id)
    });
    wait_until("C never learned of the backup node", &c, || {
        c.json(&["remotes", "list"]).to_string().contains(&b.id)
    });
    c
}

#[test]
fn a_member_that_was_away_catches_up_from_the_backup_node_alone() {
    let (mut a, b, _) = member_and_backup();
    let mut c = member_that_learns_of(&a, &b);
    c.down();
    // While C is away, A revokes a device (a new seal epoch starts) and
    // writes a file.
    let lost = iroh::SecretKey::generate().public().to_string();
    a.ok(&["devices", "revoke", &lost]);
    a.write("while-away/notes.txt", b"written while gamma was away");
    a.settle();
    a.ok(&["remotes", "sync"]);
    a.down();
    // Only the backup node is there when C comes back.
    c.up();
    let path = c.root.join("while-away/notes.txt");
    wait_until("C never caught up from B", &c, || {
        std::fs::read(&path).is_ok_and(|b| b == b"written while gamma was away")
    });
    assert!(
        c.log().contains("took 1 other member snapshot"),
        "{}",
        c.log()
    );
    // The backup node relayed the signed device list: the revocation
    // holds on C too.
    let listed = c.json(&["devices", "list"]);
    assert!(listed["revoked"].to_string().contains(&lost), "{listed}");
}

#[test]
fn every_member_keeps_the_folder_on_a_listed_backup_node_and_a_revoked_one_may_not() {
    let (a, b, _) = member_and_backup();
    let c = member_that_learns_of(&a, &b);
    let listed = c.json(&["devices", "list"]);
    assert!(listed["backups"].to_string().contains(&b.id), "{listed}");
    let name = format!("backup-{}", &b.id[..8]);
    let err = c.fails_with(&["remotes", "remove", &name]);
    assert!(err.contains("devices revoke"), "{err}");
    // A's push hands the list to the backup node: C may write there now.
    a.ok(&["remotes", "sync"]);
    c.write("from-gamma.txt", b"gamma's words");
    c.settle();
    let from_c = c.json(&["remotes", "sync"]);
    let c_snapshot = from_c["pushed"][0]["folders"][0]["report"]["snapshot"]
        .as_u64()
        .unwrap();

    // A pushes again: C's snapshot is C's to replace, and stays.
    a.write("more.txt", b"more from alpha");
    a.settle();
    a.ok(&["remotes", "sync"]);
    let c_name = format!("/s/{c_snapshot:016x}-");
    assert!(
        files_under(&b.home.join("objects"))
            .iter()
            .any(|(n, _)| n.contains(&c_name)),
        "C's snapshot is gone"
    );

    // Revoked on A, and A's next push says so: C's writes are refused.
    a.ok(&["devices", "revoke", &c.id]);
    a.ok(&["remotes", "sync"]);
    c.write("after.txt", b"after the revocation");
    c.settle();
    let err = c.fails_with(&["remotes", "sync"]);
    assert!(err.contains("not a member"), "{err}");

    // The backup node revoked: no member pushes to it any more.
    a.ok(&["devices", "revoke", &b.id]);
    wait_until("A still pushes to the revoked backup node", &a, || {
        !a.json(&["remotes", "list"]).to_string().contains(&b.id)
    });
}

/// `remotes sync --json` with pruning's grace cut to nothing, and its report.
fn sync_pruning_at_once(p: &Peer) -> serde_json::Value {
    let out = p
        .cmd(&["--json", "remotes", "sync"])
        .env("SOVRYN_PRUNE_GRACE_SECS", "0")
        .output()
        .unwrap();
    let out = common::succeeded(&["remotes", "sync"], out);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["pushed"][0]["folders"][0]["report"].clone()
}

#[test]
fn members_sharing_a_backup_node_prune_together_and_recovery_still_works() {
    let (mut a, b, pass) = member_and_backup();
    let c = member_that_learns_of(&a, &b);
    // Three versions of one file, each on C before the next.
    for v in 0..3u64 {
        let body = noise(v, 300_000);
        a.write("doc.bin", &body);
        let path = c.root.join("doc.bin");
        wait_until("C never got the version", &c, || {
            std::fs::read(&path).is_ok_and(|b| b == body)
        });
    }
    a.write("other.txt", b"stays as it is");
    c.wait_for_file("other.txt");
    a.settle();
    c.settle();
    a.ok(&["remotes", "sync"]);
    c.ok(&["remotes", "sync"]);

    // A lets the old versions go; C's snapshot still names them: nothing
    // of theirs leaves the backup node.
    a.ok(&["config", "set", "retention.keep_last", "1"]);
    a.ok(&["gc"]);
    let report = sync_pruning_at_once(&a);
    assert_eq!(report["packs_deleted"], 0, "{report}");
    assert_eq!(report["pruning_skipped"], false, "{report}");

    // C lets them go too: no snapshot names them, and C removes them.
    let held = || {
        files_under(&b.home.join("objects"))
            .iter()
            .map(|f| f.1.len())
            .sum::<usize>()
    };
    let before = held();
    c.ok(&["config", "set", "retention.keep_last", "1"]);
    c.ok(&["gc"]);
    // First the packs are marked (another member may be about to name
    // them), and go only once the grace has passed.
    let marks = || {
        files_under(&b.home.join("objects"))
            .iter()
            .filter(|f| f.0.contains("/d/"))
            .count()
    };
    let pushed = c.json(&["remotes", "sync"]);
    let report = &pushed["pushed"][0]["folders"][0]["report"];
    assert!(report["pruned_chunks"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["packs_deleted"], 0, "{report}");
    assert!(marks() > 0);
    let report = sync_pruning_at_once(&c);
    assert!(report["packs_deleted"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(marks(), 0);
    assert!(held() < before, "the backup node kept as much as before");

    // The backup node alone still rebuilds the folder.
    a.down();
    drop(c);
    let r = recovered_from(&b, &pass);
    assert_eq!(tree(&r.root), tree(&a.root));
    assert!(r.ok(&["verify"]).contains(": ok"));
}
