//! MCP over Streamable HTTP at `/mcp`, behind bearer-token auth.
//!
//! * no or bad token: 401 with `WWW-Authenticate: Bearer resource_metadata=…`
//!   pointing at the RFC 9728 document at `/.well-known/oauth-protected-resource`;
//! * a tool call the token's capabilities do not cover: 403 (`insufficient_scope`);
//! * over the token's rate, or its client's: 429 with `Retry-After`;
//! * a body over the cap: 413;
//! * a new session over the token's cap (429) or the server's (503), with a
//!   JSON-RPC error; sessions idle for [`crate::sessions::SESSION_IDLE`]
//!   close, and a revoked or expired token's sessions and streams end
//!   within a second;
//! * refused authentications (401) are audited, at a bounded rate per client;
//! * `/healthz` and `/readyz` answer without a token; `/metrics` (Prometheus)
//!   needs one with the `status` capability.
//!
//! In front of every route, [`gateway::guard`] checks the client's network
//! (`mcp.allow_cidrs`), the Host and the Origin (403), and records metrics.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{invalid, Result, WithContext};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use crate::audit::{AuditLine, AuthFailures};
use crate::gateway::{self, Guard, McpListener, PeerAddr};
use crate::jwt::{looks_like_jwt, JwtVerifier};
use crate::limits::ClientLimiter;
use crate::sessions::{self, Ending, GrantKey, Refusal, Sessions, Source};
use crate::tokens::{fingerprint, Capability, PathScope, Principal, TokenStore, TokenVerifier};
use crate::tools::{tool_refusal, SovrynServer};
use crate::{McpState, Shared};

/// How often revocations and expiries are looked for (and a revoked
/// token's sessions and streams ended).
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// Housekeeping (forgotten clients, closed sessions, audit summaries)
/// runs every this many watches.
const HOUSEKEEPING_EVERY: u64 = 10;
/// The header naming a Streamable-HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Limits and security settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Requests per minute per token (sustained).
    pub rate_per_minute: u32,
    /// Requests a token may make in a burst.
    pub burst: u32,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Host names accepted besides loopback and the bind address.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides loopback ones (`https://app.example:443`, `http://x:*`).
    pub allowed_origins: Vec<String>,
    /// Client networks allowed (CIDR); empty: any.
    pub allow_cidrs: Vec<String>,
    /// HS256 JWTs accepted besides `mcp.db` tokens.
    pub jwt: Option<JwtVerifier>,
    /// TLS certificate chain and private key (PEM); both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Test mode for conformance suites that cannot send a token: every
    /// request acts as `anonymous` with all capabilities. Refused unless the
    /// listener binds a loopback address. Never on by default or from config.
    pub insecure_no_auth: bool,
    /// Sessions one token (or JWT subject) may hold at once; more are refused (429).
    pub max_sessions_per_token: usize,
    /// Sessions the server holds at once; more are refused (503).
    pub max_sessions: usize,
    /// A session without traffic (requests or notifications) for this long is closed.
    pub session_idle: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            rate_per_minute: 6000,
            burst: 200,
            max_body_bytes: 8 * 1024 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            allow_cidrs: Vec::new(),
            jwt: None,
            tls: None,
            insecure_no_auth: false,
            max_sessions_per_token: sessions::MAX_SESSIONS_PER_TOKEN,
            max_sessions: sessions::MAX_SESSIONS,
            session_idle: sessions::SESSION_IDLE,
        }
    }
}

impl HttpOptions {
    /// Default limits with the security settings of `mcp.*` in `config.toml`
    /// (`allowed_hosts`, `allowed_origins`, `allow_cidrs`, `jwt_secret` or
    /// `jwt_secret_file` with `jwt_audience` and `jwt_issuer`, `tls_cert` +
    /// `tls_key`).
    pub fn from_config(c: &sovryn_engine::config::McpConfig) -> Result<Self> {
        let secret = match (&c.jwt_secret, &c.jwt_secret_file) {
            (Some(s), _) if !s.is_empty() => Some(s.as_bytes().to_vec()),
            (_, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading mcp.jwt_secret_file {}", f.display()))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
            _ => None,
        };
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => invalid!("mcp.tls_cert and mcp.tls_key go together"),
        };
        Ok(HttpOptions {
            allowed_hosts: c.allowed_hosts.clone(),
            allowed_origins: c.allowed_origins.clone(),
            allow_cidrs: c.allow_cidrs.clone(),
            jwt: secret
                .map(|s| {
                    JwtVerifier::new(&s).map(|v| {
                        v.with_audience(c.jwt_audience.as_deref())
                            .with_issuer(c.jwt_issuer.as_deref())
                    })
                })
                .transpose()?,
            tls,
            ..HttpOptions::default()
        })
    }
}

pub(crate) struct Auth {
    /// The token database, used on blocking threads only: a lookup may wait
    /// on SQLite's locks, which must never stall the async runtime.
    tokens: Arc<Mutex<TokenVerifier>>,
    jwt: Option<JwtVerifier>,
    no_auth: bool,
    pub(crate) scheme: &'static str,
    pub(crate) limiter: DefaultKeyedRateLimiter<String>,
    /// Per client network, token or not (4× a token's rate): bounds guessing and floods.
    ip_limiter: ClientLimiter,
    /// Which refused authentications reach the audit log.
    auth_failures: Mutex<AuthFailures>,
    /// Live sessions by owner (caps, ownership, revocation).
    sessions: Arc<Sessions>,
    max_body: usize,
    pub(crate) shared: Arc<Shared>,
    /// Share links (`/s/<token>`).
    links: Arc<crate::rest::shares::Links>,
    /// Users and their sessions (the dashboard).
    accounts: Arc<crate::rest::session::Accounts>,
}

/// Who authenticated a request, and with what kind of credential.
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    source: Source,
}

impl Auth {
    /// The node's share links.
    pub(crate) fn links(&self) -> &Arc<crate::rest::shares::Links> {
        &self.links
    }

    /// The node's users and their sessions.
    pub(crate) fn accounts(&self) -> &Arc<crate::rest::session::Accounts> {
        &self.accounts
    }

    /// Audits a refused authentication from `client` (rate-limited, see
    /// [`AuthFailures`]): never the credential, at most its fingerprint.
    fn refused(&self, client: Option<IpAddr>, secret: Option<&str>, route: &str, why: &str) {
        metrics::counter!("mcp_auth_failures_total").increment(1);
        let ip = client.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let logged = self
            .auth_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused(ip, Instant::now());
        let Some(suppressed) = logged else {
            return;
        };
        let mut line = AuditLine::now(
            secret.map(fingerprint).unwrap_or_default(),
            format!("auth {route}"),
            Vec::new(),
            format!("denied (401): {why}"),
            Duration::ZERO,
        );
        line.client = client.map(|c| c.to_string());
        line.suppressed = (suppressed > 0).then_some(suppressed);
        self.shared.audit.write(&line);
    }

    /// Summary lines for the refusals that were not logged, once their
    /// client's window is over.
    fn audit_suppressed(&self) {
        let expired = self
            .auth_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expired(Instant::now());
        for (ip, n) in expired {
            let mut line = AuditLine::now(
                String::new(),
                "auth".into(),
                Vec::new(),
                format!("denied (401): {n} more refusals, not logged one by one"),
                Duration::ZERO,
            );
            line.client = Some(ip.map_or_else(|| "other".to_owned(), |ip| ip.to_string()));
            line.suppressed = Some(n);
            self.shared.audit.write(&line);
        }
    }
}

fn metadata_url(scheme: &str, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}/.well-known/oauth-protected-resource")
}

pub(crate) fn error_body(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

fn unauthorized(scheme: &str, headers: &HeaderMap, presented: bool) -> Response {
    let mut value = format!(
        "Bearer resource_metadata=\"{}\"",
        metadata_url(scheme, headers)
    );
    if presented {
        value.push_str(", error=\"invalid_token\"");
    }
    let mut r = error_body(
        StatusCode::UNAUTHORIZED,
        if presented {
            "invalid, expired or revoked token"
        } else {
            "a bearer token is required (sovryn mcp tokens create)"
        },
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// What a request body says, as far as the gateway cares.
#[derive(Default)]
struct Peek {
    /// The JSON-RPC method.
    method: Option<String>,
    /// The request id (for a JSON-RPC error of the gateway's own).
    id: serde_json::Value,
    /// The tool (or `resources/…` method) it needs a capability for.
    needs: Option<String>,
    /// Its parameters (moved out of the body, not copied).
    params: Option<serde_json::Value>,
}

impl Peek {
    fn of(body: &[u8]) -> Self {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Peek::default();
        };
        let method = v.get("method").and_then(|m| m.as_str()).map(str::to_owned);
        let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let params = v.get_mut("params").map(serde_json::Value::take);
        let needs = match method.as_deref() {
            Some("tools/call") => params
                .as_ref()
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned),
            Some(
                m @ ("resources/list"
                | "resources/read"
                | "resources/templates/list"
                | "resources/subscribe"),
            ) => Some(m.to_owned()),
            _ => None,
        };
        Peek {
            method,
            id,
            needs,
            params,
        }
    }

    /// The paths the call names (for the audit line).
    fn paths(&self) -> Vec<String> {
        let args = match self.method.as_deref() {
            Some("tools/call") => self.params.as_ref().and_then(|p| p.get("arguments")),
            _ => self.params.as_ref(),
        };
        crate::tools::args_paths(&args.and_then(|a| a.as_object()).cloned())
    }

    /// Why `p` may not make this call (the capability to name in the 403, and
    /// a sentence), if it may not.
    fn refusal(&self, p: &Principal) -> Option<(String, Capability, String)> {
        let tool = self.needs.as_ref()?;
        let (cap, why) = if tool.starts_with("resources/") {
            if p.can(Capability::Read) {
                return None;
            }
            (
                Capability::Read,
                format!("this token lacks the 'read' capability needed by {tool}"),
            )
        } else {
            tool_refusal(p, tool)?
        };
        Some((tool.clone(), cap, why))
    }
}

/// A JSON-RPC error answer of the gateway's own, with an HTTP status.
fn jsonrpc_error(status: StatusCode, id: serde_json::Value, message: &str) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": -32000, "message": message},
    });
    (status, Json(body)).into_response()
}

/// The answer to a handshake over a session cap: 429 (this token's) or 503
/// (the server's), with a JSON-RPC error saying what to do.
fn session_refused(refusal: Refusal, id: serde_json::Value) -> Response {
    let (status, msg) = match refusal {
        Refusal::PerToken(n) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("this token holds {n} MCP sessions already, the most it may: close one (HTTP DELETE with its Mcp-Session-Id) or wait until an idle one expires"),
        ),
        Refusal::Total(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the server holds {n} MCP sessions, the most it serves at once; retry later"),
        ),
    };
    let mut r = jsonrpc_error(status, id, &msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(60u64));
    r
}

pub(crate) fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = error_body(
        StatusCode::TOO_MANY_REQUESTS,
        "rate limit exceeded; retry later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

pub(crate) fn governor_wait(
    not_until: governor::NotUntil<governor::clock::QuantaInstant>,
) -> Duration {
    not_until.wait_time_from(DefaultClock::default().now())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Who presented the request's bearer credential (a token from `mcp.db` or a
/// JWT), or the 401/500 response to send. A refusal is audited (see
/// [`Auth::refused`]). The token database is read on a blocking thread.
pub(crate) async fn authenticate(
    st: &Arc<Auth>,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    route: &str,
) -> Result<Caller, Box<Response>> {
    if st.no_auth {
        return Ok(Caller {
            principal: Principal {
                name: "anonymous".into(),
                capabilities: vec![Capability::Admin],
                scope: PathScope::default(),
                expires: None,
            },
            source: Source::Other,
        });
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(secret) = presented else {
        st.refused(client, None, route, "no bearer token");
        return Err(Box::new(unauthorized(st.scheme, headers, false)));
    };
    if let Some(jwt) = st.jwt.as_ref().filter(|_| looks_like_jwt(secret)) {
        return match jwt.verify(secret, now_secs()) {
            Some(principal) => Ok(Caller {
                principal,
                source: Source::Other,
            }),
            None => {
                st.refused(client, Some(secret), route, "invalid or expired JWT");
                Err(Box::new(unauthorized(st.scheme, headers, true)))
            }
        };
    }
    let tokens = st.tokens.clone();
    let owned = secret.to_owned();
    let verified = tokio::task::spawn_blocking(move || {
        let mut tokens = tokens
            .lock()
            .map_err(|_| "token store unavailable".to_string())?;
        tokens.verify(&owned).map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match verified {
        Ok(Some(principal)) => Ok(Caller {
            principal,
            source: Source::Db,
        }),
        Ok(None) => {
            st.refused(
                client,
                Some(secret),
                route,
                "invalid, expired or revoked token",
            );
            Err(Box::new(unauthorized(st.scheme, headers, true)))
        }
        Err(e) => {
            tracing::error!("verifying a token: {e}");
            Err(Box::new(error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "token store error",
            )))
        }
    }
}

/// The connected client's address.
pub(crate) fn client_of(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(a))| a.ip())
}

/// The 429 to send when the client's network is over its rate.
pub(crate) fn check_ip(st: &Auth, client: Option<IpAddr>) -> Option<Response> {
    let ip = client?;
    st.ip_limiter.check(ip, Instant::now()).err().map(too_many)
}

/// The 403 for a call the caller may not make (audited).
fn forbidden_call(
    st: &Auth,
    principal: &Principal,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    (tool, cap, why): (String, Capability, String),
    args: Vec<String>,
    started: Instant,
) -> Response {
    let mut line = AuditLine::now(
        principal.name.clone(),
        tool,
        args,
        "denied (403)".into(),
        started.elapsed(),
    );
    line.client = client.map(|c| c.to_string());
    st.shared.audit.write(&line);
    let mut r = error_body(StatusCode::FORBIDDEN, &why);
    let value = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{cap}\", resource_metadata=\"{}\"",
        metadata_url(st.scheme, headers)
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

async fn bearer_auth(State(st): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let client = client_of(&req);
    if let Some(r) = check_ip(&st, client) {
        return r;
    }
    let caller = match authenticate(&st, req.headers(), client, "/mcp").await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let principal = caller.principal;
    if let Err(not_until) = st.limiter.check_key(&principal.name) {
        return too_many(governor_wait(not_until));
    }
    let too_big = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > st.max_body);
    if too_big {
        return error_body(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, st.max_body).await {
        Ok(b) => b,
        Err(_) => return error_body(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let peek = Peek::of(&bytes);
    if let Some(refusal) = peek.refusal(&principal) {
        return forbidden_call(
            &st,
            &principal,
            client,
            &parts.headers,
            refusal,
            peek.paths(),
            started,
        );
    }
    let session = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A session belongs to the token that opened it: to any other it does
    // not exist (no riding, closing or listening on someone else's).
    if let Some(id) = &session {
        if st
            .sessions
            .owner(id)
            .is_some_and(|owner| owner != principal.name)
        {
            return error_body(StatusCode::NOT_FOUND, "Not Found: Session not found");
        }
    }
    let key = GrantKey::of(&principal, caller.source);
    parts.extensions.insert(Ending(st.sessions.ending(&key)));
    let opens_session = session.is_none()
        && parts.method == Method::POST
        && peek.method.as_deref() == Some("initialize");
    let slot = if opens_session {
        let reserved = match st.sessions.reserve(&key) {
            Ok(slot) => Ok(slot),
            Err(_) => {
                // Sessions rmcp closed may still be on the book: look again.
                st.sessions.prune().await;
                st.sessions.reserve(&key)
            }
        };
        match reserved {
            Ok(slot) => Some(slot),
            Err(refusal) => {
                tracing::info!("MCP session refused to {}: {refusal:?}", principal.name);
                return session_refused(refusal, peek.id);
            }
        }
    } else {
        None
    };
    let is_delete = parts.method == Method::DELETE;
    parts.extensions.insert::<Principal>(principal);
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let answered = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok());
    match (session.as_deref(), answered) {
        (None, Some(id)) => {
            let slot = match slot {
                Some(slot) => Ok(slot),
                // A session made by a request not seen as a handshake: it
                // is counted all the same, or closed when over a cap.
                None => st.sessions.reserve(&key),
            };
            match slot {
                Ok(slot) => slot.bind(id),
                Err(refusal) => {
                    let id = id.to_owned();
                    st.sessions.close(&id).await;
                    return session_refused(refusal, peek.id);
                }
            }
        }
        (Some(id), _) if is_delete && response.status().is_success() => st.sessions.forget(id),
        _ => {}
    }
    response
}

fn protected_resource(scheme: &str, headers: &HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    Json(json!({
        "resource": format!("{scheme}://{host}/mcp"),
        "authorization_servers": [],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["read", "write", "admin", "status"],
        "resource_name": "Sovryn MCP server",
        "resource_documentation": "https://github.com/sovryn (sovryn mcp tokens create --help)"
    }))
    .into_response()
}

/// `/metrics`: Prometheus text, for a token with the `status` capability.
async fn metrics_endpoint(State(st): State<Arc<Auth>>, req: Request) -> Response {
    let client = client_of(&req);
    if let Some(r) = check_ip(&st, client) {
        return r;
    }
    let p = match authenticate(&st, req.headers(), client, "/metrics").await {
        Ok(c) => c.principal,
        Err(r) => return *r,
    };
    if !p.can(Capability::Status) {
        return error_body(
            StatusCode::FORBIDDEN,
            "/metrics needs a token with the 'status' capability",
        );
    }
    let Some(handle) = gateway::prometheus() else {
        return error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process",
        );
    };
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// `/readyz`: 200 once the node answers and the token database opens, 503 otherwise.
async fn readyz(State(st): State<Arc<Auth>>) -> Response {
    let node = st.shared.state.node.clone();
    let node_ok = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || !node.is_poisoned()),
    )
    .await;
    let node_ok = matches!(node_ok, Ok(Ok(true)));
    let tokens = st.tokens.clone();
    let tokens_ok = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || {
            tokens.lock().ok().is_some_and(|mut t| t.ping().is_ok())
        }),
    )
    .await;
    let tokens_ok = matches!(tokens_ok, Ok(Ok(true)));
    let ready = node_ok && tokens_ok;
    let body = Json(json!({
        "status": if ready { "ready" } else { "not ready" },
        "node": if node_ok { "ok" } else { "busy or unavailable" },
        "tokens": if tokens_ok { "ok" } else { "unavailable" },
    }));
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// The axum app: `/mcp` (authenticated), `/healthz`, `/readyz`, `/metrics`,
/// the RFC 9728 document; all behind [`gateway::guard`]. Called inside a
/// Tokio runtime, it also starts the task that ends revoked or expired
/// credentials' sessions and streams; it runs until `ct` is cancelled.
pub fn router(
    state: McpState,
    opts: &HttpOptions,
    bind: SocketAddr,
    ct: tokio_util::sync::CancellationToken,
) -> Result<Router> {
    if opts.insecure_no_auth && !bind.ip().is_loopback() {
        invalid!(
            "the unauthenticated test mode only binds loopback addresses, not {}",
            bind.ip()
        );
    }
    let guard = Arc::new(Guard::new(
        bind.ip(),
        &opts.allowed_hosts,
        &opts.allowed_origins,
        &opts.allow_cidrs,
    )?);
    let _ = gateway::prometheus(); // install the recorder before the first request
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let shared = Shared::new(state)?;
    let home = shared.state.home()?;
    let tokens = TokenStore::open(&home)?;
    // The watcher's own connection: revocations are seen without waiting
    // for the request path's lock.
    let watch = TokenStore::open(&home)?;
    let per_min = NonZeroU32::new(opts.rate_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(opts.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let manager = Arc::new(sessions::manager(opts.session_idle));
    let auth = Arc::new(Auth {
        tokens: Arc::new(Mutex::new(TokenVerifier::new(tokens))),
        jwt: opts.jwt.clone(),
        no_auth: opts.insecure_no_auth,
        scheme,
        limiter: RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst)),
        ip_limiter: ClientLimiter::new(
            opts.rate_per_minute.max(1).saturating_mul(4),
            opts.burst.max(1).saturating_mul(4),
            crate::limits::MAX_CLIENTS,
        ),
        auth_failures: Mutex::new(AuthFailures::default()),
        sessions: Arc::new(Sessions::new(
            manager.clone(),
            // In the test mode every client is `anonymous`: only the total counts.
            if opts.insecure_no_auth {
                opts.max_sessions
            } else {
                opts.max_sessions_per_token
            },
            opts.max_sessions,
        )),
        max_body: opts.max_body_bytes,
        shared: shared.clone(),
        links: crate::rest::shares::Links::open(&home)?,
        accounts: crate::rest::session::Accounts::open(&home)?,
    });
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(watch_grants(auth.clone(), watch, ct.clone()));
        }
        Err(_) => tracing::warn!(
            "MCP router built outside a Tokio runtime: revocations will not end open sessions"
        ),
    }
    let mut config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_max_request_body_bytes(opts.max_body_bytes)
        .with_cancellation_token(ct);
    // The guard checks Host first; rmcp checks the same list again.
    config = if guard.hosts().is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(guard.hosts().to_vec())
    };
    let factory_shared = shared.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(SovrynServer::new(factory_shared.clone(), None)),
        manager,
        config,
    );
    let node_name = shared.node_name.clone();
    let public = Router::new()
        .route(
            "/healthz",
            get(move || {
                let name = node_name.clone();
                async move { Json(json!({"status": "ok", "node": name})) }
            }),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(move |h: HeaderMap| async move { protected_resource(scheme, &h) }),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(move |h: HeaderMap| async move { protected_resource(scheme, &h) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .with_state(auth.clone());
    let api = crate::rest::router(auth.clone());
    let guarded = Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(auth, bearer_auth));
    Ok(public
        .merge(guarded)
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(guard, gateway::guard)))
}

/// Ends the sessions and streams of credentials that expired or were
/// revoked (every [`WATCH_EVERY`], until `ct` is cancelled), and keeps the
/// gateway's memory bounded: forgets idle clients, drops sessions rmcp
/// closed, writes the audit summaries of unlogged refusals.
///
/// Revocations are read from `mcp.db` on a blocking thread, only when the
/// table changed (`data_version`): the names revoked or expired so far are
/// kept, so a grant made just before its token's revocation was noticed
/// still ends at the next watch.
async fn watch_grants(st: Arc<Auth>, store: TokenStore, ct: tokio_util::sync::CancellationToken) {
    let store = Arc::new(Mutex::new(store));
    let mut version: Option<i64> = None;
    let mut unusable: Arc<HashSet<String>> = Arc::default();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = ct.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_secs();
        let expired = st
            .sessions
            .end(|k| k.expires.is_some_and(|e| e <= now))
            .await;
        if expired > 0 {
            tracing::info!("closed {expired} MCP sessions of expired credentials");
        }
        let has_db_grants = st.sessions.grants().iter().any(|k| k.source == Source::Db);
        if has_db_grants {
            let s = store.clone();
            let last = version;
            let read = tokio::task::spawn_blocking(move || -> crate::Result<_> {
                let s = s.lock().map_err(|_| crate::Error::NodeUnavailable)?;
                let v = s.data_version()?;
                if Some(v) == last {
                    return Ok((v, None));
                }
                let now = now_secs();
                let names: HashSet<String> = s
                    .list()?
                    .into_iter()
                    .filter(|t| !t.usable(now))
                    .map(|t| t.name)
                    .collect();
                Ok((v, Some(names)))
            })
            .await;
            match read {
                Ok(Ok((v, names))) => {
                    version = Some(v);
                    if let Some(names) = names {
                        unusable = Arc::new(names);
                    }
                }
                Ok(Err(e)) => tracing::warn!("reading MCP token revocations: {e:#}"),
                Err(e) => tracing::warn!("reading MCP token revocations: {e}"),
            }
            let gone = unusable.clone();
            let ended = st
                .sessions
                .end(|k| k.source == Source::Db && gone.contains(&k.name))
                .await;
            if ended > 0 {
                tracing::info!("closed {ended} MCP sessions of revoked tokens");
            }
        }
        if n % HOUSEKEEPING_EVERY == 0 {
            st.sessions.prune().await;
            metrics::gauge!("mcp_sessions").set(st.sessions.total() as f64);
            st.ip_limiter.forget_idle(Instant::now());
            metrics::gauge!("mcp_rate_limited_clients").set(st.ip_limiter.len() as f64);
            st.limiter.retain_recent();
            st.limiter.shrink_to_fit();
            st.audit_suppressed();
        }
    }
}

/// Serves MCP over HTTP on `bind` with default limits until `shutdown` resolves.
pub async fn serve_http<F>(state: McpState, bind: SocketAddr, shutdown: F) -> Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    serve_http_with(state, bind, HttpOptions::default(), shutdown, |_| {}).await
}

/// Like [`serve_http`], with limits; `on_bound` gets the bound address (port 0 picks one).
/// With `opts.tls` the listener speaks HTTPS only.
pub async fn serve_http_with<F>(
    state: McpState,
    bind: SocketAddr,
    opts: HttpOptions,
    shutdown: F,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let ct = tokio_util::sync::CancellationToken::new();
    // However this returns (a bind error, the listener failing), the tasks
    // started for it (the revocation watcher, the accept loop) stop.
    let _stop = ct.clone().drop_guard();
    let tls = match &opts.tls {
        Some((cert, key)) => Some(gateway::tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the MCP HTTP listener on {bind}"))?;
    let local = listener.local_addr()?;
    let app = router(state, &opts, local, ct.child_token())?;
    let listener = McpListener::new(listener, tls, ct.child_token())?;
    on_bound(local);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        ct.cancel();
    })
    .await
    .context("MCP HTTP server")?;
    Ok(())
}
