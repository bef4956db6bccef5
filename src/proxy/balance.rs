//! Endpoint selection. The pool (and its hash ring) is built once per endpoint set; the
//! per-request work is one pass over the ready endpoints (least-conn), one atomic step
//! (round-robin) or one hash (ip-hash, header-hash). The result is an ordered, bounded list
//! of candidates: the first choice, then the endpoints to try when connecting fails.
//!
//! Passive health: an endpoint that refused or timed out a connect is skipped for
//! [`EJECT_FOR_MS`] unless every endpoint is ejected.

use std::sync::OnceLock;
use std::time::Instant;

use crate::routes::{Endpoint, Policy, Pool};

/// Attempts per request: the first choice plus up to two fallbacks.
pub const MAX_ATTEMPTS: usize = 3;
/// How long a connect failure keeps an endpoint out of rotation.
pub const EJECT_FOR_MS: u64 = 2_000;

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Mark an endpoint as failing.
pub fn eject(ep: &Endpoint) {
    ep.live.eject_until_ms(now_ms() + EJECT_FOR_MS);
}

/// The key a hash policy balances on: the client address for `ip-hash`, the header's value
/// for `header-hash` (none when absent: least-conn then).
pub fn hash_key<'h>(
    policy: &Policy,
    header: impl Fn(&str) -> Option<&'h [u8]>,
    client: std::net::IpAddr,
) -> Option<Vec<u8>> {
    match policy {
        Policy::IpHash => Some(match client {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        }),
        Policy::HeaderHash(name) => header(name.as_str()).map(<[u8]>::to_vec),
        _ => None,
    }
}

/// Up to [`MAX_ATTEMPTS`] ready-endpoint positions, best first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Candidates {
    idx: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Candidates {
    pub fn as_slice(&self) -> &[usize] {
        &self.idx[..self.len]
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn push(&mut self, i: usize) {
        if self.len < MAX_ATTEMPTS && !self.as_slice().contains(&i) {
            self.idx[self.len] = i;
            self.len += 1;
        }
    }
}

/// Choose candidates from `pool` for a request whose hash key (client IP bytes or header
/// value) is `key` when the policy needs one.
pub fn pick(pool: &Pool, policy: &Policy, key: Option<&[u8]>) -> Candidates {
    pick_sticky(pool, policy, key, None)
}

/// Like [`pick`], with the ready position an affinity cookie names first while that endpoint
/// is healthy; otherwise the policy picks (and the caller replaces the cookie).
pub fn pick_sticky(pool: &Pool, policy: &Policy, key: Option<&[u8]>, sticky: Option<usize>) -> Candidates {
    let n = pool.ready_len();
    let mut out = Candidates::default();
    if n == 0 {
        return out;
    }
    let now = now_ms();
    let healthy = |i: usize| pool.ready_at(i).is_some_and(|e| e.live.ejected_until_ms() <= now);
    let sticky = sticky.filter(|&i| i < n && healthy(i));
    let first = match sticky {
        Some(i) => i,
        None => match (policy, key) {
            (Policy::RoundRobin, _) => rotate_healthy(pool.next_index() % n, n, &healthy),
            (Policy::IpHash | Policy::HeaderHash(_), Some(key)) => match pool.ring().pick(key) {
                // Stickiness wins over ejection only when the owner is healthy; else the ring's next.
                Some(owner) => rotate_healthy(owner, n, &healthy),
                None => 0,
            },
            _ => least_conn(pool, n, &healthy),
        },
    };
    out.push(first);
    // Fallbacks: the following healthy endpoints in canonical order, then any.
    for step in 1..n {
        let i = (first + step) % n;
        if healthy(i) {
            out.push(i);
        }
    }
    for step in 1..n {
        out.push((first + step) % n);
    }
    out
}

fn rotate_healthy(start: usize, n: usize, healthy: &impl Fn(usize) -> bool) -> usize {
    (0..n).map(|s| (start + s) % n).find(|&i| healthy(i)).unwrap_or(start)
}

fn least_conn(pool: &Pool, n: usize, healthy: &impl Fn(usize) -> bool) -> usize {
    let start = pool.next_index() % n;
    let mut best: Option<(usize, usize)> = None;
    for s in 0..n {
        let i = (start + s) % n;
        if !healthy(i) {
            continue;
        }
        let active = pool.ready_at(i).map_or(usize::MAX, |e| e.live.load());
        if best.is_none_or(|(_, a)| active < a) {
            best = Some((i, active));
        }
    }
    best.map_or(start, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Endpoint;

    fn pool(n: u8) -> Pool {
        Pool::new((1..=n).map(|i| Endpoint::new(([10, 0, 0, i], 80).into(), true)).collect())
    }

    #[test]
    fn empty_pool_has_no_candidates() {
        assert!(pick(&Pool::new(vec![]), &Policy::LeastConn, None).is_empty());
    }

    #[test]
    fn round_robin_rotates_and_offers_fallbacks() {
        let p = pool(3);
        let firsts: Vec<usize> = (0..6).map(|_| pick(&p, &Policy::RoundRobin, None).as_slice()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(pick(&p, &Policy::RoundRobin, None).as_slice().len(), 3);
    }

    #[test]
    fn least_conn_prefers_the_idle_endpoint() {
        let p = pool(3);
        let _a = p.ready_at(0).unwrap().live.track();
        let _b = p.ready_at(2).unwrap().live.track();
        for _ in 0..5 {
            assert_eq!(pick(&p, &Policy::LeastConn, None).as_slice()[0], 1);
        }
    }

    #[test]
    fn hashing_is_sticky_and_skips_ejected() {
        let p = pool(4);
        let policy = Policy::IpHash;
        let first = pick(&p, &policy, Some(b"203.0.113.7")).as_slice()[0];
        for _ in 0..10 {
            assert_eq!(pick(&p, &policy, Some(b"203.0.113.7")).as_slice()[0], first);
        }
        eject(p.ready_at(first).unwrap());
        let moved = pick(&p, &policy, Some(b"203.0.113.7")).as_slice()[0];
        assert_ne!(moved, first);
        // Header hash without the header falls back to least-conn.
        assert!(!pick(&p, &Policy::HeaderHash("x-user".into()), None).is_empty());
    }

    #[test]
    fn a_sticky_endpoint_wins_while_healthy() {
        let p = pool(3);
        let _busy = p.ready_at(1).unwrap().live.track();
        for _ in 0..4 {
            let c = pick_sticky(&p, &Policy::LeastConn, None, Some(1));
            assert_eq!(c.as_slice()[0], 1, "the cookie beats least-conn");
            assert_eq!(c.as_slice().len(), 3, "fallbacks stay");
        }
        eject(p.ready_at(1).unwrap());
        assert_ne!(pick_sticky(&p, &Policy::LeastConn, None, Some(1)).as_slice()[0], 1, "ejected: picked again");
        assert_ne!(pick_sticky(&p, &Policy::RoundRobin, None, Some(7)).as_slice()[0], 7, "out of range is ignored");
    }

    #[test]
    fn ejected_endpoints_come_last() {
        let p = pool(3);
        eject(p.ready_at(0).unwrap());
        for _ in 0..6 {
            let c = pick(&p, &Policy::RoundRobin, None);
            assert_ne!(c.as_slice()[0], 0);
            assert_eq!(*c.as_slice().last().unwrap(), 0);
        }
    }
}
