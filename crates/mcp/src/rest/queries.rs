//! Search, diff, conflicts (and resolving one), the node's status and
//! peers, and a server-sent-events stream of changed paths. The logic is
//! the MCP tools' (`crate::tools`): the same checks, the same answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sovryn_engine::View;

use super::{audited, changed, on_node, on_reader, ApiError, Call};
use crate::http::Auth;
use crate::tokens::Capability;
use crate::tools::conflicts::visible_copy_for;
use crate::tools::{current_peers, visible_conflicts, ConflictOut, PeerOut, ResolveArgs};

/// `?q=WORDS&path=DIR&limit=N` of a search.
#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    q: String,
    #[serde(default)]
    path: String,
    limit: Option<usize>,
}

/// `GET /api/v1/search`: full-text search, hits in the token's scope.
pub(crate) async fn search(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Query(q): Query<SearchQuery>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "search",
        vec![q.path.clone()],
        async move {
            call.need(Capability::Read, "search")?;
            let dir = call.scoped_dir(&q.path)?;
            let scope = call.principal.scope.clone();
            let limit = q.limit.unwrap_or(50).clamp(1, 500);
            let hits = on_reader(&st, move |reader| {
                // Asked for more than shown: hits out of scope are dropped.
                Ok(reader.store().search(&q.q, &dir, limit * 4)?)
            })
            .await?;
            let hits: Vec<_> = hits
                .into_iter()
                .filter(|h| scope.allows(&h.path))
                .take(limit)
                .collect();
            Ok(Json(json!({"hits": hits})).into_response())
        },
    )
    .await
}

/// `?from=v1&to=v2` of a diff (`to` omitted: the file on disk).
#[derive(Debug, Deserialize)]
pub(crate) struct DiffQuery {
    from: String,
    to: Option<String>,
}

/// `GET /api/v1/diff/PATH?from=..&to=..`: a unified diff of two versions.
pub(crate) async fn diff(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    UrlPath(raw): UrlPath<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "diff",
        vec![raw.clone()],
        async move {
            call.need(Capability::Read, "read history")?;
            let rel = call.scoped_read(&raw)?;
            let answer = on_reader(&st, move |reader| {
                sovryn_api::ask(
                    reader,
                    sovryn_api::Query::Diff {
                        path: rel,
                        from: q.from,
                        to: q.to,
                    },
                )
                .map_err(|e| ApiError::bad(e.to_string()))
            })
            .await?;
            Ok(Json(answer).into_response())
        },
    )
    .await
}

/// `GET /api/v1/conflicts`: the conflict copies in the token's scope.
pub(crate) async fn conflicts(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "conflicts",
        Vec::new(),
        async move {
            call.need(Capability::Read, "list conflicts")?;
            let p = call.principal.clone();
            let all = on_reader(&st, move |reader| {
                visible_conflicts(reader, &p).map_err(ApiError::bad)
            })
            .await?;
            let out: Vec<ConflictOut> = all.into_iter().map(ConflictOut::from).collect();
            Ok(Json(json!({"conflicts": out})).into_response())
        },
    )
    .await
}

/// `POST /api/v1/conflicts/resolve` `{"path", "keep": "local"|"remote"|"both"}`.
pub(crate) async fn resolve(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
    Json(a): Json<ResolveArgs>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "resolve",
        vec![a.path.clone()],
        async move {
            call.need(Capability::Write, "resolve conflicts")?;
            let rel = call.scoped(&a.path)?;
            let (p, actor) = (call.principal.clone(), call.principal.actor());
            let res = on_node(&st, move |node| {
                let copy = visible_copy_for(node, &p, &rel).map_err(ApiError::bad)?;
                Ok(node.resolve_conflict(&copy, a.keep.into(), Some(&actor))?)
            })
            .await?;
            changed(&st, res.changed.iter().cloned());
            Ok(Json(json!({
                "copy": res.copy, "original": res.original,
                "renamed_to": res.renamed_to, "changed": res.changed,
            }))
            .into_response())
        },
    )
    .await
}

/// `GET /api/v1/status`: the store's figures and the sync state.
pub(crate) async fn status(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "status",
        Vec::new(),
        async move {
            call.need(Capability::Status, "read the node's status")?;
            let p = call.principal.clone();
            let (node, home) = (st.shared.node_name.clone(), st.shared.home.clone());
            let out = on_reader(&st, move |reader| {
                let stats = reader.store().stats()?;
                Ok(json!({
                    "node": node,
                    "stats": stats,
                    "sequence": reader.store().sequence()?,
                    "paused": sovryn_engine::Home { dir: home.clone() }.is_paused(),
                    "peers": current_peers(&home).map_err(ApiError::bad)?.len(),
                    "conflicts": visible_conflicts(reader, &p).map_err(ApiError::bad)?.len(),
                }))
            })
            .await?;
            Ok(Json(out).into_response())
        },
    )
    .await
}

/// `GET /api/v1/peers`: the peers this node syncs with.
pub(crate) async fn peers(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "peers",
        Vec::new(),
        async move {
            call.need(Capability::Status, "list peers")?;
            let home = st.shared.home.clone();
            let live = st
                .shared
                .state
                .live_peers
                .as_ref()
                .map(|f| f())
                .unwrap_or_default();
            let peers: Vec<serde_json::Value> = current_peers(&home)
                .map_err(ApiError::bad)?
                .into_iter()
                .map(|p| {
                    let id = p.id.clone();
                    let mut v = serde_json::to_value(PeerOut::from(p)).unwrap_or_default();
                    // Connection, transfers and rates, as the sync service sees them now.
                    v["live"] = live
                        .as_array()
                        .and_then(|all| all.iter().find(|s| s["id"] == json!(id)).cloned())
                        .unwrap_or(serde_json::Value::Null);
                    v
                })
                .collect();
            Ok(Json(json!({"peers": peers})).into_response())
        },
    )
    .await
}

/// `GET /api/v1/folders`: the node's folders, and the one this API serves
/// (the node's first, `default`; the others sync, and are reached through
/// their own listeners).
pub(crate) async fn folders(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
) -> Response {
    audited(
        &st.clone(),
        &call.clone(),
        "folders",
        Vec::new(),
        async move {
            call.need(Capability::Read, "list folders")?;
            let home = sovryn_engine::Home {
                dir: st.shared.home.clone(),
            };
            let all = tokio::task::spawn_blocking(move || sovryn_engine::folders::list(&home))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
            let out: Vec<serde_json::Value> = all
                .iter()
                // Names only: where a folder lies on disk is not a client's business.
                .map(|f| json!({"name": f.name.as_str(), "served": f.home.dir == st.shared.home}))
                .collect();
            Ok(Json(json!({"folders": out})).into_response())
        },
    )
    .await
}

/// `GET /api/v1/events`: a server-sent event `change` (`{"path"}`) for
/// every path in the token's scope that changes here, locally or from a
/// peer; a comment every 15 s keeps the stream open.
pub(crate) async fn events(
    State(st): State<Arc<Auth>>,
    Extension(call): Extension<Call>,
) -> Response {
    // The subscription is audited (its events are not: they name paths the
    // caller may see anyway).
    let refused = audited(&st, &call, "events", Vec::new(), async {
        call.need(Capability::Read, "follow changes")?;
        Ok(StatusCode::OK.into_response())
    })
    .await;
    if refused.status() != StatusCode::OK {
        return refused;
    }
    let scope = call.principal.scope.clone();
    let rx = st.shared.state.changes.subscribe();
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let scope = scope.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(path) if scope.allows(&path) => {
                        let ev = Event::default()
                            .event("change")
                            .data(json!({ "path": path }).to_string());
                        return Some((Ok::<_, Infallible>(ev), rx));
                    }
                    Ok(_) => continue,
                    // Fell behind: say so, the client lists again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = Event::default().event("lagged").data(n.to_string());
                        return Some((Ok(ev), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    *r.status_mut() = StatusCode::OK;
    r
}
