//! Certificates by SNI: [`CertTable`] maps exact host names and one-label wildcards
//! (`*.example.com` covers `a.example.com`, not `example.com` nor `a.b.example.com`, as
//! Kubernetes defines Ingress wildcards) to certificates, plus the source's default
//! certificate; it is immutable and published with the route table under the same generation.
//! [`CertHandle`] holds the current table and the fallback certificate (`--tls-cert`, or the
//! generated self-signed one) and resolves one handshake with one atomic load each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::material::{CertEntry, CertInfo, CertSource, normalize_host};

/// The certificates a source configured.
#[derive(Debug, Default)]
pub struct CertTable {
    /// The route table generation this table was published with.
    pub generation: u64,
    exact: HashMap<String, Arc<CertEntry>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertEntry>>,
    default: Option<Arc<CertEntry>>,
    /// Every certificate by source, including ones no host uses (the default Secret).
    by_source: BTreeMap<CertSource, Arc<CertEntry>>,
}

impl CertTable {
    /// A table from `(host, certificate)` pairs (hosts as written: `chat.example.com` or
    /// `*.example.com`; the first pair of a host wins) and the source's default certificate.
    pub fn new(hosts: Vec<(String, Arc<CertEntry>)>, default: Option<Arc<CertEntry>>) -> Self {
        let mut t = Self::default();
        for (host, entry) in hosts {
            let host = normalize_host(&host);
            let slot = match host.strip_prefix("*.") {
                Some(suffix) => t.wildcard.entry(suffix.to_string()),
                None => t.exact.entry(host),
            };
            slot.or_insert_with(|| entry.clone());
            t.by_source.entry(entry.source.clone()).or_insert(entry);
        }
        if let Some(d) = &default {
            t.by_source.entry(d.source.clone()).or_insert_with(|| d.clone());
        }
        t.default = default;
        t
    }

    /// The certificate configured for `sni` (exact name first, then a wildcard for its first
    /// label), not counting the default.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<CertEntry>> {
        let host = normalize_host(sni);
        if let Some(e) = self.exact.get(&host) {
            return Some(e);
        }
        let (label, rest) = host.split_once('.')?;
        if label.is_empty() || label == "*" {
            return None;
        }
        self.wildcard.get(rest)
    }

    /// Whether `host` (a request's `Host`, maybe with a port) has a certificate of its own:
    /// plain HTTP to such a host is redirected to https unless the route says otherwise.
    pub fn has_host(&self, host: &str) -> bool {
        self.lookup(host_name(host)).is_some()
    }

    pub fn default_certificate(&self) -> Option<&Arc<CertEntry>> {
        self.default.as_ref()
    }

    /// The certificate a source last served from `source` (for keeping the last good one).
    pub fn by_source(&self, source: &CertSource) -> Option<&Arc<CertEntry>> {
        self.by_source.get(source)
    }

    /// Every distinct certificate of the table, by source.
    pub fn certificates(&self) -> impl Iterator<Item = &Arc<CertEntry>> {
        self.by_source.values()
    }

    /// `(host pattern, certificate)` for every configured host, sorted by host.
    pub fn hosts(&self) -> Vec<(String, &Arc<CertEntry>)> {
        let mut out: Vec<(String, &Arc<CertEntry>)> = self
            .exact
            .iter()
            .map(|(h, e)| (h.clone(), e))
            .chain(self.wildcard.iter().map(|(s, e)| (format!("*.{s}"), e)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The published certificate table and the fallback certificate. Readers never lock.
#[derive(Debug)]
pub struct CertHandle {
    table: ArcSwap<CertTable>,
    fallback: ArcSwap<CertEntry>,
}

/// How a handshake's certificate was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// The host's own certificate (exact or wildcard).
    Host,
    /// The source's default certificate (`--default-tls-secret`): unknown or no SNI.
    Default,
    /// The fallback (`--tls-cert`, or the generated self-signed one): unknown or no SNI.
    Fallback,
}

impl CertHandle {
    /// An empty table; `fallback` answers every handshake until a source publishes.
    pub fn new(fallback: Arc<CertEntry>) -> Self {
        Self { table: ArcSwap::from_pointee(CertTable::default()), fallback: ArcSwap::new(fallback) }
    }

    pub fn load(&self) -> Arc<CertTable> {
        self.table.load_full()
    }

    /// Swap a source's table in: new handshakes only; open connections keep what they have.
    pub fn publish(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    pub fn fallback(&self) -> Arc<CertEntry> {
        self.fallback.load_full()
    }

    /// Replace the fallback certificate (a reloaded `--tls-cert`).
    pub fn set_fallback(&self, entry: Arc<CertEntry>) {
        self.fallback.store(entry);
    }

    /// The certificate for one handshake: the host's own, else the source's default, else the
    /// fallback.
    pub fn resolve(&self, sni: Option<&str>) -> (Arc<CertEntry>, Choice) {
        let table = self.table.load();
        if let Some(e) = sni.and_then(|s| table.lookup(s)) {
            return (e.clone(), Choice::Host);
        }
        if let Some(d) = &table.default {
            return (d.clone(), Choice::Default);
        }
        (self.fallback.load_full(), Choice::Fallback)
    }

    /// Every certificate in use (table and fallback), for the expiry metric.
    pub fn certificates(&self) -> Vec<Arc<CertEntry>> {
        let table = self.table.load();
        let mut out: Vec<Arc<CertEntry>> = table.certificates().cloned().collect();
        let fallback = self.fallback.load_full();
        if !out.iter().any(|e| e.source == fallback.source) {
            out.push(fallback);
        }
        out
    }

    /// What `/routes` shows: the certificate each of `hosts` gets, and the defaults.
    pub fn view<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> TlsView {
        let table = self.table.load();
        let mut names: Vec<String> = hosts.into_iter().map(normalize_host).collect();
        names.extend(table.hosts().into_iter().map(|(h, _)| h));
        names.sort();
        names.dedup();
        let hosts = names
            .into_iter()
            .map(|host| {
                // A wildcard rule host is answered like any one name under it.
                let probe = host.strip_prefix("*.").map_or(host.clone(), |s| format!("wsingress-probe.{s}"));
                let sni = (!host.is_empty()).then_some(probe.as_str());
                let (entry, choice) = self.resolve(sni);
                HostCertView { host, choice, certificate: CertView::of(&entry) }
            })
            .collect();
        TlsView {
            generation: table.generation,
            hosts,
            default: table.default.as_deref().map(CertView::of),
            fallback: CertView::of(&self.fallback.load()),
        }
    }
}

/// `/routes`' `tls` section.
#[derive(Debug, Serialize)]
pub struct TlsView {
    pub generation: u64,
    pub hosts: Vec<HostCertView>,
    /// `--default-tls-secret`, when the source has it.
    pub default: Option<CertView>,
    /// `--tls-cert` or the generated certificate.
    pub fallback: CertView,
}

#[derive(Debug, Serialize)]
pub struct HostCertView {
    /// As routed (`""` for rules without a host).
    pub host: String,
    pub choice: Choice,
    pub certificate: CertView,
}

#[derive(Debug, Serialize)]
pub struct CertView {
    pub source: CertSource,
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub dns_names: Vec<String>,
}

impl CertView {
    pub fn of(e: &CertEntry) -> Self {
        let CertInfo { serial, subject, issuer, not_before, not_after, dns_names } = e.info.clone();
        Self {
            source: e.source.clone(),
            serial,
            subject,
            issuer,
            not_before: super::rfc3339(not_before),
            not_after: super::rfc3339(not_after),
            dns_names,
        }
    }
}

/// A request's `Host` without its port (`chat.example.com:8080` → `chat.example.com`; an IPv6
/// literal keeps its brackets).
pub fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_drops_only_a_port() {
        assert_eq!(host_name("chat.example.com:8080"), "chat.example.com");
        assert_eq!(host_name("chat.example.com"), "chat.example.com");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("chat:"), "chat:");
    }
    use crate::tls::generate::{self, Validity};
    use crate::tls::{material, provider, unix_now};

    pub(crate) fn entry(source: CertSource, hosts: &[&str]) -> Arc<CertEntry> {
        let now = unix_now();
        let g = generate::self_signed("t", hosts, Validity::around(now, 1)).unwrap();
        Arc::new(material::load(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), source, now, &provider()).unwrap())
    }

    #[test]
    fn exact_names_beat_wildcards_and_wildcards_cover_one_label() {
        let exact = entry(CertSource::secret("a", "exact"), &["chat.example.com"]);
        let wild = entry(CertSource::secret("a", "wild"), &["*.example.com"]);
        let t = CertTable::new(
            vec![("*.example.com".into(), wild.clone()), ("Chat.Example.com".into(), exact.clone())],
            None,
        );
        let src = |sni: &str| t.lookup(sni).map(|e| e.source.label());
        assert_eq!(src("chat.example.com"), Some("a/exact".into()));
        assert_eq!(src("CHAT.example.com."), Some("a/exact".into()));
        assert_eq!(src("news.example.com"), Some("a/wild".into()));
        assert_eq!(src("example.com"), None);
        assert_eq!(src("a.b.example.com"), None);
        assert_eq!(src("*.example.com"), None);
        assert_eq!(src(".example.com"), None);
        assert!(t.has_host("news.example.com:8443") && t.has_host("chat.example.com"));
        assert!(!t.has_host("example.com:443"));
        assert_eq!(t.certificates().count(), 2);
        assert_eq!(
            t.hosts().iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
            ["*.example.com", "chat.example.com"]
        );
    }

    #[test]
    fn the_handle_falls_back_from_host_to_default_to_fallback() {
        let fallback = entry(CertSource::SelfSigned, &["wsingress.local"]);
        let h = CertHandle::new(fallback.clone());
        let (e, c) = h.resolve(Some("chat.example.com"));
        assert!(Arc::ptr_eq(&e, &fallback));
        assert_eq!(c, Choice::Fallback);
        let host = entry(CertSource::secret("a", "chat"), &["chat.example.com"]);
        let default = entry(CertSource::secret("a", "default"), &["x"]);
        h.publish(CertTable::new(vec![("chat.example.com".into(), host.clone())], Some(default.clone())));
        assert_eq!(h.resolve(Some("chat.example.com")).1, Choice::Host);
        let (e, c) = h.resolve(Some("other.example.com"));
        assert!(Arc::ptr_eq(&e, &default) && c == Choice::Default);
        assert_eq!(h.resolve(None).1, Choice::Default);
        assert_eq!(h.certificates().len(), 3);
        let v = h.view(["chat.example.com", "", "*.example.com"]);
        let got: Vec<(&str, Choice)> = v.hosts.iter().map(|x| (x.host.as_str(), x.choice)).collect();
        assert_eq!(
            got,
            [("", Choice::Default), ("*.example.com", Choice::Default), ("chat.example.com", Choice::Host)]
        );
        assert_eq!(v.hosts[2].certificate.source, CertSource::secret("a", "chat"));
        assert!(v.default.is_some());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["hosts"][2]["certificate"]["source"]["kind"], "secret");
        assert!(json["fallback"]["not_after"].as_str().unwrap().ends_with('Z'));
    }
}
