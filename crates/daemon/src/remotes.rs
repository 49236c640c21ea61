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
/// looked (`crate::catch_up`, while some member is offline), then pushes
/// the folder (and, on the node's daemon, the vault) when either changed
/// since `sent`. With neither to do, the remote is not even opened.
async fn keep_one(
    d: &Arc<Daemon>,
    node_home: &sovryn_engine::Home,
    spec: &sovryn_remote::RemoteSpec,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    let state = sovryn_remote::state_dir(&d.home.dir, &spec.name);
    let due = Due::now(d, &state, sent).await?;
    let catch_up = crate::catch_up::someone_away(d);
    if !catch_up && due.is_none() {
        return Ok(());
    }
    let (_, creds) = target::get(&node_home.dir, &spec.name)?;
    let secret = sovryn_engine::identity::load(&node_home.identity())?;
    let bucket = sovryn_net::backup::open_remote(spec, &creds, secret).await?;
    let done = async {
        if catch_up {
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
        }
        // What was taken changed the index: what is due is looked at again.
        match Due::now(d, &state, sent).await? {
            Some(due) => due.push(d, spec, &bucket, &state, sent).await,
            None => Ok(()),
        }
    }
    .await;
    bucket.close().await;
    done
}

/// What a push would send: the folder (its index and device list changed
/// since the last push, or a prune is due) and the node's vault (changed).
struct Due {
    folder: Option<((IndexMarker, blake3::Hash), Vec<u8>)>,
    vault: Option<(Vec<u8>, blake3::Hash)>,
}

impl Due {
    /// What is due now, if anything.
    async fn now(
        d: &Arc<Daemon>,
        state: &std::path::Path,
        sent: &Sent,
    ) -> anyhow::Result<Option<Due>> {
        let home = d.home.clone();
        let ops = tokio::task::spawn_blocking(move || {
            sovryn_engine::devices::DeviceList::load(&home).map(|l| l.ops)
        })
        .await??;
        let ops = serde_json::to_vec(&ops)?;
        let marker = (
            d.shared.with_reader(|s| Ok(s.index_marker()?)).await?,
            blake3::hash(&ops),
        );
        let folder = (sent.folder != Some(marker) || sovryn_remote::push::known(state).prune_due)
            .then_some((marker, ops));
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
        let vault = vault
            .map(|v| {
                let h = blake3::hash(&v);
                (v, h)
            })
            .filter(|(_, h)| sent.vault != Some(*h));
        Ok((folder.is_some() || vault.is_some()).then_some(Due { folder, vault }))
    }

    /// Sends it to `bucket`, and notes in `sent` what went.
    async fn push(
        self,
        d: &Arc<Daemon>,
        spec: &sovryn_remote::RemoteSpec,
        bucket: &sovryn_remote::Bucket,
        state: &std::path::Path,
        sent: &mut Sent,
    ) -> anyhow::Result<()> {
        if let Some((marker, ops)) = self.folder {
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
            sent.folder = Some(marker);
        }
        if let Some((v, hash)) = self.vault {
            if sovryn_remote::push_vault(bucket, &v).await? {
                tracing::info!("remote {}: vault sent", spec.name);
            }
            sent.vault = Some(hash);
        }
        Ok(())
    }
}
