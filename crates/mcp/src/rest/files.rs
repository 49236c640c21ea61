//! Files: list, stat, upload (streamed, atomic, within a user's quota),
//! delete, make a directory, move. A file's content goes out through
//! `super::download`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sovryn_engine::View;
use sovryn_store::{EntryKind, FileRecord};
use tokio::io::AsyncWriteExt;

use super::download::etag;
use super::{
    audited, changed, human_bytes, name_of, not_found, on_node, on_reader, ApiError, Call,
};
use crate::http::Auth;
use crate::tokens::Capability;

/// Entries one listing page holds at most.
const MAX_PAGE: usize = 5000;

/// `?limit=N&after=NAME` of a listing.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /api/v1/files`: the root's listing.
pub(crate) async fn get_root(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    get_path(st, call, String::new(), q, headers).await
}

/// `GET /api/v1/files/PATH`: a directory's listing or a file's content.
pub(crate) async fn get(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(path): UrlPath<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    get_path(st, call, path, q, headers).await
}

async fn get_path(
    st: Arc<Auth>,
    call: Call,
    raw: String,
    q: ListQuery,
    headers: HeaderMap,
) -> Response {
    let paths = vec![raw.clone()];
    audited(&st.clone(), &call.clone(), "get", paths, async move {
        call.need(Capability::Read, "read files")?;
        let rel = call.scoped_dir(&raw)?;
        let r = rel.clone();
        let rec = on_reader(&st, move |reader| Ok(live(reader.store().file(&r)?))).await?;
        match rec {
            Some(rec) if rec.entry.kind == EntryKind::File => {
                if !call.principal.scope.allows(&rel) {
                    return Err(not_found(&rel));
                }
                super::download::download(&st, rec, &headers, "inline").await
            }
            Some(rec)
                if rec.entry.kind == EntryKind::Symlink && !call.principal.scope.allows(&rel) =>
            {
                Err(not_found(&rel))
            }
            Some(rec) if rec.entry.kind == EntryKind::Symlink => Err(ApiError::bad(format!(
                "{rel} is a symbolic link (to {}); links are not followed",
                rec.entry.target.unwrap_or_default()
            ))),
            None if !rel.is_empty() => Err(not_found(&rel)),
            _ => listing(&st, &call, rel, q).await,
        }
    })
    .await
}

/// A record that is not a tombstone.
fn live(rec: Option<FileRecord>) -> Option<FileRecord> {
    rec.filter(|r| !r.entry.deleted)
}

async fn listing(
    st: &Arc<Auth>,
    call: &Call,
    rel: String,
    q: ListQuery,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_PAGE);
    let scope = call.principal.scope.clone();
    let r = rel.clone();
    let listing = on_reader(st, move |reader| {
        sovryn_api::list(reader, r).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
    })
    .await?;
    let mut entries: Vec<sovryn_api::EntryInfo> = listing
        .entries
        .into_iter()
        .filter(|e| scope.visible(&e.path))
        .filter(|e| q.after.as_deref().is_none_or(|a| name_of(&e.path) > a))
        .collect();
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = more
        .then(|| entries.last().map(|e| name_of(&e.path).to_owned()))
        .flatten();
    Ok(Json(json!({
        "path": rel,
        "entries": entries.iter().map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["name"] = json!(name_of(&e.path));
            v
        }).collect::<Vec<_>>(),
        "next": next,
    }))
    .into_response())
}

/// `GET /api/v1/stat/PATH`: what the index holds of a path.
pub(crate) async fn stat(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(raw): UrlPath<String>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "stat",
        vec![raw.clone()],
        async move {
            call.need(Capability::Read, "read files")?;
            let rel = call.scoped_read(&raw)?;
            let r = rel.clone();
            let rec = on_reader(&st, move |reader| Ok(live(reader.store().file(&r)?)))
                .await?
                .ok_or_else(|| not_found(&rel))?;
            Ok(Json(record_json(&rec)).into_response())
        },
    )
    .await
}

/// A record as the API shows it.
pub(crate) fn record_json(rec: &FileRecord) -> serde_json::Value {
    let kind = match rec.entry.kind {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
    };
    json!({
        "path": rec.path,
        "name": name_of(&rec.path),
        "kind": kind,
        "size": rec.entry.size,
        "version": format!("v{}", rec.label),
        "modified": sovryn_api::rfc3339(rec.entry.mtime_ns),
        "etag": etag(&rec.entry),
        "author": rec.entry.author,
        "actor": rec.entry.actor,
    })
}

/// Bytes the live files under `dir` hold (a workspace's use of its quota).
pub(crate) async fn used_bytes(st: &Arc<Auth>, dir: &str) -> Result<u64, ApiError> {
    let d = dir.to_owned();
    on_reader(st, move |reader| {
        Ok(reader
            .store()
            .files_under(&d)?
            .iter()
            .filter(|f| !f.entry.deleted && f.entry.kind == EntryKind::File)
            .map(|f| f.entry.size)
            .sum())
    })
    .await
}

fn over_quota(quota: u64, used: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "over your quota: this upload would take your workspace past {} ({} used); nothing was written",
            human_bytes(quota),
            human_bytes(used)
        ),
    )
}

/// `PUT /api/v1/files/PATH`: the body becomes the file's new version. It
/// is written beside the target as it arrives and put in place only once
/// complete, so a cut upload leaves nothing; memory use does not grow with
/// the file.
pub(crate) async fn put(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(raw): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "upload",
        vec![raw.clone()],
        async move {
            call.need(Capability::Write, "upload files")?;
            let rel = call.scoped(&raw)?;
            let started = std::time::Instant::now();
            let actor = call.principal.actor();
            let (r, a) = (rel.clone(), actor.clone());
            // A user's quota: what their workspace holds, less the file this
            // upload replaces, plus the upload.
            let quota = call
                .user
                .as_ref()
                .and_then(|u| u.quota.map(|q| (q, u.workspace.clone())));
            // Checked and spent in one turn per user.
            let _turn = match (&quota, &call.user) {
                (Some(_), Some(u)) => Some(st.accounts().upload_turn(&u.name).await),
                _ => None,
            };
            let used = match &quota {
                Some((_, ws)) => {
                    let r = rel.clone();
                    let replaced = on_reader(&st, move |reader| {
                        Ok(live(reader.store().file(&r)?).map_or(0, |f| f.entry.size))
                    })
                    .await?;
                    used_bytes(&st, ws).await?.saturating_sub(replaced)
                }
                None => 0,
            };
            let announced = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some((q, _)), Some(len)) = (&quota, announced) {
                if used.saturating_add(len) > *q {
                    return Err(over_quota(*q, used));
                }
            }
            let (slot, existed) = on_node(&st, move |node| {
                let existed = live(node.store.file(&r)?).is_some();
                Ok((node.begin_upload(&r, Some(&a))?, existed))
            })
            .await?;
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(slot.temp())
                .await
                .map_err(ApiError::internal)?;
            // Small pieces into a buffer; the disk is written a MiB at a time.
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            let mut stream = body.into_data_stream();
            let mut total = 0u64;
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| ApiError::bad(format!("the upload was cut: {e}")))?;
                total += piece.len() as u64;
                if let Some((q, _)) = &quota {
                    if used.saturating_add(total) > *q {
                        // The temp file goes with the slot: nothing partial stays.
                        return Err(over_quota(*q, used));
                    }
                }
                out.write_all(&piece)
                    .await
                    .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
            }
            out.flush()
                .await
                .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
            drop(out);
            let rec = on_node(&st, move |node| Ok(node.finish_upload(slot, Some(&actor))?)).await?;
            metrics::histogram!("file_write_duration_seconds", "via" => "api")
                .record(started.elapsed().as_secs_f64());
            changed(&st, [rel]);
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let mut v = record_json(&rec);
            v["received"] = json!(total);
            Ok((status, Json(v)).into_response())
        },
    )
    .await
}

/// `?recursive=true` of a delete.
#[derive(Debug, Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    recursive: bool,
}

/// `DELETE /api/v1/files/PATH[?recursive=true]`: the path (its history
/// stays).
pub(crate) async fn delete(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(raw): UrlPath<String>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "delete",
        vec![raw.clone()],
        async move {
            call.need(Capability::Write, "delete files")?;
            let rel = call.scoped(&raw)?;
            if rel.is_empty() {
                return Err(ApiError::bad("the folder's root cannot be deleted"));
            }
            let actor = call.principal.actor();
            let recs = on_node(&st, move |node| {
                Ok(node.delete_path(&rel, q.recursive, Some(&actor))?)
            })
            .await?;
            let deleted: Vec<String> = recs.iter().map(|r| r.path.clone()).collect();
            changed(&st, deleted.clone());
            Ok(Json(json!({"deleted": deleted})).into_response())
        },
    )
    .await
}

/// `{"path": ...}` of a new directory.
#[derive(Debug, Deserialize)]
pub(crate) struct MkdirBody {
    path: String,
}

/// `POST /api/v1/mkdir`: a directory and its missing parents.
pub(crate) async fn mkdir(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Json(b): Json<MkdirBody>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "mkdir",
        vec![b.path.clone()],
        async move {
            call.need(Capability::Write, "make directories")?;
            let rel = call.scoped(&b.path)?;
            let actor = call.principal.actor();
            let r = rel.clone();
            let made = on_node(&st, move |node| Ok(node.create_dir(&r, Some(&actor))?)).await?;
            let paths: Vec<String> = made.iter().map(|r| r.path.clone()).collect();
            changed(&st, paths.clone());
            Ok((
                if paths.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                Json(json!({"path": rel, "created": paths})),
            )
                .into_response())
        },
    )
    .await
}

/// `{"from": ..., "to": ...}` of a move.
#[derive(Debug, Deserialize)]
pub(crate) struct MoveBody {
    from: String,
    to: String,
}

/// `POST /api/v1/move`: a file or directory to a path that does not exist.
pub(crate) async fn move_path(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Json(b): Json<MoveBody>,
) -> Response {
    let paths = vec![b.from.clone(), b.to.clone()];
    audited(&st.clone(), &call.clone(), "move", paths, async move {
        call.need(Capability::Write, "move files")?;
        let from = call.scoped(&b.from)?;
        let to = call.scoped(&b.to)?;
        let actor = call.principal.actor();
        let (f, t) = (from.clone(), to.clone());
        let recs = on_node(&st, move |node| Ok(node.move_path(&f, &t, Some(&actor))?)).await?;
        changed(&st, recs.iter().map(|r| r.path.clone()));
        Ok(Json(json!({"from": from, "to": to, "moved": recs.len()})).into_response())
    })
    .await
}
