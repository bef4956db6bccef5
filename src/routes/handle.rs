//! Publishing and reading route snapshots. Readers never lock: a new connection loads the
//! current `Arc<RouteTable>` (one atomic operation) and keeps it; `publish` builds the next
//! table aside, carries live endpoint state over, swaps it in, then starts the drain of
//! endpoints that left every pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use super::RouteTable;

#[derive(Debug)]
pub struct RouteHandle {
    current: ArcSwap<RouteTable>,
    generation: AtomicU64,
    published: AtomicBool,
    /// Serialises publishers (sources are few and slow; readers are unaffected).
    publish_lock: std::sync::Mutex<()>,
}

impl Default for RouteHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteHandle {
    /// An empty table (every request 404) until the first publish.
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(RouteTable::default()),
            generation: AtomicU64::new(0),
            published: AtomicBool::new(false),
            publish_lock: std::sync::Mutex::new(()),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Whether any source has published a table yet.
    pub fn has_published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Swap `table` in and return its generation. Endpoints absent from the new table get
    /// their drain signal; endpoints present in both keep counters and signals.
    pub fn publish(&self, table: RouteTable) -> u64 {
        let _serial = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current.load_full();
        let mut next = table.adopt_live(&previous);
        let generation = self.generation.load(Ordering::Acquire) + 1;
        next.generation = generation;
        let removed = previous.removed_in(&next);
        self.current.store(Arc::new(next));
        self.generation.store(generation, Ordering::Release);
        self.published.store(true, Ordering::Release);
        for live in removed {
            live.removed().cancel();
        }
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Endpoint, Pool, Route, RouteSettings};

    fn table(addrs: &[&str]) -> RouteTable {
        RouteTable::single(Route {
            id: "static/upstream".into(),
            backend: "static:upstream".into(),
            pool: Pool::new(addrs.iter().map(|a| Endpoint::new(a.parse().unwrap(), true)).collect()),
            settings: RouteSettings::default(),
        })
    }

    #[test]
    fn publish_swaps_and_signals_removed_endpoints() {
        let h = RouteHandle::new();
        assert!(!h.has_published());
        assert_eq!(h.publish(table(&["127.0.0.1:1", "127.0.0.1:2"])), 1);
        let first = h.load();
        let gone = first.default_route().unwrap().pool.endpoints()[1].live.clone();
        let kept = first.default_route().unwrap().pool.endpoints()[0].live.clone();
        assert_eq!(h.publish(table(&["127.0.0.1:1"])), 2);
        assert!(gone.is_removed());
        assert!(!kept.is_removed());
        // The old snapshot a connection holds is untouched.
        assert_eq!(first.default_route().unwrap().pool.endpoints().len(), 2);
        assert_eq!(h.load().generation, 2);
        assert!(h.has_published());
    }
}
