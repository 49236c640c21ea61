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

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sovryn_engine::config::PeerConfig;
use sovryn_engine::devices::{DeviceList, DeviceOp, OpKind};
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
                false,
                Vec::new(),
            ));
        }
        Ok(())
    })?;
    Ok(())
}

/// `sovryn recover`: rebuilds a lost device from `from` (`ID@HOST:PORT`
/// of a member). Nothing is written before the vault opened.
pub fn recover(ctx: &Ctx, from: &str, node: NodeArgs) -> Result<()> {
    node.check(ctx)?;
    let (id, addr) = from
        .split_once('@')
        .context("--from takes ID@HOST:PORT (the member's id and sync address)")?;
    let member: PublicKey = id.parse().context("--from: not a node id")?;
    let sock: std::net::SocketAddr = addr.parse().context("--from: not HOST:PORT")?;
    let pass = crate::unlock::passphrase(ctx.passphrase_file.as_deref(), "vault passphrase: ")?
        .context("the vault passphrase is needed: --passphrase-file FILE, or run on a terminal")?;
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let envelope = runtime.block_on(sovryn_net::recovery::fetch(member, sock))?;
    let key = VaultKey::for_envelope(&pass, &envelope)?;
    let mut contents = key.open(&envelope)?;
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
    let peer = PeerConfig::checked(&member, vec![sock.to_string()], None, false, &[])?;
    let created = node.create(ctx, None, identity.clone(), keys, peer)?;
    // The vault comes along, and the identity just used is replaced by a
    // fresh one for the next recovery.
    let next = SecretKey::generate();
    let by = sovryn_engine::identity::short_id(&identity.public());
    contents.set(
        RECOVERY_ENTRY,
        json!({"secret": hex::encode(next.to_bytes())}),
        &by,
    )?;
    let wrap = vault::KeyWrap::of(&node_key.derive());
    vault::install(&ctx.home, &wrap, &key, Some(&key.seal(&contents)?))?;
    for f in &created.folders {
        let k = crate::unlock::master_key(&f.home, None)?;
        vouch_for_recovery(&f.home, &k.derive().folder_id, &identity, &next.public())
            .with_context(|| format!("folder {}", f.name))?;
    }
    let took = started.elapsed();
    if ctx.json {
        return output::json(&json!({
            "node_id": created.node_id.to_string(),
            "from": member.to_string(),
            "folders": created.folders.iter().map(|f| json!({"name": f.name, "storage_path": f.path})).collect::<Vec<_>>(),
            "seconds": took.as_secs_f64(),
        }));
    }
    println!(
        "Rebuilt from {} in {:.1} s: {} folder(s), settings from the vault.",
        member.fmt_short(),
        took.as_secs_f64(),
        created.folders.len()
    );
    for f in &created.folders {
        println!("  folder {}: {}", f.name, f.path.display());
    }
    println!("Start it with: sovryn up (files and history come from the members)");
    Ok(())
}
