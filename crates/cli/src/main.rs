//! `sovryn`: the command line of a Sovryn node.

mod backup_cmd;
mod commands;
mod daemon_cmd;
mod folders_cmd;
mod invite_cmd;
mod mcp_cmd;
mod mcp_stdio;
mod new_node;
mod node_cmd;
mod output;
mod recover_cmd;
mod remotes_cmd;
mod share_cmd;
mod unlock;
mod users_cmd;
mod vault_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Sovereign peer-to-peer encrypted file sync with an MCP server.
#[derive(Parser, Debug)]
#[command(name = "sovryn", version, about)]
pub struct Cli {
    /// Home directory of the node (config, keys, index, chunk store).
    #[arg(long, global = true, env = "SOVRYN_HOME")]
    pub home: Option<PathBuf>,
    /// File holding the passphrase that opens the master key.
    #[arg(long, global = true, env = "SOVRYN_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The folder a folder-scoped command works on (default: the folder
    /// whose storage path holds the current directory, else the only one);
    /// `invite` takes several (each folder the device gets).
    #[arg(long, short = 'F', global = true, value_name = "NAME")]
    pub folder: Vec<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log filter (tracing syntax), e.g. `info` or `sovryn=debug`.
    #[arg(long, global = true, env = "SOVRYN_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a node: identity, config, keys and an empty store.
    Init {
        /// The folder to keep in sync (created if missing).
        #[arg(long)]
        storage_path: PathBuf,
        /// Name of this node (default: host name).
        #[arg(long)]
        node_id: Option<String>,
        /// UDP address for sync (default 0.0.0.0:7777).
        #[arg(long)]
        listen: Option<String>,
        /// Port of the MCP HTTP server (default 8765).
        #[arg(long)]
        mcp_port: Option<u16>,
        /// Join an existing mesh: a file holding its folder key ('sovryn folder-key' on a member).
        #[arg(long)]
        folder_key_file: Option<PathBuf>,
        /// Store the master key unwrapped, without asking for a passphrase.
        #[arg(long)]
        no_passphrase: bool,
        /// Refused: a key or passphrase on the command line leaks (see the error).
        #[arg(long, hide = true, value_name = "KEY")]
        encryption_key: Option<String>,
    },
    /// Invite a new device: prints a one-time code for `sovryn join` (the
    /// node must be running; it answers the device). `--folder NAME`, once
    /// per folder, says what the device gets (default: the default folder).
    Invite {
        /// Take no changes from the device.
        #[arg(long)]
        read_only: bool,
        /// Invite a backup node: it keeps the folders' sealed objects and
        /// gets no key; this node pushes to it.
        #[arg(long)]
        backup: bool,
        /// How long the code works (it works once).
        #[arg(long, default_value = "15m")]
        expires: String,
    },
    /// Rebuild a lost device from a member: its folders, keys and settings
    /// from the vault (opened with the vault passphrase: --passphrase-file
    /// or asked), its files from the members.
    Recover {
        /// A member or a backup node (ID@HOST:PORT), a bucket
        /// (s3://BUCKET/PREFIX, with --endpoint, --access-key-file and
        /// --secret-key-file) or a directory (file:///DIR). Backups may be
        /// given several times: what one holds damaged is taken from the next.
        #[arg(long, required = true)]
        from: Vec<String>,
        #[command(flatten)]
        bucket: remotes_cmd::BucketArgs,
        #[command(flatten)]
        node: new_node::NodeArgs,
    },
    /// Remote buckets (S3-compatible) that keep this node's folders sealed:
    /// add, list, status, sync, remove.
    Remotes {
        #[command(subcommand)]
        action: remotes_cmd::RemotesAction,
    },
    /// People who sign in to the dashboard, each in a workspace of their
    /// own: add, list, passwd, remove.
    Users {
        #[command(subcommand)]
        action: users_cmd::UsersAction,
    },
    /// Share links to a file or directory: create, list, revoke.
    Share {
        #[command(subcommand)]
        action: share_cmd::ShareAction,
    },
    /// The config vault: settings on every device, sealed with a passphrase.
    Vault {
        #[command(subcommand)]
        action: vault_cmd::VaultAction,
    },
    /// Devices that asked to sync without being listed: list, approve, deny.
    Devices {
        #[command(subcommand)]
        action: invite_cmd::DevicesAction,
    },
    /// Join a mesh with a code from `sovryn invite`: creates this node and
    /// takes the folders and keys the code grants.
    Join {
        /// The code.
        code: String,
        #[command(flatten)]
        node: new_node::NodeArgs,
        /// Store the keys unwrapped, without asking for a passphrase.
        #[arg(long)]
        no_passphrase: bool,
        /// Become a backup node (with `invite --backup`): no storage path,
        /// no key; it keeps the inviter's sealed objects.
        #[arg(long)]
        backup: bool,
    },
    /// Print this node's id (its iroh endpoint id).
    Id,
    /// Print a fresh random passphrase.
    Keygen,
    /// Print the folder key other nodes need to join this mesh (secret!).
    FolderKey,
    /// Open a passphrase-protected key for this login session.
    Unlock,
    /// Forget the key cached by 'sovryn unlock'.
    Lock,
    /// Scan these paths now and record their changes.
    Add {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<String>,
        /// A note stored with the versions.
        #[arg(long, short)]
        message: Option<String>,
    },
    /// Stop keeping a path on this node (history is kept; local files are left alone).
    Remove {
        /// File or directory.
        path: String,
        /// Also when nothing is there yet (a path a peer will bring).
        #[arg(long)]
        force: bool,
    },
    /// Keep a path on this node again (undoes 'sovryn remove').
    Keep {
        /// File or directory.
        path: String,
    },
    /// Scan the whole storage path.
    Scan,
    /// List tracked paths.
    Ls {
        /// Directory or file (default: the current directory or root).
        path: Option<String>,
        /// Mode, size, version, time and author.
        #[arg(long, short)]
        long: bool,
    },
    /// Print a file's content.
    Cat {
        /// The file.
        path: String,
        /// A past version (v1, v2, …).
        #[arg(long)]
        version: Option<String>,
    },
    /// List a path's versions, newest first.
    Versions {
        /// The file.
        path: String,
    },
    /// Bring back an old version as a new one.
    Restore {
        /// The file.
        path: String,
        /// The version to restore (v1, v2, …), as in `sovryn restore PATH v2`.
        #[arg(value_name = "VERSION", required_unless_present = "version")]
        at: Option<String>,
        /// The same, as an option.
        #[arg(long, conflicts_with = "at")]
        version: Option<String>,
    },
    /// Show the changes between two versions (V2 defaults to the current file).
    Diff {
        /// The file.
        path: String,
        /// From this version.
        v1: String,
        /// To this version.
        v2: Option<String>,
    },
    /// Full-text search of text files.
    Search {
        /// Words to find.
        query: String,
        /// Only under this path.
        #[arg(long)]
        path: Option<String>,
        /// Most results.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The node's state.
    Status,
    /// Files, versions, bytes, dedup and compression.
    Stats,
    /// Read or change config.toml.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Check every chunk and every version.
    Verify,
    /// Prune old versions (retention policy) and free unreferenced chunks.
    Gc,
    #[command(flatten)]
    Node(node_cmd::NodeCommand),
    /// Test the network to peers through the running node: reachability, RTT, throughput.
    TestNetwork {
        /// Only this peer (endpoint id or name); default: every configured peer.
        peer: Option<String>,
        /// MiB downloaded from each peer to measure throughput (at most 64).
        #[arg(long, default_value_t = 16)]
        probe_mib: u64,
    },
    /// The node's folders: list, add, remove, share, unshare.
    Folders {
        #[command(subcommand)]
        action: folders_cmd::FoldersAction,
    },
    /// Run the node in the background: start, stop, status.
    Daemon {
        #[command(subcommand)]
        action: daemon_cmd::DaemonAction,
    },
    /// Serve MCP to AI agents and manage their tokens.
    Mcp {
        #[command(subcommand)]
        action: mcp_cmd::McpCommand,
    },
}

/// `sovryn config` actions.
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print a value.
    Get {
        /// Dotted key, e.g. mcp.port.
        key: String,
    },
    /// Set a value.
    Set {
        /// Dotted key.
        key: String,
        /// New value (TOML literal, or a bare string).
        value: String,
    },
}

/// Default filter of the log file `sovryn up` writes (`$SOVRYN_FILE_LOG` overrides).
const FILE_LOG: &str =
    "warn,sovryn=info,sovryn_cli=info,sovryn_daemon=info,sovryn_engine=info,sovryn_net=info,sovryn_remote=info,sovryn_store=info";

/// Logs to stderr (filter `--log`); `sovryn up` also appends JSON lines to
/// HOME/sovryn.log (read by `sovryn logs`).
fn init_logging(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn")));
    let file = matches!(cli.command, Command::Node(node_cmd::NodeCommand::Up { .. }))
        .then(|| sovryn_engine::Home::locate(cli.home.clone()).ok())
        .flatten()
        .filter(|h| h.exists())
        .and_then(|h| match node_cmd::open_log_file(&h) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("warning: no log file: {e:#}");
                None
            }
        })
        .map(|f| {
            let filter = std::env::var("SOVRYN_FILE_LOG").unwrap_or_else(|_| FILE_LOG.into());
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .with_filter(
                    EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(FILE_LOG)),
                )
        });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
}

/// Commands that print and exit die quietly when their reader goes away
/// (`sovryn ls | head`), like every Unix tool, instead of panicking on a
/// broken pipe. Servers keep SIGPIPE ignored: a client that disconnects
/// must never kill the node.
fn quiet_on_closed_pipe(cli: &Cli) {
    let serves = matches!(
        cli.command,
        Command::Node(node_cmd::NodeCommand::Up { .. })
            | Command::Mcp { .. }
            | Command::Daemon { .. }
    );
    if !serves {
        // SAFETY: called once at startup, before any thread is spawned.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    quiet_on_closed_pipe(&cli);
    init_logging(&cli);
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
