//! `sovryn mcp serve --stdio` when no node runs: the session is served in
//! this process, behind a line proxy, until a node starts here.
//!
//! A starting node (`sovryn up`, `sovryn daemon start`) first asks on
//! `mcp-stdio.sock` for the store ([`ask_release`]). This process then stops
//! reading the client, lets the calls in flight finish, releases the
//! store's write lock and answers; once the node's control socket is up it
//! goes on through it, replaying the client's `initialize` there, so the
//! client keeps one session. (Resource subscriptions do not carry over.)

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sovryn_engine::{Home, Node};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader as AsyncBufReader};

/// The socket on which an in-process stdio session accepts a handover.
pub fn handover_socket(home: &Home) -> std::path::PathBuf {
    home.dir.join("mcp-stdio.sock")
}

/// How long a node waits for a stdio session to finish its calls in flight.
const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// Asks an `mcp serve --stdio` process of this home to hand the store over
/// (before this process opens it for writing). Returns whether one did.
/// An exchange cut short is tried again: the session may be busy or
/// between two states; no listener at all means there is no such session.
pub fn ask_release(home: &Home) -> Result<bool> {
    let path = handover_socket(home);
    let mut last = None;
    for _ in 0..10 {
        let stream = match std::os::unix::net::UnixStream::connect(&path) {
            Ok(s) => s,
            Err(_) => return Ok(false),
        };
        match exchange(&stream) {
            Ok(answer) if answer.trim() == "released" => {
                tracing::info!("took the store over from an MCP stdio session");
                return Ok(true);
            }
            Ok(answer) => last = Some(format!("it answered {answer:?}")),
            Err(e) => {
                tracing::warn!("asking the MCP stdio session for the store: {e}");
                last = Some(e.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the MCP stdio session did not release the store ({})",
        last.unwrap_or_default()
    )
}

fn exchange(stream: &std::os::unix::net::UnixStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(RELEASE_WAIT))?;
    (&*stream).write_all(b"release\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// What the proxy has seen of the client's session.
#[derive(Default)]
struct Session {
    /// The client's `initialize` request, replayed on a new backend.
    initialize: Option<(String, String)>,
    /// Its `notifications/initialized`.
    initialized: Option<String>,
    /// Ids of the client's requests not answered yet.
    open: HashSet<String>,
}

impl Session {
    fn saw_client(&mut self, line: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let method = msg["method"].as_str();
        match (method, msg.get("id")) {
            (Some("initialize"), Some(id)) => {
                self.initialize = Some((id.to_string(), line.to_owned()));
                self.open.insert(id.to_string());
            }
            (Some(_), Some(id)) => {
                self.open.insert(id.to_string());
            }
            (Some("notifications/initialized"), None) => self.initialized = Some(line.to_owned()),
            _ => {}
        }
    }

    fn saw_server(&mut self, line: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if msg.get("method").is_none() {
            if let Some(id) = msg.get("id") {
                self.open.remove(&id.to_string());
            }
        }
    }
}

/// Serves the stdio session with `node` in this process until the client
/// closes it, handing over to a node that starts meanwhile.
pub async fn serve(home: Home, node: Node) -> Result<()> {
    let node = Arc::new(sovryn_engine::Writer::new(node));
    let state =
        sovryn_mcp::McpState::with_channel(node.clone(), tokio::sync::broadcast::channel(1024).0)?;
    let handover = sovryn_daemon::local_socket::bind_private(&handover_socket(&home))?;
    let (client_end, server_end) = tokio::io::duplex(1 << 20);
    let (server_r, server_w) = tokio::io::split(server_end);
    let server = tokio::spawn(sovryn_mcp::serve_io(state, server_r, server_w));
    let (backend_r, mut backend_w) = tokio::io::split(client_end);
    let mut backend = AsyncBufReader::new(backend_r).lines();
    let mut stdin = AsyncBufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut session = Session::default();
    let asker = loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(l) => {
                    session.saw_client(&l);
                    send_line(&mut backend_w, &l).await?;
                }
                None => {
                    // The client is done: let the server answer and end.
                    backend_w.shutdown().await?;
                    while let Some(l) = backend.next_line().await? {
                        send_line(&mut stdout, &l).await?;
                    }
                    let _ = std::fs::remove_file(handover_socket(&home));
                    return Ok(());
                }
            },
            line = backend.next_line() => match line? {
                Some(l) => {
                    session.saw_server(&l);
                    send_line(&mut stdout, &l).await?;
                }
                None => {
                    let _ = std::fs::remove_file(handover_socket(&home));
                    return server.await.context("MCP session task")?.map_err(Into::into);
                }
            },
            asked = handover.accept() => match asked {
                Ok((stream, _)) if sovryn_daemon::local_socket::same_user(&stream) => break stream,
                Ok(_) => {}
                Err(e) => tracing::warn!("the MCP stdio handover socket: {e}"),
            },
        }
    };
    // Finish the calls in flight; the client's next lines wait in stdin.
    let drained = tokio::time::timeout(RELEASE_WAIT, async {
        while !session.open.is_empty() {
            match backend.next_line().await? {
                Some(l) => {
                    session.saw_server(&l);
                    send_line(&mut stdout, &l).await?;
                }
                None => break,
            }
        }
        anyhow::Ok(())
    })
    .await;
    if !matches!(drained, Ok(Ok(()))) {
        tracing::warn!("handing over with calls still in flight");
    }
    backend_w.shutdown().await?;
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("the in-process MCP session did not end in time");
    }
    {
        let mut n = node
            .lock()
            .map_err(|_| anyhow::anyhow!("the node lock is poisoned"))?;
        n.store.release().context("releasing the store")?;
    }
    let _ = std::fs::remove_file(handover_socket(&home));
    let (_, mut asker_w) = asker.into_split();
    asker_w.write_all(b"released\n").await?;
    drop(asker_w);
    // Go on through the node's control socket.
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    let stream = loop {
        let h = home.clone();
        let found = tokio::task::spawn_blocking(move || crate::mcp_cmd::daemon_stream(&h))
            .await
            .context("connecting to the node")?;
        if let Ok(Some(s)) = found {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the node that took the store over never opened its control socket");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (node_r, mut node_w) = stream.into_split();
    let mut from_node = AsyncBufReader::new(node_r).lines();
    if let Some((id, line)) = &session.initialize {
        send_line(&mut node_w, line).await?;
        // Its answer was given once already.
        while let Some(l) = from_node.next_line().await? {
            let answered = serde_json::from_str::<Value>(&l)
                .ok()
                .and_then(|m| m.get("id").map(|i| i.to_string()))
                .is_some_and(|i| &i == id);
            if answered {
                break;
            }
        }
    }
    if let Some(line) = &session.initialized {
        send_line(&mut node_w, line).await?;
    }
    relay(&mut stdin, &mut node_w, &mut from_node, &mut stdout).await
}

/// Copies client lines to the node and the node's lines to the client until
/// either side ends.
async fn relay<R1, W1, R2, W2>(
    client: &mut tokio::io::Lines<R1>,
    to_node: &mut W1,
    from_node: &mut tokio::io::Lines<R2>,
    to_client: &mut W2,
) -> Result<()>
where
    R1: tokio::io::AsyncBufRead + Unpin,
    W1: AsyncWrite + Unpin,
    R2: tokio::io::AsyncBufRead + Unpin,
    W2: AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            line = client.next_line() => match line? {
                Some(l) => send_line(to_node, &l).await?,
                None => {
                    to_node.shutdown().await?;
                    while let Some(l) = from_node.next_line().await? {
                        send_line(to_client, &l).await?;
                    }
                    return Ok(());
                }
            },
            line = from_node.next_line() => match line? {
                Some(l) => send_line(to_client, &l).await?,
                None => return Ok(()),
            },
        }
    }
}

async fn send_line<W: AsyncWrite + Unpin>(w: &mut W, line: &str) -> Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}
