//! Per-client policy of a route, enforced: source ranges (403), live connections per client
//! address (429) and a handshake token bucket per client address (429 with `Retry-After`).
//! Decides only; the proxy answers.
//!
//! # Memory bound
//!
//! - Connection counts are [`Counters`] keyed by (route, client address): an entry exists only
//!   while that client holds a live tunnel or a request in flight on that route, so they are
//!   bounded by the live connections (about 80 bytes each).
//! - Token buckets are kept in [`RATE_SHARDS`] independently locked maps of at most
//!   [`RATE_KEYS_PER_SHARD`] keys each: at most 65,536 (route, client) keys in the process,
//!   about 96 bytes each with the map's overhead, so under 6.5 MiB. A bucket that has filled
//!   up again is the same as no bucket, so it is dropped when its shard is full; if the shard
//!   is still full, the bucket closest to full is dropped (that client gets a fresh burst).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::limits::{Counters, Slot};
use crate::routes::client_policy::{ClientPolicy, Rate};

/// Shards of the token-bucket map.
pub const RATE_SHARDS: usize = 64;
/// Keys per shard of the token-bucket map (see the module documentation for the bound).
pub const RATE_KEYS_PER_SHARD: usize = 1024;

/// A (route, client address) key.
pub type ClientKey = (Arc<str>, IpAddr);
/// A live connection of one client on one route; released on drop.
pub type ClientSlot = Slot<ClientKey>;

/// Why a client was refused by its route's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("client address not allowed on this route")]
    SourceRange,
    #[error("too many connections from this client on this route")]
    ConnectionsPerClient,
    #[error("too many handshakes from this client; retry after {retry_after} s")]
    HandshakeRate { retry_after: u32 },
}

impl Refusal {
    /// `reason` label of `wsingress_policy_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::SourceRange => "source_range",
            Self::ConnectionsPerClient => "connections_per_client",
            Self::HandshakeRate { .. } => "handshake_rate",
        }
    }
}

/// `reason` label of a tunnel closed with 1008 for its message rate.
pub const MESSAGE_RATE: &str = "message_rate";

/// The shared state behind every route's per-client policy.
#[derive(Debug)]
pub struct ClientLimits {
    conns: Arc<Counters<ClientKey>>,
    rates: RateLimiter,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self { conns: Arc::default(), rates: RateLimiter::new(RATE_KEYS_PER_SHARD) }
    }
}

impl ClientLimits {
    /// Check `client` against `route`'s policy at `now`: the source ranges, then a connection
    /// slot, then a handshake token (a refused handshake keeps its token; a refused slot
    /// takes none). The slot, if the route limits connections, lives as long as the
    /// connection or request it was taken for.
    pub fn admit(
        &self,
        route: &Arc<str>,
        policy: &ClientPolicy,
        client: IpAddr,
        now: Instant,
    ) -> Result<Option<ClientSlot>, Refusal> {
        if policy.admits_all() {
            return Ok(None);
        }
        let client = client.to_canonical();
        if !policy.source_ranges.permits(client) {
            return Err(Refusal::SourceRange);
        }
        let key = (route.clone(), client);
        let slot = match policy.max_connections_per_client {
            Some(limit) => Some(self.conns.acquire(&key, limit).ok_or(Refusal::ConnectionsPerClient)?),
            None => None,
        };
        if let Some(rate) = &policy.handshake_rate
            && let Err(wait) = self.rates.take(key, rate, now)
        {
            return Err(Refusal::HandshakeRate { retry_after: retry_after_secs(wait) });
        }
        Ok(slot)
    }

    /// Live connections of `client` on `route`.
    pub fn connections(&self, route: &Arc<str>, client: IpAddr) -> u32 {
        self.conns.current(&(route.clone(), client.to_canonical()))
    }

    /// Keys held by the connection counters and the token buckets.
    pub fn keys(&self) -> (usize, usize) {
        (self.conns.keys(), self.rates.keys())
    }
}

/// Whole seconds to announce in `Retry-After` for a wait (rounded up, at least 1).
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// When the bucket is full again if nothing is taken (then it equals no bucket).
    full_at: Instant,
}

/// Token buckets per key, sharded and bounded.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Box<[Mutex<HashMap<ClientKey, Bucket>>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl RateLimiter {
    pub fn new(per_shard: usize) -> Self {
        Self {
            shards: (0..RATE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: per_shard.max(1),
        }
    }

    /// Take one token for `key` at `now`, or say how long until one is there.
    pub fn take(&self, key: ClientKey, rate: &Rate, now: Instant) -> Result<(), Duration> {
        let per_sec = rate.per_second();
        let burst = f64::from(rate.burst.max(1));
        let shard = (self.hasher.hash_one(&key) as usize) % RATE_SHARDS;
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let tokens = match map.get(&key) {
            Some(b) => (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec).min(burst),
            None => {
                if map.len() >= self.per_shard {
                    evict(&mut map, now, self.per_shard);
                }
                burst
            }
        };
        if tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - tokens) / per_sec);
            // The refill so far is kept (the bucket's clock moves on).
            map.insert(
                key,
                Bucket { tokens, at: now, full_at: now + Duration::from_secs_f64((burst - tokens) / per_sec) },
            );
            return Err(wait);
        }
        let left = tokens - 1.0;
        let full_at = now + Duration::from_secs_f64((burst - left) / per_sec);
        map.insert(key, Bucket { tokens: left, at: now, full_at });
        Ok(())
    }

    /// Keys held.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

/// Make room in a full shard: drop the buckets that are full again, then, if none was,
/// the one closest to full.
fn evict(map: &mut HashMap<ClientKey, Bucket>, now: Instant, cap: usize) {
    map.retain(|_, b| b.full_at > now);
    if map.len() >= cap
        && let Some(key) = map.iter().min_by_key(|(_, b)| b.full_at).map(|(k, _)| k.clone())
    {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::cidr::{CidrSet, SourceRanges, parse_list};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route() -> Arc<str> {
        "default/chat".into()
    }

    #[test]
    fn source_ranges_refuse_before_anything_is_counted() {
        let l = ClientLimits::default();
        let policy = ClientPolicy {
            source_ranges: SourceRanges { allow: Some(parse_list("10.0.0.0/8").0), deny: CidrSet::default() },
            max_connections_per_client: Some(1),
            handshake_rate: Some(Rate::new(1, Duration::from_secs(1), Some(1))),
            ..ClientPolicy::default()
        };
        let now = Instant::now();
        assert_eq!(l.admit(&route(), &policy, ip("192.0.2.1"), now).unwrap_err(), Refusal::SourceRange);
        assert_eq!(l.keys(), (0, 0));
        let slot = l.admit(&route(), &policy, ip("::ffff:10.0.0.1"), now).unwrap();
        assert!(slot.is_some());
        assert_eq!(l.connections(&route(), ip("10.0.0.1")), 1, "IPv4-mapped is the IPv4 client");
    }

    #[test]
    fn connection_limit_is_exact_per_client_and_route() {
        let l = ClientLimits::default();
        let policy = ClientPolicy { max_connections_per_client: Some(3), ..ClientPolicy::default() };
        let now = Instant::now();
        let a = ip("127.0.0.1");
        let held: Vec<_> = (0..3).map(|_| l.admit(&route(), &policy, a, now).unwrap()).collect();
        assert_eq!(l.admit(&route(), &policy, a, now).unwrap_err(), Refusal::ConnectionsPerClient);
        assert!(l.admit(&route(), &policy, ip("127.0.0.2"), now).is_ok(), "another client is unaffected");
        let other: Arc<str> = "default/other".into();
        assert!(l.admit(&other, &policy, a, now).is_ok(), "another route is unaffected");
        drop(held);
        assert_eq!(l.connections(&route(), a), 0);
        assert_eq!(l.keys().0, 0, "released slots leave no key");
    }

    #[test]
    fn token_bucket_burst_refill_and_retry_after() {
        let l = ClientLimits::default();
        let rate = Rate::new(1, Duration::from_secs(2), Some(3));
        let policy = ClientPolicy { handshake_rate: Some(rate), ..ClientPolicy::default() };
        let t0 = Instant::now();
        let a = ip("2001:db8::1");
        for i in 0..3 {
            assert!(l.admit(&route(), &policy, a, t0).is_ok(), "burst {i}");
        }
        assert_eq!(l.admit(&route(), &policy, a, t0).unwrap_err(), Refusal::HandshakeRate { retry_after: 2 });
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(l.admit(&route(), &policy, a, t1).unwrap_err(), Refusal::HandshakeRate { retry_after: 1 });
        let t2 = t0 + Duration::from_secs(2);
        assert!(l.admit(&route(), &policy, a, t2).is_ok(), "one token after the stated wait");
        assert!(l.admit(&route(), &policy, a, t2).is_err());
        assert!(l.admit(&route(), &policy, ip("2001:db8::2"), t2).is_ok(), "buckets are per client");
    }

    #[test]
    fn buckets_are_bounded() {
        let r = RateLimiter::new(4);
        let rate = Rate::new(1, Duration::from_secs(60), Some(2));
        let now = Instant::now();
        for i in 0..10_000u32 {
            let key: ClientKey = (route(), IpAddr::from(i.to_be_bytes()));
            assert!(r.take(key, &rate, now).is_ok());
        }
        assert!(r.keys() <= 4 * RATE_SHARDS, "{} keys", r.keys());
        // Buckets that refilled are dropped first when a shard fills.
        let later = now + Duration::from_secs(3600);
        for i in 0..10_000u32 {
            let key: ClientKey = (route(), IpAddr::from((i + 1_000_000).to_be_bytes()));
            assert!(r.take(key, &rate, later).is_ok());
        }
        assert!(r.keys() <= 4 * RATE_SHARDS);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
