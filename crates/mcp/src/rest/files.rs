//! Files: list, stat, download (Range, ETag), upload (streamed, atomic),
//! delete, make a directory, move.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sovryn_engine::View;
use sovryn_store::{Entry, EntryKind, FileRecord};
use tokio::io::AsyncWriteExt;

use super::{
    audited, changed, human_bytes, name_of, not_found, on_node, on_reader, percent_path, ApiError,
    Call,
};
use crate::http::Auth;
use crate::tokens::Capability;

/// Entries one listing page holds at most.
const MAX_PAGE: usize = 5000;
/// Bytes a download sends per message.
const SEND_BYTES: usize = 256 * 1024;

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
                download(&st, rec, &headers, "inline").await
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

/// The strong ETag of a file state: its content hash.
fn etag(e: &Entry) -> String {
    format!("\"{}\"", e.content_hash())
}

/// A single `bytes=A-B`, `bytes=A-` or `bytes=-N` range of a `len`-byte
/// file, as start and end (exclusive); `Err` when it does not fit
/// (416); `Ok(None)` for a header this server does not split on (several
/// ranges): the whole file.
fn byte_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(len)
        };
        (start, end)
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// A file's content from the store (the version the index holds now, not
/// whatever the disk holds meanwhile), streamed chunk by chunk.
pub(crate) async fn download(
    st: &Arc<Auth>,
    rec: FileRecord,
    headers: &HeaderMap,
    disposition: &str,
) -> Result<Response, ApiError> {
    let tag = etag(&rec.entry);
    let matches = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
    };
    if matches(header::IF_NONE_MATCH) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    let len = rec.entry.size;
    // A range applies only to the version the client had (If-Range).
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == tag);
    let range =
        match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            Some(h) if if_range_ok => match byte_range(h, len) {
                Ok(r) => r,
                Err(()) => return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    Json(
                        json!({"error": format!("the range does not fit the file's {len} bytes")}),
                    ),
                )
                    .into_response()),
            },
            _ => None,
        };
    let (start, end) = range.unwrap_or((0, len));
    let mime = mime_guess::from_path(&rec.path).first_or_octet_stream();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let reads = st.shared.state.reads.clone();
    let chunks = rec.entry.chunks.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut at = 0u64;
        for id in chunks {
            if at >= end {
                break;
            }
            let got = (|| -> sovryn_store::Result<Option<Vec<u8>>> {
                let reader = reads.get();
                let n = reader.store().chunk_len(&id)?;
                if at + n <= start {
                    at += n;
                    return Ok(None);
                }
                let data = reader.store().read_chunk(&id)?;
                Ok(Some(data))
            })();
            let data = match got {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            let n = data.len() as u64;
            let from = start.saturating_sub(at) as usize;
            let to = (end - at).min(n) as usize;
            at += n;
            for piece in data[from..to].chunks(SEND_BYTES) {
                if tx
                    .blocking_send(Ok(bytes::Bytes::copy_from_slice(piece)))
                    .is_err()
                {
                    return; // the client went away
                }
            }
        }
        metrics::histogram!("file_read_duration_seconds", "via" => "api")
            .record(started.elapsed().as_secs_f64());
    });
    let stream = tokio_stream_from(rx);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    let put = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put(h, header::CONTENT_TYPE, mime.to_string());
    // A file is someone's content, not part of this site: an HTML or SVG
    // file opened here runs no script with the reader's session (a PDF
    // keeps the browser's viewer, which runs none in this origin).
    put(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    if mime.essence_str() != "application/pdf" {
        put(h, header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'".into());
    }
    put(h, header::CONTENT_LENGTH, (end - start).to_string());
    put(h, header::ETAG, tag);
    put(h, header::ACCEPT_RANGES, "bytes".into());
    put(h, header::LAST_MODIFIED, httpdate(rec.entry.mtime_ns));
    put(
        h,
        header::CONTENT_DISPOSITION,
        format!(
            "{disposition}; filename*=UTF-8''{}",
            percent_path(name_of(&rec.path))
        ),
    );
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        put(
            resp.headers_mut(),
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    Ok(resp)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An HTTP date (RFC 9110) of a time in nanoseconds since the epoch.
fn httpdate(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            ))
            .ok()
        })
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(byte_range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(byte_range("bytes=900-", 1000), Ok(Some((900, 1000))));
        assert_eq!(byte_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(byte_range("bytes=990-5000", 1000), Ok(Some((990, 1000))));
        assert_eq!(byte_range("bytes=0-1,5-9", 1000), Ok(None));
        assert_eq!(byte_range("items=0-1", 1000), Ok(None));
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "bytes=x-1",
            "bytes=-0",
            "bytes=-",
        ] {
            assert_eq!(byte_range(bad, 1000), Err(()), "{bad}");
        }
    }
}
