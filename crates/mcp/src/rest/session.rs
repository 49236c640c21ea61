//! Signing in with a user's password (`crate::users`): a session cookie
//! (HTTP-only, SameSite=Strict, random, kept only in this process's memory
//! as its hash) and a CSRF token the dashboard sends back in
//! `X-CSRF-Token` with every request that changes something. API clients
//! keep using bearer tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{constant_time_eq, ApiError, Call};
use crate::audit::AuditLine;
use crate::http::{check_ip, client_of, error_body, Auth};
use crate::users::{UserInfo, UserStore};

/// The session cookie's name.
const COOKIE: &str = "sovryn_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    user: UserInfo,
    csrf: String,
    until: Instant,
}

/// The node's users and their open sessions.
pub(crate) struct Accounts {
    users: Mutex<UserStore>,
    sessions: Mutex<HashMap<String, Session>>,
    /// One upload at a time per user with a quota: two at once cannot both
    /// pass the check and together overrun it.
    upload_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The session token a request's cookies carry.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")))
        .map(str::to_owned)
        .next()
}

impl Accounts {
    pub(crate) fn open(home: &std::path::Path) -> crate::Result<Arc<Self>> {
        Ok(Arc::new(Accounts {
            users: Mutex::new(UserStore::open(home)?),
            sessions: Mutex::new(HashMap::new()),
            upload_turns: Mutex::new(HashMap::new()),
        }))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user and CSRF token of the session a request's cookie names.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<(UserInfo, String)> {
        let token = cookie_token(headers)?;
        let mut all = self.sessions();
        let key = hash(&token);
        match all.get(&key) {
            Some(s) if s.until > Instant::now() => Some((s.user.clone(), s.csrf.clone())),
            Some(_) => {
                all.remove(&key);
                None
            }
            None => None,
        }
    }

    fn open_session(&self, user: UserInfo) -> (String, String) {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 16]>());
        let mut all = self.sessions();
        let now = Instant::now();
        all.retain(|_, s| s.until > now);
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.until)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(
            hash(&token),
            Session {
                user,
                csrf: csrf.clone(),
                until: now + SESSION_TTL,
            },
        );
        (token, csrf)
    }

    /// Waits for user `name`'s turn to upload (held until dropped).
    pub(crate) async fn upload_turn(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = self
            .upload_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone();
        turn.lock_owned().await
    }

    /// Ends the sessions of users no longer there (or changed), so a
    /// removed user is signed out at their next request.
    pub(crate) fn still_valid(&self, user: &UserInfo) -> bool {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.get(&user.name).ok().flatten().as_ref() == Some(user)
    }
}

/// The caller of a request without a bearer token: the session's user,
/// checked against CSRF for a request that changes something. `None`:
/// no session (the request goes on to bearer authentication).
pub(crate) fn session_caller(
    st: &Auth,
    req: &Request,
) -> Option<Result<(UserInfo, String), Response>> {
    let (user, csrf) = st.accounts().session(req.headers())?;
    if !st.accounts().still_valid(&user) {
        return Some(Err(error_body(
            StatusCode::UNAUTHORIZED,
            "this account changed or was removed; sign in again",
        )));
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let sent = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !safe && !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
        return Some(Err(error_body(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (send the X-CSRF-Token the sign-in gave)",
        )));
    }
    Some(Ok((user, csrf)))
}

/// `{"name", "password"}` of a sign-in.
#[derive(Deserialize)]
pub(crate) struct LoginBody {
    name: String,
    password: String,
}

/// `POST /api/v1/login`: a session for the user, in a cookie; the CSRF
/// token in the answer. Attempts count against the client's network rate
/// and are audited.
pub(crate) async fn login(State(st): State<Arc<Auth>>, req: Request) -> Response {
    let client = client_of(&req);
    if let Some(r) = check_ip(&st, client) {
        return r;
    }
    let secure = st.scheme == "https";
    let Ok(Json(b)) = Json::<LoginBody>::from_request(req, &st).await else {
        return error_body(
            StatusCode::BAD_REQUEST,
            "send {\"name\", \"password\"} as JSON",
        );
    };
    let accounts = st.accounts().clone();
    let name = b.name.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let users = accounts.users.lock().unwrap_or_else(|e| e.into_inner());
        users.verify(&b.name, &b.password)
    })
    .await;
    let audit = |outcome: &str| {
        let mut line = AuditLine::now(
            format!("user:{name}"),
            "login".into(),
            Vec::new(),
            outcome.to_owned(),
            Duration::ZERO,
        );
        line.client = client.map(|c| c.to_string());
        st.shared.audit.write(&line);
    };
    let user = match verified {
        Ok(Ok(Some(u))) => u,
        Ok(Ok(None)) => {
            audit("denied (401): wrong name or password");
            return error_body(StatusCode::UNAUTHORIZED, "wrong name or password");
        }
        _ => {
            return error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the user database failed",
            )
        }
    };
    // The workspace exists from the first sign-in on.
    if !user.admin {
        let ws = user.workspace.clone();
        let made = super::on_node(&st, move |node| Ok(node.create_dir(&ws, Some("sovryn"))?)).await;
        if let Ok(recs) = made {
            super::changed(&st, recs.into_iter().map(|r| r.path));
        }
    }
    audit("ok");
    let (token, csrf) = st.accounts().open_session(user.clone());
    let mut r = Json(json!({
        "name": user.name, "admin": user.admin,
        "workspace": (!user.admin).then_some(&user.workspace),
        "quota": user.quota, "csrf": csrf,
    }))
    .into_response();
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /api/v1/logout`: the session ends.
pub(crate) async fn logout(State(st): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie_token(&headers) {
        st.accounts().sessions().remove(&hash(&token));
    }
    let mut r = Json(json!({"ok": true})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sovryn_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// `GET /api/v1/me`: who the caller is, what they may do, and (a user's)
/// how much of their quota is used.
pub(crate) async fn me(
    State(st): State<Arc<Auth>>,
    axum::extract::Extension(call): axum::extract::Extension<Call>,
) -> Response {
    let used = match &call.user {
        Some(u) => match super::files::used_bytes(&st, &u.workspace).await {
            Ok(n) => Some(n),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let p = &call.principal;
    Json(json!({
        "name": p.name,
        "capabilities": p.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "paths": p.scope.globs(),
        // An admin's files are the whole folder, not a workspace.
        "workspace": call.user.as_ref().filter(|u| !u.admin).map(|u| u.workspace.clone()),
        "admin": call.user.as_ref().is_some_and(|u| u.admin),
        "quota": call.user.as_ref().and_then(|u| u.quota),
        "used": used,
        "csrf": call.csrf,
    }))
    .into_response()
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Invalid(m) => ApiError::bad(m),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}
