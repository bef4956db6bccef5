//! Accepting connections: HTTP/1.1 with upgrades, request-head timeout (slowloris) and size
//! limit (431), per-client connection limit, and drain on shutdown (stop accepting, close
//! idle keep-alive connections; tunnels get their Close 1001 from the relay).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::limits::ClientCounters;
use super::service::{self, ProxyState};

/// Listener-level settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Time allowed to send a complete request head.
    pub header_timeout: Duration,
    /// Largest request head (hyper answers 431 above it).
    pub max_header_bytes: usize,
    /// Live connections per client address; 0 = unlimited.
    pub max_connections_per_client: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(10), max_header_bytes: 16 * 1024, max_connections_per_client: 0 }
    }
}

/// Accept and serve until draining starts. Connection tasks are tracked by the drain.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>, config: ProxyConfig) {
    let clients = Arc::new(ClientCounters::default());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    let http = Arc::new(http);
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt in
    // total instead of one per connection.
    if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener");
    }
    let inherit = nodelay_inherited(&listener);
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
            let _ = stream.set_nodelay(true);
        }
        let slot = match config.max_connections_per_client {
            0 => None,
            limit => clients.acquire(&peer.ip(), limit as usize),
        };
        let over_limit = config.max_connections_per_client > 0 && slot.is_none();
        let state = state.clone();
        let http = http.clone();
        state.clone().drain.spawn(serve_connection(stream, peer, state, http, over_limit, slot));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    http: Arc<http1::Builder>,
    over_limit: bool,
    slot: Option<super::limits::Slot>,
) {
    let svc_state = state.clone();
    // The slot must outlive this HTTP connection when it becomes a tunnel: every request
    // carries a handle to it, and the upgrade path keeps one for the tunnel's lifetime.
    let slot = slot.map(|s| ClientSlot { _slot: Arc::new(s) });
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(slot) = &slot {
            req.extensions_mut().insert(slot.clone());
        }
        let state = svc_state.clone();
        async move { Ok::<_, std::convert::Infallible>(service::handle(state, req, peer, over_limit).await) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), svc).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = state.drain.started() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection error");
    }
}

/// Whether accepted sockets come with TCP_NODELAY already (Linux); elsewhere set it per socket.
fn nodelay_inherited(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux") && socket2::SockRef::from(listener).tcp_nodelay().unwrap_or(false)
}

/// A connection's `--max-connections-per-client` slot, shared by its requests and, after an
/// upgrade, by its tunnel.
#[derive(Debug, Clone)]
pub struct ClientSlot {
    _slot: Arc<super::limits::Slot>,
}
