//! Share links: made, listed and revoked through the API (`/api/v1/shares`,
//! the `write` capability and the link's path in the token's scope), and
//! served to whoever has one at `/s/<token>`: a file's page and its
//! download (Range), or a directory as a browsable page and a zip. A link
//! that does not work (unknown, expired, revoked, used up) gets one plain
//! page with one status, whichever it was; a password is asked on a form
//! and remembered for the link in an HTTP-only cookie. Every access,
//! granted or refused, is audited as `share:<id>`.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Extension, Form, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use sovryn_engine::{paths, View};
use sovryn_store::{EntryKind, FileRecord};

use super::files::download;
use super::{audited, not_found, on_reader, ApiError, Call};
use crate::audit::AuditLine;
use crate::http::{check_ip, client_of, Auth};
use crate::shares::{NewShare, Share, ShareStore};
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

    async fn with<T: Send + 'static>(
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
    fn unlock_value(&self, id: &str) -> String {
        // HMAC takes a key of any length: this never fails, and if it did
        // no cookie would match.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cookie_key) else {
            return String::new();
        };
        mac.update(b"sovryn share unlock\0");
        mac.update(id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn unlocked(&self, id: &str, headers: &HeaderMap) -> bool {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The routes: the API's (behind its authentication) and the public pages.
pub(crate) fn api_routes() -> Router<Arc<Auth>> {
    Router::new()
        .route("/api/v1/shares", get(list).post(create))
        .route("/api/v1/shares/{id}", axum::routing::delete(revoke))
}

pub(crate) fn public_routes() -> Router<Arc<Auth>> {
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

// ---------- the public side ----------

/// `?download=1` (a file) or `?download=zip` (a directory).
#[derive(Debug, Deserialize)]
pub(crate) struct OpenQuery {
    download: Option<String>,
}

async fn open_root(
    State(st): State<Arc<Auth>>,
    UrlPath(token): UrlPath<String>,
    Query(q): Query<OpenQuery>,
    req: axum::extract::Request,
) -> Response {
    let client = client_of(&req);
    open(st, token, String::new(), q, req.headers().clone(), client).await
}

async fn open_sub(
    State(st): State<Arc<Auth>>,
    UrlPath((token, sub)): UrlPath<(String, String)>,
    Query(q): Query<OpenQuery>,
    req: axum::extract::Request,
) -> Response {
    let client = client_of(&req);
    open(st, token, sub, q, req.headers().clone(), client).await
}

fn audit_share(
    st: &Auth,
    id: Option<&str>,
    op: &str,
    path: &str,
    outcome: &str,
    client: Option<std::net::IpAddr>,
) {
    let mut line = AuditLine::now(
        format!("share:{}", id.unwrap_or("unknown")),
        format!("share {op}"),
        vec![path.to_owned()],
        outcome.to_owned(),
        std::time::Duration::ZERO,
    );
    line.client = client.map(|c| c.to_string());
    st.shared.audit.write(&line);
}

/// The page every link that does not work gets, whatever the reason.
fn refused() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not available",
        "<p>This link does not work: it may have expired, been revoked or used up, or it never existed.</p>\
         <p>Ask whoever sent it for a new one.</p>",
    )
}

async fn lookup(st: &Arc<Auth>, token: &str) -> Option<Share> {
    // Tokens are hex; anything else cannot be one (and is not looked up).
    if token.len() > 128 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = token.to_owned();
    st.links().with(move |s| s.lookup(&t)).await.ok().flatten()
}

async fn open(
    st: Arc<Auth>,
    token: String,
    sub: String,
    q: OpenQuery,
    headers: HeaderMap,
    client: Option<std::net::IpAddr>,
) -> Response {
    if let Some(r) = check_ip(&st, client) {
        return r;
    }
    let Some(share) = lookup(&st, &token).await else {
        audit_share(
            &st,
            None,
            "open",
            "",
            "denied (404): the link does not work",
            client,
        );
        return refused();
    };
    if share.password_hash.is_some() && !st.links().unlocked(&share.id, &headers) {
        audit_share(
            &st,
            Some(&share.id),
            "open",
            &share.path,
            "password asked",
            client,
        );
        return password_page(StatusCode::OK, &token, None);
    }
    let Ok(sub_rel) = paths::normalize_rel(&sub) else {
        audit_share(
            &st,
            Some(&share.id),
            "open",
            &sub,
            "denied (404): a bad path",
            client,
        );
        return refused();
    };
    let rel = match (share.path.as_str(), sub_rel.as_str()) {
        (p, "") => p.to_owned(),
        ("", s) => s.to_owned(),
        (p, s) => format!("{p}/{s}"),
    };
    let r = rel.clone();
    let rec = on_reader(&st, move |reader| {
        Ok(reader.store().file(&r)?.filter(|f| !f.entry.deleted))
    })
    .await
    .ok()
    .flatten();
    let Some(rec) = rec else {
        audit_share(
            &st,
            Some(&share.id),
            "open",
            &rel,
            "denied (404): gone",
            client,
        );
        return refused();
    };
    let base = format!("/s/{token}");
    match (rec.entry.kind, q.download.as_deref()) {
        (EntryKind::File, Some(_)) => {
            // A resumed download (a range past the start) is the same download.
            let resumed = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|r| !r.trim().starts_with("bytes=0-"));
            let id = share.id.clone();
            if !resumed
                && !st
                    .links()
                    .with(move |s| s.take_download(&id))
                    .await
                    .unwrap_or(false)
            {
                audit_share(
                    &st,
                    Some(&share.id),
                    "download",
                    &rel,
                    "denied (404): used up",
                    client,
                );
                return refused();
            }
            audit_share(&st, Some(&share.id), "download", &rel, "ok", client);
            match download(&st, rec, &headers, "attachment").await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        }
        (EntryKind::File, None) => {
            audit_share(&st, Some(&share.id), "open", &rel, "ok", client);
            let url = format!("{base}/{}?download=1", enc_path(&sub_rel));
            let url = url
                .replace("//?", "/?")
                .replace(&format!("{base}/?"), &format!("{base}?"));
            page(
                StatusCode::OK,
                name_of(&rel),
                &format!(
                    "<p>{} · {}</p><p><a class=\"button\" href=\"{}\">Download</a></p>",
                    esc(name_of(&rel)),
                    human(rec.entry.size),
                    esc(&url)
                ),
            )
        }
        (EntryKind::Dir, Some("zip")) => {
            let id = share.id.clone();
            if !st
                .links()
                .with(move |s| s.take_download(&id))
                .await
                .unwrap_or(false)
            {
                audit_share(
                    &st,
                    Some(&share.id),
                    "zip",
                    &rel,
                    "denied (404): used up",
                    client,
                );
                return refused();
            }
            audit_share(&st, Some(&share.id), "zip", &rel, "ok", client);
            zip(&st, &rel)
        }
        (EntryKind::Dir, _) => {
            audit_share(&st, Some(&share.id), "open", &rel, "ok", client);
            let r = rel.clone();
            let children = on_reader(&st, move |reader| Ok(reader.store().children(&r)?))
                .await
                .unwrap_or_default();
            let mut rows = String::new();
            if !sub_rel.is_empty() {
                let up = sub_rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                rows.push_str(&format!(
                    "<li><a href=\"{}\">..</a></li>",
                    esc(&join_url(&base, up))
                ));
            }
            for c in children {
                let name = name_of(&c.path);
                let inner = if sub_rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{sub_rel}/{name}")
                };
                let (href, label) = if c.kind == EntryKind::Dir {
                    (join_url(&base, &inner), format!("{name}/"))
                } else {
                    (
                        format!("{}?download=1", join_url(&base, &inner)),
                        name.to_owned(),
                    )
                };
                rows.push_str(&format!(
                    "<li><a href=\"{}\">{}</a> <span>{}</span></li>",
                    esc(&href),
                    esc(&label),
                    if c.kind == EntryKind::Dir {
                        String::new()
                    } else {
                        human(c.size)
                    }
                ));
            }
            let zip_url = format!("{}?download=zip", join_url(&base, &sub_rel));
            page(
                StatusCode::OK,
                &format!("{}/", name_of(&rel)),
                &format!(
                    "<ul class=\"files\">{rows}</ul><p><a class=\"button\" href=\"{}\">Download all (zip)</a></p>",
                    esc(&zip_url)
                ),
            )
        }
        (EntryKind::Symlink, _) => refused(),
    }
}

/// `password=...` of the form.
#[derive(Debug, Deserialize)]
pub(crate) struct UnlockForm {
    password: String,
}

/// `POST /s/TOKEN`: the link's password; remembered for the link in a
/// cookie. Guesses count against the client's network rate.
async fn unlock(
    State(st): State<Arc<Auth>>,
    UrlPath(token): UrlPath<String>,
    req: axum::extract::Request,
) -> Response {
    use axum::extract::FromRequest;
    let client = client_of(&req);
    if let Some(r) = check_ip(&st, client) {
        return r;
    }
    let Ok(Form(f)) = Form::<UnlockForm>::from_request(req, &st).await else {
        return password_page(StatusCode::BAD_REQUEST, &token, Some("Give the password."));
    };
    let Some(share) = lookup(&st, &token).await else {
        // As long as a wrong password takes: the time tells nothing.
        let pw = f.password;
        let _ =
            tokio::task::spawn_blocking(move || crate::shares::waste_a_password_check(&pw)).await;
        audit_share(
            &st,
            None,
            "password",
            "",
            "denied (404): the link does not work",
            client,
        );
        return refused();
    };
    let Some(phc) = share.password_hash.clone() else {
        return redirect(&format!("/s/{token}"));
    };
    let pw = f.password;
    let good = tokio::task::spawn_blocking(move || crate::shares::password_matches(&phc, &pw))
        .await
        .unwrap_or(false);
    if !good {
        audit_share(
            &st,
            Some(&share.id),
            "password",
            &share.path,
            "denied (403): wrong password",
            client,
        );
        return password_page(
            StatusCode::FORBIDDEN,
            &token,
            Some("That password is wrong."),
        );
    }
    audit_share(&st, Some(&share.id), "password", &share.path, "ok", client);
    let mut r = redirect(&format!("/s/{token}"));
    let cookie = format!(
        "sovryn_share_{}={}; Path=/s/{token}; HttpOnly; SameSite=Strict; Max-Age=43200",
        share.id,
        st.links().unlock_value(&share.id)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn password_page(status: StatusCode, token: &str, error: Option<&str>) -> Response {
    page(
        status,
        "Password needed",
        &format!(
            "{}<form method=\"post\" action=\"/s/{}\"><label for=\"pw\">This link asks for a password</label>\
             <input id=\"pw\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
             <button type=\"submit\">Open</button></form>",
            error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))).unwrap_or_default(),
            esc(token)
        ),
    )
}

/// A small self-contained page (no script, nothing fetched from elsewhere).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Sovryn</title><style>\
         body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#1d2430}}\
         a.button,button{{display:inline-block;padding:.5rem 1rem;background:#1f5fbf;color:#fff;border:0;border-radius:.4rem;text-decoration:none;font-size:1rem}}\
         input{{display:block;margin:.5rem 0 1rem;padding:.5rem;font-size:1rem;width:100%;max-width:20rem}}\
         ul.files{{list-style:none;padding:0}} ul.files li{{padding:.3rem 0;border-bottom:1px solid #e3e7ee}}\
         ul.files span{{color:#667;float:right}} .error{{color:#a11}}\
         </style></head><body><h1>{}</h1>{body}<footer><p><small>Shared with Sovryn</small></p></footer></body></html>",
        esc(title),
        esc(title)
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Same-origin only: a link's URL never leaves in a Referer, and the
    // password form still sends its Origin (the gateway checks it).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn enc_path(rel: &str) -> String {
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

fn join_url(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{}", enc_path(rel))
    }
}

fn name_of(path: &str) -> &str {
    path.rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("shared folder")
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// A directory as a zip (stored, not compressed), streamed as it is made.
fn zip(st: &Arc<Auth>, rel: &str) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let reads = st.shared.state.reads.clone();
    let name = format!("{}.zip", name_of(rel));
    let rel = rel.to_owned();
    tokio::task::spawn_blocking(move || {
        struct Pipe(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);
        impl std::io::Write for Pipe {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
                    .map_err(|_| std::io::Error::other("the client went away"))?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let files: Vec<FileRecord> = match reads.get().store().files_under(&rel) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        let mut z = zip::ZipWriter::new_stream(std::io::BufWriter::with_capacity(
            256 * 1024,
            Pipe(tx.clone()),
        ));
        let written = (|| -> Result<(), String> {
            for f in files
                .iter()
                .filter(|f| !f.entry.deleted && f.entry.kind == EntryKind::File)
            {
                let inner = f.path.strip_prefix(&format!("{rel}/")).unwrap_or(&f.path);
                let inner = if rel.is_empty() {
                    f.path.as_str()
                } else {
                    inner
                };
                let opts = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored)
                    .large_file(f.entry.size >= u32::MAX as u64);
                z.start_file(inner, opts).map_err(|e| e.to_string())?;
                for id in &f.entry.chunks {
                    let data = reads
                        .get()
                        .store()
                        .read_chunk(id)
                        .map_err(|e| e.to_string())?;
                    std::io::Write::write_all(&mut z, &data).map_err(|e| e.to_string())?;
                }
            }
            z.finish().map_err(|e| e.to_string())?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{}", enc_path(&name)))
    {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
