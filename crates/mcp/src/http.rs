//! MCP over Streamable HTTP at `/mcp`, behind bearer-token auth.
//!
//! * no or bad token: 401 with `WWW-Authenticate: Bearer resource_metadata=…`
//!   pointing at the RFC 9728 document at `/.well-known/oauth-protected-resource`;
//! * a tool call the token's capabilities do not cover: 403 (`insufficient_scope`);
//! * over the token's rate: 429 with `Retry-After`;
//! * a body over the cap: 413;
//! * `/healthz` and `/readyz` answer without a token; `/metrics` (Prometheus)
//!   needs one with the `status` capability.
//!
//! In front of every route, [`gateway::guard`] checks the client's network
//! (`mcp.allow_cidrs`), the Host and the Origin (403), and records metrics.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{invalid, Result, WithContext};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use crate::audit::AuditLine;
use crate::gateway::{self, Guard, McpListener, PeerAddr};
use crate::jwt::{looks_like_jwt, JwtVerifier};
use crate::tokens::{Capability, PathScope, Principal, TokenStore, TokenVerifier};
use crate::tools::{tool_capability, SovrynServer};
use crate::{McpState, Shared};

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
        }
    }
}

impl HttpOptions {
    /// Default limits with the security settings of `mcp.*` in `config.toml`
    /// (`allowed_hosts`, `allowed_origins`, `allow_cidrs`, `jwt_secret` or
    /// `jwt_secret_file`, `tls_cert` + `tls_key`).
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
            jwt: secret.map(|s| JwtVerifier::new(&s)).transpose()?,
            tls,
            ..HttpOptions::default()
        })
    }
}

struct Auth {
    tokens: Mutex<TokenVerifier>,
    jwt: Option<JwtVerifier>,
    no_auth: bool,
    scheme: &'static str,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Per client address, token or not (4× a token's rate): bounds guessing and floods.
    ip_limiter: DefaultKeyedRateLimiter<std::net::IpAddr>,
    max_body: usize,
    shared: Arc<Shared>,
}

fn metadata_url(scheme: &str, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}/.well-known/oauth-protected-resource")
}

fn error_body(status: StatusCode, msg: &str) -> Response {
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

/// What a request body asks for: the tool (or method), the capability it
/// needs and its arguments.
fn required_of(body: &[u8]) -> Option<(String, Capability, Option<rmcp::model::JsonObject>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let method = v.get("method")?.as_str()?;
    let params = v.get("params");
    match method {
        "tools/call" => {
            let name = params?.get("name")?.as_str()?.to_owned();
            let cap = tool_capability(&name)?;
            let args = params?
                .get("arguments")
                .and_then(|a| a.as_object())
                .cloned();
            Some((name, cap, args))
        }
        "resources/list"
        | "resources/read"
        | "resources/templates/list"
        | "resources/subscribe" => Some((
            method.to_owned(),
            Capability::Read,
            params.and_then(|p| p.as_object()).cloned(),
        )),
        _ => None,
    }
}

fn too_many(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> Response {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = error_body(
        StatusCode::TOO_MANY_REQUESTS,
        "rate limit exceeded; retry later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Who presented the request's bearer credential (a token from `mcp.db` or a
/// JWT), or the 401/500 response to send.
fn authenticate(st: &Auth, headers: &HeaderMap) -> Result<Principal, Box<Response>> {
    authenticate_inner(st, headers).map_err(Box::new)
}

#[allow(clippy::result_large_err)]
fn authenticate_inner(st: &Auth, headers: &HeaderMap) -> Result<Principal, Response> {
    if st.no_auth {
        return Ok(Principal {
            name: "anonymous".into(),
            capabilities: vec![Capability::Admin],
            scope: PathScope::default(),
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
        return Err(unauthorized(st.scheme, headers, false));
    };
    if let Some(jwt) = st.jwt.as_ref().filter(|_| looks_like_jwt(secret)) {
        return jwt
            .verify(secret, now_secs())
            .ok_or_else(|| unauthorized(st.scheme, headers, true));
    }
    let principal = {
        let Ok(mut tokens) = st.tokens.lock() else {
            return Err(error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "token store unavailable",
            ));
        };
        match tokens.verify(secret) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("verifying a token: {e:#}");
                return Err(error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "token store error",
                ));
            }
        }
    };
    principal.ok_or_else(|| unauthorized(st.scheme, headers, true))
}

/// The 429 to send when the client's address is over its rate.
fn check_ip(st: &Auth, req: &Request) -> Option<Response> {
    let ConnectInfo(PeerAddr(addr)) = req.extensions().get::<ConnectInfo<PeerAddr>>()?;
    st.ip_limiter.check_key(&addr.ip()).err().map(too_many)
}

async fn bearer_auth(State(st): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    if let Some(r) = check_ip(&st, &req) {
        return r;
    }
    let principal = match authenticate(&st, req.headers()) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(not_until) = st.limiter.check_key(&principal.name) {
        return too_many(not_until);
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
    if let Some((tool, cap, args)) = required_of(&bytes) {
        if !principal.can(cap) {
            st.shared.audit.write(&AuditLine {
                time: time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                token: principal.name.clone(),
                tool: tool.clone(),
                paths: crate::tools::args_paths(&args),
                outcome: "denied (403)".into(),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            });
            let mut r = error_body(
                StatusCode::FORBIDDEN,
                &format!("this token lacks the '{cap}' capability needed by {tool}"),
            );
            let value = format!(
                "Bearer error=\"insufficient_scope\", scope=\"{cap}\", resource_metadata=\"{}\"",
                metadata_url(st.scheme, &parts.headers)
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return r;
        }
    }
    parts.extensions.insert::<Principal>(principal);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
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
    if let Some(r) = check_ip(&st, &req) {
        return r;
    }
    let p = match authenticate(&st, req.headers()) {
        Ok(p) => p,
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
        tokio::task::spawn_blocking(move || node.lock().is_ok()),
    )
    .await;
    let node_ok = matches!(node_ok, Ok(Ok(true)));
    let tokens_ok = st.tokens.lock().ok().is_some_and(|mut t| t.ping().is_ok());
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
/// the RFC 9728 document; all behind [`gateway::guard`].
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
    let per_min = NonZeroU32::new(opts.rate_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(opts.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let four = NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN);
    let auth = Arc::new(Auth {
        tokens: Mutex::new(TokenVerifier::new(tokens)),
        jwt: opts.jwt.clone(),
        no_auth: opts.insecure_no_auth,
        scheme,
        limiter: RateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst)),
        ip_limiter: RateLimiter::keyed(
            Quota::per_minute(per_min.saturating_mul(four)).allow_burst(burst.saturating_mul(four)),
        ),
        max_body: opts.max_body_bytes,
        shared: shared.clone(),
    });
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
        LocalSessionManager::default().into(),
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
    let guarded = Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(auth, bearer_auth));
    Ok(public
        .merge(guarded)
        .layer(axum::middleware::from_fn_with_state(guard, gateway::guard)))
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
