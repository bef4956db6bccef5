//! Generated certificates (ECDSA P-256): the self-signed default certificate served when no
//! `--default-tls-secret` or `--tls-cert` is given, and a small certificate authority that
//! issues leaf certificates (`demo --tls` writes its CA so a client can trust it; tests make
//! one per test).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::material::{self, CertEntry, CertError, CertSource};

/// Common name of the generated default certificate.
pub const DEFAULT_COMMON_NAME: &str = "wsingress default certificate";
/// The one DNS name of the generated default certificate (`.local`: never a real site).
pub const DEFAULT_DNS_NAME: &str = "wsingress.local";
/// Lifetime of the generated default certificate (it is generated again at every start).
pub const DEFAULT_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the generated certificate does not load: {0}")]
    Load(#[from] CertError),
}

/// Validity window, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// From an hour before `now` (clients with a slow clock) to `days` after it.
    pub fn around(now: i64, days: i64) -> Self {
        Self { not_before: now - 3600, not_after: now + days * 86_400 }
    }
}

/// A PEM certificate (chain, leaf first) and its PKCS#8 private key.
#[derive(Debug, Clone)]
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
}

fn params(common_name: &str, hosts: &[&str], validity: Validity) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let secs = |unix: i64| std::time::Duration::from_secs(unix.unsigned_abs());
    p.not_before =
        if validity.not_before >= 0 { epoch + secs(validity.not_before) } else { epoch - secs(validity.not_before) };
    p.not_after =
        if validity.not_after >= 0 { epoch + secs(validity.not_after) } else { epoch - secs(validity.not_after) };
    Ok(p)
}

/// A self-signed leaf certificate for `hosts` (DNS names or IP addresses).
pub fn self_signed(common_name: &str, hosts: &[&str], validity: Validity) -> Result<Generated, GenerateError> {
    let key = KeyPair::generate()?;
    let mut p = params(common_name, hosts, validity)?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.self_signed(&key)?;
    Ok(Generated { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The default certificate generated at start (see the constants above).
pub fn default_certificate(now: i64, provider: &rustls::crypto::CryptoProvider) -> Result<CertEntry, GenerateError> {
    let g = self_signed(DEFAULT_COMMON_NAME, &[DEFAULT_DNS_NAME], Validity::around(now, DEFAULT_DAYS))?;
    Ok(material::load(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), CertSource::SelfSigned, now, provider)?)
}

/// A certificate authority that signs server certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(common_name: &str, validity: Validity) -> Result<Self, GenerateError> {
        let mut p = params(common_name, &[], validity)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ok(Self { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate()?)? })
    }

    /// The CA certificate (PEM), what a client trusts.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, common_name: &str, hosts: &[&str], validity: Validity) -> Result<Generated, GenerateError> {
        let key = KeyPair::generate()?;
        let mut p = params(common_name, hosts, validity)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Generated { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{provider, unix_now};
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn the_default_certificate_is_ecdsa_p256_and_self_signed() {
        let now = unix_now();
        let e = default_certificate(now, &provider()).unwrap();
        assert_eq!(e.info.subject, format!("CN={DEFAULT_COMMON_NAME}"));
        assert_eq!(e.info.issuer, e.info.subject);
        assert_eq!(e.info.dns_names, [DEFAULT_DNS_NAME]);
        assert!(e.info.not_after >= now + (DEFAULT_DAYS - 1) * 86_400);
        assert_eq!(e.key.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        assert_eq!(e.source, CertSource::SelfSigned);
    }

    #[test]
    fn an_authority_issues_leaves_a_client_can_verify() {
        let now = unix_now();
        let ca = Authority::new("test CA", Validity::around(now, 2)).unwrap();
        let leaf = ca.issue("chat", &["chat.example.com", "127.0.0.1"], Validity::around(now, 1)).unwrap();
        let roots = material::ca_roots(ca.cert_pem().as_bytes()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider()).build().unwrap();
        let chain = material::certificates(leaf.cert_pem.as_bytes(), "leaf").unwrap();
        let name = rustls::pki_types::ServerName::try_from("chat.example.com").unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64));
        verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], at).unwrap();
        let other = rustls::pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(verifier.verify_server_cert(&chain[0], &[], &other, &[], at).is_err());
        let e =
            material::load(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), CertSource::SelfSigned, now, &provider())
                .unwrap();
        assert_eq!(e.info.issuer, "CN=test CA");
    }
}
