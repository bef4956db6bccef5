//! Cookie affinity (`wsingress.io/affinity: cookie`): the cookie's value names an endpoint by
//! an opaque keyed token, HMAC-SHA256(key, endpoint address) cut to 128 bits and written in
//! hex. Every replica with the same key gives an endpoint the same token, so a client keeps its
//! endpoint whichever replica its next request reaches, and the token does not reveal the
//! address to anyone without the key.
//!
//! The key comes from `--affinity-key` (env `WSINGRESS_AFFINITY_KEY`; the chart fills it from a
//! Secret). Without one a built-in key is used: tokens still agree across replicas, but anyone
//! who reads this source can compute the token of a guessed address, so a cookie can then be
//! turned back into a pod address by trying candidate addresses. A warning says so once.
//!
//! Per request, the work is the cookie parse (no allocation) and a comparison against the
//! pool's tokens, which are computed once per endpoint set ([`Pool::affinity_tokens`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use ring::hmac;

use crate::routes::{AFFINITY_TOKEN_LEN, AffinityToken, Pool, SessionCookie};

/// Built-in key used without `--affinity-key` (documented weakness, see the module docs).
const BUILTIN_KEY: &[u8] = b"wsingress affinity built-in key: set --affinity-key";
/// Domain separation: a token is only ever an affinity token.
const CONTEXT: &[u8] = b"wsingress-affinity-v1\0";

/// The secret tokens are made with.
pub struct AffinityKey {
    key: hmac::Key,
    builtin: bool,
    warned: AtomicBool,
}

impl std::fmt::Debug for AffinityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityKey").field("builtin", &self.builtin).finish_non_exhaustive()
    }
}

impl Default for AffinityKey {
    fn default() -> Self {
        Self::builtin()
    }
}

impl AffinityKey {
    /// A key from a secret shared by every replica.
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret), builtin: false, warned: AtomicBool::new(false) }
    }

    /// The built-in key (no `--affinity-key`).
    pub fn builtin() -> Self {
        Self { builtin: true, ..Self::new(BUILTIN_KEY) }
    }

    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The token naming `addr`: 16 bytes of HMAC-SHA256, lower-case hex.
    pub fn token(&self, addr: SocketAddr) -> AffinityToken {
        if self.builtin && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cookie affinity uses the built-in key: set --affinity-key (or WSINGRESS_AFFINITY_KEY) to a secret shared by every replica, or cookies can be mapped back to endpoint addresses"
            );
        }
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        match addr {
            SocketAddr::V4(a) => ctx.update(&a.ip().octets()),
            SocketAddr::V6(a) => ctx.update(&a.ip().octets()),
        }
        ctx.update(&addr.port().to_be_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; AFFINITY_TOKEN_LEN];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in tag.as_ref().iter().take(AFFINITY_TOKEN_LEN / 2).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        out
    }
}

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265 §5.4: `a=b; c=d`),
/// the first one when it appears more than once.
pub fn cookie_value<'a>(fields: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a [u8]> {
    for field in fields {
        for pair in field.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else { continue };
            if pair[..eq].trim_ascii() == name.as_bytes() {
                let v = pair[eq + 1..].trim_ascii();
                // A quoted value (RFC 6265 §4.1.1 cookie-value) is compared without its quotes.
                let v = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
                return Some(v);
            }
        }
    }
    None
}

/// The ready position of the endpoint `cookie` names in `pool`, if it is still there.
pub fn sticky_index(pool: &Pool, key: &AffinityKey, cookie: Option<&[u8]>) -> Option<usize> {
    let cookie = cookie.filter(|c| c.len() == AFFINITY_TOKEN_LEN)?;
    pool.affinity_tokens(|a| key.token(a)).iter().position(|t| t.as_slice() == cookie)
}

/// The `Set-Cookie` value for a response from the endpoint at ready position `chosen`, or
/// `None` when the request's cookie already names it (`named`, from [`sticky_index`]).
pub fn set_cookie_for(
    pool: &Pool,
    key: &AffinityKey,
    named: Option<usize>,
    chosen: usize,
    spec: &SessionCookie,
) -> Option<String> {
    if named == Some(chosen) {
        return None;
    }
    let token = pool.affinity_tokens(|a| key.token(a)).get(chosen)?;
    Some(set_cookie(spec, token))
}

/// `NAME=TOKEN; Path=/; Max-Age=N; SameSite=X; Secure; HttpOnly` (RFC 6265 §4.1).
pub fn set_cookie(spec: &SessionCookie, token: &AffinityToken) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(spec.name.len() + AFFINITY_TOKEN_LEN + 64);
    out.push_str(&spec.name);
    out.push('=');
    // The token is ASCII hex.
    out.extend(token.iter().map(|&b| char::from(b)));
    let _ = write!(out, "; Path={}", spec.path);
    if let Some(age) = spec.max_age {
        let _ = write!(out, "; Max-Age={age}");
    }
    if let Some(s) = spec.same_site {
        let _ = write!(out, "; SameSite={}", s.as_str());
    }
    if spec.secure {
        out.push_str("; Secure");
    }
    out.push_str("; HttpOnly");
    out
}

/// Whether `name` can be a cookie name (an RFC 9110 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `path` can be a cookie `Path` (absolute, no `;` or control characters).
pub fn valid_cookie_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Endpoint, SameSite};

    fn pool(addrs: &[&str]) -> Pool {
        Pool::new(addrs.iter().map(|a| Endpoint::new(a.parse().unwrap(), true)).collect())
    }

    #[test]
    fn tokens_are_stable_keyed_and_opaque() {
        let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let k1 = AffinityKey::new(b"secret");
        let k1_again = AffinityKey::new(b"secret");
        assert_eq!(k1.token(a), k1_again.token(a), "replicas with one key agree");
        assert_ne!(k1.token(a), AffinityKey::new(b"other").token(a), "the key matters");
        assert_ne!(k1.token(a), k1.token("10.0.0.1:8081".parse().unwrap()), "the port matters");
        let t = k1.token(a);
        assert!(t.iter().all(|b| b.is_ascii_hexdigit()));
        assert!(!std::str::from_utf8(&t).unwrap().contains("10.0.0.1"));
    }

    #[test]
    fn cookie_parse_finds_the_named_cookie() {
        let fields: [&[u8]; 2] = [b"a=1; WSINGRESS=abc ; b=2", b"WSINGRESS=second"];
        assert_eq!(cookie_value(fields.iter().copied(), "WSINGRESS"), Some(&b"abc"[..]));
        assert_eq!(cookie_value([&b"x=\"q\""[..]].into_iter(), "x"), Some(&b"q"[..]));
        assert_eq!(cookie_value([&b"WSINGRESSX=1; junk"[..]].into_iter(), "WSINGRESS"), None);
        assert_eq!(cookie_value(std::iter::empty(), "WSINGRESS"), None);
    }

    #[test]
    fn a_cookie_sticks_while_its_endpoint_is_ready_and_is_replaced_after() {
        let key = AffinityKey::new(b"k");
        let p = pool(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let t2 = key.token("10.0.0.2:80".parse().unwrap());
        assert_eq!(sticky_index(&p, &key, Some(&t2)), Some(1));
        assert_eq!(sticky_index(&p, &key, Some(b"0123")), None);
        assert_eq!(sticky_index(&p, &key, None), None);
        let spec = SessionCookie::default();
        // Already naming the chosen endpoint: nothing to set.
        assert_eq!(set_cookie_for(&p, &key, Some(1), 1, &spec), None);
        // The endpoint left: the cookie names nothing, the next pick sets a new one.
        let gone = pool(&["10.0.0.1:80", "10.0.0.3:80"]);
        let named = sticky_index(&gone, &key, Some(&t2));
        assert_eq!(named, None);
        let set = set_cookie_for(&gone, &key, named, 0, &spec).unwrap();
        let t1 = key.token("10.0.0.1:80".parse().unwrap());
        assert_eq!(set, format!("WSINGRESS={}; Path=/; HttpOnly", std::str::from_utf8(&t1).unwrap()));
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let spec = SessionCookie {
            name: "route".into(),
            path: "/chat".into(),
            max_age: Some(3600),
            same_site: Some(SameSite::None),
            secure: true,
        };
        let v = set_cookie(&spec, &[b'a'; AFFINITY_TOKEN_LEN]);
        assert_eq!(v, format!("route={}; Path=/chat; Max-Age=3600; SameSite=None; Secure; HttpOnly", "a".repeat(32)));
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert!(valid_cookie_name("INGRESSCOOKIE"));
        assert!(!valid_cookie_name("bad name"));
        assert!(!valid_cookie_name("a;b"));
        assert!(valid_cookie_path("/socket.io"));
        assert!(!valid_cookie_path("socket.io"));
        assert!(!valid_cookie_path("/a;b"));
    }
}
