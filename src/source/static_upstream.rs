//! Sidecar mode (`--upstream HOST:PORT[,HOST:PORT...]`): one pool that receives every request.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::routes::{Endpoint, Pool, Route, RouteSettings, RouteTable};

/// Route id and backend label of the static pool.
pub const ROUTE_ID: &str = "static/upstream";
pub const BACKEND: &str = "static:upstream";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream is empty")]
    Empty,
    #[error("--upstream `{0}`: expected HOST:PORT")]
    BadAddress(String),
    #[error("--upstream `{0}`: cannot resolve: {1}")]
    Resolve(String, std::io::Error),
}

/// Parse and resolve `HOST:PORT[,HOST:PORT...]` (names are resolved once, at start).
pub fn parse_upstreams(list: &str) -> Result<Vec<SocketAddr>, UpstreamError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Ok(addr) = item.parse::<SocketAddr>() {
            out.push(addr);
            continue;
        }
        let (host, port) = item.rsplit_once(':').ok_or_else(|| UpstreamError::BadAddress(item.to_string()))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(UpstreamError::BadAddress(item.to_string()));
        }
        let resolved = item.to_socket_addrs().map_err(|e| UpstreamError::Resolve(item.to_string(), e))?;
        out.extend(resolved);
    }
    if out.is_empty() {
        return Err(UpstreamError::Empty);
    }
    Ok(out)
}

/// The table of the static pool.
pub fn table(addrs: &[SocketAddr], settings: RouteSettings) -> RouteTable {
    let endpoints = addrs.iter().map(|&a| Endpoint::new(a, true)).collect();
    RouteTable::single(Route {
        id: ROUTE_ID.to_string(),
        backend: BACKEND.to_string(),
        pool: Pool::new(endpoints),
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_bad_items() {
        let a = parse_upstreams("127.0.0.1:8010, 127.0.0.1:8011").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].port(), 8011);
        assert!(!parse_upstreams("localhost:8010").unwrap().is_empty());
        assert!(matches!(parse_upstreams(""), Err(UpstreamError::Empty)));
        assert!(matches!(parse_upstreams("127.0.0.1"), Err(UpstreamError::BadAddress(_))));
        assert!(matches!(parse_upstreams("host:99999"), Err(UpstreamError::BadAddress(_))));
    }
}
