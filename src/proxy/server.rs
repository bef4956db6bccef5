//! Accepting connections (plain and TLS): TCP_NODELAY and TCP keepalive set once on the listener (accepted
//! sockets inherit them on Linux), the global `--max-connections` (503 and a metric above it),
//! then each connection goes to the front door in a task the drain tracks. On shutdown the
//! accept loop stops; tunnels get their Close 1001 from the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};

use super::error::ProxyError;
use super::front;
use super::headers::Listener;
use super::proxy_protocol::ProxyProtocol;
use super::service::ProxyState;
use super::stream::Stream;
use crate::tls::TlsConn;

/// Listener-level settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Time allowed to send a complete request head; also how long an idle keep-alive
    /// connection waits for its next request.
    pub header_timeout: Duration,
    /// Largest request head (431 above it).
    pub max_header_bytes: usize,
    /// Live connections per resolved client address; 0 = unlimited.
    pub max_connections_per_client: u32,
    /// Open client connections in total; 0 = unlimited. Above it: 503 and the connection closed.
    pub max_connections: usize,
    /// A write to a client or a backend that makes no progress for this long ends the
    /// connection (a peer that never reads cannot pin memory).
    pub write_timeout: Duration,
    /// TCP keepalive idle time on client and backend sockets of a tunnel; `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// `--proxy-protocol`: read a PROXY protocol header (v1 or v2) first on both listeners.
    pub proxy_protocol: Option<Arc<ProxyProtocol>>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections_per_client: 0,
            max_connections: 0,
            write_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(Duration::from_secs(60)),
            proxy_protocol: None,
        }
    }
}

/// What every connection of one listener shares.
#[derive(Debug)]
pub struct ListenerCtx {
    pub config: ProxyConfig,
    pub listener: Listener,
    /// hyper's HTTP/1 server settings, for plain HTTP.
    pub http: http1::Builder,
}

impl ListenerCtx {
    pub fn new(config: ProxyConfig, listener: Listener) -> Self {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .keep_alive(true);
        Self { config, listener, http }
    }
}

/// Counts open client connections; the guard of one connection releases it on drop.
#[derive(Debug, Default)]
pub struct OpenConnections(AtomicUsize);

/// One open client connection.
#[derive(Debug)]
pub struct ConnGuard {
    state: Arc<ProxyState>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.open.0.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics.client_connections.dec();
    }
}

impl OpenConnections {
    pub fn current(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

fn open_connection(state: &Arc<ProxyState>, limit: usize) -> Option<ConnGuard> {
    let prev = state.open.0.fetch_add(1, Ordering::Relaxed);
    if limit > 0 && prev >= limit {
        state.open.0.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    state.metrics.client_connections.inc();
    Some(ConnGuard { state: state.clone() })
}

/// Bind the proxy listener with TCP_NODELAY and keepalive set before `listen`, so every
/// accepted socket inherits them on Linux (no per-connection setsockopt).
pub fn bind(addr: SocketAddr, config: &ProxyConfig) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` takes IPv4 too, as the standard library's bind does on Linux.
        let _ = sock.set_only_v6(false);
    }
    sock.set_tcp_nodelay(true)?;
    if let Some(idle) = config.tcp_keepalive {
        sock.set_tcp_keepalive(&keepalive(idle))?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    TcpListener::from_std(sock.into())
}

/// Accept and serve plain HTTP until draining starts. Connection tasks are tracked by the drain.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>, config: ProxyConfig) {
    accept_loop(listener, state, config, None).await;
}

/// Accept TLS connections (`--tls-listen`) until draining starts: each one's handshake
/// (within `--header-timeout`, counted in `wsingress_tls_handshakes_total`) and then the
/// same front door, routes and relay as the plain listener, with `X-Forwarded-Proto: https`.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<ProxyState>,
    config: ProxyConfig,
    tls: Arc<rustls::ServerConfig>,
) {
    accept_loop(listener, state, config, Some(tls)).await;
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<ProxyState>,
    config: ProxyConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    // Options already on the listener (from `bind`) were there before any connection arrived,
    // so accepted sockets carry them. A listener bound elsewhere gets them now for later
    // connections, but the ones already queued may lack them: set them per socket then.
    let inherit = inherited(&listener, config.tcp_keepalive.is_some());
    if !inherit {
        let sock = SockRef::from(&listener);
        if let Err(e) = sock.set_tcp_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener");
        }
        if let Some(idle) = config.tcp_keepalive
            && let Err(e) = sock.set_tcp_keepalive(&keepalive(idle))
        {
            tracing::warn!(error = %e, "cannot set TCP keepalive on the listener");
        }
    }
    let ctx = Arc::new(ListenerCtx::new(config, Listener { https: tls.is_some(), port }));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = state.drain.started() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !inherit {
            set_socket_options(&stream, ctx.config.tcp_keepalive);
        }
        let Some(conn) = open_connection(&state, ctx.config.max_connections) else {
            state.metrics.connections_rejected.with_label_values(&["max_connections"]).inc();
            // A TLS client could not read a plain 503: it sees the close.
            if tls.is_none() {
                tokio::spawn(refuse_over_capacity(stream));
            }
            continue;
        };
        match (&tls, &ctx.config.proxy_protocol) {
            (None, None) => {
                state.drain.spawn(front::serve_connection(
                    Stream::from(stream),
                    peer,
                    state.clone(),
                    ctx.clone(),
                    conn,
                ));
            }
            (Some(tls), None) => {
                state.drain.spawn(tls_connection(stream, peer, state.clone(), ctx.clone(), conn, tls.clone()));
            }
            (tls, Some(pp)) => {
                state.drain.spawn(proxied_connection(
                    stream,
                    peer,
                    state.clone(),
                    ctx.clone(),
                    conn,
                    tls.clone(),
                    pp.clone(),
                ));
            }
        }
    }
}

/// `--proxy-protocol`: the header first (the client's address becomes the peer), then TLS or
/// the front door on the same socket, which still holds every byte after the header.
async fn proxied_connection(
    mut tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    ctx: Arc<ListenerCtx>,
    conn: ConnGuard,
    tls: Option<Arc<rustls::ServerConfig>>,
    pp: Arc<ProxyProtocol>,
) {
    let client = match pp.accept(&mut tcp, peer, ctx.config.header_timeout).await {
        Ok(client) => client,
        Err(e) => {
            if let Some(label) = e.label() {
                state.metrics.connections_rejected.with_label_values(&[label]).inc();
            }
            pp.log_refusal(peer.ip(), &e);
            return;
        }
    };
    match tls {
        None => front::serve_connection(Stream::from(tcp), client, state, ctx, conn).await,
        Some(tls) => tls_connection(tcp, client, state, ctx, conn, tls).await,
    }
}

/// One TLS connection: the handshake, then the front door over the decrypted stream.
async fn tls_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    ctx: Arc<ListenerCtx>,
    conn: ConnGuard,
    tls: Arc<rustls::ServerConfig>,
) {
    match TlsConn::accept(tcp, tls, ctx.config.header_timeout).await {
        Ok((session, accepted)) => {
            state.metrics.tls_handshake("ok", accepted.elapsed);
            tracing::debug!(
                client = %peer.ip(),
                sni = accepted.sni.as_deref().unwrap_or(""),
                resumed = accepted.resumed,
                "TLS handshake done"
            );
            front::serve_connection(Stream::Tls(Box::new(session)), peer, state, ctx, conn).await;
        }
        Err(e) => {
            state.metrics.tls_handshake(e.label(), Duration::ZERO);
            tracing::debug!(client = %peer.ip(), error = %e, "TLS handshake failed");
        }
    }
}

/// The keepalive probes used on both sockets of a tunnel: first probe after `idle`, then every
/// 10 s, 6 probes (a vanished peer is noticed about a minute after `idle`).
pub fn keepalive(idle: Duration) -> TcpKeepalive {
    let ka = TcpKeepalive::new().with_time(idle);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let ka = ka.with_interval(Duration::from_secs(10)).with_retries(6);
    ka
}

/// TCP_NODELAY and keepalive on one socket (where the listener's are not inherited).
pub fn set_socket_options(stream: &TcpStream, keepalive_idle: Option<Duration>) {
    // Failing to set them only costs latency or dead-peer detection.
    let _ = stream.set_nodelay(true);
    if let Some(idle) = keepalive_idle {
        let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive(idle));
    }
}

/// Whether accepted sockets come with the listener's options already (Linux).
fn inherited(listener: &TcpListener, keepalive: bool) -> bool {
    let sock = SockRef::from(listener);
    cfg!(target_os = "linux")
        && sock.tcp_nodelay().unwrap_or(false)
        && (!keepalive || sock.keepalive().unwrap_or(false))
}

/// Over `--max-connections`: a 503 without reading the request, then close. The request the
/// client may have sent is read and discarded for a moment first, so the close does not turn
/// into a reset that destroys the answer.
async fn refuse_over_capacity(stream: TcpStream) {
    let err = ProxyError::OverCapacity;
    let mut stream = Stream::from(stream);
    let answer = super::front::error_head(&err, true);
    if stream.write_all_within(&answer, Duration::from_secs(1)).await.is_err() {
        return;
    }
    stream.shutdown_write();
    let mut sink = Vec::with_capacity(4096);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            sink.clear();
            if !matches!(stream.read_more(&mut sink, 4096).await, Ok(n) if n > 0) {
                break;
            }
        }
    })
    .await;
}
