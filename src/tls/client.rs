//! Client configurations for TLS to backends (`wsingress.io/backend-protocol: https`): one
//! per CA bundle (cached by content, so a reload that keeps the same `ca.crt` keeps the same
//! configuration and its session cache), one for the system roots, and the explicit
//! no-verification opt-out. ALPN `http/1.1` only; SNI is the route's server name.
//!
//! **System roots: `rustls-native-certs`**, not `webpki-roots`. The image is distroless
//! `cc-debian12`, which ships Debian's `ca-certificates` bundle; reading the OS store means
//! operators update roots with the base image, or point `SSL_CERT_FILE`/`SSL_CERT_DIR` at a
//! mounted corporate bundle, without a rebuild. `webpki-roots` would compile Mozilla's list
//! into the binary and could only change with a new release. The crate is already in the
//! dependency tree through kube. The store is read once, when [`BackendConfigs`] is built.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::material::{self, CertError};
use crate::routes::{BackendTls, BackendVerify};

/// Configurations kept per distinct CA bundle; more are built again on demand.
const CA_CACHE_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    #[error("backend TLS server name `{0}` is not a DNS name or IP address")]
    ServerName(String),
    #[error("CA bundle {id}: {source}")]
    Ca {
        id: String,
        #[source]
        source: CertError,
    },
    #[error("no system trust anchors were found (install ca-certificates or set SSL_CERT_FILE)")]
    NoSystemRoots,
    #[error("building the TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A CA bundle (compared in full on a hash hit) and its configuration.
type CachedCa = (Vec<u8>, Arc<ClientConfig>);

/// The backend client configurations of the process.
#[derive(Debug)]
pub struct BackendConfigs {
    provider: Arc<CryptoProvider>,
    system: Option<Arc<ClientConfig>>,
    insecure: Arc<ClientConfig>,
    by_ca: Mutex<HashMap<u64, CachedCa>>,
    /// Routes whose `backend-tls-verify: "false"` was logged already.
    warned: Mutex<HashSet<String>>,
}

impl BackendConfigs {
    /// Read the system trust store (once) and build the fixed configurations.
    pub fn new() -> Result<Self, BackendTlsError> {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the system trust store");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system trust anchors for backend TLS");
        Self::with_system_roots(roots)
    }

    /// With these anchors as the "system" roots (tests, embedding).
    pub fn with_system_roots(roots: RootCertStore) -> Result<Self, BackendTlsError> {
        let provider = super::provider();
        let system = if roots.is_empty() { None } else { Some(build(&provider, roots)?) };
        let mut insecure = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider.clone())))
            .with_no_client_auth();
        insecure.alpn_protocols = vec![super::ALPN_HTTP1.to_vec()];
        Ok(Self {
            provider,
            system,
            insecure: Arc::new(insecure),
            by_ca: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// The configuration for `tls` on `route` (logs the verification opt-out once per route).
    pub fn get(&self, route: &str, tls: &BackendTls) -> Result<Arc<ClientConfig>, BackendTlsError> {
        match &tls.verify {
            BackendVerify::SystemRoots => self.system.clone().ok_or(BackendTlsError::NoSystemRoots),
            BackendVerify::Off => {
                let first = self.warned.lock().unwrap_or_else(|p| p.into_inner()).insert(route.to_string());
                if first {
                    tracing::warn!(
                        route,
                        "backend TLS certificate verification is off for this route (wsingress.io/backend-tls-verify: \"false\")"
                    );
                }
                Ok(self.insecure.clone())
            }
            BackendVerify::Ca(ca) => {
                let key = {
                    let mut h = std::hash::DefaultHasher::new();
                    ca.pem.hash(&mut h);
                    h.finish()
                };
                let mut cache = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((pem, config)) = cache.get(&key)
                    && *pem == ca.pem
                {
                    return Ok(config.clone());
                }
                let roots =
                    material::ca_roots(&ca.pem).map_err(|source| BackendTlsError::Ca { id: ca.id.clone(), source })?;
                let config = build(&self.provider, roots)?;
                if cache.len() >= CA_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (ca.pem.clone(), config.clone()));
                Ok(config)
            }
        }
    }
}

/// The SNI / verification name of `tls`.
pub fn server_name(tls: &BackendTls) -> Result<ServerName<'static>, BackendTlsError> {
    ServerName::try_from(tls.server_name.clone()).map_err(|_| BackendTlsError::ServerName(tls.server_name.clone()))
}

fn build(provider: &Arc<CryptoProvider>, roots: RootCertStore) -> Result<Arc<ClientConfig>, BackendTlsError> {
    let mut c = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![super::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(c))
}

/// `backend-tls-verify: "false"`: any certificate is accepted, but the handshake signatures
/// are still checked (the peer must hold the key of the certificate it sent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::CaBundle;
    use crate::tls::generate::{Authority, Validity};

    fn ca(id: &str, pem: &str) -> BackendTls {
        BackendTls {
            server_name: "chat.default.svc".into(),
            verify: BackendVerify::Ca(Arc::new(CaBundle { id: id.into(), pem: pem.as_bytes().to_vec() })),
        }
    }

    #[test]
    fn configs_are_cached_by_ca_content_and_speak_http1() {
        let c = BackendConfigs::with_system_roots(RootCertStore::empty()).unwrap();
        let a = Authority::new("a", Validity::around(crate::tls::unix_now(), 1)).unwrap().cert_pem();
        let b = Authority::new("b", Validity::around(crate::tls::unix_now(), 1)).unwrap().cert_pem();
        let first = c.get("r", &ca("ns/a", &a)).unwrap();
        assert!(Arc::ptr_eq(&first, &c.get("r", &ca("ns/renamed", &a)).unwrap()));
        assert!(!Arc::ptr_eq(&first, &c.get("r", &ca("ns/b", &b)).unwrap()));
        assert_eq!(first.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let err = c.get("r", &ca("ns/bad", "not pem")).unwrap_err().to_string();
        assert!(err.contains("ns/bad") && err.contains("CERTIFICATE"), "{err}");
        assert!(matches!(
            c.get("r", &BackendTls { server_name: "x".into(), verify: BackendVerify::SystemRoots }),
            Err(BackendTlsError::NoSystemRoots)
        ));
        let off = BackendTls { server_name: "x".into(), verify: BackendVerify::Off };
        assert!(Arc::ptr_eq(&c.get("r", &off).unwrap(), &c.get("r2", &off).unwrap()));
        assert!(server_name(&off).is_ok());
        assert!(server_name(&BackendTls { server_name: "bad name!".into(), verify: BackendVerify::Off }).is_err());
    }
}
