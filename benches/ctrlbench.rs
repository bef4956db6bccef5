//! ctrlbench: the controller at cluster scale. It fills the controller's caches (the same
//! kube-runtime stores the watches fill) with N Ingresses, M Services and E endpoints in
//! EndpointSlices, runs the controller's real reconcile pass once (snapshot, fingerprint,
//! translate, publish into a `RouteHandle` with metrics, Event and status inputs), then
//! applies single changes one at a time, each followed by one pass, and reports the publish
//! latency per change (p50/p99/max) and the process's resident memory.
//!
//! The latency is the controller's work from "the cache holds the change" to "the new table
//! serves"; the debounce the controller waits before it (200 ms by default, to coalesce
//! bursts) is not included.
//!
//! ```text
//! cargo run --release --bin ctrlbench -- [--ingresses 10000] [--services 20000] [--endpoints 50000] [--changes 300]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use wsingress::metrics::Metrics;
use wsingress::routes::RouteHandle;
use wsingress::source::Publisher;
use wsingress::source::kube::{Caches, Reconciler, ingress_version};
use wsingress::source::watch::{Reflected, TrackedWriter, resource_version};
use wsingress::translate::{CONTROLLER_NAME, Defaults};

#[derive(Debug, Clone, Parser)]
#[command(name = "ctrlbench", about = "Controller publish latency and memory at cluster scale")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    ingresses: usize,
    #[arg(long, default_value_t = 20_000)]
    services: usize,
    #[arg(long, default_value_t = 50_000)]
    endpoints: usize,
    /// Single changes applied after the initial load, one pass each.
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
}

/// The p99 per-change target and the memory target from the issue.
const TARGET_P99: Duration = Duration::from_millis(50);
const TARGET_RSS_MIB: f64 = 300.0;

/// A small deterministic generator (xorshift64*), so every run applies the same changes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// Builds the objects the way the API server would hand them over (uid, resourceVersion,
/// generation set) and feeds them to the caches' writers.
struct Cluster {
    args: Args,
    rv: u64,
    ingresses: TrackedWriter<Ingress>,
    services: TrackedWriter<Service>,
    slices: TrackedWriter<EndpointSlice>,
    classes: TrackedWriter<IngressClass>,
    /// Endpoint addresses of each Service's slice.
    endpoints: Vec<Vec<u32>>,
    next_address: u32,
}

fn namespace(args: &Args, i: usize) -> String {
    format!("ns-{}", i % args.namespaces.max(1))
}

fn address(n: u32) -> String {
    let n = n + 1;
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

impl Cluster {
    fn meta(&mut self, namespace: Option<String>, name: String) -> ObjectMeta {
        self.rv += 1;
        ObjectMeta {
            uid: Some(format!("uid-{name}-{}", namespace.as_deref().unwrap_or(""))),
            namespace,
            name: Some(name),
            resource_version: Some(self.rv.to_string()),
            generation: Some(1),
            ..ObjectMeta::default()
        }
    }

    fn ingress(&mut self, i: usize, annotation: Option<&str>) -> Ingress {
        let mut metadata = self.meta(Some(namespace(&self.args, i)), format!("ing-{i}"));
        if let Some(v) = annotation {
            metadata.annotations = Some(BTreeMap::from([("wsingress.io/idle-timeout".to_string(), v.to_string())]));
        }
        // Ingress i routes to Service i: both are in namespace i % namespaces.
        let service = i % self.args.services.max(1);
        Ingress {
            metadata,
            spec: Some(IngressSpec {
                ingress_class_name: Some("wsingress".into()),
                rules: Some(vec![IngressRule {
                    host: Some(format!("h{i}.bench.example.com")),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: format!("svc-{service}"),
                                    port: Some(ServiceBackendPort {
                                        name: Some("ws".into()),
                                        ..ServiceBackendPort::default()
                                    }),
                                }),
                                ..IngressBackend::default()
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        }
    }

    fn service(&mut self, j: usize) -> Service {
        Service {
            metadata: self.meta(Some(namespace(&self.args, j)), format!("svc-{j}")),
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("172.20.{}.{}", (j >> 8) & 255, j & 255)),
                ports: Some(vec![ServicePort { name: Some("ws".into()), port: 80, ..ServicePort::default() }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Service `j`'s slice; `not_ready` marks one of its endpoints not ready.
    fn slice(&mut self, j: usize, not_ready: Option<u32>) -> EndpointSlice {
        let mut metadata = self.meta(Some(namespace(&self.args, j)), format!("svc-{j}-abcde"));
        metadata.labels = Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), format!("svc-{j}"))]));
        let endpoints = self.endpoints[j]
            .iter()
            .map(|&a| {
                let ready = Some(not_ready != Some(a));
                Endpoint {
                    addresses: vec![address(a)],
                    conditions: Some(EndpointConditions { ready, serving: ready, terminating: Some(false) }),
                    ..Endpoint::default()
                }
            })
            .collect();
        EndpointSlice {
            metadata,
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort { name: Some("ws".into()), port: Some(8080), ..EndpointPort::default() }]),
        }
    }

    fn load(args: &Args) -> (Self, Caches) {
        // The writers the watches use: they keep each cache's fingerprint as they go.
        let (ingress_store, ingress_fp, ingresses) = TrackedWriter::new(ingress_version);
        let (service_store, service_fp, services) = TrackedWriter::new(resource_version);
        let (slice_store, slice_fp, slices) = TrackedWriter::new(resource_version);
        let (class_store, class_fp, classes) = TrackedWriter::new(resource_version);
        let mut c = Cluster {
            args: args.clone(),
            rv: 0,
            ingresses,
            services,
            slices,
            classes,
            endpoints: vec![Vec::new(); args.services],
            next_address: 0,
        };
        for e in 0..args.endpoints {
            c.endpoints[e % args.services.max(1)].push(c.next_address);
            c.next_address += 1;
        }
        let class = IngressClass {
            metadata: c.meta(None, "wsingress".into()),
            spec: Some(IngressClassSpec { controller: Some(CONTROLLER_NAME.into()), ..IngressClassSpec::default() }),
        };
        init(&mut c.classes, [class]);
        let services: Vec<Service> = (0..args.services).map(|j| c.service(j)).collect();
        init(&mut c.services, services);
        let slices: Vec<EndpointSlice> = (0..args.services).map(|j| c.slice(j, None)).collect();
        init(&mut c.slices, slices);
        let ingresses: Vec<Ingress> =
            (0..args.ingresses).map(|i| c.ingress(i, i.is_multiple_of(10).then_some("300s"))).collect();
        init(&mut c.ingresses, ingresses);
        let caches = Caches {
            ingresses: Reflected::from_parts(vec![(ingress_store, ingress_fp)]),
            services: Reflected::from_parts(vec![(service_store, service_fp)]),
            endpoint_slices: Reflected::from_parts(vec![(slice_store, slice_fp)]),
            ingress_classes: Reflected::from_parts(vec![(class_store, class_fp)]),
            gateway: None,
        };
        (c, caches)
    }

    /// Apply one change of kind `n % KINDS` to the caches, as a watch event would.
    fn change(&mut self, n: usize, rng: &mut Rng) -> &'static str {
        let services = self.args.services.max(1);
        match n % 6 {
            0 => {
                let j = rng.below(services);
                self.endpoints[j].push(self.next_address);
                self.next_address += 1;
                let s = self.slice(j, None);
                self.slices.apply(&watcher::Event::Apply(s));
                "endpoint added"
            }
            1 => {
                let j = rng.below(services);
                if self.endpoints[j].len() > 1 {
                    self.endpoints[j].pop();
                }
                let s = self.slice(j, None);
                self.slices.apply(&watcher::Event::Apply(s));
                "endpoint removed"
            }
            2 => {
                let j = rng.below(services);
                let first = self.endpoints[j].first().copied();
                let s = self.slice(j, first);
                self.slices.apply(&watcher::Event::Apply(s));
                "endpoint not ready"
            }
            3 => {
                let i = rng.below(self.args.ingresses.max(1));
                let v = format!("{}s", 60 + n);
                let ing = self.ingress(i, Some(&v));
                self.ingresses.apply(&watcher::Event::Apply(ing));
                "ingress annotation"
            }
            4 => {
                let i = self.args.ingresses + n;
                let ing = self.ingress(i, None);
                self.ingresses.apply(&watcher::Event::Apply(ing));
                "ingress added"
            }
            _ => {
                let i = self.args.ingresses + n - 1;
                let ing = self.ingress(i, None);
                self.ingresses.apply(&watcher::Event::Delete(ing));
                "ingress deleted"
            }
        }
    }

    /// An Ingress status update (resourceVersion changes, generation does not): no routing
    /// input changed, so the pass must not translate.
    fn status_only(&mut self, i: usize) {
        let annotation = i.is_multiple_of(10).then_some("300s");
        let mut ing = self.ingress(i, annotation);
        ing.status = Some(Default::default());
        self.ingresses.apply(&watcher::Event::Apply(ing));
    }
}

fn init<K>(writer: &mut TrackedWriter<K>, objects: impl IntoIterator<Item = K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply(&watcher::Event::Init);
    for o in objects {
        writer.apply(&watcher::Event::InitApply(o));
    }
    writer.apply(&watcher::Event::InitDone);
}

/// Resident memory of this process, MiB (Linux `/proc/self/status`).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Debug)]
struct Report {
    load: Duration,
    first_pass: Duration,
    rss_loaded: f64,
    rss_after: f64,
    per_change: Vec<Duration>,
    by_kind: BTreeMap<&'static str, Vec<Duration>>,
    noop: Vec<Duration>,
    routes: usize,
    endpoints: usize,
}

fn run(args: &Args) -> Result<Report, String> {
    let started = Instant::now();
    let (mut cluster, caches) = Cluster::load(args);
    let load = started.elapsed();
    let routes = Arc::new(RouteHandle::new());
    let metrics = Arc::new(Metrics::new().map_err(|e| e.to_string())?);
    let publisher = Publisher::new(routes.clone(), metrics, "kubernetes");
    let (mut reconciler, _outputs) = Reconciler::new(Defaults::default(), publisher);
    let t = Instant::now();
    if !reconciler.reconcile(&caches) {
        return Err("the first pass published nothing".into());
    }
    let first_pass = t.elapsed();
    let rss_loaded = rss_mib();
    let table = routes.load();
    let route_count = table.routes().count();
    let endpoint_count = table.routes().map(|r| r.pool.endpoints().len()).sum();
    drop(table);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut per_change = Vec::with_capacity(args.changes);
    let mut by_kind: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut noop = Vec::new();
    for n in 0..args.changes {
        let generation = routes.generation();
        let kind = cluster.change(n, &mut rng);
        let t = Instant::now();
        let published = reconciler.reconcile(&caches);
        let took = t.elapsed();
        if !published || routes.generation() != generation + 1 {
            return Err(format!("change {n} ({kind}) was not published"));
        }
        per_change.push(took);
        by_kind.entry(kind).or_default().push(took);
        if n.is_multiple_of(10) {
            cluster.status_only(rng.below(args.ingresses.max(1)));
            let t = Instant::now();
            if reconciler.reconcile(&caches) {
                return Err("an Ingress status update translated again".into());
            }
            noop.push(t.elapsed());
        }
    }
    per_change.sort();
    noop.sort();
    for v in by_kind.values_mut() {
        v.sort();
    }
    Ok(Report {
        load,
        first_pass,
        rss_loaded,
        rss_after: rss_mib(),
        per_change,
        by_kind,
        noop,
        routes: route_count,
        endpoints: endpoint_count,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctrlbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let p50 = percentile(&report.per_change, 0.5);
    let p99 = percentile(&report.per_change, 0.99);
    let max = report.per_change.last().copied().unwrap_or_default();
    println!(
        "ctrlbench: {} Ingresses, {} Services, {} endpoints in {} namespaces -> {} routes, {} pool endpoints",
        args.ingresses, args.services, args.endpoints, args.namespaces, report.routes, report.endpoints
    );
    println!("caches filled in {}; first pass (translate + publish) {}", ms(report.load), ms(report.first_pass));
    println!();
    println!("| change | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (kind, v) in &report.by_kind {
        let last = v.last().copied().unwrap_or_default();
        println!("| {kind} | {} | {} | {} | {} |", v.len(), ms(percentile(v, 0.5)), ms(percentile(v, 0.99)), ms(last));
    }
    println!("| **every change** | {} | {} | {} | {} |", report.per_change.len(), ms(p50), ms(p99), ms(max));
    let noop_p99 = percentile(&report.noop, 0.99);
    println!(
        "| status update (no translation) | {} | {} | {} | |",
        report.noop.len(),
        ms(percentile(&report.noop, 0.5)),
        ms(noop_p99)
    );
    println!();
    println!(
        "resident memory: {:.0} MiB after the first pass, {:.0} MiB after the changes",
        report.rss_loaded, report.rss_after
    );
    let rss = report.rss_loaded.max(report.rss_after);
    let p99_ok = p99 <= TARGET_P99;
    let rss_ok = rss <= TARGET_RSS_MIB;
    println!(
        "target: p99 <= {} per change ({}), <= {TARGET_RSS_MIB:.0} MiB resident ({})",
        ms(TARGET_P99),
        if p99_ok { "met" } else { "MISSED" },
        if rss_ok { "met" } else { "MISSED" }
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cluster_publishes_every_change_and_skips_status_updates() {
        let args = Args { ingresses: 60, services: 120, endpoints: 300, changes: 36, namespaces: 5 };
        let r = run(&args).unwrap();
        assert_eq!(r.routes, 60);
        // 300 endpoints over 120 Services: Services 0..60 (those the Ingresses use) hold 3 each.
        assert_eq!(r.endpoints, 60 * 3);
        assert_eq!(r.per_change.len(), 36);
        assert_eq!(r.by_kind.len(), 6, "{:?}", r.by_kind.keys());
        assert_eq!(r.noop.len(), 4);
        assert!(r.rss_after > 0.0);
    }
}
