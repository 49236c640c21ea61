//! The append-only audit log: one JSON line per tool call in `audit.jsonl`,
//! and per refused authentication (rate-limited per client address, see
//! [`AuthFailures`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// The client's address (HTTP), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Refused authentications from this client that were not logged (over
    /// the rate of [`AuthFailures`]) since its previous line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

impl AuditLine {
    /// A line stamped now, without client or suppressed count.
    pub fn now(
        token: String,
        tool: String,
        paths: Vec<String>,
        outcome: String,
        took: Duration,
    ) -> Self {
        AuditLine {
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            token,
            tool,
            paths,
            outcome,
            duration_ms: took.as_secs_f64() * 1000.0,
            client: None,
            suppressed: None,
        }
    }
}

/// Refused authentications logged per client address per window.
pub const AUTH_FAILURES_PER_CLIENT: u32 = 10;
/// Refused authentications logged per window, all clients together.
pub const AUTH_FAILURES_TOTAL: u32 = 200;
/// The window of those limits.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at most; refusals from others are only counted.
const AUTH_FAILURE_CLIENTS: usize = 4096;

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    /// Refusals not logged since the last line for this client.
    suppressed: u64,
}

/// Decides which refused authentications (401) reach the audit log: at
/// most [`AUTH_FAILURES_PER_CLIENT`] per client address and
/// [`AUTH_FAILURES_TOTAL`] in all per [`AUTH_FAILURE_WINDOW`]. The others
/// are counted, and the count is reported on the client's next line or,
/// once its window is over, on a summary line ([`AuthFailures::expired`]),
/// so a flood of bad tokens cannot fill the disk yet leaves a trace.
/// Memory is bounded: at most `AUTH_FAILURE_CLIENTS` addresses are
/// tracked, the rest share one counter.
#[derive(Debug)]
pub struct AuthFailures {
    clients: HashMap<IpAddr, Window>,
    total: Window,
    /// Refusals from clients beyond the tracked ones, not logged.
    untracked: u64,
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl AuthFailures {
    /// Nothing seen yet, at `now`.
    pub fn new(now: Instant) -> Self {
        AuthFailures {
            clients: HashMap::new(),
            total: Window {
                started: now,
                logged: 0,
                suppressed: 0,
            },
            untracked: 0,
        }
    }

    /// A refusal from `ip` at `now`: `Some(n)` when it is to be logged, `n`
    /// being how many from this client were not logged before it; `None`
    /// when it is only counted.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        if now.duration_since(self.total.started) >= AUTH_FAILURE_WINDOW {
            self.total.started = now;
            self.total.logged = 0;
        }
        if !self.clients.contains_key(&ip) && self.clients.len() >= AUTH_FAILURE_CLIENTS {
            self.untracked += 1;
            return None;
        }
        let w = self.clients.entry(ip).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= AUTH_FAILURE_WINDOW {
            w.started = now;
            w.logged = 0;
        }
        if w.logged >= AUTH_FAILURES_PER_CLIENT || self.total.logged >= AUTH_FAILURES_TOTAL {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        self.total.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    /// Forgets the clients whose window ended before `now`, returning those
    /// with refusals not logged (and their count; `None` as the address for
    /// the untracked clients), to be written as summary lines.
    pub fn expired(&mut self, now: Instant) -> Vec<(Option<IpAddr>, u64)> {
        let mut out = Vec::new();
        self.clients.retain(|ip, w| {
            if now.duration_since(w.started) < AUTH_FAILURE_WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                out.push((Some(*ip), w.suppressed));
            }
            false
        });
        if self.untracked > 0 {
            out.push((None, std::mem::take(&mut self.untracked)));
        }
        out
    }

    /// Client addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_a_bounded_rate_and_counted() {
        let t0 = Instant::now();
        let mut f = AuthFailures::new(t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let logged = (0..50).filter(|_| f.refused(a, t0).is_some()).count();
        assert_eq!(logged, AUTH_FAILURES_PER_CLIENT as usize);
        // Another client has a budget of its own.
        assert_eq!(f.refused(b, t0), Some(0));
        // Next window: the first line carries what was not logged.
        let t1 = t0 + AUTH_FAILURE_WINDOW;
        assert_eq!(f.refused(a, t1), Some(40));
        assert_eq!(f.refused(a, t1), Some(0));
        // A client that stops: its count comes out as a summary once its window is over.
        for _ in 0..(AUTH_FAILURES_PER_CLIENT + 5) {
            f.refused(b, t1);
        }
        assert!(f.expired(t1 + Duration::from_secs(1)).is_empty());
        let t2 = t1 + AUTH_FAILURE_WINDOW;
        let mut out = f.expired(t2);
        out.sort();
        assert_eq!(out, vec![(Some(b), 5)]);
        assert_eq!(f.tracked(), 0);
    }

    #[test]
    fn the_total_and_the_memory_are_bounded() {
        let t0 = Instant::now();
        let mut f = AuthFailures::new(t0);
        let mut logged = 0;
        for i in 0..(AUTH_FAILURE_CLIENTS as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            logged += usize::from(f.refused(ip, t0).is_some());
        }
        assert_eq!(logged, AUTH_FAILURES_TOTAL as usize);
        assert_eq!(f.tracked(), AUTH_FAILURE_CLIENTS);
        let out = f.expired(t0 + AUTH_FAILURE_WINDOW);
        let untracked: u64 = out
            .iter()
            .filter(|(ip, _)| ip.is_none())
            .map(|(_, n)| n)
            .sum();
        assert_eq!(untracked, 100);
        let suppressed: u64 = out.iter().map(|(_, n)| n).sum();
        assert_eq!(
            suppressed as usize,
            AUTH_FAILURE_CLIENTS + 100 - AUTH_FAILURES_TOTAL as usize
        );
        assert_eq!(f.tracked(), 0);
    }
}
