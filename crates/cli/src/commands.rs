//! One function per command; each opens what it needs and calls the layers.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sovryn_engine::folders::Folder;
use sovryn_engine::scan::{ScanOptions, ScanProgress};
use sovryn_engine::{Home, InitOptions, Node, View};
use sovryn_store::{Access, EntryKind};

use crate::output::{self, bytes};
use crate::unlock;
use crate::{Cli, Command, ConfigAction};
use sovryn_daemon::write_ops::{self, WriteOp, WriteOutcome};

pub(crate) struct Ctx {
    pub(crate) home: Home,
    /// The folder's name (`default` for node-wide commands).
    folder: String,
    pub(crate) passphrase_file: Option<PathBuf>,
    pub(crate) json: bool,
}

impl Ctx {
    fn open(&self, access: Access) -> Result<Node> {
        let key = unlock::master_key(&self.home, self.passphrase_file.as_deref())?;
        Ok(Node::open(self.home.clone(), &key, access)?)
    }

    /// A user-typed path as a path from the folder root (relative ones from
    /// the current directory); needs no key.
    pub(crate) fn resolve(&self, raw: &str) -> Result<String> {
        let config = sovryn_engine::Config::load(&self.home)?;
        Ok(sovryn_engine::paths::resolve_user_path(
            &config.storage_path,
            &cwd()?,
            raw,
        )?)
    }

    pub(crate) fn ask(&self, query: sovryn_api::Query) -> Result<sovryn_api::Answer> {
        ask(&self.home, self.passphrase_file.as_deref(), query)
    }
}

/// Answers a read-only question: the running node answers it when there is
/// one (no key needed here, a passphrase is not asked again), else this
/// process on a read-only handle.
pub fn ask(
    home: &Home,
    passphrase_file: Option<&std::path::Path>,
    query: sovryn_api::Query,
) -> Result<sovryn_api::Answer> {
    let req = sovryn_daemon::control::Request::Query {
        query: query.clone(),
    };
    if let Some(answer) = sovryn_daemon::control::request(home, &req)? {
        if answer["ok"] == true {
            return serde_json::from_value(answer["answer"].clone())
                .context("reading the running node's answer");
        }
        bail!(
            "{}",
            answer["error"]
                .as_str()
                .unwrap_or("the running node refused")
        );
    }
    let key = unlock::master_key(home, passphrase_file)?;
    let node = Node::open(home.clone(), &key, Access::ReadOnly)?;
    Ok(sovryn_api::ask(&node, query)?)
}

/// The answer of the kind `$variant` or an error naming what came instead.
macro_rules! expect_answer {
    ($answer:expr, $variant:ident) => {
        match $answer {
            sovryn_api::Answer::$variant(x) => x,
            other => bail!("unexpected answer from the node: {other:?}"),
        }
    };
}

fn cwd() -> Result<PathBuf> {
    std::env::current_dir().context("reading the current directory")
}

fn scan_with_progress(
    node: &mut Node,
    prefixes: &[String],
    opts: &ScanOptions,
) -> Result<sovryn_engine::scan::ScanReport> {
    let pb = output::progress_bar("scanning");
    let mut last = std::time::Instant::now();
    let report = node.scan(prefixes, opts, &mut |p: &ScanProgress| {
        if last.elapsed().as_millis() >= 100 {
            pb.set_message(format!(
                "{} entries, {} read, {}",
                p.entries,
                bytes(p.bytes_hashed),
                p.current
            ));
            pb.tick();
            last = std::time::Instant::now();
        }
    })?;
    pb.finish_and_clear();
    Ok(report)
}

/// Whether a command works on one folder (`-F`) rather than the node.
fn folder_scoped(command: &Command) -> bool {
    use crate::node_cmd::NodeCommand;
    !matches!(
        command,
        Command::Init { .. }
            | Command::Join { .. }
            | Command::Invite { .. }
            | Command::Devices { .. }
            | Command::Vault { .. }
            | Command::Recover { .. }
            | Command::Remotes { .. }
            | Command::Id
            | Command::Keygen
            | Command::Unlock
            | Command::Lock
            | Command::Folders { .. }
            | Command::TestNetwork { .. }
            | Command::Daemon { .. }
            | Command::Node(NodeCommand::Up { .. })
            | Command::Node(NodeCommand::Logs { audit: false, .. })
    )
}

/// What a command does in each folder in turn, when it is one that may
/// (status, pause, resume), given no `-F`, outside every folder of a node
/// that has several.
enum EachFolder {
    Status,
    Pause(bool),
}

fn each_folder(cli: &Cli, node_home: &Home) -> Result<Option<(EachFolder, Vec<Folder>)>> {
    use crate::node_cmd::NodeCommand;
    let what = match (cli.folder.first(), &cli.command) {
        (Some(_), _) => return Ok(None),
        (None, Command::Status) => EachFolder::Status,
        // One JSON object per command: pausing every folder is asked per folder.
        (None, Command::Node(NodeCommand::Pause)) if !cli.json => EachFolder::Pause(true),
        (None, Command::Node(NodeCommand::Resume)) if !cli.json => EachFolder::Pause(false),
        _ => return Ok(None),
    };
    let all = sovryn_engine::folders::list(node_home)?;
    if all.len() > 1 && sovryn_engine::folders::select(node_home, None, &cwd()?).is_err() {
        return Ok(Some((what, all)));
    }
    Ok(None)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let node_home = Home::locate(cli.home.clone())?;
    if let Some((what, all)) = each_folder(&cli, &node_home)? {
        let mut statuses = Vec::new();
        for (i, f) in all.into_iter().enumerate() {
            let ctx = Ctx {
                home: f.home,
                folder: f.name.to_string(),
                passphrase_file: cli.passphrase_file.clone(),
                json: cli.json,
            };
            if !cli.json {
                if i > 0 {
                    println!();
                }
                println!("== folder {}", f.name);
            }
            match what {
                // With --json, one object holding each folder's status.
                EachFolder::Status => status_into(&ctx, cli.json.then_some(&mut statuses))?,
                EachFolder::Pause(on) => crate::node_cmd::set_paused(&ctx.home, on, false)?,
            }
        }
        if cli.json {
            return output::json(&json!({ "folders": statuses }));
        }
        return Ok(());
    }
    let invite = matches!(
        cli.command,
        Command::Invite { .. } | Command::Remotes { .. }
    );
    if cli.folder.len() > 1 && !invite {
        bail!("-F/--folder is given once here (only `invite` takes several)");
    }
    let folder = if folder_scoped(&cli.command) {
        sovryn_engine::folders::select(&node_home, cli.folder.first().map(String::as_str), &cwd()?)?
    } else {
        if !cli.folder.is_empty() && !matches!(cli.command, Command::Folders { .. }) && !invite {
            bail!("-F/--folder does not apply here: this command works on the whole node");
        }
        Folder {
            name: sovryn_engine::folders::FolderName::default_folder(),
            home: node_home,
        }
    };
    let ctx = Ctx {
        home: folder.home,
        folder: folder.name.to_string(),
        passphrase_file: cli.passphrase_file.clone(),
        json: cli.json,
    };
    let chosen_folders = cli.folder.clone();
    match cli.command {
        Command::Init {
            encryption_key: Some(_),
            ..
        } => bail!(
            "--encryption-key is not accepted: a secret on the command line is visible to every \
             local user (ps, /proc) and stays in your shell history. Use --passphrase-file FILE \
             (or $SOVRYN_PASSPHRASE_FILE, or the prompt) to protect the key with a passphrase, \
             and --folder-key-file FILE to join an existing folder"
        ),
        Command::Init {
            storage_path,
            node_id,
            listen,
            mcp_port,
            folder_key_file,
            no_passphrase,
            encryption_key: None,
        } => init(
            &ctx,
            storage_path,
            node_id,
            listen,
            mcp_port,
            folder_key_file,
            no_passphrase,
        ),
        Command::Devices { action } => crate::invite_cmd::devices(&ctx, action),
        Command::Vault { action } => crate::vault_cmd::vault(&ctx, action),
        Command::Recover { from, bucket, node } => {
            crate::recover_cmd::recover(&ctx, &from, bucket, node)
        }
        Command::Remotes { action } => crate::remotes_cmd::remotes(&ctx, action, &chosen_folders),
        Command::Share { action } => crate::share_cmd::share(&ctx, action),
        Command::Users { action } => crate::users_cmd::users(&ctx, action, &chosen_folders),
        Command::Invite {
            read_only,
            backup,
            expires,
        } => crate::invite_cmd::invite(&ctx, chosen_folders, read_only, backup, &expires),
        Command::Join {
            code, node, backup, ..
        } if backup => crate::backup_cmd::join(&ctx, &code, &node),
        Command::Join {
            code,
            node,
            no_passphrase,
            ..
        } => {
            let passphrase = new_passphrase(&ctx, no_passphrase)?;
            crate::invite_cmd::join(&ctx, &code, node, passphrase)
        }
        Command::Id => {
            let config = sovryn_engine::Config::load(&ctx.home)?;
            let key = sovryn_engine::identity::load(&ctx.home.identity())?;
            if ctx.json {
                output::json(
                    &json!({"node_id": key.public().to_string(), "name": config.node_name}),
                )
            } else {
                println!("{}", key.public());
                Ok(())
            }
        }
        Command::Keygen => {
            println!("{}", sovryn_store::keys::random_code());
            Ok(())
        }
        Command::FolderKey => {
            let key = unlock::master_key(&ctx.home, ctx.passphrase_file.as_deref())?;
            if ctx.json {
                return output::json(&json!({ "folder_key": key.to_hex() }));
            }
            println!("{}", key.to_hex());
            Ok(())
        }
        Command::Unlock => {
            let kf = Node::key_file(&ctx.home)?;
            if !kf.needs_passphrase() {
                println!("this node has no passphrase: nothing to unlock");
                return Ok(());
            }
            let secret = unlock::passphrase(
                ctx.passphrase_file.as_deref(),
                "passphrase (or recovery code): ",
            )?;
            let key = kf.open(secret.as_deref())?;
            let path = unlock::cache_session(&ctx.home, &key)?;
            println!(
                "unlocked for this session (key cached in {}; 'sovryn lock' forgets it)",
                path.display()
            );
            Ok(())
        }
        Command::Lock => {
            let path = unlock::session_file(&ctx.home)?;
            match std::fs::remove_file(&path) {
                Ok(()) => println!("locked"),
                Err(_) => println!("was not unlocked"),
            }
            Ok(())
        }
        Command::Add { paths, message } => add(&ctx, &paths, message),
        Command::Remove { path, force } => remove(&ctx, &path, force),
        Command::Keep { path } => keep(&ctx, &path),
        Command::Scan => {
            let out = run_write(
                &ctx,
                WriteOp::Scan {
                    paths: Vec::new(),
                    message: None,
                },
            )?;
            print_write(&ctx, &out)
        }
        Command::Ls { path, long } => ls(&ctx, path.as_deref(), long),
        Command::Cat { path, version } => cat(&ctx, &path, version.as_deref()),
        Command::Versions { path } => versions(&ctx, &path),
        Command::Restore { path, at, version } => {
            let version = at.or(version).context(
                "which version? e.g. 'sovryn restore PATH v2' (see 'sovryn versions PATH')",
            )?;
            let path = resolve_here(&ctx, &path)?;
            let out = run_write(&ctx, WriteOp::Restore { path, version })?;
            print_write(&ctx, &out)
        }
        Command::Diff { path, v1, v2 } => diff(&ctx, &path, &v1, v2.as_deref()),
        Command::Search { query, path, limit } => search(&ctx, &query, path.as_deref(), limit),
        Command::Status => status(&ctx),
        Command::Stats => stats(&ctx),
        Command::Config { action } => config(&ctx, action),
        Command::Verify => verify(&ctx),
        Command::Gc => gc(&ctx),
        Command::Node(cmd) => {
            crate::node_cmd::run(&ctx.home, ctx.passphrase_file.as_deref(), ctx.json, cmd)
        }
        Command::Mcp { action } => {
            crate::mcp_cmd::run(&ctx.home, ctx.passphrase_file.as_deref(), ctx.json, action)
        }
        Command::TestNetwork { peer, probe_mib } => {
            crate::daemon_cmd::test_network(&ctx.home, ctx.json, peer, probe_mib)
        }
        Command::Folders { action } => {
            crate::folders_cmd::run(&ctx.home, ctx.passphrase_file.as_deref(), ctx.json, action)
        }
        Command::Daemon { action } => {
            crate::daemon_cmd::run(&ctx.home, ctx.passphrase_file.as_deref(), ctx.json, action)
        }
    }
}

/// The passphrase a new node's keys are wrapped with: none with
/// `--no-passphrase`, else the passphrase file's, else asked on a terminal
/// (twice; empty: none), else none.
fn new_passphrase(ctx: &Ctx, no_passphrase: bool) -> Result<Option<String>> {
    Ok(if no_passphrase {
        None
    } else if let Some(f) = &ctx.passphrase_file {
        unlock::passphrase(Some(f), "")?
    } else if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("passphrase to protect the key (empty: none): ")?;
        if p.is_empty() {
            None
        } else {
            if rpassword::prompt_password("again: ")? != p {
                bail!("the passphrases differ; nothing was created");
            }
            Some(p)
        }
    } else {
        None
    })
}

fn init(
    ctx: &Ctx,
    storage_path: PathBuf,
    node_id: Option<String>,
    listen: Option<String>,
    mcp_port: Option<u16>,
    folder_key_file: Option<PathBuf>,
    no_passphrase: bool,
) -> Result<()> {
    if ctx.home.exists() {
        bail!(
            "a node is already initialised in {}; use another --home, or remove it first",
            ctx.home.dir.display()
        );
    }
    let passphrase = new_passphrase(ctx, no_passphrase)?;
    let folder_key = match folder_key_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("reading folder key {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let out = Node::init(
        &ctx.home,
        InitOptions {
            storage_path,
            node_name: node_id,
            listen,
            mcp_port,
            passphrase,
            folder_key,
            kdf: None,
            identity: None,
        },
    )?;
    if ctx.json {
        return output::json(&json!({
            "node_id": out.node_id.to_string(),
            "name": out.config.node_name,
            "home": ctx.home.dir,
            "storage_path": out.config.storage_path,
            "folder_id": out.folder_id,
            "recovery_code": out.recovery_code,
        }));
    }
    println!(
        "initialised node '{}' in {}",
        out.config.node_name,
        ctx.home.dir.display()
    );
    println!("  node id:      {}", out.node_id);
    println!("  storage path: {}", out.config.storage_path.display());
    println!("  folder id:    {}", out.folder_id);
    match &out.recovery_code {
        Some(code) => {
            println!("\nRECOVERY CODE (shown once; it opens the key if you forget the passphrase):\n\n    {code}\n");
        }
        None => println!(
            "  key:          stored unencrypted in {} (mode 0600); use --passphrase-file to protect it",
            ctx.home.keyfile().display()
        ),
    }
    Ok(())
}

fn print_scan(ctx: &Ctx, report: &sovryn_engine::scan::ScanReport) -> Result<()> {
    if ctx.json {
        return output::json(report);
    }
    println!(
        "{} entries scanned: {} added, {} modified, {} deleted ({} read){}",
        report.entries,
        report.added,
        report.modified,
        report.deleted,
        bytes(report.bytes_hashed),
        if report.unstable > 0 {
            format!(
                ", {} changing while read (left for the next scan)",
                report.unstable
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn add(ctx: &Ctx, paths: &[String], message: Option<String>) -> Result<()> {
    let paths = paths
        .iter()
        .map(|p| resolve_here(ctx, p))
        .collect::<Result<Vec<_>>>()?;
    let out = run_write(ctx, WriteOp::Scan { paths, message })?;
    print_write(ctx, &out)
}

/// A path the user typed, relative to the folder (without opening the store).
fn resolve_here(ctx: &Ctx, raw: &str) -> Result<String> {
    let config = sovryn_engine::Config::load(&ctx.home)?;
    Ok(sovryn_engine::paths::resolve_user_path(
        &config.storage_path,
        &cwd()?,
        raw,
    )?)
}

/// Runs a write in the running node when there is one (it holds the
/// store), else here.
fn run_write(ctx: &Ctx, op: WriteOp) -> Result<WriteOutcome> {
    if let Some(out) = write_ops::via_daemon(&ctx.home, &op)? {
        return Ok(out);
    }
    let mut node = ctx.open(Access::ReadWrite)?;
    match op {
        WriteOp::Scan { paths, message } => {
            let opts = ScanOptions {
                message,
                ..Default::default()
            };
            Ok(WriteOutcome::Scanned(scan_with_progress(
                &mut node, &paths, &opts,
            )?))
        }
        op => Ok(write_ops::execute(&mut node, op, &mut |_| {})?),
    }
}

fn print_write(ctx: &Ctx, out: &WriteOutcome) -> Result<()> {
    match out {
        WriteOutcome::Scanned(report) => print_scan(ctx, report),
        WriteOutcome::Restored {
            path,
            label,
            id,
            from_label,
            from_id,
        } => {
            if ctx.json {
                output::json(
                    &json!({"path": path, "version": format!("v{label}"), "id": id,
                                     "restored_from": format!("v{from_label}"), "restored_from_id": from_id}),
                )
            } else {
                println!(
                    "restored {} from v{from_label} ({}) as v{label}",
                    output::printable(path),
                    &from_id[..7.min(from_id.len())]
                );
                Ok(())
            }
        }
        WriteOutcome::Collected(report) => {
            if ctx.json {
                return output::json(report);
            }
            println!(
                "pruned {} versions, removed {} chunks, rewrote {} packs: {} -> {}",
                report.versions_pruned,
                report.chunks_removed,
                report.packs_rewritten,
                bytes(report.pack_bytes_before),
                bytes(report.pack_bytes_after)
            );
            Ok(())
        }
    }
}

fn remove(ctx: &Ctx, path: &str, force: bool) -> Result<()> {
    let cwd = cwd()?;
    let rel = sovryn_engine::Config::update(&ctx.home, |config| {
        let rel = sovryn_engine::paths::resolve_user_path(&config.storage_path, &cwd, path)?;
        if rel.is_empty() {
            return Err(sovryn_engine::Error::Usage(
                "cannot remove the storage root itself".into(),
            ));
        }
        let here = std::fs::symlink_metadata(config.storage_path.join(&rel)).is_ok();
        if !here && !force {
            return Err(sovryn_engine::Error::Usage(format!(
                "nothing at {} in the folder; check the path, or use --force to stop keeping it before it arrives",
                output::printable(&rel)
            )));
        }
        let pattern = format!("/{rel}");
        if !config.sync.exclude.contains(&pattern) {
            config.sync.exclude.push(pattern);
        }
        Ok(rel)
    })?;
    sovryn_daemon::notify_config_changed(&ctx.home);
    if ctx.json {
        return output::json(&json!({ "path": rel, "kept": false }));
    }
    println!("{rel} is no longer kept on this node; its history is kept and the local files were left in place");
    Ok(())
}

fn keep(ctx: &Ctx, path: &str) -> Result<()> {
    let cwd = cwd()?;
    let rel = sovryn_engine::Config::update(&ctx.home, |config| {
        let rel = sovryn_engine::paths::resolve_user_path(&config.storage_path, &cwd, path)?;
        let pattern = format!("/{rel}");
        let before = config.sync.exclude.len();
        config.sync.exclude.retain(|p| p != &pattern);
        if config.sync.exclude.len() == before {
            return Err(sovryn_engine::Error::Usage(format!(
                "{} was not removed here (see 'sovryn config get sync.exclude')",
                output::printable(&rel)
            )));
        }
        Ok(rel)
    })?;
    sovryn_daemon::notify_config_changed(&ctx.home);
    if ctx.json {
        return output::json(&json!({ "path": rel, "kept": true }));
    }
    println!(
        "{} is kept on this node again (the next scan records it)",
        output::printable(&rel)
    );
    Ok(())
}

fn list_row(e: &sovryn_api::EntryInfo, long: bool) -> String {
    let name = if e.kind == EntryKind::Dir {
        format!("{}/", e.path)
    } else {
        e.path.clone()
    };
    let name = match &e.target {
        Some(t) => format!("{name} -> {t}"),
        None => name,
    };
    if !long {
        return name;
    }
    format!(
        "{:>6} {:>10} {:>5} {} {:<12} {}",
        e.mode,
        e.size,
        e.version,
        output::rfc3339_human(&e.modified),
        e.author,
        name
    )
}

fn ls(ctx: &Ctx, path: Option<&str>, long: bool) -> Result<()> {
    let rel = match path {
        Some(p) => ctx.resolve(p)?,
        None => ctx.resolve(".").unwrap_or_default(),
    };
    let listing = expect_answer!(ctx.ask(sovryn_api::Query::List { path: rel })?, Listing);
    if ctx.json {
        return output::json(&listing);
    }
    for e in &listing.entries {
        println!("{}", output::printable(&list_row(e, long)));
    }
    Ok(())
}

fn cat(ctx: &Ctx, path: &str, version: Option<&str>) -> Result<()> {
    let query = sovryn_api::Query::Read {
        path: ctx.resolve(path)?,
        version: version.map(str::to_owned),
    };
    let content = expect_answer!(ctx.ask(query)?, Content);
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(&content.bytes()?)?;
    lock.flush()?;
    Ok(())
}

fn versions(ctx: &Ctx, path: &str) -> Result<()> {
    let query = sovryn_api::Query::Versions {
        path: ctx.resolve(path)?,
    };
    let history = expect_answer!(ctx.ask(query)?, Versions);
    if ctx.json {
        return output::json(&history);
    }
    let ids: Vec<String> = history.versions.iter().map(|v| v.id.clone()).collect();
    let shorts = sovryn_store::short_ids(&ids);
    println!(
        "{:<8} {:<10} {:<20} {:<14} {:>10}  Message",
        "Version", "Id", "Date", "Node", "Size"
    );
    for (v, short) in history.versions.iter().zip(&shorts) {
        let msg = match (&v.message, v.deleted) {
            (_, true) => "(deleted)".to_owned(),
            (Some(m), _) => m.clone(),
            (None, _) => String::new(),
        };
        let node_col = match &v.actor {
            Some(a) => format!("{} ({a})", v.author),
            None => v.author.clone(),
        };
        let row = format!(
            "{:<8} {:<10} {:<20} {:<14} {:>10}  {}",
            v.version,
            short,
            output::rfc3339_human(&v.time),
            node_col,
            v.size,
            msg
        );
        println!("{}", output::printable(&row));
    }
    Ok(())
}

fn diff(ctx: &Ctx, path: &str, v1: &str, v2: Option<&str>) -> Result<()> {
    let query = sovryn_api::Query::Diff {
        path: ctx.resolve(path)?,
        from: v1.to_owned(),
        to: v2.map(str::to_owned),
    };
    let diff = expect_answer!(ctx.ask(query)?, Diff);
    if ctx.json {
        return output::json(&diff);
    }
    print!("{}", diff.diff);
    Ok(())
}

fn search(ctx: &Ctx, query: &str, path: Option<&str>, limit: usize) -> Result<()> {
    let query = sovryn_api::Query::Search {
        query: query.to_owned(),
        path: match path {
            Some(p) => ctx.resolve(p)?,
            None => String::new(),
        },
        limit,
    };
    let hits = expect_answer!(ctx.ask(query)?, Hits);
    if ctx.json {
        return output::json(&hits);
    }
    if hits.hits.is_empty() {
        println!("no matches");
    }
    for h in hits.hits {
        println!(
            "{}",
            output::printable(&format!("{}: {}", h.path, h.snippet.replace('\n', " ")))
        );
    }
    Ok(())
}

fn status(ctx: &Ctx) -> Result<()> {
    status_into(ctx, None)
}

/// The status of `ctx`'s folder: printed, or with `--json` printed as one
/// object, or added to `collect` (the status of every folder at once).
fn status_into(ctx: &Ctx, collect: Option<&mut Vec<serde_json::Value>>) -> Result<()> {
    let config = sovryn_engine::Config::load(&ctx.home)?;
    let node_id = sovryn_engine::identity::load(&ctx.home.identity())?.public();
    // A running node answers everything (without the key here); else this
    // process opens the store read-only and looks at the disk itself.
    let live = sovryn_daemon::control::request(&ctx.home, &sovryn_daemon::control::Request::Status)
        .ok()
        .flatten();
    let (stats, conflicts, pending, folder_id) = match &live {
        Some(l) => {
            let stats = expect_answer!(ctx.ask(sovryn_api::Query::Stats)?, Stats);
            let conflicts =
                expect_answer!(ctx.ask(sovryn_api::Query::Conflicts)?, Conflicts).conflicts;
            let answer = sovryn_daemon::control::request(
                &ctx.home,
                &sovryn_daemon::control::Request::Unrecorded,
            )?
            .unwrap_or_default();
            if answer["ok"] != true {
                bail!(
                    "the running node could not compare the disk with its index: {}",
                    answer["error"].as_str().unwrap_or("no reason given")
                );
            }
            let pending: Vec<String> = serde_json::from_value(answer["paths"].clone())
                .context("reading the running node's unrecorded paths")?;
            let folder_id = l["folder_id"].as_str().unwrap_or_default().to_owned();
            (stats, conflicts, pending, folder_id)
        }
        None => {
            let mut node = ctx.open(Access::ReadOnly)?;
            let pending = node.scan(
                &[],
                &ScanOptions {
                    dry_run: true,
                    ..Default::default()
                },
                &mut |_| {},
            )?;
            (
                node.store.stats()?,
                node.conflict_copies()?,
                pending.changed,
                node.store.folder_id().to_owned(),
            )
        }
    };
    let pending_count = pending.len();
    let paused = ctx.home.is_paused();
    let peers: Vec<serde_json::Value> = live
        .as_ref()
        .and_then(|l| l["peers"].as_array().cloned())
        .unwrap_or_default();
    if ctx.json {
        let v = json!({
            "name": config.node_name, "node_id": node_id.to_string(), "home": ctx.home.dir,
            "folder": ctx.folder,
            "storage_path": config.storage_path, "folder_id": folder_id,
            "files": stats.files, "dirs": stats.dirs, "sequence": stats.sequence,
            "pending_changes": pending_count, "pending_paths": pending,
            "running": live.is_some(), "paused": paused, "peers": peers,
            "configured_peers": config.peers.len(),
            "conflicts": conflicts.len(),
        });
        return match collect {
            Some(all) => {
                all.push(v);
                Ok(())
            }
            None => output::json(&v),
        };
    }
    println!("node        {} ({node_id})", config.node_name);
    println!("home        {}", ctx.home.dir.display());
    println!("storage     {}", config.storage_path.display());
    println!("folder id   {folder_id}");
    println!(
        "tracked     {} files, {} directories, {} symlinks ({})",
        stats.files,
        stats.dirs,
        stats.symlinks,
        bytes(stats.tree_bytes)
    );
    println!("change log  sequence {}", stats.sequence);
    if pending_count == 0 {
        println!("disk        in step with the index");
    } else {
        println!("disk        {pending_count} unrecorded change(s): run 'sovryn scan'");
        for p in pending.iter().take(10) {
            println!("              {}", output::printable(p));
        }
    }
    let state = match (live.is_some(), paused) {
        (true, true) => "running, paused ('sovryn resume' to sync)",
        (true, false) => "running",
        (false, true) => "not running, paused",
        (false, false) => "not running ('sovryn up' to sync)",
    };
    println!(
        "sync        {state}; {} peer(s) configured",
        config.peers.len()
    );
    for p in &peers {
        println!(
            "  {}  {}",
            output::printable(p["name"].as_str().unwrap_or("-")),
            output::peer_line(p)
        );
    }
    if !conflicts.is_empty() {
        println!(
            "conflicts   {} conflict copies: see 'sovryn conflicts list'",
            conflicts.len()
        );
    }
    Ok(())
}

fn stats(ctx: &Ctx) -> Result<()> {
    let s = expect_answer!(ctx.ask(sovryn_api::Query::Stats)?, Stats);
    if ctx.json {
        return output::json(&s);
    }
    println!(
        "files             {} ({} dirs, {} symlinks)",
        s.files, s.dirs, s.symlinks
    );
    println!("versions          {}", s.versions);
    println!("tree bytes        {}", bytes(s.tree_bytes));
    println!(
        "logical bytes     {} (every kept version, whole)",
        bytes(s.logical_bytes)
    );
    println!(
        "unique bytes      {} in {} chunks",
        bytes(s.unique_bytes),
        s.chunks
    );
    println!(
        "stored bytes      {} (compressed + encrypted); packs on disk {}",
        bytes(s.stored_bytes),
        bytes(s.pack_bytes)
    );
    println!("dedup ratio       {:.2}", s.dedup_ratio);
    println!("compression ratio {:.2}", s.compression_ratio);
    Ok(())
}

fn config(ctx: &Ctx, action: ConfigAction) -> Result<()> {
    let mut config = sovryn_engine::Config::load(&ctx.home)?;
    match action {
        ConfigAction::Get { key } if sovryn_engine::config::is_secret_key(&key) => {
            let set = config.get(&key)? != "(unset)";
            if ctx.json {
                return output::json(&json!({ "key": key, "secret": true, "set": set }));
            }
            println!(
                "{key} is {} (a secret: read config.toml)",
                if set { "set" } else { "unset" }
            );
        }
        ConfigAction::Get { key } if key == "offline_mode" => {
            if ctx.json {
                return output::json(&json!({ "key": key, "value": ctx.home.is_paused() }));
            }
            println!("{}", ctx.home.is_paused());
        }
        ConfigAction::Get { key } => {
            let value = config.get(&key)?;
            if ctx.json {
                return output::json(&json!({ "key": key, "value": value }));
            }
            println!("{}", output::printable(&value))
        }
        ConfigAction::Set { key, value } if key == "offline_mode" => {
            // The spec's name for pausing sync (kept across restarts).
            let on: bool = value
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("offline_mode is true or false, got '{value}'"))?;
            crate::node_cmd::set_paused(&ctx.home, on, ctx.json)?;
        }
        ConfigAction::Set { key, value } => {
            let node_home = if ctx.folder == sovryn_engine::folders::DEFAULT {
                ctx.home.clone()
            } else {
                sovryn_engine::folders::node_of(&ctx.home)?
            };
            let folder = sovryn_engine::folders::FolderName::parse(&ctx.folder)?;
            config = sovryn_engine::Config::update(&ctx.home, |c| {
                c.set(&key, &value)?;
                // Folders never nest, whichever of them moves.
                sovryn_engine::folders::check_apart_from_folders(
                    &node_home,
                    Some(&folder),
                    &c.storage_path,
                )?;
                Ok(c.clone())
            })?;
            sovryn_daemon::notify_config_changed(&ctx.home);
            let secret = sovryn_engine::config::is_secret_key(&key);
            if ctx.json {
                return output::json(&if secret {
                    json!({ "key": key, "secret": true, "set": true })
                } else {
                    json!({ "key": key, "value": config.get(&key)? })
                });
            }
            if secret {
                println!("{key} set (a secret: not shown)");
            } else {
                println!("{key} = {}", output::printable(&config.get(&key)?));
            }
        }
    }
    Ok(())
}

fn verify(ctx: &Ctx) -> Result<()> {
    let pb = output::progress_bar("verifying");
    let report = expect_answer!(ctx.ask(sovryn_api::Query::Verify)?, Verify);
    pb.finish_and_clear();
    if ctx.json {
        output::json(&report)?;
    } else {
        println!(
            "checked {} chunks ({}) and {} records: {}",
            report.chunks_checked,
            bytes(report.bytes_checked),
            report.records_checked,
            if report.problems.is_empty() {
                "ok".to_owned()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        );
        for p in &report.problems {
            println!("  {}", output::printable(&p.to_string()));
        }
    }
    if !report.problems.is_empty() {
        bail!("the store has {} problem(s)", report.problems.len());
    }
    Ok(())
}

fn gc(ctx: &Ctx) -> Result<()> {
    let out = run_write(ctx, WriteOp::Gc)?;
    print_write(ctx, &out)
}
