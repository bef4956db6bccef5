//! One error type for the proxy, classified once at the edge into an HTTP status, a
//! WebSocket close code, an upgrade-result label and an upstream-error reason label.

use http::StatusCode;

use super::http1::HeadError;
use crate::metrics::UpgradeResult;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(#[from] HeadError),
    #[error("no route for this host and path")]
    NoRoute,
    #[error("the pool has no ready endpoint")]
    NoEndpoints,
    #[error("invalid WebSocket upgrade request: {0}")]
    BadUpgrade(&'static str),
    #[error("unsupported Sec-WebSocket-Version (this proxy speaks 13)")]
    VersionMismatch,
    #[error("the proxy is at its connection limit")]
    OverCapacity,
    #[error("origin not allowed on this route")]
    OriginForbidden,
    #[error("route connection limit reached")]
    RouteLimit,
    #[error("too many connections from this client")]
    ClientLimit,
    #[error("this route accepts WebSocket upgrades only")]
    WebSocketOnly,
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("connect to {0} timed out")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("backend did not answer in time")]
    ResponseTimeout,
    #[error("backend handshake invalid: {0}")]
    BadHandshake(&'static str),
    #[error("backend connection failed: {0}")]
    Backend(#[from] hyper::Error),
    /// TLS to the backend failed (`backend-protocol: https`): handshake, verification or
    /// configuration.
    #[error("TLS to {addr} failed: {reason}")]
    BackendTls { addr: std::net::SocketAddr, reason: String },
    /// Plain HTTP to a host served over TLS (`ssl-redirect`): 308 to this location.
    #[error("this host is served over https: {0}")]
    HttpsRedirect(String),
    /// A Gateway API `RequestRedirect` filter: `status` (301/302/...) to `location`.
    #[error("redirected by the route (RequestRedirect) to {location}")]
    Redirect { status: u16, location: String },
    /// A Gateway API `timeouts.request` passed before the backend answered (the 101, or the
    /// response head of plain HTTP).
    #[error("the route's request timeout passed before the backend answered")]
    RequestTimeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoEndpoints | Self::RouteLimit | Self::OverCapacity => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            Self::VersionMismatch => StatusCode::UPGRADE_REQUIRED,
            Self::OriginForbidden => StatusCode::FORBIDDEN,
            Self::ClientLimit => StatusCode::TOO_MANY_REQUESTS,
            Self::WebSocketOnly => StatusCode::UPGRADE_REQUIRED,
            Self::Connect { .. } | Self::BadHandshake(_) | Self::Backend(_) | Self::BackendTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::ConnectTimeout(_) | Self::ResponseTimeout | Self::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::HttpsRedirect(_) => StatusCode::PERMANENT_REDIRECT,
            Self::Redirect { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::FOUND),
        }
    }

    /// The `Location` of a redirect.
    pub fn location(&self) -> Option<&str> {
        match self {
            Self::HttpsRedirect(to) | Self::Redirect { location: to, .. } => Some(to),
            _ => None,
        }
    }

    pub fn upgrade_result(&self) -> UpgradeResult {
        match self {
            Self::NoEndpoints => UpgradeResult::NoEndpoints,
            Self::ConnectTimeout(_) | Self::ResponseTimeout | Self::RequestTimeout => UpgradeResult::Timeout,
            Self::Connect { .. } | Self::BadHandshake(_) | Self::Backend(_) | Self::BackendTls { .. } => {
                UpgradeResult::BackendError
            }
            _ => UpgradeResult::Rejected,
        }
    }

    /// Fields every answer for this error carries besides the status: `Retry-After` for
    /// overload, `Upgrade` on 426 (RFC 9110 §15.5.22), `Sec-WebSocket-Version` on a version
    /// mismatch (RFC 6455 §4.4).
    pub fn extra_fields(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::ClientLimit | Self::RouteLimit | Self::NoEndpoints | Self::OverCapacity => &[("retry-after", "1")],
            Self::WebSocketOnly => &[("upgrade", "websocket")],
            Self::VersionMismatch => &[("upgrade", "websocket"), ("sec-websocket-version", "13")],
            _ => &[],
        }
    }

    /// `reason` label of `wsingress_upstream_errors_total`, for errors that involve a backend.
    pub fn upstream_reason(&self) -> Option<&'static str> {
        match self {
            Self::Connect { source, .. } => Some(match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect_refused",
                _ => "connect_error",
            }),
            Self::ConnectTimeout(_) => Some("connect_timeout"),
            // The route's whole deadline counts as the backend not answering in time.
            Self::ResponseTimeout | Self::RequestTimeout => Some("response_timeout"),
            Self::BadHandshake(_) => Some("bad_handshake"),
            Self::Backend(_) => Some("backend_io"),
            Self::BackendTls { .. } => Some("tls_error"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::NoEndpoints.status(), 503);
        assert_eq!(ProxyError::BadUpgrade("x").status(), 400);
        assert_eq!(ProxyError::ResponseTimeout.status(), 504);
        assert_eq!(ProxyError::ResponseTimeout.upgrade_result(), UpgradeResult::Timeout);
        let refused = ProxyError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(refused.status(), 502);
        assert_eq!(refused.upstream_reason(), Some("connect_refused"));
        assert_eq!(ProxyError::OriginForbidden.upstream_reason(), None);
        assert_eq!(ProxyError::RequestTimeout.status(), 504);
        let moved = ProxyError::Redirect { status: 301, location: "https://a.example/".into() };
        assert_eq!(moved.status(), 301);
        assert_eq!(moved.location(), Some("https://a.example/"));
    }
}
