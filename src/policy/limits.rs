//! Live-connection limits: per client address (`--max-connections-per-client`) and per route
//! (`max-connections`). Counters are sharded by key hash, so there is no global lock; an entry
//! exists only while its key holds a slot, so memory is bounded by the live connections and
//! nothing is ever swept. A slot is released when its guard drops.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;

/// Live counts per key, in [`SHARDS`] independently locked maps.
#[derive(Debug)]
pub struct Counters<K> {
    shards: Box<[Mutex<HashMap<K, u32>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq> Default for Counters<K> {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }
}

impl<K: Hash + Eq + Clone> Counters<K> {
    fn shard(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Take a slot under `key` unless `limit` slots are taken already.
    pub fn acquire(self: &Arc<Self>, key: &K, limit: u32) -> Option<Slot<K>> {
        let shard = self.shard(key);
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(Slot { counters: self.clone(), key: key.clone(), shard })
    }

    /// Slots currently held under `key`.
    pub fn current(&self, key: &K) -> u32 {
        let map = self.shards[self.shard(key)].lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).copied().unwrap_or(0)
    }

    /// Keys holding at least one slot (the memory the counters use is proportional to this).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    fn release(&self, key: &K, shard: usize) {
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// A taken slot; released on drop.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    counters: Arc<Counters<K>>,
    key: K,
    shard: usize,
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        self.counters.release(&self.key, self.shard);
    }
}

/// Live connections per resolved client address.
pub type ClientCounters = Counters<IpAddr>;
/// Live tunnels per route id.
pub type RouteCounters = Counters<Arc<str>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_released_and_forgotten() {
        let c: Arc<RouteCounters> = Arc::default();
        let key: Arc<str> = "default/chat".into();
        let a = c.acquire(&key, 2).unwrap();
        let _b = c.acquire(&key, 2).unwrap();
        assert!(c.acquire(&key, 2).is_none());
        assert_eq!(c.current(&key), 2);
        drop(a);
        let again = c.acquire(&key, 2);
        assert!(again.is_some());
        drop(again);
        drop(_b);
        assert_eq!(c.keys(), 0, "a key with no live slot takes no memory");
        assert!(c.acquire(&key, 0).is_none(), "limit 0 admits nothing");
        assert_eq!(c.keys(), 0);
    }

    #[test]
    fn many_clients_across_threads_balance_to_zero() {
        let c: Arc<ClientCounters> = Arc::default();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        let ip = IpAddr::from([10, t, (i >> 8) as u8, i as u8]);
                        let s1 = c.acquire(&ip, 2).unwrap();
                        let s2 = c.acquire(&ip, 2).unwrap();
                        assert!(c.acquire(&ip, 2).is_none());
                        drop((s1, s2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.keys(), 0);
    }
}
