//! A second device joins with a one-time code, as a user would add it:
//! `sovryn invite` on a running member, `sovryn join CODE` on the new
//! machine, `sovryn up`; and codes that are wrong, spent or expired give a
//! clear refusal and leave nothing behind.

mod common;
mod mesh;

use mesh::{converge, Peer};
use sovryn_store::{Access, ChunkCodec, MasterKey, Store};

fn join_args(d: &Peer, code: &str) -> Vec<String> {
    vec![
        "join".into(),
        code.into(),
        "--storage-path".into(),
        d.root.to_str().unwrap().into(),
        "--node-id".into(),
        "delta".into(),
        "--listen".into(),
        format!("127.0.0.1:{}", d.port),
        "--no-passphrase".into(),
    ]
}

fn invite(a: &Peer, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "invite"];
    args.extend_from_slice(extra);
    serde_json::from_str(&a.ok(&args)).unwrap()
}

#[test]
fn a_device_joins_with_a_code_and_syncs_both_ways() {
    let mut a = Peer::new("alpha", None);
    a.up();
    a.write("notes/plan.txt", b"from alpha");
    // `invite` as a person runs it: prints the code, waits for the device.
    let mut inviting = a
        .cmd(&["invite"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(inviting.stdout.take().unwrap());
    let mut code = String::new();
    while code.is_empty() {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "no code printed"
        );
        if let Some(rest) = line.trim().strip_prefix("sovryn join ") {
            code = rest.split_whitespace().next().unwrap().to_owned();
        }
    }
    assert!(code.starts_with("sovryn1-"), "{code}");

    let mut d = Peer::newcomer();
    let args = join_args(&d, &code);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(&args);
    let joined: serde_json::Value = serde_json::from_str(&d.ok(&json_args)).unwrap();
    assert_eq!(joined["inviter"].as_str(), Some(a.id.as_str()));
    // Both sides show the same confirmation string.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(inviting.wait().unwrap().success(), "{rest}");
    let confirmation = joined["confirmation"].as_str().unwrap();
    assert!(
        rest.contains(&format!("Confirmation: {confirmation}")),
        "{confirmation} not in {rest}"
    );
    d.root = std::fs::canonicalize(&d.root).unwrap();
    d.id = d.ok(&["id"]).trim().to_owned();
    assert_eq!(joined["node_id"].as_str(), Some(d.id.as_str()));
    // The inviter trusts the device (no `peers add` anywhere).
    let peers = a.ok(&["--json", "peers", "list"]);
    assert!(peers.contains(&d.id), "{peers}");

    d.up();
    d.wait_for_file("notes/plan.txt");
    d.write("from-delta.txt", b"hello alpha");
    a.wait_for_file("from-delta.txt");
    converge(&a, &d, "after the join", |t| t.len() >= 2);
}

#[test]
fn wrong_spent_and_expired_codes_are_refused_and_leave_nothing() {
    let mut a = Peer::new("alpha", None);
    a.up();
    a.write("secret-name.txt", b"x");
    let code = invite(&a, &[])["code"].as_str().unwrap().to_owned();

    // One symbol of the secret changed: the exchange fails, nothing is written.
    let mut wrong: Vec<char> = code.chars().collect();
    let at = wrong.len() - 2;
    wrong[at] = if wrong[at] == 'a' { 'b' } else { 'a' };
    let wrong: String = wrong.into_iter().collect();
    let d = Peer::newcomer();
    let args = join_args(&d, &wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = d.fails_with(&args);
    assert!(err.contains("does not match"), "{err}");
    assert!(!d.home.exists(), "a failed join wrote a home");
    assert!(!d.root.exists(), "a failed join made the folder");

    // The invite took its one try: the right code is now refused too.
    let args = join_args(&d, &code);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = d.fails_with(&args);
    assert!(
        err.contains("used already") || err.contains("already used"),
        "{err}"
    );
    assert!(!d.home.exists());

    // An expired code.
    let late = invite(&a, &["--expires", "1s"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let args = join_args(&d, &late);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = d.fails_with(&args);
    assert!(err.contains("expired"), "{err}");
    assert!(!d.home.exists());

    // Nothing of the folder reached the device, and the inviter trusts nobody new.
    let peers = a.ok(&["--json", "peers", "list"]);
    assert!(!peers.contains("delta"), "{peers}");
    // A code that is not one.
    let err = d.fails_with(&["join", "sovryn1-zzzz", "--storage-path", "x"]);
    assert!(err.contains("not an invite code"), "{err}");
    drop(a);
}

/// Polls `devices pending` on `a` until `id` is listed.
fn wait_pending(a: &Peer, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + mesh::CONVERGE;
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&a.ok(&["--json", "devices", "pending"])).unwrap();
        if v["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == id)
        {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never pending: {v}\n{}",
            a.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn an_unknown_device_waits_in_pending_until_approved_or_denied() {
    let mut a = Peer::new("alpha", None);
    a.up();
    a.write("shared.txt", b"for approved devices");
    // E holds the folder key and lists A, but A does not list E.
    let mut e = Peer::new("echo", Some(&a.folder_key()));
    e.trust(&a);
    e.up();
    let pending = wait_pending(&a, &e.id);
    assert!(
        pending["pending"][0]["attempts"].as_u64().unwrap() >= 1,
        "{pending}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Logged once, however often it knocks.
    let log = a.log();
    assert_eq!(
        log.matches(&format!("unknown device {}", e.id)).count(),
        1,
        "{log}"
    );
    assert!(!e.root.join("shared.txt").exists());
    a.ok(&["devices", "approve", &e.id]);
    e.wait_for_file("shared.txt");
    let peers = a.ok(&["--json", "peers", "list"]);
    assert!(peers.contains(&e.id), "{peers}");

    // A denied device is not listed again.
    let mut f = Peer::new("foxtrot", Some(&a.folder_key()));
    f.trust(&a);
    f.up();
    wait_pending(&a, &f.id);
    a.ok(&["devices", "deny", &f.id]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let v = a.ok(&["--json", "devices", "pending"]);
    assert!(!v.contains(&f.id), "{v}");
    assert!(!f.root.join("shared.txt").exists());
}

/// Polls `peers list` on `p` until `id` is (or is no longer) listed.
fn wait_listed(p: &Peer, id: &str, listed: bool) {
    let deadline = std::time::Instant::now() + mesh::CONVERGE;
    loop {
        let peers = p.ok(&["--json", "peers", "list"]);
        if peers.contains(id) == listed {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} listed: {} (wanted {listed}) on {}\n{}",
            peers.contains(id),
            p.home.display(),
            p.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn every_member_trusts_a_joined_device_and_a_revocation_reaches_them_all() {
    let (mut a, mut b, mut c) = mesh::trio();
    a.up();
    b.up();
    c.up();
    let code = invite(&a, &[])["code"].as_str().unwrap().to_owned();
    let mut d = Peer::newcomer();
    let args = join_args(&d, &code);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ok(&args);
    d.root = std::fs::canonicalize(&d.root).unwrap();
    d.id = d.ok(&["id"]).trim().to_owned();
    d.up();
    // No command on B or C: A's signed add reaches them.
    wait_listed(&b, &d.id, true);
    wait_listed(&c, &d.id, true);
    // And D learns B and C from A's list.
    wait_listed(&d, &b.id, true);
    wait_listed(&d, &c.id, true);
    c.write("from-gamma.txt", b"c");
    d.wait_for_file("from-gamma.txt");
    d.write("from-delta.txt", b"d");
    b.wait_for_file("from-delta.txt");

    // B revokes D: A and C drop it, and nothing written after reaches D.
    b.ok(&["devices", "revoke", &d.id]);
    wait_listed(&b, &d.id, false);
    wait_listed(&a, &d.id, false);
    wait_listed(&c, &d.id, false);
    let list = a.ok(&["--json", "devices", "list"]);
    assert!(list.contains(&d.id), "the revocation is recorded: {list}");
    // Big enough for several chunks, none of them seen before.
    let after: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    a.write("after-revocation.txt", &after);
    c.wait_for_file("after-revocation.txt");
    b.wait_for_file("after-revocation.txt");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !d.root.join("after-revocation.txt").exists(),
        "a revoked device got a file written after its revocation\nD:\n{}\nA:\n{}\nB:\n{}\nC:\n{}",
        d.log(),
        a.log(),
        b.log(),
        c.log()
    );

    // And what D kept (the folder key, and any seal epoch it holds) opens
    // the chunks of before but none written after: those are sealed under
    // a seal epoch started by the revocation, which reached A and C over
    // their sessions and never D.
    let key = MasterKey::from_hex(&d.folder_key()).unwrap();
    let held_by_d = Store::open(&d.home, &key, Access::ReadOnly).unwrap();
    let revoked: &ChunkCodec = held_by_d.codec();
    let at_c = Store::open(&c.home, &key, Access::ReadOnly).unwrap();
    assert!(!at_c.codec().epochs().is_empty());
    for (path, d_opens) in [("from-gamma.txt", true), ("after-revocation.txt", false)] {
        let record = at_c.file(path).unwrap().unwrap();
        assert!(!record.entry.chunks.is_empty());
        for id in &record.entry.chunks {
            let sealed = at_c.read_sealed(id).unwrap();
            at_c.codec().check_sealed(&sealed).unwrap();
            assert_eq!(
                revoked.check_sealed(&sealed).is_ok(),
                d_opens,
                "{path}: chunk {id}"
            );
        }
    }
}

#[test]
fn an_invite_for_one_folder_read_only_grants_that_folder_and_no_writes() {
    let mut a = Peer::new("alpha", None);
    let photos = a.dir.path().join("photos");
    a.ok(&[
        "folders",
        "add",
        "photos",
        "--path",
        photos.to_str().unwrap(),
    ]);
    a.up();
    a.write("private.txt", b"default folder: not granted");
    std::fs::write(photos.join("cat.jpg"), b"meow").unwrap();
    let code = invite(&a, &["--folder", "photos", "--read-only"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut d = Peer::newcomer();
    let args = join_args(&d, &code);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let joined: serde_json::Value =
        serde_json::from_str(&d.ok(&[&["--json"], args.as_slice()].concat())).unwrap();
    let folders = joined["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 1, "{joined}");
    assert_eq!(folders[0]["name"], "photos");
    let d_photos = std::path::PathBuf::from(folders[0]["storage_path"].as_str().unwrap());
    d.id = d.ok(&["id"]).trim().to_owned();
    // A lists D in photos, read-only, and not in its default folder.
    let default_peers = a.ok(&["-F", "default", "--json", "peers", "list"]);
    assert!(!default_peers.contains(&d.id), "{default_peers}");
    let photo_peers: serde_json::Value =
        serde_json::from_str(&a.ok(&["-F", "photos", "--json", "peers", "list"])).unwrap();
    let entry = photo_peers["peers"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["id"] == d.id.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("D not in photos: {photo_peers}"));
    assert_eq!(entry["read_only"], true, "{entry}");

    d.up();
    let deadline = std::time::Instant::now() + mesh::CONVERGE;
    while !d_photos.join("cat.jpg").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "photos never arrived:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // D's own change to photos is not taken by A.
    std::fs::write(d_photos.join("dog.jpg"), b"woof").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !photos.join("dog.jpg").exists(),
        "A took a read-only device's write"
    );
    assert!(
        !d.root.join("private.txt").exists(),
        "D got a folder it was not granted"
    );
}

#[test]
fn a_node_that_exists_joins_as_a_new_folder_of_its_own() {
    let mut a = Peer::new("alpha", None);
    a.up();
    a.write("from-alpha.txt", b"a's default folder");
    let mut e = Peer::new("echo", None);
    e.write("mine.txt", b"e's own default folder");
    e.up();
    let code = invite(&a, &[])["code"].as_str().unwrap().to_owned();
    let dest = e.dir.path().join("from-alpha");
    let joined: serde_json::Value = serde_json::from_str(&e.ok(&[
        "--json",
        "join",
        &code,
        "--storage-path",
        dest.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(joined["folders"][0]["name"], "alpha", "{joined}");
    let deadline = std::time::Instant::now() + mesh::CONVERGE;
    while !dest.join("from-alpha.txt").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing arrived:\n{}",
            e.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // E's own folder is untouched and not shared.
    assert!(e.root.join("mine.txt").exists());
    assert!(!a.root.join("mine.txt").exists());
}
