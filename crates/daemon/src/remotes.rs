//! Keeping remote buckets current (`sovryn_remote`): each folder's daemon
//! pushes its folder to every remote that keeps it whenever its index has
//! changed since the last push (looked at every `RemoteSpec::every`), and
//! the node's daemon sends the vault too. A failed push (the bucket down) is
//! logged and tried again next round; a push resumes from what the bucket
//! holds, so nothing is sent twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sovryn_engine::folders;
use sovryn_engine::View;
use sovryn_remote::target;

use crate::Daemon;

/// The daemon's tick: each remote is looked at when its interval passed.
const TICK: Duration = Duration::from_secs(1);

/// Runs for the daemon's life.
pub(crate) async fn keep_current(d: Arc<Daemon>) -> anyhow::Result<()> {
    let node_home = if d.attached.is_some() {
        folders::node_of(&d.home)?
    } else {
        d.home.clone()
    };
    // What each remote last got from here: the index marker, the vault.
    let mut pushed: HashMap<String, String> = HashMap::new();
    let mut looked: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
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
        let name = folders::list(&node_home)
            .ok()
            .and_then(|all| all.into_iter().find(|f| f.home.dir == d.home.dir))
            .map(|f| f.name.as_str().to_owned());
        for spec in specs {
            let keeps = name
                .as_ref()
                .is_some_and(|n| spec.folders.is_empty() || spec.folders.contains(n));
            let due = looked
                .get(&spec.name)
                .is_none_or(|t| t.elapsed() >= spec.every());
            if !keeps || !due {
                continue;
            }
            looked.insert(spec.name.clone(), std::time::Instant::now());
            if let Err(e) = push_one(&d, &node_home, &spec, &mut pushed).await {
                tracing::warn!(
                    "remote {}: {e:#}; trying again in {} s",
                    spec.name,
                    spec.every().as_secs()
                );
            }
        }
    }
}

async fn push_one(
    d: &Arc<Daemon>,
    node_home: &sovryn_engine::Home,
    spec: &sovryn_remote::RemoteSpec,
    pushed: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    // Due when the index or the device list (who may write to a backup
    // peer) changed since the last push.
    let home = d.home.clone();
    let ops = tokio::task::spawn_blocking(move || {
        sovryn_engine::devices::DeviceList::load(&home).map(|l| l.ops)
    })
    .await??;
    let ops = serde_json::to_vec(&ops)?;
    let marker = format!(
        "{}/{}",
        d.shared.with_reader(|s| Ok(s.index_marker()?)).await?,
        blake3::hash(&ops).to_hex()
    );
    let folder_due = pushed.get(&spec.name) != Some(&marker);
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
    let vault_key = format!("{}\0vault", spec.name);
    let vault_hash = vault.as_ref().map(|v| blake3::hash(v).to_hex().to_string());
    let vault_due = vault_hash.is_some() && pushed.get(&vault_key) != vault_hash.as_ref();
    if !folder_due && !vault_due {
        return Ok(());
    }
    let (_, creds) = target::get(&node_home.dir, &spec.name)?;
    let secret = sovryn_engine::identity::load(&node_home.identity())?;
    let bucket = sovryn_net::backup::open_remote(spec, &creds, secret).await?;
    let done = async {
        if folder_due {
            // A backup peer lets write whom the folder's device list names.
            let folder_id = d.shared.folder_id().to_owned();
            bucket.share_device_list(&folder_id, ops.clone()).await?;
            let state = d.home.dir.join("remote-state").join(&spec.name);
            let handle = tokio::runtime::Handle::current();
            let b = bucket.clone();
            let report = d
                .shared
                .with_own_reader(move |r| {
                    handle.block_on(sovryn_remote::push_folder(&b, r.store(), &state))
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
            pushed.insert(spec.name.clone(), marker);
        }
        if let (Some(v), Some(h)) = (vault.as_ref(), vault_hash) {
            if vault_due {
                if sovryn_remote::push_vault(&bucket, v).await? {
                    tracing::info!("remote {}: vault sent", spec.name);
                }
                pushed.insert(vault_key, h);
            }
        }
        anyhow::Ok(())
    }
    .await;
    bucket.close().await;
    done
}
