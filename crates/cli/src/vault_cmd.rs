//! `sovryn vault ...`: the config vault of this node (see
//! `sovryn_engine::vault`). Changes are made to the files in the node's
//! home under its vault lock; a running node is then told to send the
//! vault to its peers.

use anyhow::{bail, Context, Result};
use serde_json::json;
use sovryn_daemon::control::{self, Request};
use sovryn_engine::vault::{self, Contents, VaultKey};
use sovryn_store::keys::KdfParams;

use crate::commands::Ctx;
use crate::output;

/// `sovryn vault ...`.
#[derive(clap::Subcommand, Debug)]
pub enum VaultAction {
    /// Create this user's vault on this node, protected by a vault
    /// passphrase (the same on every device; `--passphrase-file` or asked).
    Init,
    /// Open the vault this node received from its peers with the vault passphrase.
    Unlock,
    /// Whether the vault is here and open, its entries and last change.
    Status,
    /// Its entries (needs it open).
    Show,
    /// Set an entry (a JSON value, or else the text as a string).
    Set {
        /// Its name.
        key: String,
        /// Its value.
        value: String,
    },
    /// Print the sealed vault (what peers keep; it opens only with the passphrase).
    Export,
}

fn passphrase(ctx: &Ctx, prompt: &str) -> Result<String> {
    let p = crate::unlock::passphrase(ctx.passphrase_file.as_deref(), prompt)?
        .context("a vault passphrase is needed: --passphrase-file FILE, or run on a terminal")?;
    if p.trim().is_empty() {
        bail!("the vault passphrase is empty");
    }
    Ok(p)
}

/// Runs a vault command.
pub fn vault(ctx: &Ctx, action: VaultAction) -> Result<()> {
    let home = &ctx.home;
    if !home.exists() {
        bail!("no node in {}", home.dir.display());
    }
    match action {
        VaultAction::Init => {
            if vault::load_envelope(home)?.is_some() || VaultKey::load(home)?.is_some() {
                bail!("this node already has a vault; `sovryn vault unlock` opens one received from peers");
            }
            let key = VaultKey::create(
                &passphrase(ctx, "vault passphrase: ")?,
                KdfParams::default(),
            )?;
            key.save(home)?;
            vault::save_envelope(home, &key.seal(&Contents::default())?)?;
            tell_node(ctx);
            println!("vault created; other devices open it with `sovryn vault unlock`");
        }
        VaultAction::Unlock => {
            let e = vault::load_envelope(home)?
                .context("no vault has reached this node yet (it comes from its peers)")?;
            let key = VaultKey::for_envelope(&passphrase(ctx, "vault passphrase: ")?, &e)?;
            let contents = key.open(&e)?;
            key.save(home)?;
            println!("vault open: {} entries", contents.entries.len());
        }
        VaultAction::Status => {
            let e = vault::load_envelope(home)?;
            let key = VaultKey::load(home)?;
            let entries = match (&e, &key) {
                (Some(e), Some(k)) => Some(k.open(e)?.entries.len()),
                _ => None,
            };
            let status = json!({
                "present": e.is_some(),
                "open": key.is_some(),
                "entries": entries,
                "updated_ms": e.as_ref().map(|e| e.updated_ms),
                "bytes": e.as_ref().map(|e| e.ciphertext.len() / 2),
            });
            if ctx.json {
                return output::json(&status);
            }
            match (&e, entries) {
                (None, _) => println!("no vault on this node"),
                (Some(_), None) => {
                    println!("a sealed vault is here; `sovryn vault unlock` opens it")
                }
                (Some(e), Some(n)) => println!(
                    "vault open: {n} entries, {} bytes sealed, last changed {}",
                    e.ciphertext.len() / 2,
                    output::time(
                        i64::try_from(e.updated_ms)
                            .unwrap_or(0)
                            .saturating_mul(1_000_000)
                    )
                ),
            }
        }
        VaultAction::Show => {
            let (key, e) = opened(home)?;
            let contents = key.open(&e)?;
            if ctx.json {
                let entries: serde_json::Map<String, serde_json::Value> = contents
                    .entries
                    .into_iter()
                    .map(|(k, v)| (k, v.value))
                    .collect();
                return output::json(&entries);
            }
            for (k, v) in contents.entries {
                println!("{k} = {}", v.value);
            }
        }
        VaultAction::Set { key: name, value } => {
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            let secret = sovryn_engine::identity::load(&home.identity())?;
            let by = sovryn_engine::identity::short_id(&secret.public());
            vault::set(home, &name, value, &by)?;
            tell_node(ctx);
        }
        VaultAction::Export => {
            let e = vault::load_envelope(home)?.context("no vault on this node")?;
            output::json(&e)?;
        }
    }
    Ok(())
}

fn opened(home: &sovryn_engine::Home) -> Result<(VaultKey, vault::Envelope)> {
    let key = VaultKey::load(home)?.context(
        "the vault is not open on this node: `sovryn vault init` or `sovryn vault unlock`",
    )?;
    let e = vault::load_envelope(home)?.context("no vault on this node")?;
    Ok((key, e))
}

/// A running node sends the changed vault to its peers.
fn tell_node(ctx: &Ctx) {
    if let Err(e) = control::request(&ctx.home, &Request::SharedStateChanged) {
        eprintln!("warning: the running node was not told of the change: {e:#}");
    }
}
