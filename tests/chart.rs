//! The Helm chart and manifests/*.yaml, rendered and parsed into k8s-openapi types, checked
//! against the code they deploy: RBAC is exactly `source::rbac::ACCESS`, every wsingress
//! container's args are accepted by the real CLI parser, probes hit the admin port's real paths,
//! the grace period outlasts the shutdown timeout, and the security context is locked down.
//!
//! Needs `helm` (scripts/install-tools.sh puts it in .tools/bin); without it the chart tests
//! print why they skip, unless WSINGRESS_REQUIRE_TOOLS=1 makes that a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Probe, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use wsingress::cli::{Cli, Command, EchoArgs, ServeArgs};
use wsingress::source::rbac::ACCESS;

const RELEASE: &str = "wsingress";
const NAMESPACE: &str = "wsingress-system";
const NONROOT_UID: i64 = 65532;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// helm from WSINGRESS_HELM, ./.tools/bin, or PATH; `None` (with the reason printed) if absent.
fn helm() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("WSINGRESS_HELM") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(root().join(".tools/bin/helm"));
    candidates.push(PathBuf::from("helm"));
    for candidate in candidates {
        let works =
            Process::new(&candidate).arg("version").arg("--short").output().is_ok_and(|out| out.status.success());
        if works {
            return Some(candidate);
        }
    }
    let reason = "skipped: helm not found (WSINGRESS_HELM, .tools/bin/helm, PATH); \
                  run scripts/install-tools.sh helm";
    if std::env::var("WSINGRESS_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{reason} (WSINGRESS_REQUIRE_TOOLS=1)");
    }
    println!("{reason}");
    None
}

/// Every document of a multi-document YAML stream, empty ones dropped.
struct Docs(Vec<serde_yaml::Value>);

impl Docs {
    fn parse(text: &str, origin: &str) -> Docs {
        let mut docs = Vec::new();
        for document in serde_yaml::Deserializer::from_str(text) {
            let value: serde_yaml::Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
            if !value.is_null() {
                docs.push(value);
            }
        }
        Docs(docs)
    }

    /// Every document of `T`'s apiVersion and kind, parsed into `T`.
    fn all<T: Resource + DeserializeOwned>(&self) -> Vec<T> {
        self.0
            .iter()
            .filter(|doc| doc["kind"].as_str() == Some(T::KIND) && doc["apiVersion"].as_str() == Some(T::API_VERSION))
            .map(|doc| {
                serde_yaml::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{doc:?}", T::KIND))
            })
            .collect()
    }

    fn one<T: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned>(&self, name: &str) -> T {
        let mut found: Vec<T> = self.all::<T>().into_iter().filter(|object| object_name(object) == name).collect();
        assert_eq!(found.len(), 1, "expected exactly one {} {name}", T::KIND);
        found.remove(0)
    }

    fn raw(&self, api_version: &str, kind: &str) -> Vec<&serde_yaml::Value> {
        self.0
            .iter()
            .filter(|doc| doc["kind"].as_str() == Some(kind) && doc["apiVersion"].as_str() == Some(api_version))
            .collect()
    }

    fn kinds(&self) -> BTreeSet<String> {
        self.0
            .iter()
            .map(|doc| format!("{}/{}", doc["apiVersion"].as_str().unwrap_or("?"), doc["kind"].as_str().unwrap_or("?")))
            .collect()
    }
}

fn object_name<T: Metadata<Ty = ObjectMeta>>(object: &T) -> String {
    object.metadata().name.clone().unwrap_or_default()
}

/// `helm template` with these flags; `None` when helm is missing.
fn render(flags: &[&str]) -> Option<Docs> {
    let helm = helm()?;
    let homes = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-homes");
    let out = Process::new(&helm)
        .current_dir(root())
        .env("HELM_CACHE_HOME", homes.join("cache"))
        .env("HELM_CONFIG_HOME", homes.join("config"))
        .env("HELM_DATA_HOME", homes.join("data"))
        .args(["template", RELEASE, "charts/wsingress", "--namespace", NAMESPACE])
        .args(flags)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template {flags:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("helm output is UTF-8");
    Some(Docs::parse(&text, &format!("helm template {flags:?}")))
}

fn manifest(name: &str) -> Docs {
    let path = root().join("manifests").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Docs::parse(&text, name)
}

/// (api group, resource, verb, own namespace only) for every grant.
type Grant = (String, String, String, bool);

fn grants_of(rules: &[PolicyRule], own_namespace_only: bool) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none(), "resourceNames are not in ACCESS: {rule:?}");
        assert!(rule.non_resource_urls.is_none(), "nonResourceURLs are not in ACCESS: {rule:?}");
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(!groups.is_empty() && !resources.is_empty(), "empty rule {rule:?}");
        for group in &groups {
            for resource in &resources {
                for verb in &rule.verbs {
                    for value in [group, resource, verb] {
                        assert_ne!(value, "*", "wildcards grant more than ACCESS: {rule:?}");
                    }
                    grants.insert((group.clone(), resource.clone(), verb.clone(), own_namespace_only));
                }
            }
        }
    }
    grants
}

fn access_grants() -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for access in ACCESS {
        for verb in access.verbs {
            grants.insert((
                access.group.to_string(),
                access.resource.to_string(),
                verb.to_string(),
                access.own_namespace_only,
            ));
        }
    }
    grants
}

fn parse_cli(container: &Container) -> Cli {
    let args = container.args.clone().unwrap_or_default();
    assert!(container.command.is_none(), "{}: keep the image's ENTRYPOINT", container.name);
    let argv = std::iter::once("wsingress".to_string()).chain(args.iter().cloned());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("container {} args {args:?} rejected by the CLI:\n{e}", container.name))
}

fn serve_args(container: &Container) -> ServeArgs {
    match parse_cli(container).command {
        Command::Serve(args) => *args,
        other => panic!("container {} does not run `serve`: {other:?}", container.name),
    }
}

fn echo_args(container: &Container) -> EchoArgs {
    match parse_cli(container).command {
        Command::Echo(args) => args,
        other => panic!("container {} does not run `echo`: {other:?}", container.name),
    }
}

/// The containerPort a probe or Service targets (by number or by port name).
fn resolve_port(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("container {} has no port named {name}", container.name))
                .container_port
        }
    }
}

fn check_http_probe(container: &Container, probe: Option<&Probe>, path: &str, port: u16) {
    let probe = probe.unwrap_or_else(|| panic!("container {} lacks a {path} probe", container.name));
    let get = probe
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("container {}: the {path} probe is not an HTTP GET", container.name));
    assert_eq!(get.path.as_deref(), Some(path), "container {}", container.name);
    assert_eq!(
        resolve_port(container, &get.port),
        i32::from(port),
        "container {}: {path} probe must hit the admin port",
        container.name
    );
}

/// Probes, ports and args of a wsingress `serve` container; returns its parsed args.
fn check_serve_container(container: &Container) -> ServeArgs {
    let args = serve_args(container);
    let admin = args.admin_listen.port();
    check_http_probe(container, container.liveness_probe.as_ref(), "/healthz", admin);
    check_http_probe(container, container.readiness_probe.as_ref(), "/readyz", admin);
    assert_eq!(
        resolve_port(container, &IntOrString::String("http".into())),
        i32::from(args.listen.port()),
        "the port named http must be --listen's"
    );
    assert_eq!(
        resolve_port(container, &IntOrString::String("admin".into())),
        i32::from(admin),
        "the port named admin must be --admin-listen's"
    );
    assert_ne!(args.listen.port(), admin, "admin must not share the proxy port");
    args
}

/// Effective security settings: the container's, falling back to the pod's.
fn check_security(pod: &PodSpec, container: &Container) {
    let name = &container.name;
    let psc = pod.security_context.clone().unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    assert_eq!(sc.run_as_non_root.or(psc.run_as_non_root), Some(true), "{name}: runAsNonRoot");
    assert_eq!(sc.run_as_user.or(psc.run_as_user), Some(NONROOT_UID), "{name}: runAsUser");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}: readOnlyRootFilesystem");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}: allowPrivilegeEscalation");
    assert_ne!(sc.privileged, Some(true), "{name}: privileged");
    let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
    assert!(drop.iter().any(|c| c == "ALL"), "{name}: capabilities.drop must contain ALL");
    let add = sc.capabilities.as_ref().and_then(|c| c.add.clone()).unwrap_or_default();
    assert!(add.is_empty(), "{name}: adds capabilities {add:?}");
    let seccomp = sc.seccomp_profile.or(psc.seccomp_profile).map(|s| s.type_);
    assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{name}: seccompProfile");
}

/// The pod outlives preStop sleep + --shutdown-timeout.
fn check_grace(pod: &PodSpec, container: &Container, shutdown: Duration) {
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    let pre_stop = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds);
    let needed = pre_stop as f64 + shutdown.as_secs_f64();
    assert!(
        grace as f64 > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + --shutdown-timeout {shutdown:?}"
    );
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment.spec.template.spec.as_ref().expect("deployment has a pod spec")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

fn is_wsingress_image(container: &Container) -> bool {
    container.image.as_deref().is_some_and(|i| i.contains("/wsingress:") || i.contains("/wsingress@"))
}

fn env_field_ref(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

fn labels_match(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let labels = labels.cloned().unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Everything about the controller Deployment of one rendering.
fn check_controller(docs: &Docs) -> ServeArgs {
    let deployment: Deployment = docs.one(RELEASE);
    let pod = pod_spec(&deployment);
    let wsingress = container(pod, "wsingress");
    let args = check_serve_container(wsingress);
    assert!(args.upstream.is_none() && args.manifests.is_none(), "the controller runs in cluster mode");
    check_security(pod, wsingress);
    check_grace(pod, wsingress, args.shutdown_timeout);
    assert_eq!(env_field_ref(wsingress, "POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(env_field_ref(wsingress, "POD_NAMESPACE").as_deref(), Some("metadata.namespace"));

    // The service account the pod runs as is the one the bindings name.
    let account = pod.service_account_name.clone().expect("serviceAccountName");
    let _: ServiceAccount = docs.one(&account);
    for binding in docs.all::<ClusterRoleBinding>() {
        let subjects = binding.subjects.unwrap_or_default();
        assert!(
            subjects
                .iter()
                .any(|s| s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(NAMESPACE))
        );
    }
    for binding in docs.all::<RoleBinding>() {
        assert_eq!(binding.metadata.namespace.as_deref(), Some(NAMESPACE));
        let subjects = binding.subjects.unwrap_or_default();
        assert!(subjects.iter().any(|s| s.kind == "ServiceAccount" && s.name == account));
    }

    // Services select these pods and target the named ports.
    let pod_labels = deployment.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    let proxy: Service = docs.one(RELEASE);
    let proxy_spec = proxy.spec.as_ref().expect("service spec");
    assert!(labels_match(proxy_spec.selector.as_ref().expect("selector"), pod_labels));
    let proxy_port = &proxy_spec.ports.as_ref().expect("ports")[0];
    assert_eq!(
        resolve_port(wsingress, proxy_port.target_port.as_ref().expect("targetPort")),
        i32::from(args.listen.port())
    );
    if let Some(admin) =
        docs.all::<Service>().into_iter().find(|s| s.metadata.name.as_deref() == Some(&format!("{RELEASE}-admin")))
    {
        let spec = admin.spec.as_ref().expect("admin spec");
        assert!(labels_match(spec.selector.as_ref().expect("selector"), pod_labels));
        let port = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(
            resolve_port(wsingress, port.target_port.as_ref().expect("targetPort")),
            i32::from(args.admin_listen.port())
        );
    }

    // Ingress status comes from the chart's own Service unless an address is given.
    if args.publish_address.is_none() {
        assert_eq!(args.publish_service.as_deref(), Some(format!("{NAMESPACE}/{RELEASE}").as_str()));
    }

    // The IngressClass served is the one created, with our controller name.
    if let Some(class) = docs.all::<IngressClass>().into_iter().next() {
        assert_eq!(class.metadata.name.as_deref(), Some(args.ingress_class.as_str()));
        let controller = class.spec.as_ref().and_then(|s| s.controller.clone());
        assert_eq!(controller.as_deref(), Some(wsingress::translate::CONTROLLER_NAME));
    }

    // The PDB selects the controller pods.
    for pdb in docs.all::<PodDisruptionBudget>() {
        let selector = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.as_ref())
            .expect("pdb selector");
        assert!(labels_match(selector, pod_labels));
    }
    args
}

#[test]
fn rbac_grants_exactly_the_access_list() {
    let Some(docs) = render(&[]) else { return };
    let cluster_roles = docs.all::<ClusterRole>();
    let roles = docs.all::<Role>();
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    assert_eq!(roles.len(), 1, "one Role (the leader-election Lease)");
    assert_eq!(roles[0].metadata.namespace.as_deref(), Some(NAMESPACE));
    let mut granted = grants_of(cluster_roles[0].rules.as_deref().unwrap_or_default(), false);
    granted.extend(grants_of(roles[0].rules.as_deref().unwrap_or_default(), true));
    let wanted = access_grants();
    let extra: Vec<_> = granted.difference(&wanted).collect();
    let missing: Vec<_> = wanted.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "chart RBAC differs from src/source/rbac.rs ACCESS\n  granted but not in ACCESS: {extra:?}\n  in ACCESS but not granted: {missing:?}"
    );
    // Bindings point at these roles.
    let crb: Vec<ClusterRoleBinding> = docs.all();
    assert_eq!(crb.len(), 1);
    assert_eq!(crb[0].role_ref.kind, "ClusterRole");
    assert_eq!(Some(&crb[0].role_ref.name), cluster_roles[0].metadata.name.as_ref());
    let rb: Vec<RoleBinding> = docs.all();
    assert_eq!(rb.len(), 1);
    assert_eq!(rb[0].role_ref.kind, "Role");
    assert_eq!(Some(&rb[0].role_ref.name), roles[0].metadata.name.as_ref());
}

#[test]
fn rbac_off_renders_no_roles() {
    let Some(docs) = render(&["--set", "rbac.create=false"]) else {
        return;
    };
    assert!(docs.all::<ClusterRole>().is_empty() && docs.all::<Role>().is_empty());
    assert!(docs.all::<ClusterRoleBinding>().is_empty() && docs.all::<RoleBinding>().is_empty());
}

#[test]
fn default_values_render_a_working_controller() {
    let Some(docs) = render(&[]) else { return };
    let kinds = docs.kinds();
    for kind in [
        "apps/v1/Deployment",
        "v1/ServiceAccount",
        "v1/Service",
        "rbac.authorization.k8s.io/v1/ClusterRole",
        "rbac.authorization.k8s.io/v1/Role",
        "networking.k8s.io/v1/IngressClass",
        "policy/v1/PodDisruptionBudget",
        "v1/Pod",
    ] {
        assert!(kinds.contains(kind), "default rendering lacks {kind}: {kinds:?}");
    }
    let args = check_controller(&docs);
    assert_eq!(args.listen.port(), 8080);
    assert_eq!(args.admin_listen.port(), 9090);
    assert_eq!(args.ingress_class, "wsingress");
    let proxy: Service = docs.one(RELEASE);
    assert_eq!(proxy.spec.as_ref().and_then(|s| s.type_.as_deref()), Some("LoadBalancer"));
    let class: IngressClass = docs.one("wsingress");
    let annotations = class.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("ingressclass.kubernetes.io/is-default-class"));
    // Off by default: ServiceMonitor, dashboard, sidecar example.
    assert!(docs.raw("monitoring.coreos.com/v1", "ServiceMonitor").is_empty());
    assert!(docs.all::<ConfigMap>().is_empty());
    assert_eq!(docs.all::<Deployment>().len(), 1);
}

#[test]
fn every_value_set_renders_a_working_controller() {
    let sets: &[&[&str]] = &[
        &["--set", "service.type=NodePort", "--set", "service.nodePort=30080"],
        &["--set", "metrics.serviceMonitor.enabled=true"],
        &["--set", "ingressClass.default=true"],
        &["--set", "sidecar.enabled=true"],
        &["--set", "dashboard.enabled=true"],
        &["--set", "hostPort.enabled=true", "--set", "replicaCount=1"],
        &["-f", "tests/e2e/values-kind.yaml"],
        &[
            "--set",
            "controller.shutdownTimeout=2m",
            "--set",
            "controller.watchNamespace=apps",
            "--set",
            "controller.publishAddress=ws.example.com",
            "--set",
            "controller.trustedProxies={10.0.0.0/8,fd00::/8}",
            "--set",
            "routeDefaults.idleTimeout=never",
            "--set",
            "routeDefaults.loadBalance=header-hash:x-user",
            "--set",
            "routeDefaults.maxMessageBytes=1048576",
            "--set",
            "controller.bindAddress=::",
        ],
    ];
    for flags in sets {
        let Some(docs) = render(flags) else { return };
        check_controller(&docs);
    }
}

#[test]
fn values_reach_the_flags() {
    let Some(docs) = render(&[
        "--set",
        "controller.shutdownTimeout=2m",
        "--set",
        "controller.preStopSleepSeconds=7",
        "--set",
        "controller.watchNamespace=apps",
        "--set",
        "controller.trustedProxies={10.0.0.0/8,192.168.0.0/16}",
        "--set",
        "routeDefaults.idleTimeout=300s",
        "--set",
        "routeDefaults.loadBalance=ip-hash",
        "--set",
        "routeDefaults.maxMessageBytes=1048576",
        "--set",
        "ingressClass.name=ws-edge",
        "--set",
        "containerPorts.admin=9100",
    ]) else {
        return;
    };
    let args = check_controller(&docs);
    assert_eq!(args.shutdown_timeout, Duration::from_secs(120));
    assert_eq!(args.watch_namespace.as_deref(), Some("apps"));
    assert_eq!(args.trusted_proxies, ["10.0.0.0/8", "192.168.0.0/16"]);
    assert_eq!(args.ingress_class, "ws-edge");
    assert_eq!(args.admin_listen.port(), 9100);
    let settings = args.route.settings();
    assert_eq!(settings.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(settings.policy, wsingress::routes::Policy::IpHash);
    assert_eq!(settings.max_message_bytes, Some(1_048_576));
    let deployment: Deployment = docs.one(RELEASE);
    // 7 s preStop + 120 s shutdown + 10 s margin.
    assert_eq!(pod_spec(&deployment).termination_grace_period_seconds, Some(137));
}

#[test]
fn node_port_and_default_class_options() {
    let Some(docs) = render(&[
        "--set",
        "service.type=NodePort",
        "--set",
        "service.nodePort=30080",
        "--set",
        "ingressClass.default=true",
    ]) else {
        return;
    };
    let proxy: Service = docs.one(RELEASE);
    let spec = proxy.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.ports.expect("ports")[0].node_port, Some(30080));
    let class: IngressClass = docs.one("wsingress");
    let annotations = class.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("ingressclass.kubernetes.io/is-default-class").map(String::as_str), Some("true"));
}

#[test]
fn service_monitor_scrapes_the_admin_service() {
    let Some(docs) = render(&["--set", "metrics.serviceMonitor.enabled=true"]) else {
        return;
    };
    let monitors = docs.raw("monitoring.coreos.com/v1", "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let monitor = monitors[0];
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("admin"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    let selector: BTreeMap<String, String> =
        serde_yaml::from_value(monitor["spec"]["selector"]["matchLabels"].clone()).expect("matchLabels");
    let admin: Service = docs.one(&format!("{RELEASE}-admin"));
    assert!(labels_match(&selector, admin.metadata.labels.as_ref()), "ServiceMonitor must select the admin Service");
    let proxy: Service = docs.one(RELEASE);
    assert!(!labels_match(&selector, proxy.metadata.labels.as_ref()), "ServiceMonitor must not scrape the proxy port");
    let port_names: Vec<_> =
        admin.spec.and_then(|s| s.ports).unwrap_or_default().into_iter().filter_map(|p| p.name).collect();
    assert_eq!(port_names, ["admin"]);
}

#[test]
fn dashboard_config_map_when_the_dashboard_exists() {
    let Some(docs) = render(&["--set", "dashboard.enabled=true"]) else {
        return;
    };
    let file = root().join("charts/wsingress/dashboards/wsingress.json");
    let maps = docs.all::<ConfigMap>();
    if !file.exists() {
        assert!(maps.is_empty(), "no dashboard file, no ConfigMap");
        println!("note: {} is absent; the ConfigMap is not rendered", file.display());
        return;
    }
    assert_eq!(maps.len(), 1);
    let labels = maps[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("grafana_dashboard").map(String::as_str), Some("1"));
    let data = maps[0].data.clone().unwrap_or_default();
    let json = data.get("wsingress.json").expect("wsingress.json key");
    let parsed: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert!(parsed.is_object());
}

#[test]
fn sidecar_example_is_coherent() {
    let Some(docs) = render(&["--set", "sidecar.enabled=true"]) else {
        return;
    };
    let deployment: Deployment = docs.one(&format!("{RELEASE}-sidecar-example"));
    let pod = pod_spec(&deployment);
    assert_eq!(pod.automount_service_account_token, Some(false), "a sidecar needs no API token");
    let proxy = container(pod, "wsingress");
    let args = check_serve_container(proxy);
    check_security(pod, proxy);
    check_grace(pod, proxy, args.shutdown_timeout);
    let upstream = args.upstream.clone().expect("sidecar mode: --upstream");
    let app = container(pod, "app");
    check_security(pod, app);
    let echo = echo_args(app);
    assert_eq!(upstream, echo.listen.to_string(), "the sidecar must point at the app's listener");
    assert!(echo.listen.ip().is_loopback(), "the app listens on loopback only");
    let service: Service = docs.one(&format!("{RELEASE}-sidecar-example"));
    let spec = service.spec.expect("spec");
    let pod_labels = deployment.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    assert!(labels_match(spec.selector.as_ref().expect("selector"), pod_labels));
    assert_eq!(
        resolve_port(proxy, spec.ports.expect("ports")[0].target_port.as_ref().expect("targetPort")),
        i32::from(args.listen.port())
    );
    // The controller is untouched by the sidecar switch.
    check_controller(&docs);
}

#[test]
fn helm_test_pod_targets_the_proxy_service() {
    let Some(docs) = render(&[]) else { return };
    let pods = docs.all::<Pod>();
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("helm.sh/hook").map(String::as_str), Some("test"));
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let env: BTreeMap<_, _> =
        spec.containers[0].env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect();
    let proxy: Service = docs.one(RELEASE);
    let port = proxy.spec.and_then(|s| s.ports).expect("ports")[0].port;
    assert_eq!(env.get("WS_URL").map(String::as_str), Some(format!("ws://{RELEASE}.{NAMESPACE}.svc:{port}/").as_str()));
    assert_eq!(env.get("WANT").map(String::as_str), Some("Server received from client: hello from helm test"));
    // The expected prefix is the one manifests/echo.yaml's echo sends.
    let echo_docs = manifest("echo.yaml");
    let echo: Deployment = echo_docs.one("echo");
    let prefix = echo_args(container(pod_spec(&echo), "echo")).prefix;
    assert!(env["WANT"].starts_with(&prefix));
}

#[test]
fn echo_manifest_is_coherent() {
    let docs = manifest("echo.yaml");
    let deployment: Deployment = docs.one("echo");
    assert_eq!(deployment.spec.replicas, Some(2));
    let pod = pod_spec(&deployment);
    let echo = container(pod, "echo");
    assert!(is_wsingress_image(echo));
    let args = echo_args(echo);
    assert_eq!(args.prefix, "Server received from client: ");
    check_security(pod, echo);
    let ws = resolve_port(echo, &IntOrString::String("ws".into()));
    assert_eq!(ws, i32::from(args.listen.port()));
    for probe in [&echo.readiness_probe, &echo.liveness_probe] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(resolve_port(echo, &get.port), ws);
    }

    let service: Service = docs.one("echo");
    let spec = service.spec.expect("spec");
    let pod_labels = deployment.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    assert!(labels_match(spec.selector.as_ref().expect("selector"), pod_labels));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("ws"), 80));
    assert_eq!(resolve_port(echo, port.target_port.as_ref().expect("targetPort")), ws);

    let ingress: Ingress = docs.one("echo");
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("wsingress.io/idle-timeout").map(String::as_str), Some("300s"));
    for (key, value) in &annotations {
        assert!(key.starts_with("wsingress.io/"), "unexpected annotation {key}");
        if key.ends_with("-timeout") || key.ends_with("-interval") {
            wsingress::cli::parse_optional_duration(value).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        if key == "wsingress.io/load-balance" {
            wsingress::routes::Policy::parse(value).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }
    let spec = ingress.spec.expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some(wsingress::translate::DEFAULT_CLASS));
    let backend = spec.rules.expect("rules")[0].http.as_ref().expect("http").paths[0]
        .backend
        .service
        .clone()
        .expect("service backend");
    assert_eq!(backend.name, "echo");
    assert_eq!(backend.port.and_then(|p| p.name).as_deref(), Some("ws"));
}

#[test]
fn sidecar_manifest_is_coherent() {
    let docs = manifest("sidecar-example.yaml");
    let deployments = docs.all::<Deployment>();
    assert_eq!(deployments.len(), 1);
    let pod = pod_spec(&deployments[0]);
    let proxy = container(pod, "wsingress");
    let args = check_serve_container(proxy);
    check_security(pod, proxy);
    check_grace(pod, proxy, args.shutdown_timeout);
    let app = container(pod, "app");
    check_security(pod, app);
    let echo = echo_args(app);
    assert_eq!(args.upstream.as_deref(), Some(echo.listen.to_string().as_str()));
    assert!(echo.listen.ip().is_loopback());
    let services = docs.all::<Service>();
    assert_eq!(services.len(), 1);
    let spec = services[0].spec.clone().expect("spec");
    let target = spec.ports.expect("ports")[0].target_port.clone().expect("targetPort");
    assert_eq!(resolve_port(proxy, &target), i32::from(args.listen.port()));
}

#[test]
fn every_wsingress_container_in_the_manifests_parses() {
    for name in ["echo.yaml", "sidecar-example.yaml"] {
        let docs = manifest(name);
        let mut seen = 0;
        for deployment in docs.all::<Deployment>() {
            for c in pod_spec(&deployment).containers.iter().filter(|c| is_wsingress_image(c)) {
                parse_cli(c);
                seen += 1;
            }
        }
        assert!(seen > 0, "{name} runs no wsingress container");
    }
    assert!(Path::new(&root().join("manifests")).is_dir());
}
