//! The file API under `/api/v1`, on the listener MCP uses, with the same
//! bearer tokens, capabilities, path scopes, rate limits and audit log.
//! Every route checks the capability of its effect (reading, writing) and
//! confines every path to the token's scope; what lies outside answers
//! 403 and is audited like a refused tool call. Errors are JSON objects
//! `{"error": "..."}` a person can read. `openapi.json` (served at
//! `/api/v1/openapi.json`) describes the routes.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sovryn_engine::{paths, Node, Reader};

use crate::audit::AuditLine;
use crate::http::{authenticate, check_ip, client_of, error_body, governor_wait, too_many, Auth};
use crate::tokens::{Capability, Principal};

mod admin;
mod download;
mod files;
mod history;
mod queries;
pub(crate) mod session;
mod share_pages;
pub(crate) mod shares;
mod ui;

/// The OpenAPI document of the routes (a test asks the running server
/// for every route it names, and for none it does not).
const OPENAPI: &str = include_str!("openapi.json");

/// The routes, behind [`api_auth`] (all but the OpenAPI document).
pub(crate) fn router(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/api/v1/files", get(files::get_root))
        .route(
            "/api/v1/files/{*path}",
            get(files::get).put(files::put).delete(files::delete),
        )
        .route("/api/v1/stat/{*path}", get(files::stat))
        .route("/api/v1/mkdir", post(files::mkdir))
        .route("/api/v1/move", post(files::move_path))
        .route("/api/v1/versions/{*path}", get(history::versions))
        .route("/api/v1/restore", post(history::restore))
        .route("/api/v1/diff/{*path}", get(queries::diff))
        .route("/api/v1/search", get(queries::search))
        .route("/api/v1/conflicts", get(queries::conflicts))
        .route("/api/v1/conflicts/resolve", post(queries::resolve))
        .route("/api/v1/status", get(queries::status))
        .route("/api/v1/peers", get(queries::peers))
        .route("/api/v1/folders", get(queries::folders))
        .route("/api/v1/events", get(queries::events))
        .route("/api/v1/me", get(session::me))
        .route("/api/v1/tokens", get(admin::list).post(admin::create))
        .route(
            "/api/v1/tokens/{name}",
            axum::routing::delete(admin::revoke),
        )
        .route("/api/v1/audit", get(admin::audit))
        .merge(shares::api_routes())
        .layer(axum::middleware::from_fn_with_state(auth.clone(), api_auth))
        .merge(shares::public_routes())
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/api/v1/login", post(session::login))
        .route("/api/v1/logout", post(session::logout))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .with_state(auth)
}

/// Who is calling, from where, since when (set by [`api_auth`]).
#[derive(Clone)]
pub(crate) struct Call {
    pub(crate) principal: Principal,
    /// The signed-in user (a session), if not a token.
    pub(crate) user: Option<crate::users::UserInfo>,
    /// The session's CSRF token.
    pub(crate) csrf: Option<String>,
    client: Option<IpAddr>,
    started: Instant,
}

/// A refusal or failure, answered as `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_body(self.status, &self.message)
    }
}

impl From<sovryn_engine::Error> for ApiError {
    fn from(e: sovryn_engine::Error) -> Self {
        use sovryn_engine::Error as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Escape(_) => StatusCode::FORBIDDEN,
            E::BadPath(_) | E::Usage(_) => StatusCode::BAD_REQUEST,
            E::Stale(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<sovryn_store::Error> for ApiError {
    fn from(e: sovryn_store::Error) -> Self {
        ApiError::from(sovryn_engine::Error::from(e))
    }
}

/// Authenticates every request of the file API: a bearer token or JWT
/// (as `/mcp` does: client network rate, credential, the token's rate),
/// or else a signed-in user's session cookie (CSRF-checked for changes).
async fn api_auth(State(st): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let client = client_of(&req);
    if let Some(r) = check_ip(&st, client) {
        return r;
    }
    let bearer = req.headers().contains_key(header::AUTHORIZATION);
    let session = if bearer {
        None
    } else {
        session::session_caller(&st, &req)
    };
    let (principal, user, csrf) = match session {
        Some(Err(r)) => return r,
        Some(Ok((user, csrf))) => match user.principal() {
            Ok(p) => (p, Some(user), Some(csrf)),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => match authenticate(&st, req.headers(), client, "/api/v1").await {
            Ok(c) => (c.principal, None, None),
            Err(r) => return *r,
        },
    };
    if let Err(not_until) = st.limiter.check_key(&principal.name) {
        return too_many(governor_wait(not_until));
    }
    req.extensions_mut().insert(Call {
        principal,
        user,
        csrf,
        client,
        started: Instant::now(),
    });
    next.run(req).await
}

impl Call {
    /// Refuses a call whose token lacks `cap` (403).
    pub(crate) fn need(&self, cap: Capability, what: &str) -> Result<(), ApiError> {
        if self.principal.can(cap) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token lacks the '{cap}' capability needed to {what}"),
            ))
        }
    }

    /// A path from the client: normalised, confined, inside the token's
    /// scope (403 outside it). `""` is the root.
    pub(crate) fn scoped(&self, raw: &str) -> Result<String, ApiError> {
        let rel = paths::normalize_rel(raw)?;
        if !self.principal.scope.allows(&rel) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{}: outside the paths this token may use",
                    if rel.is_empty() { "/" } else { &rel }
                ),
            ));
        }
        Ok(rel)
    }

    /// A path to read: outside the token's scope it does not exist (404).
    pub(crate) fn scoped_read(&self, raw: &str) -> Result<String, ApiError> {
        let rel = paths::normalize_rel(raw)?;
        if !self.principal.scope.allows(&rel) {
            return Err(not_found(&rel));
        }
        Ok(rel)
    }

    /// A directory to list: in the scope or leading into it (its listing
    /// is filtered); otherwise it does not exist (404).
    pub(crate) fn scoped_dir(&self, raw: &str) -> Result<String, ApiError> {
        let rel = paths::normalize_rel(raw)?;
        if !self.principal.scope.visible(&rel) {
            return Err(not_found(&rel));
        }
        Ok(rel)
    }
}

pub(crate) fn not_found(rel: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such file or directory: {}",
            if rel.is_empty() { "/" } else { rel }
        ),
    )
}

/// Runs `op` and writes its audit line (`api OP`, the paths, the outcome).
pub(crate) async fn audited<F>(
    st: &Auth,
    call: &Call,
    op: &str,
    paths: Vec<String>,
    f: F,
) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let result = f.await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) if e.status == StatusCode::FORBIDDEN => format!("denied (403): {}", e.message),
        Err(e) => format!("error ({}): {}", e.status.as_u16(), e.message),
    };
    let mut line = AuditLine::now(
        call.principal.name.clone(),
        format!("api {op}"),
        paths,
        outcome,
        call.started.elapsed(),
    );
    line.client = call.client.map(|c| c.to_string());
    st.shared.audit.write(&line);
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Runs `f` on the node (the folder's one writer) on a blocking thread.
pub(crate) async fn on_node<T, F>(st: &Auth, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Node) -> Result<T, ApiError> + Send + 'static,
{
    let node = st.shared.state.node.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = node.lock().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is unavailable (a previous operation failed)",
            )
        })?;
        f(&mut guard)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Runs `f` with a read-only handle on a blocking thread.
pub(crate) async fn on_reader<T, F>(st: &Auth, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Reader) -> Result<T, ApiError> + Send + 'static,
{
    let reads = st.shared.state.reads.clone();
    tokio::task::spawn_blocking(move || f(&reads.get()))
        .await
        .map_err(ApiError::internal)?
}

/// Tells subscribers (MCP resources, the change stream) that `paths`
/// changed.
pub(crate) fn changed(st: &Auth, paths: impl IntoIterator<Item = String>) {
    for p in paths {
        let _ = st.shared.state.changes.send(p);
    }
}

/// A path's last part.
pub(crate) fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A byte count as people read it.
pub(crate) fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// Percent-encodes each part of a `/`-separated path (RFC 3986
/// unreserved characters stay), for URLs and RFC 5987 file names.
pub(crate) fn percent_path(rel: &str) -> String {
    rel.split('/')
        .map(|p| {
            p.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Compares secrets in a time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_well_formed() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().get(..2), Some("3."));
        let mut ids = std::collections::HashSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            assert!(path.starts_with("/api/v1/"), "{path}");
            for (method, op) in ops.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    op["responses"].is_object(),
                    "{method} {path} has no responses"
                );
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "{id} twice");
            }
        }
        // Every $ref points at something the document has.
        for r in OPENAPI.split("\"$ref\": \"#/components/").skip(1) {
            let target = r.split('"').next().unwrap();
            let (kind, name) = target.split_once('/').unwrap();
            assert!(
                doc["components"][kind][name].is_object(),
                "missing {target}"
            );
        }
    }
}
