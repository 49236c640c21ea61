//! Downloads: a file's content streamed from the store (the version the
//! index holds, never what the disk holds meanwhile), with Range, If-Range,
//! ETag and If-None-Match, its Content-Type, and served sandboxed.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sovryn_engine::View;
use sovryn_store::{Entry, FileRecord};

use super::{name_of, percent_path, ApiError};
use crate::http::Auth;

/// Bytes a download sends per message.
const SEND_BYTES: usize = 256 * 1024;

/// The strong ETag of a file state: its content hash.
pub(crate) fn etag(e: &Entry) -> String {
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
