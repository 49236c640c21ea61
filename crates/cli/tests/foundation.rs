//! End-to-end tests of the foundation: the real `sovryn` binary on real files.

mod common;

use common::{dir_size, random_bytes, TestNode};

#[test]
fn version_restore_diff_cat_round_trip() {
    let n = TestNode::new("laptop");
    n.write("notes/todo.md", b"buy milk\nwalk dog\n");
    n.ok(&["add", "notes", "-m", "first draft"]);
    n.write("notes/todo.md", b"buy milk\nwalk cat\n");
    n.ok(&["add", "notes/todo.md"]);
    let v = n.json(&["versions", "notes/todo.md"]);
    let labels: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["v2", "v1"]);
    assert_eq!(v["versions"][0]["author"], "laptop");
    assert_eq!(v["versions"][1]["message"], "first draft");

    let out = n.ok(&["restore", "notes/todo.md", "--version", "v1"]);
    assert!(out.contains("v3"), "{out}");
    assert_eq!(
        std::fs::read(n.path("notes/todo.md")).unwrap(),
        b"buy milk\nwalk dog\n"
    );
    let v = n.json(&["versions", "notes/todo.md"]);
    assert_eq!(v["versions"][0]["version"], "v3");
    assert_eq!(v["versions"][0]["message"], "restored from v1");

    let diff = n.ok(&["diff", "notes/todo.md", "v1", "v2"]);
    assert!(
        diff.contains("-walk dog") && diff.contains("+walk cat"),
        "{diff}"
    );
    assert_eq!(
        n.ok(&["cat", "notes/todo.md", "--version", "v2"]),
        "buy milk\nwalk cat\n"
    );

    // A path relative to a working directory inside the storage path.
    let out = n
        .cmd(&["cat", "todo.md", "--version", "v1"])
        .current_dir(n.path("notes"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"buy milk\nwalk dog\n");
    n.ok(&["verify"]);
}

#[test]
fn deletes_dirs_symlinks_and_modes_are_recorded() {
    use std::os::unix::fs::PermissionsExt;
    let n = TestNode::new("a");
    n.write("bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(n.path("bin/run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::create_dir_all(n.path("empty/inner")).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", n.path("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", n.path("outside")).unwrap();
    n.ok(&["scan"]);
    let ls = n.json(&["ls"]);
    let names: Vec<&str> = ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bin", "empty", "link", "outside"]);
    let bin = n.json(&["ls", "bin"]);
    assert_eq!(bin["entries"][0]["mode"], "0750");
    assert_eq!(
        n.json(&["ls", "link"])["entries"][0]["target"],
        "bin/run.sh"
    );
    // The out-of-tree link is stored as a link, never followed.
    assert_eq!(n.json(&["ls", "outside"])["entries"][0]["kind"], "symlink");
    assert!(n.fails(&["cat", "outside"]).contains("not a file"));
    assert_eq!(
        n.json(&["ls", "empty"])["entries"][0]["path"],
        "empty/inner"
    );

    std::fs::remove_file(n.path("bin/run.sh")).unwrap();
    n.ok(&["scan"]);
    let v = n.json(&["versions", "bin/run.sh"]);
    assert_eq!(v["versions"][0]["deleted"], true);
    assert!(n.fails(&["cat", "bin/run.sh"]).contains("deleted"));
    n.ok(&["restore", "bin/run.sh", "--version", "v1"]);
    assert_eq!(
        std::fs::read(n.path("bin/run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    let mode = std::fs::metadata(n.path("bin/run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o750);
}

#[test]
fn ignore_files_and_unchanged_files_are_skipped() {
    let n = TestNode::new("a");
    n.write(".sovrynignore", b"*.log\nbuild/\n");
    n.write("a.txt", b"a");
    n.write("debug.log", b"noise");
    n.write("build/out.o", b"obj");
    let first = n.json(&["scan"]);
    assert_eq!(first["added"], 1, "{first}");
    // Files modified within a second of a scan are re-read next time ("racy"); wait that out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    n.ok(&["scan"]);
    let second = n.json(&["scan"]);
    assert_eq!(second["added"], 0);
    assert_eq!(second["modified"], 0);
    assert_eq!(
        second["bytes_hashed"], 0,
        "unchanged files must not be read: {second}"
    );
    assert!(n.fails(&["cat", "debug.log"]).contains("not tracked"));
    n.ok(&["remove", "a.txt"]);
    std::fs::remove_file(n.path("a.txt")).unwrap();
    let third = n.json(&["scan"]);
    assert_eq!(
        third["deleted"], 0,
        "an excluded path is not deleted from history: {third}"
    );
}

#[test]
fn dedup_and_one_byte_insert_grow_the_store_by_under_1_mib() {
    let n = TestNode::new("a");
    let data = random_bytes(100 << 20, 7);
    n.write("big/one.bin", &data);
    n.ok(&["add", "big/one.bin"]);
    let packs = n.home.join("packs");
    let after_first = dir_size(&packs);
    assert!(after_first > 100 << 20);
    n.write("big/copy.bin", &data);
    n.ok(&["add", "big/copy.bin"]);
    let after_copy = dir_size(&packs);
    let mut edited = data.clone();
    edited.insert(data.len() / 2, b'!');
    n.write("big/one.bin", &edited);
    n.ok(&["add", "big/one.bin"]);
    let after_insert = dir_size(&packs);
    eprintln!(
        "copy grew the store by {} bytes; 1-byte insert by {} bytes",
        after_copy - after_first,
        after_insert - after_copy
    );
    assert!(after_copy - after_first < 1 << 20);
    assert!(after_insert - after_copy < 1 << 20);
    let out = n.cmd(&["cat", "big/one.bin"]).output().unwrap();
    assert!(out.stdout == edited);
}

#[test]
fn text_is_compressed_at_least_twofold() {
    let n = TestNode::new("a");
    // Source code and prose: this repository's own sources, copied several ways.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut logical = 0u64;
    for (i, krate) in ["store", "engine", "cli"].iter().enumerate() {
        for entry in std::fs::read_dir(src.join(krate).join("src")).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                continue;
            }
            let text = std::fs::read(&p).unwrap();
            logical += text.len() as u64;
            n.write(
                &format!("src{i}/{}", p.file_name().unwrap().to_string_lossy()),
                &text,
            );
        }
    }
    let prose: String = (0..4000)
        .map(|i| {
            format!("Line {i}: the quick brown fox jumps over the lazy dog near the river bank.\n")
        })
        .collect();
    logical += prose.len() as u64;
    n.write("docs/prose.txt", prose.as_bytes());
    n.ok(&["scan"]);
    let stored = dir_size(&n.home.join("packs"));
    eprintln!(
        "logical {logical} bytes stored in {stored} bytes: {:.2}x",
        logical as f64 / stored as f64
    );
    assert!(stored * 2 <= logical, "stored {stored} of {logical}");
}

#[test]
fn plaintext_never_reaches_the_chunk_store() {
    let n = TestNode::new("a");
    let marker = b"SOVRYN-MARKER-7f3a9c1e-plaintext-canary";
    let mut text = Vec::new();
    for _ in 0..200 {
        text.extend_from_slice(marker);
        text.extend_from_slice(b" some filler words\n");
    }
    n.write("secret.txt", &text);
    n.ok(&["scan"]);
    n.write("secret.txt", &text[..text.len() / 2]);
    n.ok(&["scan"]);
    let mut checked = 0;
    for entry in std::fs::read_dir(n.home.join("packs")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        checked += bytes.len();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "marker found in a pack"
        );
        assert!(
            !bytes.windows(12).any(|w| w == b"filler words"),
            "plaintext found in a pack"
        );
    }
    assert!(checked > 0);
}

#[test]
fn search_finds_words_scoped_by_prefix() {
    let n = TestNode::new("a");
    n.write(
        "docs/rust.md",
        b"Ownership and borrowing make Rust memory safe.",
    );
    n.write(
        "notes/rust.md",
        b"Remember: borrowing rules apply to closures too.",
    );
    n.write("notes/cooking.md", b"Knead the dough for ten minutes.");
    n.ok(&["scan"]);
    let all = n.json(&["search", "borrowing"]);
    assert_eq!(all["hits"].as_array().unwrap().len(), 2);
    let scoped = n.json(&["search", "borrowing", "--path", "notes"]);
    assert_eq!(scoped["hits"].as_array().unwrap().len(), 1);
    assert_eq!(scoped["hits"][0]["path"], "notes/rust.md");
    assert!(scoped["hits"][0]["snippet"]
        .as_str()
        .unwrap()
        .contains("[borrowing]"));
    assert_eq!(
        n.json(&["search", "dough"])["hits"][0]["path"],
        "notes/cooking.md"
    );
    // Edits keep the index current.
    n.write("notes/cooking.md", b"Proof the bread overnight.");
    n.ok(&["scan"]);
    assert!(n.json(&["search", "dough"])["hits"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        n.json(&["search", "overnight"])["hits"][0]["path"],
        "notes/cooking.md"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let fresh = TestNode::uninit();
    assert!(fresh.fails(&["status"]).contains("no node here"));

    let n = TestNode::new("a");
    n.write("a.txt", b"keep me");
    n.ok(&["scan"]);
    let before = n.stats();
    assert!(n.fails(&["cat", "nope.txt"]).contains("not tracked"));
    assert!(n
        .fails(&["add", "../outside.txt"])
        .contains("escapes the storage path"));
    assert!(n
        .fails(&["cat", "/etc/passwd"])
        .contains("escapes the storage path"));
    assert!(n.fails(&["add", "missing/file"]).contains("no such file"));
    assert!(n.fails(&["versions", "a.txt/../../x"]).contains("escapes"));
    assert!(n
        .fails(&["restore", "a.txt", "--version", "v9"])
        .contains("no version v9"));
    assert!(n
        .fails(&["restore", "a.txt", "--version", "latest"])
        .contains("not a version"));
    assert!(n
        .fails(&["config", "set", "mcp.port", "lots"])
        .contains("invalid value"));
    let again = n.fails(&[
        "init",
        "--storage-path",
        n.root.to_str().unwrap(),
        "--no-passphrase",
    ]);
    assert!(again.contains("already initialised"), "{again}");
    assert_eq!(n.stats()["versions"], before["versions"]);
    assert_eq!(std::fs::read(n.path("a.txt")).unwrap(), b"keep me");
    n.ok(&["verify"]);
}

#[test]
fn passphrase_wraps_the_key_and_recovery_code_opens_it() {
    let n = TestNode::uninit();
    let pass = n.dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let out = n.json(&[
        "init",
        "--storage-path",
        n.root.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    let code = out["recovery_code"].as_str().unwrap().to_owned();
    let keyfile = std::fs::read_to_string(n.home.join("master.key")).unwrap();
    assert!(keyfile.contains("wrapped"));
    n.write("a.txt", b"x");
    // Locked without a passphrase (no terminal here).
    assert!(n.fails(&["scan"]).contains("locked"));
    let wrong = n.dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    assert!(n
        .fails(&["--passphrase-file", wrong.to_str().unwrap(), "scan"])
        .contains("wrong passphrase"));
    n.ok(&["--passphrase-file", pass.to_str().unwrap(), "scan"]);
    let rec = n.dir.path().join("rec");
    std::fs::write(&rec, code.to_lowercase()).unwrap();
    n.ok(&["--passphrase-file", rec.to_str().unwrap(), "unlock"]);
    assert_eq!(n.ok(&["cat", "a.txt"]), "x");
    n.ok(&["lock"]);
    assert!(n.fails(&["cat", "a.txt"]).contains("locked"));
    use std::os::unix::fs::PermissionsExt;
    for f in ["master.key", "identity.key"] {
        assert_eq!(
            std::fs::metadata(n.home.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}

#[test]
fn gc_prunes_by_retention_and_frees_chunks() {
    let n = TestNode::new("a");
    for i in 0..5 {
        n.write("f.bin", &random_bytes(300_000, i + 1));
        n.ok(&["scan"]);
    }
    n.ok(&["config", "set", "retention.keep_last", "2"]);
    let before = dir_size(&n.home.join("packs"));
    let report = n.json(&["gc"]);
    assert_eq!(report["versions_pruned"], 3);
    let after = dir_size(&n.home.join("packs"));
    assert!(after < before * 3 / 5, "{before} -> {after}");
    let v = n.json(&["versions", "f.bin"]);
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        n.run(&["cat", "f.bin", "--version", "v4"]).stdout,
        random_bytes(300_000, 4)
    );
    n.ok(&["verify"]);
}

#[test]
fn id_prints_the_endpoint_id() {
    let n = TestNode::new("a");
    let id = n.ok(&["id"]);
    assert_eq!(id.trim().len(), 64);
    assert!(id.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let other = TestNode::new("b");
    assert_ne!(id, other.ok(&["id"]));
}

/// Fills `path` with `len` bytes from the kernel's random source.
fn urandom_file(path: &std::path::Path, len: u64) {
    use std::io::Read;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut src = std::fs::File::open("/dev/urandom").unwrap().take(len);
    let mut dst = std::fs::File::create(path).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
}

#[test]
fn sigkill_during_add_leaves_a_sound_store_and_the_next_add_completes() {
    let n = TestNode::new("a");
    // A 500 MiB tree: 40 files of 12.5 MiB.
    let files = 40;
    for i in 0..files {
        urandom_file(
            &n.path(&format!("tree/d{}/f{i}.bin", i % 4)),
            12_800_000 + i as u64,
        );
    }
    for delay_ms in [150u64, 600, 1500, 3000] {
        let mut child = n
            .cmd(&["add", "tree"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let finished_early = child.try_wait().unwrap().is_some();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        eprintln!("killed add after {delay_ms} ms (already finished: {finished_early})");
        n.ok(&["verify"]);
    }
    n.ok(&["add", "tree"]);
    n.ok(&["verify"]);
    let ls = n.json(&["stats"]);
    assert_eq!(ls["files"], files);
    for i in (0..files).step_by(7) {
        let rel = format!("tree/d{}/f{i}.bin", i % 4);
        let out = n.run(&["cat", &rel]);
        assert!(out.status.success());
        assert!(
            out.stdout == std::fs::read(n.path(&rel)).unwrap(),
            "{rel} differs"
        );
    }
    // A further scan finds nothing to do.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = n.json(&["scan"]);
    assert_eq!(
        again["added"].as_u64().unwrap() + again["modified"].as_u64().unwrap(),
        0,
        "{again}"
    );
}
