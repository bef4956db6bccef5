#!/usr/bin/env bash
# Validate the Helm chart, the Kubernetes manifests and the release files without a cluster:
#   1. helm lint --strict for the values matrix: default values, every values file in
#      charts/wsingress/ci/, the kind suite's values, and the --set/--set-string sets below;
#   2. helm template for each, written to target/k8s/<set>.yaml;
#   3. every rendered document and every manifests/*.yaml checked by kubernetes-validate
#      --strict (unknown fields are errors) against each Kubernetes version in K8S_VERSIONS,
#      and custom resources (the ServiceMonitor) against their vendored CRD schema
#      (tests/k8s-schemas/, scripts/validate-crd.py);
#   4. NOTES.txt renders for every value set (helm template skips it; a copy of the chart
#      wraps it in a document so template errors show here, not at install time);
#   5. values the schema or a template guard must reject are rejected;
#   6. the chart README's values table matches values.yaml (scripts/chart-readme.py --check);
#   7. the Dockerfile passes hadolint, the shell scripts shellcheck, the workflows actionlint.
# Tools come from scripts/install-tools.sh (run here; it skips what is already installed).
# Prints "N passed, N failed" and exits non-zero on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/install-tools.sh" helm kubernetes-validate hadolint shellcheck actionlint >/dev/null
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"

CHART=charts/wsingress
OUT=target/k8s
# Every minor the chart supports (Chart.yaml kubeVersion >=1.30) up to the newest schemas.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0"}
RELEASE=wsingress
NAMESPACE=wsingress

# name|helm flags: the values files of charts/wsingress/ci/ (the matrix tests/chart.rs also
# renders), then sets given on the command line.
VALUE_SETS=("default|")
for file in "$CHART"/ci/*-values.yaml; do
    name=$(basename "$file" -values.yaml)
    VALUE_SETS+=("$name|-f $file")
done
VALUE_SETS+=(
    "kind|-f tests/e2e/values-kind.yaml"
    "nodeport|--set service.type=NodePort --set service.nodePort=30080"
    "servicemonitor|--set metrics.serviceMonitor.enabled=true --set metrics.podAnnotations=true"
    "default-class|--set ingressClass.default=true --set tests.host=ws.example.com"
    "sidecar-on|--set sidecar.enabled=true"
    "hostport|--set hostPort.enabled=true --set service.type=ClusterIP --set replicaCount=1"
    "tuned|--set controller.watchNamespace=apps --set controller.publishAddress=ws.example.com --set controller.shutdownTimeout=2m --set routeDefaults.idleTimeout=never --set routeDefaults.loadBalance=header-hash:x-user --set controller.trustedProxies={10.0.0.0/8,192.168.0.0/16} --set podDisruptionBudget.minAvailable=1 --set controller.preStopSleepSeconds=0"
    "set-string|--set-string controller.maxHeaderBytes=1048576 --set-string routeDefaults.maxMessageBytes=104857600 --set-string replicaCount=3 --set-string service.port=8080 --set-string podDisruptionBudget.maxUnavailable=0"
)

# name|helm flags that the schema (or a template guard) must reject
BAD_SETS=(
    "unknown-key|--set bogus=1"
    "bad-duration|--set controller.shutdownTimeout=5minutes"
    "bad-policy|--set routeDefaults.loadBalance=fastest"
    "bad-service-type|--set service.type=ExternalName"
    "bad-nodeport|--set service.nodePort=8080"
    "servicemonitor-without-admin|--set metrics.serviceMonitor.enabled=true --set adminService.enabled=false"
    "fractional-number|--set-string controller.maxHeaderBytes=1.5"
    "bad-kind|--set controller.kind=StatefulSet"
    "hostport-surge|--set hostPort.enabled=true --set controller.updateStrategy.type=RollingUpdate --set controller.updateStrategy.rollingUpdate.maxSurge=1"
    "hpa-daemonset|--set autoscaling.enabled=true --set controller.kind=DaemonSet"
    "short-grace-margin|--set controller.terminationGraceExtraSeconds=2"
    "echo-prestop-shorter-than-drain|--set echo.enabled=true --set echo.drainTimeout=30s --set echo.preStopSleepSeconds=10"
    "sidecar-drain-delay-too-short|--set sidecar.enabled=true --set sidecar.drainDelaySeconds=1"
    "bad-watch-namespace|--set controller.watchNamespace=Not_A_Name"
)

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    printf 'ok    %s\n' "$*"
}
bad() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$*"
}

mkdir -p "$OUT"
rm -f "$OUT"/*.yaml "$OUT"/*.notes.txt

# A copy of the chart whose extra template renders NOTES.txt into a document.
NOTES_CHART="$OUT/notes-chart/wsingress"
rm -rf "$OUT/notes-chart"
mkdir -p "$OUT/notes-chart"
cp -r "$CHART" "$NOTES_CHART"
{
    echo '{{- define "wsingress.validateNotes" }}'
    cat "$CHART/templates/NOTES.txt"
    echo '{{- end }}'
    echo 'kind: RenderedNotes'
    echo 'text: {{ include "wsingress.validateNotes" . | toJson }}'
} >"$NOTES_CHART/templates/zz-validate-notes.yaml"

for entry in "${VALUE_SETS[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    # shellcheck disable=SC2086 # flags are word-split on purpose
    if lint=$(helm lint --strict "$CHART" $flags 2>&1); then
        ok "helm lint --strict ($name)"
    else
        bad "helm lint --strict ($name)"
        printf '%s\n' "$lint" | sed 's/^/      /'
        continue
    fi
    # shellcheck disable=SC2086
    if helm template "$RELEASE" "$CHART" --namespace "$NAMESPACE" $flags >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
        ok "helm template ($name): $(grep -c '^kind:' "$OUT/$name.yaml") documents -> $OUT/$name.yaml"
    else
        bad "helm template ($name)"
        sed 's/^/      /' "$OUT/$name.err"
    fi
    rm -f "$OUT/$name.err"
    # shellcheck disable=SC2086
    if helm template "$RELEASE" "$NOTES_CHART" --namespace "$NAMESPACE" $flags \
        --show-only templates/zz-validate-notes.yaml >"$OUT/$name.notes.txt" 2>&1 &&
        grep -q '1. Deploy the echo service' "$OUT/$name.notes.txt"; then
        ok "NOTES.txt renders ($name)"
    else
        bad "NOTES.txt renders ($name)"
        sed 's/^/      /' "$OUT/$name.notes.txt"
    fi
done
rm -rf "$OUT/notes-chart"

# The examples set must render the dashboard ConfigMap when the dashboard file exists.
if [ -f "$CHART/dashboards/wsingress.json" ]; then
    if grep -q 'grafana_dashboard: "1"' "$OUT/examples.yaml"; then
        ok "dashboard ConfigMap rendered"
    else
        bad "dashboard ConfigMap missing although $CHART/dashboards/wsingress.json exists"
    fi
fi

for entry in "${BAD_SETS[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    # shellcheck disable=SC2086
    if helm template "$RELEASE" "$CHART" $flags >/dev/null 2>&1; then
        bad "helm template rejects $name ($flags)"
    else
        ok "helm template rejects $name"
    fi
done

files=("$OUT"/*.yaml manifests/*.yaml)
for version in $K8S_VERSIONS; do
    if result=$(kubernetes-validate --strict --quiet --no-warn -k "$version" "${files[@]}" 2>&1); then
        ok "kubernetes-validate --strict -k $version: ${#files[@]} files"
    else
        bad "kubernetes-validate --strict -k $version"
        printf '%s\n' "$result" | sed 's/^/      /'
    fi
done
# Custom resources against their vendored CRD schemas (strict); at least the ServiceMonitor sets.
if result=$("$WSINGRESS_TOOLS/venv/bin/python" scripts/validate-crd.py "${files[@]}" 2>&1) &&
    grep -q '^ok .*ServiceMonitor' <<<"$result"; then
    ok "CRD schemas: $(grep -c '^ok' <<<"$result") custom resources (tests/k8s-schemas/)"
else
    bad "CRD schemas (scripts/validate-crd.py)"
    printf '%s\n' "$result" | sed 's/^/      /'
fi

if result=$(python3 scripts/chart-readme.py --check 2>&1); then
    ok "chart README values table ($result)"
else
    bad "chart README values table"
    printf '%s\n' "$result" | sed 's/^/      /'
fi

if result=$(hadolint Dockerfile 2>&1); then
    ok "hadolint Dockerfile"
else
    bad "hadolint Dockerfile"
    printf '%s\n' "$result" | sed 's/^/      /'
fi
workflows=(.github/workflows/*.yml)
if result=$(actionlint -shellcheck "$(command -v shellcheck)" "${workflows[@]}" 2>&1); then
    ok "actionlint: ${#workflows[@]} workflows"
else
    bad "actionlint .github/workflows"
    printf '%s\n' "$result" | sed 's/^/      /'
fi
for script in scripts/*.sh tests/e2e/*.sh; do
    [ -f "$script" ] || continue
    if result=$(shellcheck -x "$script" 2>&1); then
        ok "shellcheck $script"
    else
        bad "shellcheck $script"
        printf '%s\n' "$result" | sed 's/^/      /'
    fi
done

echo "validate-k8s: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
