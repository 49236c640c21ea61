//! `sovryn daemon start|stop|status`: `sovryn up` in the background.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use sovryn_engine::Home;

use crate::output;
use sovryn_daemon::control::{request as control_request, Request};

/// `sovryn daemon` actions.
#[derive(Subcommand, Debug)]
pub enum DaemonAction {
    /// Run 'sovryn up' in the background (output in HOME/daemon.log); returns once it is ready.
    Start {
        /// Override the sync listen address (HOST:PORT) for this run.
        #[arg(long)]
        listen: Option<String>,
        /// Give up waiting for the node after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop the running node gracefully (control socket, else SIGTERM).
    Stop {
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Whether a node runs here: pid, addresses, MCP URL, peers.
    Status,
}

/// The daemon's output file in its home.
pub fn log_path(home: &Home) -> PathBuf {
    home.dir.join("daemon.log")
}

fn pid_path(home: &Home) -> PathBuf {
    home.dir.join("daemon.pid")
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(home: &Home) -> Option<i32> {
    std::fs::read_to_string(pid_path(home))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Runs a `daemon` action.
pub fn run(
    home: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    action: DaemonAction,
) -> Result<()> {
    if !home.exists() {
        bail!(sovryn_engine::Error::NoNode(home.dir.clone()));
    }
    match action {
        DaemonAction::Start { listen, timeout } => {
            start(home, passphrase_file, json, listen, timeout)
        }
        DaemonAction::Stop { timeout } => stop(home, json, timeout),
        DaemonAction::Status => status(home, json),
    }
}

fn print_status(v: &serde_json::Value) {
    println!("running     pid {}", v["pid"]);
    println!("node        {}", v["node_id"].as_str().unwrap_or("?"));
    for a in v["listening"].as_array().into_iter().flatten() {
        println!("listening   {}", a.as_str().unwrap_or("?"));
    }
    if let Some(u) = v["mcp_url"].as_str() {
        println!("mcp         {u}");
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let connected = peers
        .iter()
        .filter(|p| p["connected"].as_u64().unwrap_or(0) > 0)
        .count();
    println!("peers       {connected} of {} connected", peers.len());
}

fn start(
    home: &Home,
    passphrase_file: Option<&Path>,
    json: bool,
    listen: Option<String>,
    timeout: u64,
) -> Result<()> {
    if let Some(v) = control_request(home, &Request::Status)? {
        bail!(
            "a node is already running in {} (pid {})",
            home.dir.display(),
            v["pid"]
        );
    }
    let log = log_path(home);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    // The key is opened here, where a terminal can be asked for the
    // passphrase, and handed to the node over a pipe (never an argument or
    // the environment, which other processes can read).
    let key = crate::unlock::master_key(home, passphrase_file)?;
    let exe = std::env::current_exe().context("finding the sovryn binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--home").arg(&home.dir);
    cmd.arg("up").arg("--key-stdin");
    if let Some(l) = listen {
        cmd.arg("--listen").arg(l);
    }
    cmd.stdin(Stdio::piped())
        .stdout(out.try_clone()?)
        .stderr(out)
        .current_dir(&home.dir);
    // Its own session: no controlling terminal, untouched by the shell's
    // job control and hang-ups.
    unsafe {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and runs in the child before exec.
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting 'sovryn up'")?;
    {
        let mut stdin = child.stdin.take().context("the node's standard input")?;
        let mut line = key.to_hex().into_bytes();
        line.push(b'\n');
        std::io::Write::write_all(&mut stdin, &line).context("handing the key to the node")?;
        // Dropped: the node reads one line and sees the end.
    }
    let pid = child.id() as i32;
    std::fs::write(pid_path(home), format!("{pid}\n"))?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        if let Some(st) = child.try_wait()? {
            let _ = std::fs::remove_file(pid_path(home));
            let tail = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("the node exited ({st}) before it was ready:\n{tail}");
        }
        if let Some(v) = control_request(home, &Request::Status).ok().flatten() {
            if json {
                let mut v = v;
                v["running"] = true.into();
                v["log"] = log.display().to_string().into();
                return output::json(&v);
            }
            println!("started; log in {}", log.display());
            print_status(&v);
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the node (pid {pid}) is not ready after {timeout} s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(home: &Home, json: bool, timeout: u64) -> Result<()> {
    let live = control_request(home, &Request::Status).ok().flatten();
    let pid = live
        .as_ref()
        .and_then(|v| v["pid"].as_i64())
        .map(|p| p as i32)
        .or_else(|| read_pid(home).filter(|p| alive(*p)));
    let Some(pid) = pid else {
        let _ = std::fs::remove_file(pid_path(home));
        if json {
            return output::json(&json!({"running": false, "stopped": false}));
        }
        println!("not running");
        return Ok(());
    };
    let asked = live.is_some()
        && control_request(home, &Request::Stop)
            .ok()
            .flatten()
            .is_some_and(|v| v["ok"].as_bool() == Some(true));
    if !asked {
        // SAFETY: kill(2) on the pid this home's node reported or recorded.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "cannot signal pid {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while alive(pid) {
        // A child of ours (started by this process) must be reaped to go away.
        // SAFETY: non-blocking waitpid on a pid; harmless if it is not our child.
        unsafe {
            let mut st = 0;
            libc::waitpid(pid, &mut st, libc::WNOHANG);
        }
        if Instant::now() > deadline {
            bail!("pid {pid} did not stop within {timeout} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(pid_path(home));
    if json {
        return output::json(&json!({"running": false, "stopped": true, "pid": pid}));
    }
    println!("stopped (pid {pid})");
    Ok(())
}

fn status(home: &Home, json: bool) -> Result<()> {
    match control_request(home, &Request::Status).ok().flatten() {
        Some(mut v) => {
            if json {
                v["running"] = true.into();
                v["log"] = log_path(home).display().to_string().into();
                return output::json(&v);
            }
            print_status(&v);
            Ok(())
        }
        None => {
            if json {
                return output::json(&json!({"running": false}));
            }
            println!("not running");
            Ok(())
        }
    }
}

/// `sovryn test-network [PEER]`: asks the running node to test each peer.
pub fn test_network(home: &Home, json: bool, peer: Option<String>, probe_mib: u64) -> Result<()> {
    let req = Request::TestNetwork {
        peer: peer.clone(),
        probe_bytes: probe_mib.min(64) << 20,
    };
    let Some(answer) = control_request(home, &req)? else {
        bail!("the node is not running here; start it with 'sovryn up' or 'sovryn daemon start'");
    };
    let peers = answer["peers"].as_array().cloned().unwrap_or_default();
    if json {
        output::json(&answer)?;
    } else {
        if peers.is_empty() {
            println!("no matching peer configured");
        }
        for p in &peers {
            let ms = |k: &str| {
                p[k].as_f64()
                    .map(|v| format!("{v:.1} ms"))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{}  {}  {}  rtt {}  connect {}  download {}{}",
                p["id"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("-"),
                if p["reachable"].as_bool() == Some(true) {
                    "reachable"
                } else {
                    "unreachable"
                },
                ms("rtt_ms"),
                ms("connect_ms"),
                p["download_mib_per_sec"]
                    .as_f64()
                    .map(|v| format!("{v:.1} MiB/s"))
                    .unwrap_or_else(|| "-".into()),
                p["error"]
                    .as_str()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default(),
            );
        }
    }
    if peer.is_some() && !peers.iter().any(|p| p["reachable"].as_bool() == Some(true)) {
        bail!("peer not reachable");
    }
    Ok(())
}
