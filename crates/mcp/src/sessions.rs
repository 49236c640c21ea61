//! Live Streamable-HTTP sessions and streams, by the credential that
//! opened them: how many a token may hold, who owns a session, and ending
//! a credential's sessions and streams when it is revoked or expires.
//!
//! rmcp's [`LocalSessionManager`] keeps the sessions; this book only adds
//! the owner of each one. The HTTP middleware reserves a slot before an
//! `initialize` reaches rmcp (so concurrent handshakes cannot overshoot a
//! cap), binds it to the session id rmcp answers with, and refuses a
//! session to any other token. Sessions that rmcp closes on its own (idle
//! timeout, `DELETE`, a failed handshake) leave the book at the next
//! [`Sessions::prune`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager as _;
use tokio_util::sync::CancellationToken;

use crate::tokens::Principal;

/// Sessions one token (or JWT subject) may hold at once.
pub const MAX_SESSIONS_PER_TOKEN: usize = 32;
/// Sessions the server holds at once, all tokens together.
pub const MAX_SESSIONS: usize = 1024;
/// A session with no traffic either way (no request, no notification) for
/// this long is closed; its client has to initialize again.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// Ends with the credential a request was authenticated with (an extension
/// of the request's `Parts`): streams and notification tasks stop on it.
#[derive(Debug, Clone)]
pub(crate) struct Ending(pub(crate) CancellationToken);

/// Where a principal's credential comes from: only `mcp.db` tokens can be
/// revoked by name, so only they are looked up there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// A token of `mcp.db`.
    Db,
    /// A JWT, or the unauthenticated test mode: it ends with its expiry.
    Other,
}

/// One credential as presented: its name, expiry and source. Two JWTs of
/// the same subject with different expiries are different grants (the
/// older one's sessions end when it expires).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GrantKey {
    pub(crate) name: String,
    pub(crate) expires: Option<i64>,
    pub(crate) source: Source,
}

impl GrantKey {
    pub(crate) fn of(p: &Principal, source: Source) -> Self {
        GrantKey {
            name: p.name.clone(),
            expires: p.expires,
            source,
        }
    }
}

struct Grant {
    /// Cancelled when the credential is revoked or expires: streams that
    /// are not sessions (`subscriptions/listen`) and notification tasks
    /// stop on it.
    ended: CancellationToken,
    /// Its sessions.
    sessions: HashSet<String>,
}

#[derive(Default)]
struct Book {
    grants: HashMap<GrantKey, Grant>,
    /// Session id → the grant that opened it.
    owners: HashMap<String, GrantKey>,
    /// Per token name: sessions held plus handshakes in flight.
    per_name: HashMap<String, usize>,
    /// All sessions held plus handshakes in flight.
    total: usize,
}

impl Book {
    fn release(&mut self, name: &str) {
        if let Some(n) = self.per_name.get_mut(name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_name.remove(name);
            }
        }
        self.total = self.total.saturating_sub(1);
    }

    fn forget(&mut self, id: &str) -> bool {
        let Some(key) = self.owners.remove(id) else {
            return false;
        };
        if let Some(g) = self.grants.get_mut(&key) {
            g.sessions.remove(id);
        }
        self.release(&key.name);
        true
    }
}

/// Why a new session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The token holds [`Sessions::per_token`] sessions already.
    PerToken(usize),
    /// The server holds [`Sessions::max`] sessions already.
    Total(usize),
}

/// The sessions of one HTTP server, by owner. See the module docs.
pub(crate) struct Sessions {
    manager: Arc<LocalSessionManager>,
    per_token: usize,
    max: usize,
    book: Mutex<Book>,
}

impl Sessions {
    /// A book over `manager`'s sessions with these caps.
    pub(crate) fn new(manager: Arc<LocalSessionManager>, per_token: usize, max: usize) -> Self {
        Sessions {
            manager,
            per_token: per_token.max(1),
            max: max.max(1),
            book: Mutex::new(Book::default()),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // The book stays consistent between statements: a panic elsewhere
        // while it was held leaves nothing half-done worth refusing over.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token that ends with `key`'s credential (made on first use).
    pub(crate) fn ending(&self, key: &GrantKey) -> CancellationToken {
        let mut book = self.book();
        book.grants
            .entry(key.clone())
            .or_insert_with(|| Grant {
                ended: CancellationToken::new(),
                sessions: HashSet::new(),
            })
            .ended
            .clone()
    }

    /// Reserves a session for `key` before its handshake reaches rmcp.
    pub(crate) fn reserve(self: &Arc<Self>, key: &GrantKey) -> Result<Slot, Refusal> {
        let mut book = self.book();
        let held = book.per_name.get(&key.name).copied().unwrap_or(0);
        if held >= self.per_token {
            return Err(Refusal::PerToken(self.per_token));
        }
        if book.total >= self.max {
            return Err(Refusal::Total(self.max));
        }
        *book.per_name.entry(key.name.clone()).or_default() += 1;
        book.total += 1;
        Ok(Slot {
            sessions: self.clone(),
            key: key.clone(),
            bound: false,
        })
    }

    /// The name of the token that opened session `id`, if the book knows it.
    pub(crate) fn owner(&self, id: &str) -> Option<String> {
        self.book().owners.get(id).map(|k| k.name.clone())
    }

    /// Drops session `id` from the book (closed by its client).
    pub(crate) fn forget(&self, id: &str) {
        self.book().forget(id);
    }

    /// Drops the sessions rmcp no longer holds (idle, closed, failed).
    pub(crate) async fn prune(&self) {
        let live: HashSet<String> = self
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|k| k.to_string())
            .collect();
        let mut book = self.book();
        let gone: Vec<String> = book
            .owners
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            book.forget(&id);
        }
    }

    /// The grants now known (to look for revocations and expiries).
    pub(crate) fn grants(&self) -> Vec<GrantKey> {
        self.book().grants.keys().cloned().collect()
    }

    /// Ends the grants `which` picks: their streams stop and their sessions
    /// are closed (rmcp ends their SSE streams). Returns how many sessions.
    pub(crate) async fn end(&self, which: impl Fn(&GrantKey) -> bool) -> usize {
        let ids: Vec<String> = {
            let mut book = self.book();
            let keys: Vec<GrantKey> = book.grants.keys().filter(|k| which(k)).cloned().collect();
            let mut ids = Vec::new();
            for k in keys {
                if let Some(g) = book.grants.remove(&k) {
                    g.ended.cancel();
                    ids.extend(g.sessions);
                }
            }
            for id in &ids {
                book.forget(id);
            }
            ids
        };
        for id in &ids {
            self.close(id).await;
        }
        ids.len()
    }

    /// Closes session `id` (rmcp ends its streams) and drops it from the book.
    pub(crate) async fn close(&self, id: &str) {
        self.forget(id);
        let sid: rmcp::transport::streamable_http_server::session::SessionId = id.into();
        if let Err(e) = self.manager.close_session(&sid).await {
            tracing::debug!("closing MCP session {id}: {e}");
        }
    }

    /// Sessions held and handshakes in flight, in all and for `name`.
    #[cfg(test)]
    pub(crate) fn counts(&self, name: &str) -> (usize, usize) {
        let book = self.book();
        (book.total, book.per_name.get(name).copied().unwrap_or(0))
    }

    /// Sessions held and handshakes in flight, all tokens together.
    pub(crate) fn total(&self) -> usize {
        self.book().total
    }
}

/// A session reserved for a credential; released when dropped unbound.
pub(crate) struct Slot {
    sessions: Arc<Sessions>,
    key: GrantKey,
    bound: bool,
}

impl Slot {
    /// The reservation becomes session `id` (what rmcp answered with).
    pub(crate) fn bind(mut self, id: &str) {
        let mut book = self.sessions.book();
        if book.owners.contains_key(id) {
            return; // known already: this slot is released on drop
        }
        book.owners.insert(id.to_owned(), self.key.clone());
        book.grants
            .entry(self.key.clone())
            .or_insert_with(|| Grant {
                ended: CancellationToken::new(),
                sessions: HashSet::new(),
            })
            .sessions
            .insert(id.to_owned());
        self.bound = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.bound {
            self.sessions.book().release(&self.key.name);
        }
    }
}

/// The session manager for an HTTP server: rmcp's in-memory one, closing
/// sessions idle for `idle` (no request and no notification either way).
pub(crate) fn manager(idle: Duration) -> LocalSessionManager {
    let mut m = LocalSessionManager::default();
    m.session_config.keep_alive = Some(idle);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, expires: Option<i64>) -> GrantKey {
        GrantKey {
            name: name.into(),
            expires,
            source: Source::Db,
        }
    }

    #[test]
    fn caps_count_reservations_and_sessions() {
        let s = Arc::new(Sessions::new(Arc::new(manager(SESSION_IDLE)), 2, 3));
        let a = key("a", None);
        let b = key("b", None);
        let s1 = s.reserve(&a).unwrap();
        let s2 = s.reserve(&a).unwrap();
        // Handshakes in flight count: a third one for `a` is refused.
        assert_eq!(s.reserve(&a).err(), Some(Refusal::PerToken(2)));
        s1.bind("one");
        drop(s2); // its handshake made no session
        assert_eq!(s.counts("a"), (1, 1));
        s.reserve(&a).unwrap().bind("two");
        s.reserve(&b).unwrap().bind("three");
        assert_eq!(s.reserve(&b).err(), Some(Refusal::Total(3)));
        assert_eq!(s.owner("two").as_deref(), Some("a"));
        assert_eq!(s.owner("three").as_deref(), Some("b"));
        s.forget("three");
        assert_eq!(s.owner("three"), None);
        assert_eq!(s.counts("b"), (2, 0));
        assert!(s.reserve(&b).is_ok());
    }

    #[tokio::test]
    async fn ending_a_grant_cancels_its_streams_and_frees_its_sessions() {
        let s = Arc::new(Sessions::new(Arc::new(manager(SESSION_IDLE)), 4, 8));
        let a = key("a", Some(100));
        let b = key("b", None);
        let ct_a = s.ending(&a);
        let ct_b = s.ending(&b);
        s.reserve(&a).unwrap().bind("s1");
        s.reserve(&a).unwrap().bind("s2");
        s.reserve(&b).unwrap().bind("s3");
        let n = s.end(|k| k.expires.is_some_and(|e| e <= 100)).await;
        assert_eq!(n, 2);
        assert!(ct_a.is_cancelled() && !ct_b.is_cancelled());
        assert_eq!(s.counts("a"), (1, 0));
        assert_eq!(s.owner("s1"), None);
        assert_eq!(s.grants(), vec![b.clone()]);
        // rmcp does not know these sessions: pruning drops them from the book.
        s.prune().await;
        assert_eq!(s.counts("b"), (0, 0));
    }
}
