//! Publishing and reading route snapshots. Readers never lock: a new connection loads the
//! current `Arc<RouteTable>` (one atomic operation) and keeps it; `publish` builds the next
//! table aside, carries live endpoint state over, swaps it in, then applies each endpoint's
//! lifecycle: terminating endpoints and endpoints that left every pool start draining, not
//! ready ones start their not-ready clock (see [`RouteHandle::drain_unready`]), ready ones are
//! re-armed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{EndpointState, RouteTable};

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
        let next = Arc::new(next);
        self.current.store(next.clone());
        self.generation.store(generation, Ordering::Release);
        self.published.store(true, Ordering::Release);
        // Lifecycle after the swap, so no new tunnel lands on an endpoint drained here.
        // Ready and not-ready first, then terminating: an address terminating in any pool drains.
        let now = Instant::now();
        let endpoints = || next.routes().flat_map(|r| r.pool.endpoints());
        for ep in endpoints().filter(|e| e.state != EndpointState::Terminating) {
            ep.live.observe(ep.state, now);
        }
        for ep in endpoints().filter(|e| e.state == EndpointState::Terminating) {
            ep.live.observe(ep.state, now);
        }
        for live in removed {
            live.drain();
        }
        generation
    }

    /// Drain the endpoints of the current table that have been not ready for `after` or
    /// longer (`--unready-drain-after`); returns how many this call drained. The controller
    /// calls it periodically; an endpoint that is ready again in a later table is re-armed.
    pub fn drain_unready(&self, after: Duration) -> usize {
        let Some(limit) = Instant::now().checked_sub(after) else { return 0 };
        let table = self.current.load();
        table.routes().flat_map(|r| r.pool.endpoints()).filter(|e| e.live.drain_if_unready_since(limit)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Endpoint, EndpointState, Pool, Route, RouteSettings};

    fn table(addrs: &[&str]) -> RouteTable {
        RouteTable::single(Route {
            id: "static/upstream".into(),
            backend: "static:upstream".into(),
            pool: Pool::new(addrs.iter().map(|a| Endpoint::new(a.parse().unwrap(), true)).collect()),
            settings: RouteSettings::default(),
        })
    }

    fn with_states(eps: &[(&str, EndpointState)]) -> RouteTable {
        RouteTable::single(Route {
            id: "default/chat".into(),
            backend: "chat:80".into(),
            pool: Pool::new(eps.iter().map(|(a, s)| Endpoint::with_state(a.parse().unwrap(), *s)).collect()),
            settings: RouteSettings::default(),
        })
    }

    fn live_of(h: &RouteHandle, i: usize) -> Arc<crate::routes::EndpointLive> {
        h.load().default_route().unwrap().pool.endpoints()[i].live.clone()
    }

    #[test]
    fn a_readiness_flap_keeps_live_state_and_drains_nothing() {
        use EndpointState::*;
        let h = RouteHandle::new();
        h.publish(with_states(&[("10.0.0.1:80", Ready), ("10.0.0.2:80", Ready)]));
        let live = live_of(&h, 0);
        let tunnel = live.removed();
        let _open = live.track();
        h.publish(with_states(&[("10.0.0.1:80", NotReady), ("10.0.0.2:80", Ready)]));
        assert!(Arc::ptr_eq(&live, &live_of(&h, 0)), "the same live state while not ready");
        assert_eq!(h.load().default_route().unwrap().pool.ready_len(), 1, "not ready: no new tunnels");
        assert!(live.unready_since().is_some());
        assert!(!tunnel.is_cancelled(), "not ready does not drain");
        assert_eq!(h.drain_unready(Duration::from_secs(3600)), 0);
        h.publish(with_states(&[("10.0.0.1:80", Ready), ("10.0.0.2:80", Ready)]));
        assert!(Arc::ptr_eq(&live, &live_of(&h, 0)));
        assert_eq!(live.active(), 1, "its count survived the flap");
        assert!(live.unready_since().is_none());
        assert!(!tunnel.is_cancelled());
    }

    #[test]
    fn terminating_drains_at_once_and_unready_only_after_the_limit() {
        use EndpointState::*;
        let h = RouteHandle::new();
        h.publish(with_states(&[("10.0.0.1:80", Ready), ("10.0.0.2:80", Ready)]));
        let (a, b) = (live_of(&h, 0), live_of(&h, 1));
        let (tunnel_a, tunnel_b) = (a.removed(), b.removed());
        h.publish(with_states(&[("10.0.0.1:80", Terminating), ("10.0.0.2:80", NotReady)]));
        assert!(tunnel_a.is_cancelled(), "terminating drains now");
        assert!(!tunnel_b.is_cancelled());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(h.drain_unready(Duration::from_secs(60)), 0, "not yet");
        assert_eq!(h.drain_unready(Duration::from_millis(20)), 1);
        assert!(tunnel_b.is_cancelled(), "not ready for longer than the limit: drained");
        assert_eq!(h.drain_unready(Duration::from_millis(20)), 0, "once");
        // Back to ready: the drain already sent stays, tunnels opened from now are not drained.
        h.publish(with_states(&[("10.0.0.1:80", Terminating), ("10.0.0.2:80", Ready)]));
        let fresh = b.removed();
        assert!(!fresh.is_cancelled() && !b.is_removed());
        assert!(tunnel_b.is_cancelled());
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
