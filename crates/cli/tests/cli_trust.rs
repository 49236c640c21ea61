//! The command line as a person uses it: pipes, re-adding a peer, the
//! spellings of the product spec.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::TestNode;

/// `sovryn ls | head -1` on a long listing: no panic, nothing on stderr.
#[test]
fn output_piped_to_head_never_panics() {
    let n = TestNode::new("a");
    for i in 0..3000 {
        n.write(&format!("dir/a-rather-long-file-name-{i:05}.txt"), b"x");
    }
    n.ok(&["scan"]);
    let mut child = n
        .cmd(&["ls"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    let got = out.read(&mut first).unwrap();
    assert!(got > 0);
    drop(out); // the reader goes away, as `head` does
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = child.wait().unwrap();
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

/// Re-adding a known peer with new rights keeps its name and addresses.
#[test]
fn peers_add_on_a_known_id_keeps_its_name_and_addresses() {
    let n = TestNode::new("a");
    let other = TestNode::new("b").id();
    n.ok(&[
        "peers",
        "add",
        &other,
        "--name",
        "laptop",
        "--address",
        "127.0.0.1:7001",
    ]);
    n.ok(&["peers", "add", &other, "--read-only", "--path", "docs"]);
    let list = n.json(&["peers", "list"]);
    let p = &list["peers"][0];
    assert_eq!(p["name"], "laptop", "{list}");
    assert_eq!(p["addresses"][0], "127.0.0.1:7001", "{list}");
    assert_eq!(p["read_only"], true, "{list}");
    assert_eq!(p["paths"][0], "docs", "{list}");
}

/// `restore PATH VERSION` (the spec's spelling) and `--version` both work.
#[test]
fn restore_takes_the_version_as_an_argument() {
    let n = TestNode::new("a");
    n.write("f.txt", b"one\n");
    n.ok(&["add", "f.txt"]);
    n.write("f.txt", b"two\n");
    n.ok(&["add", "f.txt"]);
    n.ok(&["restore", "f.txt", "v1"]);
    assert_eq!(std::fs::read(n.path("f.txt")).unwrap(), b"one\n");
    n.ok(&["restore", "f.txt", "--version", "v2"]);
    assert_eq!(std::fs::read(n.path("f.txt")).unwrap(), b"two\n");
    let err = n.fails(&["restore", "f.txt"]);
    assert!(err.contains("VERSION") || err.contains("version"), "{err}");
}

/// The product spec's spellings: `config set offline_mode`, `sync --force`,
/// and `init --encryption-key` refused with the reason and the way to go.
#[test]
fn the_spec_spellings_work_or_explain() {
    let n = TestNode::new("a");
    n.ok(&["config", "set", "offline_mode", "true"]);
    assert_eq!(n.ok(&["config", "get", "offline_mode"]).trim(), "true");
    assert!(n.home.join("paused").exists());
    n.ok(&["config", "set", "offline_mode", "false"]);
    assert!(!n.home.join("paused").exists());
    let err = n.fails(&["sync", "--force", "--timeout", "1"]);
    assert!(err.contains("not running"), "{err}");
    let other = TestNode::uninit();
    let err = other.fails(&[
        "init",
        "--storage-path",
        other.root.to_str().unwrap(),
        "--encryption-key",
        "00112233",
    ]);
    assert!(
        err.contains("--passphrase-file") && err.contains("command line"),
        "{err}"
    );
    assert!(!other.home.exists());
}

/// `remove` of a path that is not there is an error (unless forced);
/// `keep` undoes a `remove`.
#[test]
fn remove_refuses_what_is_not_there_and_keep_undoes_it() {
    let n = TestNode::new("a");
    n.write("videos/a.bin", b"\x00a");
    n.ok(&["scan"]);
    let err = n.fails(&["remove", "vidoes"]);
    assert!(err.contains("nothing at vidoes"), "{err}");
    n.ok(&["remove", "later", "--force"]);
    n.ok(&["remove", "videos"]);
    n.write("videos/b.bin", b"\x00b");
    n.ok(&["scan"]);
    assert!(!n.ok(&["ls", "videos"]).contains("b.bin"));
    n.ok(&["keep", "videos"]);
    n.ok(&["scan"]);
    assert!(n.ok(&["ls", "videos"]).contains("b.bin"));
    let err = n.fails(&["keep", "videos"]);
    assert!(err.contains("was not removed"), "{err}");
}

/// `--json` prints one object with stable field names for every command:
/// scripts never meet a bare array, a bare string or human text.
#[test]
fn json_output_is_always_an_object() {
    let n = TestNode::new("shapes");
    n.write("a.txt", b"hello words\n");
    n.ok(&["scan"]);
    n.write("a.txt", b"hello again\n");
    for args in [
        &["scan"][..],
        &["add", "a.txt", "-m", "second"],
        &["ls"],
        &["versions", "a.txt"],
        &["cat", "a.txt", "--version", "v1"],
        &["diff", "a.txt", "v1"],
        &["search", "hello"],
        &["stats"],
        &["status"],
        &["verify"],
        &["gc"],
        &["conflicts", "list"],
        &["peers", "list"],
        &["config", "get", "node_name"],
        &["config", "set", "retention.keep_last", "50"],
        &["config", "get", "offline_mode"],
        &["id"],
        &["mcp", "tokens", "list"],
        &["daemon", "status"],
        &["restore", "a.txt", "v1"],
        &["remove", "a.txt"],
        &["keep", "a.txt"],
        &["pause"],
        &["resume"],
        &["folder-key"],
    ] {
        if args[0] == "cat" {
            // Bytes, not a report: `cat` prints the file as it is.
            assert_eq!(n.ok(args), "hello words\n");
            continue;
        }
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = n.ok(&a);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("sovryn {args:?}: not JSON ({e}): {out}"));
        assert!(v.is_object(), "sovryn {args:?} printed {v}");
    }
    // Times are RFC 3339, modes octal strings.
    let v = n.json(&["versions", "a.txt"]);
    let t = v["versions"][0]["time"].as_str().unwrap();
    assert!(t.ends_with('Z') && t.contains('T'), "{t}");
    assert_eq!(n.json(&["ls"])["entries"][0]["mode"], "0644");
}
