//! Acceptance: SIGKILL of the receiving node during a 1 GiB transfer, then a
//! restart. The transfer completes, no partial file is ever visible under its
//! real name, `verify` passes, and the chunks already stored before the kill
//! are not fetched again.
//!
//! Two real `sovryn up` processes on 127.0.0.1 (mDNS off). Run with
//! `cargo test -p sovryn-cli --test sync_crash -- --nocapture` to see the
//! timings. It needs about 4 GiB of free disk in the temp dir (it is
//! skipped, saying so, with less). `SOVRYN_CRASH_MIB=256` runs it on a
//! smaller file.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dir_size, free_port, TestNode};

/// The file's size: 1 GiB, or `$SOVRYN_CRASH_MIB` MiB.
fn size() -> u64 {
    std::env::var("SOVRYN_CRASH_MIB")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .filter(|&m| m >= 16)
        .unwrap_or(1024)
        << 20
}

/// Bytes free for unprivileged users on the file system of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs(3) fills the zeroed struct we pass; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return u64::MAX;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}
/// The file's name on both nodes.
const NAME: &str = "big.bin";

/// Writes `size` incompressible bytes (BLAKE3 in XOF mode, from `seed`) to
/// `path`; returns the BLAKE3 hash of what was written.
fn write_random(path: &Path, size: u64, seed: &[u8]) -> blake3::Hash {
    let mut xof = blake3::Hasher::new().update(seed).finalize_xof();
    let mut hash = blake3::Hasher::new();
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    hash.finalize()
}

/// Size and BLAKE3 hash of a file.
fn hash_file(path: &Path) -> (u64, blake3::Hash) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut hash = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        len += n as u64;
    }
    (len, hash.finalize())
}

/// Chunks the running node fetched and stored, over all its peers, since it
/// started (`peers list --json`, from the control socket).
fn chunks_received(n: &TestNode) -> u64 {
    let v = n.json(&["peers", "list"]);
    assert_eq!(v["running"], true, "{v}");
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["chunks_received"].as_u64().unwrap_or(0))
        .sum()
}

/// Distinct chunks in a node's store (`stats --json`).
fn stored_chunks(n: &TestNode) -> u64 {
    n.stats()["chunks"].as_u64().unwrap()
}

/// Watches `path` from another thread until dropped: every time it exists
/// it must be a regular file of exactly `size` bytes (a partial file under
/// the real name would be smaller).
struct NameWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    bad: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NameWatch {
    fn start(path: PathBuf, size: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (s, n, b) = (stop.clone(), seen.clone(), bad.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && m.len() == size => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(m) => b.lock().unwrap().push(format!(
                        "{} visible with {} bytes",
                        path.display(),
                        m.len()
                    )),
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        NameWatch {
            stop,
            seen,
            bad,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns how often the file was seen whole and what was wrong.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let bad = std::mem::take(&mut *self.bad.lock().unwrap());
        (self.seen.load(Ordering::Relaxed), bad)
    }
}

impl Drop for NameWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn sigkill_receiver_during_1gib_transfer_resumes_without_refetching() {
    let size = size();
    // Two copies of the file plus two stores, and some slack.
    let need = 4 * size + size / 2;
    let free = free_bytes(&std::env::temp_dir());
    if free < need {
        eprintln!(
            "SKIPPED: sync_crash needs {} MiB free in {}, only {} MiB are",
            need >> 20,
            std::env::temp_dir().display(),
            free >> 20
        );
        return;
    }
    let t0 = Instant::now();
    let lap = |what: &str, since: Instant| {
        eprintln!(
            "[sync_crash] {what}: {:.1} s (total {:.1} s)",
            since.elapsed().as_secs_f64(),
            t0.elapsed().as_secs_f64()
        )
    };
    let (pa, pb) = (free_port(), free_port());
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let a = TestNode::with_listen("alpha", &la, None);
    let b = TestNode::with_listen("beta", &lb, Some(&a.folder_key()));
    let (ida, idb) = (a.id(), b.id());
    a.trust(&idb, Some(&lb));
    b.trust(&ida, Some(&la));

    // A: a 1 GiB incompressible file, recorded before anything runs.
    let step = Instant::now();
    std::fs::create_dir_all(&a.root).unwrap();
    let want = write_random(&a.path(NAME), size, b"sovryn sync_crash");
    lap(&format!("wrote {} MiB on A", size >> 20), step);
    let step = Instant::now();
    a.ok(&["scan"]);
    let total = stored_chunks(&a);
    assert!(total > 100, "expected hundreds of chunks, got {total}");
    lap(&format!("A recorded it ({total} chunks)"), step);

    let b_file = b.path(NAME);
    let watch = NameWatch::start(b_file.clone(), size);
    let b_packs = b.home.join("packs");

    let _run_a = a.up();
    let step = Instant::now();
    let mut run_b = b.up();
    // Kill B hard once its store has committed some of the file's chunks
    // (received chunks are indexed in groups, after their pack bytes are
    // synced), well before it has them all.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let packed = if b_packs.exists() {
            dir_size(&b_packs)
        } else {
            0
        };
        if packed >= size / 5 {
            let stored = stored_chunks(&b);
            assert!(
                stored < total && !b_file.exists(),
                "B stored the whole file before it could be killed"
            );
            if stored > 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "B stored nothing in 600 s ({packed} bytes in packs):\n{}",
            run_b.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before_kill = chunks_received(&b);
    run_b.kill9();
    lap(
        &format!("B killed with SIGKILL mid-transfer ({before_kill} chunks counted by then)"),
        step,
    );
    assert!(
        !b_file.exists(),
        "the transfer finished before the kill; nothing was tested"
    );

    // What B's store holds now: committed chunks only (the index never
    // names bytes that are not durable).
    let had = stored_chunks(&b);
    eprintln!("[sync_crash] B had {had} of {total} chunks stored at the kill");
    assert!(
        had > 0 && had < total,
        "expected some but not all chunks stored, got {had} of {total}"
    );

    // Restart B: it completes, fetching only what it lacked.
    let step = Instant::now();
    let mut run_b = b.up();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !b_file.exists() {
        assert!(
            Instant::now() < deadline,
            "B did not finish after the restart:\n{}",
            run_b.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lap("B restarted and finished the file", step);
    eprintln!("[sync_crash] B's log after the restart:\n{}", run_b.log());
    let fetched = chunks_received(&b);
    eprintln!(
        "[sync_crash] after the restart B fetched {fetched} chunks; {} were missing",
        total - had
    );
    run_b.stop();

    let (seen, bad) = watch.finish();
    assert!(bad.is_empty(), "a partial file was visible: {bad:?}");
    assert!(seen > 0, "the watcher never saw the finished file");

    let step = Instant::now();
    let (len, got) = hash_file(&b_file);
    assert_eq!(len, size);
    assert_eq!(got, want, "B's {NAME} differs from A's");
    lap("hashed B's copy", step);
    let step = Instant::now();
    b.ok(&["verify"]);
    lap("verify on B", step);
    assert_eq!(stored_chunks(&b), total);
    assert_eq!(
        fetched,
        total - had,
        "B fetched {fetched} chunks after the restart, but only {} were missing",
        total - had
    );
    eprintln!("[sync_crash] done in {:.1} s", t0.elapsed().as_secs_f64());
}
