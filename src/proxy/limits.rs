//! Connection limits: live tunnels per route (`max-connections`) and live TCP connections
//! per client address (`--max-connections-per-client`). Each holds a guard that releases
//! its slot on drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counters keyed by a bounded key (route id or client address).
#[derive(Debug)]
pub struct Counters<K: std::hash::Hash + Eq + Clone> {
    map: Mutex<HashMap<K, Arc<AtomicUsize>>>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for Counters<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Counters<K> {
    /// Take a slot under `key` unless `limit` slots are taken already.
    pub fn acquire(&self, key: &K, limit: usize) -> Option<Slot> {
        let counter = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 4096 {
                // Forget keys nobody holds, so the map stays bounded.
                map.retain(|_, c| c.load(Ordering::Relaxed) > 0);
            }
            map.entry(key.clone()).or_default().clone()
        };
        let prev = counter.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(counter))
    }

    pub fn current(&self, key: &K) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A taken slot; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub type RouteCounters = Counters<String>;
pub type ClientCounters = Counters<IpAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_released() {
        let c: RouteCounters = Counters::default();
        let key = "default/chat".to_string();
        let a = c.acquire(&key, 2).unwrap();
        let _b = c.acquire(&key, 2).unwrap();
        assert!(c.acquire(&key, 2).is_none());
        assert_eq!(c.current(&key), 2);
        drop(a);
        assert!(c.acquire(&key, 2).is_some());
    }
}
