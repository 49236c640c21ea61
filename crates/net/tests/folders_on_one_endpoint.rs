//! Two folders of one node on one endpoint (one node id, one UDP socket on
//! 127.0.0.1), each shared with a different peer: each converges with its
//! own peer only. `B` keeps folder `work`, `C` folder `photos`; `A` serves
//! both, the second through [`SyncNet::attach`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sovryn_engine::config::PeerConfig;
use sovryn_engine::scan::ScanOptions;
use sovryn_engine::{Home, InitOptions, Node};
use sovryn_net::{Shared, SyncNet};
use sovryn_store::Access;

/// A node in `dir/name` keeping `root`; `key` joins an existing folder.
fn node(dir: &Path, name: &str, key: Option<String>) -> (Home, std::path::PathBuf) {
    let home = Home {
        dir: dir.join(format!("{name}-home")),
    };
    let root = dir.join(format!("{name}-root"));
    Node::init(
        &home,
        InitOptions {
            storage_path: root.clone(),
            node_name: Some(name.into()),
            listen: Some("127.0.0.1:0".into()),
            folder_key: key,
            ..Default::default()
        },
    )
    .unwrap();
    (home, std::fs::canonicalize(root).unwrap())
}

fn open(home: &Home) -> Shared {
    let key = Node::key_file(home).unwrap().open(None).unwrap();
    Shared::new(Node::open(home.clone(), &key, Access::ReadWrite).unwrap()).unwrap()
}

fn folder_key(home: &Home) -> String {
    Node::key_file(home).unwrap().open(None).unwrap().to_hex()
}

fn peer(net: &SyncNet) -> PeerConfig {
    PeerConfig {
        id: net.id().to_string(),
        addresses: net
            .bound_sockets()
            .iter()
            .map(|a| format!("127.0.0.1:{}", a.port()))
            .collect(),
        name: None,
        ..Default::default()
    }
}

/// Writes a file into a node's folder and announces it to its sessions.
async fn write(shared: &Shared, root: &Path, rel: &str, body: &str) {
    std::fs::write(root.join(rel), body).unwrap();
    let (seq, changed) = shared
        .with_node(|n| {
            let r = n.scan(&[], &ScanOptions::default(), &mut |_| {})?;
            Ok((n.store.sequence()?, r.changed))
        })
        .await
        .unwrap();
    shared.publish(seq, changed);
}

async fn arrives(root: &Path, rel: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join(rel).exists() {
        assert!(
            Instant::now() < deadline,
            "{rel} never reached {}",
            root.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_folder_syncs_with_its_own_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (work_a, work_a_root) = node(d, "a-work", None);
    let (photos_a, photos_a_root) = node(d, "a-photos", None);
    // One node, one identity: the second folder's home uses the first's key.
    std::fs::copy(work_a.identity(), photos_a.identity()).unwrap();
    let (work_b, work_b_root) = node(d, "b", Some(folder_key(&work_a)));
    let (photos_c, photos_c_root) = node(d, "c", Some(folder_key(&photos_a)));

    let listen = "127.0.0.1:0".parse().unwrap();
    let (sa_work, sa_photos, sb, sc) = (
        open(&work_a),
        open(&photos_a),
        open(&work_b),
        open(&photos_c),
    );
    let a_work = SyncNet::bind(sa_work.clone(), listen, &[]).await.unwrap();
    let a_photos = a_work.attach(sa_photos.clone(), &[]).await.unwrap();
    assert_eq!(a_work.id(), a_photos.id());
    let b = SyncNet::bind(sb.clone(), listen, &[]).await.unwrap();
    let c = SyncNet::bind(sc.clone(), listen, &[]).await.unwrap();
    // A shares `work` with B and `photos` with C; B and C know A.
    a_work.set_peers(&[peer(&b)]);
    a_photos.set_peers(&[peer(&c)]);
    b.set_peers(&[peer(&a_work)]);
    c.set_peers(&[peer(&a_work)]);
    let nets: Vec<Arc<SyncNet>> = vec![a_work.clone(), a_photos.clone(), b.clone(), c.clone()];
    let runs: Vec<_> = nets.iter().map(|n| tokio::spawn(n.clone().run())).collect();

    write(&sa_work, &work_a_root, "plan.md", "work from A").await;
    write(&sa_photos, &photos_a_root, "beach.jpg", "photo from A").await;
    write(&sb, &work_b_root, "notes.md", "work from B").await;
    write(&sc, &photos_c_root, "sunset.jpg", "photo from C").await;
    arrives(&work_b_root, "plan.md").await;
    arrives(&work_a_root, "notes.md").await;
    arrives(&photos_c_root, "beach.jpg").await;
    arrives(&photos_a_root, "sunset.jpg").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nothing crossed folders.
    for (root, foreign) in [
        (&work_b_root, ["beach.jpg", "sunset.jpg"]),
        (&work_a_root, ["beach.jpg", "sunset.jpg"]),
        (&photos_c_root, ["plan.md", "notes.md"]),
        (&photos_a_root, ["plan.md", "notes.md"]),
    ] {
        for f in foreign {
            assert!(!root.join(f).exists(), "{f} reached {}", root.display());
        }
    }
    // Each folder's status knows only its own peer.
    assert_eq!(a_work.peer_status().len(), 1);
    assert_eq!(a_work.peer_status()[0].id, b.id().to_string());
    assert_eq!(a_photos.peer_status()[0].id, c.id().to_string());
    // B holds the `photos` key but A does not share `photos` with it: A's
    // endpoint refuses B's `photos` connection, and nothing arrives.
    let (b_photos_home, b_photos_root) = node(d, "b-photos", Some(folder_key(&photos_a)));
    std::fs::copy(work_b.identity(), b_photos_home.identity()).unwrap();
    let b_photos = b
        .attach(open(&b_photos_home), &[peer(&a_work)])
        .await
        .unwrap();
    let refused = tokio::spawn(b_photos.clone().run());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = b_photos.peer_status();
        if st[0].state == sovryn_net::LinkState::NotAllowedThere {
            break;
        }
        assert!(Instant::now() < deadline, "B's photos link: {:?}", st[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b_photos_root.join("beach.jpg").exists());
    refused.abort();
    b_photos.shutdown().await;

    a_photos.shutdown().await;
    for n in [&b, &c, &a_work] {
        n.shutdown().await;
    }
    for r in runs {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
}
