//! The Helm chart and manifests/*.yaml, rendered and parsed into k8s-openapi types, checked
//! against the code they deploy: RBAC is exactly `source::rbac::ACCESS` (cluster-wide or per
//! watched namespace), every wsingress container's args are accepted by the real CLI parser,
//! probes hit the admin port's real paths, grace periods leave room for preStop + drain + a
//! margin, numbers render as integers whatever their source, and the security context is
//! locked down. Every check runs over the values matrix: charts/wsingress/ci/*.yaml, the kind
//! suite's values, and `--set`/`--set-string` sets.
//!
//! Needs `helm` (scripts/install-tools.sh puts it in .tools/bin); without it the chart tests
//! print why they skip, unless WSINGRESS_REQUIRE_TOOLS=1 makes that a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use wsingress::cli::{Cli, ClientArgs, Command, EchoArgs, ServeArgs};
use wsingress::source::gateway_watch::GatewayApiMode;
use wsingress::source::rbac::access;

const RELEASE: &str = "wsingress";
const NAMESPACE: &str = "wsingress-system";
const NONROOT_UID: i64 = 65532;
/// Seconds every grace period keeps beyond what it must wait for (docs/kubernetes.md).
const GRACE_MARGIN: i64 = 5;
/// Seconds an endpoint change may take to reach the proxy (EndpointSlice, watch, debounce).
const ENDPOINT_PROPAGATION: i64 = 5;
/// `wsingress echo`'s own shutdown after SIGTERM (echo.rs `SHUTDOWN_GRACE`).
const ECHO_SHUTDOWN: i64 = 5;
/// Resources the controller reads that are not namespaced: always in the ClusterRole.
const CLUSTER_SCOPED: &[&str] = &["ingressclasses", "nodes"];
/// Namespaced resources: in the ClusterRole when every namespace is watched, else in a Role per
/// watched namespace. A resource in neither list fails the test until someone classifies it.
const NAMESPACED: &[&str] = &["ingresses", "ingresses/status", "services", "endpointslices", "events", "secrets"];
/// The same two classes for Gateway API (`rbac::GATEWAY_ACCESS`, with `gatewayAPI.enabled`).
const GATEWAY_CLUSTER_SCOPED: &[&str] = &["gatewayclasses", "gatewayclasses/status", "namespaces"];
const GATEWAY_NAMESPACED: &[&str] =
    &["gateways", "gateways/status", "httproutes", "httproutes/status", "referencegrants"];

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
    let (ok, stdout, stderr) = helm_template(flags)?;
    assert!(ok, "helm template {flags:?} failed:\n{stderr}");
    Some(Docs::parse(&stdout, &format!("helm template {flags:?}")))
}

/// `helm template` that must fail; returns its error output (`None` when helm is missing).
fn render_error(flags: &[&str]) -> Option<String> {
    let (ok, _, stderr) = helm_template(flags)?;
    assert!(!ok, "helm template {flags:?} should have failed");
    Some(stderr)
}

fn helm_template(flags: &[&str]) -> Option<(bool, String, String)> {
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
    let text = String::from_utf8(out.stdout).expect("helm output is UTF-8");
    Some((out.status.success(), text, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// The values matrix: every file in charts/wsingress/ci/, the kind suite's values, and sets
/// given with --set and --set-string. Each entry is a list of helm flags.
fn matrix() -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> = vec![vec![]];
    let mut files: Vec<_> = std::fs::read_dir(root().join("charts/wsingress/ci"))
        .expect("charts/wsingress/ci")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "the values matrix lost files: {files:?}");
    for file in files {
        let rel = file.strip_prefix(root()).expect("under the repo").to_string_lossy().into_owned();
        sets.push(vec!["-f".into(), rel]);
    }
    sets.push(vec!["-f".into(), "tests/e2e/values-kind.yaml".into()]);
    let flag_sets: &[&[&str]] = &[
        &["--set", "service.type=NodePort", "--set", "service.nodePort=30080"],
        &["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podAnnotations=true"],
        &["--set", "ingressClass.default=true", "--set", "tests.host=ws.example.com"],
        &["--set", "tests.wss.caSecret=echo-ca", "--set", "tests.wss.host=echo.example.com"],
        &["--set", "hostPort.enabled=true", "--set", "replicaCount=1"],
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
            "controller.proxyProtocol.enabled=true",
            "--set",
            "controller.proxyProtocol.trustedCIDRs={10.0.0.0/8,fd00::/8}",
            "--set",
            "routeDefaults.idleTimeout=never",
            "--set",
            "routeDefaults.loadBalance=header-hash:x-user",
            "--set",
            "controller.bindAddress=::",
            "--set",
            "podDisruptionBudget.minAvailable=50%",
        ],
        &["--set", "gatewayAPI.enabled=true", "--set", "controller.watchNamespace=apps"],
        SET_STRING_NUMBERS,
    ];
    for flags in flag_sets {
        sets.push(flags.iter().map(|f| f.to_string()).collect());
    }
    sets
}

/// Numbers given as strings (--set-string) must render as integers too.
const SET_STRING_NUMBERS: &[&str] = &[
    "--set-string",
    "controller.maxHeaderBytes=1048576",
    "--set-string",
    "routeDefaults.maxMessageBytes=104857600",
    "--set-string",
    "replicaCount=3",
    "--set-string",
    "controller.preStopSleepSeconds=7",
    "--set-string",
    "service.port=8080",
    "--set-string",
    "podDisruptionBudget.maxUnavailable=0",
];

fn refs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
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

/// What the controller may send: with Gateway API (`--gateway-api auto`) or without.
fn access_grants(gateway_api: bool) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for access in access(gateway_api) {
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

/// The controller workload (Deployment or DaemonSet) of one rendering: kind and pod template.
fn workload(docs: &Docs) -> (&'static str, PodTemplateSpec) {
    let deployments: Vec<Deployment> =
        docs.all::<Deployment>().into_iter().filter(|d| object_name(d) == RELEASE).collect();
    let daemonsets: Vec<DaemonSet> =
        docs.all::<DaemonSet>().into_iter().filter(|d| object_name(d) == RELEASE).collect();
    match (deployments.len(), daemonsets.len()) {
        (1, 0) => ("Deployment", deployments[0].spec.template.clone()),
        (0, 1) => ("DaemonSet", daemonsets[0].spec.template.clone()),
        other => panic!("want exactly one controller Deployment or DaemonSet, found {other:?}"),
    }
}

fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().expect("pod template has a spec")
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

fn init_container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.init_containers.iter().flatten().find(|c| c.name == name).unwrap_or_else(|| panic!("no init container {name}"))
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

/// Seconds of a `lifecycle.preStop.sleep` (0 without one).
fn pre_stop_sleep(container: &Container) -> i64 {
    container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds)
}

fn grace(pod: &PodSpec) -> i64 {
    pod.termination_grace_period_seconds.unwrap_or(30)
}

/// Whole seconds, rounded up.
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_millis().div_ceil(1000)).expect("seconds fit")
}

/// grace period >= preStop sleep + --shutdown-timeout + margin: the kubelet never kills a pod
/// whose tunnels are still closing.
fn check_grace(pod: &PodSpec, container: &Container, shutdown: Duration) {
    let (grace, pre_stop) = (grace(pod), pre_stop_sleep(container));
    let needed = pre_stop + secs(shutdown) + GRACE_MARGIN;
    assert!(
        grace >= needed,
        "terminationGracePeriodSeconds {grace} must be >= preStop {pre_stop}s + --shutdown-timeout {shutdown:?} + {GRACE_MARGIN}s"
    );
}

fn service_spec(service: &Service) -> &ServiceSpec {
    service.spec.as_ref().expect("service spec")
}

/// Everything about the controller workload of one rendering; returns the parsed serve args.
fn check_controller(docs: &Docs) -> ServeArgs {
    let (kind, template) = workload(docs);
    let pod = pod_spec(&template);
    let wsingress = container(pod, "wsingress");
    let args = check_serve_container(wsingress);
    assert!(args.upstream.is_none() && args.manifests.is_none(), "the controller runs in cluster mode");
    check_security(pod, wsingress);
    check_grace(pod, wsingress, args.shutdown_timeout);
    assert_eq!(env_field_ref(wsingress, "POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(env_field_ref(wsingress, "POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    if let Some(probe) = &wsingress.startup_probe {
        check_http_probe(wsingress, Some(probe), "/readyz", args.admin_listen.port());
    }

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
        let subjects = binding.subjects.unwrap_or_default();
        assert!(
            subjects
                .iter()
                .any(|s| s.kind == "ServiceAccount" && s.name == account && s.namespace.as_deref() == Some(NAMESPACE))
        );
    }

    // Every proxy Service (public, internal) selects these pods and targets the proxy port.
    let pod_labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    for name in [RELEASE.to_string(), format!("{RELEASE}-internal")] {
        let Some(proxy) = docs.all::<Service>().into_iter().find(|s| object_name(s) == name) else { continue };
        let spec = service_spec(&proxy);
        assert!(labels_match(spec.selector.as_ref().expect("selector"), pod_labels), "{name} selects the pods");
        let port = &spec.ports.as_ref().expect("ports")[0];
        assert_eq!(
            resolve_port(wsingress, port.target_port.as_ref().expect("targetPort")),
            i32::from(args.listen.port())
        );
    }
    if let Some(admin) = docs.all::<Service>().into_iter().find(|s| object_name(s) == format!("{RELEASE}-admin")) {
        let spec = service_spec(&admin);
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
        let spec = pdb.spec.as_ref().expect("pdb spec");
        let selector = spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()).expect("pdb selector");
        assert!(labels_match(selector, pod_labels));
        assert!(spec.max_unavailable.is_some() != spec.min_available.is_some(), "exactly one PDB bound: {spec:?}");
    }

    // A hostPort pod can never surge on its node: the rollout must replace in place.
    let host_port = wsingress.ports.iter().flatten().any(|p| p.host_port.is_some());
    if host_port || kind == "DaemonSet" {
        let surge = rolling_update_surge(docs, kind);
        assert!(matches!(surge.as_deref(), None | Some("0") | Some("0%")), "{kind} with hostPort surges {surge:?}");
    }
    args
}

/// maxSurge of the controller's rolling update, as text.
fn rolling_update_surge(docs: &Docs, kind: &str) -> Option<String> {
    let raw = docs.raw("apps/v1", kind).into_iter().find(|d| d["metadata"]["name"].as_str() == Some(RELEASE))?;
    let key = if kind == "Deployment" { "strategy" } else { "updateStrategy" };
    let surge = &raw["spec"][key]["rollingUpdate"]["maxSurge"];
    match surge {
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The sidecar drain order for a native-sidecar pod: wsingress is an init container with
/// restartPolicy Always whose preStop asks its admin port to drain after a delay; the app's
/// preStop outlasts that delay + the shutdown timeout + a margin; the grace period outlasts the
/// app's preStop + a margin.
fn check_sidecar_pod(pod: &PodSpec) -> (ServeArgs, EchoArgs) {
    assert!(pod.containers.iter().all(|c| c.name != "wsingress"), "wsingress must not be a regular container");
    let proxy = init_container(pod, "wsingress");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "wsingress runs as a native sidecar");
    let args = check_serve_container(proxy);
    assert!(args.admin_drain, "the preStop hook needs --admin-drain");
    check_security(pod, proxy);
    let hook = proxy
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.http_get.as_ref())
        .expect("wsingress preStop: httpGet /drain");
    assert_eq!(resolve_port(proxy, &hook.port), i32::from(args.admin_listen.port()), "/drain is on the admin port");
    let path = hook.path.clone().unwrap_or_default();
    let after = path.strip_prefix("/drain?after=").unwrap_or_else(|| panic!("preStop path {path:?}"));
    let delay = secs(wsingress::cli::parse_duration(after).expect("after= is a duration"));
    assert!(
        delay >= ENDPOINT_PROPAGATION,
        "the drain waits {delay}s, want >= {ENDPOINT_PROPAGATION}s for the endpoint to leave"
    );
    let app = container(pod, "app");
    check_security(pod, app);
    let echo = echo_args(app);
    assert!(echo.listen.ip().is_loopback(), "the app listens on loopback only");
    assert_eq!(args.upstream.as_deref(), Some(echo.listen.to_string().as_str()), "the sidecar fronts the app");
    let app_pre_stop = pre_stop_sleep(app);
    let needed = delay + secs(args.shutdown_timeout) + GRACE_MARGIN;
    assert!(
        app_pre_stop >= needed,
        "the app's preStop {app_pre_stop}s must be >= drain delay {delay}s + shutdown {:?} + {GRACE_MARGIN}s",
        args.shutdown_timeout
    );
    assert!(
        grace(pod) >= app_pre_stop + GRACE_MARGIN,
        "grace {} must be >= the app's preStop {app_pre_stop}s + {GRACE_MARGIN}s",
        grace(pod)
    );
    (args, echo)
}

/// An echo Deployment + Ingress: the pod keeps serving until the proxy has drained it.
fn check_echo(docs: &Docs, name: &str) -> EchoArgs {
    let deployment: Deployment = docs.one(name);
    let template = deployment.spec.template.clone();
    let pod = pod_spec(&template);
    let echo = container(pod, "echo");
    assert!(is_wsingress_image(echo));
    let args = echo_args(echo);
    check_security(pod, echo);
    let ws = resolve_port(echo, &IntOrString::String("ws".into()));
    assert_eq!(ws, i32::from(args.listen.port()));
    for probe in [&echo.readiness_probe, &echo.liveness_probe] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(resolve_port(echo, &get.port), ws);
    }
    let service: Service = docs.one(name);
    let spec = service_spec(&service);
    let pod_labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    assert!(labels_match(spec.selector.as_ref().expect("selector"), pod_labels));
    let port = &spec.ports.as_ref().expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("ws"), 80));
    assert_eq!(resolve_port(echo, port.target_port.as_ref().expect("targetPort")), ws);

    let ingress: Ingress = docs.one(name);
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    for (key, value) in &annotations {
        assert!(key.starts_with("wsingress.io/"), "unexpected annotation {key}");
        if key.ends_with("-timeout") || key.ends_with("-interval") {
            wsingress::cli::parse_optional_duration(value).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        if key == "wsingress.io/load-balance" {
            wsingress::routes::Policy::parse(value).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }
    let backend = ingress.spec.clone().expect("spec").rules.expect("rules")[0].http.as_ref().expect("http").paths[0]
        .backend
        .service
        .clone()
        .expect("service backend");
    assert_eq!(backend.name, name);
    assert_eq!(backend.port.and_then(|p| p.name).as_deref(), Some("ws"));

    // Termination arithmetic (docs/kubernetes.md): preStop >= drain-timeout + propagation;
    // grace >= preStop + the echo's own shutdown + margin.
    let drain = annotations.get("wsingress.io/drain-timeout").expect("wsingress.io/drain-timeout");
    let drain = secs(wsingress::cli::parse_duration(drain).expect("drain-timeout"));
    let pre_stop = pre_stop_sleep(echo);
    assert!(
        pre_stop >= drain + ENDPOINT_PROPAGATION,
        "{name}: preStop {pre_stop}s < drain-timeout {drain}s + {ENDPOINT_PROPAGATION}s"
    );
    assert!(
        grace(pod) >= pre_stop + ECHO_SHUTDOWN + GRACE_MARGIN,
        "{name}: grace {} < preStop {pre_stop}s + echo shutdown {ECHO_SHUTDOWN}s + {GRACE_MARGIN}s",
        grace(pod)
    );
    args
}

/// Every check that applies to one rendering of the matrix.
fn check_rendering(docs: &Docs, flags: &[String]) {
    let args = check_controller(docs);
    check_rbac(docs, &args);
    if let Some(d) =
        docs.all::<Deployment>().into_iter().find(|d| object_name(d) == format!("{RELEASE}-sidecar-example"))
    {
        check_sidecar_pod(pod_spec(&d.spec.template.clone()));
    }
    if docs.all::<Deployment>().iter().any(|d| object_name(d) == format!("{RELEASE}-echo")) {
        let echo = check_echo(docs, &format!("{RELEASE}-echo"));
        let ingress: Ingress = docs.one(&format!("{RELEASE}-echo"));
        assert_eq!(ingress.spec.and_then(|s| s.ingress_class_name).as_deref(), Some(args.ingress_class.as_str()));
        assert_eq!(echo.prefix, "Server received from client: ");
    }
    for pod in docs.all::<Pod>() {
        check_test_pod(docs, &pod);
    }
    for monitor in docs.raw("monitoring.coreos.com/v1", "ServiceMonitor") {
        assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("admin"), "{flags:?}");
    }
}

/// The `helm test` pod: the release's own image runs `wsingress client` through the proxy.
fn check_test_pod(docs: &Docs, pod: &Pod) {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("helm.sh/hook").map(String::as_str), Some("test"));
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let client = &spec.containers[0];
    let (_, template) = workload(docs);
    assert_eq!(client.image, container(pod_spec(&template), "wsingress").image, "the test runs the release's image");
    check_security(spec, client);
    let args = match parse_cli(client).command {
        Command::Client(args) => args,
        other => panic!("the test pod does not run `client`: {other:?}"),
    };
    let proxy: Service = docs.one(RELEASE);
    let ports = service_spec(&proxy).ports.as_ref().expect("ports");
    if object_name(pod).ends_with("-test-wss") {
        // The wss variant: the Service's TLS port, the CA from the Secret's volume.
        let https = ports.iter().find(|p| p.name.as_deref() == Some("https")).expect("an https port").port;
        assert!(args.url.starts_with(&format!("wss://{RELEASE}.{NAMESPACE}.svc:{https}/")), "{}", args.url);
        assert!(args.host.is_some(), "a TLS server name for SNI");
        let ca = args.ca.as_ref().expect("--ca");
        let mount = client.volume_mounts.as_ref().and_then(|m| m.iter().find(|m| ca.starts_with(&m.mount_path)));
        let volume = mount.and_then(|m| spec.volumes.as_ref()?.iter().find(|v| v.name == m.name));
        assert!(volume.and_then(|v| v.secret.as_ref()).is_some(), "--ca {} comes from a Secret volume", ca.display());
    } else {
        let port = ports[0].port;
        assert!(args.url.starts_with(&format!("ws://{RELEASE}.{NAMESPACE}.svc:{port}/")), "{}", args.url);
    }
    assert_eq!(args.send.len(), 1);
    assert_eq!(args.expect, [format!("Server received from client: {}", args.send[0])]);
    assert!(args.retry_for >= Duration::from_secs(10), "the route needs time to appear");
    let mut args = args;
    if args.ca.is_some() {
        // The CA file exists only in the pod: check the flags with a real one here.
        let ca =
            wsingress::tls::generate::Authority::new("chart test CA", wsingress::tls::generate::Validity::around(0, 1))
                .expect("a CA")
                .cert_pem();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-test-ca.crt");
        std::fs::write(&path, ca).expect("write the CA");
        args.ca = Some(path);
    }
    check_client_plan(&args);
}

fn check_client_plan(args: &ClientArgs) {
    args.plan().unwrap_or_else(|e| panic!("the test pod's client flags are refused: {e}"));
}

/// Namespaced ACCESS entries (not the own-namespace Lease) and cluster-scoped ones.
fn access_split(gateway_api: bool) -> (BTreeSet<Grant>, BTreeSet<Grant>, BTreeSet<Grant>) {
    let (mut cluster, mut namespaced, mut own) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for grant in access_grants(gateway_api) {
        let resource = grant.1.as_str();
        if grant.3 {
            own.insert(grant);
        } else if CLUSTER_SCOPED.contains(&resource) || GATEWAY_CLUSTER_SCOPED.contains(&resource) {
            cluster.insert(grant);
        } else {
            assert!(
                NAMESPACED.contains(&resource) || GATEWAY_NAMESPACED.contains(&resource),
                "classify {:?} in tests/chart.rs (CLUSTER_SCOPED or NAMESPACED)",
                grant.1
            );
            namespaced.insert(grant);
        }
    }
    (cluster, namespaced, own)
}

fn assert_grants(what: &str, granted: &BTreeSet<Grant>, wanted: &BTreeSet<Grant>) {
    let extra: Vec<_> = granted.difference(wanted).collect();
    let missing: Vec<_> = wanted.difference(granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what} differs from src/source/rbac.rs ACCESS\n  granted but not in ACCESS: {extra:?}\n  in ACCESS but not granted: {missing:?}"
    );
}

/// RBAC equals ACCESS: all in one ClusterRole (+ the Lease Role) when every namespace is
/// watched; with --watch-namespace, the namespaced part as a Role in each watched namespace.
fn check_rbac(docs: &Docs, args: &ServeArgs) {
    let cluster_roles = docs.all::<ClusterRole>();
    let roles = docs.all::<Role>();
    if cluster_roles.is_empty() && roles.is_empty() {
        return; // rbac.create=false
    }
    // The chart passes --gateway-api auto exactly when gatewayAPI.enabled.
    let (cluster, namespaced, own) = access_split(args.gateway_api == GatewayApiMode::Auto);
    let lease: Role = docs.one(RELEASE);
    assert_eq!(lease.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_grants("the Lease Role", &grants_of(lease.rules.as_deref().unwrap_or_default(), true), &own);
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    let cluster_grants = grants_of(cluster_roles[0].rules.as_deref().unwrap_or_default(), false);
    let watched: Vec<String> = args
        .watch_namespace
        .iter()
        .flat_map(|list| list.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|ns| !ns.is_empty())
        .collect();
    if watched.is_empty() {
        assert_grants("the ClusterRole", &cluster_grants, &cluster.union(&namespaced).cloned().collect());
        assert_eq!(roles.len(), 1, "only the Lease Role");
    } else {
        assert_grants("the ClusterRole (cluster-scoped reads only)", &cluster_grants, &cluster);
        for ns in &watched {
            let role = roles
                .iter()
                .find(|r| r.metadata.namespace.as_deref() == Some(ns) && object_name(*r) == format!("{RELEASE}-watch"))
                .unwrap_or_else(|| panic!("no Role in watched namespace {ns}"));
            assert_grants(
                &format!("the Role in {ns}"),
                &grants_of(role.rules.as_deref().unwrap_or_default(), false),
                &namespaced,
            );
            let binding: Vec<RoleBinding> = docs
                .all::<RoleBinding>()
                .into_iter()
                .filter(|b| {
                    b.metadata.namespace.as_deref() == Some(ns) && b.role_ref.name == format!("{RELEASE}-watch")
                })
                .collect();
            assert_eq!(binding.len(), 1, "the Role in {ns} is bound");
        }
        // The publish Service's namespace, when it is not watched, gets Services only.
        for role in roles.iter().filter(|r| object_name(*r) == format!("{RELEASE}-publish")) {
            let granted = grants_of(role.rules.as_deref().unwrap_or_default(), false);
            assert!(granted.iter().all(|g| g.1 == "services" && namespaced.contains(g)), "{granted:?}");
            let publish_ns = args.publish_service.as_deref().and_then(|p| p.split('/').next());
            assert_eq!(role.metadata.namespace.as_deref(), publish_ns);
        }
        assert_eq!(
            roles.len(),
            1 + watched.len() + usize::from(roles.iter().any(|r| object_name(r) == format!("{RELEASE}-publish")))
        );
    }
    for binding in docs.all::<ClusterRoleBinding>() {
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(Some(&binding.role_ref.name), cluster_roles[0].metadata.name.as_ref());
    }
}

#[test]
fn every_rendering_of_the_values_matrix_is_coherent() {
    for flags in matrix() {
        let Some(docs) = render(&refs(&flags)) else { return };
        check_rendering(&docs, &flags);
    }
}

#[test]
fn rbac_grants_exactly_the_access_list() {
    let Some(docs) = render(&[]) else { return };
    let args = check_controller(&docs);
    assert!(args.watch_namespace.is_none());
    check_rbac(&docs, &args);
    assert_eq!(docs.all::<Role>().len(), 1);
}

#[test]
fn watched_namespaces_get_roles_instead_of_a_cluster_role() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/watch-namespaces-values.yaml"]) else { return };
    let (_, template) = workload(&docs);
    let raw_args = container(pod_spec(&template), "wsingress").args.clone().unwrap_or_default();
    assert!(raw_args.contains(&"--watch-namespace=team-a,team-b".to_string()), "{raw_args:?}");
    let args = check_controller(&docs);
    check_rbac(&docs, &args);
    let namespaces: BTreeSet<_> = docs.all::<Role>().into_iter().filter_map(|r| r.metadata.namespace).collect();
    assert_eq!(namespaces, BTreeSet::from(["team-a".into(), "team-b".into(), NAMESPACE.to_string()]));
    let cluster_role = &docs.all::<ClusterRole>()[0];
    let resources: BTreeSet<String> =
        cluster_role.rules.iter().flatten().flat_map(|r| r.resources.clone().unwrap_or_default()).collect();
    assert_eq!(resources, CLUSTER_SCOPED.iter().map(|r| r.to_string()).collect());
    // One namespace by name (--set) works the same way.
    let Some(docs) = render(&["--set", "controller.watchNamespace=apps"]) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.watch_namespace.as_deref(), Some("apps"));
    check_rbac(&docs, &args);
}

#[test]
fn default_tls_secret_becomes_the_flag_and_must_be_in_a_watched_namespace() {
    let Some(docs) = render(&["--set", "controller.defaultTLSSecret=ingress/wildcard-tls"]) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.default_tls_secret, Some(("ingress".into(), "wildcard-tls".into())));
    check_rbac(&docs, &args);
    // Unset: no flag, so the binary makes its self-signed default.
    let Some(docs) = render(&[]) else { return };
    assert_eq!(check_controller(&docs).default_tls_secret, None);
    // With watched namespaces, the Secret's namespace must be one of them (its Role reads it).
    let flags = ["--set", "controller.watchNamespace=apps", "--set", "controller.defaultTLSSecret=apps/wildcard-tls"];
    let Some(docs) = render(&flags) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.default_tls_secret, Some(("apps".into(), "wildcard-tls".into())));
    check_rbac(&docs, &args);
    let err = render_error(&[
        "--set",
        "controller.watchNamespace=apps",
        "--set",
        "controller.defaultTLSSecret=ingress/wildcard-tls",
    ])
    .unwrap_or_default();
    assert!(err.contains(r#"controller.defaultTLSSecret "ingress/wildcard-tls": namespace "ingress" is not in controller.watchNamespace"#), "{err}");
    // Not NAMESPACE/NAME: the schema refuses it.
    let err = render_error(&["--set", "controller.defaultTLSSecret=wildcard-tls"]).unwrap_or_default();
    assert!(err.contains("defaultTLSSecret"), "{err}");
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
    assert_eq!(service_spec(&proxy).type_.as_deref(), Some("LoadBalancer"));
    let class: IngressClass = docs.one("wsingress");
    let annotations = class.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("ingressclass.kubernetes.io/is-default-class"));
    // Off by default: ServiceMonitor, dashboard, examples, HPA, NetworkPolicy.
    assert!(docs.raw("monitoring.coreos.com/v1", "ServiceMonitor").is_empty());
    assert!(docs.all::<ConfigMap>().is_empty());
    assert_eq!(docs.all::<Deployment>().len(), 1);
    assert!(docs.all::<HorizontalPodAutoscaler>().is_empty() && docs.all::<NetworkPolicy>().is_empty());
    // Replicas spread over nodes, softly.
    let (kind, template) = workload(&docs);
    assert_eq!(kind, "Deployment");
    let spread = pod_spec(&template).topology_spread_constraints.clone().unwrap_or_default();
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    let selector = spread[0].label_selector.as_ref().and_then(|s| s.match_labels.as_ref()).expect("spread selector");
    assert!(labels_match(selector, template.metadata.as_ref().and_then(|m| m.labels.as_ref())));
    // A surging rollout without hostPort; the Deployment keeps serving throughout.
    assert_eq!(rolling_update_surge(&docs, "Deployment").as_deref(), Some("1"));
}

#[test]
fn chart_declares_the_kubernetes_versions_it_needs() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("charts/wsingress/Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml is YAML");
    // lifecycle.preStop.sleep is 1.30+.
    assert_eq!(chart["kubeVersion"].as_str(), Some(">=1.30.0-0"));
}

#[test]
fn numbers_render_as_integers_from_values_files_and_set_string() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/large-numbers-values.yaml"]) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.max_header_bytes, 1_048_576);
    assert_eq!(args.max_connections_per_client, 1_000_000);
    assert_eq!(args.route.settings().max_message_bytes, Some(1_073_741_824));
    let (_, template) = workload(&docs);
    let pod = pod_spec(&template);
    assert_eq!(grace(pod), 15 + 30 + 1_000_000);
    let probe = container(pod, "wsingress").startup_probe.clone().expect("startupProbe");
    assert_eq!(probe.failure_threshold, Some(1_000_000));
    let deployment: Deployment = docs.one(RELEASE);
    assert_eq!(deployment.spec.min_ready_seconds, Some(1_000_000));
    assert_eq!(deployment.spec.replicas, Some(3));
    // The raw text never carries a float: no exponent, no ".0".
    let (_, text, _) = helm_template(&["-f", "charts/wsingress/ci/large-numbers-values.yaml"]).expect("helm");
    assert!(!text.contains("e+0") && !text.contains("1048576.0"), "a number rendered as a float");

    let Some(docs) = render(SET_STRING_NUMBERS) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.max_header_bytes, 1_048_576);
    assert_eq!(args.route.settings().max_message_bytes, Some(104_857_600));
    let pdb: PodDisruptionBudget = docs.one(RELEASE);
    assert_eq!(pdb.spec.and_then(|s| s.max_unavailable), Some(IntOrString::Int(0)));
    // A string that is not a whole number is refused by the schema.
    let err = render_error(&["--set-string", "controller.maxHeaderBytes=1.5"]).unwrap_or_default();
    assert!(err.contains("maxHeaderBytes"), "{err}");
}

#[test]
fn pdb_honours_max_unavailable_zero_and_percentages() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/pdb-zero-values.yaml"]) else { return };
    let pdb: PodDisruptionBudget = docs.one(RELEASE);
    let spec = pdb.spec.expect("spec");
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(0)), "maxUnavailable: 0 must stay 0");
    assert_eq!(spec.min_available, None);
    let Some(docs) = render(&["--set", "podDisruptionBudget.minAvailable=50%"]) else { return };
    let pdb: PodDisruptionBudget = docs.one(RELEASE);
    let spec = pdb.spec.expect("spec");
    assert_eq!(spec.min_available, Some(IntOrString::String("50%".into())));
    assert_eq!(spec.max_unavailable, None);
}

#[test]
fn host_port_rollouts_never_surge() {
    for (file, kind) in
        [("daemonset-hostport-values.yaml", "DaemonSet"), ("deployment-hostport-values.yaml", "Deployment")]
    {
        let Some(docs) = render(&["-f", &format!("charts/wsingress/ci/{file}")]) else { return };
        assert_eq!(workload(&docs).0, kind);
        check_controller(&docs);
        assert_eq!(rolling_update_surge(&docs, kind).as_deref(), Some("0"), "{file}");
        let raw = docs.raw("apps/v1", kind)[0];
        let key = if kind == "Deployment" { "strategy" } else { "updateStrategy" };
        assert_eq!(raw["spec"][key]["rollingUpdate"]["maxUnavailable"].as_u64(), Some(1), "{file}");
    }
    // A DaemonSet has one pod per node: no spread constraint.
    let Some(docs) = render(&["-f", "charts/wsingress/ci/daemonset-hostport-values.yaml"]) else { return };
    assert!(pod_spec(&workload(&docs).1).topology_spread_constraints.is_none());
    // A surge with hostPort is refused with a reason.
    let err = render_error(&[
        "--set",
        "hostPort.enabled=true",
        "--set",
        "controller.updateStrategy.type=RollingUpdate",
        "--set",
        "controller.updateStrategy.rollingUpdate.maxSurge=1",
    ])
    .unwrap_or_default();
    assert!(err.contains("maxSurge") && err.contains("hostPort"), "{err}");
}

#[test]
fn autoscaling_replaces_replicas_with_an_hpa() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/autoscaling-values.yaml"]) else { return };
    let deployment: Deployment = docs.one(RELEASE);
    assert_eq!(deployment.spec.replicas, None, "the HPA owns replicas");
    let hpa: HorizontalPodAutoscaler = docs.one(RELEASE);
    let spec = hpa.spec;
    assert_eq!((spec.scale_target_ref.kind.as_str(), spec.scale_target_ref.name.as_str()), ("Deployment", RELEASE));
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 30));
    let metrics = spec.metrics.unwrap_or_default();
    assert_eq!(metrics.len(), 2);
    let cpu = metrics[0].resource.as_ref().expect("cpu metric");
    assert_eq!((cpu.name.as_str(), cpu.target.average_utilization), ("cpu", Some(60)));
    let pods = metrics[1].pods.as_ref().expect("tunnels metric");
    assert_eq!(pods.metric.name, "wsingress_websocket_connections_active");
    // The metric exists (the README's metric table is checked against the registry).
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(readme.contains(&format!("`{}`", pods.metric.name)), "{} is not a wsingress metric", pods.metric.name);
    let err =
        render_error(&["--set", "autoscaling.enabled=true", "--set", "controller.kind=DaemonSet"]).unwrap_or_default();
    assert!(err.contains("DaemonSet"), "{err}");
}

#[test]
fn network_policy_opens_the_proxy_port_and_guards_the_admin_port() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/network-policy-values.yaml"]) else { return };
    let args = check_controller(&docs);
    let (_, template) = workload(&docs);
    let pod = pod_spec(&template);
    let policy: NetworkPolicy = docs.one(RELEASE);
    let spec = policy.spec.expect("spec");
    let selector = spec.pod_selector.and_then(|s| s.match_labels).expect("podSelector");
    assert!(labels_match(&selector, template.metadata.as_ref().and_then(|m| m.labels.as_ref())));
    let rules = spec.ingress.unwrap_or_default();
    let ports: Vec<i32> = rules
        .iter()
        .map(|r| {
            resolve_port(container(pod, "wsingress"), r.ports.as_ref().expect("ports")[0].port.as_ref().expect("port"))
        })
        .collect();
    assert_eq!(ports, [i32::from(args.listen.port()), i32::from(args.admin_listen.port())]);
    assert!(rules.iter().all(|r| r.from.as_ref().is_some_and(|f| !f.is_empty())), "both ports have peers");
}

#[test]
fn extra_args_env_volumes_and_probes_reach_the_pod() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/extras-values.yaml"]) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.trusted_proxies, ["10.0.0.0/8"]);
    let deployment: Deployment = docs.one(RELEASE);
    assert_eq!(deployment.spec.min_ready_seconds, Some(10));
    let template = deployment.spec.template.clone();
    let pod = pod_spec(&template);
    let wsingress = container(pod, "wsingress");
    assert!(wsingress.startup_probe.is_none(), "startupProbe.enabled=false");
    assert!(wsingress.env.iter().flatten().any(|e| e.name == "RUST_LOG"));
    let mounts = wsingress.volume_mounts.clone().unwrap_or_default();
    assert_eq!((mounts[0].name.as_str(), mounts[0].mount_path.as_str()), ("scratch", "/scratch"));
    assert!(pod.volumes.iter().flatten().any(|v| v.name == "scratch" && v.empty_dir.is_some()));
    let spread = pod.topology_spread_constraints.clone().unwrap_or_default();
    assert_eq!(spread.iter().map(|c| c.topology_key.as_str()).collect::<Vec<_>>(), ["topology.kubernetes.io/zone"]);
    // The strategy given replaces the default.
    assert_eq!(rolling_update_surge(&docs, "Deployment").as_deref(), Some("0"));
    let Some(docs) = render(&[]) else { return };
    let probe =
        container(pod_spec(&workload(&docs).1), "wsingress").startup_probe.clone().expect("startupProbe on by default");
    assert_eq!(probe.http_get.and_then(|g| g.path).as_deref(), Some("/readyz"));
}

#[test]
fn proxy_protocol_values_become_flags() {
    let Some(docs) = render(&[]) else { return };
    let args = check_controller(&docs);
    assert!(!args.proxy_protocol, "off by default");
    assert!(args.proxy_protocol_from.is_empty());
    let set = [
        "--set",
        "controller.proxyProtocol.enabled=true",
        "--set",
        "controller.proxyProtocol.trustedCIDRs={10.0.0.0/8,fd00::/8}",
    ];
    let Some(docs) = render(&set) else { return };
    let args = check_controller(&docs);
    assert!(args.proxy_protocol);
    assert_eq!(args.proxy_protocol_from, ["10.0.0.0/8", "fd00::/8"]);
    // Trusted CIDRs without `enabled` pass no flag (clap would refuse --proxy-protocol-from alone).
    let Some(docs) = render(&["--set", "controller.proxyProtocol.trustedCIDRs={10.0.0.0/8}"]) else { return };
    assert!(!check_controller(&docs).proxy_protocol);
    let bad = render_error(&["--set", "controller.proxyProtocol.trustedCIDRs={office}"]);
    assert!(bad.as_deref().is_none_or(|e| e.contains("trustedCIDRs")), "the schema refuses a non-CIDR: {bad:?}");
}

#[test]
fn service_options_and_the_internal_service() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/service-options-values.yaml"]) else { return };
    check_controller(&docs);
    let public: Service = docs.one(RELEASE);
    let spec = service_spec(&public);
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
    assert_eq!(spec.ip_families.clone().unwrap_or_default(), ["IPv6", "IPv4"]);
    assert_eq!(spec.load_balancer_class.as_deref(), Some("service.k8s.aws/nlb"));
    assert_eq!(spec.load_balancer_source_ranges.clone().unwrap_or_default(), ["203.0.113.0/24", "2001:db8::/32"]);
    let internal: Service = docs.one(&format!("{RELEASE}-internal"));
    let annotations = internal.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("service.beta.kubernetes.io/aws-load-balancer-internal").map(String::as_str),
        Some("true")
    );
    assert_eq!(service_spec(&internal).selector, spec.selector);
    // The ServiceMonitor (admin Service only) never selects either proxy Service.
    assert_ne!(
        internal.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/component")).map(String::as_str),
        Some("admin")
    );
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
fn sidecar_example_runs_wsingress_as_a_native_sidecar_that_drains_first() {
    let Some(docs) = render(&["--set", "sidecar.enabled=true"]) else {
        return;
    };
    let deployment: Deployment = docs.one(&format!("{RELEASE}-sidecar-example"));
    let template = deployment.spec.template.clone();
    let pod = pod_spec(&template);
    assert_eq!(pod.automount_service_account_token, Some(false), "a sidecar needs no API token");
    let (args, _) = check_sidecar_pod(pod);
    // drainDelaySeconds 5 + shutdownTimeout 30 s + 5 s, then 10 s for both to stop.
    assert_eq!(pre_stop_sleep(container(pod, "app")), 40);
    assert_eq!(grace(pod), 50);
    let service: Service = docs.one(&format!("{RELEASE}-sidecar-example"));
    let spec = service_spec(&service);
    let pod_labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    assert!(labels_match(spec.selector.as_ref().expect("selector"), pod_labels));
    let proxy = init_container(pod, "wsingress");
    assert_eq!(
        resolve_port(proxy, spec.ports.as_ref().expect("ports")[0].target_port.as_ref().expect("targetPort")),
        i32::from(args.listen.port())
    );
    // The controller is untouched by the sidecar switch.
    check_controller(&docs);
}

#[test]
fn helm_test_runs_the_release_image_with_the_host_it_is_given() {
    let Some(docs) = render(&[]) else { return };
    let pods = docs.all::<Pod>();
    assert_eq!(pods.len(), 1);
    check_test_pod(&docs, &pods[0]);
    let args = pods[0].spec.as_ref().expect("spec").containers[0].args.clone().unwrap_or_default();
    assert!(!args.iter().any(|a| a.starts_with("--host")), "no Host header unless asked: {args:?}");
    // websocat's -H once swallowed the URL; with the client the URL stays where it is.
    let Some(docs) = render(&["--set", "tests.host=ws.example.com", "--set", "tests.path=/chat"]) else { return };
    let pod = &docs.all::<Pod>()[0];
    check_test_pod(&docs, pod);
    let client = match parse_cli(&pod.spec.as_ref().expect("spec").containers[0]).command {
        Command::Client(args) => args,
        other => panic!("{other:?}"),
    };
    assert_eq!(client.host.as_deref(), Some("ws.example.com"));
    assert_eq!(client.url, format!("ws://{RELEASE}.{NAMESPACE}.svc:80/chat"));
    // The expected prefix is the one manifests/echo.yaml's echo sends.
    let echo_docs = manifest("echo.yaml");
    let echo: Deployment = echo_docs.one("echo");
    let prefix = echo_args(container(pod_spec(&echo.spec.template), "echo")).prefix;
    assert!(client.expect[0].starts_with(&prefix));
}

#[test]
fn helm_test_has_a_wss_variant_when_given_a_ca_secret_and_a_host() {
    let Some(docs) = render(&["--set", "tests.wss.caSecret=echo-ca", "--set", "tests.wss.host=echo.example.com"])
    else {
        return;
    };
    let pods = docs.all::<Pod>();
    assert_eq!(pods.len(), 2, "the ws pod and the wss pod");
    let wss = pods.iter().find(|p| object_name(*p) == format!("{RELEASE}-test-wss")).expect("the wss test pod");
    check_test_pod(&docs, wss);
    let client = match parse_cli(&wss.spec.as_ref().expect("spec").containers[0]).command {
        Command::Client(args) => args,
        other => panic!("{other:?}"),
    };
    assert_eq!(client.host.as_deref(), Some("echo.example.com"));
    let volumes = wss.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    assert_eq!(volumes[0].secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some("echo-ca"));
    let Some(err) = render_error(&["--set", "tests.wss.caSecret=echo-ca"]) else { return };
    assert!(err.contains("tests.wss.host is required"), "{err}");
}

#[test]
fn the_chart_echo_takes_the_release_class_and_matches_the_manifest() {
    let Some(docs) = render(&["-f", "charts/wsingress/ci/examples-values.yaml"]) else { return };
    let name = format!("{RELEASE}-echo");
    let chart_echo = check_echo(&docs, &name);
    let ingress: Ingress = docs.one(&name);
    let spec = ingress.spec.expect("spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("ws-public"));
    assert_eq!(spec.rules.expect("rules")[0].host.as_deref(), Some("echo.example.com"));
    // The test pod sends the echo's host.
    let pod = &docs.all::<Pod>()[0];
    let args = pod.spec.as_ref().expect("spec").containers[0].args.clone().unwrap_or_default();
    assert!(args.contains(&"--host=echo.example.com".to_string()), "{args:?}");
    // Same echo, same route settings as manifests/echo.yaml.
    let manifest_docs = manifest("echo.yaml");
    let manifest_echo = check_echo(&manifest_docs, "echo");
    assert_eq!((chart_echo.prefix, chart_echo.listen), (manifest_echo.prefix, manifest_echo.listen));
    let a: Ingress = docs.one(&name);
    let b: Ingress = manifest_docs.one("echo");
    assert_eq!(a.metadata.annotations, b.metadata.annotations);
}

#[test]
fn echo_manifest_is_coherent() {
    let docs = manifest("echo.yaml");
    let deployment: Deployment = docs.one("echo");
    assert_eq!(deployment.spec.replicas, Some(2));
    let args = check_echo(&docs, "echo");
    assert_eq!(args.prefix, "Server received from client: ");
    let ingress: Ingress = docs.one("echo");
    assert_eq!(ingress.spec.and_then(|s| s.ingress_class_name).as_deref(), Some(wsingress::translate::DEFAULT_CLASS));
}

#[test]
fn sidecar_manifest_is_coherent() {
    let docs = manifest("sidecar-example.yaml");
    let deployments = docs.all::<Deployment>();
    assert_eq!(deployments.len(), 1);
    let template = deployments[0].spec.template.clone();
    let pod = pod_spec(&template);
    let (args, _) = check_sidecar_pod(pod);
    let services = docs.all::<Service>();
    assert_eq!(services.len(), 1);
    let spec = services[0].spec.clone().expect("spec");
    let target = spec.ports.expect("ports")[0].target_port.clone().expect("targetPort");
    assert_eq!(resolve_port(init_container(pod, "wsingress"), &target), i32::from(args.listen.port()));
}

#[test]
fn every_wsingress_container_in_the_manifests_parses() {
    for name in ["echo.yaml", "sidecar-example.yaml"] {
        let docs = manifest(name);
        let mut seen = 0;
        for deployment in docs.all::<Deployment>() {
            let template = deployment.spec.template.clone();
            let pod = pod_spec(&template);
            for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()).filter(|c| is_wsingress_image(c))
            {
                parse_cli(c);
                seen += 1;
            }
        }
        assert!(seen > 0, "{name} runs no wsingress container");
    }
    assert!(Path::new(&root().join("manifests")).is_dir());
}

#[test]
fn chart_readme_is_generated_from_the_values_comments() {
    let out = Process::new("python3")
        .current_dir(root())
        .args(["scripts/chart-readme.py", "--check"])
        .output()
        .expect("run python3 scripts/chart-readme.py");
    assert!(
        out.status.success(),
        "charts/wsingress/README.md drifted from values.yaml; run: python3 scripts/chart-readme.py\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The GatewayClass the chart creates, as raw YAML (no typed model in k8s-openapi).
fn gateway_classes(docs: &Docs) -> Vec<&serde_yaml::Value> {
    docs.raw("gateway.networking.k8s.io/v1", "GatewayClass")
}

#[test]
fn gateway_api_is_off_by_default_and_grants_nothing_for_it() {
    let Some(docs) = render(&[]) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.gateway_api, GatewayApiMode::Off, "without gatewayAPI.enabled the binary must not watch it");
    assert!(gateway_classes(&docs).is_empty());
    let granted: BTreeSet<String> = docs
        .all::<ClusterRole>()
        .iter()
        .flat_map(|r| r.rules.iter().flatten().flat_map(|r| r.resources.clone().unwrap_or_default()))
        .collect();
    for resource in GATEWAY_CLUSTER_SCOPED.iter().chain(GATEWAY_NAMESPACED) {
        assert!(!granted.contains(*resource), "{resource} granted with Gateway API off");
    }
}

#[test]
fn gateway_api_enabled_creates_our_gateway_class_and_exactly_its_rbac() {
    let flags = ["-f", "charts/wsingress/ci/gateway-api-values.yaml"];
    let Some(docs) = render(&flags) else { return };
    let args = check_controller(&docs);
    assert_eq!(args.gateway_api, GatewayApiMode::Auto);
    assert_eq!(args.gateway_controller_name, "example.com/ws-gateway");
    assert_eq!(args.gateway_api_recheck, Duration::from_secs(30));
    check_rbac(&docs, &args);
    let classes = gateway_classes(&docs);
    assert_eq!(classes.len(), 1);
    assert_eq!(classes[0]["metadata"]["name"].as_str(), Some("edge"));
    assert_eq!(
        classes[0]["spec"]["controllerName"].as_str(),
        Some(args.gateway_controller_name.as_str()),
        "the class names the controller this install serves"
    );
    // Watched namespaces: the Gateway API kinds move into their Roles too.
    let Some(docs) = render(&["--set", "gatewayAPI.enabled=true", "--set", "controller.watchNamespace=apps"]) else {
        return;
    };
    let args = check_controller(&docs);
    check_rbac(&docs, &args);
    let role = docs.all::<Role>().into_iter().find(|r| r.metadata.namespace.as_deref() == Some("apps")).expect("Role");
    let resources: BTreeSet<String> =
        role.rules.iter().flatten().flat_map(|r| r.resources.clone().unwrap_or_default()).collect();
    assert!(resources.contains("httproutes/status"), "{resources:?}");
    // Without the GatewayClass (one created elsewhere), the RBAC stays.
    let Some(docs) = render(&["--set", "gatewayAPI.enabled=true", "--set", "gatewayAPI.gatewayClass.create=false"])
    else {
        return;
    };
    assert!(gateway_classes(&docs).is_empty());
    check_rbac(&docs, &check_controller(&docs));
}

#[test]
fn gateway_api_values_are_validated_by_the_schema() {
    for bad in [
        ["--set", "gatewayAPI.controllerName=no-slash"],
        ["--set", "gatewayAPI.recheck=soon"],
        ["--set", "gatewayAPI.gatewayClass.name=Edge_Class"],
        ["--set", "gatewayAPI.enabled=maybe"],
    ] {
        let Some(err) = render_error(&bad) else { return };
        assert!(err.contains("gatewayAPI"), "{bad:?}: {err}");
    }
}
