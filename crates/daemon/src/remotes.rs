//! Keeping remote buckets current (`sovryn_remote`): each folder's daemon
//! takes what other members pushed there while one of them is offline
//! (`crate::catch_up`), then pushes its folder to every remote that keeps
//! it whenever its index has changed since the last push (looked at every
//! `RemoteSpec::every`); the node's daemon sends the vault too. The backup
//! nodes a folder's signed device list names are remotes of every member
//! ([`follow_device_list`]). A failed round (the bucket down) is logged and
//! tried again next round; a push resumes from what the bucket holds, so
//! nothing is sent twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sovryn_engine::folders;
use sovryn_engine::View;
use sovryn_remote::target;
use sovryn_store::IndexMarker;

use crate::Daemon;

/// The daemon's tick: each remote is looked at when its interval passed.
const TICK: Duration = Duration::from_secs(1);

/// What a remote last got from this daemon, and when it was looked at.
#[derive(Default)]
struct Sent {
    /// The index and device list the last push of the folder carried.
    folder: Option<(IndexMarker, blake3::Hash)>,
    /// The vault the last push carried.
    vault: Option<blake3::Hash>,
    looked: Option<Instant>,
}

/// Runs for the daemon's life.
pub(crate) async fn keep_current(d: Arc<Daemon>) -> anyhow::Result<()> {
    let node_home = if d.attached.is_some() {
        folders::node_of(&d.home)?
    } else {
        d.home.clone()
    };
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut followed: Option<blake3::Hash> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let name = folders::list(&node_home)
            .ok()
            .and_then(|all| all.into_iter().find(|f| f.home.dir == d.home.dir))
            .map(|f| f.name.as_str().to_owned());
        if let Some(name) = &name {
            if let Err(e) = follow_device_list(&d, &node_home, name, &mut followed).await {
                tracing::warn!("remotes: following the device list: {e:#}");
            }
        }
        let specs = match target::load(&node_home.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("remotes: {e}");
                continue;
            }
        };
        if specs.is_empty() {
            continue;
        }
        for spec in specs {
            let keeps = name
                .as_ref()
                .is_some_and(|n| spec.folders.is_empty() || spec.folders.contains(n));
            let state = sent.entry(spec.name.clone()).or_default();
            let due = state.looked.is_none_or(|t| t.elapsed() >= spec.every());
            if !keeps || !due {
                continue;
            }
            state.looked = Some(Instant::now());
            if let Err(e) = keep_one(&d, &node_home, &spec, state).await {
                tracing::warn!(
                    "remote {}: {e:#}; trying again in {} s",
                    spec.name,
                    spec.every().as_secs()
                );
            }
        }
    }
}

/// The backup nodes the folder's device list names become remotes keeping
/// the folder (and a revoked one keeps it no more), whichever member
/// invited them: every member pushes to them. Looked at when the list
/// changed since `followed`.
async fn follow_device_list(
    d: &Arc<Daemon>,
    node_home: &sovryn_engine::Home,
    folder: &str,
    followed: &mut Option<blake3::Hash>,
) -> anyhow::Result<()> {
    let (home, node_dir, folder, me) = (
        d.home.clone(),
        node_home.dir.clone(),
        folder.to_owned(),
        d.net.id(),
    );
    let seen = *followed;
    let now = tokio::task::spawn_blocking(move || -> anyhow::Result<blake3::Hash> {
        let (hash, listed) = listed_backups(&home, &me)?;
        if seen != Some(hash) && target::follow_listed_backups(&node_dir, &folder, &listed)? {
            tracing::info!(
                "remotes: folder {folder} is kept by {} backup node(s) of its device list",
                listed.len()
            );
        }
        Ok(hash)
    })
    .await??;
    *followed = Some(now);
    Ok(())
}

/// The backup nodes the device list of the folder in `home` names (not
/// revoked, with an address), and a hash of what they follow from.
pub(crate) fn listed_backups(
    home: &sovryn_engine::Home,
    me: &sovryn_engine::identity::PublicKey,
) -> anyhow::Result<(blake3::Hash, Vec<target::ListedBackup>)> {
    let list = sovryn_engine::devices::DeviceList::load(home)?;
    let peers = sovryn_engine::Config::load(home)?.peers;
    let hash = blake3::hash(&serde_json::to_vec(&(&list.ops, &peers))?);
    let members = list.members(&sovryn_engine::devices::signing_roots(me, &peers));
    let listed = members
        .backups
        .values()
        .filter_map(|op| {
            let address = op.addresses.iter().find_map(|a| a.parse().ok())?;
            Some(target::ListedBackup {
                id: op.device.clone(),
                address,
            })
        })
        .collect();
    Ok((hash, listed))
}

/// Takes from `spec` what other members pushed there since this node last
/// looked (`crate::catch_up`), then pushes the folder (and, on the node's
/// daemon, the vault) when either changed since `sent`.
async fn keep_one(
    d: &Arc<Daemon>,
    node_home: &sovryn_engine::Home,
    spec: &sovryn_remote::RemoteSpec,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    let (_, creds) = target::get(&node_home.dir, &spec.name)?;
    let secret = sovryn_engine::identity::load(&node_home.identity())?;
    let bucket = sovryn_net::backup::open_remote(spec, &creds, secret).await?;
    let state = sovryn_remote::state_dir(&d.home.dir, &spec.name);
    let done = async {
        let caught = crate::catch_up::take_foreign_states(d, spec, &bucket, &state).await?;
        if caught.snapshots > 0 {
            tracing::info!(
                "remote {}: took {} other member snapshot(s): {} path(s) changed, {} chunk(s) fetched",
                spec.name,
                caught.snapshots,
                caught.changed,
                caught.chunks
            );
        }
        push_changes(d, spec, &bucket, &state, sent).await
    }
    .await;
    bucket.close().await;
    done
}

/// Pushes the folder (and, on the node's daemon, the vault) to `bucket`
/// when either changed since `sent`.
async fn push_changes(
    d: &Arc<Daemon>,
    spec: &sovryn_remote::RemoteSpec,
    bucket: &sovryn_remote::Bucket,
    state: &std::path::Path,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    let home = d.home.clone();
    let ops = tokio::task::spawn_blocking(move || {
        sovryn_engine::devices::DeviceList::load(&home).map(|l| l.ops)
    })
    .await??;
    let ops = serde_json::to_vec(&ops)?;
    let folder = (
        d.shared.with_reader(|s| Ok(s.index_marker()?)).await?,
        blake3::hash(&ops),
    );
    let folder_due = sent.folder != Some(folder) || sovryn_remote::push::known(state).prune_due;
    // The vault is the node's: its daemon sends it, when it changed.
    let vault = if d.attached.is_none() {
        let home = d.home.clone();
        tokio::task::spawn_blocking(move || sovryn_engine::vault::load_envelope(&home))
            .await??
            .map(|e| serde_json::to_vec(&e))
            .transpose()?
    } else {
        None
    };
    let vault_hash = vault.as_deref().map(blake3::hash);
    let vault_due = vault_hash.is_some() && sent.vault != vault_hash;
    if !folder_due && !vault_due {
        return Ok(());
    }
    if folder_due {
        let handle = tokio::runtime::Handle::current();
        let (b, state) = (bucket.clone(), state.to_owned());
        let report = d
            .shared
            .with_own_reader(move |r| {
                handle.block_on(sovryn_remote::push_folder(&b, r.store(), &state, ops))
            })
            .await??;
        tracing::info!(
            "remote {}: {} chunk(s) in {} pack(s) sent, {} pruned, snapshot {:?}, {:.2} s",
            spec.name,
            report.chunks,
            report.packs,
            report.pruned_chunks,
            report.snapshot,
            report.seconds
        );
        sent.folder = Some(folder);
    }
    if let (Some(v), true) = (vault.as_ref(), vault_due) {
        if sovryn_remote::push_vault(bucket, v).await? {
            tracing::info!("remote {}: vault sent", spec.name);
        }
        sent.vault = vault_hash;
    }
    Ok(())
}
