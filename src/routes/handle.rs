//! Publishing and reading route snapshots. Readers never lock: a new connection loads the
//! current `Arc<RouteTable>` (one atomic operation) and keeps it; `publish` takes the next
//! table built aside, carries live endpoint state over (from an index of the current
//! table's endpoints, updated route by route), swaps it in, then applies each endpoint's
//! lifecycle: terminating endpoints and endpoints that left every pool start draining, not
//! ready ones start their not-ready clock (see [`RouteHandle::drain_unready`]), ready ones are
//! re-armed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use arc_swap::ArcSwap;

use super::{EndpointLive, EndpointState, Pool, Route, RouteTable, Rule};

#[derive(Debug)]
pub struct RouteHandle {
    current: ArcSwap<RouteTable>,
    generation: AtomicU64,
    published: AtomicBool,
    /// Serialises publishers (sources are few and slow; readers are unaffected) and holds the
    /// index of the current table's endpoints.
    publish_lock: std::sync::Mutex<EndpointIndex>,
}

/// Every address in the current table: how many of its routes hold it, and its one live
/// state. Kept up to date route by route, so a publish costs what changed, not the table.
#[derive(Debug, Default)]
struct EndpointIndex {
    by_addr: AHashMap<SocketAddr, (usize, Arc<EndpointLive>)>,
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
            publish_lock: std::sync::Mutex::new(EndpointIndex::default()),
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

    /// Swap `table` in and return its generation. A route of `table` that is the very same
    /// `Arc` as one of the current table (a source may reuse routes it did not rebuild) is
    /// carried over untouched; the endpoints of every other route take the live state of
    /// their address (counters, ejection, drain signal) from the current table, so nothing is
    /// lost over a reload. Then endpoints absent from the new table, and terminating ones,
    /// start draining; not-ready ones start their not-ready clock; ready ones are re-armed.
    pub fn publish(&self, table: RouteTable) -> u64 {
        let mut index = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current.load_full();
        let carried: AHashSet<*const Route> = previous.routes().map(Arc::as_ptr).collect();
        let mut next = adopt_live(table, &carried, &mut index);
        let generation = self.generation.load(Ordering::Acquire) + 1;
        next.generation = generation;

        let kept: AHashSet<*const Route> = next.routes().map(Arc::as_ptr).collect();
        let added: Vec<Arc<Route>> = next.routes().filter(|r| !carried.contains(&Arc::as_ptr(r))).cloned().collect();
        for r in &added {
            for ep in r.pool.endpoints() {
                if let Some(entry) = index.by_addr.get_mut(&ep.addr) {
                    entry.0 += 1;
                }
            }
        }
        let mut removed: Vec<Arc<EndpointLive>> = Vec::new();
        for r in previous.routes().filter(|r| !kept.contains(&Arc::as_ptr(r))) {
            for ep in r.pool.endpoints() {
                if let Some(entry) = index.by_addr.get_mut(&ep.addr) {
                    entry.0 = entry.0.saturating_sub(1);
                    if entry.0 == 0
                        && let Some((_, live)) = index.by_addr.remove(&ep.addr)
                    {
                        removed.push(live);
                    }
                }
            }
        }

        self.current.store(Arc::new(next));
        self.generation.store(generation, Ordering::Release);
        self.published.store(true, Ordering::Release);
        // Lifecycle after the swap, so no new tunnel lands on an endpoint drained here. Only
        // the new routes: a carried-over route's endpoints are in the state they were.
        // Ready and not-ready first, then terminating: an address terminating in any pool drains.
        let now = Instant::now();
        let endpoints = || added.iter().flat_map(|r| r.pool.endpoints());
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

/// `table` with each route either carried over (the same `Arc` as in the current table) or
/// linked to the live state of its addresses in `index`; a new address enters the index
/// (with no holders yet) with the live state of its first endpoint.
fn adopt_live(table: RouteTable, carried: &AHashSet<*const Route>, index: &mut EndpointIndex) -> RouteTable {
    // Routes are shared between rules; convert each once and remap by pointer.
    let mut remap: AHashMap<*const Route, Arc<Route>> = AHashMap::new();
    let mut convert = |r: &Arc<Route>| -> Arc<Route> {
        let p = Arc::as_ptr(r);
        if carried.contains(&p) {
            return r.clone();
        }
        remap
            .entry(p)
            .or_insert_with(|| {
                let mut relink = false;
                for ep in r.pool.endpoints() {
                    let (_, live) = index.by_addr.entry(ep.addr).or_insert_with(|| (0, ep.live.clone()));
                    relink |= !Arc::ptr_eq(live, &ep.live);
                }
                if !relink {
                    return r.clone();
                }
                let pool = r.pool.relinked(|addr| index.by_addr.get(&addr).map(|(_, l)| l.clone()));
                Arc::new(Route { id: r.id.clone(), backend: r.backend.clone(), pool, settings: r.settings.clone() })
            })
            .clone()
    };
    // A Gateway API rule's route holds the routes of its split: those are linked too, and the
    // rule's route rebuilt around them when one changed (once per route, by pointer).
    let mut fronts: AHashMap<*const Route, Arc<Route>> = AHashMap::new();
    let rules = table
        .rules
        .iter()
        .map(|rule| {
            let split = rule.route.settings.gateway.as_ref().filter(|g| !g.backends.is_empty());
            let p = Arc::as_ptr(&rule.route);
            let route = match split {
                None => convert(&rule.route),
                Some(_) if carried.contains(&p) => rule.route.clone(),
                Some(g) => fronts
                    .entry(p)
                    .or_insert_with(|| {
                        let backends: Vec<(u32, Arc<Route>)> =
                            g.backends.iter().map(|(w, b)| (*w, convert(b))).collect();
                        if backends.iter().zip(&g.backends).all(|(a, b)| Arc::ptr_eq(&a.1, &b.1)) {
                            return rule.route.clone();
                        }
                        let mut settings = rule.route.settings.clone();
                        settings.gateway = Some(Arc::new(g.with_backends(backends)));
                        let r = &rule.route;
                        Arc::new(Route {
                            id: r.id.clone(),
                            backend: r.backend.clone(),
                            pool: Pool::new(Vec::new()),
                            settings,
                        })
                    })
                    .clone(),
            };
            Rule { host: rule.host.clone(), path: rule.path.clone(), route }
        })
        .collect();
    let default_route = table.default_route.as_ref().map(&mut convert);
    let mut next = RouteTable::sorted(rules, default_route);
    next.generation = table.generation;
    next
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
    fn reload_keeps_live_state_and_carries_unchanged_routes_over() {
        let h = RouteHandle::new();
        h.publish(table(&["10.0.0.1:80", "10.0.0.2:80"]));
        let first = h.load();
        let live1 = live_of(&h, 0);
        let gone = live_of(&h, 1);
        let _guard = live1.track();
        h.publish(table(&["10.0.0.1:80", "10.0.0.3:80"]));
        let adopted = live_of(&h, 0);
        assert!(Arc::ptr_eq(&adopted, &live1), "same address, same live state");
        assert_eq!(adopted.active(), 1);
        assert!(gone.is_removed() && !live1.is_removed());
        // A route passed in again as the same Arc is carried over untouched.
        let current = h.load();
        let route = current.default_route().unwrap().clone();
        h.publish(RouteTable::new(Vec::new(), Some(route.clone())));
        assert!(Arc::ptr_eq(h.load().default_route().unwrap(), &route));
        // An address shared by two routes drains only when the last one lets go.
        let shared = |addrs: &[&str], id: &str| {
            Arc::new(Route {
                id: id.into(),
                backend: "b:80".into(),
                pool: Pool::new(addrs.iter().map(|a| Endpoint::new(a.parse().unwrap(), true)).collect()),
                settings: RouteSettings::default(),
            })
        };
        let rule = |host: &str, route: Arc<Route>| crate::routes::Rule {
            host: crate::routes::HostMatch::parse(host),
            path: crate::routes::PathMatch::prefix("/"),
            route,
        };
        h.publish(RouteTable::new(
            vec![rule("a.test", shared(&["10.0.0.9:80"], "x/a")), rule("b.test", shared(&["10.0.0.9:80"], "x/b"))],
            None,
        ));
        let t = h.load();
        let (ra, rb) = (t.find(Some("a.test"), "/").unwrap(), t.find(Some("b.test"), "/").unwrap());
        let nine = ra.pool.endpoints()[0].live.clone();
        assert!(Arc::ptr_eq(&nine, &rb.pool.endpoints()[0].live), "one live state per address");
        h.publish(RouteTable::new(vec![rule("b.test", rb.clone())], None));
        assert!(!nine.is_removed(), "still in b");
        h.publish(RouteTable::new(Vec::new(), None));
        assert!(nine.is_removed());
        drop(first);
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
