//! What whoever has a share link sees (`/s/<token>`): a file's page and
//! its download (Range), or a directory as a browsable page and a zip;
//! the password form. A link that does not work (unknown, expired, revoked,
//! used up) gets one plain page with one status, whichever it was. Every
//! access, granted or refused, is audited as `share:<id>`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use sovryn_engine::{paths, View};
use sovryn_store::{EntryKind, FileRecord};

use super::download::download;
use super::{human_bytes, name_of, on_reader, percent_path};
use crate::audit::AuditLine;
use crate::http::{check_ip, client_of, Auth};
use crate::shares::Share;

/// `?download=1` (a file) or `?download=zip` (a directory).
#[derive(Debug, Deserialize)]
pub(crate) struct OpenQuery {
    download: Option<String>,
}

pub(crate) async fn open_root(
    State(st): State<Arc<Auth>>,
    UrlPath(token): UrlPath<String>,
    Query(q): Query<OpenQuery>,
    req: axum::extract::Request,
) -> Response {
    let client = client_of(&req);
    open(st, token, String::new(), q, req.headers().clone(), client).await
}

pub(crate) async fn open_sub(
    State(st): State<Arc<Auth>>,
    UrlPath((token, sub)): UrlPath<(String, String)>,
    Query(q): Query<OpenQuery>,
    req: axum::extract::Request,
) -> Response {
    let client = client_of(&req);
    open(st, token, sub, q, req.headers().clone(), client).await
}

/// One request to a link: what its audit lines name.
struct Visit<'a> {
    st: &'a Auth,
    /// The link's id, once the token found one.
    id: Option<String>,
    client: Option<std::net::IpAddr>,
}

impl Visit<'_> {
    fn audit(&self, op: &str, path: &str, outcome: &str) {
        let mut line = AuditLine::now(
            format!("share:{}", self.id.as_deref().unwrap_or("unknown")),
            format!("share {op}"),
            vec![path.to_owned()],
            outcome.to_owned(),
            std::time::Duration::ZERO,
        );
        line.client = self.client.map(|c| c.to_string());
        self.st.shared.audit.write(&line);
    }

    /// Audits a refusal and answers the one refusal page.
    fn refuse(&self, op: &str, path: &str, why: &str) -> Response {
        self.audit(op, path, &format!("denied (404): {why}"));
        refused()
    }

    /// Counts a download of the link (refused once it has none left).
    async fn take_download(&self, op: &str, path: &str) -> Result<(), Response> {
        let Some(id) = self.id.clone() else {
            return Err(self.refuse(op, path, "no link"));
        };
        if self
            .st
            .links()
            .with(move |s| s.take_download(&id))
            .await
            .unwrap_or(false)
        {
            self.audit(op, path, "ok");
            Ok(())
        } else {
            Err(self.refuse(op, path, "used up"))
        }
    }
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
    let mut visit = Visit {
        st: &st,
        id: None,
        client,
    };
    let Some(share) = lookup(&st, &token).await else {
        return visit.refuse("open", "", "the link does not work");
    };
    visit.id = Some(share.id.clone());
    if share.password_hash.is_some() && !st.links().unlocked(&share.id, &headers) {
        visit.audit("open", &share.path, "password asked");
        return password_page(StatusCode::OK, &token, None);
    }
    let Ok(sub_rel) = paths::normalize_rel(&sub) else {
        return visit.refuse("open", &sub, "a bad path");
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
        return visit.refuse("open", &rel, "gone");
    };
    let base = format!("/s/{token}");
    match (rec.entry.kind, q.download.as_deref()) {
        (EntryKind::File, Some(_)) => {
            // A resumed download (a range past the start) is the same download.
            let resumed = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|r| !r.trim().starts_with("bytes=0-"));
            if resumed {
                visit.audit("download", &rel, "ok (resumed)");
            } else if let Err(r) = visit.take_download("download", &rel).await {
                return r;
            }
            download(&st, rec, &headers, "attachment")
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
        (EntryKind::File, None) => {
            visit.audit("open", &rel, "ok");
            let url = format!("{}?download=1", join_url(&base, &sub_rel));
            page(
                StatusCode::OK,
                name_of(&rel),
                &format!(
                    "<p>{} · {}</p><p><a class=\"button\" href=\"{}\">Download</a></p>",
                    esc(name_of(&rel)),
                    human_bytes(rec.entry.size),
                    esc(&url)
                ),
            )
        }
        (EntryKind::Dir, Some("zip")) => match visit.take_download("zip", &rel).await {
            Ok(()) => zip(&st, &rel),
            Err(r) => r,
        },
        (EntryKind::Dir, _) => {
            visit.audit("open", &rel, "ok");
            directory_page(&st, &base, &rel, &sub_rel).await
        }
        (EntryKind::Symlink, _) => visit.refuse("open", &rel, "a link"),
    }
}

/// A shared directory's page: its entries (folders to browse, files to
/// download) and a zip of it.
async fn directory_page(st: &Arc<Auth>, base: &str, rel: &str, sub_rel: &str) -> Response {
    let r = rel.to_owned();
    let children = on_reader(st, move |reader| Ok(reader.store().children(&r)?))
        .await
        .unwrap_or_default();
    let mut rows = String::new();
    if !sub_rel.is_empty() {
        let up = sub_rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        rows.push_str(&format!(
            "<li><a href=\"{}\">..</a></li>",
            esc(&join_url(base, up))
        ));
    }
    for c in children {
        let name = name_of(&c.path);
        let inner = if sub_rel.is_empty() {
            name.to_owned()
        } else {
            format!("{sub_rel}/{name}")
        };
        let (href, label, size) = if c.kind == EntryKind::Dir {
            (join_url(base, &inner), format!("{name}/"), String::new())
        } else {
            (
                format!("{}?download=1", join_url(base, &inner)),
                name.to_owned(),
                human_bytes(c.size),
            )
        };
        rows.push_str(&format!(
            "<li><a href=\"{}\">{}</a> <span>{size}</span></li>",
            esc(&href),
            esc(&label),
        ));
    }
    let zip_url = format!("{}?download=zip", join_url(base, sub_rel));
    page(
        StatusCode::OK,
        &format!("{}/", name_of(rel)),
        &format!(
            "<ul class=\"files\">{rows}</ul><p><a class=\"button\" href=\"{}\">Download all (zip)</a></p>",
            esc(&zip_url)
        ),
    )
}

/// `password=...` of the form.
#[derive(Debug, Deserialize)]
pub(crate) struct UnlockForm {
    password: String,
}

/// `POST /s/TOKEN`: the link's password; remembered for the link in a
/// cookie. Guesses count against the client's network rate.
pub(crate) async fn unlock(
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
    let mut visit = Visit {
        st: &st,
        id: None,
        client,
    };
    let Some(share) = lookup(&st, &token).await else {
        // As long as a wrong password takes: the time tells nothing.
        let pw = f.password;
        let _ =
            tokio::task::spawn_blocking(move || crate::shares::waste_a_password_check(&pw)).await;
        return visit.refuse("password", "", "the link does not work");
    };
    visit.id = Some(share.id.clone());
    let Some(phc) = share.password_hash.clone() else {
        return redirect(&format!("/s/{token}"));
    };
    let pw = f.password;
    let good = tokio::task::spawn_blocking(move || crate::shares::password_matches(&phc, &pw))
        .await
        .unwrap_or(false);
    if !good {
        visit.audit("password", &share.path, "denied (403): wrong password");
        return password_page(
            StatusCode::FORBIDDEN,
            &token,
            Some("That password is wrong."),
        );
    }
    visit.audit("password", &share.path, "ok");
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

fn join_url(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{}", percent_path(rel))
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
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename*=UTF-8''{}",
        percent_path(&name)
    )) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
