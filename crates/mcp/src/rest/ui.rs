//! The dashboard's files, embedded in the binary: one page, its script and
//! its style sheet (no framework, nothing fetched from elsewhere). They
//! hold no data: everything comes from the file API once signed in.

use axum::extract::Path as UrlPath;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// What a page of the dashboard may load: only this server's own files.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self'; \
    object-src 'self'; frame-src 'self'; style-src 'self'; script-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn serve(body: &'static str, content_type: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Same-origin only: a link's URL never leaves in a Referer, and the password
    // form still sends its Origin (the gateway checks it).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the dashboard.
pub(crate) async fn index() -> Response {
    serve(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/FILE`: its script and style sheet.
pub(crate) async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    match file.as_str() {
        "app.js" => serve(SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => serve(STYLE, "text/css; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
