//! The echo server (`wsingress echo`): a WebSocket echo with an optional prefix, request info on
//! `/headers` (and `__headers__` over a WebSocket), a self-contained test page on `/`, and `/healthz`.
//!
//! [`serve_tls`] serves the same over TLS (https and wss) through [`TlsConn`].
//!
//! Built on hyper 1 (HTTP/1.1 with upgrades) and hyper-tungstenite. Every response, the 101
//! included, carries `x-echo-instance` so tests can tell backends apart. Close frames are echoed
//! exactly (code and reason), which is what the Autobahn testsuite expects of an echo server.
//! tungstenite 0.30 does not implement permessage-deflate, so this server never negotiates it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use hyper_tungstenite::tungstenite::protocol::frame::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use hyper_tungstenite::tungstenite::{self, Message};
use hyper_tungstenite::{HyperWebsocket, HyperWebsocketStream};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::tls::TlsConn;

/// Response header naming the instance that answered (on every response, the 101 included).
pub const INSTANCE_HEADER: &str = "x-echo-instance";
/// A first text message exactly equal to this is answered with the request-info JSON.
pub const HEADERS_COMMAND: &str = "__headers__";
/// Largest message (and frame) accepted; Autobahn's biggest cases send 16 MiB in one frame.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Read buffer per connection. tungstenite allocates its default (128 KiB) up front for every
/// connection, which put the 128 MiB limit of manifests/echo.yaml at about 900 idle clients;
/// 16 KiB keeps a 64 KiB message at four reads.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// How long a WebSocket waits for the peer's Close reply after we sent ours.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(3);
/// How long `serve` waits for connections to finish after `shutdown` fired.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client must finish sending request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept` (e.g. out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

static PAGE_TEMPLATE: &str = include_str!("echo/page.html");

/// What the echo server says and how it names itself.
#[derive(Debug, Clone, Default)]
pub struct EchoConfig {
    /// Prepended to every echoed text message (and binary, as bytes).
    pub prefix: String,
    /// Sent in the `x-echo-instance` response header and in `/headers`.
    pub instance: String,
}

/// Why an [`EchoConfig`] cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The instance name cannot travel in an HTTP header.
    #[error("instance name {0:?} is not a valid HTTP header value (printable ASCII only)")]
    InvalidInstance(String),
}

impl From<EchoError> for std::io::Error {
    fn from(error: EchoError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}

impl EchoConfig {
    /// Checks the configuration; call before binding the listener.
    pub fn validate(&self) -> Result<(), EchoError> {
        self.instance_header().map(|_| ())
    }

    fn instance_header(&self) -> Result<HeaderValue, EchoError> {
        // Visible ASCII and spaces only, so every client library can read it back as a string.
        let printable = self.instance.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
        match HeaderValue::from_str(&self.instance) {
            Ok(value) if printable => Ok(value),
            _ => Err(EchoError::InvalidInstance(self.instance.clone())),
        }
    }
}

/// Everything a connection needs, shared by all of them.
struct Shared {
    prefix: String,
    instance: String,
    instance_header: HeaderValue,
    page: Bytes,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// TLS on every connection (`echo --tls-cert`).
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serve until `shutdown` fires; then stop accepting, send Close 1001 to open WebSockets, wait
/// (bounded) for connections to finish and return.
pub async fn serve(listener: TcpListener, config: EchoConfig, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_with(listener, config, None, shutdown).await
}

/// [`serve`] over TLS: https and wss with `tls` (for example `tls::server::config` over a
/// handle holding the `--tls-cert` pair).
pub async fn serve_tls(
    listener: TcpListener,
    config: EchoConfig,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, config, Some(tls), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    config: EchoConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let instance_header = config.instance_header()?;
    let page = Bytes::from(render_page(&config));
    let shared = Arc::new(Shared {
        prefix: config.prefix,
        instance: config.instance,
        instance_header,
        page,
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
        tls,
    });
    let local = listener.local_addr()?;
    info!(%local, instance = %shared.instance, prefix = %shared.prefix, tls = shared.tls.is_some(), "echo server listening");

    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let task = serve_connection(stream, peer, Arc::clone(&shared));
                shared.tasks.spawn(task);
            }
            Err(error) => {
                // Per-connection failures (reset before accept) and descriptor exhaustion alike:
                // log, pause briefly so a full descriptor table does not spin, keep serving.
                warn!(%error, "echo: accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }

    drop(listener);
    shared.tasks.close();
    let open = shared.tasks.len();
    debug!(open, "echo: shutting down, waiting for connections");
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait()).await.is_err() {
        warn!(still_open = shared.tasks.len(), "echo: connections still open after the shutdown grace; leaving them");
    }
    info!(%local, "echo server stopped");
    Ok(())
}

/// One accepted TCP connection: HTTP/1.1 requests until it closes or upgrades.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "echo: could not set TCP_NODELAY");
    }
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |request| {
            let response = handle(request, peer, &shared);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    match shared.tls.clone() {
        None => serve_http(TokioIo::new(stream), peer, service, &shared).await,
        Some(config) => match TlsConn::accept(stream, config, HEADER_READ_TIMEOUT).await {
            Ok((conn, _)) => serve_http(TokioIo::new(conn), peer, service, &shared).await,
            Err(error) => debug!(%peer, %error, "echo: TLS handshake failed"),
        },
    }
}

/// HTTP/1.1 with upgrades on one connection, plain or TLS.
async fn serve_http<I, S>(io: I, peer: SocketAddr, service: S, shared: &Shared)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shared.shutdown.cancelled() => {
            // Finish the request in flight (if any), then close; idle connections close now.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "echo: HTTP connection ended with an error");
    }
}

/// Answers one request; never fails (errors become 4xx responses).
fn handle(mut request: Request<Incoming>, peer: SocketAddr, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let mut response = if hyper_tungstenite::is_upgrade_request(&request) {
        upgrade(&mut request, peer, shared)
    } else {
        plain(&request, peer, shared)
    };
    response.headers_mut().insert(INSTANCE_HEADER, shared.instance_header.clone());
    debug!(%peer, method = %request.method(), path = request.uri().path(),
        status = response.status().as_u16(), "echo: request");
    response
}

/// Plain HTTP: the page, request info, health, or 404.
fn plain(request: &Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = matches!(path, "/" | "/headers" | "/healthz");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/" => {
            let mut response = Response::new(Full::new(shared.page.clone()));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        "/headers" => {
            let info = request_info(request, peer, &shared.instance);
            let mut body = info.to_string();
            body.push('\n');
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        _ => text(StatusCode::OK, "ok\n"),
    }
}

/// The WebSocket handshake (RFC 6455 section 4.2.2); the echo itself runs in its own task.
fn upgrade(request: &mut Request<Incoming>, peer: SocketAddr, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    // RFC 6455 section 4.1: "The method of the request MUST be GET".
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "websocket upgrade needs GET\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let info = request_info(request, peer, &shared.instance);
    let subprotocol = first_subprotocol(request.headers());
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .read_buffer_size(READ_BUFFER_BYTES);
    match hyper_tungstenite::upgrade(&mut *request, Some(config)) {
        Ok((response, websocket)) => {
            let (mut parts, _body) = response.into_parts();
            // RFC 6455 section 4.2.2: the server selects one of the offered subprotocols; we take
            // the first so tests can see which one an intermediary let through.
            if let Some(subprotocol) = subprotocol {
                parts.headers.insert(header::SEC_WEBSOCKET_PROTOCOL, subprotocol);
            }
            let session = echo_session(websocket, peer, info, Arc::clone(shared));
            shared.tasks.spawn(session);
            Response::from_parts(parts, Full::default())
        }
        Err(error) => {
            debug!(%peer, %error, "echo: bad websocket upgrade");
            text(StatusCode::BAD_REQUEST, format!("bad websocket upgrade: {error}\n"))
        }
    }
}

/// The first token of `Sec-WebSocket-Protocol` (the header may repeat and holds a comma list).
fn first_subprotocol(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|token| !token.is_empty())
        .and_then(|token| HeaderValue::from_str(token).ok())
}

/// How an echo session ended, and what Close (if any) we still owe the peer.
enum Ending {
    /// The peer closed (we echoed its Close) or the connection dropped.
    Done,
    /// We close with this code and reason.
    Close(CloseCode, &'static str),
}

async fn echo_session(websocket: HyperWebsocket, peer: SocketAddr, info: serde_json::Value, shared: Arc<Shared>) {
    let mut stream = match websocket.await {
        Ok(stream) => stream,
        Err(error) => {
            debug!(%peer, %error, "echo: upgrade did not complete");
            return;
        }
    };
    debug!(%peer, "echo: websocket open");
    let ending = tokio::select! {
        ending = echo_loop(&mut stream, &info, &shared.prefix) => ending,
        () = shared.shutdown.cancelled() => Ending::Close(CloseCode::Away, "server shutting down"),
    };
    if let Ending::Close(code, reason) = ending {
        let frame = CloseFrame { code, reason: reason.into() };
        let closing = async {
            if let Err(error) = stream.close(Some(frame)).await {
                debug!(%peer, %error, "echo: could not send close");
                return;
            }
            // Wait for the peer's Close reply (RFC 6455 section 7.1.1: the server closes TCP first,
            // but only after the closing handshake).
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    None => return,
                    Some(Err(_)) => break,
                }
            }
            // The parser gave up (after a protocol error the rest of a bad frame is noise): read
            // what is left as bytes until the peer closes. Closing with unread bytes would send
            // a reset, and a reset can discard our Close before the peer has read it.
            let io = stream.get_mut();
            let mut sink = [0u8; 4096];
            while matches!(tokio::io::AsyncReadExt::read(io, &mut sink).await, Ok(n) if n > 0) {}
        };
        if tokio::time::timeout(CLOSE_REPLY_WAIT, closing).await.is_err() {
            debug!(%peer, "echo: no close reply in time");
        }
    }
    debug!(%peer, "echo: websocket closed");
}

/// Echo until the peer closes or breaks the protocol.
async fn echo_loop(stream: &mut HyperWebsocketStream, info: &serde_json::Value, prefix: &str) -> Ending {
    let mut first_text = true;
    while let Some(message) = stream.next().await {
        let reply = match message {
            Ok(Message::Text(text)) => {
                let is_command = first_text && text.as_str() == HEADERS_COMMAND;
                first_text = false;
                if is_command {
                    Message::text(info.to_string())
                } else if prefix.is_empty() {
                    Message::Text(text)
                } else {
                    let mut echoed = String::with_capacity(prefix.len() + text.len());
                    echoed.push_str(prefix);
                    echoed.push_str(&text);
                    Message::text(echoed)
                }
            }
            Ok(Message::Binary(data)) => {
                if prefix.is_empty() {
                    Message::Binary(data)
                } else {
                    let mut echoed = BytesMut::with_capacity(prefix.len() + data.len());
                    echoed.extend_from_slice(prefix.as_bytes());
                    echoed.extend_from_slice(&data);
                    Message::Binary(echoed.freeze())
                }
            }
            // tungstenite queues the Pong for a Ping, and the exact Close echo for a Close; both
            // are flushed by the next read, which then ends the stream after a Close.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(Message::Close(frame)) => {
                debug!(?frame, "echo: peer closed; echoing its close");
                continue;
            }
            Err(error) => return ending_for(error),
        };
        if let Err(error) = stream.send(reply).await {
            return ending_for(error);
        }
    }
    Ending::Done
}

/// RFC 6455 section 7.4.1 codes for what went wrong; I/O failures just end the session.
fn ending_for(error: tungstenite::Error) -> Ending {
    use tungstenite::Error as E;
    match error {
        E::Utf8(_) => Ending::Close(CloseCode::Invalid, "invalid UTF-8 in text message"),
        E::Capacity(_) => Ending::Close(CloseCode::Size, "message too big"),
        E::Protocol(error) => {
            debug!(%error, "echo: protocol error");
            Ending::Close(CloseCode::Protocol, "protocol error")
        }
        E::ConnectionClosed | E::AlreadyClosed => Ending::Done,
        other => {
            debug!(error = %other, "echo: websocket ended");
            Ending::Done
        }
    }
}

/// `{"instance", "method", "path", "query", "remote", "version", "headers": {name: value | [values]}}`.
fn request_info<B>(request: &Request<B>, peer: SocketAddr, instance: &str) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for name in request.headers().keys() {
        let values: Vec<serde_json::Value> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned().into())
            .collect();
        let entry = match <[serde_json::Value; 1]>::try_from(values) {
            Ok([single]) => single,
            Err(values) => serde_json::Value::Array(values),
        };
        // `http` stores header names in lower case already.
        headers.insert(name.as_str().to_owned(), entry);
    }
    serde_json::json!({
        "instance": instance,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "remote": peer.to_string(),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The test page with the instance and prefix filled in (HTML-escaped).
fn render_page(config: &EchoConfig) -> String {
    PAGE_TEMPLATE.replace("{{instance}}", &escape_html(&config.instance)).replace(
        "{{prefix}}",
        &if config.prefix.is_empty() { "(none)".to_string() } else { escape_html(&config.prefix) },
    )
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_subprotocol_takes_the_first_token_across_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(first_subprotocol(&headers), None);
        headers.append(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(" , chat.v2 , chat.v1"));
        headers.append(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
        assert_eq!(first_subprotocol(&headers), Some(HeaderValue::from_static("chat.v2")));
    }

    #[test]
    fn request_info_lists_repeated_headers_as_arrays() {
        let request = Request::builder()
            .method("GET")
            .uri("/headers?x=1")
            .header("Host", "example.test")
            .header("X-Forwarded-For", "10.0.0.1")
            .header("X-Multi", "a")
            .header("X-Multi", "b")
            .body(())
            .unwrap();
        let peer: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let info = request_info(&request, peer, "one");
        assert_eq!(info["instance"], "one");
        assert_eq!(info["method"], "GET");
        assert_eq!(info["path"], "/headers");
        assert_eq!(info["query"], "x=1");
        assert_eq!(info["remote"], "127.0.0.1:4242");
        assert_eq!(info["headers"]["host"], "example.test");
        assert_eq!(info["headers"]["x-forwarded-for"], "10.0.0.1");
        assert_eq!(info["headers"]["x-multi"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn page_escapes_instance_and_prefix() {
        let config = EchoConfig { prefix: "<b>".into(), instance: "a&b".into() };
        let page = render_page(&config);
        assert!(page.contains("a&amp;b"));
        assert!(page.contains("&lt;b&gt;"));
        assert!(!page.contains("{{"));
    }

    #[test]
    fn instance_must_be_printable_ascii() {
        let ok = EchoConfig { prefix: String::new(), instance: "pod-1 (node a)".into() };
        assert!(ok.validate().is_ok());
        let bad = EchoConfig { prefix: String::new(), instance: "line\nbreak".into() };
        assert!(matches!(bad.validate(), Err(EchoError::InvalidInstance(_))));
        let non_ascii = EchoConfig { prefix: String::new(), instance: "pod-é".into() };
        assert!(non_ascii.validate().is_err());
    }
}
