//! The control protocol on the node's socket (`HOME/control.sock`, 0600,
//! the client's uid checked): one JSON request per line, tagged by `cmd`
//! and carrying the protocol version `v`; one JSON answer per line. Every
//! request is a variant of [`Request`]: unknown commands and other versions
//! are refused with a clear answer, never guessed at.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sovryn_engine::Home;

use crate::write_ops::WriteOp;

/// The version of this protocol; a node refuses requests of another.
pub const VERSION: u32 = 1;

/// A request to the running node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Its status (sequence, peers, MCP).
    Status,
    /// Stop gracefully.
    Stop,
    /// Start the MCP listener.
    McpStart,
    /// Stop the MCP listener.
    McpStop,
    /// Turn the rest of this connection into an MCP session (stdio).
    McpStdio,
    /// Test the configured peers (or one).
    TestNetwork {
        /// Only this peer (id or name).
        peer: Option<String>,
        /// Bytes to download from each.
        probe_bytes: u64,
    },
    /// Rescan, then wait until in sync with every connected peer.
    Sync {
        /// Give up after this long.
        timeout_ms: u64,
    },
    /// Pause sync (kept across restarts).
    Pause,
    /// Resume sync.
    Resume,
    /// Resolve a conflict copy.
    ConflictsResolve {
        /// The copy or its original (relative path).
        path: String,
        /// `local`, `remote` or `both`.
        keep: String,
    },
    /// A write the node does for the command line (`add`, `restore`, `gc`).
    Write {
        /// What to do.
        op: WriteOp,
    },
    /// `config.toml` changed: reload it and apply what changed.
    ReloadConfig,
    /// The paths on disk a scan would record now.
    Unrecorded,
    /// Start serving a folder just added (`sovryn folders add`).
    OpenFolder {
        /// Its name.
        name: String,
    },
    /// Stop serving a folder (`sovryn folders remove`).
    CloseFolder {
        /// Its name.
        name: String,
    },
    /// Open a one-time invite (`sovryn invite`).
    Invite {
        /// Folders it grants (none: the default folder).
        #[serde(default)]
        folders: Vec<String>,
        /// The joiner's changes are not taken.
        #[serde(default)]
        read_only: bool,
        /// How long it stays open.
        ttl_secs: u64,
        /// The joiner is a backup peer: it gets no key, and this node
        /// pushes the folders' sealed objects to it.
        #[serde(default)]
        backup: bool,
    },
    /// What became of an invite, waiting a while if it is still open.
    InviteStatus {
        /// Its id (hex).
        invite: String,
        /// Wait this long at most.
        wait_ms: u64,
    },
    /// The vault (or the device list) changed on disk: send it to peers.
    SharedStateChanged,
    /// Devices that asked to sync without being listed.
    DevicesPending,
    /// Approve a pending device for the folders it asked for.
    DevicesApprove {
        /// Its id.
        id: String,
        /// Take no changes from it.
        #[serde(default)]
        read_only: bool,
    },
    /// Revoke a device in the folder's signed device list.
    DevicesRevoke {
        /// Its id.
        id: String,
    },
    /// The folder's devices (configured peers and the signed list).
    DevicesList,
    /// Refuse a device silently from now on.
    DevicesDeny {
        /// Its id.
        id: String,
    },
    /// A read-only question, answered from the node's read-only handles.
    Query {
        /// What to answer.
        query: sovryn_api::Query,
    },
}

/// A request on the wire: the version beside the command.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version ([`VERSION`]).
    pub v: u32,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

impl Request {
    /// The request as one line on the wire.
    pub fn line(&self) -> Result<Vec<u8>> {
        let mut line = serde_json::to_vec(&Envelope {
            v: VERSION,
            request: self.clone(),
        })
        .map_err(|e| Error::Failed(format!("encoding a control request: {e}")))?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Parses a request line, or says why it cannot be served.
pub fn parse(line: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON request: {e}"))?;
    let v = value["v"].as_u64().unwrap_or(0);
    if v != u64::from(VERSION) {
        return Err(format!(
            "control protocol version {v}; this node speaks {VERSION} (restart it after an upgrade)"
        ));
    }
    serde_json::from_value::<Envelope>(value)
        .map(|e| e.request)
        .map_err(|e| format!("unknown or malformed request: {e}"))
}

/// Sends `request` to the node running in `home`; `None` when none runs.
pub fn request(home: &Home, request: &Request) -> Result<Option<serde_json::Value>> {
    use std::io::{BufRead, Write};
    let sock = crate::control_socket(home);
    let stream = match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let talk = || -> std::io::Result<String> {
        let mut w = stream.try_clone()?;
        w.write_all(&request.line().map_err(std::io::Error::other)?)?;
        let mut answer = String::new();
        std::io::BufReader::new(&stream).read_line(&mut answer)?;
        Ok(answer)
    };
    let answer =
        talk().map_err(|e| Error::io(format!("talking to the node on {}", sock.display()), e))?;
    Ok(Some(serde_json::from_str(&answer).map_err(|e| {
        Error::Failed(format!("bad answer from the node: {e}"))
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_other_versions_are_refused() {
        let r = Request::Sync { timeout_ms: 5 };
        let line = String::from_utf8(r.line().unwrap()).unwrap();
        assert_eq!(line.trim(), r#"{"v":1,"cmd":"sync","timeout_ms":5}"#);
        assert!(matches!(parse(&line), Ok(Request::Sync { timeout_ms: 5 })));
        assert!(parse(r#"{"cmd":"status"}"#)
            .unwrap_err()
            .contains("version 0"));
        assert!(parse(r#"{"v":1,"cmd":"format_disk"}"#)
            .unwrap_err()
            .contains("unknown"));
        assert!(parse("not json").is_err());
    }
}
