//! Local attacks on a real `sovryn` binary: another user on the machine,
//! a storage path pointed at the home, peer-controlled text on a terminal.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::TestNode;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A node whose key is wrapped by a passphrase (kept in a file).
fn locked_node() -> (TestNode, std::path::PathBuf) {
    let n = TestNode::uninit();
    let pass = n.dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    n.ok(&[
        "--passphrase-file",
        pass.to_str().unwrap(),
        "init",
        "--storage-path",
        n.root.to_str().unwrap(),
        "--node-id",
        "locked",
    ]);
    (n, pass)
}

fn unlock(
    n: &TestNode,
    pass: &std::path::Path,
    runtime: Option<&std::path::Path>,
) -> std::process::Output {
    let mut c = n.cmd(&["--passphrase-file", pass.to_str().unwrap(), "unlock"]);
    match runtime {
        Some(r) => c.env("XDG_RUNTIME_DIR", r),
        None => c.env_remove("XDG_RUNTIME_DIR"),
    };
    c.env("TMPDIR", n.dir.path().join("tmp"));
    c.output().unwrap()
}

/// Problem 3: no key cache in a shared temp dir, none in a directory that
/// is not private, and no write through a prepared file or symlink.
#[test]
fn unlock_never_leaks_the_key_to_another_user() {
    let (n, pass) = locked_node();
    let tmp = n.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    // XDG_RUNTIME_DIR unset: refused with a way out, nothing in $TMPDIR.
    let out = unlock(&n, &pass, None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("XDG_RUNTIME_DIR"), "{err}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // The attacker prepared a world-writable `sovryn` directory.
    let run = n.dir.path().join("run-open");
    std::fs::create_dir_all(run.join("sovryn")).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(run.join("sovryn"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = unlock(&n, &pass, Some(&run));
    assert!(!out.status.success(), "used a 0777 directory");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a private directory"));
    assert_eq!(std::fs::read_dir(run.join("sovryn")).unwrap().count(), 0);

    // A private directory where a symlink waits under the key's name:
    // replaced, never written through.
    let run = n.dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = unlock(&n, &pass, Some(&run));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cached: Vec<_> = std::fs::read_dir(run.join("sovryn"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(cached.len(), 1);
    let key_path = cached[0].path();
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&run.join("sovryn")), 0o700);
    let victim = n.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::remove_file(&key_path).unwrap();
    std::os::unix::fs::symlink(&victim, &key_path).unwrap();
    let out = unlock(&n, &pass, Some(&run));
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(&key_path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(mode(&key_path), 0o600);
}

/// Problem 5: the storage path can never contain the home (nor lie in it),
/// whether set by `config set` or by hand in `config.toml`.
#[test]
fn the_storage_path_never_contains_the_home() {
    let n = TestNode::new("alpha");
    let parent = n.dir.path().to_str().unwrap().to_owned();
    let err = n.fails(&["config", "set", "storage_path", &parent]);
    assert!(err.contains("must not contain each other"), "{err}");
    let inside = n.home.join("files");
    let err = n.fails(&["config", "set", "storage_path", inside.to_str().unwrap()]);
    assert!(err.contains("must not contain each other"), "{err}");
    // By hand: the node refuses to open, so nothing is scanned or served.
    let cfg = std::fs::read_to_string(n.home.join("config.toml")).unwrap();
    let root = n.ok(&["config", "get", "storage_path"]).trim().to_owned();
    std::fs::write(
        n.home.join("config.toml"),
        cfg.replace(
            &format!("storage_path = \"{root}\""),
            &format!("storage_path = \"{parent}\""),
        ),
    )
    .unwrap();
    let err = n.fails(&["scan"]);
    assert!(err.contains("must not contain each other"), "{err}");
    let err = n.fails(&["cat", "home/identity.key"]);
    assert!(err.contains("must not contain each other"), "{err}");
}

/// Problem 9: an existing home is made private, every file in it is 0600,
/// the control socket too (whatever the umask), and secrets set with
/// `config set` are not echoed.
#[test]
fn the_home_is_private_whatever_the_umask() {
    let n = TestNode::uninit();
    std::fs::create_dir_all(&n.home).unwrap();
    std::fs::set_permissions(&n.home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut init = n.cmd(&[
        "init",
        "--storage-path",
        n.root.to_str().unwrap(),
        "--no-passphrase",
        "--listen",
        &format!("127.0.0.1:{}", common::free_port()),
    ]);
    // SAFETY: umask(2) in the child before exec; no other threads there.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut init, || {
            libc::umask(0);
            Ok(())
        });
    }
    assert!(init.output().unwrap().status.success());
    n.no_lan_discovery();
    n.ok(&["config", "set", "mcp.enabled", "false"]);
    let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-42";
    let out = n.ok(&["config", "set", "mcp.jwt_secret", secret]);
    assert!(!out.contains(secret), "{out}");
    let out = n.ok(&["config", "get", "mcp.jwt_secret"]);
    assert!(!out.contains(secret), "{out}");

    let mut up = n.cmd(&["up"]);
    // SAFETY: as above.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut up, || {
            libc::umask(0);
            Ok(())
        });
    }
    let running = common::Running::start(up);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !n.home.join("control.sock").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(mode(&n.home), 0o700);
    let mut files = 0;
    for e in walk(&n.home) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        if m.is_dir() {
            assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", e.display(), m.mode());
        } else {
            files += 1;
            assert_eq!(m.mode() & 0o077, 0, "{} is {:o}", e.display(), m.mode());
        }
    }
    assert!(files >= 5, "{files} files");
    assert_eq!(mode(&n.home.join("control.sock")), 0o600);
    drop(running);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Problem 9, the socket's other half: another user cannot use the control
/// socket even when it can reach it (checked when the tests run as root and
/// `setpriv` can drop to `nobody`).
#[test]
fn another_user_cannot_use_the_control_socket() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let n = TestNode::with_listen("alpha", &format!("127.0.0.1:{}", common::free_port()), None);
    let _up = n.up();
    let sock = n.home.join("control.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Even with the home and socket opened up by mistake, the daemon checks
    // the client's uid and answers nothing to another user.
    std::fs::set_permissions(n.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&n.home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(3)\ns.connect({:?})\ns.sendall(b'{{\"cmd\":\"status\"}}\\n')\ntry:\n    d=s.recv(100)\nexcept Exception:\n    d=b''\nsys.stdout.write('GOT:'+d.decode())\n",
        sock.to_str().unwrap()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "python3",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("\"ok\""),
        "another user got an answer: {text}"
    );
    // The owner still gets one.
    assert!(n.json(&["status"]).is_object());
}

/// Problem 15: names and notes that came from a peer or an agent never
/// reach the terminal with their escape sequences.
#[test]
fn control_characters_never_reach_the_terminal() {
    let n = TestNode::new("alpha");
    let evil = "evil\x1b]0;pwned\x07\x1b[2J.txt";
    n.write(evil, b"x");
    n.ok(&["add", evil, "-m", "note \x1b[31mred\x1b[0m"]);
    for args in [vec!["ls", "-l"], vec!["versions", evil]] {
        let out = n.ok(&args);
        assert!(!out.contains('\x1b'), "{args:?} printed an escape: {out:?}");
        assert!(out.contains("\\x1b"), "{args:?}: {out:?}");
    }
}

/// inotify watches held by process `pid`.
fn inotify_watches(pid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            n += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// Problems 10 and 13 against a running node: a symlink to `/usr` in the
/// folder plants no watches outside it, and with `docs/dirlink ->
/// ../secret` present at startup a new file in `secret/` is still seen at
/// once (not by the 60-second rescan).
#[test]
fn the_watcher_never_follows_symlinks() {
    let n = TestNode::with_listen("alpha", &format!("127.0.0.1:{}", common::free_port()), None);
    n.write("docs/readme.txt", b"r");
    n.write("secret/old.txt", b"o");
    std::os::unix::fs::symlink("/usr", n.path("usr-link")).unwrap();
    std::os::unix::fs::symlink("../secret", n.path("docs/dirlink")).unwrap();
    let up = n.up();
    let watches = inotify_watches(up.pid().unwrap());
    // The root, docs and secret (and nothing behind the links).
    assert!(watches <= 8, "{watches} inotify watches for 3 directories");
    std::fs::write(n.path("secret/new.txt"), b"new").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = n.ok(&["ls", "secret"]);
        if out.contains("secret/new.txt") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "secret/new.txt not recorded within 5 s: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let all = n.ok(&["ls"]);
    assert!(!all.contains("usr-link/"), "{all}");
}
