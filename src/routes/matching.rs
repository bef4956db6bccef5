//! Host and path matching with Ingress precedence.
//!
//! Precedence is an ordered key, not a chain of ifs: rules are sorted once by
//! (host class, host, path class, longer path first, path), and a request first selects the
//! most specific host group that matches its `Host` (exact host, then `*.` wildcard, then
//! rules without a host, like nginx's server selection), then the first path in that group
//! (Exact before Prefix, longer prefix first). Prefix matching is element-wise as the
//! Kubernetes Ingress API defines it: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never `/foobar`.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use super::Rule;

/// Which `Host` values a rule applies to. Hosts are stored lower-case without a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `example.com`: matches exactly one more DNS label.
    Wildcard(String),
    /// A Gateway API wildcard `*.example.com`, stored as `example.com`: matches one or more
    /// labels in front of it; the longest suffix wins.
    Suffix(String),
    Any,
}

impl HostMatch {
    /// Parse an Ingress rule host (`example.com`, `*.example.com`, or empty for any).
    pub fn parse(host: &str) -> Self {
        let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if h.is_empty() || h == "*" {
            Self::Any
        } else if let Some(rest) = h.strip_prefix("*.") {
            Self::Wildcard(rest.to_string())
        } else {
            Self::Exact(h)
        }
    }

    fn class(&self) -> u8 {
        match self {
            Self::Exact(_) => 0,
            Self::Wildcard(_) => 1,
            Self::Suffix(_) => 2,
            Self::Any => 3,
        }
    }

    /// `host` must already be normalised with [`normalize_host`].
    pub fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (Self::Any, _) => true,
            (_, None) => false,
            (Self::Exact(h), Some(req)) => h == req,
            (Self::Wildcard(suffix), Some(req)) => match req.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest == suffix,
                None => false,
            },
            (Self::Suffix(suffix), Some(req)) => {
                req.len() > suffix.len() + 1
                    && req.ends_with(suffix.as_str())
                    && req.as_bytes()[req.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(h) | Self::Suffix(h) => write!(f, "*.{h}"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// Which request paths a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// Stored without a trailing `/` (except the root prefix `/`).
    Prefix(String),
}

impl PathMatch {
    pub fn exact(path: &str) -> Self {
        Self::Exact(path.to_string())
    }
    /// `ImplementationSpecific` is treated as `Prefix` too.
    pub fn prefix(path: &str) -> Self {
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() { Self::Prefix("/".to_string()) } else { Self::Prefix(trimmed.to_string()) }
    }

    /// `path` is the request path without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) if p == "/" => true,
            Self::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }

    fn class(&self) -> u8 {
        match self {
            Self::Exact(_) => 0,
            Self::Prefix(_) => 1,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Exact(p) | Self::Prefix(p) => p,
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => write!(f, "={p}"),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The sort key that puts rules in precedence order. After the path come the Gateway API
/// conditions the spec orders by (a method match, then more header matches, then more query
/// matches; Ingress rules have none); ties keep their order (the stable sort), which is the
/// sources' precedence (oldest, then namespace/name, then rule order).
pub(crate) type PrecedenceKey = (u8, String, u8, Reverse<usize>, String, Reverse<(bool, usize, usize)>);

pub(crate) fn precedence_key(host: &HostMatch, path: &PathMatch, conditions: (bool, usize, usize)) -> PrecedenceKey {
    let host_name = match host {
        HostMatch::Exact(h) | HostMatch::Wildcard(h) | HostMatch::Suffix(h) => h.clone(),
        HostMatch::Any => String::new(),
    };
    (
        host.class(),
        host_name,
        path.class(),
        Reverse(path.as_str().len()),
        path.as_str().to_string(),
        Reverse(conditions),
    )
}

/// Lower-case, without port or trailing dot. Keeps IPv6 literals bracketed.
pub fn normalize_host(raw: &str) -> String {
    let mut buf = [0u8; MAX_HOST];
    match normalized(raw, &mut buf) {
        Some(h) => h.to_string(),
        None => raw.trim().to_ascii_lowercase(),
    }
}

/// Longest host name looked up (a DNS name has at most 253 characters).
const MAX_HOST: usize = 256;

/// [`normalize_host`] into a caller's buffer, without allocating; `None` when too long.
fn normalized<'b>(raw: &str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let raw = raw.trim();
    let without_port = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = without_port.trim_end_matches('.').as_bytes();
    let out = buf.get_mut(..host.len())?;
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// Rules grouped by host for lookup in O(1) of the number of hosts: exact hosts and wildcard
/// suffixes in hash maps, each to the range of its rules in the precedence-sorted rule list
/// (a host's rules are contiguous there), plus the range of host-less rules.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostIndex {
    exact: HashMap<String, Range<usize>>,
    wildcard: HashMap<String, Range<usize>>,
    /// Gateway API wildcards (any number of labels); empty for Ingress-only tables.
    suffix: HashMap<String, Range<usize>>,
    any: Option<Range<usize>>,
}

impl HostIndex {
    /// `rules` must be sorted by [`precedence_key`].
    pub(crate) fn new(rules: &[Rule]) -> Self {
        let mut index = Self::default();
        let mut start = 0;
        while start < rules.len() {
            let host = &rules[start].host;
            let len = rules[start..].iter().take_while(|r| &r.host == host).count();
            let range = start..start + len;
            match host {
                HostMatch::Exact(h) => {
                    index.exact.insert(h.clone(), range);
                }
                HostMatch::Wildcard(h) => {
                    index.wildcard.insert(h.clone(), range);
                }
                HostMatch::Suffix(h) => {
                    index.suffix.insert(h.clone(), range);
                }
                HostMatch::Any => index.any = Some(range),
            }
            start += len;
        }
        index
    }

    /// The rules of the most specific host group matching `host` (exact host, then the
    /// wildcard one label up, then host-less rules), as nginx selects a server.
    pub(crate) fn group(&self, host: Option<&str>) -> Option<Range<usize>> {
        let mut buf = [0u8; MAX_HOST];
        if let Some(h) = host.and_then(|h| normalized(h, &mut buf)) {
            if let Some(r) = self.exact.get(h) {
                return Some(r.clone());
            }
            if let Some((label, rest)) = h.split_once('.')
                && !label.is_empty()
                && let Some(r) = self.wildcard.get(rest)
            {
                return Some(r.clone());
            }
            // Gateway API wildcards: the longest suffix first.
            if !self.suffix.is_empty() {
                let mut rest = h;
                while let Some((label, up)) = rest.split_once('.') {
                    if label.is_empty() {
                        break;
                    }
                    if let Some(r) = self.suffix.get(up) {
                        return Some(r.clone());
                    }
                    rest = up;
                }
            }
        }
        self.any.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;

    use crate::routes::test_route as route;

    fn rule(host: &str, path: PathMatch, id: &str) -> Rule {
        Rule { host: HostMatch::parse(host), path, route: route(id) }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            vec![
                rule("", PathMatch::prefix("/"), "any-root"),
                rule("*.example.com", PathMatch::prefix("/"), "wild-root"),
                rule("chat.example.com", PathMatch::prefix("/"), "chat-root"),
                rule("chat.example.com", PathMatch::prefix("/ws"), "chat-ws"),
                rule("chat.example.com", PathMatch::prefix("/ws/admin/"), "chat-ws-admin"),
                rule("chat.example.com", PathMatch::exact("/ws"), "chat-ws-exact"),
                rule("api.example.com", PathMatch::prefix("/v1"), "api-v1"),
            ],
            Some(route("default")),
        )
    }

    #[test]
    fn precedence_table() {
        let t = table();
        let cases: &[(Option<&str>, &str, &str)] = &[
            // Exact path before any prefix of the same length.
            (Some("chat.example.com"), "/ws", "chat-ws-exact"),
            // Longer prefix first; element-wise.
            (Some("chat.example.com"), "/ws/", "chat-ws"),
            (Some("chat.example.com"), "/ws/room", "chat-ws"),
            (Some("chat.example.com"), "/ws/admin", "chat-ws-admin"),
            (Some("chat.example.com"), "/ws/admin/x", "chat-ws-admin"),
            (Some("chat.example.com"), "/ws/administrator", "chat-ws"),
            (Some("chat.example.com"), "/wsx", "chat-root"),
            // Host is case-insensitive and the port is ignored.
            (Some("CHAT.example.com:8080"), "/ws/a", "chat-ws"),
            (Some("chat.example.com."), "/ws/a", "chat-ws"),
            // Wildcard covers exactly one label.
            (Some("other.example.com"), "/x", "wild-root"),
            (Some("a.b.example.com"), "/x", "any-root"),
            (Some("example.com"), "/x", "any-root"),
            // The exact host group is selected even when only the wildcard has the path:
            // its miss falls to the default backend, like nginx's server selection.
            (Some("api.example.com"), "/v2", "default"),
            (Some("api.example.com"), "/v1/users", "api-v1"),
            (None, "/", "any-root"),
        ];
        for (host, path, want) in cases {
            let got = t.find(*host, path).map(|r| r.id.as_str());
            assert_eq!(got, Some(*want), "host {host:?} path {path}");
        }
    }

    #[test]
    fn no_match_without_default_is_none() {
        let t = RouteTable::new(vec![rule("a.example.com", PathMatch::prefix("/app"), "app")], None);
        assert!(t.find(Some("a.example.com"), "/other").is_none());
        assert!(t.find(Some("b.example.com"), "/app").is_none());
        assert!(t.find(None, "/app").is_none());
    }

    #[test]
    fn prefix_is_element_wise() {
        let p = PathMatch::prefix("/aaa/bb/");
        assert!(p.matches("/aaa/bb"));
        assert!(p.matches("/aaa/bb/"));
        assert!(p.matches("/aaa/bb/ccc"));
        assert!(!p.matches("/aaa/bbb"));
        assert!(!p.matches("/aaa"));
        assert!(PathMatch::prefix("/").matches("/anything"));
        assert!(PathMatch::prefix("").matches("/"));
        let e = PathMatch::exact("/foo");
        assert!(e.matches("/foo"));
        assert!(!e.matches("/foo/"));
        assert!(!e.matches("/FOO"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:443"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(HostMatch::parse("*.Example.com"), HostMatch::Wildcard("example.com".into()));
        assert_eq!(HostMatch::parse(""), HostMatch::Any);
    }
}
