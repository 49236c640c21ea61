//! MCP tokens and the audit log, as the dashboard manages them. An unscoped
//! admin sees and manages every token and every audit line; a signed-in
//! user the tokens they made (`NAME.TOKEN`, never reaching past their own
//! capabilities and workspace) and the lines of their own calls.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{audited, ApiError, Call};
use crate::http::Auth;
use crate::tokens::{parse_duration, Capability, PathScope, TokenStore};

/// Whose tokens and audit lines a caller may see: everyone's (`None`), or
/// those of the user signed in (their name).
fn owner(call: &Call) -> Result<Option<String>, ApiError> {
    match &call.user {
        Some(u) if !u.admin => Ok(Some(u.name.clone())),
        _ if call.principal.is_unscoped_admin() => Ok(None),
        Some(u) => Ok(Some(u.name.clone())),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "managing tokens and reading the audit log needs an admin token without path limits, or a signed-in user",
        )),
    }
}

fn mine(owner: &Option<String>, token_name: &str) -> bool {
    owner.as_ref().is_none_or(|o| {
        token_name
            .strip_prefix(o.as_str())
            .is_some_and(|r| r.starts_with('.'))
    })
}

async fn with_tokens<T: Send + 'static>(
    st: &Arc<Auth>,
    f: impl FnOnce(&TokenStore) -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let home = st.shared.home.clone();
    tokio::task::spawn_blocking(move || f(&TokenStore::open(&home)?))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// `GET /api/v1/tokens`: the tokens the caller may manage.
pub(crate) async fn list(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "tokens",
        Vec::new(),
        async move {
            let owner = owner(&call)?;
            let all = with_tokens(&st, |t| t.list()).await?;
            let shown: Vec<_> = all.into_iter().filter(|t| mine(&owner, &t.name)).collect();
            Ok(Json(json!({"tokens": shown})).into_response())
        },
    )
    .await
}

/// `{"name", "capabilities", "paths"?, "expires"?}` of a new token.
#[derive(Debug, Deserialize)]
pub(crate) struct NewToken {
    name: String,
    capabilities: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    expires: Option<String>,
}

/// `POST /api/v1/tokens`: a token, its secret shown once. A user's token
/// is named `USER.NAME` and holds at most what the user may do (paths
/// default to the whole of the user's workspace).
pub(crate) async fn create(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Json(b): Json<NewToken>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "token create",
        b.paths.clone(),
        async move {
            let owner = owner(&call)?;
            let caps = b
                .capabilities
                .iter()
                .map(|c| c.parse::<Capability>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::bad(e.to_string()))?;
            let paths = match (&call.user, b.paths.is_empty()) {
                (Some(u), true) if !u.admin => vec![format!("{}/**", u.workspace)],
                _ => b.paths.clone(),
            };
            let scope = PathScope::new(&paths).map_err(|e| ApiError::bad(e.to_string()))?;
            if !call.principal.may_grant(&caps, &scope) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "a token cannot hold more than its maker: a capability or path you do not have",
                ));
            }
            let name = match &owner {
                Some(o) => format!("{o}.{}", b.name),
                None => b.name.clone(),
            };
            let expires = b
                .expires
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| ApiError::bad(e.to_string()))?;
            let n = name.clone();
            let p = paths.clone();
            let secret = with_tokens(&st, move |t| t.create(&n, &caps, &p, expires)).await?;
            Ok((
                StatusCode::CREATED,
                Json(json!({"name": name, "token": secret, "paths": paths})),
            )
                .into_response())
        },
    )
    .await
}

/// `DELETE /api/v1/tokens/NAME`: the token stops working (its sessions end
/// within a second).
pub(crate) async fn revoke(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "token revoke",
        Vec::new(),
        async move {
            let owner = owner(&call)?;
            if !mine(&owner, &name) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no token named '{name}'"),
                ));
            }
            let n = name.clone();
            with_tokens(&st, move |t| t.revoke(&n)).await?;
            Ok(Json(json!({"revoked": name})).into_response())
        },
    )
    .await
}

/// `?limit=N` of the audit log.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<usize>,
}

/// The bytes of the audit log read from its end at most.
const AUDIT_TAIL: u64 = 4 << 20;

/// `GET /api/v1/audit?limit=N`: the newest lines of the audit log the
/// caller may read, newest first.
pub(crate) async fn audit(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Query(q): Query<AuditQuery>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "audit",
        Vec::new(),
        async move {
            let owner = owner(&call)?;
            let limit = q.limit.unwrap_or(200).clamp(1, 2000);
            let path = crate::audit::audit_path(&st.shared.home);
            let lines =
                tokio::task::spawn_blocking(move || -> std::io::Result<Vec<serde_json::Value>> {
                    let mut f = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                        Err(e) => return Err(e),
                    };
                    let len = f.metadata()?.len();
                    f.seek(SeekFrom::Start(len.saturating_sub(AUDIT_TAIL)))?;
                    let mut raw = Vec::new();
                    f.take(AUDIT_TAIL).read_to_end(&mut raw)?;
                    // The first line may be cut by the seek: it does not parse and
                    // is left out.
                    let text = String::from_utf8_lossy(&raw);
                    Ok(text
                        .lines()
                        .rev()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .filter(|v| {
                            let token = v["token"].as_str().unwrap_or("");
                            owner.as_ref().is_none_or(|o| {
                                token == format!("user:{o}") || mine(&Some(o.clone()), token)
                            })
                        })
                        .take(limit)
                        .collect())
                })
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(Json(json!({"lines": lines})).into_response())
        },
    )
    .await
}
