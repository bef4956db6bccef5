//! Active rebalancing (`wsingress.io/rebalance: "on"`): WebSocket clients never reconnect on
//! their own, so endpoints that join a pool get no share of the existing tunnels. When the
//! busiest ready endpoint holds more than `threshold` × the pool mean, this closes the oldest
//! tunnels of the endpoints above that target, one at a time, until every endpoint is within
//! it. Each picked tunnel closes with 1001 `rebalancing` at its next frame boundary (the relay
//! does that); the client reconnects and least-conn (or round-robin) sends it to an emptier
//! endpoint.
//!
//! Limits: closes are paced at least `WINDOW / max(1, max_rate × pool tunnels)` apart, with
//! 5–25% jitter on each gap, so no 10 s window ever holds more than the rate allows; a tunnel
//! younger than `min_age` is never picked.
//!
//! Replicas need no coordination: each sees only its own tunnels and moves its own clients
//! towards its own even share. A reconnect may reach another replica, which counts it on the
//! endpoint its own balancer chose, the emptier one for it; every replica's counts converge,
//! so their sum does. Each close strictly lowers the sum of squares of the replica's counts
//! (a tunnel moves from above the target to below it), so the process ends.
//!
//! Decides only: which tunnel, when. It never sends bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::routes::{Rebalance, Route, RouteHandle};

/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How often the pools are looked at.
pub const TICK: Duration = Duration::from_millis(25);
/// How often the per-endpoint tunnel gauges are refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// Closes allowed per [`WINDOW`]: `max(1, floor(total × rate))`.
pub fn closes_per_window(total: usize, max_rate_bp: u32) -> usize {
    (total.saturating_mul(max_rate_bp as usize) / 10_000).max(1)
}

/// The least gap between two closes of one pool.
pub fn spacing(total: usize, max_rate_bp: u32) -> Duration {
    WINDOW / u32::try_from(closes_per_window(total, max_rate_bp)).unwrap_or(u32::MAX)
}

/// Whether `count` is above the target `mean × threshold` (in integers: no rounding).
pub fn above_target(count: usize, total: usize, n: usize, threshold_milli: u32) -> bool {
    (count as u128) * (n as u128) * 1000 > (total as u128) * u128::from(threshold_milli)
}

/// The endpoints above target, busiest first (their positions in `counts`); empty when the
/// busiest is within the threshold (or there is nothing to balance).
pub fn over_target(counts: &[usize], threshold_milli: u32) -> Vec<usize> {
    let n = counts.len();
    let total: usize = counts.iter().sum();
    if n < 2 || total == 0 {
        return Vec::new();
    }
    let mut over: Vec<usize> = (0..n).filter(|&i| above_target(counts[i], total, n, threshold_milli)).collect();
    over.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    over
}

/// The rebalancing loop's state: when each pool may close next, and the gauge series it set.
#[derive(Debug)]
pub struct Rebalancer {
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    /// Per (route, backend): the earliest instant of its next close.
    next_close: HashMap<(String, String), Instant>,
    /// `wsingress_endpoint_tunnels` series currently set.
    series: HashSet<[String; 3]>,
    gauges_at: Option<Instant>,
    /// The rebalancing routes of the table generation last seen (a cluster may publish tens
    /// of thousands of routes; only these are looked at per tick).
    enabled: (u64, Vec<Arc<Route>>),
    rng: u64,
}

impl Rebalancer {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let rng = RandomState::new().hash_one(Instant::now()) | 1;
        Self {
            routes,
            metrics,
            next_close: HashMap::new(),
            series: HashSet::new(),
            gauges_at: None,
            enabled: (u64::MAX, Vec::new()),
            rng,
        }
    }

    /// A uniform draw in `[0, 1)` (xorshift64: jitter, not secrets).
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One look at every rebalancing pool; returns the number of tunnels picked.
    pub fn tick(&mut self, now: Instant) -> usize {
        let table = self.routes.load();
        if self.enabled.0 != table.generation {
            let list = table.routes().filter(|r| r.settings.rebalance.enabled).cloned().collect();
            self.enabled = (table.generation, list);
        }
        drop(table);
        let routes = self.enabled.1.clone();
        let gauges = self.gauges_at.is_none_or(|at| now >= at);
        if gauges {
            self.gauges_at = Some(now + GAUGE_EVERY);
        }
        let mut seen: HashSet<[String; 3]> = HashSet::new();
        let mut live_keys: HashSet<(String, String)> = HashSet::new();
        let mut picked = 0;
        for route in &routes {
            let policy = route.settings.rebalance;
            if gauges {
                self.gauges(route, &mut seen);
            }
            let key = (route.id.clone(), route.backend.clone());
            let due = self.next_close.get(&key).is_none_or(|&at| now >= at);
            live_keys.insert(key.clone());
            if due && let Some(total) = pick_one(route, policy, now) {
                picked += 1;
                let gap = spacing(total, policy.max_rate_bp).mul_f64(1.05 + 0.2 * self.unit());
                self.next_close.insert(key, now + gap);
            }
        }
        self.next_close.retain(|k, _| live_keys.contains(k));
        if gauges {
            for gone in self.series.difference(&seen) {
                let _ = self.metrics.endpoint_tunnels.remove_label_values(&[&gone[0], &gone[1], &gone[2]]);
            }
            self.series = seen;
        }
        picked
    }

    fn gauges(&self, route: &Route, seen: &mut HashSet<[String; 3]>) {
        for ep in route.pool.endpoints() {
            let name = ep.target.clone().unwrap_or_else(|| ep.addr.to_string());
            let labels = [route.id.clone(), route.backend.clone(), name];
            self.metrics
                .endpoint_tunnels
                .with_label_values(&[&labels[0], &labels[1], &labels[2]])
                .set(ep.live.active() as i64);
            seen.insert(labels);
        }
    }
}

/// Pick the oldest eligible tunnel of the busiest over-target endpoint of `route`'s pool, if
/// the pool is unbalanced; returns the pool's tunnel count when one was picked.
fn pick_one(route: &Route, policy: Rebalance, now: Instant) -> Option<usize> {
    let counts: Vec<usize> = route.pool.ready().map(|e| e.live.rebalanceable_len()).collect();
    let total: usize = counts.iter().sum();
    let opened_by = now.checked_sub(policy.min_age)?;
    for i in over_target(&counts, policy.threshold_milli) {
        if route.pool.ready_at(i).is_some_and(|e| e.live.close_oldest(opened_by)) {
            return Some(total);
        }
    }
    None
}

/// Run until `stop`: look at the pools every [`TICK`].
pub async fn run(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut rebalancer = Rebalancer::new(routes, metrics);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let picked = rebalancer.tick(Instant::now());
        if picked > 0 {
            tracing::debug!(tunnels = picked, "rebalancing: tunnels picked to close with 1001");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Endpoint, Pool, RouteSettings, RouteTable};

    #[test]
    fn the_rate_is_a_share_per_window_and_at_least_one() {
        assert_eq!(closes_per_window(600, 200), 12);
        assert_eq!(closes_per_window(10, 200), 1);
        assert_eq!(closes_per_window(0, 200), 1);
        assert_eq!(closes_per_window(600, 1000), 60);
        assert_eq!(spacing(600, 1000), Duration::from_millis(166) + Duration::from_nanos(666_666));
        assert_eq!(spacing(10, 200), WINDOW);
    }

    #[test]
    fn the_trigger_and_target_are_the_mean_times_the_threshold() {
        // 300/300/0: mean 200, target 250.
        assert_eq!(over_target(&[300, 300, 0], 1250), vec![0, 1]);
        assert_eq!(over_target(&[250, 250, 100], 1250), Vec::<usize>::new(), "at the target is within it");
        assert_eq!(over_target(&[251, 249, 100], 1250), vec![0]);
        assert_eq!(over_target(&[5, 0], 1250), vec![0]);
        assert_eq!(over_target(&[7], 1250), Vec::<usize>::new(), "one endpoint: nothing to balance");
        assert_eq!(over_target(&[0, 0], 1250), Vec::<usize>::new());
        assert_eq!(over_target(&[10, 30, 20], 1250), vec![1]);
    }

    /// Simulate a pool where every closed client reconnects to the least-loaded endpoint: the
    /// closes needed match the README's arithmetic (excess over the target).
    #[test]
    fn reconnects_to_least_conn_converge_in_the_expected_closes() {
        let mut counts = vec![300usize, 300, 0];
        let mut closes = 0;
        while let Some(&i) = over_target(&counts, 1250).first() {
            counts[i] -= 1;
            let j = (0..counts.len()).min_by_key(|&j| counts[j]).unwrap();
            counts[j] += 1;
            closes += 1;
        }
        assert_eq!(closes, 100);
        assert_eq!(counts, vec![250, 250, 100]);
    }

    fn route(pool: Pool, rebalance: Rebalance) -> Route {
        Route {
            id: "default/chat".into(),
            backend: "chat:80".into(),
            pool,
            settings: RouteSettings { rebalance, ..Default::default() },
        }
    }

    #[tokio::test]
    async fn picks_the_oldest_old_enough_tunnels_paced_and_only_when_on() {
        let pool = Pool::new(vec![
            Endpoint::new("10.0.0.1:80".parse().unwrap(), true),
            Endpoint::new("10.0.0.2:80".parse().unwrap(), true),
        ]);
        let t0 = Instant::now();
        let busy = pool.ready_at(0).unwrap().live.clone();
        let mut held = Vec::new();
        for k in 0..10u32 {
            held.push(busy.rebalanceable(t0 + Duration::from_millis(u64::from(k))));
        }
        let policy = Rebalance { enabled: true, threshold_milli: 1250, max_rate_bp: 2000, min_age: Duration::ZERO };
        let routes = Arc::new(RouteHandle::new());
        routes.publish(RouteTable::single(route(pool, policy)));
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut r = Rebalancer::new(routes.clone(), metrics.clone());
        let now = t0 + Duration::from_secs(1);
        assert_eq!(r.tick(now), 1);
        assert!(held[0].0.is_cancelled(), "the oldest first");
        assert!(!held[1].0.is_cancelled());
        // 10 tunnels at 20%: 2 per 10 s, so the next close waits at least 5 s.
        assert_eq!(r.tick(now + Duration::from_secs(5) - Duration::from_millis(1)), 0);
        assert_eq!(r.tick(now + Duration::from_secs(7)), 1);
        assert!(held[1].0.is_cancelled());
        // A dropped tunnel leaves the registry.
        drop(held.pop());
        assert_eq!(busy.rebalanceable_len(), 7);
        // Too young: nothing picked.
        let young = Rebalance { min_age: Duration::from_secs(3600), ..policy };
        let pool = Pool::new(vec![
            Endpoint::new("10.0.0.1:80".parse().unwrap(), true),
            Endpoint::new("10.0.0.2:80".parse().unwrap(), true),
        ]);
        let _h = pool.ready_at(0).unwrap().live.rebalanceable(Instant::now());
        routes.publish(RouteTable::single(route(pool, young)));
        assert_eq!(r.tick(Instant::now() + Duration::from_secs(60)), 0);
        // Off: nothing, however unbalanced.
        let pool = Pool::new(vec![
            Endpoint::new("10.0.0.1:80".parse().unwrap(), true),
            Endpoint::new("10.0.0.2:80".parse().unwrap(), true),
        ]);
        let _h = pool.ready_at(0).unwrap().live.rebalanceable(t0);
        routes.publish(RouteTable::single(route(pool, Rebalance { enabled: false, ..policy })));
        assert_eq!(r.tick(Instant::now() + Duration::from_secs(120)), 0);
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(!text.contains("wsingress_endpoint_tunnels{"), "series removed with the route:\n{text}");
    }
}
