//! `wsingress client`: a small WebSocket client for probes, `helm test` and the kind suite.
//! Each connection sends the `--send` messages, checks the replies against `--expect`, and
//! closes with 1000; the run succeeds only when every connection met every expectation.
//! `wss://` uses rustls with the `ring` provider and the `--ca` file (or the system roots).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::header::{HOST, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// Pause between two attempts while `--retry-for` has time left.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What a client run does, validated (see [`ClientPlan::new`]).
#[derive(Debug, Clone)]
pub struct ClientPlan {
    pub url: Uri,
    pub tls: bool,
    /// Where the TCP connection goes (from the URL).
    pub authority: String,
    /// The Host header and, for wss, the TLS server name.
    pub host: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub send: Vec<String>,
    pub expect: Vec<String>,
    pub count: u32,
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
    pub retry_for: Duration,
}

/// Why a run failed. [`ClientError::Usage`] is a mistake in the flags (nothing was sent);
/// every other variant is something the server (or the network) did.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {name}: {source}")]
    Tls { name: String, source: std::io::Error },
    #[error("the server answered the upgrade with HTTP {status}{}", body_hint(.body))]
    Refused { status: StatusCode, body: String },
    #[error("WebSocket handshake: {0}")]
    Handshake(tungstenite::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("reply {index}: got {got:?}, want {want:?}")]
    Mismatch { index: usize, want: String, got: String },
    #[error("reply {index}: got a binary message of {len} bytes, want text {want:?}")]
    Binary { index: usize, want: String, len: usize },
    #[error("reply {index}: the server closed the connection ({close}) before sending it")]
    Closed { index: usize, close: String },
    #[error("WebSocket: {0}")]
    Protocol(tungstenite::Error),
}

fn body_hint(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() { String::new() } else { format!(": {}", body.chars().take(200).collect::<String>()) }
}

impl ClientError {
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }
}

/// One successful exchange, for the report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The `x-echo-instance` header of the 101, when the server sent one.
    pub instance: Option<String>,
    pub replies: Vec<String>,
}

impl ClientPlan {
    /// Check every flag before anything is sent: the URL (ws/wss with a host), `K:V` headers,
    /// a host that is a valid header value (and TLS name), `--ca` only with wss and readable.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        host: Option<&str>,
        headers: &[String],
        send: &[String],
        expect: &[String],
        count: u32,
        ca: Option<&Path>,
        timeout: Duration,
        retry_for: Duration,
    ) -> Result<Self, ClientError> {
        let usage = |m: String| ClientError::Usage(m);
        let uri: Uri = url.parse().map_err(|e| usage(format!("URL {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(usage(format!("URL {url:?}: the scheme must be ws:// or wss://"))),
        };
        let url_host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| usage(format!("URL {url:?} has no host")))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        // `Uri::host` keeps an IPv6 address's brackets, so this is a valid socket address either way.
        let authority = format!("{url_host}:{port}");
        if let Some(h) = host
            && (h.is_empty() || HeaderValue::from_str(h).is_err() || h.contains(char::is_whitespace))
        {
            return Err(usage(format!("--host {h:?} is not a valid Host header")));
        }
        let mut parsed = Vec::new();
        for header in headers {
            let (name, value) =
                header.split_once(':').ok_or_else(|| usage(format!("--header {header:?}: want NAME:VALUE")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| usage(format!("--header {header:?}: {:?} is not a header name", name.trim())))?;
            if name == HOST {
                return Err(usage("--header Host:... : use --host".to_string()));
            }
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| usage(format!("--header {header:?}: the value is not a valid header value")))?;
            parsed.push((name, value));
        }
        if count == 0 {
            return Err(usage("--count must be at least 1".to_string()));
        }
        if timeout.is_zero() {
            return Err(usage("--timeout must be more than 0".to_string()));
        }
        if let Some(ca) = ca {
            if !tls {
                return Err(usage(format!("--ca {} needs a wss:// URL", ca.display())));
            }
            load_ca(ca)?;
        }
        Ok(Self {
            url: uri,
            tls,
            authority,
            host: host.map(str::to_string),
            headers: parsed,
            send: send.to_vec(),
            expect: expect.to_vec(),
            count,
            ca: ca.map(Path::to_path_buf),
            timeout,
            retry_for,
        })
    }

    /// The name the TLS certificate must carry: `--host` (without a port) or the URL's host.
    fn server_name(&self) -> Result<ServerName<'static>, ClientError> {
        let name = match &self.host {
            Some(h) => strip_port(h).to_string(),
            None => self.url.host().unwrap_or_default().trim_matches(['[', ']']).to_string(),
        };
        ServerName::try_from(name.clone()).map_err(|_| ClientError::Usage(format!("{name:?} is not a TLS server name")))
    }

    fn request(&self) -> Result<Request, ClientError> {
        let mut request = self.url.clone().into_client_request().map_err(ClientError::Handshake)?;
        let headers = request.headers_mut();
        if let Some(host) = &self.host {
            let value = HeaderValue::from_str(host).map_err(|_| ClientError::Usage(format!("--host {host:?}")))?;
            headers.insert(HOST, value);
        }
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        Ok(request)
    }
}

/// `host` or `host:port` or `[v6]:port` → the host part.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The certificates of a PEM file (at least one).
fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let usage = |m: String| ClientError::Usage(m);
    let bytes = std::fs::read(path).map_err(|e| usage(format!("--ca {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(format!("--ca {}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(usage(format!("--ca {}: no certificate in the file", path.display())));
    }
    Ok(certs)
}

fn tls_config(plan: &ClientPlan) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    match &plan.ca {
        Some(ca) => {
            for cert in load_ca(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Usage(format!("--ca {}: unusable certificate: {e}", ca.display())))?;
            }
        }
        None => {
            // No --ca: the system's roots (the image carries Debian's CA bundle).
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Usage(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // WebSocket over HTTP/1.1 only (RFC 6455 §4.1); never h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Run the plan: `count` exchanges, each retried while `retry_for` has time left. Every line
/// of progress goes to `log`; the result is the exchanges, or the last failure.
pub async fn run(plan: &ClientPlan, mut log: impl FnMut(&str)) -> Result<Vec<Exchange>, ClientError> {
    let tls = if plan.tls { Some(tls_config(plan)?) } else { None };
    let deadline = Instant::now() + plan.retry_for;
    let mut done = Vec::new();
    for n in 1..=plan.count {
        loop {
            let attempt = tokio::time::timeout(plan.timeout, exchange(plan, tls.clone())).await;
            match attempt.unwrap_or(Err(ClientError::Timeout(plan.timeout))) {
                Ok(ex) => {
                    let by = ex.instance.as_deref().map(|i| format!(" (x-echo-instance: {i})")).unwrap_or_default();
                    log(&format!("ok {n}/{}: {}{by}: {} replies as expected", plan.count, plan.url, ex.replies.len()));
                    done.push(ex);
                    break;
                }
                Err(e) if e.is_usage() || Instant::now() + RETRY_PAUSE > deadline => return Err(e),
                Err(e) => {
                    log(&format!("not yet ({n}/{}): {e}; retrying", plan.count));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    Ok(done)
}

async fn exchange(plan: &ClientPlan, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Exchange, ClientError> {
    let tcp = TcpStream::connect(&plan.authority)
        .await
        .map_err(|source| ClientError::Connect { addr: plan.authority.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => talk(plan, tcp).await,
        Some(config) => {
            let name = plan.server_name()?;
            let shown = name.to_str().into_owned();
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| ClientError::Tls { name: shown, source })?;
            talk(plan, stream).await
        }
    }
}

async fn talk<S>(plan: &ClientPlan, stream: S) -> Result<Exchange, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws, response) = match tokio_tungstenite::client_async(plan.request()?, stream).await {
        Ok(pair) => pair,
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            return Err(ClientError::Refused { status: response.status(), body });
        }
        Err(e) => return Err(ClientError::Handshake(e)),
    };
    let instance = response.headers().get("x-echo-instance").and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut replies = Vec::new();
    for i in 0..plan.send.len().max(plan.expect.len()) {
        if let Some(text) = plan.send.get(i) {
            ws.send(Message::text(text.as_str())).await.map_err(ClientError::Protocol)?;
        }
        if let Some(want) = plan.expect.get(i) {
            let got = next_text(&mut ws, i + 1, want).await?;
            if &got != want {
                return Err(ClientError::Mismatch { index: i + 1, want: want.clone(), got });
            }
            replies.push(got);
        }
    }
    close(&mut ws).await;
    Ok(Exchange { instance, replies })
}

/// The next data message as text (pings are answered by tungstenite while reading).
async fn next_text<S>(ws: &mut WebSocketStream<S>, index: usize, want: &str) -> Result<String, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(ClientError::Protocol(e)),
            None => return Err(ClientError::Closed { index, close: "TCP closed without a Close frame".to_string() }),
        };
        match message {
            Message::Text(text) => return Ok(text.as_str().to_string()),
            Message::Binary(data) => {
                return Err(ClientError::Binary { index, want: want.to_string(), len: data.len() });
            }
            Message::Close(frame) => {
                let close = match frame {
                    Some(f) => format!("Close {} {:?}", u16::from(f.code), f.reason.as_str()),
                    None => "Close without a code".to_string(),
                };
                return Err(ClientError::Closed { index, close });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Close with 1000 and read until the server's Close (or the end of the stream).
async fn close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    while let Some(Ok(_)) = ws.next().await {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(url: &str, host: Option<&str>, headers: &[&str], ca: Option<&Path>) -> Result<ClientPlan, ClientError> {
        let headers: Vec<String> = headers.iter().map(|s| s.to_string()).collect();
        ClientPlan::new(url, host, &headers, &[], &[], 1, ca, Duration::from_secs(1), Duration::ZERO)
    }

    #[test]
    fn urls_and_flags_are_checked_before_anything_is_sent() {
        let p = plan("ws://127.0.0.1:8080/chat?x=1", None, &[], None).unwrap();
        assert_eq!(p.authority, "127.0.0.1:8080");
        assert!(!p.tls);
        assert_eq!(plan("wss://example.com/", None, &[], None).unwrap().authority, "example.com:443");
        assert_eq!(plan("ws://example.com", None, &[], None).unwrap().authority, "example.com:80");
        assert_eq!(plan("ws://[::1]:9000/", None, &[], None).unwrap().authority, "[::1]:9000");
        for bad in ["http://example.com/", "example.com", "ws:///path", "ws://exa mple/"] {
            assert!(plan(bad, None, &[], None).unwrap_err().is_usage(), "{bad}");
        }
        assert!(plan("ws://a/", Some("bad host"), &[], None).unwrap_err().is_usage());
        assert!(plan("ws://a/", None, &["no-colon"], None).unwrap_err().is_usage());
        assert!(plan("ws://a/", None, &["bad name: x"], None).unwrap_err().is_usage());
        assert!(plan("ws://a/", None, &["Host: x"], None).unwrap_err().is_usage());
        let p = plan("ws://a/", None, &["X-User: alice", "x-trace:1"], None).unwrap();
        assert_eq!(p.headers[0].0, "x-user");
        assert_eq!(p.headers[0].1, "alice");
        assert_eq!(p.headers[1].1, "1");
        let ca = Path::new("/nonexistent/ca.pem");
        let e = plan("ws://a/", None, &[], Some(ca)).unwrap_err();
        assert!(e.to_string().contains("needs a wss:// URL"), "{e}");
        let e = plan("wss://a/", None, &[], Some(ca)).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let zero = ClientPlan::new("ws://a/", None, &[], &[], &[], 0, None, Duration::from_secs(1), Duration::ZERO);
        assert!(zero.unwrap_err().is_usage());
    }

    #[test]
    fn host_sets_the_header_and_the_tls_name() {
        let p = plan("wss://10.0.0.1:8443/", Some("echo.example.com:8443"), &[], None).unwrap();
        assert_eq!(p.authority, "10.0.0.1:8443");
        assert_eq!(p.server_name().unwrap().to_str(), "echo.example.com");
        let request = p.request().unwrap();
        assert_eq!(request.headers()[HOST], "echo.example.com:8443");
        let p = plan("wss://echo.example.com/", None, &[], None).unwrap();
        assert_eq!(p.server_name().unwrap().to_str(), "echo.example.com");
        assert_eq!(p.request().unwrap().headers()[HOST], "echo.example.com");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a.b"), "a.b");
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_usage_error() {
        let dir = std::env::temp_dir().join(format!("wsingress-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = plan("wss://a/", None, &[], Some(&empty)).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("no certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
