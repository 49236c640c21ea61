//! Fetching the sealed config vault from a member, for a device being
//! rebuilt (`sovryn recover`): the vault ALPN answers anyone with the
//! envelope and closes. The envelope opens only with the user's vault
//! passphrase (Argon2id), like the copy a backup peer or a bucket keeps;
//! at most [`MAX_FETCHES`] are served at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::{Endpoint, EndpointAddr};
use sovryn_engine::vault::Envelope;
use sovryn_engine::Home;

/// The protocol a recovering device dials.
pub const VAULT_ALPN: &[u8] = b"sovryn/vault/1";

/// Fetches served at once.
const MAX_FETCHES: usize = 4;

/// The largest envelope read (bytes of JSON).
const MAX_ENVELOPE: usize = 16 << 20;

/// Answers one fetch: the envelope kept in `home` (or an empty answer).
/// `serving` counts the fetches this node serves at once.
pub async fn serve(conn: Connection, home: Home, serving: &AtomicUsize) {
    if serving.fetch_add(1, Ordering::SeqCst) >= MAX_FETCHES {
        serving.fetch_sub(1, Ordering::SeqCst);
        conn.close(429u32.into(), b"busy");
        return;
    }
    let served = async {
        let (mut send, _recv) = conn.accept_bi().await.ok()?;
        let envelope =
            tokio::task::spawn_blocking(move || sovryn_engine::vault::load_envelope(&home))
                .await
                .ok()?
                .ok()?;
        let body = serde_json::to_vec(&envelope).ok()?;
        send.write_all(&body).await.ok()?;
        send.finish().ok()?;
        // Let the bytes reach the other side before the connection goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
    serving.fetch_sub(1, Ordering::SeqCst);
    conn.close(0u32.into(), b"done");
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// The member has no vault.
    #[error("that node keeps no vault (`sovryn vault init` on a member first)")]
    NoVault,
    /// It sent something else.
    #[error("that node sent a damaged vault: {0}")]
    Damaged(String),
}

/// Fetches the sealed vault from member `id` at `sock`, with a throwaway identity.
pub async fn fetch(
    id: iroh::EndpointId,
    sock: std::net::SocketAddr,
) -> Result<Envelope, FetchError> {
    let addr = EndpointAddr::new(id).with_ip_addr(sock);
    let who = addr.id.fmt_short().to_string();
    let unreachable = |e: String| FetchError::Unreachable(format!("{who}: {e}"));
    let endpoint = Endpoint::builder(iroh::endpoint::presets::Minimal)
        .secret_key(iroh::SecretKey::generate())
        .alpns(Vec::new())
        .relay_mode(iroh::RelayMode::Disabled)
        .bind()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let got = async {
        let conn = endpoint
            .connect(addr, VAULT_ALPN)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // A stream is seen by the other side only once something is sent on it.
        send.write_all(b"vault")
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        send.finish().map_err(|e| unreachable(e.to_string()))?;
        let body = recv
            .read_to_end(MAX_ENVELOPE)
            .await
            .map_err(|e| FetchError::Damaged(e.to_string()))?;
        let envelope: Option<Envelope> =
            serde_json::from_slice(&body).map_err(|e| FetchError::Damaged(e.to_string()))?;
        envelope.ok_or(FetchError::NoVault)
    };
    let got = tokio::time::timeout(Duration::from_secs(30), got)
        .await
        .unwrap_or_else(|_| Err(unreachable("no answer".into())));
    endpoint.close().await;
    got
}
