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
    /// passphrase (the same on every device; asked, or from a file). It
    /// records the node's folders and keys and a recovery identity, so
    /// `sovryn recover` can rebuild a lost device.
    Init {
        /// A file holding the vault passphrase.
        #[arg(long)]
        vault_passphrase_file: Option<std::path::PathBuf>,
    },
    /// Open the vault this node received from its peers with the vault passphrase.
    Unlock {
        /// A file holding the vault passphrase.
        #[arg(long)]
        vault_passphrase_file: Option<std::path::PathBuf>,
    },
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

/// The shortest vault passphrase accepted.
const MIN_PASSPHRASE_CHARS: usize = 12;

fn passphrase(file: Option<&std::path::Path>, prompt: &str) -> Result<String> {
    let p = crate::unlock::passphrase(file, prompt)?.context(
        "a vault passphrase is needed: --vault-passphrase-file FILE, or run on a terminal",
    )?;
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
        VaultAction::Init {
            vault_passphrase_file,
        } => {
            if vault::load_envelope(home)?.is_some() || VaultKey::is_kept(home) {
                bail!("this node already has a vault; `sovryn vault unlock` opens one received from peers");
            }
            let pass = passphrase(vault_passphrase_file.as_deref(), "vault passphrase: ")?;
            // Members hand the sealed vault to whoever asks (a lost device
            // has nothing else to prove): the passphrase is all that guards it.
            if pass.trim().chars().count() < MIN_PASSPHRASE_CHARS {
                bail!(
                    "a vault passphrase has at least {MIN_PASSPHRASE_CHARS} characters: any member \
                     gives the sealed vault to whoever asks, so it must withstand guessing \
                     (`sovryn keygen` prints a strong one)"
                );
            }
            let key = VaultKey::create(&pass, KdfParams::default())?;
            let node_key = node_key(ctx)?;
            let wrap = vault::KeyWrap::of(&node_key.derive());
            vault::install(home, &wrap, &key, Some(&key.seal(&Contents::default())?))?;
            crate::recover_cmd::record_for_recovery(ctx, &node_key)?;
            tell_node(ctx);
            println!("vault created; other devices open it with `sovryn vault unlock`");
        }
        VaultAction::Unlock {
            vault_passphrase_file,
        } => {
            let e = vault::load_envelope(home)?
                .context("no vault has reached this node yet (it comes from its peers)")?;
            let pass = passphrase(vault_passphrase_file.as_deref(), "vault passphrase: ")?;
            let key = VaultKey::for_envelope(&pass, &e)?;
            let contents = key.open(&e)?;
            let node_key = node_key(ctx)?;
            vault::install(home, &vault::KeyWrap::of(&node_key.derive()), &key, None)?;
            crate::recover_cmd::record_for_recovery(ctx, &node_key)?;
            tell_node(ctx);
            println!("vault open: {} entries", contents.entries.len());
        }
        VaultAction::Status => {
            let e = vault::load_envelope(home)?;
            let key = VaultKey::load(home, &wrap(ctx)?)?;
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
            let (key, e) = opened(ctx)?;
            let contents = key.open(&e)?;
            if ctx.json {
                let entries: serde_json::Map<String, serde_json::Value> = contents
                    .entries
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with(vault::RESERVED_PREFIX))
                    .map(|(k, v)| (k, v.value))
                    .collect();
                return output::json(&entries);
            }
            for (k, v) in contents.entries {
                if k.starts_with(vault::RESERVED_PREFIX) {
                    println!("{k} = (kept by the node; not shown)");
                } else {
                    println!("{k} = {}", v.value);
                }
            }
        }
        VaultAction::Set { key: name, value } => {
            if name.starts_with(vault::RESERVED_PREFIX) {
                bail!(
                    "entries named {}* are the node's own",
                    vault::RESERVED_PREFIX
                );
            }
            let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            let secret = sovryn_engine::identity::load(&home.identity())?;
            let by = sovryn_engine::identity::short_id(&secret.public());
            vault::set(home, &wrap(ctx)?, &name, value, &by)?;
            tell_node(ctx);
        }
        VaultAction::Export => {
            let e = vault::load_envelope(home)?.context("no vault on this node")?;
            output::json(&e)?;
        }
    }
    Ok(())
}

/// The node's key (which a passphrase may protect): what seals the vault
/// key in its home, and what opens its folders' keys.
fn node_key(ctx: &Ctx) -> Result<sovryn_store::MasterKey> {
    crate::unlock::master_key(&ctx.home, ctx.passphrase_file.as_deref())
}

/// What seals the vault key in this node's home.
fn wrap(ctx: &Ctx) -> Result<vault::KeyWrap> {
    Ok(vault::KeyWrap::of(&node_key(ctx)?.derive()))
}

fn opened(ctx: &Ctx) -> Result<(VaultKey, vault::Envelope)> {
    let home = &ctx.home;
    let key = VaultKey::load(home, &wrap(ctx)?)?.context(
        "the vault is not open on this node: `sovryn vault init` or `sovryn vault unlock`",
    )?;
    let e = vault::load_envelope(home)?.context("no vault on this node")?;
    Ok((key, e))
}

/// A running node sends the changed vault (and device lists) to its peers.
pub(crate) fn tell_node(ctx: &Ctx) {
    let homes = sovryn_engine::folders::list(&ctx.home)
        .map(|fs| fs.into_iter().map(|f| f.home).collect())
        .unwrap_or_else(|_| vec![ctx.home.clone()]);
    for home in homes {
        if let Err(e) = control::request(&home, &Request::SharedStateChanged) {
            eprintln!("warning: the running node was not told of the change: {e:#}");
        }
    }
}
