//! Creating a node from what another node handed over (`join`,
//! `recover`): an identity, folder keys, a member to trust.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sovryn_engine::config::PeerConfig;
use sovryn_engine::folders::{self, FolderName};
use sovryn_engine::identity::{PublicKey, SecretKey};
use sovryn_engine::{Config, Home, InitOptions, Node};
use sovryn_store::MasterKey;

use crate::commands::Ctx;

/// Where and how the new node runs (`--storage-path`, `--node-id`,
/// `--listen`, `--mcp-port`).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The folder to keep in sync (created if missing); a node's other
    /// folders go beside it, under their names.
    /// (Needed, except by a backup node.)
    #[arg(long)]
    pub storage_path: Option<PathBuf>,
    /// Name of this node (default: host name).
    #[arg(long)]
    pub node_id: Option<String>,
    /// UDP address for sync (default 0.0.0.0:7777).
    #[arg(long)]
    pub listen: Option<String>,
    /// Port of the MCP HTTP server (default 8765).
    #[arg(long)]
    pub mcp_port: Option<u16>,
}

/// A folder of the new node.
pub struct Placed {
    /// Its home.
    pub home: Home,
    /// Its name.
    pub name: String,
    /// Its storage path.
    pub path: PathBuf,
}

/// The new node.
pub struct Created {
    /// Its id.
    pub node_id: PublicKey,
    /// The code that opens its key when the passphrase is lost.
    pub recovery_code: Option<String>,
    /// Its folders.
    pub folders: Vec<Placed>,
}

impl NodeArgs {
    /// Refuses what would make the node's creation fail, before a code is
    /// spent or a vault fetched.
    pub(crate) fn check(&self, ctx: &Ctx) -> Result<()> {
        if ctx.home.exists() {
            bail!(
                "a node is already initialised in {}; this creates a new node: use another --home",
                ctx.home.dir.display()
            );
        }
        let storage_path = self.storage()?;
        if storage_path.exists() && !storage_path.is_dir() {
            bail!("{} is not a directory", storage_path.display());
        }
        let storage = std::path::absolute(storage_path)?;
        let home = std::path::absolute(&ctx.home.dir)?;
        if storage.starts_with(&home) || home.starts_with(&storage) {
            bail!("the storage path and the node's home must not hold one another");
        }
        if let Some(l) = &self.listen {
            sovryn_engine::config::check_peer_address(l)
                .with_context(|| format!("--listen {l}"))?;
        }
        Ok(())
    }

    /// The storage path given.
    pub fn storage(&self) -> Result<&std::path::Path> {
        self.storage_path
            .as_deref()
            .context("--storage-path DIR is needed: where the folder's files go")
    }

    /// This node's name.
    pub fn name(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(sovryn_engine::node::hostname)
    }

    /// Creates the node under `identity` with `keys` (the default folder's
    /// at the storage path, or a fresh key when there is none; the others
    /// beside it), trusting `member` (if any) in every folder.
    pub(crate) fn create(
        self,
        ctx: &Ctx,
        passphrase: Option<String>,
        identity: SecretKey,
        keys: Vec<(FolderName, MasterKey)>,
        member: Option<PeerConfig>,
    ) -> Result<Created> {
        // A node half made (a folder that could not be placed) is removed
        // again: the command can be run anew, not refused as "already
        // initialised" with keys missing.
        let created = (move || -> Result<Created> {
            let node_key = keys
                .iter()
                .find(|(n, _)| n.is_default())
                .map(|(_, k)| k.clone())
                .unwrap_or_else(MasterKey::generate);
            let name = self.name();
            let out = Node::init(
                &ctx.home,
                InitOptions {
                    storage_path: self.storage()?.to_owned(),
                    node_name: Some(name),
                    listen: self.listen,
                    mcp_port: self.mcp_port,
                    passphrase,
                    folder_key: Some(node_key.to_hex()),
                    kdf: None,
                    identity: Some(identity),
                },
            )?;
            let mut placed = Vec::new();
            for (name, key) in keys {
                let (home, path) = if name.is_default() {
                    (ctx.home.clone(), out.config.storage_path.clone())
                } else {
                    let path = out
                        .config
                        .storage_path
                        .parent()
                        .map_or_else(|| PathBuf::from(name.as_str()), |p| p.join(name.as_str()));
                    let created = folders::create(&ctx.home, &name, &path, &node_key, Some(key))?;
                    (folders::folder_home(&ctx.home, &name), created.storage_path)
                };
                if let Some(peer) = member.clone() {
                    Config::update(&home, |c| Ok(c.upsert_peer(peer)))?;
                }
                placed.push(Placed {
                    home,
                    name: name.as_str().to_owned(),
                    path,
                });
            }
            Ok(Created {
                node_id: out.node_id,
                recovery_code: out.recovery_code,
                folders: placed,
            })
        })();
        if created.is_err() {
            let _ = std::fs::remove_dir_all(&ctx.home.dir);
        }
        created
    }
}

/// Where folder `name` goes beside a folder kept at `first`: in the same
/// parent directory, under its name.
pub(crate) fn beside(first: &std::path::Path, name: &str) -> PathBuf {
    first
        .parent()
        .map_or_else(|| PathBuf::from(name), |p| p.join(name))
}
