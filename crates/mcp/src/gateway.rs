//! The HTTP gateway's outer layer, in front of every route: client network
//! (CIDR allowlist), Host and Origin validation (DNS rebinding, cross-site
//! browsers), Prometheus metrics, and the listener (plain TCP or TLS, with
//! a count of open connections).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::{invalid as bail, Result, WithContext as _};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Json;
use ipnet::IpNet;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

// ---------- Host, Origin, CIDR ----------

/// Who may reach the gateway, and under which names.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host names (no port, lowercase); empty: any Host.
    hosts: Vec<String>,
    /// Extra origins (`scheme://host[:port|:*]`, or `null`).
    origins: Vec<String>,
    /// Client networks; empty: any.
    cidrs: Vec<IpNet>,
}

/// `host[:port]` or `[v6][:port]` → lowercase host without brackets or port.
fn host_only(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if a.matches(':').count() > 1 {
        a // a bare IPv6 address
    } else {
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses `a.b.c.d/n`, `v6/n` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    bail!("'{s}' is not a CIDR block (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8)")
}

impl Guard {
    /// Accepts loopback names, the bind address (any Host when it is
    /// unspecified, `0.0.0.0`/`::`), and `extra_hosts`; browser Origins on
    /// loopback, the request's own host, and `extra_origins`; clients in
    /// `cidrs` (all when empty).
    pub fn new(
        bind: IpAddr,
        extra_hosts: &[String],
        extra_origins: &[String],
        cidrs: &[String],
    ) -> Result<Self> {
        let cidrs = cidrs
            .iter()
            .map(|c| parse_cidr(c))
            .collect::<Result<Vec<_>>>()?;
        let hosts = if bind.is_unspecified() && extra_hosts.is_empty() {
            Vec::new()
        } else {
            let mut h: Vec<String> = ["localhost", "127.0.0.1", "::1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if !bind.is_unspecified() {
                h.push(bind.to_string());
            }
            h.extend(extra_hosts.iter().map(|e| host_only(e)));
            h
        };
        let origins = extra_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Ok(Guard {
            hosts,
            origins,
            cidrs,
        })
    }

    /// The Host names accepted (for rmcp's own check); empty: any.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Whether a client at `ip` may connect.
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&ip))
    }

    /// Whether the Host header names this server.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(h) = host else {
            return false;
        };
        let h = host_only(h);
        self.hosts.contains(&h)
    }

    /// Whether a browser Origin (if any) may call: loopback origins, the
    /// origin of the request's own Host, or a configured one.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        else {
            return true; // not a browser (or a same-origin GET)
        };
        if self.origins.contains(&origin) {
            return true;
        }
        if origin == "null" {
            return false;
        }
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        if scheme != "http" && scheme != "https" {
            return false;
        }
        let ohost = host_only(authority);
        if is_loopback_name(&ohost) {
            return true;
        }
        if host.is_some_and(|h| h.trim().eq_ignore_ascii_case(authority)) {
            return true; // same origin
        }
        self.origins.iter().any(|o| {
            o.strip_suffix(":*").is_some_and(|base| {
                base.split_once("://")
                    .is_some_and(|(s, h)| s == scheme && host_only(h) == ohost)
            })
        })
    }
}

fn forbidden(msg: &str) -> Response {
    (StatusCode::FORBIDDEN, Json(json!({ "error": msg }))).into_response()
}

/// The address of the connected client.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, McpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, McpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<SocketAddr> for PeerAddr {
    fn connect_info(addr: SocketAddr) -> Self {
        PeerAddr(addr)
    }
}

/// Middleware on every route: CIDR, Host, Origin (403), then metrics.
pub(crate) async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(req.uri().path());
    let denied = check(
        &g,
        req.extensions().get::<ConnectInfo<PeerAddr>>(),
        req.headers(),
    );
    let response = match denied {
        Some(denied) => denied,
        None => next.run(req).await,
    };
    record(route, response.status(), started.elapsed());
    response
}

fn check(g: &Guard, peer: Option<&ConnectInfo<PeerAddr>>, headers: &HeaderMap) -> Option<Response> {
    if let Some(ConnectInfo(PeerAddr(addr))) = peer {
        if !g.client_allowed(addr.ip()) {
            return Some(forbidden("this client's address is not in mcp.allow_cidrs"));
        }
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !g.host_allowed(host) {
        return Some(forbidden(
            "the Host header does not name this server (add it to mcp.allowed_hosts)",
        ));
    }
    let origin = match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => None,
        Some(Ok(o)) => Some(o),
        Some(Err(_)) => return Some(forbidden("unreadable Origin header")),
    };
    if !g.origin_allowed(origin, host) {
        return Some(forbidden(
            "requests from this Origin are not allowed (add it to mcp.allowed_origins)",
        ));
    }
    None
}

// ---------- metrics ----------

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder (installed on first use; `None` if
/// another recorder was installed first).
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                // Every duration is a histogram (quantiles over any window
                // and across nodes in Grafana), from 0.5 ms to a minute.
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            metrics::describe_counter!("mcp_requests_total", "HTTP requests, by route and status");
            metrics::describe_histogram!(
                "mcp_request_duration_seconds",
                metrics::Unit::Seconds,
                "time to the response head (SSE bodies stream after it)"
            );
            metrics::describe_counter!(
                "mcp_errors_total",
                "failed requests: HTTP 4xx/5xx by status, and tool calls that returned isError"
            );
            metrics::describe_gauge!("mcp_clients_connected", "open client connections");
            metrics::describe_gauge!(
                "mcp_sessions",
                "open MCP sessions (and handshakes in flight)"
            );
            metrics::describe_gauge!(
                "mcp_rate_limited_clients",
                "client networks the per-client rate limit tracks"
            );
            metrics::describe_counter!(
                "mcp_auth_failures_total",
                "requests refused with 401 (audited at a bounded rate)"
            );
            metrics::describe_histogram!(
                "file_read_duration_seconds",
                metrics::Unit::Seconds,
                "reading a file's content from the store for a client (label via: mcp, api)"
            );
            metrics::describe_histogram!(
                "file_write_duration_seconds",
                metrics::Unit::Seconds,
                "writing a file for a client, from the request to the recorded version (label via)"
            );
            for c in [
                "mcp_requests_total",
                "mcp_errors_total",
                "mcp_auth_failures_total",
            ] {
                metrics::counter!(c).increment(0);
            }
            Some(handle)
        })
        .as_ref()
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/mcp" | "/mcp/" => "/mcp",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p.starts_with("/.well-known/") => "/.well-known",
        p if p.starts_with("/api/v1/") => "/api/v1",
        p if p.starts_with("/s/") => "/s",
        _ => "other",
    }
}

fn record(route: &'static str, status: StatusCode, took: Duration) {
    let code = status.as_u16().to_string();
    metrics::counter!("mcp_requests_total", "route" => route, "status" => code.clone())
        .increment(1);
    metrics::histogram!("mcp_request_duration_seconds", "route" => route)
        .record(took.as_secs_f64());
    if status.is_client_error() || status.is_server_error() {
        metrics::counter!("mcp_errors_total", "kind" => "http", "status" => code).increment(1);
    }
}

/// Counts a tool call that returned `isError` (called by the dispatcher).
pub(crate) fn tool_error(tool: &str) {
    metrics::counter!("mcp_errors_total", "kind" => "tool", "tool" => tool.to_owned()).increment(1);
}

// ---------- listener: TCP or TLS, counted ----------

/// TLS for the listener from PEM files (certificate chain, private key), with ring.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One accepted connection; dropping it lowers `mcp_clients_connected`.
pub struct Conn {
    io: ConnIo,
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn new(io: ConnIo) -> Self {
        metrics::gauge!("mcp_clients_connected").increment(1.0);
        Conn { io }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("mcp_clients_connected").decrement(1.0);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts TCP connections (TCP_NODELAY on) and, with TLS, runs each
/// handshake in its own task so a slow client cannot hold up the others.
pub struct McpListener {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl McpListener {
    /// Starts accepting on `listener` until `ct` is cancelled.
    pub fn new(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        ct: CancellationToken,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = ct.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!("accepting an MCP connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true); // small JSON-RPC replies must not wait for ACKs
                match &tls {
                    None => {
                        if tx
                            .send((Conn::new(ConnIo::Plain(tcp)), addr))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let hs =
                                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                                    .await;
                            match hs {
                                Ok(Ok(s)) => {
                                    let _ =
                                        tx.send((Conn::new(ConnIo::Tls(Box::new(s))), addr)).await;
                                }
                                Ok(Err(e)) => tracing::debug!("TLS handshake from {addr}: {e}"),
                                Err(_) => tracing::debug!("TLS handshake from {addr} timed out"),
                            }
                        });
                    }
                }
            }
        });
        Ok(McpListener { rx, local })
    }
}

impl axum::serve::Listener for McpListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_origins_and_networks() {
        let g = Guard::new(
            "127.0.0.1".parse().unwrap(),
            &["mcp.example.com".into()],
            &[
                "https://app.example.com".into(),
                "http://tool.local:*".into(),
            ],
            &["10.0.0.0/8".into(), "127.0.0.1".into(), "fd00::/8".into()],
        )
        .unwrap();
        assert!(g.host_allowed(Some("127.0.0.1:8765")));
        assert!(g.host_allowed(Some("localhost")));
        assert!(g.host_allowed(Some("[::1]:8765")));
        assert!(g.host_allowed(Some("MCP.example.com:443")));
        assert!(!g.host_allowed(Some("evil.example.com")));
        assert!(!g.host_allowed(None));

        assert!(g.origin_allowed(None, Some("127.0.0.1:1")));
        assert!(g.origin_allowed(Some("http://localhost:3000"), None));
        assert!(g.origin_allowed(Some("http://[::1]:5"), None));
        assert!(g.origin_allowed(Some("https://app.example.com/"), None));
        assert!(g.origin_allowed(Some("http://tool.local:9999"), None));
        assert!(g.origin_allowed(Some("https://mcp.example.com"), Some("mcp.example.com")));
        assert!(!g.origin_allowed(Some("http://evil.example.com"), Some("127.0.0.1:8765")));
        assert!(!g.origin_allowed(Some("null"), None));
        assert!(!g.origin_allowed(Some("https://app.example.com.evil.io"), None));

        assert!(g.client_allowed("10.1.2.3".parse().unwrap()));
        assert!(g.client_allowed("127.0.0.1".parse().unwrap()));
        assert!(g.client_allowed("::ffff:10.0.0.1".parse().unwrap()));
        assert!(g.client_allowed("fd12::1".parse().unwrap()));
        assert!(!g.client_allowed("127.0.0.2".parse().unwrap()));
        assert!(!g.client_allowed("192.168.1.1".parse().unwrap()));
        assert!(parse_cidr("nonsense").is_err());

        let any = Guard::new("0.0.0.0".parse().unwrap(), &[], &[], &[]).unwrap();
        assert!(any.host_allowed(Some("whatever.example")));
        assert!(any.client_allowed("8.8.8.8".parse().unwrap()));
    }
}
