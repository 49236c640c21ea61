//! Opening the master key: plain key file, the `sovryn unlock` session cache,
//! a passphrase file, or a prompt on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sovryn_engine::{Home, Node};
use sovryn_store::MasterKey;

/// Where `sovryn unlock` caches the opened key: the per-user runtime dir (tmpfs).
pub fn session_file(home: &Home) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        // SAFETY: getuid has no preconditions.
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("sovryn-{}", unsafe { libc::getuid() }))
        });
    let tag = blake3::hash(home.dir.to_string_lossy().as_bytes()).to_hex();
    base.join("sovryn").join(format!("{}.key", &tag[..16]))
}

fn read_passphrase_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading passphrase file {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The passphrase from `--passphrase-file`/`$SOVRYN_PASSPHRASE_FILE`, or a prompt.
pub fn passphrase(file: Option<&Path>, prompt: &str) -> Result<Option<String>> {
    if let Some(f) = file {
        return Ok(Some(read_passphrase_file(f)?));
    }
    if std::io::stdin().is_terminal() {
        return Ok(Some(rpassword::prompt_password(prompt)?));
    }
    Ok(None)
}

/// Opens the master key of `home`.
pub fn master_key(home: &Home, passphrase_file: Option<&Path>) -> Result<MasterKey> {
    let kf = Node::key_file(home)?;
    if !kf.needs_passphrase() {
        return Ok(kf.open(None)?);
    }
    if passphrase_file.is_none() {
        if let Ok(hex) = std::fs::read_to_string(session_file(home)) {
            if let Ok(k) = MasterKey::from_hex(&hex) {
                return Ok(k);
            }
        }
    }
    let secret = passphrase(passphrase_file, "passphrase (or recovery code): ")?;
    Ok(kf.open(secret.as_deref())?)
}

/// Caches the opened key for this login session (mode 0600, runtime dir).
pub fn cache_session(home: &Home, key: &MasterKey) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let path = session_file(home);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    sovryn_store::keys::write_secret_file(&path, key.to_hex().as_bytes())?;
    Ok(path)
}
