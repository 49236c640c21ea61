//! A file's history: its versions, and restoring one (a new version with
//! the old content; nothing is lost).

use std::sync::Arc;

use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::files::record_json;
use super::{audited, changed, on_node, on_reader, ApiError, Call};
use crate::http::Auth;
use crate::tokens::Capability;

/// `GET /api/v1/versions/PATH`: the path's versions, newest first.
pub(crate) async fn versions(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(raw): UrlPath<String>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "versions",
        vec![raw.clone()],
        async move {
            call.need(Capability::Read, "read history")?;
            let rel = call.scoped_read(&raw)?;
            let answer = on_reader(&st, move |reader| {
                sovryn_api::ask(reader, sovryn_api::Query::Versions { path: rel })
                    .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
            })
            .await?;
            Ok(Json(answer).into_response())
        },
    )
    .await
}

/// `{"path": ..., "version": "v3"}` of a restore.
#[derive(Debug, Deserialize)]
pub(crate) struct RestoreBody {
    path: String,
    version: String,
}

/// `POST /api/v1/restore`: the version's content becomes the newest
/// version.
pub(crate) async fn restore(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Json(b): Json<RestoreBody>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "restore",
        vec![b.path.clone()],
        async move {
            call.need(Capability::Write, "restore versions")?;
            let rel = call.scoped(&b.path)?;
            let actor = call.principal.actor();
            let r = rel.clone();
            let rec = on_node(&st, move |node| {
                node.capture(&r)?;
                Ok(node.restore(&r, &b.version, Some(&actor))?)
            })
            .await?;
            changed(&st, [rel]);
            Ok(Json(json!({"restored": record_json(&rec)})).into_response())
        },
    )
    .await
}
