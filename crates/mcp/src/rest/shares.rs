//! Share links through the API (`/api/v1/shares`: made with the `write`
//! capability for a path in the token's scope, listed and revoked within
//! it), and [`Links`], what the public pages (`super::share_pages`) use:
//! the links' store and the key that signs unlock cookies.

use std::sync::{Arc, Mutex};

use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use sovryn_engine::View;

use super::{audited, constant_time_eq, not_found, on_reader, ApiError, Call};
use crate::http::Auth;
use crate::shares::{NewShare, ShareStore};
use crate::tokens::Capability;

/// What serves links: the store, and the key that signs unlock cookies.
pub(crate) struct Links {
    store: Mutex<ShareStore>,
    cookie_key: [u8; 32],
}

impl Links {
    pub(crate) fn open(home: &std::path::Path) -> crate::Result<Arc<Self>> {
        Ok(Arc::new(Links {
            store: Mutex::new(ShareStore::open(home)?),
            cookie_key: rand::random(),
        }))
    }

    pub(crate) async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&ShareStore) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = me.store.lock().unwrap_or_else(|e| e.into_inner());
            f(&store)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            crate::Error::Invalid(m) => ApiError::bad(m),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })
    }

    /// The cookie that says link `id`'s password was given (HMAC of the
    /// id under a key made at start: a restart asks again).
    pub(crate) fn unlock_value(&self, id: &str) -> String {
        // HMAC takes a key of any length: this never fails, and if it did
        // no cookie would match.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cookie_key) else {
            return String::new();
        };
        mac.update(b"sovryn share unlock\0");
        mac.update(id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub(crate) fn unlocked(&self, id: &str, headers: &HeaderMap) -> bool {
        let want = self.unlock_value(id);
        let name = format!("sovryn_share_{id}=");
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(&name))
            .any(|v| !want.is_empty() && constant_time_eq(v.as_bytes(), want.as_bytes()))
    }
}

/// The routes: the API's (behind its authentication) and the public pages.
pub(crate) fn api_routes() -> Router<Arc<Auth>> {
    Router::new()
        .route("/api/v1/shares", get(list).post(create))
        .route("/api/v1/shares/{id}", axum::routing::delete(revoke))
}

pub(crate) fn public_routes() -> Router<Arc<Auth>> {
    use super::share_pages::{open_root, open_sub, unlock};
    Router::new()
        .route("/s/{token}", get(open_root).post(unlock))
        .route("/s/{token}/{*sub}", get(open_sub))
}

/// `{"path", "expires"?, "password"?, "max_downloads"?}` of a new link.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateBody {
    path: String,
    expires: Option<String>,
    password: Option<String>,
    max_downloads: Option<u64>,
}

fn base_url(st: &Auth, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("{}://{host}", st.scheme)
}

/// `POST /api/v1/shares`: a link to a path the token may write.
async fn create(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    headers: HeaderMap,
    Json(b): Json<CreateBody>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "share create",
        vec![b.path.clone()],
        async move {
            call.need(Capability::Write, "share files")?;
            let rel = call.scoped(&b.path)?;
            let r = rel.clone();
            on_reader(&st, move |reader| {
                reader
                    .store()
                    .file(&r)?
                    .filter(|f| !f.entry.deleted)
                    .map(|_| ())
                    .ok_or_else(|| not_found(&r))
            })
            .await?;
            let expires_in = b
                .expires
                .as_deref()
                .map(crate::tokens::parse_duration)
                .transpose()
                .map_err(|e| ApiError::bad(e.to_string()))?;
            let new = NewShare {
                path: rel,
                expires_in,
                password: b.password.filter(|p| !p.is_empty()),
                max_downloads: b.max_downloads,
                created_by: call.principal.name.clone(),
            };
            let (info, token) = st.links().with(move |s| s.create(new)).await?;
            let url = format!("{}/s/{token}", base_url(&st, &headers));
            Ok((
                StatusCode::CREATED,
                Json(json!({"url": url, "id": info.id, "expires": info.expires, "share": info})),
            )
                .into_response())
        },
    )
    .await
}

/// `GET /api/v1/shares`: the links to paths in the token's scope.
async fn list(State(st): State<Arc<Auth>>, Extension(call): Extension<Call>) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "share list",
        Vec::new(),
        async move {
            call.need(Capability::Read, "list share links")?;
            let all = st.links().with(|s| s.list()).await?;
            let scope = call.principal.scope.clone();
            let mine: Vec<_> = all.into_iter().filter(|s| scope.allows(&s.path)).collect();
            Ok(Json(json!({"shares": mine})).into_response())
        },
    )
    .await
}

/// `DELETE /api/v1/shares/ID`: the link stops working.
async fn revoke(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "share revoke",
        vec![id.clone()],
        async move {
            call.need(Capability::Write, "revoke share links")?;
            let all = st.links().with(|s| s.list()).await?;
            let found = all
                .iter()
                .find(|s| s.id == id && call.principal.scope.allows(&s.path));
            if found.is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no link with id '{id}'"),
                ));
            }
            let i = id.clone();
            st.links().with(move |s| s.revoke(&i)).await?;
            Ok(Json(json!({"revoked": id})).into_response())
        },
    )
    .await
}
