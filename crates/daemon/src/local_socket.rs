//! Unix sockets in the home that only this user may use: the daemon's
//! control socket and an `mcp serve --stdio` process's handover socket.

use std::path::Path;

use crate::{Error, Result};

/// Binds `path` (replacing a stale socket file) with mode 0600.
pub fn bind_private(path: &Path) -> Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding the socket {}", path.display()), e))?;
    // The socket grants control: owner only, whatever the umask, and every
    // client's credentials are checked too ([`same_user`]).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::io(format!("securing the socket {}", path.display()), e))?;
    Ok(listener)
}

/// Whether the client at the other end runs as this process's user
/// (checked with `SO_PEERCRED`); logs why not.
pub fn same_user(stream: &tokio::net::UnixStream) -> bool {
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    match stream.peer_cred() {
        Ok(c) if c.uid() == me => true,
        Ok(c) => {
            tracing::warn!(
                "refused a local connection from uid {} (this process runs as uid {me})",
                c.uid()
            );
            false
        }
        Err(e) => {
            tracing::warn!("refused a local connection: no peer credentials: {e}");
            false
        }
    }
}
