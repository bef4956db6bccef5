//! Certificate material: a PEM certificate chain and private key (PKCS#8, PKCS#1 RSA or SEC1
//! EC) turned into a rustls `CertifiedKey`, with the checks a user can act on — unparsable
//! PEM, no certificate, no key, a key that does not match the certificate, expired or not yet
//! valid — each a typed [`CertError`]. Also CA bundles for backend verification.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use super::rfc3339;

/// Why certificate material cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{what} is not valid PEM: {why}")]
    Pem { what: &'static str, why: String },
    #[error("{0} holds no PEM `CERTIFICATE` block")]
    NoCertificate(&'static str),
    #[error(
        "{0} holds no PEM private key (expected `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1))"
    )]
    NoKey(&'static str),
    #[error("the certificate is not valid X.509: {0}")]
    BadCertificate(String),
    #[error("the private key cannot be used: {0}")]
    UnsupportedKey(String),
    #[error("the private key does not match the certificate (tls.key belongs to another certificate)")]
    KeyMismatch,
    #[error("the certificate expired at {}", rfc3339(*.not_after))]
    Expired { not_after: i64 },
    #[error("the certificate is not valid before {}", rfc3339(*.not_before))]
    NotYetValid { not_before: i64 },
}

/// Where a certificate came from: names it in logs, `/routes` and the expiry metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CertSource {
    /// A `kubernetes.io/tls` Secret.
    Secret { namespace: String, name: String },
    /// `--tls-cert` (the key file is its pair).
    File { path: String },
    /// Generated at start because no default certificate was configured.
    SelfSigned,
}

impl CertSource {
    pub fn secret(namespace: &str, name: &str) -> Self {
        Self::Secret { namespace: namespace.to_string(), name: name.to_string() }
    }

    /// The bounded label of the expiry metric: `namespace/name`, `file:PATH` or `self-signed`.
    pub fn label(&self) -> String {
        match self {
            Self::Secret { namespace, name } => format!("{namespace}/{name}"),
            Self::File { path } => format!("file:{path}"),
            Self::SelfSigned => "self-signed".to_string(),
        }
    }
}

impl std::fmt::Display for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
            Self::File { path } => write!(f, "file {path}"),
            Self::SelfSigned => f.write_str("the generated self-signed certificate"),
        }
    }
}

/// What `/routes` and the logs show of a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Serial number, lower-case hex with colons (as `openssl x509 -serial` groups it).
    pub serial: String,
    /// RFC 4514 subject, e.g. `CN=chat.example.com`.
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names of the subjectAltName extension (lower case).
    pub dns_names: Vec<String>,
}

impl CertInfo {
    /// Whether the certificate names `host` (exact, or by a one-label wildcard SAN). A wildcard
    /// host `*.example.com` is covered only by the SAN `*.example.com`.
    pub fn covers(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.dns_names.iter().any(|san| {
            *san == host
                || match (san.strip_prefix("*."), host.split_once('.')) {
                    (Some(suffix), Some((label, rest))) => label != "*" && rest == suffix,
                    _ => false,
                }
        })
    }
}

/// Lower case, without a trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A certificate ready to serve, with what is known about it.
#[derive(Debug)]
pub struct CertEntry {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    pub source: CertSource,
    /// Hash of the PEM it was built from: an unchanged Secret reuses its entry.
    pub digest: u64,
}

/// Hash of a certificate and key PEM pair.
pub fn digest(cert_pem: &[u8], key_pem: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    cert_pem.hash(&mut h);
    key_pem.hash(&mut h);
    h.finish()
}

/// Parse and check a certificate chain (leaf first) and its private key, valid at `now`
/// (Unix seconds).
pub fn load(
    cert_pem: &[u8],
    key_pem: &[u8],
    source: CertSource,
    now: i64,
    provider: &CryptoProvider,
) -> Result<CertEntry, CertError> {
    let chain = certificates(cert_pem, "the certificate (tls.crt)")?;
    let key = private_key(key_pem)?;
    let info = inspect(&chain[0])?;
    if now < info.not_before {
        return Err(CertError::NotYetValid { not_before: info.not_before });
    }
    if now > info.not_after {
        return Err(CertError::Expired { not_after: info.not_after });
    }
    let signing = provider.key_provider.load_private_key(key).map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // The provider cannot derive this key's public half: the handshake will tell.
        }
        Err(_) => return Err(CertError::KeyMismatch),
    }
    Ok(CertEntry { key: Arc::new(certified), info, source, digest: digest(cert_pem, key_pem) })
}

/// Every `CERTIFICATE` block of `pem`, in order; at least one.
pub fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        out.push(item.map_err(|e| CertError::Pem { what, why: pem_reason(&e) })?);
    }
    if out.is_empty() {
        return Err(CertError::NoCertificate(what));
    }
    Ok(out)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    const WHAT: &str = "the private key (tls.key)";
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(CertError::NoKey(WHAT)),
        Err(e) => Err(CertError::Pem { what: WHAT, why: pem_reason(&e) }),
    }
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            format!("a section has no end line `{}`", String::from_utf8_lossy(end_marker))
        }
        E::IllegalSectionStart { line } => format!("malformed BEGIN line `{}`", String::from_utf8_lossy(line)),
        E::Base64Decode(why) => format!("bad base64 ({why})"),
        other => other.to_string(),
    }
}

/// Serial, names and validity of a DER certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    let validity = cert.validity();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                dns_names.push(normalize_host(dns));
            }
        }
    }
    let serial = cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    Ok(CertInfo {
        serial,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        dns_names,
    })
}

/// Trust anchors for verifying a backend, from a PEM bundle (`ca.crt`).
pub fn ca_roots(pem: &[u8]) -> Result<rustls::RootCertStore, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(pem, "the CA bundle (ca.crt)")? {
        roots.add(der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::{self, Validity};
    use crate::tls::provider;

    const DAY: i64 = 86_400;

    fn pair(hosts: &[&str], validity: Validity) -> (String, String) {
        let g = generate::self_signed("test", hosts, validity).unwrap();
        (g.cert_pem, g.key_pem)
    }

    #[test]
    fn a_good_pair_loads_with_its_details() {
        let now = crate::tls::unix_now();
        let (cert, key) = pair(&["chat.example.com", "*.chat.example.com"], Validity::around(now, 30));
        let e = load(cert.as_bytes(), key.as_bytes(), CertSource::secret("default", "chat"), now, &provider()).unwrap();
        assert_eq!(e.info.subject, "CN=test");
        assert_eq!(e.info.dns_names, ["chat.example.com", "*.chat.example.com"]);
        assert!(e.info.not_after > now + 29 * DAY && e.info.not_before < now);
        assert!(e.info.serial.len() > 10 && e.info.serial.contains(':'));
        assert!(e.info.covers("chat.example.com") && e.info.covers("A.Chat.Example.com."));
        assert!(e.info.covers("*.chat.example.com"));
        assert!(!e.info.covers("a.b.chat.example.com") && !e.info.covers("example.com"));
        assert_eq!(e.source.label(), "default/chat");
    }

    #[test]
    fn each_bad_input_has_its_own_error() {
        let now = crate::tls::unix_now();
        let p = provider();
        let (cert, key) = pair(&["a.example.com"], Validity::around(now, 30));
        let (_, other_key) = pair(&["a.example.com"], Validity::around(now, 30));
        let src = || CertSource::SelfSigned;
        let err = |c: &str, k: &str, at: i64| load(c.as_bytes(), k.as_bytes(), src(), at, &p).err();
        assert_eq!(err(&cert, &other_key, now), Some(CertError::KeyMismatch));
        assert_eq!(err("", &key, now), Some(CertError::NoCertificate("the certificate (tls.crt)")));
        assert_eq!(err(&cert, &cert, now), Some(CertError::NoKey("the private key (tls.key)")));
        let truncated = &cert[..cert.len() - 30];
        assert!(matches!(err(truncated, &key, now), Some(CertError::Pem { .. })), "{:?}", err(truncated, &key, now));
        let garbled = cert.replacen("MII", "M!I", 1);
        assert!(matches!(err(&garbled, &key, now), Some(CertError::Pem { .. })));
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(err(not_der, &key, now), Some(CertError::BadCertificate(_))));
        let info = load(cert.as_bytes(), key.as_bytes(), src(), now, &p).unwrap().info;
        assert_eq!(err(&cert, &key, info.not_after + 1), Some(CertError::Expired { not_after: info.not_after }));
        assert_eq!(err(&cert, &key, info.not_before - 1), Some(CertError::NotYetValid { not_before: info.not_before }));
        let msg = CertError::Expired { not_after: 0 }.to_string();
        assert_eq!(msg, "the certificate expired at 1970-01-01T00:00:00Z");
    }

    /// PKCS#1 RSA and SEC1 EC keys, as `openssl` writes them, load as well as PKCS#8.
    #[test]
    fn pkcs1_and_sec1_keys_load() {
        let dir = std::env::temp_dir().join(format!("wsingress-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output();
            let out = out.expect("the openssl CLI (Debian's openssl package) is needed for this test");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let cases = [
            ("rsa", vec!["genrsa", "-traditional", "-out", "rsa.key", "2048"], "RSA PRIVATE KEY"),
            ("ec", vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key"], "EC PRIVATE KEY"),
        ];
        for (name, genkey, marker) in cases {
            run(&genkey);
            let key_file = format!("{name}.key");
            let crt_file = format!("{name}.crt");
            run(&["req", "-new", "-x509", "-key", &key_file, "-out", &crt_file, "-days", "2", "-subj", "/CN=legacy"]);
            let key = std::fs::read(dir.join(&key_file)).unwrap();
            assert!(String::from_utf8_lossy(&key).contains(marker), "{name}: not a {marker}");
            let cert = std::fs::read(dir.join(&crt_file)).unwrap();
            let e = load(&cert, &key, CertSource::SelfSigned, crate::tls::unix_now(), &provider())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(e.info.subject, "CN=legacy");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ca_bundles_need_a_certificate() {
        let (cert, _) = pair(&["ca"], Validity::around(crate::tls::unix_now(), 1));
        assert_eq!(ca_roots(format!("{cert}{cert}").as_bytes()).unwrap().len(), 2);
        assert!(matches!(ca_roots(b"nothing here"), Err(CertError::NoCertificate(_))));
    }
}
