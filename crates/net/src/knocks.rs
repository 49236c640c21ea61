//! Devices that knocked: endpoints refused because no folder of this node
//! lists them. Each is logged once and kept (at most [`MAX_KNOCKS`]) for
//! `sovryn devices pending`, to approve or deny; a denied one is refused
//! without a word.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use iroh::EndpointId;
use serde::Serialize;

/// Devices remembered at most; the one heard from least recently goes.
pub const MAX_KNOCKS: usize = 256;

/// One device that knocked.
#[derive(Debug, Clone, Serialize)]
pub struct Knock {
    /// Its endpoint id.
    pub id: String,
    /// The ALPNs (folders) it asked for.
    #[serde(skip)]
    pub alpns: BTreeSet<Vec<u8>>,
    /// When it first knocked (seconds since the epoch).
    pub first_seen: u64,
    /// When it last knocked.
    pub last_seen: u64,
    /// How often.
    pub attempts: u64,
}

/// The devices that knocked, and those the user denied.
#[derive(Debug, Default)]
pub struct Knocks {
    seen: Mutex<HashMap<EndpointId, Knock>>,
    denied: Mutex<HashSet<EndpointId>>,
    last_warning: Mutex<Option<std::time::Instant>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Knocks {
    /// Notes a refused connection from `id` for `alpn`.
    pub(crate) fn knocked(&self, id: EndpointId, alpn: &[u8]) {
        if self
            .denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let t = now();
        if !seen.contains_key(&id) {
            // Once per device, and at most one warning in 10 s: new ids cost
            // an attacker nothing.
            let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    "unknown device {id} asked to sync; `sovryn devices pending` lists it \
                     (approve or deny it there)"
                );
            } else {
                tracing::debug!("unknown device {id} asked to sync");
            }
            if seen.len() >= MAX_KNOCKS {
                if let Some(oldest) = seen
                    .values()
                    .min_by_key(|k| k.last_seen)
                    .map(|k| k.id.clone())
                {
                    seen.retain(|_, k| k.id != oldest);
                }
            }
        }
        let k = seen.entry(id).or_insert_with(|| Knock {
            id: id.to_string(),
            alpns: BTreeSet::new(),
            first_seen: t,
            last_seen: t,
            attempts: 0,
        });
        k.alpns.insert(alpn.to_vec());
        k.last_seen = t;
        k.attempts += 1;
    }

    /// The devices waiting for a decision, most recent first.
    pub fn pending(&self) -> Vec<Knock> {
        let mut out: Vec<Knock> = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        out.sort_by_key(|k| std::cmp::Reverse(k.last_seen));
        out
    }

    /// Takes `id` off the pending list (approved): what it asked for.
    pub fn take(&self, id: &EndpointId) -> Option<Knock> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Refuses `id` silently from now on (until the node restarts).
    pub fn deny(&self, id: EndpointId) -> bool {
        let was = self.take(&id).is_some();
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_knock_is_kept_once_and_a_denied_device_is_forgotten() {
        let k = Knocks::default();
        let (a, b) = (
            iroh::SecretKey::generate().public(),
            iroh::SecretKey::generate().public(),
        );
        for _ in 0..5 {
            k.knocked(a, b"sovryn/sync/3/f1");
        }
        k.knocked(b, b"sovryn/sync/3/f2");
        let p = k.pending();
        assert_eq!(p.len(), 2);
        let ka = p.iter().find(|x| x.id == a.to_string()).unwrap();
        assert_eq!(ka.attempts, 5);
        assert!(k.deny(a));
        k.knocked(a, b"sovryn/sync/3/f1");
        assert_eq!(k.pending().len(), 1);
        assert!(k
            .take(&b)
            .is_some_and(|x| x.alpns.contains(b"sovryn/sync/3/f2".as_slice())));
        assert!(k.pending().is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let k = Knocks::default();
        for _ in 0..MAX_KNOCKS + 10 {
            k.knocked(iroh::SecretKey::generate().public(), b"x");
        }
        assert_eq!(k.pending().len(), MAX_KNOCKS);
    }
}
