//! `sovryn remotes`: S3-compatible buckets that keep this node's folders
//! sealed (`sovryn_remote`). `sync` pushes now, in this process: it reads
//! the stores through read-only handles, so it works beside a running node.

use anyhow::{bail, Context, Result};
use serde_json::json;
use sovryn_engine::devices::DeviceList;
use sovryn_engine::folders;
use sovryn_remote::target;
use sovryn_store::{Access, Store};

use crate::commands::Ctx;
use crate::output;

/// `sovryn remotes ...`.
#[derive(clap::Subcommand, Debug)]
pub enum RemotesAction {
    /// Add a bucket as a backup target of this node's folders (`-F NAME`,
    /// once per folder; default: every folder) and of its vault.
    Add {
        /// Its name here.
        name: String,
        /// `s3://BUCKET/PREFIX`, `file:///DIR` (a mounted disk or share), or
        /// `peer://ID@HOST:PORT` (a backup node; `invite --backup` adds it).
        url: String,
        #[command(flatten)]
        bucket: BucketArgs,
    },
    /// The remotes.
    List,
    /// What each remote holds of each folder, as this node last saw it.
    Status {
        /// One remote (default: all).
        name: Option<String>,
    },
    /// Push now: what the bucket lacks of each folder, an index snapshot,
    /// and the vault.
    Sync {
        /// One remote (default: all).
        name: Option<String>,
    },
    /// Forget a remote (what the bucket holds stays there).
    Remove {
        /// Its name.
        name: String,
    },
}

/// Where a remote's S3 bucket is and how to sign in, and how to push to a
/// remote (`remotes add`, `recover --from s3://…`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BucketArgs {
    /// The S3 endpoint (e.g. http://127.0.0.1:9000); default: AWS.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The bucket's region (default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// A file holding the access key id.
    #[arg(long)]
    pub access_key_file: Option<std::path::PathBuf>,
    /// A file holding the secret access key.
    #[arg(long)]
    pub secret_key_file: Option<std::path::PathBuf>,
    /// Upload at most this many KiB/s (`remotes add`).
    #[arg(long)]
    pub max_kib_per_sec: Option<u64>,
    /// How often a running node pushes what changed, in seconds
    /// (`remotes add`; default 15).
    #[arg(long, value_name = "SECS")]
    pub every: Option<u64>,
}

impl BucketArgs {
    /// Remote `name` at `url` as these options describe it.
    pub fn spec(
        &self,
        name: &str,
        url: &str,
        folders: Vec<String>,
    ) -> Result<sovryn_remote::RemoteSpec> {
        Ok(sovryn_remote::RemoteSpec {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            folders,
            max_kib_per_sec: self.max_kib_per_sec,
            every_secs: self.every,
            ..sovryn_remote::RemoteSpec::new(name, url.to_owned())
        }
        .checked()?)
    }

    /// The key pair from the two files (none for a remote that needs none).
    pub fn credentials(
        &self,
        spec: &sovryn_remote::RemoteSpec,
    ) -> Result<sovryn_remote::Credentials> {
        if !spec.needs_keys() {
            return Ok(sovryn_remote::Credentials::none());
        }
        let (Some(a), Some(s)) = (&self.access_key_file, &self.secret_key_file) else {
            bail!("a bucket needs --access-key-file FILE and --secret-key-file FILE");
        };
        Ok(sovryn_remote::Credentials::from_files(a, s)?)
    }
}

/// Runs a `remotes` action; `chosen` are the folders given with `-F`.
pub fn remotes(ctx: &Ctx, action: RemotesAction, chosen: &[String]) -> Result<()> {
    let home = &ctx.home.dir;
    match action {
        RemotesAction::Add { name, url, bucket } => {
            for f in chosen {
                folders::find(&ctx.home, f)?;
            }
            let spec = bucket.spec(&name, &url, chosen.to_vec())?;
            let creds = bucket.credentials(&spec)?;
            // Refused before anything is kept when the bucket cannot be reached.
            let runtime = tokio::runtime::Runtime::new()?;
            let opened = runtime.block_on(open(ctx, &spec, &creds))?;
            let reached = runtime.block_on(sovryn_remote::fetch_vault(&opened));
            runtime.block_on(opened.close());
            reached.with_context(|| format!("cannot reach {url}"))?;
            target::add(home, spec, &creds)?;
            if ctx.json {
                return output::json(&json!({"ok": true, "added": name}));
            }
            println!("Remote {name} added: {url}. Push now with: sovryn remotes sync {name}");
            Ok(())
        }
        RemotesAction::List => {
            let specs = target::load(home)?;
            if ctx.json {
                return output::json(&json!({"remotes": specs}));
            }
            if specs.is_empty() {
                println!(
                    "No remotes (add one with `sovryn remotes add NAME s3://BUCKET/PREFIX ...`)."
                );
            }
            for s in specs {
                let folders = if s.folders.is_empty() {
                    "every folder".to_owned()
                } else {
                    s.folders.join(", ")
                };
                let place = if s.peer().is_some() {
                    if s.via_list {
                        "backup node (device list)"
                    } else {
                        "backup node"
                    }
                } else {
                    s.endpoint.as_deref().unwrap_or("aws")
                };
                println!("{}\t{}\t{place}\t{folders}", s.name, s.url);
            }
            Ok(())
        }
        RemotesAction::Status { name } => status(ctx, name.as_deref()),
        RemotesAction::Sync { name } => sync(ctx, name.as_deref()),
        RemotesAction::Remove { name } => {
            if let Some(listed) = target::load(home)?
                .into_iter()
                .find(|s| s.name == name && s.via_list)
            {
                let id = listed.peer().map(|(id, _)| id).unwrap_or_default();
                anyhow::bail!(
                    "remote '{name}' is a backup node of the folder's device list; every member \
                     keeps the folder there until it is revoked: `sovryn devices revoke {id}`"
                );
            }
            target::remove(home, &name)?;
            for f in folders::list(&ctx.home)? {
                let dir = state_dir(&f, &name);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
                }
            }
            if ctx.json {
                return output::json(&json!({"ok": true, "removed": name}));
            }
            println!("Remote {name} removed (what the bucket holds stays there).");
            Ok(())
        }
    }
}

/// Opens a remote; a backup peer is dialled as this node.
async fn open(
    ctx: &Ctx,
    spec: &sovryn_remote::RemoteSpec,
    creds: &sovryn_remote::Credentials,
) -> Result<sovryn_remote::Bucket> {
    let secret = sovryn_engine::identity::load(&ctx.home.identity())?;
    Ok(sovryn_net::backup::open_remote(spec, creds, secret).await?)
}

/// The remotes a command works on.
fn chosen_remotes(ctx: &Ctx, name: Option<&str>) -> Result<Vec<sovryn_remote::RemoteSpec>> {
    let all = target::load(&ctx.home.dir)?;
    match name {
        Some(n) => Ok(vec![target::get(&ctx.home.dir, n)?.0]),
        None if all.is_empty() => bail!("no remotes (add one with `sovryn remotes add`)"),
        None => Ok(all),
    }
}

/// The folders a remote keeps: (name, home).
fn kept_folders(ctx: &Ctx, spec: &sovryn_remote::RemoteSpec) -> Result<Vec<folders::Folder>> {
    let all = folders::list(&ctx.home)?;
    if spec.folders.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in &spec.folders {
        match all.iter().find(|f| f.name.as_str() == name) {
            Some(f) => out.push(f.clone()),
            None => bail!(
                "remote {} keeps folder '{name}', which this node no longer has",
                spec.name
            ),
        }
    }
    Ok(out)
}

/// Where this node keeps what it knows of remote `name`'s copy of a folder.
fn state_dir(folder: &folders::Folder, name: &str) -> std::path::PathBuf {
    sovryn_remote::state_dir(&folder.home.dir, name)
}

fn sync(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut out = Vec::new();
    for spec in chosen_remotes(ctx, name)? {
        let (_, creds) = target::get(&ctx.home.dir, &spec.name)?;
        let bucket = runtime.block_on(open(ctx, &spec, &creds))?;
        let mut pushed = Vec::new();
        for f in kept_folders(ctx, &spec)? {
            let key = crate::unlock::master_key(&f.home, ctx.passphrase_file.as_deref())?;
            let store = Store::open(&f.home.dir, &key, Access::ReadOnly)?;
            let ops = serde_json::to_vec(&DeviceList::load(&f.home)?.ops)?;
            let report = runtime
                .block_on(sovryn_remote::push_folder(
                    &bucket,
                    &store,
                    &state_dir(&f, &spec.name),
                    ops,
                ))
                .with_context(|| format!("pushing folder {} to {}", f.name, spec.url))?;
            if !ctx.json {
                println!(
                    "{} → {}: {} chunk(s) in {} pack(s), {} already there, {} bytes, snapshot {}, {:.2} s",
                    f.name,
                    spec.name,
                    report.chunks,
                    report.packs,
                    report.chunks_present,
                    report.bytes,
                    report.snapshot.map_or("unchanged".to_owned(), |c| format!("#{c}")),
                    report.seconds
                );
            }
            pushed.push(json!({"folder": f.name.as_str(), "report": report}));
        }
        let vault = match sovryn_engine::vault::load_envelope(&ctx.home)? {
            Some(envelope) => {
                let bytes = serde_json::to_vec(&envelope)?;
                runtime.block_on(sovryn_remote::push_vault(&bucket, &bytes))?
            }
            None => false,
        };
        runtime.block_on(bucket.close());
        out.push(json!({"remote": spec.name, "folders": pushed, "vault_sent": vault}));
    }
    if ctx.json {
        return output::json(&json!({"ok": true, "pushed": out}));
    }
    Ok(())
}

fn status(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let mut out = Vec::new();
    for spec in chosen_remotes(ctx, name)? {
        let mut folders_out = Vec::new();
        for f in kept_folders(ctx, &spec)? {
            let key = crate::unlock::master_key(&f.home, ctx.passphrase_file.as_deref())?;
            let store = Store::open(&f.home.dir, &key, Access::ReadOnly)?;
            let known = sovryn_remote::push::known(&state_dir(&f, &spec.name));
            let local = store.chunk_list()?;
            let missing = local.iter().filter(|id| !known.chunks.contains(id)).count();
            let seq = store.sequence()?;
            folders_out.push(json!({
                "folder": f.name.as_str(),
                "chunks": local.len(),
                "chunks_not_pushed": missing,
                "packs": known.packs,
                "index_sequence": seq,
                "snapshot_sequence": known.snapshot_seq,
                "up_to_date": missing == 0 && known.snapshot_seq == Some(seq),
            }));
        }
        out.push(json!({"remote": spec.name, "url": spec.url, "folders": folders_out}));
    }
    if ctx.json {
        return output::json(&json!({"remotes": out}));
    }
    for r in &out {
        println!(
            "{} ({})",
            r["remote"].as_str().unwrap_or(""),
            r["url"].as_str().unwrap_or("")
        );
        for f in r["folders"].as_array().into_iter().flatten() {
            println!(
                "  {}: {} of {} chunk(s) not pushed, {} pack(s); {}",
                f["folder"].as_str().unwrap_or(""),
                f["chunks_not_pushed"],
                f["chunks"],
                f["packs"],
                if f["up_to_date"] == true {
                    "up to date"
                } else {
                    "behind: run `sovryn remotes sync`"
                }
            );
        }
    }
    Ok(())
}
