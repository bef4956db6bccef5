//! Certificates from Kubernetes objects, pure like the rest of `translate`: Ingress
//! `spec.tls` (hosts + `secretName`, a `kubernetes.io/tls` Secret in the Ingress namespace)
//! and `--default-tls-secret` become [`CertTable`] entries; `ca.crt` Secrets become CA bundles
//! for backend verification. The clock (`now`) and the previously published table come in
//! as arguments: an unchanged Secret reuses its parsed certificate, and a Secret that turned
//! bad (missing key, key not matching, unparsable PEM, expired) is reported while its last
//! good certificate — when still valid — keeps serving, else the default does. A deleted
//! Secret is reported too, but its certificate is not kept (the default answers).
//!
//! Semantics: `spec.tls[].hosts` may be exact names or one-label wildcards; an entry without
//! hosts applies to the hosts of the Ingress's rules; an entry without `secretName` leaves
//! its hosts on the default certificate. Two Ingresses naming different Secrets for one host:
//! the older Ingress wins (the same precedence as rules) and the other gets a warning.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;

use super::{ObjectRef, Warning, namespace_of, reasons, valid_host};
use crate::routes::CaBundle;
use crate::tls::material::{self, CertEntry, CertError, CertSource};
use crate::tls::{CertTable, rfc3339};

/// The Secret type `spec.tls` needs.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";

/// TLS settings from the `serve` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsDefaults {
    /// `--default-tls-secret NAMESPACE/NAME`.
    pub default_secret: Option<(String, String)>,
}

/// Parse `NAMESPACE/NAME` (`--default-tls-secret`).
pub fn parse_secret_ref(value: &str) -> Result<(String, String), String> {
    let bad = || format!("`{value}` is not NAMESPACE/NAME (e.g. ingress/default-tls)");
    let (ns, name) = value.trim().split_once('/').ok_or_else(bad)?;
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if dns_label(ns) && dns_label(name) && !ns.contains('.') {
        Ok((ns.to_string(), name.to_string()))
    } else {
        Err(bad())
    }
}

/// Why a Secret gives no certificate or CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("not found")]
    NotFound,
    #[error("has type {0}; spec.tls needs a Secret of type kubernetes.io/tls")]
    WrongType(String),
    #[error("has no `{0}` key")]
    MissingKey(&'static str),
    #[error("{0}")]
    Material(#[from] CertError),
}

/// The bytes of `key` in a Secret: `stringData` (as the API server would merge it) over `data`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes().to_vec());
    }
    secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone())
}

/// The checked certificate of a `kubernetes.io/tls` Secret, valid at `now`. `previous`, when
/// built from the same bytes, is reused instead of parsing again.
pub fn certificate(
    secret: &Secret,
    now: i64,
    previous: Option<&Arc<CertEntry>>,
) -> Result<Arc<CertEntry>, SecretError> {
    let ty = secret.type_.as_deref().unwrap_or("Opaque");
    if ty != TLS_SECRET_TYPE {
        return Err(SecretError::WrongType(ty.to_string()));
    }
    let cert = secret_value(secret, TLS_CERT_KEY).ok_or(SecretError::MissingKey(TLS_CERT_KEY))?;
    let key = secret_value(secret, TLS_KEY_KEY).ok_or(SecretError::MissingKey(TLS_KEY_KEY))?;
    if let Some(p) = previous
        && p.digest == material::digest(&cert, &key)
    {
        if now > p.info.not_after {
            return Err(CertError::Expired { not_after: p.info.not_after }.into());
        }
        return Ok(p.clone());
    }
    let source = CertSource::secret(namespace_of(&secret.metadata), secret.metadata.name.as_deref().unwrap_or(""));
    Ok(Arc::new(material::load(&cert, &key, source, now, &crate::tls::provider())?))
}

/// The CA bundle (`ca.crt`) of a Secret of any type, checked to hold certificates.
pub fn ca_bundle(secret: &Secret) -> Result<CaBundle, SecretError> {
    let pem = secret_value(secret, CA_KEY).ok_or(SecretError::MissingKey(CA_KEY))?;
    material::ca_roots(&pem)?;
    let id = format!("{}/{}", namespace_of(&secret.metadata), secret.metadata.name.as_deref().unwrap_or(""));
    Ok(CaBundle { id, pem })
}

/// Secrets by (namespace, name).
pub(super) type SecretIndex<'a> = BTreeMap<(&'a str, &'a str), &'a Secret>;

pub(super) fn index<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> SecretIndex<'a> {
    let mut out = BTreeMap::new();
    for s in secrets {
        out.entry((namespace_of(&s.metadata), s.metadata.name.as_deref().unwrap_or(""))).or_insert(s);
    }
    out
}

/// Builds the certificate table of one translation.
pub(super) struct Certificates<'a, 'w> {
    secrets: &'a SecretIndex<'a>,
    previous: &'a CertTable,
    now: i64,
    warnings: &'w mut Vec<Warning>,
    /// Each Secret is loaded once per translation.
    loaded: HashMap<(String, String), Result<Arc<CertEntry>, SecretError>>,
    /// host → (the Ingress that claimed it, its Secret).
    claims: BTreeMap<String, (ObjectRef, String)>,
    hosts: Vec<(String, Arc<CertEntry>)>,
}

impl<'a, 'w> Certificates<'a, 'w> {
    pub(super) fn new(
        secrets: &'a SecretIndex<'a>,
        previous: &'a CertTable,
        now: i64,
        warnings: &'w mut Vec<Warning>,
    ) -> Self {
        Self { secrets, previous, now, warnings, loaded: HashMap::new(), claims: BTreeMap::new(), hosts: Vec::new() }
    }

    fn load(&mut self, namespace: &str, name: &str) -> Result<Arc<CertEntry>, SecretError> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(r) = self.loaded.get(&key) {
            return r.clone();
        }
        let source = CertSource::secret(namespace, name);
        let previous = self.previous.by_source(&source);
        let r = match self.secrets.get(&(namespace, name)) {
            None => Err(SecretError::NotFound),
            Some(secret) => certificate(secret, self.now, previous),
        };
        self.loaded.insert(key, r.clone());
        r
    }

    /// The certificate to serve for a bad Secret: its last good one while still valid.
    fn last_good(&self, namespace: &str, name: &str) -> Option<Arc<CertEntry>> {
        self.previous.by_source(&CertSource::secret(namespace, name)).filter(|e| e.info.not_after >= self.now).cloned()
    }

    /// A Secret's certificate, or its last good one, or `None`; problems become a warning on
    /// `object` at `field`.
    fn resolve(&mut self, object: &ObjectRef, field: &str, namespace: &str, name: &str) -> Option<Arc<CertEntry>> {
        match self.load(namespace, name) {
            Ok(e) => Some(e),
            Err(err) => {
                // A deleted Secret is a decision (perhaps a revoked key), not a botched edit:
                // its certificate is not kept.
                let kept = match err {
                    SecretError::NotFound => None,
                    _ => self.last_good(namespace, name),
                };
                let fallback = match &kept {
                    Some(e) => format!(
                        "the last good certificate (serial {}, expires {}) keeps serving",
                        e.info.serial,
                        rfc3339(e.info.not_after)
                    ),
                    None => "the default certificate is served instead".to_string(),
                };
                let reason = match err {
                    SecretError::NotFound => reasons::SECRET_NOT_FOUND,
                    _ => reasons::INVALID_CERTIFICATE,
                };
                self.warnings.push(Warning {
                    object: object.clone(),
                    field: field.to_string(),
                    value: format!("{namespace}/{name}"),
                    reason: format!("Secret {namespace}/{name} {err}; {fallback}"),
                    event_reason: reason,
                });
                kept
            }
        }
    }

    /// The `spec.tls` entries of one served Ingress (call in precedence order: oldest first).
    pub(super) fn ingress(&mut self, ing: &Ingress) {
        let Some(spec) = &ing.spec else { return };
        let Some(entries) = spec.tls.as_deref() else { return };
        let object = ObjectRef::new("Ingress", &ing.metadata);
        let namespace = namespace_of(&ing.metadata);
        let rule_hosts: Vec<String> =
            spec.rules.iter().flatten().filter_map(|r| r.host.clone()).filter(|h| !h.is_empty()).collect();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("spec.tls[{i}]");
            let hosts = match entry.hosts.as_deref() {
                Some(h) if !h.is_empty() => h.to_vec(),
                _ => rule_hosts.clone(),
            };
            let Some(secret) = entry.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                self.warnings.push(Warning {
                    object: object.clone(),
                    field: format!("{field}.secretName"),
                    value: String::new(),
                    reason: "no secretName: these hosts are served with the default certificate".into(),
                    event_reason: reasons::INVALID_CERTIFICATE,
                });
                continue;
            };
            let Some(cert) = self.resolve(&object, &format!("{field}.secretName"), namespace, secret) else {
                continue;
            };
            let fields: Vec<String> = (0..hosts.len()).map(|j| format!("{field}.hosts[{j}]")).collect();
            self.claim_hosts(&object, namespace, secret, &cert, &hosts, &fields);
        }
    }

    /// The certificate Secret of an HTTPS listener of a Gateway (`object`), for the
    /// listener's hostname, or (no hostname) the DNS names the certificate carries. Hosts an
    /// Ingress or an earlier listener already has keep their certificate (a warning says so).
    pub(super) fn listener(
        &mut self,
        object: &ObjectRef,
        field: &str,
        namespace: &str,
        secret: &str,
        hostname: Option<&str>,
    ) {
        let Some(cert) = self.resolve(object, field, namespace, secret) else { return };
        let hosts: Vec<String> = match hostname {
            Some(h) => vec![h.to_string()],
            None => cert.info.dns_names.clone(),
        };
        let fields: Vec<String> = hosts.iter().map(|_| field.to_string()).collect();
        self.claim_hosts(object, namespace, secret, &cert, &hosts, &fields);
    }

    /// Give `hosts` (each reported at its field) the certificate of Secret `namespace/secret`,
    /// unless an earlier object claimed the host.
    fn claim_hosts(
        &mut self,
        object: &ObjectRef,
        namespace: &str,
        secret: &str,
        cert: &Arc<CertEntry>,
        hosts: &[String],
        fields: &[String],
    ) {
        let object = object.clone();
        for (host, host_field) in hosts.iter().zip(fields) {
            let host_field = host_field.as_str();
            let name = material::normalize_host(host);
            if !valid_host(&name) {
                self.warn(
                    &object,
                    host_field,
                    host,
                    "not a host name (e.g. chat.example.com or *.example.com); ignored",
                    reasons::INVALID_RULE,
                );
                continue;
            }
            if let Some((owner, owner_secret)) = self.claims.get(&name) {
                if owner_secret != secret || owner != &object {
                    let reason = format!(
                        "{owner} already gives host {name} the certificate of Secret {}/{owner_secret} (older, or first by namespace/name); this entry is ignored for it",
                        owner.namespace
                    );
                    self.warn(&object, host_field, host, &reason, reasons::CERTIFICATE_CONFLICT);
                }
                continue;
            }
            if !cert.info.covers(&name) {
                let reason = format!(
                    "the certificate of Secret {namespace}/{secret} does not name {name} (its DNS names: {}); clients will reject it",
                    if cert.info.dns_names.is_empty() { "none".to_string() } else { cert.info.dns_names.join(", ") }
                );
                self.warn(&object, host_field, host, &reason, reasons::INVALID_CERTIFICATE);
            }
            self.claims.insert(name.clone(), (object.clone(), secret.to_string()));
            self.hosts.push((name, cert.clone()));
        }
    }

    fn warn(&mut self, object: &ObjectRef, field: &str, value: &str, reason: &str, event_reason: &'static str) {
        self.warnings.push(Warning {
            object: object.clone(),
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
            event_reason,
        });
    }

    /// The table, with `--default-tls-secret` resolved.
    pub(super) fn finish(mut self, defaults: &TlsDefaults) -> CertTable {
        let default = defaults.default_secret.as_ref().and_then(|(ns, name)| {
            let object = ObjectRef { kind: "Secret".into(), namespace: ns.clone(), name: name.clone() };
            self.resolve(&object, "--default-tls-secret", ns, name)
        });
        CertTable::new(self.hosts, default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::BackendVerify;
    use crate::tls::generate::{Authority, Validity};
    use crate::tls::unix_now;
    use crate::translate::{ClusterSnapshot, Defaults, translate_all};
    use k8s_openapi::ByteString;

    struct World {
        ca: Authority,
        now: i64,
    }

    impl World {
        fn new() -> Self {
            let now = unix_now();
            Self { ca: Authority::new("test CA", Validity::around(now, 2)).unwrap(), now }
        }

        fn tls_secret(&self, ns: &str, name: &str, hosts: &[&str], validity: Validity) -> Secret {
            let g = self.ca.issue(name, hosts, validity).unwrap();
            let mut s = secret(ns, name, Some(TLS_SECRET_TYPE));
            // One through `data` (base64 on the wire), one through `stringData`.
            s.data = Some([(TLS_CERT_KEY.to_string(), ByteString(g.cert_pem.into_bytes()))].into());
            s.string_data = Some([(TLS_KEY_KEY.to_string(), g.key_pem)].into());
            s
        }

        fn good(&self, ns: &str, name: &str, hosts: &[&str]) -> Secret {
            self.tls_secret(ns, name, hosts, Validity::around(self.now, 1))
        }
    }

    fn secret(ns: &str, name: &str, ty: Option<&str>) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.type_ = ty.map(str::to_string);
        s
    }

    fn ingress(yaml: &str) -> Ingress {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn run(
        ingresses: Vec<Ingress>,
        secrets: &[Secret],
        defaults: &TlsDefaults,
        previous: &CertTable,
        now: i64,
    ) -> (CertTable, Vec<Warning>) {
        let snapshot =
            ClusterSnapshot { ingresses: ingresses.into_iter().map(Arc::new).collect(), ..Default::default() };
        let (_, certs, warnings) = translate_all(&snapshot, secrets, &Defaults::default(), defaults, previous, now);
        (certs, warnings.into_iter().filter(|w| w.event_reason != reasons::SERVICE_NOT_FOUND).collect())
    }

    /// An HTTPS listener of a Gateway puts its certificateRefs into the same table: for its
    /// hostname, or (none) for the certificate's own names; another namespace's Secret only
    /// with a ReferenceGrant.
    #[test]
    fn gateway_https_listeners_serve_their_certificates() {
        let w = World::new();
        let secrets =
            [w.good("prod", "gw-cert", &["secure.example.com"]), w.good("certs", "any", &["*.wild.example.com"])];
        let snapshot = |grant: bool| {
            let mut yaml = String::from(
                r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: prod}
spec:
  gatewayClassName: wsingress
  listeners:
    - {name: a, protocol: HTTPS, port: 443, hostname: secure.example.com, tls: {certificateRefs: [{name: gw-cert}]}}
    - {name: b, protocol: HTTPS, port: 444, tls: {certificateRefs: [{name: any, namespace: certs}]}}
"#,
            );
            if grant {
                yaml.push_str("---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: certs}\nspec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: prod}], to: [{group: \"\", kind: Secret}]}\n");
            }
            let mut s = ClusterSnapshot {
                gateway_classes: vec![Arc::new(
                    serde_yaml::from_str(
                        "metadata: {name: wsingress}\nspec: {controllerName: wsingress.io/gateway-controller}",
                    )
                    .unwrap(),
                )],
                ..Default::default()
            };
            for doc in yaml.split("---") {
                let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
                match v["kind"].as_str() {
                    Some("Gateway") => s.gateways.push(Arc::new(serde_yaml::from_value(v).unwrap())),
                    Some("ReferenceGrant") => s.reference_grants.push(Arc::new(serde_yaml::from_value(v).unwrap())),
                    _ => {}
                }
            }
            s
        };
        for grant in [false, true] {
            let s = snapshot(grant);
            let (_, certs, _) = translate_all(
                &s,
                &secrets,
                &Defaults::default(),
                &TlsDefaults::default(),
                &CertTable::default(),
                w.now,
            );
            assert!(certs.has_host("secure.example.com"), "grant {grant}");
            assert_eq!(certs.has_host("x.wild.example.com"), grant, "a cross-namespace Secret needs a ReferenceGrant");
        }
    }

    const CHAT: &str = r#"
metadata: {name: chat, namespace: prod, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  ingressClassName: wsingress
  tls:
    - {hosts: [chat.example.com, "*.chat.example.com"], secretName: chat-tls}
    - {secretName: rules-tls}
  rules:
    - host: rules.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: chat, port: {number: 80}}}}]}
"#;

    fn source(t: &CertTable, host: &str) -> Option<String> {
        t.lookup(host).map(|e| e.source.label())
    }

    #[test]
    fn spec_tls_maps_hosts_wildcards_and_rule_hosts_to_their_secrets() {
        let w = World::new();
        let secrets = [
            w.good("prod", "chat-tls", &["chat.example.com", "*.chat.example.com"]),
            w.good("prod", "rules-tls", &["rules.example.com"]),
            w.good("ingress", "default-tls", &["fallback.example.com"]),
        ];
        let defaults = TlsDefaults { default_secret: Some(("ingress".into(), "default-tls".into())) };
        let (t, warnings) = run(vec![ingress(CHAT)], &secrets, &defaults, &CertTable::default(), w.now);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(source(&t, "chat.example.com").as_deref(), Some("prod/chat-tls"));
        assert_eq!(source(&t, "eu.chat.example.com").as_deref(), Some("prod/chat-tls"));
        assert_eq!(source(&t, "a.eu.chat.example.com"), None);
        assert_eq!(source(&t, "rules.example.com").as_deref(), Some("prod/rules-tls"));
        assert_eq!(t.default_certificate().unwrap().source.label(), "ingress/default-tls");
        assert!(t.has_host("chat.example.com:443"));
    }

    #[test]
    fn bad_secrets_are_reported_and_the_last_good_certificate_keeps_serving() {
        let w = World::new();
        let good = w.good("prod", "chat-tls", &["chat.example.com", "*.chat.example.com"]);
        let rules = w.good("prod", "rules-tls", &["rules.example.com"]);
        let (first, warnings) = run(
            vec![ingress(CHAT)],
            &[good.clone(), rules.clone()],
            &TlsDefaults::default(),
            &CertTable::default(),
            w.now,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let serial = first.lookup("chat.example.com").unwrap().info.serial.clone();

        let other = w.good("prod", "x", &["chat.example.com"]);
        let mut no_key = good.clone();
        no_key.string_data = None;
        let mut mismatch = good.clone();
        mismatch.string_data = other.string_data.clone();
        let mut garbled = good.clone();
        garbled.data =
            Some([(TLS_CERT_KEY.to_string(), ByteString(b"-----BEGIN CERTIFICATE-----\n!!!\n".to_vec()))].into());
        let mut opaque = good.clone();
        opaque.type_ = Some("Opaque".into());
        let expired = w.tls_secret(
            "prod",
            "chat-tls",
            &["chat.example.com"],
            Validity { not_before: w.now - 10 * 86_400, not_after: w.now - 86_400 },
        );
        let cases: [(&str, Option<Secret>, &str, &str); 6] = [
            ("missing key", Some(no_key), "has no `tls.key` key", reasons::INVALID_CERTIFICATE),
            ("key mismatch", Some(mismatch), "does not match the certificate", reasons::INVALID_CERTIFICATE),
            ("unparsable", Some(garbled), "not valid PEM", reasons::INVALID_CERTIFICATE),
            ("wrong type", Some(opaque), "has type Opaque", reasons::INVALID_CERTIFICATE),
            ("expired", Some(expired), "expired at", reasons::INVALID_CERTIFICATE),
            ("deleted", None, "not found", reasons::SECRET_NOT_FOUND),
        ];
        for (what, bad, needle, event_reason) in cases {
            let secrets: Vec<Secret> = bad.into_iter().chain([rules.clone()]).collect();
            // With the good table serving: reported, and the same certificate keeps serving.
            let (t, warnings) = run(vec![ingress(CHAT)], &secrets, &TlsDefaults::default(), &first, w.now);
            assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
            let warn = &warnings[0];
            assert_eq!(
                (warn.field.as_str(), warn.value.as_str()),
                ("spec.tls[0].secretName", "prod/chat-tls"),
                "{what}"
            );
            assert_eq!(warn.event_reason, event_reason, "{what}");
            assert!(
                warn.reason.contains("Secret prod/chat-tls") && warn.reason.contains(needle),
                "{what}: {}",
                warn.reason
            );
            if what == "deleted" {
                // Deleting a Secret is deliberate (perhaps a revoked key): the default answers.
                assert!(warn.reason.contains("the default certificate is served"), "{what}: {}", warn.reason);
                assert!(t.lookup("chat.example.com").is_none(), "{what}");
                continue;
            }
            assert!(warn.reason.contains("last good certificate"), "{what}: {}", warn.reason);
            assert_eq!(t.lookup("chat.example.com").unwrap().info.serial, serial, "{what}");
            // From nothing: the default certificate answers for those hosts.
            let (t, warnings) =
                run(vec![ingress(CHAT)], &secrets, &TlsDefaults::default(), &CertTable::default(), w.now);
            assert!(warnings[0].reason.contains("the default certificate is served"), "{what}: {warnings:?}");
            assert!(t.lookup("chat.example.com").is_none(), "{what}");
            assert!(t.lookup("rules.example.com").is_some(), "{what}: other Secrets are untouched");
        }
        // The last good certificate is dropped once it expires too.
        let later = first.lookup("chat.example.com").unwrap().info.not_after + 1;
        let (t, warnings) = run(vec![ingress(CHAT)], &[rules], &TlsDefaults::default(), &first, later);
        assert!(t.lookup("chat.example.com").is_none());
        assert!(warnings.iter().any(|w| w.reason.contains("default certificate is served")), "{warnings:?}");
    }

    #[test]
    fn unchanged_secrets_reuse_their_certificate_and_changed_ones_rotate() {
        let w = World::new();
        let secrets = [
            w.good("prod", "chat-tls", &["chat.example.com", "*.chat.example.com"]),
            w.good("prod", "rules-tls", &["rules.example.com"]),
        ];
        let (first, _) = run(vec![ingress(CHAT)], &secrets, &TlsDefaults::default(), &CertTable::default(), w.now);
        let (second, _) = run(vec![ingress(CHAT)], &secrets, &TlsDefaults::default(), &first, w.now);
        assert!(Arc::ptr_eq(first.lookup("chat.example.com").unwrap(), second.lookup("chat.example.com").unwrap()));
        let rotated = [w.good("prod", "chat-tls", &["chat.example.com", "*.chat.example.com"]), secrets[1].clone()];
        let (third, _) = run(vec![ingress(CHAT)], &rotated, &TlsDefaults::default(), &second, w.now);
        assert_ne!(
            third.lookup("chat.example.com").unwrap().info.serial,
            second.lookup("chat.example.com").unwrap().info.serial
        );
    }

    #[test]
    fn conflicts_uncovered_hosts_and_missing_secret_names_are_reported() {
        let w = World::new();
        let newer = ingress(
            r#"
metadata: {name: newer, namespace: prod, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  ingressClassName: wsingress
  tls:
    - {hosts: [chat.example.com], secretName: other-tls}
    - {hosts: [bad_host!, news.example.com], secretName: other-tls}
    - {hosts: [nosecret.example.com]}
"#,
        );
        let secrets = [
            w.good("prod", "chat-tls", &["chat.example.com", "*.chat.example.com"]),
            w.good("prod", "rules-tls", &["rules.example.com"]),
            w.good("prod", "other-tls", &["chat.example.com"]),
        ];
        let (t, warnings) =
            run(vec![newer, ingress(CHAT)], &secrets, &TlsDefaults::default(), &CertTable::default(), w.now);
        // (`newer` has no rules: that warning is not about TLS.)
        let warnings: Vec<Warning> = warnings.into_iter().filter(|w| w.field.starts_with("spec.tls")).collect();
        let got: Vec<(&str, &str, &str)> =
            warnings.iter().map(|w| (w.object.name.as_str(), w.field.as_str(), w.event_reason)).collect();
        assert_eq!(
            got,
            [
                ("newer", "spec.tls[0].hosts[0]", reasons::CERTIFICATE_CONFLICT),
                ("newer", "spec.tls[1].hosts[0]", reasons::INVALID_RULE),
                ("newer", "spec.tls[1].hosts[1]", reasons::INVALID_CERTIFICATE),
                ("newer", "spec.tls[2].secretName", reasons::INVALID_CERTIFICATE),
            ],
            "{warnings:#?}"
        );
        assert!(warnings[0].reason.contains("Ingress prod/chat"), "{}", warnings[0].reason);
        assert!(warnings[2].reason.contains("does not name news.example.com"), "{}", warnings[2].reason);
        assert_eq!(source(&t, "chat.example.com").as_deref(), Some("prod/chat-tls"));
        assert_eq!(source(&t, "news.example.com").as_deref(), Some("prod/other-tls"), "served, with a warning");
        assert_eq!(source(&t, "nosecret.example.com"), None);
    }

    #[test]
    fn backend_tls_comes_from_annotations_or_the_service_port() {
        let w = World::new();
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: chat
  namespace: prod
  annotations: {wsingress.io/backend-ca-secret: chat-ca}
spec:
  ingressClassName: wsingress
  rules:
    - host: a.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: wss, port: {name: ws}}}}]}
    - host: b.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: plain, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: forced
  namespace: prod
  annotations:
    nginx.ingress.kubernetes.io/backend-protocol: HTTPS
    wsingress.io/backend-tls-verify: "false"
    wsingress.io/backend-tls-server-name: chat.internal
spec:
  ingressClassName: wsingress
  rules:
    - host: c.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: plain, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: missing-ca
  namespace: prod
  annotations: {wsingress.io/backend-protocol: https, wsingress.io/backend-ca-secret: nope}
spec:
  ingressClassName: wsingress
  rules:
    - host: d.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: plain, port: {number: 80}}}}]}
---
apiVersion: v1
kind: Service
metadata: {name: wss, namespace: prod}
spec: {ports: [{name: ws, port: 443, appProtocol: kubernetes.io/wss}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: prod}
spec: {ports: [{port: 80}]}
"#;
        let (snapshot, _) = crate::source::file::parse(text).unwrap();
        let mut ca = secret("prod", "chat-ca", None);
        ca.string_data = Some([(CA_KEY.to_string(), w.ca.cert_pem())].into());
        let (routes, _, warnings) = translate_all(
            &snapshot,
            &[ca],
            &Defaults::default(),
            &TlsDefaults::default(),
            &CertTable::default(),
            w.now,
        );
        let tls_of = |host: &str| routes.find(Some(host), "/").unwrap().settings.backend_tls.clone();
        let a = tls_of("a.example.com").unwrap();
        assert_eq!(a.server_name, "wss.prod.svc");
        assert!(matches!(&a.verify, BackendVerify::Ca(b) if b.id == "prod/chat-ca"));
        assert_eq!(tls_of("b.example.com"), None);
        let c = tls_of("c.example.com").unwrap();
        assert_eq!((c.server_name.as_str(), &c.verify), ("chat.internal", &BackendVerify::Off));
        assert_eq!(tls_of("d.example.com").unwrap().verify, BackendVerify::SystemRoots);
        let ca_warnings: Vec<&Warning> =
            warnings.iter().filter(|w| w.event_reason == reasons::SECRET_NOT_FOUND).collect();
        assert_eq!(ca_warnings.len(), 1, "{warnings:?}");
        assert!(ca_warnings[0].reason.contains("prod/nope") && ca_warnings[0].reason.contains("system roots"));
        // Without Secrets (plain `translate`), nothing is reported about them.
        let (_, warnings) = crate::translate::translate(&snapshot, &Defaults::default());
        assert!(warnings.iter().all(|w| w.event_reason != reasons::SECRET_NOT_FOUND), "{warnings:?}");
    }

    #[test]
    fn the_controllers_cached_translation_gives_the_file_modes_tables_and_follows_ca_changes() {
        use crate::translate::{RouteCache, TlsInputs, translate_all_cached};
        let w = World::new();
        // With resourceVersions, as from an API server, so the route cache reuses routes.
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: chat
  namespace: prod
  resourceVersion: "1"
  uid: u1
  annotations: {wsingress.io/backend-protocol: https, wsingress.io/backend-ca-secret: chat-ca}
spec:
  ingressClassName: wsingress
  tls: [{hosts: [chat.example.com], secretName: chat-tls}]
  rules:
    - host: chat.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: chat, port: {number: 443}}}}]}
    - host: plain.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: chat, port: {number: 443}}}}]}
---
apiVersion: v1
kind: Service
metadata: {name: chat, namespace: prod, resourceVersion: "2", uid: u2}
spec: {ports: [{port: 443}]}
"#;
        let (snapshot, _) = crate::source::file::parse(text).unwrap();
        let mut ca = secret("prod", "chat-ca", Some("Opaque"));
        ca.string_data = Some([(CA_KEY.to_string(), w.ca.cert_pem())].into());
        let secrets = vec![w.good("prod", "chat-tls", &["chat.example.com"]), ca.clone()];
        let defaults = Defaults::default();
        let tls_defaults = TlsDefaults::default();
        let empty = CertTable::default();
        let (file_routes, file_certs, file_warnings) =
            translate_all(&snapshot, &secrets, &defaults, &tls_defaults, &empty, w.now);
        let mut cache = RouteCache::default();
        let controller = |secrets: &[Secret], cache: &mut RouteCache| {
            let inputs =
                TlsInputs { secrets: secrets.iter().collect(), defaults: &tls_defaults, previous: &empty, now: w.now };
            translate_all_cached(&snapshot, &inputs, &defaults, cache)
        };
        for pass in 0..2 {
            let (routes, certs, warnings) = controller(&secrets, &mut cache);
            assert!(crate::source::file::same_certs(&certs, &file_certs), "pass {pass}");
            assert_eq!(warnings, file_warnings, "pass {pass}");
            assert_eq!(routes.routes().count(), file_routes.routes().count());
        }
        let verify = |routes: &crate::routes::RouteTable| {
            routes.find(Some("chat.example.com"), "/").unwrap().settings.backend_tls.clone().unwrap().verify
        };
        let (routes, _, _) = controller(&secrets, &mut cache);
        assert!(matches!(verify(&routes), BackendVerify::Ca(b) if b.pem == w.ca.cert_pem().into_bytes()));
        // The CA Secret's bytes change, nothing else does: the cached route is not reused.
        let other = Authority::new("other CA", Validity::around(w.now, 2)).unwrap();
        let mut changed = ca;
        changed.string_data = Some([(CA_KEY.to_string(), other.cert_pem())].into());
        let (routes, _, _) = controller(&[secrets[0].clone(), changed], &mut cache);
        assert!(matches!(verify(&routes), BackendVerify::Ca(b) if b.pem == other.cert_pem().into_bytes()));
    }

    #[test]
    fn secret_refs_parse() {
        assert_eq!(parse_secret_ref("ingress/default-tls"), Ok(("ingress".into(), "default-tls".into())));
        for bad in ["default-tls", "/x", "x/", "Ns/x", "a/b/c", "a b/c"] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
    }
}
