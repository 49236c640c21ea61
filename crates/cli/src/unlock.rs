//! Opening the master key: plain key file, the `sovryn unlock` session cache,
//! a passphrase file, or a prompt on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sovryn_engine::{Home, Node};
use sovryn_store::MasterKey;

/// Where `sovryn unlock` caches the opened key: the per-user runtime dir
/// (`$XDG_RUNTIME_DIR`, a private tmpfs). There is no fallback into a
/// shared temp dir, where another local user could prepare the path.
pub fn session_file(home: &Home) -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .context(
            "sovryn unlock needs $XDG_RUNTIME_DIR (a private per-user runtime directory); \
             without it use --passphrase-file or $SOVRYN_PASSPHRASE_FILE",
        )?;
    let tag = blake3::hash(home.dir.to_string_lossy().as_bytes()).to_hex();
    Ok(base.join("sovryn").join(format!("{}.key", &tag[..16])))
}

/// Refuses a directory for secrets unless it is a real directory (not a
/// symlink) owned by this user with no access for anyone else.
fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    anyhow::ensure!(
        m.file_type().is_dir() && m.uid() == me && m.mode() & 0o077 == 0,
        "{} is not a private directory of this user (it must be owned by uid {me} with mode 0700); refusing to keep a key there",
        dir.display()
    );
    Ok(())
}

/// Reads the cached key, only from a private directory and a file of this
/// user's that is not a symlink.
fn read_session(home: &Home) -> Option<MasterKey> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = session_file(home).ok()?;
    check_private_dir(path.parent()?).ok()?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    let m = f.metadata().ok()?;
    // SAFETY: getuid has no preconditions.
    if m.uid() != unsafe { libc::getuid() } || m.mode() & 0o077 != 0 {
        tracing::warn!(
            "ignoring {}: not a private file of this user",
            path.display()
        );
        return None;
    }
    let mut hex = String::new();
    f.read_to_string(&mut hex).ok()?;
    MasterKey::from_hex(&hex).ok()
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
    if kf.is_sealed() {
        // Another folder of the node: the node's key opens it.
        let node = sovryn_engine::folders::node_of(home)?;
        let node_key = master_key(&node, passphrase_file)?;
        return Ok(sovryn_engine::folders::open_key(home, &node_key)?);
    }
    if !kf.needs_passphrase() {
        return Ok(kf.open(None)?);
    }
    if passphrase_file.is_none() {
        if let Some(k) = read_session(home) {
            return Ok(k);
        }
    }
    let secret = passphrase(passphrase_file, "passphrase (or recovery code): ")?;
    Ok(kf.open(secret.as_deref())?)
}

/// Caches the opened key for this login session (mode 0600, created
/// exclusively, in a private directory of the runtime dir).
pub fn cache_session(home: &Home, key: &MasterKey) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let path = session_file(home)?;
    let dir = path.parent().context("session file has no directory")?;
    // Each level is made (0700, failing rather than reusing what someone
    // else made) or must already be private to this user.
    for d in [dir.parent(), Some(dir)].into_iter().flatten() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
        check_private_dir(d)?;
    }
    sovryn_store::keys::write_secret_file(&path, key.to_hex().as_bytes())?;
    Ok(path)
}
