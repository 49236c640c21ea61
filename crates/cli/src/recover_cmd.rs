//! Recovery of a lost device (`sovryn recover`), and what the vault keeps
//! for it (`record_for_recovery`, at `vault init` and `vault unlock`).
//!
//! The vault holds every folder's key and the secret of a recovery
//! identity that each member lists in its signed device list. A new
//! machine fetches the sealed vault from any member, opens it with the
//! vault passphrase, and becomes a node under the recovery identity,
//! which every member already trusts; files and history then come from
//! the members. It immediately makes a fresh recovery identity for the
//! next time (recorded in the vault, added to the device lists).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::devices::{DeviceList, DeviceOp, OpKind, Role};
use sovryn_engine::folders::{self, FolderName};
use sovryn_engine::identity::{PublicKey, SecretKey};
use sovryn_engine::vault::{self, VaultKey, FOLDERS_ENTRY, RECOVERY_ENTRY};
use sovryn_engine::Home;
use sovryn_store::MasterKey;

use crate::commands::Ctx;
use crate::new_node::NodeArgs;
use crate::output;

/// A folder as the vault keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct VaultFolder {
    name: String,
    key: String,
}

/// Records this node's folders (with their keys) in the open vault, and a
/// recovery identity (made when there is none) that every folder's device
/// list trusts.
pub fn record_for_recovery(ctx: &Ctx, node_key: &MasterKey) -> Result<()> {
    let home = &ctx.home;
    let mut kept = Vec::new();
    let mut ids = Vec::new();
    for f in folders::list(home)? {
        let key = if f.name.is_default() {
            node_key.clone()
        } else {
            folders::open_key(&f.home, node_key)?
        };
        ids.push((f.home.clone(), key.derive().folder_id.clone()));
        kept.push(VaultFolder {
            name: f.name.as_str().to_owned(),
            key: key.to_hex(),
        });
    }
    let secret = sovryn_engine::identity::load(&home.identity())?;
    let by = sovryn_engine::identity::short_id(&secret.public());
    let wrap = vault::KeyWrap::of(&node_key.derive());
    let recovery = vault::update(home, &wrap, |c| {
        // Folders other devices recorded stay; a name already there keeps
        // its key (this device's own default folder may differ from the
        // mesh's: the first recorded is the mesh's).
        let mut all: Vec<VaultFolder> = c
            .entries
            .get(FOLDERS_ENTRY)
            .and_then(|e| serde_json::from_value(e.value.clone()).ok())
            .unwrap_or_default();
        let before = all.len();
        for f in kept {
            if !all.iter().any(|a| a.name == f.name) {
                all.push(f);
            }
        }
        if all.len() != before || before == 0 {
            c.set(
                FOLDERS_ENTRY,
                serde_json::to_value(&all).unwrap_or_default(),
                &by,
            )?;
        }
        let existing = c
            .entries
            .get(RECOVERY_ENTRY)
            .and_then(|e| e.value["secret"].as_str())
            .and_then(|s| s.parse::<SecretKey>().ok());
        Ok(match existing {
            Some(k) => k,
            None => {
                let k = SecretKey::generate();
                c.set(
                    RECOVERY_ENTRY,
                    json!({"secret": hex::encode(k.to_bytes())}),
                    &by,
                )?;
                k
            }
        })
    })?;
    for (folder_home, folder_id) in ids {
        vouch_for_recovery(&folder_home, &folder_id, &secret, &recovery.public())?;
    }
    Ok(())
}

/// Adds `recovery` to a folder's device list, signed by `secret`, unless
/// this node did already.
fn vouch_for_recovery(
    home: &Home,
    folder_id: &str,
    secret: &SecretKey,
    recovery: &PublicKey,
) -> Result<()> {
    let (me, device) = (secret.public().to_string(), recovery.to_string());
    DeviceList::update(home, |l| {
        let have = l
            .ops
            .iter()
            .any(|o| o.by == me && o.device == device && o.kind == OpKind::Add);
        if !have {
            l.ops.push(DeviceOp::new(
                folder_id,
                secret,
                OpKind::Add,
                recovery,
                Some("recovery".into()),
                Role::Member,
                Vec::new(),
            ));
        }
        Ok(())
    })?;
    Ok(())
}

/// What the vault gave: its contents and key, the folders' keys, and the
/// recovery identity the new node takes.
struct Opened {
    key: VaultKey,
    contents: vault::Contents,
    keys: Vec<(FolderName, MasterKey)>,
    /// The default folder's key, which is the node's.
    node_key: MasterKey,
    identity: SecretKey,
}

/// Opens a sealed vault with the passphrase; nothing is written.
fn open_vault(pass: &str, envelope: &vault::Envelope) -> Result<Opened> {
    let key = VaultKey::for_envelope(pass, envelope)?;
    let contents = key.open(envelope)?;
    let kept: Vec<VaultFolder> = contents
        .entries
        .get(FOLDERS_ENTRY)
        .map(|e| serde_json::from_value(e.value.clone()))
        .transpose()
        .context("the vault's folder list is damaged")?
        .context("the vault lists no folders (made before `vault init` recorded them)")?;
    let identity: SecretKey = contents
        .entries
        .get(RECOVERY_ENTRY)
        .and_then(|e| e.value["secret"].as_str())
        .and_then(|s| s.parse().ok())
        .context("the vault holds no recovery identity")?;
    let mut keys = Vec::new();
    for f in &kept {
        keys.push((
            FolderName::parse(&f.name)?,
            MasterKey::from_hex(&f.key).context("the vault holds a bad folder key")?,
        ));
    }
    let node_key = keys
        .iter()
        .find(|(n, _)| n.is_default())
        .map(|(_, k)| k.clone())
        .context("the vault has no default folder")?;
    Ok(Opened {
        key,
        contents,
        keys,
        node_key,
        identity,
    })
}

/// `sovryn recover`: rebuilds a lost device from `from`: `ID@HOST:PORT`
/// of a member, or backups (buckets, directories, backup nodes) taken in
/// turn. Nothing is written
/// before the vault opened.
pub fn recover(
    ctx: &Ctx,
    from: &[String],
    bucket: crate::remotes_cmd::BucketArgs,
    node: NodeArgs,
) -> Result<()> {
    node.check(ctx)?;
    enum Source {
        Member(PublicKey, std::net::SocketAddr),
        Buckets(Vec<sovryn_remote::Bucket>),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let mut buckets = Vec::new();
    let mut member = None;
    for from in from {
        if from.starts_with("s3://") || from.starts_with("file://") {
            buckets.push({
                let spec = bucket.spec("recover", from, Vec::new())?;
                spec.open(&bucket.credentials(&spec)?)?
            });
            continue;
        }
        let (id, addr) = from.split_once('@').with_context(|| {
            format!("--from {from}: give ID@HOST:PORT (a member or a backup node), s3://BUCKET/PREFIX or file:///DIR")
        })?;
        let id: PublicKey = id.parse().context("--from: not a node id")?;
        let sock: std::net::SocketAddr = addr.parse().context("--from: not HOST:PORT")?;
        // A backup node answers the backup protocol (a member refuses it):
        // read from it as from a bucket, with a throwaway identity.
        match runtime.block_on(backup_peer(id, sock)) {
            Some(b) => buckets.push(b),
            None => member = Some((id, sock)),
        }
    }
    let source = match member {
        Some(_) if from.len() > 1 => bail!(
            "several --from are backups to take turns on (buckets, directories, backup nodes); a member is given alone"
        ),
        Some((id, sock)) => Source::Member(id, sock),
        None => Source::Buckets(buckets),
    };
    let pass = crate::unlock::passphrase(ctx.passphrase_file.as_deref(), "vault passphrase: ")?
        .context("the vault passphrase is needed: --passphrase-file FILE, or run on a terminal")?;
    let started = Instant::now();
    let envelope = match &source {
        Source::Member(id, sock) => runtime.block_on(sovryn_net::recovery::fetch(*id, *sock))?,
        Source::Buckets(all) => {
            let mut found = None;
            for b in all {
                match runtime.block_on(sovryn_remote::fetch_vault(b)) {
                    Ok(Some(bytes)) => {
                        found = Some(bytes);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("{}: {e}", b.url()),
                }
            }
            let bytes = found.context(
                "no --from holds a vault (push to it from a node with `vault init` done)",
            )?;
            serde_json::from_slice(&bytes).context("the backup's vault is damaged")?
        }
    };
    let Opened {
        key,
        mut contents,
        keys,
        node_key,
        identity,
    } = open_vault(&pass, &envelope)?;
    let peer = match &source {
        Source::Member(id, sock) => Some(PeerConfig::checked(
            id,
            vec![sock.to_string()],
            None,
            false,
            &[],
        )?),
        Source::Buckets(_) => None,
    };
    let created = node.create(ctx, None, identity.clone(), keys, peer)?;
    // From here a failure (a bucket object that does not open) removes the
    // node again: nothing half-made is left to be taken for a recovery.
    let finished = (|| -> Result<Vec<(String, Restored)>> {
        // The vault comes along, and the identity just used is replaced by
        // a fresh one for the next recovery.
        let next = SecretKey::generate();
        let by = sovryn_engine::identity::short_id(&identity.public());
        contents.set(
            RECOVERY_ENTRY,
            json!({"secret": hex::encode(next.to_bytes())}),
            &by,
        )?;
        let wrap = vault::KeyWrap::of(&node_key.derive());
        vault::install(&ctx.home, &wrap, &key, Some(&key.seal(&contents)?))?;
        let mut restored = Vec::new();
        for f in &created.folders {
            let k = crate::unlock::master_key(&f.home, None)?;
            if let Source::Buckets(all) = &source {
                let report = restore_files(&runtime, all, f, &k)
                    .with_context(|| format!("folder {}", f.name))?;
                restored.push((f.name.clone(), report));
            }
            vouch_for_recovery(&f.home, &k.derive().folder_id, &identity, &next.public())
                .with_context(|| format!("folder {}", f.name))?;
        }
        Ok(restored)
    })();
    let restored = match finished {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&ctx.home.dir);
            return Err(e);
        }
    };
    if let Source::Buckets(all) = &source {
        for b in all {
            runtime.block_on(b.close());
        }
    }
    let took = started.elapsed();
    let from_name = match &source {
        Source::Member(id, _) => id.fmt_short().to_string(),
        Source::Buckets(all) => all
            .iter()
            .map(|b| b.url().to_owned())
            .collect::<Vec<_>>()
            .join(", "),
    };
    if ctx.json {
        return output::json(&json!({
            "node_id": created.node_id.to_string(),
            "from": match &source { Source::Member(id, _) => id.to_string(), Source::Buckets(_) => from_name.clone() },
            "folders": created.folders.iter().map(|f| {
                let r = restored.iter().find(|(n, _)| n == &f.name).map(|(_, r)| r);
                json!({"name": f.name, "storage_path": f.path, "restored": r})
            }).collect::<Vec<_>>(),
            "seconds": took.as_secs_f64(),
        }));
    }
    println!(
        "Rebuilt from {from_name} in {:.1} s: {} folder(s), settings from the vault.",
        took.as_secs_f64(),
        created.folders.len()
    );
    for f in &created.folders {
        println!("  folder {}: {}", f.name, f.path.display());
    }
    match source {
        Source::Member(..) => {
            println!("Start it with: sovryn up (files and history come from the members)")
        }
        Source::Buckets(_) => println!("Files and history restored; start it with: sovryn up"),
    }
    Ok(())
}

/// `id` at `sock` as a backup node holding a vault, if it is one.
async fn backup_peer(id: PublicKey, sock: std::net::SocketAddr) -> Option<sovryn_remote::Bucket> {
    let spec = sovryn_remote::RemoteSpec::new("recover", format!("peer://{id}@{sock}"));
    let bucket = sovryn_net::backup::open_remote(
        &spec,
        &sovryn_remote::Credentials::none(),
        SecretKey::generate(),
    )
    .await
    .ok()?;
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sovryn_remote::fetch_vault(&bucket),
    );
    match probe.await {
        Ok(Ok(Some(_))) => Some(bucket),
        _ => {
            bucket.close().await;
            None
        }
    }
}

/// A restored folder, as `recover --json` reports it.
#[derive(Debug, Serialize)]
struct Restored {
    #[serde(flatten)]
    bucket: sovryn_remote::RestoreReport,
    /// Files written into the storage path.
    files: u64,
}

/// Rebuilds folder `f`'s store from the bucket, then writes its files.
fn restore_files(
    runtime: &tokio::runtime::Runtime,
    sources: &[sovryn_remote::Bucket],
    f: &crate::new_node::Placed,
    key: &MasterKey,
) -> Result<Restored> {
    let (store, report) =
        runtime.block_on(sovryn_remote::restore_folder(sources, &f.home.dir, key))?;
    drop(store);
    let mut node = sovryn_engine::Node::open(f.home.clone(), key, sovryn_store::Access::ReadWrite)?;
    let files = node.materialize_all()?;
    Ok(Restored {
        bucket: report,
        files,
    })
}
