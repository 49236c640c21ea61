//! Who may connect (the allowlist, checked in iroh's `after_handshake`
//! hook) and which paths a peer's rights cover.

use super::*;

/// The allowlist: endpoint ids that may connect, checked right after the
/// TLS handshake, before any application byte. While sync is paused it is
/// empty, and the peers it held are told "paused" (strangers still get
/// "not an allowed peer").
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    peers: Arc<RwLock<HashMap<EndpointId, PeerConfig>>>,
    paused: Arc<RwLock<HashMap<EndpointId, PeerConfig>>>,
}

impl Allowlist {
    /// The peer's config when it is allowed.
    pub fn get(&self, id: &EndpointId) -> Option<PeerConfig> {
        self.peers.read().ok()?.get(id).cloned()
    }
    pub(crate) fn all(&self) -> Vec<(EndpointId, PeerConfig)> {
        self.peers
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }
    pub(crate) fn replace(&self, peers: HashMap<EndpointId, PeerConfig>) {
        if let Ok(mut m) = self.peers.write() {
            *m = peers;
        }
    }
    /// Remembers who is refused because sync is paused (empty: not paused).
    pub(crate) fn set_paused(&self, peers: HashMap<EndpointId, PeerConfig>) {
        if let Ok(mut p) = self.paused.write() {
            *p = peers;
        }
    }
    pub(crate) fn is_paused_for(&self, id: &EndpointId) -> bool {
        self.paused
            .read()
            .map(|p| p.contains_key(id))
            .unwrap_or(false)
    }
    /// The peers refused while sync is paused.
    pub(crate) fn paused_peers(&self) -> Vec<(EndpointId, PeerConfig)> {
        self.paused
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }
}

/// The close code with which a paused node refuses (and closes) its peers.
pub const PAUSED_CODE: u32 = 423;

impl Allowlist {
    /// The decision of the endpoint's hook for a peer that asked for this
    /// folder.
    fn admit(&self, id: EndpointId) -> AfterHandshakeOutcome {
        let allowed = self
            .peers
            .read()
            .map(|m| m.contains_key(&id))
            .unwrap_or(false);
        if allowed {
            AfterHandshakeOutcome::Accept
        } else if self.is_paused_for(&id) {
            AfterHandshakeOutcome::Reject {
                error_code: PAUSED_CODE.into(),
                reason: b"paused".to_vec(),
            }
        } else {
            // Logged once per device, by the gate's list of knocks.
            AfterHandshakeOutcome::Reject {
                error_code: 403u32.into(),
                reason: b"not an allowed peer".to_vec(),
            }
        }
    }
}

/// The endpoint's hook, shared by the folders served on one endpoint: each
/// connection names its folder by its ALPN, and that folder's allowlist
/// decides, right after the TLS handshake and before any application byte.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    folders: Arc<RwLock<HashMap<Vec<u8>, Allowlist>>>,
    /// Open invites: while one is, anyone may try the join protocol once.
    pub(crate) invites: Arc<crate::invite::Invites>,
    /// Unknown devices refused, for `sovryn devices pending`.
    pub(crate) knocks: Arc<crate::knocks::Knocks>,
    /// Vault fetches being served (`sovryn/vault/1`).
    pub(crate) vault_fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl Gate {
    pub(crate) fn add(&self, alpn: Vec<u8>, allow: Allowlist) {
        if let Ok(mut m) = self.folders.write() {
            m.insert(alpn, allow);
        }
    }
    pub(crate) fn remove(&self, alpn: &[u8]) {
        if let Ok(mut m) = self.folders.write() {
            m.remove(alpn);
        }
    }
}

impl EndpointHooks for Gate {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if conn.alpn() == crate::recovery::VAULT_ALPN {
            return AfterHandshakeOutcome::Accept;
        }
        if conn.alpn() == crate::invite::JOIN_ALPN {
            return if self.invites.any_open() {
                AfterHandshakeOutcome::Accept
            } else {
                AfterHandshakeOutcome::Reject {
                    error_code: 404u32.into(),
                    reason: b"no open invite".to_vec(),
                }
            };
        }
        let folder = self
            .folders
            .read()
            .ok()
            .and_then(|m| m.get(conn.alpn()).cloned());
        match folder {
            Some(allow) => {
                let outcome = allow.admit(conn.remote_id());
                if matches!(&outcome, AfterHandshakeOutcome::Reject { error_code, .. } if *error_code == 403u32.into())
                {
                    self.knocks.knocked(conn.remote_id(), conn.alpn());
                }
                outcome
            }
            // Not a folder served here (TLS already refuses an ALPN the
            // endpoint does not offer; this covers one just removed).
            None => AfterHandshakeOutcome::Reject {
                error_code: 404u32.into(),
                reason: b"no such folder".to_vec(),
            },
        }
    }
}

/// Parses peer configs into the allowlist map, skipping (and logging) bad ids.
pub fn peer_map(peers: &[PeerConfig]) -> HashMap<EndpointId, PeerConfig> {
    let mut out = HashMap::new();
    for p in peers {
        match p.id.parse::<EndpointId>() {
            Ok(id) => {
                out.insert(id, p.clone());
            }
            Err(e) => tracing::warn!("peer {}: bad endpoint id: {e}", p.id),
        }
    }
    out
}

/// Whether `path` is within the prefixes a peer is limited to, or one of
/// their ancestor directories (which it needs to hold them).
pub fn in_scope(cfg: &PeerConfig, path: &str) -> bool {
    accepted_from(cfg, path)
        || cfg.paths.iter().any(|p| {
            p.trim_matches('/')
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// What is sent to a peer: its scope and the ancestors of its scope.
pub(crate) fn sent_to(cfg: &PeerConfig, path: &str) -> bool {
    in_scope(cfg, path)
}

/// What is taken from a peer: only paths at or under its prefixes (never
/// an ancestor directory of them, whose mode or existence it must not change).
pub fn accepted_from(cfg: &PeerConfig, path: &str) -> bool {
    cfg.paths.is_empty()
        || cfg.paths.iter().any(|p| {
            let p = p.trim_matches('/');
            p.is_empty()
                || path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}
