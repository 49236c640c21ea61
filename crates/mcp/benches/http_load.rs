//! Load benchmark of `sovryn mcp serve --http` (a real process, loopback).
//!
//! Sets up a throwaway node (a 4 KiB file and a 10,000-file tree), creates a
//! token, starts the server with the rate limits raised through its flags,
//! then drives it with N concurrent clients, each on its own keep-alive
//! HTTP/1.1 connection, sending stateless MCP 2026-07-28 `tools/call`
//! requests back to back (no sessions: the protocol version and client
//! capabilities travel in each request's `_meta`). Every response is read to
//! the end and checked to be a successful tool result.
//!
//! ```sh
//! cargo build --release -p sovryn-cli
//! cargo bench -p sovryn-mcp --bench http_load                 # the table in docs/mcp.md
//! cargo bench -p sovryn-mcp --bench http_load -- --seconds 10 --files 10000
//! ```
//!
//! Options: `--bin PATH` (default `$SOVRYN_BIN` or `target/release/sovryn`),
//! `--seconds S` per scenario (5), `--files N` in the search tree (10000),
//! `--clients a,b` (1,100), `--url URL --token T` to drive a server you run
//! yourself (then only `read_file` of `bench/4k.txt` is measured).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Opts {
    bin: PathBuf,
    seconds: f64,
    files: usize,
    clients: Vec<usize>,
    url: Option<String>,
    token: Option<String>,
}

fn opts() -> Res<Opts> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut o = Opts {
        bin: std::env::var_os("SOVRYN_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/sovryn")),
        seconds: 5.0,
        files: 10_000,
        clients: vec![1, 100],
        url: None,
        token: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {} // added by `cargo bench`
            "--bin" => o.bin = PathBuf::from(val()?),
            "--seconds" => o.seconds = val()?.parse()?,
            "--files" => o.files = val()?.parse()?,
            "--clients" => {
                o.clients = val()?
                    .split(',')
                    .map(|c| c.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--url" => o.url = Some(val()?),
            "--token" => o.token = Some(val()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(o)
}

/// A throwaway node plus its running `mcp serve --http`.
struct Fixture {
    _dir: tempfile::TempDir,
    server: Child,
    url: String,
    token: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];

fn run(bin: &Path, home: &Path, args: &[&str]) -> Res<String> {
    let out = Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("sovryn {args:?} failed").into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn fixture(o: &Opts) -> Res<Fixture> {
    if !o.bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release -p sovryn-cli` (or pass --bin)",
            o.bin.display()
        )
        .into());
    }
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(folder.join("bench"))?;
    // 4 KiB of text.
    let line = "The quick brown fox jumps over the lazy dog; sovryn bench line.\n";
    let text: String = line.repeat(4096 / line.len() + 1)[..4096].to_owned();
    std::fs::write(folder.join("bench/4k.txt"), &text)?;
    // The search tree: 100 directories of files with a few words each.
    let t = Instant::now();
    for i in 0..o.files {
        let d = folder.join(format!("tree/d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d)?;
        }
        let body = format!(
            "file {i}: {} {} {} needle{}\n",
            WORDS[i % WORDS.len()],
            WORDS[(i / 7) % WORDS.len()],
            WORDS[(i / 13) % WORDS.len()],
            i % 1000
        );
        std::fs::write(d.join(format!("f{i:05}.txt")), body)?;
    }
    eprintln!("wrote {} files in {:.1?}", o.files + 1, t.elapsed());
    let folder_s = folder.to_string_lossy().into_owned();
    run(
        &o.bin,
        &home,
        &[
            "init",
            "--storage-path",
            &folder_s,
            "--no-passphrase",
            "--node-id",
            "bench",
        ],
    )?;
    let token = run(
        &o.bin,
        &home,
        &[
            "mcp",
            "tokens",
            "create",
            "--name",
            "bench",
            "--capabilities",
            "read,write",
        ],
    )?
    .trim()
    .to_owned();
    let t = Instant::now();
    // Rate limits raised for the bench through the server's own flags.
    let mut server = Command::new(&o.bin)
        .arg("--home")
        .arg(&home)
        .args([
            "mcp",
            "serve",
            "--http",
            "--port",
            "0",
            "--rate-per-minute",
            "100000000",
            "--burst",
            "1000000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = server.stdout.take().ok_or("no stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let Some(url) = first
        .trim()
        .strip_prefix("MCP listening on ")
        .map(str::to_owned)
    else {
        let _ = server.kill();
        return Err(format!("server did not start: {first:?}").into());
    };
    eprintln!(
        "server up (initial scan included) in {:.1?}: {url}",
        t.elapsed()
    );
    Ok(Fixture {
        _dir: dir,
        server,
        url,
        token,
    })
}

/// A stateless 2026-07-28 `tools/call` body.
fn call_body(tool: &str, args: serde_json::Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {
                "name": tool, "arguments": args,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "sovryn-bench", "version": "0"}
                }
            }
        }))
        .unwrap_or_default(),
    )
}

struct Target {
    authority: String,
    path: String,
    addr: String,
    token: String,
}

fn target(url: &str, token: &str) -> Res<Target> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().ok_or("url without host")?.to_string();
    Ok(Target {
        addr: authority.clone(),
        authority,
        path: uri.path().to_owned(),
        token: token.to_owned(),
    })
}

/// A client's request body for its n-th call.
type Body = Arc<dyn Fn(u64) -> Bytes + Send + Sync>;

/// One client: its own connection, requests back to back until `until`.
async fn client(t: Arc<Target>, tool: String, body: Body, until: Instant) -> Res<Vec<u32>> {
    let stream = tokio::net::TcpStream::connect(&t.addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut lat = Vec::with_capacity(1 << 16);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let req = Request::post(&t.path)
            .header("host", &t.authority)
            .header("authorization", format!("Bearer {}", t.token))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", &tool)
            .body(Full::new(body(n)))?;
        let started = Instant::now();
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)).into());
        }
        let text = std::str::from_utf8(&bytes)?;
        if !text.contains("\"result\"") || text.contains("\"isError\":true") {
            return Err(
                format!("not a successful result: {}", &text[..text.len().min(400)]).into(),
            );
        }
        lat.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
    }
    Ok(lat)
}

struct Row {
    name: String,
    clients: usize,
    calls: usize,
    per_sec: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

async fn scenario(
    t: &Arc<Target>,
    name: &str,
    tool: &str,
    args: serde_json::Value,
    clients: usize,
    seconds: f64,
) -> Res<Row> {
    // `{client}` in a path argument: each client's own file; `{n}` in the
    // content: the call's number (each write a new version).
    let bodies: Vec<Body> = (0..clients)
        .map(|i| {
            let mut a = args.clone();
            if let Some(p) = a.get("path").and_then(|p| p.as_str()) {
                a["path"] = serde_json::Value::String(p.replace("{client}", &i.to_string()));
            }
            let fixed = call_body(tool, a.clone());
            let tool = tool.to_owned();
            let body: Body =
                Arc::new(
                    move |n: u64| match a.get("content").and_then(|c| c.as_str()) {
                        Some(c) if c.contains("{n}") => {
                            let mut a = a.clone();
                            a["content"] =
                                serde_json::Value::String(c.replace("{n}", &format!("{n:06}")));
                            call_body(&tool, a)
                        }
                        _ => fixed.clone(),
                    },
                );
            body
        })
        .collect();
    // Warm-up: one call per client connection, not measured.
    let warm = Instant::now() + Duration::from_millis(300);
    let mut set = tokio::task::JoinSet::new();
    for body in &bodies {
        set.spawn(client(t.clone(), tool.to_owned(), body.clone(), warm));
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut set = tokio::task::JoinSet::new();
    for body in &bodies {
        set.spawn(client(t.clone(), tool.to_owned(), body.clone(), until));
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    let wall = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Ok(Row {
        name: name.to_owned(),
        clients,
        calls: all.len(),
        per_sec: all.len() as f64 / wall,
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        max: pct(1.0),
    })
}

fn main() -> Res<()> {
    let o = opts()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (fixture, t) = match (&o.url, &o.token) {
        (Some(u), Some(tok)) => (None, Arc::new(target(u, tok)?)),
        (None, None) => {
            let f = fixture(&o)?;
            let t = Arc::new(target(&f.url, &f.token)?);
            (Some(f), t)
        }
        _ => return Err("--url and --token go together".into()),
    };
    let mut scenarios: Vec<(String, &str, serde_json::Value)> = vec![(
        "read_file 4 KiB".into(),
        "read_file",
        serde_json::json!({"path": "bench/4k.txt"}),
    )];
    if fixture.is_some() {
        scenarios.push((
            format!("search_files query, {} files", o.files),
            "search_files",
            serde_json::json!({"query": "needle42"}),
        ));
        scenarios.push((
            format!("search_files name glob, {} files", o.files),
            "search_files",
            serde_json::json!({"name": "f0042*.txt"}),
        ));
        scenarios.push((
            "write_file 4 KiB, a file per client".into(),
            "write_file",
            serde_json::json!({"path": "bench/w-{client}.txt", "content": format!("{{n}}{}", "w".repeat(4090))}),
        ));
    }
    let mut rows = Vec::new();
    for (name, tool, args) in &scenarios {
        for &c in &o.clients {
            let row = rt.block_on(scenario(&t, name, tool, args.clone(), c, o.seconds))?;
            eprintln!(
                "{name}: {c} clients, {:.0} calls/s, p50 {:.2} ms",
                row.per_sec, row.p50
            );
            rows.push(row);
        }
    }
    println!("| scenario | clients | calls | calls/s | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} |",
            r.name, r.clients, r.calls, r.per_sec, r.p50, r.p90, r.p99, r.max
        );
    }
    drop(fixture);
    Ok(())
}
