//! The rustls server configuration: TLS 1.2 and 1.3, ALPN `http/1.1` only (never `h2`), and a
//! certificate resolver that reads the [`CertHandle`] once per handshake, so a rotation
//! changes new handshakes only and never touches an established connection.
//!
//! **Session resumption** is left at rustls' defaults: an in-memory cache of 256 sessions
//! (TLS 1.2 session ids, TLS 1.3 stateful tickets, two sent after each full handshake), no
//! stateless ticket encryption key. A client resuming skips the certificate and the signature;
//! a replica that does not know the session simply does a full handshake.
//!
//! **Which certificate a handshake got.** rustls calls the resolver synchronously from inside
//! the record processing that [`super::TlsConn::accept`] drives, so the resolver leaves its
//! choice in a thread-local slot that `accept` reads right after that call, on the same
//! thread, with no await in between.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::material::CertEntry;
use super::table::{CertHandle, Choice};

/// What the resolver picked for one handshake.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub sni: Option<String>,
    pub entry: Arc<CertEntry>,
    pub choice: Choice,
}

thread_local! {
    static LAST: RefCell<Option<Resolved>> = const { RefCell::new(None) };
}

/// Take what the resolver chose during the last record processing on this thread.
pub(crate) fn take_resolved() -> Option<Resolved> {
    LAST.with(|l| l.borrow_mut().take())
}

/// Resolves the certificate of each handshake from a [`CertHandle`].
#[derive(Debug)]
pub struct Resolver {
    certs: Arc<CertHandle>,
}

impl Resolver {
    pub fn new(certs: Arc<CertHandle>) -> Self {
        Self { certs }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let (entry, choice) = self.certs.resolve(sni);
        let key = entry.key.clone();
        LAST.with(|l| *l.borrow_mut() = Some(Resolved { sni: sni.map(str::to_string), entry, choice }));
        Some(key)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("building the TLS server configuration: {0}")]
pub struct ConfigError(#[from] rustls::Error);

/// The server configuration for the TLS listener (and `echo --tls-cert`).
pub fn config(certs: Arc<CertHandle>) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let mut c = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver::new(certs)));
    c.alpn_protocols = vec![super::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http1_is_offered_and_both_versions_have_suites() {
        let fallback = crate::tls::generate::default_certificate(crate::tls::unix_now(), &crate::tls::provider());
        let c = config(Arc::new(CertHandle::new(Arc::new(fallback.unwrap())))).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let suites = &c.crypto_provider().cipher_suites;
        assert!(suites.iter().any(|s| s.version() == &rustls::version::TLS12));
        assert!(suites.iter().any(|s| s.version() == &rustls::version::TLS13));
    }
}
