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

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::{Endpoint, EndpointAddr, EndpointId};
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};

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

/// What an invite code says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCode {
    /// The inviter's endpoint id.
    pub inviter: [u8; 32],
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
    /// Its relay, when it uses one.
    pub relay: Option<String>,
    /// Which invite.
    pub invite: [u8; 8],
    /// The one-time secret.
    pub secret: [u8; SECRET_LEN],
}

impl InviteCode {
    /// The code as one word to paste: a prefix, then base32.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let text = data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase();
        format!("{CODE_PREFIX}{text}")
    }

    /// Reads a code (surrounding space and case do not matter).
    pub fn parse(code: &str) -> Result<Self> {
        let code = code.trim();
        let body = code
            .strip_prefix(CODE_PREFIX)
            .ok_or_else(|| InviteError::BadCode(format!("it must start with {CODE_PREFIX}")))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| InviteError::BadCode("it is cut short or mistyped".into()))?;
        let code: InviteCode = postcard::from_bytes(&bytes)
            .map_err(|_| InviteError::BadCode("it is cut short or mistyped".into()))?;
        EndpointId::from_bytes(&code.inviter)
            .map_err(|_| InviteError::BadCode("the inviter's id is not a valid key".into()))?;
        if code.addrs.len() > 16 || code.relay.as_ref().is_some_and(|r| r.len() > 512) {
            return Err(InviteError::BadCode("too many addresses".into()));
        }
        Ok(code)
    }

    /// The inviter's id.
    pub fn inviter_id(&self) -> Result<EndpointId> {
        EndpointId::from_bytes(&self.inviter)
            .map_err(|_| InviteError::BadCode("the inviter's id is not a valid key".into()))
    }

    /// Where to dial the inviter.
    pub fn endpoint_addr(&self) -> Result<EndpointAddr> {
        let mut addr = EndpointAddr::new(self.inviter_id()?);
        for a in &self.addrs {
            addr = addr.with_ip_addr(*a);
        }
        if let Some(r) = &self.relay {
            let url = r
                .parse()
                .map_err(|_| InviteError::BadCode("the relay address is not a URL".into()))?;
            addr = addr.with_relay_url(url);
        }
        Ok(addr)
    }
}

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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
struct JoinHello {
    invite: String,
    pake: String,
    name: String,
    addrs: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
enum Reply {
    Error { message: String },
    Pake { pake: String, confirm: String },
    Confirm { confirm: String },
    Bundle { sealed: String },
}

fn identity(invite: &[u8; 8], inviter: &EndpointId, joiner: &EndpointId) -> Identity {
    let mut id = Vec::with_capacity(80);
    id.extend_from_slice(JOIN_ALPN);
    id.extend_from_slice(invite);
    id.extend_from_slice(inviter.as_bytes());
    id.extend_from_slice(joiner.as_bytes());
    Identity::new(&id)
}

/// Keys derived from the exchanged secret, one per use.
struct Session {
    key: [u8; 32],
}

impl Session {
    fn new(shared: &[u8]) -> Self {
        Session {
            key: blake3::derive_key("sovryn join 1 session", shared),
        }
    }

    fn confirm(&self, side: &str) -> String {
        let k = blake3::derive_key("sovryn join 1 confirm", &self.key);
        blake3::keyed_hash(&k, side.as_bytes()).to_hex().to_string()
    }

    fn check(&self, side: &str, got: &str) -> bool {
        blake3::Hash::from_hex(got).is_ok_and(|h| {
            let k = blake3::derive_key("sovryn join 1 confirm", &self.key);
            // `blake3::Hash` compares in constant time.
            blake3::keyed_hash(&k, side.as_bytes()) == h
        })
    }

    /// The string both people compare: eight digits.
    fn confirmation(&self) -> String {
        let k = blake3::derive_key("sovryn join 1 words", &self.key);
        let n = u32::from_le_bytes([k[0], k[1], k[2], k[3]]) % 100_000_000;
        format!("{:04}-{:04}", n / 10_000, n % 10_000)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let k = blake3::derive_key("sovryn join 1 bundle", &self.key);
        ChaCha20Poly1305::new(Key::from_slice(&k))
    }

    fn seal(&self, plain: &[u8]) -> Result<String> {
        let nonce: [u8; 12] = rand::random();
        let mut out = nonce.to_vec();
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), plain)
            .map_err(|_| InviteError::Protocol("sealing the bundle failed".into()))?;
        out.extend_from_slice(&sealed);
        Ok(hex::encode(out))
    }

    fn open(&self, sealed: &str) -> Result<Vec<u8>> {
        let bytes = hex::decode(sealed).map_err(|_| InviteError::Protocol("bad bundle".into()))?;
        if bytes.len() < 12 {
            return Err(InviteError::Protocol("bad bundle".into()));
        }
        let (nonce, body) = bytes.split_at(12);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| InviteError::Protocol("the bundle does not open".into()))
    }
}

async fn write<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| InviteError::Protocol(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| InviteError::Protocol("too large".into()))?;
    let io = |e: iroh::endpoint::WriteError| InviteError::Connection(e.to_string());
    send.write_all(&len.to_be_bytes()).await.map_err(io)?;
    send.write_all(&body).await.map_err(io)?;
    Ok(())
}

async fn read<T: for<'de> Deserialize<'de>>(recv: &mut RecvStream, max: usize) -> Result<T> {
    let step = async {
        let io = |e: iroh::endpoint::ReadExactError| InviteError::Connection(e.to_string());
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(InviteError::Protocol(format!("a message of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(io)?;
        serde_json::from_slice(&body).map_err(|e| InviteError::Protocol(e.to_string()))
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| InviteError::Connection("the other side went quiet".into()))?
}

fn pake_bytes(hex_text: &str) -> Result<Vec<u8>> {
    let b = hex::decode(hex_text).map_err(|_| InviteError::Protocol("bad key exchange".into()))?;
    if b.len() > 64 {
        return Err(InviteError::Protocol("bad key exchange".into()));
    }
    Ok(b)
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
    let fail = |reason: String| {
        invites.settle(id, Outcome::Failed { reason });
    };
    // Whatever goes wrong from here, the invite shows as failed (the
    // success path settles it as joined, which wins).
    let outcome = admitted(
        invites, id, me, joiner, &mut send, &mut recv, open, hello.pake, name, addrs,
    )
    .await;
    if let Err(e) = &outcome {
        let settled = invites
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|o| *o != Outcome::Open);
        if !settled {
            fail(e.to_string());
        }
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
    let fail = |reason: String| {
        invites.settle(id, Outcome::Failed { reason });
    };
    let (state, mine) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(open.secret),
        &identity(&id, &me, &joiner),
    );
    let shared = match pake_bytes(&their_pake).and_then(|b| {
        state
            .finish(&b)
            .map_err(|_| InviteError::Protocol("bad key exchange".into()))
    }) {
        Ok(k) => k,
        Err(e) => {
            fail(e.to_string());
            return Err(e);
        }
    };
    let session = Session::new(&shared);
    write(
        send,
        &Reply::Pake {
            pake: hex::encode(mine),
            confirm: session.confirm("inviter"),
        },
    )
    .await?;
    let confirmed = match read::<Reply>(recv, MAX_JOINER_MESSAGE).await {
        Ok(Reply::Confirm { confirm }) => session.check("joiner", &confirm),
        Ok(_) => false,
        Err(e) => {
            fail(format!("the joiner left: {e}"));
            return Err(e);
        }
    };
    if !confirmed {
        fail("a device tried it with the wrong secret".into());
        let _ = write(
            send,
            &Reply::Error {
                message: "wrong secret; the invite is spent".into(),
            },
        )
        .await;
        return Err(InviteError::WrongSecret);
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
            fail(e.clone());
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

    fn code() -> InviteCode {
        InviteCode {
            inviter: *iroh::SecretKey::generate().public().as_bytes(),
            addrs: vec!["127.0.0.1:4000".parse().unwrap()],
            relay: None,
            invite: rand::random(),
            secret: rand::random(),
        }
    }

    #[test]
    fn a_code_reads_back_and_a_damaged_one_is_refused() {
        let c = code();
        let text = c.encode();
        assert!(text.starts_with(CODE_PREFIX));
        assert_eq!(
            InviteCode::parse(&format!(
                "  {}\n",
                text.to_uppercase().replacen("SOVRYN1-", "sovryn1-", 1)
            ))
            .unwrap(),
            c
        );
        assert!(InviteCode::parse(&text[..text.len() - 6]).is_err());
        assert!(InviteCode::parse("sovryn1-!!!").is_err());
        assert!(InviteCode::parse("hello").is_err());
    }

    #[test]
    fn both_sides_derive_one_key_only_from_the_same_secret() {
        let (a, b) = (
            iroh::SecretKey::generate().public(),
            iroh::SecretKey::generate().public(),
        );
        let id = [1u8; 8];
        let run = |sa: [u8; 5], sb: [u8; 5]| {
            let (s1, m1) =
                Spake2::<Ed25519Group>::start_symmetric(&Password::new(sa), &identity(&id, &a, &b));
            let (s2, m2) =
                Spake2::<Ed25519Group>::start_symmetric(&Password::new(sb), &identity(&id, &a, &b));
            let (k1, k2) = (s1.finish(&m2).unwrap(), s2.finish(&m1).unwrap());
            (Session::new(&k1), Session::new(&k2))
        };
        let (x, y) = run([9; 5], [9; 5]);
        assert!(y.check("inviter", &x.confirm("inviter")));
        assert!(!y.check("joiner", &x.confirm("inviter")));
        assert_eq!(x.confirmation(), y.confirmation());
        let sealed = x.seal(b"keys").unwrap();
        assert_eq!(y.open(&sealed).unwrap(), b"keys");
        let (x, y) = run([9; 5], [8; 5]);
        assert!(!y.check("inviter", &x.confirm("inviter")));
        assert!(y.open(&x.seal(b"keys").unwrap()).is_err());
    }

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
