//! The append-only audit log: one JSON line per tool call in `audit.jsonl`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One tool call.
#[derive(Debug, Serialize)]
pub struct AuditLine {
    /// When it ended (RFC 3339).
    pub time: String,
    /// The token's name (`stdio` for the local process).
    pub token: String,
    /// The tool.
    pub tool: String,
    /// The paths it named.
    pub paths: Vec<String>,
    /// `ok`, `denied`, or `error: …`.
    pub outcome: String,
    /// How long it took.
    pub duration_ms: f64,
}

/// The audit log file of a home.
pub fn audit_path(home: &Path) -> PathBuf {
    home.join("audit.jsonl")
}

/// An open audit log (or none, for tests that do not want one).
pub struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    /// Opens `audit.jsonl` in `home` for appending (mode 0600).
    pub fn open(home: &Path) -> std::io::Result<Self> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(audit_path(home))?;
        Ok(Audit {
            file: Some(Mutex::new(f)),
        })
    }

    /// Writes one line; a failure is logged, never fatal to the call.
    pub fn write(&self, line: &AuditLine) {
        let Some(f) = &self.file else {
            return;
        };
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        if let Ok(mut f) = f.lock() {
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::error!("audit log: {e}");
            }
        }
    }
}
