//! TLS: certificates by SNI ([`CertTable`], published with the route table through
//! [`CertHandle`]), PEM parsing and checks ([`material`]), the rustls server configuration
//! and its certificate resolver ([`server`]), backend client configurations ([`client`]),
//! generated certificates ([`generate`]) and [`TlsConn`], one TLS session over a TCP socket
//! driven the way the relay drives plain sockets.
//!
//! **Crypto provider.** `ring`, which kube already brings in (rustls with `ring` builds with
//! no C toolchain beyond `cc`). rustls' default provider, `aws-lc-rs`, needs `cmake` from
//! Debian to build. To compare them in the TLS benchmark: install `cmake`
//! (`scripts/install-tools.sh` would add it), build with rustls' `aws_lc_rs` feature and return
//! `rustls::crypto::aws_lc_rs::default_provider()` from [`provider`], then run the same
//! handshake and 64 KiB stream modes with both binaries in one run. Only this function names
//! the provider.
//!
//! Imports: `routes` (plain data such as [`crate::routes::BackendTls`]) and rustls; nothing
//! from `proxy/`, `source/` or `translate/`.

pub mod client;
pub mod conn;
pub mod generate;
pub mod material;
pub mod server;
pub mod table;

use std::sync::Arc;

pub use conn::{Accepted, TlsConn, TlsError};
pub use material::{CertEntry, CertError, CertInfo, CertSource};
pub use table::{CertHandle, CertTable, CertView, HostCertView, TlsView};

/// The only ALPN protocol offered or accepted: WebSocket over HTTP/2 (RFC 8441) is not
/// implemented, so `h2` is never negotiated.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider every TLS configuration of the process uses (see the module docs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Seconds since the Unix epoch, for expiry checks (callers pass it in so pure code stays pure).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2027-03-01T12:00:00Z` for a Unix timestamp (UTC; proleptic Gregorian calendar).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
