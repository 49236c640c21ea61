//! One-time invites: a new device joins with a code printed by a member.
//!
//! The code carries the inviter's endpoint (id, addresses, relay), an
//! invite id and a short one-time secret. The joiner dials the inviter on
//! [`JOIN_ALPN`]; both run SPAKE2 on the secret, so the secret itself never
//! crosses the wire and an observer of the exchange cannot test guesses
//! offline. An invite takes one attempt: it is spent when a joiner names
//! it, whether the secret then matches or not, and it expires. Both sides
//! prove the shared key before anything else moves, and show the same
//! short confirmation string. Only then does the inviter's node admit the
//! joiner (the handler the daemon installs) and send what it grants (the
//! folder keys and the devices it knows), sealed under the exchanged key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::{Endpoint, EndpointId};
use serde::Serialize;
use spake2::{Ed25519Group, Password, Spake2};

mod code;
mod exchange;

pub use code::InviteCode;
use exchange::{identity, pake_bytes, read, write, JoinHello, Reply, Session};

/// The protocol a joiner dials.
pub const JOIN_ALPN: &[u8] = b"sovryn/join/1";

/// Prefix of every code (and of its version).
const CODE_PREFIX: &str = "sovryn1-";

/// Bytes of the one-time secret: one guess in 2^40 per invite.
const SECRET_LEN: usize = 5;

/// The largest message from the inviter (a bundle of keys and devices).
const MAX_REPLY: usize = 1 << 20;

/// The largest message from a joiner, who is nobody yet.
const MAX_JOINER_MESSAGE: usize = 4096;

/// Join attempts served at once; more are closed at once.
const MAX_ATTEMPTS: usize = 8;

/// How long either side waits for the other's next message.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an invite or a join failed.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// The code is not one this version reads.
    #[error("not an invite code: {0}")]
    BadCode(String),
    /// The inviter refused (unknown, spent or expired invite, wrong secret).
    #[error("the inviting node refused: {0}")]
    Refused(String),
    /// The secret did not match: the code was mistyped or is not this invite's.
    #[error("the code's secret does not match this invite (mistyped?); the invite is now spent, ask for a new one")]
    WrongSecret,
    /// The other side broke the protocol.
    #[error("invite protocol: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(String),
}

type Result<T, E = InviteError> = std::result::Result<T, E>;

/// A joiner the inviter's handler is asked to admit.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Its endpoint id (proven by the connection).
    pub joiner: EndpointId,
    /// The name it gave.
    pub name: String,
    /// Where it says it listens.
    pub addrs: Vec<SocketAddr>,
    /// What the invite grants (as the daemon recorded it).
    pub grant: serde_json::Value,
    /// The confirmation string both sides show.
    pub confirmation: String,
}

/// Admits a joiner for good (records it as a peer) and returns what the
/// joiner is sent: the bundle of keys and devices. Runs on a blocking thread.
pub type JoinHandler = Arc<dyn Fn(JoinRequest) -> Result<serde_json::Value, String> + Send + Sync>;

struct Open {
    secret: [u8; SECRET_LEN],
    expires: Instant,
    grant: serde_json::Value,
}

/// What became of an invite, for whoever waits on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Nobody came yet.
    Open,
    /// A device joined with it.
    Joined {
        /// The device.
        device: String,
        /// Its name.
        name: String,
        /// The confirmation string shown on both sides.
        confirmation: String,
    },
    /// It was tried and failed, or it expired.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The invites a node has open, and its handler for joiners.
#[derive(Default)]
pub struct Invites {
    open: Mutex<HashMap<[u8; 8], Open>>,
    outcomes: Mutex<HashMap<[u8; 8], Outcome>>,
    handler: Mutex<Option<JoinHandler>>,
    changed: tokio::sync::Notify,
    attempts: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Invites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invites")
    }
}

impl Invites {
    /// Installs what admits a joiner (the daemon's config edit).
    pub fn set_handler(&self, handler: JoinHandler) {
        *self.handler.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Opens an invite for `ttl` granting `grant`; the code to give out
    /// (with `relay`, the relay this node uses).
    pub fn create(
        &self,
        endpoint: &Endpoint,
        relay: Option<String>,
        ttl: Duration,
        grant: serde_json::Value,
    ) -> Result<InviteCode> {
        let mut addrs: Vec<SocketAddr> = endpoint.addr().ip_addrs().copied().collect();
        for s in endpoint.bound_sockets() {
            if !s.ip().is_unspecified() && !addrs.contains(&s) {
                addrs.push(s);
            }
        }
        addrs.truncate(16);
        // The configured relay, whether or not the endpoint reached it yet.
        let relay = relay.or_else(|| endpoint.addr().relay_urls().next().map(|u| u.to_string()));
        let code = InviteCode {
            inviter: *endpoint.id().as_bytes(),
            addrs,
            relay,
            invite: rand::random(),
            secret: rand::random(),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        open.retain(|_, o| o.expires > now);
        open.insert(
            code.invite,
            Open {
                secret: code.secret,
                expires: now + ttl,
                grant,
            },
        );
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(code.invite, Outcome::Open);
        Ok(code)
    }

    /// Whether any invite is open (the join protocol is refused otherwise).
    pub fn any_open(&self) -> bool {
        let now = Instant::now();
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|o| o.expires > now)
    }

    /// What became of invite `id`, waiting up to `wait` while it is open.
    pub async fn outcome(&self, id: [u8; 8], wait: Duration) -> Option<Outcome> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let now = self
                .outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned();
            if now != Some(Outcome::Open) {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Some(Outcome::Open);
            }
        }
    }

    fn settle(&self, id: [u8; 8], outcome: Outcome) {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, outcome);
        self.changed.notify_waiters();
    }

    /// Takes invite `id` for one attempt: gone from the open ones whatever
    /// the attempt's result.
    fn spend(&self, id: [u8; 8]) -> Result<Open, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.remove(&id) {
            Some(o) if o.expires > Instant::now() => Ok(o),
            Some(_) => Err("this invite has expired; ask for a new one"),
            None => {
                let known = self
                    .outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&id);
                Err(if known {
                    "this invite was already used or has expired; ask for a new one"
                } else {
                    "no such invite on this node"
                })
            }
        }
    }
}

/// Serves one joiner on an accepted [`JOIN_ALPN`] connection.
pub async fn serve(invites: Arc<Invites>, me: EndpointId, conn: Connection) {
    use std::sync::atomic::Ordering;
    let joiner = conn.remote_id();
    if invites.attempts.fetch_add(1, Ordering::SeqCst) >= MAX_ATTEMPTS {
        invites.attempts.fetch_sub(1, Ordering::SeqCst);
        conn.close(429u32.into(), b"busy");
        return;
    }
    let served = serve_inner(&invites, me, &conn).await;
    invites.attempts.fetch_sub(1, Ordering::SeqCst);
    if let Err(e) = served {
        tracing::info!("join attempt by {}: {e}", joiner.fmt_short());
    }
    // Let the last message reach the joiner before the connection goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.close(0u32.into(), b"done");
}

async fn serve_inner(invites: &Invites, me: EndpointId, conn: &Connection) -> Result<()> {
    let joiner = conn.remote_id();
    let (mut send, mut recv) = tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| InviteError::Connection("no stream".into()))?
        .map_err(|e| InviteError::Connection(e.to_string()))?;
    let hello: JoinHello = read(&mut recv, MAX_JOINER_MESSAGE).await?;
    let id: [u8; 8] = hex::decode(&hello.invite)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| InviteError::Protocol("bad invite id".into()))?;
    let name: String = hello
        .name
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let addrs: Vec<SocketAddr> = hello.addrs.into_iter().take(16).collect();
    let open = match invites.spend(id) {
        Ok(o) => o,
        Err(why) => {
            write(
                &mut send,
                &Reply::Error {
                    message: why.into(),
                },
            )
            .await?;
            return Err(InviteError::Refused(why.into()));
        }
    };
    // Whatever goes wrong from here, the invite shows as failed (the
    // success path settles it as joined, its last step).
    let outcome = admitted(
        invites, id, me, joiner, &mut send, &mut recv, open, hello.pake, name, addrs,
    )
    .await;
    if let Err(e) = &outcome {
        let reason = match e {
            InviteError::Refused(why) => why.clone(),
            other => other.to_string(),
        };
        invites.settle(id, Outcome::Failed { reason });
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn admitted(
    invites: &Invites,
    id: [u8; 8],
    me: EndpointId,
    joiner: EndpointId,
    send: &mut SendStream,
    recv: &mut RecvStream,
    open: Open,
    their_pake: String,
    name: String,
    addrs: Vec<SocketAddr>,
) -> Result<()> {
    let (state, mine) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(open.secret),
        &identity(&id, &me, &joiner),
    );
    let shared = state
        .finish(&pake_bytes(&their_pake)?)
        .map_err(|_| InviteError::Protocol("bad key exchange".into()))?;
    let session = Session::new(&shared);
    write(
        send,
        &Reply::Pake {
            pake: hex::encode(mine),
            confirm: session.confirm("inviter"),
        },
    )
    .await?;
    let confirmed = match read::<Reply>(recv, MAX_JOINER_MESSAGE).await? {
        Reply::Confirm { confirm } => session.check("joiner", &confirm),
        _ => false,
    };
    if !confirmed {
        let _ = write(
            send,
            &Reply::Error {
                message: "wrong secret; the invite is spent".into(),
            },
        )
        .await;
        return Err(InviteError::Refused(
            "a device tried it with the wrong secret".into(),
        ));
    }
    let handler = invites
        .handler
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let request = JoinRequest {
        joiner,
        name: name.clone(),
        addrs,
        grant: open.grant,
        confirmation: session.confirmation(),
    };
    let bundle = match handler {
        Some(h) => tokio::task::spawn_blocking(move || h(request))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r),
        None => Err("this node admits no devices".into()),
    };
    let bundle = match bundle {
        Ok(b) => b,
        Err(e) => {
            let _ = write(send, &Reply::Error { message: e.clone() }).await;
            return Err(InviteError::Refused(e));
        }
    };
    let plain = serde_json::to_vec(&bundle).map_err(|e| InviteError::Protocol(e.to_string()))?;
    write(
        send,
        &Reply::Bundle {
            sealed: session.seal(&plain)?,
        },
    )
    .await?;
    let _ = send.finish();
    invites.settle(
        id,
        Outcome::Joined {
            device: joiner.to_string(),
            name,
            confirmation: session.confirmation(),
        },
    );
    tracing::info!(
        "{} joined with an invite (confirmation {})",
        joiner.fmt_short(),
        session.confirmation()
    );
    Ok(())
}

/// What a joiner received.
#[derive(Debug)]
pub struct Joined {
    /// The inviter.
    pub inviter: EndpointId,
    /// The confirmation string both sides show.
    pub confirmation: String,
    /// What the inviter granted (folder keys, devices).
    pub bundle: serde_json::Value,
}

/// Joins through `code` from `endpoint` (bound with the joining node's
/// own identity): `name` and `addrs` tell the inviter who and where it is.
pub async fn join(
    endpoint: &Endpoint,
    code: &InviteCode,
    name: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Joined> {
    let inviter = code.inviter_id()?;
    let conn = tokio::time::timeout(
        STEP_TIMEOUT,
        endpoint.connect(code.endpoint_addr()?, JOIN_ALPN),
    )
    .await
    .map_err(|_| InviteError::Connection("the inviting node did not answer".into()))?
    .map_err(|e| InviteError::Connection(format!("cannot reach the inviting node: {e}")))?;
    let joined = exchange(endpoint, &conn, code, inviter, name, addrs).await;
    let joined = match joined {
        // The inviter's gate closes the connection when it has no open
        // invite at all: say so rather than "connection lost".
        Err(InviteError::Connection(e)) => Err(match conn.close_reason() {
            Some(iroh::endpoint::ConnectionError::ApplicationClosed(close)) => {
                InviteError::Refused(format!(
                    "{} (this code was used already or has expired; ask for a new one)",
                    String::from_utf8_lossy(&close.reason)
                ))
            }
            _ => InviteError::Connection(e),
        }),
        other => other,
    };
    conn.close(0u32.into(), b"joined");
    joined
}

async fn exchange(
    endpoint: &Endpoint,
    conn: &Connection,
    code: &InviteCode,
    inviter: EndpointId,
    name: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Joined> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| InviteError::Connection(e.to_string()))?;
    let (state, mine) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(code.secret),
        &identity(&code.invite, &inviter, &endpoint.id()),
    );
    write(
        &mut send,
        &JoinHello {
            invite: hex::encode(code.invite),
            pake: hex::encode(mine),
            name: name.to_owned(),
            addrs,
        },
    )
    .await?;
    let (theirs, their_confirm) = match read::<Reply>(&mut recv, MAX_REPLY).await? {
        Reply::Pake { pake, confirm } => (pake_bytes(&pake)?, confirm),
        Reply::Error { message } => return Err(InviteError::Refused(message)),
        _ => return Err(InviteError::Protocol("unexpected reply".into())),
    };
    let shared = state
        .finish(&theirs)
        .map_err(|_| InviteError::Protocol("bad key exchange".into()))?;
    let session = Session::new(&shared);
    if !session.check("inviter", &their_confirm) {
        // Tell the inviter, so its invite shows as failed rather than waiting.
        let _ = write(
            &mut send,
            &Reply::Confirm {
                confirm: String::new(),
            },
        )
        .await;
        return Err(InviteError::WrongSecret);
    }
    write(
        &mut send,
        &Reply::Confirm {
            confirm: session.confirm("joiner"),
        },
    )
    .await?;
    let bundle = match read::<Reply>(&mut recv, MAX_REPLY).await? {
        Reply::Bundle { sealed } => session.open(&sealed)?,
        Reply::Error { message } => return Err(InviteError::Refused(message)),
        _ => return Err(InviteError::Protocol("unexpected reply".into())),
    };
    let bundle =
        serde_json::from_slice(&bundle).map_err(|e| InviteError::Protocol(e.to_string()))?;
    Ok(Joined {
        inviter,
        confirmation: session.confirmation(),
        bundle,
    })
}

/// [`join`] from a throwaway endpoint bound to any port with `secret`
/// (the joining node's identity), closed when done.
pub async fn join_as(
    secret: iroh::SecretKey,
    code: &InviteCode,
    name: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Joined> {
    let relay_mode = match &code.relay {
        Some(url) => iroh::RelayMode::custom([url
            .parse::<iroh::RelayUrl>()
            .map_err(|_| InviteError::BadCode("the relay address is not a URL".into()))?]),
        None => iroh::RelayMode::Disabled,
    };
    let endpoint = Endpoint::builder(iroh::endpoint::presets::Minimal)
        .secret_key(secret)
        .alpns(Vec::new())
        .relay_mode(relay_mode)
        .bind()
        .await
        .map_err(|e| InviteError::Connection(format!("binding an endpoint: {e}")))?;
    let joined = join(&endpoint, code, name, addrs).await;
    endpoint.close().await;
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_is_spent_by_its_first_attempt_and_expires() {
        let inv = Invites::default();
        let id = [3u8; 8];
        let open = |ttl: Duration| Open {
            secret: [0; 5],
            expires: Instant::now() + ttl,
            grant: serde_json::Value::Null,
        };
        inv.open
            .lock()
            .unwrap()
            .insert(id, open(Duration::from_secs(60)));
        inv.outcomes.lock().unwrap().insert(id, Outcome::Open);
        assert!(inv.any_open());
        assert!(inv.spend(id).is_ok());
        assert!(inv.spend(id).err().unwrap().contains("already used"));
        assert!(!inv.any_open());
        assert!(inv
            .spend([4u8; 8])
            .err()
            .unwrap()
            .contains("no such invite"));
        let late = [5u8; 8];
        inv.open.lock().unwrap().insert(late, open(Duration::ZERO));
        assert!(inv.spend(late).err().unwrap().contains("expired"));
    }
}
