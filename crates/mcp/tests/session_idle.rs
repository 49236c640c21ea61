//! Idle Streamable-HTTP sessions expire and give their slot back, against
//! the real HTTP server (in process, with a short idle time, a cap of one
//! session per token and two in all).

use std::net::SocketAddr;
use std::time::Duration;

use sovryn_engine::config::Home;
use sovryn_engine::node::InitOptions;
use sovryn_engine::Node;
use sovryn_mcp::tokens::{Capability, TokenStore};
use sovryn_mcp::{HttpOptions, McpState};
use sovryn_store::{Access, MasterKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request on its own connection: (status, session id header, body).
async fn post(
    addr: SocketAddr,
    token: &str,
    session: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sid = session
        .map(|id| format!("Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: 2025-11-25\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         {sid}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let session = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("mcp-session-id")
            .then(|| v.trim().to_owned())
    });
    (status, session, rest.to_owned())
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_and_give_their_slot_back() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home {
        dir: dir.path().join("home"),
    };
    let key = MasterKey::generate();
    Node::init(
        &home,
        InitOptions {
            storage_path: dir.path().join("root"),
            node_name: Some("t".into()),
            folder_key: Some(key.to_hex()),
            ..Default::default()
        },
    )
    .unwrap();
    let node = Node::open(home.clone(), &key, Access::ReadWrite).unwrap();
    let tokens = TokenStore::open(&home.dir).unwrap();
    let token = tokens
        .create("agent", &[Capability::Read], &[], None)
        .unwrap();
    let second = tokens
        .create("second", &[Capability::Read], &[], None)
        .unwrap();
    let third = tokens
        .create("third", &[Capability::Read], &[], None)
        .unwrap();
    let opts = HttpOptions {
        max_sessions_per_token: 1,
        max_sessions: 2,
        session_idle: Duration::from_millis(500),
        ..HttpOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(sovryn_mcp::serve_http_with(
        McpState::new(node).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        opts,
        async move {
            let _ = stopped.await;
        },
        move |a| {
            let _ = bound_tx.send(a);
        },
    ));
    let addr = bound_rx.await.unwrap();

    let (status, sid, _) = post(addr, &token, None, INIT).await;
    assert_eq!(status, 200);
    let sid = sid.expect("a session id");
    // Used while fresh; the token's one slot is taken.
    let (status, _, body) = post(addr, &token, Some(&sid), LIST).await;
    assert_eq!(status, 200, "{body}");
    let (status, none, body) = post(addr, &token, None, INIT).await;
    assert_eq!((status, none), (429, None), "{body}");
    assert!(body.contains("\"jsonrpc\":\"2.0\""), "{body}");
    // The server's cap: a second token fills it, a third is told to come back.
    assert_eq!(post(addr, &second, None, INIT).await.0, 200);
    let (status, none, body) = post(addr, &third, None, INIT).await;
    assert_eq!((status, none), (503, None), "{body}");

    // Idle past its time: closed, and the slot is free again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, _) = post(addr, &token, Some(&sid), LIST).await;
    assert_eq!(status, 404, "the idle session should be gone");
    let (status, again, _) = post(addr, &token, None, INIT).await;
    assert_eq!(status, 200);
    assert!(again.is_some_and(|s| s != sid));

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
