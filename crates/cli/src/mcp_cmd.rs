//! `sovryn mcp`: serve MCP (stdio or HTTP) and manage MCP tokens.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use sovryn_engine::scan::ScanOptions;
use sovryn_engine::{Config, Home, Node};
use sovryn_mcp::tokens::{parse_duration, Capability, TokenStore};
use sovryn_mcp::{HttpOptions, McpState};
use sovryn_store::Access;

use crate::output;
use crate::unlock;

/// `sovryn mcp` actions.
#[derive(Subcommand, Debug)]
pub enum McpCommand {
    /// Serve MCP: `--stdio` for a local agent, or `--http` in the foreground.
    Serve {
        /// Speak MCP on stdin/stdout (full access, recorded as mcp:stdio). Served by
        /// the running node when there is one, else by opening the node here.
        #[arg(long, conflicts_with = "http", required_unless_present = "http")]
        stdio: bool,
        /// Serve Streamable HTTP at /mcp (bearer tokens) on mcp.bind:mcp.port.
        #[arg(long)]
        http: bool,
        /// Override mcp.bind for this run.
        #[arg(long, requires = "http")]
        bind: Option<String>,
        /// Override mcp.port for this run (0 picks a free port).
        #[arg(long, requires = "http")]
        port: Option<u16>,
        /// Requests per minute each token may make.
        #[arg(long, default_value_t = 6000, requires = "http")]
        rate_per_minute: u32,
        /// Requests a token may make in a burst.
        #[arg(long, default_value_t = 200, requires = "http")]
        burst: u32,
        /// Largest request body in bytes.
        #[arg(long, default_value_t = 8 * 1024 * 1024, requires = "http")]
        max_body_bytes: usize,
        /// Do not scan the folder before serving.
        #[arg(long)]
        no_scan: bool,
        /// TEST ONLY: no bearer token needed; every client acts as 'anonymous'
        /// with all capabilities. Refused unless bound to a loopback address.
        /// For conformance suites that cannot send a token.
        #[arg(long, requires = "http")]
        insecure_no_auth: bool,
    },
    /// Start the MCP HTTP listener of the running node (also when mcp.enabled = false).
    Start,
    /// Stop the MCP HTTP listener of the running node (sync goes on).
    Stop,
    /// Show the MCP listener's settings, tokens, audit log, and whether it answers.
    Status {
        /// Probe this port instead of mcp.port.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Create, list and revoke the bearer tokens of MCP clients.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
}

/// `sovryn mcp tokens` actions.
#[derive(Subcommand, Debug)]
pub enum TokensAction {
    /// Create a token; it is printed once and only its hash is kept.
    Create {
        /// A unique name (recorded as the actor mcp:<name> of its writes).
        #[arg(long)]
        name: String,
        /// read, write, admin, status (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        capabilities: Vec<String>,
        /// Limit the token to paths matching this glob (repeatable), e.g. 'docs/**'.
        #[arg(long = "paths")]
        paths: Vec<String>,
        /// Expire after this long: 90s, 30m, 12h, 30d, 2w.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Runs an `mcp` command.
pub fn run(home: &Home, passphrase_file: Option<&Path>, json: bool, cmd: McpCommand) -> Result<()> {
    match cmd {
        McpCommand::Serve {
            stdio,
            http,
            bind,
            port,
            rate_per_minute,
            burst,
            max_body_bytes,
            no_scan,
            insecure_no_auth,
        } => {
            if stdio {
                // A running node holds the store: let it serve the session.
                if let Some(stream) = daemon_stream(home)? {
                    return block_on(pipe_stdio(stream));
                }
                // Served here until a node starts, which takes it over.
                let node = open_node(home, passphrase_file, !no_scan)?;
                return block_on(crate::mcp_stdio::serve(home.clone(), node));
            }
            let node = open_node(home, passphrase_file, !no_scan)?;
            debug_assert!(http);
            let addr = listen_addr(&node.config, bind, port)?;
            let opts = HttpOptions {
                rate_per_minute,
                burst,
                max_body_bytes,
                insecure_no_auth,
                ..HttpOptions::from_config(&node.config.mcp)?
            };
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            if insecure_no_auth {
                eprintln!(
                    "WARNING: --insecure-no-auth: every client on this machine has full access without a token (test mode)"
                );
            }
            block_on(sovryn_mcp::serve_http_with(
                McpState::new(node)?,
                addr,
                opts,
                shutdown_signal(),
                |bound| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "MCP listening on {scheme}://{bound}/mcp");
                    let _ = out.flush();
                },
            ))
        }
        McpCommand::Tokens { action } => tokens(home, json, action),
        McpCommand::Status { port } => status(home, json, port),
        McpCommand::Start => start_stop(home, json, true),
        McpCommand::Stop => start_stop(home, json, false),
    }
}

const NOT_RUNNING: &str = "no node is running here; start one with 'sovryn up' or 'sovryn daemon start' (or serve MCP in the foreground with 'sovryn mcp serve --http')";

/// `sovryn mcp start|stop`: asks the running node to start or stop its listener.
fn start_stop(home: &Home, json: bool, start: bool) -> Result<()> {
    if !home.exists() {
        bail!(sovryn_engine::Error::NoNode(home.dir.clone()));
    }
    let req = if start {
        sovryn_daemon::control::Request::McpStart
    } else {
        sovryn_daemon::control::Request::McpStop
    };
    let Some(answer) = sovryn_daemon::control::request(home, &req)? else {
        bail!("{NOT_RUNNING}");
    };
    if answer["ok"].as_bool() != Some(true) {
        bail!(
            "the node could not {} MCP: {}",
            if start { "start" } else { "stop" },
            answer["error"]
                .as_str()
                .unwrap_or("no reason given (an older node?)")
        );
    }
    if json {
        return output::json(&answer);
    }
    match (start, answer["url"].as_str()) {
        (true, Some(url)) if answer["already_running"].as_bool() == Some(true) => {
            println!("MCP already listening on {url}")
        }
        (true, Some(url)) => println!("MCP listening on {url}"),
        (true, None) => println!("MCP started"),
        (false, _) if answer["stopped"].as_bool() == Some(true) => println!("MCP stopped"),
        (false, _) => println!("MCP was not running"),
    }
    Ok(())
}

/// A control-socket connection of the running node switched to MCP
/// (`mcp_stdio`), with what was read past its answer; `None` when no node runs.
pub(crate) fn daemon_stream(home: &Home) -> Result<Option<std::os::unix::net::UnixStream>> {
    use std::io::Read;
    let sock = sovryn_daemon::control_socket(home);
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&sock) else {
        return Ok(None);
    };
    stream.write_all(&sovryn_daemon::control::Request::McpStdio.line()?)?;
    // Read the answer byte by byte: nothing of the MCP stream after it is consumed.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match stream.read(&mut b)? {
            0 => bail!("the running node closed the control connection"),
            _ if b[0] == b'\n' => break,
            _ if line.len() > 4096 => bail!("bad answer from the running node"),
            _ => line.push(b[0]),
        }
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&line).context("bad answer from the running node")?;
    if answer["ok"].as_bool() != Some(true) {
        bail!(
            "the running node does not serve MCP sessions on its control socket ({}); restart it with this version of sovryn",
            answer["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(Some(stream))
}

/// Copies stdin to the node's MCP session and its answers to stdout until
/// either side closes.
async fn pipe_stdio(stream: std::os::unix::net::UnixStream) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (mut from_node, mut to_node) = stream.into_split();
    let upstream = async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdin.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            to_node.write_all(&buf[..n]).await?;
        }
        // End of input: the node ends the session, then closes its side.
        to_node.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let downstream = async move {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_node.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::pin!(downstream);
    tokio::select! {
        r = &mut downstream => r.context("reading from the node")?,
        r = upstream => {
            r.context("writing to the node")?;
            // Let the node's last answers through.
            downstream.await.context("reading from the node")?;
        }
    }
    Ok(())
}

/// Probes `addr`: `Some(status line)` of `GET /readyz` over plain HTTP, or
/// "listening" when it accepts connections but speaks TLS.
fn probe(addr: SocketAddr, tls: bool) -> Option<String> {
    use std::io::Read;
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    if tls {
        return Some("listening (TLS)".into());
    }
    s.set_read_timeout(Some(timeout)).ok()?;
    let host = if addr.ip().is_ipv6() {
        format!("[{}]:{}", addr.ip(), addr.port())
    } else {
        addr.to_string()
    };
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    Some(match line.split_whitespace().nth(1) {
        Some("200") => "ready".into(),
        Some(code) => format!("answering, /readyz gave HTTP {code}"),
        None => "listening, no HTTP answer".into(),
    })
}

fn status(home: &Home, json: bool, port: Option<u16>) -> Result<()> {
    let config = Config::load(home)?;
    let m = &config.mcp;
    let tls = m.tls_cert.is_some() && m.tls_key.is_some();
    let scheme = if tls { "https" } else { "http" };
    let mut addr = listen_addr(&config, None, port)?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    // A running node says where its listener is (it may have been started
    // with `sovryn mcp start`, or be off).
    let daemon = sovryn_daemon::control::request(home, &sovryn_daemon::control::Request::Status)
        .ok()
        .flatten();
    let daemon_url = daemon
        .as_ref()
        .and_then(|v| v["mcp_url"].as_str().map(str::to_owned));
    if let Some(a) = daemon_url
        .as_deref()
        .and_then(|u| u.split("://").nth(1))
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
    {
        if port.is_none() {
            addr = a;
        }
    }
    let url = format!("{scheme}://{addr}/mcp");
    let running = probe(addr, tls);
    let daemon_state = match (&daemon, &daemon_url) {
        (Some(_), Some(u)) => format!("running, serving MCP on {u}"),
        (Some(_), None) => "running, MCP off (start it with 'sovryn mcp start')".to_string(),
        (None, _) if m.enabled => {
            "not running (serves MCP when started: mcp.enabled = true)".to_string()
        }
        (None, _) => {
            "not running (mcp.enabled = false: 'sovryn mcp start' once it runs)".to_string()
        }
    };
    let store = TokenStore::open(&home.dir)?;
    let list = store.list()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let usable = list.iter().filter(|t| t.usable(now)).count();
    let audit = sovryn_mcp::audit::audit_path(&home.dir);
    let audit_lines = std::fs::read(&audit)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0);
    let jwt = m.jwt_secret.is_some() || m.jwt_secret_file.is_some();
    if json {
        return output::json(&json!({
            "url": url, "enabled": m.enabled, "running": running.is_some(),
            "daemon": {"running": daemon.is_some(), "mcp_url": daemon_url},
            "state": running, "tls": tls, "jwt": jwt,
            "allow_cidrs": m.allow_cidrs, "allowed_hosts": m.allowed_hosts,
            "allowed_origins": m.allowed_origins,
            "tokens": {"total": list.len(), "usable": usable},
            "audit": {"path": audit, "calls": audit_lines},
        }));
    }
    println!("url:        {url}");
    println!(
        "state:      {}",
        running.as_deref().unwrap_or("not running")
    );
    println!("daemon:     {daemon_state}");
    println!("tls:        {}", if tls { "on" } else { "off" });
    println!("jwt:        {}", if jwt { "HS256 accepted" } else { "off" });
    let or_any = |v: &[String], any: &str| {
        if v.is_empty() {
            any.to_string()
        } else {
            v.join(" ")
        }
    };
    println!("clients:    {}", or_any(&m.allow_cidrs, "any address"));
    println!(
        "hosts:      loopback, {} {}",
        m.bind,
        or_any(&m.allowed_hosts, "")
    );
    println!("origins:    loopback {}", or_any(&m.allowed_origins, ""));
    println!(
        "tokens:     {usable} usable of {} (sovryn mcp tokens list)",
        list.len()
    );
    println!("audit:      {audit_lines} calls in {}", audit.display());
    Ok(())
}

fn open_node(home: &Home, passphrase_file: Option<&Path>, scan: bool) -> Result<Node> {
    let key = unlock::master_key(home, passphrase_file)?;
    let mut node = Node::open(home.clone(), &key, Access::ReadWrite)?;
    if scan {
        // Agents read the index: bring it up to date with the disk first.
        node.scan(&[], &ScanOptions::default(), &mut |_| {})
            .context("scanning the folder before serving")?;
    }
    Ok(node)
}

fn listen_addr(config: &Config, bind: Option<String>, port: Option<u16>) -> Result<SocketAddr> {
    let host = bind.unwrap_or_else(|| config.mcp.bind.clone());
    let port = port.unwrap_or(config.mcp.port);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("bad MCP bind address {host}:{port}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn block_on<E, F>(f: F) -> Result<()>
where
    E: Into<anyhow::Error>,
    F: std::future::Future<Output = std::result::Result<(), E>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let r = rt.block_on(f);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    r.map_err(Into::into)
}

fn tokens(home: &Home, json: bool, action: TokensAction) -> Result<()> {
    if !home.exists() {
        bail!(sovryn_engine::Error::NoNode(home.dir.clone()));
    }
    let store = TokenStore::open(&home.dir)?;
    match action {
        TokensAction::Create {
            name,
            capabilities,
            paths,
            expires,
        } => {
            let caps = capabilities
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| c.parse::<Capability>())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let expires_in = expires.as_deref().map(parse_duration).transpose()?;
            let secret = store.create(&name, &caps, &paths, expires_in)?;
            if json {
                return output::json(&json!({
                    "name": name, "token": secret, "capabilities": caps,
                    "paths": paths, "expires_in_seconds": expires_in,
                }));
            }
            println!("{secret}");
            eprintln!("token '{name}' created; it is shown only this once. Clients send it as 'Authorization: Bearer <token>'.");
            Ok(())
        }
        TokensAction::List => {
            let list = store.list()?;
            if json {
                return output::json(&serde_json::json!({ "tokens": list }));
            }
            if list.is_empty() {
                println!("no tokens (create one with 'sovryn mcp tokens create')");
            }
            for t in list {
                let caps: Vec<&str> = t.capabilities.iter().map(|c| c.as_str()).collect();
                let state = if t.revoked {
                    "revoked".to_string()
                } else {
                    match t.expires {
                        Some(e) => format!("expires {}", output::time(e * 1_000_000_000)),
                        None => "no expiry".into(),
                    }
                };
                let paths = if t.paths.is_empty() {
                    "all paths".to_string()
                } else {
                    t.paths.join(" ")
                };
                println!(
                    "{:<16} {:<24} {:<28} {}",
                    t.name,
                    caps.join(","),
                    state,
                    paths
                );
            }
            Ok(())
        }
        TokensAction::Revoke { name } => {
            store.revoke(&name)?;
            if json {
                return output::json(&json!({"revoked": name}));
            }
            println!("token '{name}' revoked");
            Ok(())
        }
    }
}

/// One line of `audit.jsonl` for humans (`sovryn logs --audit`):
/// time, token, tool, outcome, duration, paths.
pub fn human_audit_line(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let paths: Vec<&str> = v["paths"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    format!(
        "{} {:<12} {:<20} {:<10} {:>8.1} ms  {}",
        s("time"),
        s("token"),
        s("tool"),
        s("outcome"),
        v["duration_ms"].as_f64().unwrap_or(0.0),
        paths.join(" ")
    )
}
