//! What a Gateway API rule adds to a route, as plain data: request conditions (method,
//! headers, query parameters), the weighted choice between Services, the filters
//! (request/response header edits, redirect, URL rewrite) and `timeouts.request`.
//! Ingress routes carry none of it (`RouteSettings::gateway` is `None`), so they pay nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Route;

/// What a request offers to [`RequestConditions`]: its method, header values and query.
pub trait RequestFacts {
    fn method(&self) -> &str;
    /// Whether a field `name` (lower-case) has exactly `value` (one of its values).
    fn has_header(&self, name: &str, value: &str) -> bool;
    /// The query string (after `?`, without it), if any.
    fn query(&self) -> Option<&str>;
    /// The first value of field `name` (lower-case), if any (hash keys, the origin check).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// Facts of no request: only unconditioned rules match (lookups that know no more).
pub struct NoFacts;

impl RequestFacts for NoFacts {
    fn method(&self) -> &str {
        ""
    }
    fn has_header(&self, _: &str, _: &str) -> bool {
        false
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

impl<B> RequestFacts for http::Request<B> {
    fn method(&self) -> &str {
        self.method().as_str()
    }
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.headers().get_all(name).iter().any(|v| v.as_bytes() == value.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        self.uri().query()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().get(name).map(http::HeaderValue::as_bytes)
    }
}

/// A Gateway API match beyond host and path: all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestConditions {
    /// Exact method (`GET`, ...).
    pub method: Option<String>,
    /// Lower-case name, exact value.
    pub headers: Vec<(String, String)>,
    /// Exact name and value of a query parameter (as sent, not percent-decoded).
    pub query: Vec<(String, String)>,
}

impl RequestConditions {
    pub fn is_empty(&self) -> bool {
        self.method.is_none() && self.headers.is_empty() && self.query.is_empty()
    }

    pub fn matches(&self, req: &(impl RequestFacts + ?Sized)) -> bool {
        self.method.as_deref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|(n, v)| req.has_header(n, v))
            && self.query.iter().all(|(n, v)| {
                // The first occurrence of a parameter is the one matched (as the spec suggests).
                req.query()
                    .and_then(|q| q.split('&').map(|p| p.split_once('=').unwrap_or((p, ""))).find(|(k, _)| k == n))
                    .is_some_and(|(_, value)| value == v)
            })
    }

    /// The precedence counts the spec orders by after the path: method, headers, query.
    pub(crate) fn weight(&self) -> (bool, usize, usize) {
        (self.method.is_some(), self.headers.len(), self.query.len())
    }
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: names lower-case, values valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Apply to a header map: remove, then set (replacing), then add (appending).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name.as_str());
        }
        let parsed = |(n, v): &(String, String)| {
            Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
        };
        for (n, v) in self.set.iter().filter_map(parsed) {
            headers.insert(n, v);
        }
        for (n, v) in self.add.iter().filter_map(parsed) {
            headers.append(n, v);
        }
    }

    /// Whether a field of a raw head named `name` is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        let hit = |n: &String| n.as_bytes().eq_ignore_ascii_case(name);
        self.remove.iter().any(hit) || self.set.iter().any(|(n, _)| hit(n))
    }

    /// The fields to append to a raw head (`set` then `add`).
    pub fn appended(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set.iter().chain(&self.add).map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// `ReplaceFullPath` / `ReplacePrefixMatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    Prefix(String),
}

impl PathRewrite {
    /// The new path for `path` (without query); `prefix` is the rule's matched PathPrefix
    /// (`None` for an Exact match, where the whole path is the match).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            Self::Full(p) => p.clone(),
            Self::Prefix(replacement) => {
                let matched = prefix.unwrap_or(path).trim_end_matches('/');
                let rest = path.get(matched.len()..).unwrap_or("");
                let base = replacement.trim_end_matches('/');
                match (base.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (true, false) => rest.to_string(),
                    (false, _) => format!("{base}{rest}"),
                }
            }
        }
    }
}

/// `RequestRedirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: u16,
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
}

impl Redirect {
    /// The `Location` for a request: `https` tells the scheme it came in with, `host` is its
    /// host (with or without port), `path` and `query` as sent, `prefix` as for
    /// [`PathRewrite::apply`]. The port: the filter's; else none when the scheme changed
    /// (its default); else the request's.
    pub fn location(&self, https: bool, host: &str, path: &str, query: Option<&str>, prefix: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(if https { "https" } else { "http" });
        let (req_host, req_port) = split_host_port(host);
        let name = self.hostname.as_deref().unwrap_or(req_host);
        let port = match (self.port, self.scheme.is_some()) {
            (Some(p), _) => Some(p),
            (None, true) => None,
            (None, false) => req_port,
        };
        let port = port.filter(|&p| !((scheme == "http" && p == 80) || (scheme == "https" && p == 443)));
        let path = self.path.as_ref().map_or_else(|| path.to_string(), |p| p.apply(path, prefix));
        let mut out = format!("{scheme}://{name}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => (&host[..=end], host[end + 1..].strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// `URLRewrite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

/// The Gateway API part of a route (one match of one rule of an HTTPRoute).
#[derive(Debug, Default)]
pub struct GatewayRoute {
    pub conditions: RequestConditions,
    /// The rule's Services by weight (each `>0`), one picked per connection or request; the
    /// rule's own route has an empty pool. Only valid backendRefs (see `invalid_weight`).
    pub backends: Vec<(u32, Arc<Route>)>,
    /// The summed weight of the rule's invalid backendRefs (Service not found, kind not
    /// supported, cross-namespace without a ReferenceGrant, no port): their share of the split
    /// is answered 500, as the spec requires, so a rule whose backends are all invalid answers
    /// 500 to everything. Weight-0 refs count nowhere.
    pub invalid_weight: u32,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    /// `timeouts.request`: until the 101 (or the whole response of plain HTTP).
    pub request_timeout: Option<Duration>,
    /// The PathPrefix this match matched (for `ReplacePrefixMatch`); `None` for Exact.
    pub matched_prefix: Option<String>,
    /// Attached only to `HTTP` listeners (for these hosts): not matched on the proxy's TLS
    /// listener, so a route the Gateway serves over plain HTTP is not reachable over https.
    pub plain_only: bool,
    next: AtomicU64,
}

impl PartialEq for GatewayRoute {
    /// By what it routes to: conditions, filters, timeout, and each Service of the split by
    /// weight, id, backend, settings and endpoints (so an unchanged file compares equal).
    fn eq(&self, other: &Self) -> bool {
        let same_backend = |(w, a): &(u32, Arc<Route>), (v, b): &(u32, Arc<Route>)| {
            w == v
                && (Arc::ptr_eq(a, b)
                    || (a.id == b.id
                        && a.backend == b.backend
                        && a.settings == b.settings
                        && a.pool.endpoints().len() == b.pool.endpoints().len()
                        && a.pool
                            .endpoints()
                            .iter()
                            .zip(b.pool.endpoints())
                            .all(|(x, y)| x.addr == y.addr && x.state == y.state && x.hostname == y.hostname)))
        };
        self.conditions == other.conditions
            && self.request_headers == other.request_headers
            && self.response_headers == other.response_headers
            && self.redirect == other.redirect
            && self.rewrite == other.rewrite
            && self.request_timeout == other.request_timeout
            && self.matched_prefix == other.matched_prefix
            && self.invalid_weight == other.invalid_weight
            && self.plain_only == other.plain_only
            && self.backends.len() == other.backends.len()
            && self.backends.iter().zip(&other.backends).all(|(a, b)| same_backend(a, b))
    }
}

impl Eq for GatewayRoute {}

/// What a rule's weighted split chose for one connection or request.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// This Service's pool serves.
    Service(&'a Arc<Route>),
    /// The share of the rule's invalid backendRefs: answered 500, no backend contacted.
    Invalid,
}

impl<'a> Pick<'a> {
    /// The Service picked, if a valid one was.
    pub fn service(self) -> Option<&'a Arc<Route>> {
        match self {
            Self::Service(r) => Some(r),
            Self::Invalid => None,
        }
    }
}

impl GatewayRoute {
    /// The Service of a split for a new connection or request, by weight (the invalid
    /// backendRefs' share included): a counter mixed by splitmix64 (uniform, no shared RNG
    /// state beyond one atomic); `None` without a split.
    pub fn pick(&self) -> Option<Pick<'_>> {
        self.pick_for(None)
    }

    /// [`pick`](Self::pick), or with a hashing policy's key (client address, header value) the
    /// Service that key always gets, by weight: every replica sends a key to the same Service
    /// (and then, by the same key, to the same endpoint).
    pub fn pick_for(&self, key: Option<&[u8]>) -> Option<Pick<'_>> {
        let valid: u64 = self.backends.iter().map(|(w, _)| u64::from(*w)).sum();
        let total = valid + u64::from(self.invalid_weight);
        if total == 0 {
            return None;
        }
        let seed = match key {
            Some(k) => super::ring::hash_key(k),
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let mut n = splitmix64(seed) % total;
        for (w, route) in &self.backends {
            let w = u64::from(*w);
            if n < w {
                return Some(Pick::Service(route));
            }
            n -= w;
        }
        // What is left is the invalid share.
        Some(Pick::Invalid)
    }

    /// A rule routing to `backends` (by weight), with no conditions, filters or timeout yet.
    pub fn new(backends: Vec<(u32, Arc<Route>)>) -> Self {
        Self { backends, ..Self::default() }
    }

    /// The same rule with its split's routes replaced (a publish relinking live state).
    pub fn with_backends(&self, backends: Vec<(u32, Arc<Route>)>) -> Self {
        Self {
            conditions: self.conditions.clone(),
            backends,
            invalid_weight: self.invalid_weight,
            request_headers: self.request_headers.clone(),
            response_headers: self.response_headers.clone(),
            redirect: self.redirect.clone(),
            rewrite: self.rewrite.clone(),
            request_timeout: self.request_timeout,
            matched_prefix: self.matched_prefix.clone(),
            plain_only: self.plain_only,
            next: AtomicU64::new(0),
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::routes::test_route as route;

    #[test]
    fn a_hash_key_always_gets_the_same_service_and_keys_follow_the_weights() {
        let g = GatewayRoute::new(vec![(80, route("a")), (20, route("b"))]);
        let again = GatewayRoute::new(vec![(80, route("a")), (20, route("b"))]);
        let mut to_a = 0;
        for i in 0u32..5000 {
            let key = i.to_be_bytes();
            let id = |g: &GatewayRoute| g.pick_for(Some(&key)).and_then(Pick::service).unwrap().id.clone();
            let first = id(&g);
            assert_eq!(id(&again), first, "another replica agrees");
            assert_eq!(id(&g), first, "and so does a later connection");
            to_a += usize::from(first == "a");
        }
        assert!((3_800..=4_200).contains(&to_a), "{to_a} of 5000 keys to the weight-80 Service");
    }

    #[test]
    fn equal_by_what_it_routes_to() {
        let a = GatewayRoute::new(vec![(1, route("a"))]);
        let same = GatewayRoute::new(vec![(1, route("a"))]);
        let heavier = GatewayRoute::new(vec![(2, route("a"))]);
        let mut timed = GatewayRoute::new(vec![(1, route("a"))]);
        timed.request_timeout = Some(Duration::from_secs(2));
        let mut half_invalid = GatewayRoute::new(vec![(1, route("a"))]);
        half_invalid.invalid_weight = 1;
        assert!(a == same);
        assert!(a != heavier);
        assert!(a != timed);
        assert!(a != half_invalid, "the invalid share is part of what it routes to");
        assert!(half_invalid == half_invalid.with_backends(vec![(1, route("a"))]), "and kept by a relink");
    }

    #[test]
    fn weighted_pick_follows_the_weights() {
        let g = GatewayRoute { backends: vec![(80, route("a")), (20, route("b"))], ..GatewayRoute::default() };
        let a = (0..10_000).filter(|_| g.pick().and_then(Pick::service).is_some_and(|r| r.id == "a")).count();
        assert!((7_700..=8_300).contains(&a), "{a} of 10000 to the weight-80 Service");
        let none = GatewayRoute::default();
        assert!(none.pick().is_none());
    }

    #[test]
    fn invalid_backend_refs_keep_their_share_of_the_split() {
        // Spec example: two refs of weight 1, one invalid → about half the requests get 500.
        let mut g = GatewayRoute::new(vec![(1, route("a"))]);
        g.invalid_weight = 1;
        let (mut to_a, mut invalid) = (0, 0);
        for _ in 0..10_000 {
            match g.pick().unwrap() {
                Pick::Service(r) => {
                    assert_eq!(r.id, "a");
                    to_a += 1;
                }
                Pick::Invalid => invalid += 1,
            }
        }
        assert_eq!(to_a + invalid, 10_000);
        assert!((4_700..=5_300).contains(&invalid), "{invalid} of 10000 to the invalid half");
        // Weighted: 3 valid to 1 invalid; a hash key keeps its side too.
        let mut g = GatewayRoute::new(vec![(2, route("a")), (1, route("b"))]);
        g.invalid_weight = 1;
        let invalid =
            (0u32..8_000).filter(|i| matches!(g.pick_for(Some(&i.to_be_bytes())), Some(Pick::Invalid))).count();
        assert!((1_800..=2_200).contains(&invalid), "{invalid} of 8000 keys to the weight-1 invalid share");
        for i in 0u32..100 {
            let key = i.to_be_bytes();
            let side = |p: Option<Pick<'_>>| p.unwrap().service().map(|r| r.id.clone());
            assert_eq!(side(g.pick_for(Some(&key))), side(g.pick_for(Some(&key))));
        }
    }

    #[test]
    fn a_rule_whose_backends_are_all_invalid_always_picks_the_invalid_share() {
        let mut g = GatewayRoute::new(Vec::new());
        g.invalid_weight = 2;
        assert!((0..1_000).all(|_| matches!(g.pick(), Some(Pick::Invalid))));
        assert!(matches!(g.pick_for(Some(b"10.0.0.1")), Some(Pick::Invalid)));
        // Only weight-0 refs (or none): no split at all, the rule's own (empty) pool answers.
        assert!(GatewayRoute::new(Vec::new()).pick().is_none());
    }

    #[test]
    fn conditions_match_method_headers_and_query() {
        let c = RequestConditions {
            method: Some("GET".into()),
            headers: vec![("x-version".into(), "2".into())],
            query: vec![("room".into(), "a".into())],
        };
        let req = http::Request::get("/ws?x=1&room=a").header("X-Version", "2").body(()).unwrap();
        assert!(c.matches(&req));
        let req = http::Request::get("/ws?room=b").header("x-version", "2").body(()).unwrap();
        assert!(!c.matches(&req));
        let req = http::Request::post("/ws?room=a").header("x-version", "2").body(()).unwrap();
        assert!(!c.matches(&req));
        assert!(!c.matches(&NoFacts));
        assert!(RequestConditions::default().matches(&NoFacts));
    }

    #[test]
    fn path_rewrites_as_the_spec_shows() {
        let p = PathRewrite::Prefix("/xyz".into());
        assert_eq!(p.apply("/foo/bar", Some("/foo")), "/xyz/bar");
        assert_eq!(p.apply("/foo", Some("/foo")), "/xyz");
        let root = PathRewrite::Prefix("/".into());
        assert_eq!(root.apply("/foo/bar", Some("/foo")), "/bar");
        assert_eq!(root.apply("/foo", Some("/foo")), "/");
        assert_eq!(PathRewrite::Full("/new".into()).apply("/foo/bar", Some("/foo")), "/new");
    }

    #[test]
    fn redirect_locations() {
        let r = Redirect { status: 301, scheme: Some("https".into()), hostname: None, port: None, path: None };
        assert_eq!(
            r.location(false, "chat.example.com:8080", "/ws", Some("a=1"), None),
            "https://chat.example.com/ws?a=1"
        );
        let r = Redirect {
            status: 302,
            scheme: None,
            hostname: Some("new.example.com".into()),
            port: Some(8443),
            path: None,
        };
        assert_eq!(r.location(false, "old.example.com", "/", None, None), "http://new.example.com:8443/");
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let e = HeaderEdits {
            set: vec![("x-a".into(), "2".into())],
            add: vec![("x-b".into(), "3".into())],
            remove: vec!["x-gone".into()],
        };
        e.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "2");
        assert_eq!(h.get("x-b").unwrap(), "3");
        assert!(h.get("x-gone").is_none());
        assert!(e.drops(b"X-A") && e.drops(b"x-gone") && !e.drops(b"x-b"));
    }
}
