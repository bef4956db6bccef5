#!/usr/bin/env bash
# Validate the Helm chart and the Kubernetes manifests without a cluster:
#   1. helm lint --strict (default values and every value set below);
#   2. helm template for each value set, written to target/k8s/<set>.yaml;
#   3. every rendered document and every manifests/*.yaml checked by kubernetes-validate
#      --strict (unknown fields are errors) against each Kubernetes version in K8S_VERSIONS;
#   4. NOTES.txt renders for every value set (helm template skips it; a copy of the chart
#      wraps it in a document so template errors show here, not at install time);
#   5. values the schema must reject are rejected;
#   6. the Dockerfile passes hadolint and the shell scripts pass shellcheck.
# Tools come from scripts/install-tools.sh (run here for helm and kubernetes-validate; it
# skips what is already installed). Prints "N passed, N failed" and exits non-zero on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/install-tools.sh" helm kubernetes-validate hadolint shellcheck >/dev/null
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"

CHART=charts/wsingress
OUT=target/k8s
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.31.0 1.33.0 1.35.0 1.37.0"}
RELEASE=wsingress
NAMESPACE=wsingress

# name|helm flags
VALUE_SETS=(
    "default|"
    "nodeport|--set service.type=NodePort --set service.nodePort=30080"
    "servicemonitor|--set metrics.serviceMonitor.enabled=true --set metrics.podAnnotations=true"
    "default-class|--set ingressClass.default=true"
    "sidecar-on|--set sidecar.enabled=true"
    "dashboard|--set dashboard.enabled=true"
    "hostport|--set hostPort.enabled=true --set service.type=ClusterIP --set replicaCount=1"
    "tuned|--set controller.watchNamespace=apps --set controller.publishAddress=ws.example.com --set controller.shutdownTimeout=2m --set routeDefaults.idleTimeout=never --set routeDefaults.loadBalance=header-hash:x-user --set controller.trustedProxies={10.0.0.0/8,192.168.0.0/16} --set podDisruptionBudget.minAvailable=1 --set controller.preStopSleepSeconds=0"
    "kind|-f tests/e2e/values-kind.yaml"
)

# name|helm flags that the schema (or a template guard) must reject
BAD_SETS=(
    "unknown-key|--set bogus=1"
    "bad-duration|--set controller.shutdownTimeout=5minutes"
    "bad-policy|--set routeDefaults.loadBalance=fastest"
    "bad-service-type|--set service.type=ExternalName"
    "bad-nodeport|--set service.nodePort=8080"
    "servicemonitor-without-admin|--set metrics.serviceMonitor.enabled=true --set adminService.enabled=false"
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
        grep -q 'kubectl apply -f manifests/echo.yaml' "$OUT/$name.notes.txt"; then
        ok "NOTES.txt renders ($name)"
    else
        bad "NOTES.txt renders ($name)"
        sed 's/^/      /' "$OUT/$name.notes.txt"
    fi
done
rm -rf "$OUT/notes-chart"

# The dashboard set must render the ConfigMap when the dashboard file exists.
if [ -f "$CHART/dashboards/wsingress.json" ]; then
    if grep -q 'grafana_dashboard: "1"' "$OUT/dashboard.yaml"; then
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
    for file in "${files[@]}"; do
        if result=$(kubernetes-validate --strict --quiet --no-warn -k "$version" "$file" 2>&1); then
            ok "kubernetes-validate --strict -k $version $file"
        else
            bad "kubernetes-validate --strict -k $version $file"
            printf '%s\n' "$result" | sed 's/^/      /'
        fi
    done
done

if result=$(hadolint Dockerfile 2>&1); then
    ok "hadolint Dockerfile"
else
    bad "hadolint Dockerfile"
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
