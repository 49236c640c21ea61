//! Commands of a running node: `up`, `sync`, `peers`, `pause`/`resume`,
//! `conflicts` and `logs`, and the control-socket requests they add.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

use sovryn_engine::config::PeerConfig;
use sovryn_engine::identity::PublicKey;
use sovryn_engine::{Config, Home, Node};
use sovryn_store::Access;

use crate::output;
use crate::unlock;
use sovryn_daemon::Daemon;

/// Commands that run the node or manage its peers.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Run the node in the foreground: watch the folder and sync with peers.
    Up {
        /// Override the sync listen address (HOST:PORT) for this run.
        #[arg(long)]
        listen: Option<String>,
        /// Read the opened key (hex, one line) from standard input: how
        /// `sovryn daemon start` hands over a key it asked a passphrase for.
        #[arg(long, hide = true)]
        key_stdin: bool,
    },
    /// Scan now and wait until every connected peer is caught up both ways (needs 'sovryn up').
    Sync {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Rescan the whole folder first (every sync does; accepted for the
        /// spec's spelling).
        #[arg(long)]
        force: bool,
    },
    /// Manage the peers this node syncs with.
    Peers {
        #[command(subcommand)]
        action: PeersAction,
    },
    /// Stop syncing (no index exchange, no pulls) until 'sovryn resume'; survives restarts.
    Pause,
    /// Sync again after 'sovryn pause'.
    Resume,
    /// List or resolve conflict copies.
    Conflicts {
        #[command(subcommand)]
        action: ConflictsAction,
    },
    /// Print the running node's log (HOME/sovryn.log), or with --audit the MCP audit log.
    Logs {
        /// The MCP audit log (HOME/audit.jsonl): one line per tool call.
        #[arg(long)]
        audit: bool,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines (0: all).
        #[arg(long, short = 'n', default_value_t = 200)]
        lines: usize,
    },
}

/// `sovryn conflicts` actions.
#[derive(Subcommand, Debug)]
pub enum ConflictsAction {
    /// Conflict copies present in the tree.
    List,
    /// Resolve a conflict copy (PATH: the copy, or an original with one copy).
    Resolve {
        /// The conflict copy, or the file it is a copy of.
        path: String,
        /// local: keep the named file, delete the copy; remote: the copy's
        /// content replaces the named file; both: keep both, the copy renamed.
        #[arg(long)]
        keep: String,
    },
}

/// `sovryn peers` actions.
#[derive(Subcommand, Debug)]
pub enum PeersAction {
    /// Trust a peer (by its endpoint id, 'sovryn id' on it). Adding it again updates it.
    Add {
        /// The peer's endpoint id.
        id: String,
        /// Where to reach it (HOST:PORT); repeat for several.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// A name for it.
        #[arg(long)]
        name: Option<String>,
        /// Send it our changes but do not apply its own.
        #[arg(long)]
        read_only: bool,
        /// Only exchange paths under this prefix; repeat for several.
        #[arg(long = "path", alias = "paths")]
        paths: Vec<String>,
    },
    /// List trusted peers (with their live state when the node is up).
    List,
    /// Stop trusting a peer (by id or name).
    Remove {
        /// Endpoint id or name.
        peer: String,
    },
}

/// Runs a node command.
pub fn run(
    home: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    cmd: NodeCommand,
) -> Result<()> {
    match cmd {
        NodeCommand::Up { listen, .. } if crate::backup_cmd::is_backup_home(home) => {
            crate::backup_cmd::serve(home, listen)
        }
        NodeCommand::Up { listen, key_stdin } => up(home, passphrase_file, listen, key_stdin),
        NodeCommand::Sync { timeout, force: _ } => sync(home, json, timeout),
        NodeCommand::Peers { action } => peers(home, json, action),
        NodeCommand::Pause => pause_resume(home, json, true),
        NodeCommand::Resume => pause_resume(home, json, false),
        NodeCommand::Conflicts { action } => conflicts(home, passphrase_file, json, action),
        NodeCommand::Logs {
            audit,
            follow,
            lines,
        } => logs(home, json, audit, follow, lines),
    }
}

fn up(
    home: &Home,
    passphrase_file: Option<&Path>,
    listen: Option<String>,
    key_stdin: bool,
) -> Result<()> {
    let key = if key_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the key from standard input")?;
        // A key of another folder is refused when the store opens (its
        // folder id is checked).
        sovryn_store::MasterKey::from_hex(line.trim())
            .context("the key on standard input is not a key")?
    } else {
        unlock::master_key(home, passphrase_file)?
    };
    // An MCP stdio session serving this home in its own process hands the
    // store over and goes on through this node. One that is just ending
    // holds the store a moment longer: ask again for a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for f in sovryn_engine::folders::list(home)?
        .iter()
        .filter(|f| !f.name.is_default())
    {
        crate::mcp_stdio::ask_release(&f.home)?;
    }
    let node = loop {
        crate::mcp_stdio::ask_release(home)?;
        match Node::open(home.clone(), &key, Access::ReadWrite) {
            Err(sovryn_engine::Error::Store(sovryn_store::Error::Busy(_)))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            opened => break opened?,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let name = node.config.node_name.clone();
        let root = node.root().to_owned();
        let daemon = Daemon::start(node, listen).await?;
        // Sessions only start in `run`, so a paused node never syncs.
        if daemon
            .shared
            .with_node(|n| Ok(n.home.clone()))
            .await?
            .is_paused()
        {
            daemon.net.set_peers(&[]);
            tracing::info!("sync is paused ('sovryn resume' to sync again)");
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "node {name} ({})", daemon.net.id())?;
        writeln!(out, "folder {}", root.display())?;
        for a in daemon.net.bound_sockets() {
            writeln!(out, "listening on {a}")?;
        }
        let d = daemon.net.discovery();
        let on = |b: bool| if b { "on" } else { "off" };
        writeln!(
            out,
            "discovery: mDNS {}, DHT {}, relay {}",
            on(d.mdns),
            on(d.dht),
            d.relay
                .as_ref()
                .map_or("none".to_string(), |u| u.to_string())
        )?;
        out.flush()?;
        drop(out);
        // The other folders open once this one runs (it accepts their
        // connections too); "ready" follows them.
        let ready = |others: Vec<(String, sovryn_daemon::Result<std::path::PathBuf>)>| {
            let mut out = std::io::stdout().lock();
            for (folder, opened) in others {
                match opened {
                    Ok(path) => {
                        let _ = writeln!(out, "folder {folder}: {}", path.display());
                    }
                    Err(e) => {
                        tracing::warn!("folder {folder} not served: {e}");
                        eprintln!("warning: folder {folder} not served: {e}");
                    }
                }
            }
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        };
        daemon.run(key, ready).await?;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

fn sync(home: &Home, json: bool, timeout: u64) -> Result<()> {
    if home.is_paused() {
        bail!("sync is paused on this node; run 'sovryn resume' first");
    }
    let req = sovryn_daemon::control::Request::Sync {
        timeout_ms: timeout.saturating_mul(1000),
    };
    // On a terminal, what is left and how fast it moves, while it waits.
    let progress = (!json && std::io::stderr().is_terminal()).then(|| sync_progress(home));
    let answer = sovryn_daemon::control::request(home, &req);
    if let Some((bar, stop)) = progress {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        bar.finish_and_clear();
    }
    let Some(answer) = answer? else {
        bail!("the node is not running here; start it with 'sovryn up'");
    };
    let ok = answer["ok"].as_bool().unwrap_or(false);
    if json {
        output::json(&answer)?;
    } else {
        for p in answer["peers"].as_array().into_iter().flatten() {
            println!(
                "{}  {}  {}",
                p["id"].as_str().unwrap_or("?"),
                output::printable(p["name"].as_str().unwrap_or("-")),
                output::peer_line(p)
            );
        }
        if ok {
            println!("in sync (sequence {})", answer["seq"]);
        }
    }
    if !ok {
        bail!("{}", answer["error"].as_str().unwrap_or("not in sync"));
    }
    Ok(())
}

/// A spinner that shows, twice a second, the running node's per-peer
/// progress (what is left, the rate) until the flag is set.
fn sync_progress(
    home: &Home,
) -> (
    indicatif::ProgressBar,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let bar = output::progress_bar("syncing");
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b, s, home) = (bar.clone(), stop.clone(), home.clone());
    std::thread::spawn(move || {
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(Some(st)) =
                sovryn_daemon::control::request(&home, &sovryn_daemon::control::Request::Status)
            {
                let lines: Vec<String> = st["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{}: {}",
                            output::printable(p["name"].as_str().unwrap_or("-")),
                            output::peer_line(p)
                        )
                    })
                    .collect();
                b.set_message(lines.join(" | "));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    (bar, stop)
}

fn peers(home: &Home, json: bool, action: PeersAction) -> Result<()> {
    let config = Config::load(home)?;
    match action {
        PeersAction::Add {
            id,
            addresses,
            name,
            read_only,
            paths,
        } => {
            let key: PublicKey = id
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("'{id}' is not an endpoint id: {e}"))?;
            let me = sovryn_engine::identity::load(&home.identity())?.public();
            if key == me {
                bail!("that is this node's own id");
            }
            let peer = PeerConfig::checked(&key, addresses, name, read_only, &paths)?;
            let (updated, peer) = Config::update(home, |config| Ok(config.upsert_peer(peer)))?;
            sovryn_daemon::notify_config_changed(home);
            if json {
                output::json(&json!({"peer": peer, "updated": updated}))
            } else {
                println!(
                    "{} peer {}{}",
                    if updated { "updated" } else { "added" },
                    peer.id,
                    peer.name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
                Ok(())
            }
        }
        PeersAction::List => {
            let live =
                sovryn_daemon::control::request(home, &sovryn_daemon::control::Request::Status)
                    .ok()
                    .flatten();
            let live_of = |id: &str| {
                live.as_ref().and_then(|l| {
                    l["peers"]
                        .as_array()?
                        .iter()
                        .find(|p| p["id"].as_str() == Some(id))
                        .cloned()
                })
            };
            if json {
                let list: Vec<serde_json::Value> = config
                    .peers
                    .iter()
                    .map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        if let Some(l) = live_of(&p.id) {
                            v["status"] = l;
                        }
                        v
                    })
                    .collect();
                return output::json(&json!({"running": live.is_some(), "peers": list}));
            }
            if config.peers.is_empty() {
                println!(
                    "no peers; add one with 'sovryn peers add ENDPOINT_ID --address HOST:PORT'"
                );
            }
            for p in &config.peers {
                let state = match live_of(&p.id) {
                    Some(l) => format!("  {}", output::peer_line(&l)),
                    None => String::new(),
                };
                let row = format!(
                    "{}  {}  {}{}{}{state}",
                    p.id,
                    p.name.as_deref().unwrap_or("-"),
                    if p.addresses.is_empty() {
                        "(no address)".to_string()
                    } else {
                        p.addresses.join(",")
                    },
                    if p.read_only { "  read-only" } else { "" },
                    if p.paths.is_empty() {
                        String::new()
                    } else {
                        format!("  paths: {}", p.paths.join(","))
                    }
                );
                println!("{}", output::printable(&row));
            }
            Ok(())
        }
        PeersAction::Remove { peer } => {
            let removed = Config::update(home, |config| config.remove_peer(&peer))?;
            sovryn_daemon::notify_config_changed(home);
            if json {
                output::json(&json!({"removed": removed}))
            } else {
                println!("removed {peer}");
                Ok(())
            }
        }
    }
}

/// Pauses or resumes sync: the marker in the home, and the running node at once.
pub fn set_paused(home: &Home, pause: bool, json: bool) -> Result<()> {
    pause_resume(home, json, pause)
}

fn pause_resume(home: &Home, json: bool, pause: bool) -> Result<()> {
    if !home.exists() {
        bail!("no node in {}", home.dir.display());
    }
    let req = if pause {
        sovryn_daemon::control::Request::Pause
    } else {
        sovryn_daemon::control::Request::Resume
    };
    let running = match sovryn_daemon::control::request(home, &req)? {
        Some(a) => {
            if a["ok"].as_bool() != Some(true) {
                bail!(
                    "{}",
                    a["error"].as_str().unwrap_or("the running node refused")
                );
            }
            true
        }
        None => {
            if pause {
                std::fs::write(home.pause_marker(), b"")
                    .with_context(|| format!("writing {}", home.pause_marker().display()))?;
            } else {
                let _ = std::fs::remove_file(home.pause_marker());
            }
            false
        }
    };
    if json {
        return output::json(&json!({"paused": pause, "running": running}));
    }
    println!(
        "sync {}{}",
        if pause { "paused" } else { "resumed" },
        if running {
            ""
        } else {
            " (takes effect when the node starts)"
        }
    );
    Ok(())
}

fn conflicts(
    home: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    action: ConflictsAction,
) -> Result<()> {
    match action {
        ConflictsAction::List => {
            let list =
                match crate::commands::ask(home, passphrase_file, sovryn_api::Query::Conflicts)? {
                    sovryn_api::Answer::Conflicts(c) => c.conflicts,
                    other => bail!("unexpected answer from the node: {other:?}"),
                };
            if json {
                return output::json(&json!({ "conflicts": list }));
            }
            if list.is_empty() {
                println!("no conflict copies");
            }
            for c in &list {
                println!(
                    "{}\n    copy of {}{}, written by {} at {} UTC",
                    output::printable(&c.path),
                    output::printable(&c.original),
                    if c.original_exists { "" } else { " (gone)" },
                    output::printable(&c.author),
                    c.time
                );
            }
            Ok(())
        }
        ConflictsAction::Resolve { path, keep } => {
            let keep_parsed: sovryn_engine::conflicts::Keep = keep.parse()?;
            // A user path: relative to the current directory inside the root.
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let config = Config::load(home)?;
            let rel = sovryn_engine::paths::resolve_user_path(&config.storage_path, &cwd, &path)?;
            let req = sovryn_daemon::control::Request::ConflictsResolve {
                path: rel.clone(),
                keep: keep.clone(),
            };
            let res: serde_json::Value = match sovryn_daemon::control::request(home, &req)? {
                Some(a) => {
                    if a["ok"].as_bool() != Some(true) {
                        bail!(
                            "{}",
                            a["error"].as_str().unwrap_or("the running node refused")
                        );
                    }
                    a["resolution"].clone()
                }
                None => {
                    let key = unlock::master_key(home, passphrase_file)?;
                    let mut node = Node::open(home.clone(), &key, Access::ReadWrite)?;
                    serde_json::to_value(node.resolve_conflict(&rel, keep_parsed, None)?)?
                }
            };
            if json {
                return output::json(&res);
            }
            let copy = res["copy"].as_str().unwrap_or("?");
            let original = res["original"].as_str().unwrap_or("?");
            match res["renamed_to"].as_str() {
                Some(to) => println!("kept both: {original}, and {copy} renamed to {to}"),
                None => println!("resolved {original} (kept {keep}); removed {copy}"),
            }
            Ok(())
        }
    }
}

/// The daemon's log file in the home (JSON lines, see `main.rs`).
pub fn log_file(home: &Home) -> std::path::PathBuf {
    home.dir.join("sovryn.log")
}

/// One JSON log line as text: `TIME LEVEL target: message k=v…`.
fn human_log_line(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    let mut out = format!(
        "{} {:>5} {}:",
        v["timestamp"].as_str().unwrap_or("-"),
        v["level"].as_str().unwrap_or("-"),
        v["target"].as_str().unwrap_or("-"),
    );
    if let Some(fields) = v["fields"].as_object() {
        if let Some(m) = fields.get("message").and_then(|m| m.as_str()) {
            out.push(' ');
            out.push_str(m);
        }
        for (k, val) in fields.iter().filter(|(k, _)| *k != "message") {
            out.push_str(&format!(" {k}={val}"));
        }
    }
    out
}

fn logs(home: &Home, json: bool, audit: bool, follow: bool, lines: usize) -> Result<()> {
    use std::io::{BufRead, Read, Seek, SeekFrom};
    let path = if audit {
        sovryn_mcp::audit::audit_path(&home.dir)
    } else {
        log_file(home)
    };
    if !home.exists() {
        bail!("no node in {}", home.dir.display());
    }
    let emit = |line: &str, out: &mut dyn Write| -> Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if json {
            writeln!(out, "{line}")?;
        } else if audit {
            writeln!(out, "{}", crate::mcp_cmd::human_audit_line(line))?;
        } else {
            writeln!(out, "{}", human_log_line(line))?;
        }
        Ok(())
    };
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    match std::fs::File::open(&path) {
        Ok(f) => {
            let all: Vec<String> = std::io::BufReader::new(&f)
                .lines()
                .collect::<std::io::Result<_>>()?;
            let skip = if lines == 0 {
                0
            } else {
                all.len().saturating_sub(lines)
            };
            for l in &all[skip..] {
                emit(l, &mut out)?;
            }
            pos = f.metadata()?.len();
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && audit => {
            bail!(
                "no MCP tool calls yet ({} is written by 'sovryn mcp serve' and the node's MCP server)",
                path.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no log yet at {} (the node writes it while 'sovryn up' runs)",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut partial = String::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let len = f.metadata()?.len();
        if len < pos {
            // Rotated or truncated: start over.
            pos = 0;
        }
        if len == pos {
            continue;
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut buf = String::new();
        f.read_to_string(&mut buf)?;
        pos += buf.len() as u64;
        partial.push_str(&buf);
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            emit(line.trim_end(), &mut out)?;
        }
        out.flush()?;
    }
}

/// Opens HOME/sovryn.log for appending; a log over 16 MiB is moved to
/// `sovryn.log.1` first.
pub fn open_log_file(home: &Home) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = log_file(home);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > 16 << 20) {
        let _ = std::fs::rename(&path, home.dir.join("sovryn.log.1"));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}
