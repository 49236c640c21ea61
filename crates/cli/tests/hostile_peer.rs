//! A hostile peer against a real `sovryn up`: a hand-driven iroh endpoint
//! that speaks the sync protocol, without the folder key, with the key but a
//! narrowed scope, and with forged, oversized and replayed messages. Each
//! test is an attack from the security review; each must get nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{free_port, TestNode};
use iroh::endpoint::{presets, Connection, RecvStream, SendStream};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey};
use sovryn_net::membership;
use sovryn_net::wire::{self, Frame, Msg, WireRecord};
use sovryn_store::{ChunkCodec, ChunkId, Entry, EntryKind, MasterKey, VersionVector};

/// The attacker: its own endpoint on 127.0.0.1.
struct Hostile {
    ep: Endpoint,
}

impl Hostile {
    async fn new() -> Self {
        let ep = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::generate())
            .relay_mode(RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .unwrap()
            .bind()
            .await
            .unwrap();
        Hostile { ep }
    }

    fn id(&self) -> String {
        self.ep.id().to_string()
    }

    /// Dials `node` for `folder` (its public id: the ALPN is no secret;
    /// what guards a folder is its key).
    async fn connect(&self, node: &str, port: u16, folder: &str) -> Connection {
        let id: EndpointId = node.parse().unwrap();
        let addr = EndpointAddr::new(id).with_ip_addr(format!("127.0.0.1:{port}").parse().unwrap());
        let alpn = wire::alpn(folder);
        tokio::time::timeout(Duration::from_secs(10), self.ep.connect(addr, &alpn))
            .await
            .expect("connect timed out")
            .expect("connect")
    }
}

/// Reads messages until the stream ends or fails; their type names.
async fn drain(recv: &mut RecvStream) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), wire::read_frame(recv)).await {
            Ok(Ok(Some(Frame::Msg(m)))) => seen.push(name(&m)),
            Ok(Ok(Some(Frame::Sealed(..)))) => seen.push("chunk".into()),
            _ => return seen,
        }
    }
}

fn name(m: &Msg) -> String {
    match m {
        Msg::Error { message } => format!("error: {message}"),
        other => serde_json::to_value(other).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

async fn read(recv: &mut RecvStream) -> Msg {
    tokio::time::timeout(Duration::from_secs(10), wire::read_msg(recv))
        .await
        .expect("peer silent")
        .expect("read")
        .expect("stream ended")
}

/// What an attacker that has the folder key knows: the membership key (and
/// the folder id), and the codec.
fn keys(folder_key: &str) -> ((String, [u8; 32]), ChunkCodec) {
    let d = MasterKey::from_hex(folder_key).unwrap().derive();
    ((d.folder_id.clone(), d.membership), ChunkCodec::new(d))
}

/// Opens a handshake: a fresh challenge; returns its nonce.
async fn send_challenge(send: &mut SendStream) -> membership::Nonce {
    let mine = membership::nonce();
    wire::write_msg(
        send,
        &Msg::Challenge {
            version: wire::VERSION,
            nonce: hex::encode(mine),
        },
    )
    .await
    .unwrap();
    mine
}

/// A member's handshake (challenge, proof, hello); returns the node's Hello.
async fn join(
    h: &Hostile,
    conn: &Connection,
    (folder_id, key): &(String, [u8; 32]),
    want_since: u64,
    want_epoch: u64,
) -> (SendStream, RecvStream, Msg) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mine = send_challenge(&mut send).await;
    let Msg::Challenge { nonce, .. } = read(&mut recv).await else {
        panic!("no challenge")
    };
    let theirs = membership::parse_nonce(&nonce).unwrap();
    let mac = membership::prove(key, &h.ep.id(), &conn.remote_id(), &mine, &theirs);
    wire::write_msg(
        &mut send,
        &Msg::Proof {
            mac: mac.to_hex().to_string(),
        },
    )
    .await
    .unwrap();
    let Msg::Proof { .. } = read(&mut recv).await else {
        panic!("no proof")
    };
    wire::write_msg(
        &mut send,
        &Msg::Hello {
            folder_id: folder_id.clone(),
            name: "mallory".into(),
            short_id: "00000000000000aa".into(),
            seq: 0,
            want_since,
            epoch: 7,
            want_epoch,
            check: None,
            coming: false,
            devices: false,
            vault: false,
            seals: false,
        },
    )
    .await
    .unwrap();
    let hello = read(&mut recv).await;
    assert!(matches!(hello, Msg::Hello { .. }), "{hello:?}");
    (send, recv, hello)
}

/// Records from the node until it goes quiet for a moment.
async fn index_records(recv: &mut RecvStream) -> Vec<(String, u64, Entry)> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_millis(1500), wire::read_msg(recv)).await
    {
        if let Msg::Index { records, .. } = m {
            for r in records {
                let r = r.into_record(i64::MAX / 2).unwrap();
                out.push((r.path.into_string(), r.seq, r.entry));
            }
        }
    }
    out
}

fn entry(kind: EntryKind, size: u64, mode: u32, chunks: Vec<ChunkId>) -> Entry {
    let mut vv = VersionVector::new();
    vv.increment("00000000000000aa");
    vv.increment("00000000000000aa");
    vv.increment("00000000000000aa");
    Entry {
        kind,
        deleted: false,
        size,
        mode,
        mtime_ns: 1_700_000_000_000_000_000,
        target: None,
        vv,
        author: "mallory".into(),
        actor: None,
        time_ns: 1_700_000_000_000_000_000,
        message: None,
        chunks,
    }
}

/// Serves the node's chunk requests from `chunks` (sealed) until dropped.
fn serve_chunks(conn: Connection, chunks: Vec<(ChunkId, Vec<u8>)>, codec: ChunkCodec) {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let Ok(Some(Msg::GetChunks { ids })) = wire::read_msg(&mut recv).await else {
                continue;
            };
            for id in ids {
                match chunks.iter().find(|(c, _)| *c == id) {
                    Some((_, data)) => {
                        let s = codec.seal_verified(id, data).unwrap();
                        wire::write_sealed(&mut send, &id, s.raw_len, &s.sealed)
                            .await
                            .unwrap();
                    }
                    None => wire::write_msg(&mut send, &Msg::NoChunk { id })
                        .await
                        .unwrap(),
                }
            }
            let _ = send.finish();
        }
    });
}

fn node_with_files() -> (TestNode, u16) {
    let port = free_port();
    let n = TestNode::with_listen("alpha", &format!("127.0.0.1:{port}"), None);
    n.write("secret.txt", b"the launch code is 0000\n");
    n.write("private/pin.txt", b"PIN 4821\n");
    n.write("docs/sub/a.txt", b"shared notes\n");
    n.write("docs/readme.txt", b"docs\n");
    (n, port)
}

/// Problem 1: an allowlisted peer without the folder key, however it
/// behaves, gets no Hello, no index and no chunk, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_folder_key_gets_nothing() {
    let (n, port) = node_with_files();
    let h = Hostile::new().await;
    n.trust(&h.id(), None);
    let _up = n.up();
    let node = n.id();
    let folder = n.json(&["status"])["folder_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A folder the node does not serve: the handshake itself fails.
    let id: EndpointId = node.parse().unwrap();
    let addr = EndpointAddr::new(id).with_ip_addr(format!("127.0.0.1:{port}").parse().unwrap());
    let other = wire::alpn("0123456789abcdef0123456789abcdef");
    let refused = tokio::time::timeout(Duration::from_secs(10), h.ep.connect(addr, &other)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a folder not served here was accepted"
    );

    // A forged proof, then everything an attacker would pipeline after it.
    let conn = h.connect(&node, port, &folder).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send_challenge(&mut send).await;
    let Msg::Challenge { .. } = read(&mut recv).await else {
        panic!("no challenge")
    };
    let forged = Msg::Proof {
        mac: hex::encode([0u8; 32]),
    };
    wire::write_msg(&mut send, &forged).await.unwrap();
    let mut del = entry(EntryKind::File, 0, 0o644, vec![]);
    del.deleted = true;
    let hello = Msg::Hello {
        folder_id: String::new(),
        name: "mallory".into(),
        short_id: "00000000000000aa".into(),
        seq: 1,
        want_since: 0,
        epoch: 1,
        want_epoch: 0,
        check: None,
        coming: false,
        devices: false,
        vault: false,
        seals: false,
    };
    let index = Msg::Index {
        records: vec![WireRecord::new("secret.txt".into(), 1, del.clone(), false)],
        upto: 1,
    };
    let _ = wire::write_msg(&mut send, &hello).await;
    let _ = wire::write_msg(&mut send, &index).await;
    let seen = drain(&mut recv).await;
    // Its own proof (worthless without the key), then the refusal.
    assert_eq!(seen.first().map(String::as_str), Some("proof"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m.contains("membership proof failed")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| m == "hello" || m == "index" || m == "chunk"),
        "a non-member got {seen:?}"
    );

    // Replayed: the node's own proof sent back to it as ours.
    let conn = h.connect(&node, port, &folder).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send_challenge(&mut send).await;
    let _challenge = read(&mut recv).await;
    let Msg::Proof { mac } = read(&mut recv).await else {
        panic!("no proof")
    };
    wire::write_msg(&mut send, &Msg::Proof { mac })
        .await
        .unwrap();
    let seen = drain(&mut recv).await;
    assert!(
        seen.iter().any(|m| m.contains("membership proof failed")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|m| m == "hello" || m == "index"),
        "{seen:?}"
    );

    // Chunks asked on a side stream before any proof: never served.
    let conn = h.connect(&node, port, &folder).await;
    let (_control, _r) = conn.open_bi().await.unwrap();
    if let Ok((mut send, mut recv)) = conn.open_bi().await {
        let _ = wire::write_msg(
            &mut send,
            &Msg::GetChunks {
                ids: vec![ChunkId([1; 32])],
            },
        )
        .await;
        let seen = drain(&mut recv).await;
        assert!(!seen.iter().any(|m| m == "chunk"), "{seen:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(n.path("secret.txt").exists(), "a non-member deleted a file");
    let versions = n.ok(&["versions", "secret.txt"]);
    assert!(!versions.contains("mallory"), "{versions}");
}

/// Problems 8, 12, 7 and forged records: a member limited to `docs/sub`
/// gets only records and chunks of its scope, cannot touch `docs` or
/// anything else, plants no setuid bit, and a record with an escaping path
/// or an oversized frame ends its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_member_gets_and_changes_only_its_scope() {
    let (n, port) = node_with_files();
    let key = n.folder_key();
    let (mkey, codec) = keys(&key);
    let h = Hostile::new().await;
    n.ok(&["peers", "add", &h.id(), "--paths", "docs/sub"]);
    let docs_mode = std::fs::metadata(n.path("docs"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    let _up = n.up();
    let node = n.id();
    let folder = n.json(&["status"])["folder_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let conn = h.connect(&node, port, &folder).await;
    let (mut send, mut recv, _) = join(&h, &conn, &mkey, 0, 0).await;
    let records = index_records(&mut recv).await;
    let paths: Vec<&str> = records.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(paths.contains(&"docs/sub/a.txt"), "{paths:?}");
    for p in &paths {
        assert!(
            *p == "docs" || *p == "docs/sub" || p.starts_with("docs/sub/"),
            "sent {p} to a peer limited to docs/sub"
        );
    }

    // Chunk ids it can compute with the key: only in-scope ones are served.
    let pin = codec.id_of(b"PIN 4821\n");
    let secret = codec.id_of(b"the launch code is 0000\n");
    let shared = codec.id_of(b"shared notes\n");
    let (mut s2, mut r2) = conn.open_bi().await.unwrap();
    wire::write_msg(
        &mut s2,
        &Msg::GetChunks {
            ids: vec![pin, secret, shared],
        },
    )
    .await
    .unwrap();
    let _ = s2.finish();
    let mut served = Vec::new();
    let mut refused = Vec::new();
    while let Ok(Some(f)) = wire::read_frame(&mut r2).await {
        match f {
            Frame::Sealed(id, ..) => served.push(id),
            Frame::Msg(Msg::NoChunk { id }) => refused.push(id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(served, vec![shared]);
    assert_eq!(refused, vec![pin, secret]);

    // Writes: an ancestor's mode, a file outside, a setuid file inside.
    let script = b"#!/bin/sh\necho owned\n".to_vec();
    let script_id = codec.id_of(&script);
    serve_chunks(
        conn.clone(),
        vec![(script_id, script.clone())],
        codec.clone(),
    );
    let mut dir = entry(EntryKind::Dir, 0, 0o777, vec![]);
    dir.mode = 0o777;
    let mut gone = entry(EntryKind::File, 0, 0o644, vec![]);
    gone.deleted = true;
    let suid = entry(
        EntryKind::File,
        script.len() as u64,
        0o4755,
        vec![script_id],
    );
    let msg = Msg::Index {
        records: vec![
            WireRecord::new("docs".into(), 1, dir, false),
            WireRecord::new("private/pin.txt".into(), 2, gone, false),
            WireRecord::new("docs/sub/run.sh".into(), 3, suid, false),
        ],
        upto: 3,
    };
    wire::write_msg(&mut send, &msg).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !n.path("docs/sub/run.sh").exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::fs::metadata(n.path("docs/sub/run.sh"))
        .expect("the in-scope write was applied")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid bit planted: {mode:o}");
    assert_eq!(
        std::fs::metadata(n.path("docs"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        docs_mode,
        "a docs/sub peer changed docs"
    );
    assert!(
        n.path("private/pin.txt").exists(),
        "deleted outside its scope"
    );

    // Forged records (a path that escapes, a size its chunks cannot hold)
    // are refused; they wedge nothing: a good record behind them lands.
    // So are forged notices of chunks to fetch ahead: an escaping path,
    // ids and lengths that do not pair up, a path outside the scope.
    for (path, lens) in [
        ("docs/sub/../../../escape.sh", vec![script.len() as u32]),
        ("docs/sub/ahead.bin", vec![1, 2]),
        ("private/ahead.bin", vec![script.len() as u32]),
    ] {
        let Msg::Coming { chunks, .. } =
            wire::Coming::msg("x", 0, &[(script_id, script.len() as u32)])
        else {
            unreachable!()
        };
        let forged = Msg::Coming {
            path: path.into(),
            first: 0,
            chunks,
            lens,
        };
        wire::write_msg(&mut send, &forged).await.unwrap();
    }
    let file = entry(EntryKind::File, script.len() as u64, 0o644, vec![script_id]);
    let mut too_big = file.clone();
    too_big.size = 1 << 30;
    let msg = Msg::Index {
        records: vec![
            WireRecord::new("docs/sub/../../../escape.sh".into(), 4, file.clone(), false),
            WireRecord::new("docs/sub/big.bin".into(), 5, too_big, false),
            WireRecord::new("docs/sub/after.sh".into(), 6, file, false),
        ],
        upto: 6,
    };
    wire::write_msg(&mut send, &msg).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !n.path("docs/sub/after.sh").exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        n.path("docs/sub/after.sh").exists(),
        "forged records wedged the session"
    );
    assert!(!n.dir.path().join("escape.sh").exists());
    assert!(!n.path("escape.sh").exists());
    assert!(!n.path("docs/sub/big.bin").exists());
    assert!(!n.path("private/ahead.bin").exists());
    let leftover: Vec<_> = std::fs::read_dir(n.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".sovryn-tmp-"))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    let peers = n.json(&["peers", "list"]);
    assert!(
        peers.to_string().contains("refused 2 malformed record"),
        "not reported: {peers}"
    );

    // An oversized frame: the session ends before the node allocates it.
    let conn = h.connect(&node, port, &folder).await;
    let (mut send, _recv, _) = join(&h, &conn, &mkey, 0, 0).await;
    let mut head = (u32::MAX).to_be_bytes().to_vec();
    head.push(0);
    tokio::io::AsyncWriteExt::write_all(&mut send, &head)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    assert!(closed.is_ok(), "an oversized frame did not end the session");
    // The node is still up and answering.
    let st = n.json(&["status"]);
    assert!(st.is_object(), "{st}");
}

/// Problem 4: narrowing a connected peer applies to its live session at
/// once; and the index epoch: a peer claiming to have applied more of the
/// node's log than exists (the node was restored from an old copy) gets
/// the whole log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_connected_peer_applies_at_once() {
    let (n, port) = node_with_files();
    let key = n.folder_key();
    let (mkey, codec) = keys(&key);
    let h = Hostile::new().await;
    n.trust(&h.id(), None);
    let _up = n.up();
    let node = n.id();
    let folder = n.json(&["status"])["folder_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let conn = h.connect(&node, port, &folder).await;
    let (mut send, mut recv, hello) = join(&h, &conn, &mkey, 0, 0).await;
    let Msg::Hello { epoch, seq, .. } = hello else {
        unreachable!()
    };
    let all = index_records(&mut recv).await;
    assert!(all.iter().any(|(p, _, _)| p == "secret.txt"));
    let body = b"written while trusted\n".to_vec();
    let id = codec.id_of(&body);
    let body2 = b"written after narrowing\n".to_vec();
    let id2 = codec.id_of(&body2);
    serve_chunks(
        conn.clone(),
        vec![(id, body.clone()), (id2, body2.clone())],
        codec.clone(),
    );
    let rec = |p: &str, b: &Vec<u8>, i: ChunkId| {
        WireRecord::new(
            p.into(),
            1,
            entry(EntryKind::File, b.len() as u64, 0o644, vec![i]),
            false,
        )
    };
    wire::write_msg(
        &mut send,
        &Msg::Index {
            records: vec![rec("top.txt", &body, id)],
            upto: 1,
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !n.path("top.txt").exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        n.path("top.txt").exists(),
        "a trusted write was not applied"
    );

    n.ok(&["peers", "add", &h.id(), "--read-only", "--paths", "docs"]);
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(closed.is_ok(), "the live session kept its old rights");

    // The next session has the new rights: nothing applied, docs only sent.
    let conn = h.connect(&node, port, &folder).await;
    let (mut send, mut recv, _) = join(&h, &conn, &mkey, 0, 0).await;
    serve_chunks(conn.clone(), vec![(id2, body2.clone())], codec.clone());
    let sent = index_records(&mut recv).await;
    assert!(!sent.is_empty());
    for (p, _, _) in &sent {
        assert!(p == "docs" || p.starts_with("docs/"), "sent {p}");
    }
    wire::write_msg(
        &mut send,
        &Msg::Index {
            records: vec![rec("docs/late.txt", &body2, id2)],
            upto: 2,
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!n.path("docs/late.txt").exists(), "a read-only peer wrote");
    drop(send);
    conn.close(0u32.into(), b"bye");

    // Epoch: "I have applied your log up to seq + 100 of this epoch" is a
    // log that went backwards; everything comes again from the start.
    n.ok(&["peers", "add", &h.id()]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let conn = h.connect(&node, port, &folder).await;
    let (_send, mut recv, hello2) = join(&h, &conn, &mkey, seq + 100, epoch).await;
    let again = index_records(&mut recv).await;
    assert!(
        again.iter().any(|(p, _, _)| p == "secret.txt"),
        "a restored log was not re-sent: {:?}",
        again.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let Msg::Hello { epoch: e2, .. } = hello2 else {
        unreachable!()
    };
    assert_eq!(
        e2, epoch,
        "the epoch is rotated after the hello that found it"
    );
    // Another epoch than the node's: everything again too.
    let conn = h.connect(&node, port, &folder).await;
    let (_send, mut recv, _) = join(&h, &conn, &mkey, seq, epoch ^ 1).await;
    let again = index_records(&mut recv).await;
    assert!(again.iter().any(|(p, _, _)| p == "secret.txt"));
}

/// A peer sends forged device-list operations: a bad signature, a signer
/// nobody trusts revoking a member, a read-only peer adding a device, an
/// operation of another folder. None changes the node's peers; an
/// operation a full member signed, relayed by the same peer, does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_device_operations_change_no_peer() {
    use sovryn_engine::devices::{DeviceOp, OpKind, Role};
    let (n, port) = node_with_files();
    let key = n.folder_key();
    let (mkey, _) = keys(&key);
    let h = Hostile::new().await;
    n.ok(&["peers", "add", &h.id(), "--read-only"]);
    let beta = SecretKey::generate();
    n.trust(&beta.public().to_string(), None);
    let _up = n.up();
    let node = n.id();
    let folder = n.json(&["status"])["folder_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conn = h.connect(&node, port, &folder).await;
    let (mut send, _recv, _) = join(&h, &conn, &mkey, 0, 0).await;

    let (x, y, z) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let op = |by: &SecretKey, kind, who: &SecretKey, f: &str| {
        DeviceOp::new(f, by, kind, &who.public(), None, Role::Member, vec![])
    };
    let mut tampered = op(&beta, OpKind::Add, &x, &folder);
    tampered.device = y.public().to_string();
    let forged = vec![
        // A read-only peer adds a device.
        op(h.ep.secret_key(), OpKind::Add, &x, &folder),
        // A stranger revokes a member.
        op(&y, OpKind::Revoke, &beta, &folder),
        // A member's signature over other fields.
        tampered,
        // A member's add for another folder.
        op(&beta, OpKind::Add, &x, "another-folder"),
        // The control: a member's genuine add.
        op(&beta, OpKind::Add, &z, &folder),
    ];
    wire::write_msg(&mut send, &Msg::Devices { ops: forged })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let peers = loop {
        let peers = n.ok(&["--json", "peers", "list"]);
        if peers.contains(&z.public().to_string()) {
            break peers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the genuine add never counted: {peers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!peers.contains(&x.public().to_string()), "{peers}");
    assert!(!peers.contains(&y.public().to_string()), "{peers}");
    assert!(
        peers.contains(&beta.public().to_string()),
        "a stranger revoked a member: {peers}"
    );
}
