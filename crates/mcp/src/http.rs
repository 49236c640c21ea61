//! MCP over Streamable HTTP at `/mcp`, behind bearer-token auth.
//!
//! * no or bad token: 401 with `WWW-Authenticate: Bearer resource_metadata=…`
//!   pointing at the RFC 9728 document at `/.well-known/oauth-protected-resource`;
//! * a tool call the token's capabilities do not cover: 403 (`insufficient_scope`);
//! * over the token's rate: 429 with `Retry-After`;
//! * a body over the cap: 413;
//! * `/healthz` answers without a token.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
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
use crate::tokens::{Capability, Principal, TokenStore};
use crate::tools::{tool_capability, SovrynServer};
use crate::{McpState, Shared};

/// Limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Requests per minute per token (sustained).
    pub rate_per_minute: u32,
    /// Requests a token may make in a burst.
    pub burst: u32,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            rate_per_minute: 6000,
            burst: 200,
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

struct Auth {
    tokens: Mutex<TokenStore>,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Per client address, token or not (4× a token's rate): bounds guessing and floods.
    ip_limiter: DefaultKeyedRateLimiter<std::net::IpAddr>,
    max_body: usize,
    shared: Arc<Shared>,
}

fn metadata_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/.well-known/oauth-protected-resource")
}

fn error_body(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

fn unauthorized(headers: &HeaderMap, presented: bool) -> Response {
    let mut value = format!("Bearer resource_metadata=\"{}\"", metadata_url(headers));
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

async fn bearer_auth(State(st): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        if let Err(not_until) = st.ip_limiter.check_key(&addr.ip()) {
            return too_many(not_until);
        }
    }
    let headers = req.headers().clone();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    let Some(secret) = presented else {
        return unauthorized(&headers, false);
    };
    let principal = {
        let Ok(tokens) = st.tokens.lock() else {
            return error_body(StatusCode::INTERNAL_SERVER_ERROR, "token store unavailable");
        };
        match tokens.verify(&secret) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("verifying a token: {e:#}");
                return error_body(StatusCode::INTERNAL_SERVER_ERROR, "token store error");
            }
        }
    };
    let Some(principal) = principal else {
        return unauthorized(&headers, true);
    };
    if let Err(not_until) = st.limiter.check_key(&principal.name) {
        return too_many(not_until);
    }
    let too_big = headers
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
                metadata_url(&headers)
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

async fn protected_resource(headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    Json(json!({
        "resource": format!("http://{host}/mcp"),
        "authorization_servers": [],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["read", "write", "admin", "status"],
        "resource_name": "Sovryn MCP server",
        "resource_documentation": "https://github.com/sovryn (sovryn mcp tokens create --help)"
    }))
    .into_response()
}

/// The axum app: `/mcp` (authenticated), `/healthz`, and the RFC 9728 document.
pub fn router(
    state: McpState,
    opts: &HttpOptions,
    bind: SocketAddr,
    ct: tokio_util::sync::CancellationToken,
) -> Result<Router> {
    let shared = Shared::new(state)?;
    let home = shared.state.home()?;
    let tokens = TokenStore::open(&home)?;
    let per_min = NonZeroU32::new(opts.rate_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(opts.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let four = NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN);
    let auth = Arc::new(Auth {
        tokens: Mutex::new(tokens),
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
    config = if bind.ip().is_unspecified() {
        config.disable_allowed_hosts()
    } else {
        let ip = bind.ip().to_string();
        config.with_allowed_hosts([
            "localhost".to_string(),
            "127.0.0.1".into(),
            "::1".into(),
            ip,
        ])
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
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        );
    let guarded = Router::new()
        .route_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(auth, bearer_auth));
    Ok(public.merge(guarded))
}

/// Serves MCP over HTTP on `bind` with default limits until `shutdown` resolves.
pub async fn serve_http<F>(state: McpState, bind: SocketAddr, shutdown: F) -> Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    serve_http_with(state, bind, HttpOptions::default(), shutdown, |_| {}).await
}

/// Like [`serve_http`], with limits; `on_bound` gets the bound address (port 0 picks one).
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
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the MCP HTTP listener on {bind}"))?;
    let local = listener.local_addr()?;
    let app = router(state, &opts, local, ct.child_token())?;
    on_bound(local);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        ct.cancel();
    })
    .await
    .context("MCP HTTP server")?;
    Ok(())
}
