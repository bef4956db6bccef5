#!/usr/bin/env bash
# The kind end-to-end suite. Needs Docker, kind and internet access for images (a GitHub
# hosted runner: .github/workflows/e2e.yml); the development machines have neither Docker
# nor kind. Run from anywhere:
#   tests/e2e/run.sh     # or: cargo test --test e2e_kind -- --ignored
# Environment: KIND_CLUSTER (default wsingress-e2e), KIND_NODE_IMAGE (default: kind's),
# KEEP_CLUSTER=1 keeps the cluster afterwards, SKIP_BUILD=1 reuses an image already built,
# WSINGRESS_BIN (default target/debug/wsingress; tests/e2e_kind.rs passes its own build).
#
# Steps: create the cluster (a control plane and a worker), build the image without
# attestations (kind load cannot import an image index with provenance) and load it, helm
# install the chart with two replicas (NodePort 30080 -> host 127.0.0.1:8080), apply
# manifests/echo.yaml, then check from the host (every connection is opened with retries):
#   1. a WebSocket round trip returns the prefixed echo;
#   2. connections spread over both echo pods;
#   3. the Ingress status has an address;
#   4. /metrics (port-forward to each controller pod's admin port) counts held connections;
#   5. a rolling restart of the echo closes old tunnels with Close 1001, new ones succeed;
#   6. a helm upgrade that changes the controller's pod template while 200 tunnels are open:
#      each survives or gets Close 1001 before its pod goes; no client sees a reset;
#   7. helm test (wsingress client from the release's image) passes;
#   8. wss:// and Gateway API: checks come here with TLS (issue 12) and Gateway API (issue 14).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CLUSTER=${KIND_CLUSTER:-wsingress-e2e}
IMAGE=ghcr.io/wsingress/wsingress:$("$ROOT/scripts/version.sh" get)
NS=wsingress-system
RELEASE=wsingress
APP_NS=default
URL=ws://127.0.0.1:8080/
PREFIX="Server received from client: "
WORK=$(mktemp -d)
PIDS=()
WSINGRESS_BIN=${WSINGRESS_BIN:-$ROOT/target/debug/wsingress}

step() { printf '\n=== %s\n' "$*"; }
die() {
    printf 'e2e: FAIL: %s\n' "$*" >&2
    exit 1
}

for tool in docker kind node npm; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -x "$WSINGRESS_BIN" ] || die "$WSINGRESS_BIN is not built (cargo build, or set WSINGRESS_BIN)"
"$ROOT/scripts/install-tools.sh" node helm
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
export KUBECONFIG="$WORK/kubeconfig"

diagnostics() {
    echo "--- diagnostics"
    kubectl get nodes,pods,svc,endpointslices,ingress -A -o wide || true
    kubectl -n "$NS" describe pods || true
    kubectl -n "$NS" logs -l app.kubernetes.io/component=controller --tail=200 --prefix || true
    kubectl -n "$APP_NS" logs -l app.kubernetes.io/name=echo --tail=50 --prefix || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -40 || true
}

cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ] && [ -f "$KUBECONFIG" ]; then
        diagnostics
    fi
    if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
        echo "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG)"
    else
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

# Poll CMD until it prints something non-empty, at most SECONDS; echo what it printed.
wait_for_output() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds)) out
    while [ "$SECONDS" -lt "$deadline" ]; do
        out=$("$@" 2>/dev/null || true)
        if [ -n "$out" ]; then
            printf '%s' "$out"
            return 0
        fi
        sleep 2
    done
    die "$what: nothing after ${seconds}s"
}

step "kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
node_image=()
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
    node_image=(--image "$KIND_NODE_IMAGE")
fi
kind create cluster --name "$CLUSTER" --config tests/e2e/kind-config.yaml "${node_image[@]}" \
    --kubeconfig "$KUBECONFIG" --wait 180s
kubectl version

step "image $IMAGE"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # A plain single-platform image: no provenance or SBOM attestations, which would make it
    # an index that `kind load docker-image` cannot import.
    docker buildx build --load --provenance=false --sbom=false -t "$IMAGE" \
        --build-arg VERSION="$("$ROOT/scripts/version.sh" get)" \
        --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
fi
docker run --rm "$IMAGE" --version
docker image inspect --format 'image size (uncompressed): {{.Size}} bytes' "$IMAGE"
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "helm install (two replicas)"
helm install "$RELEASE" charts/wsingress --namespace "$NS" --create-namespace \
    -f tests/e2e/values-kind.yaml --wait --timeout 240s
kubectl -n "$NS" get pods,svc -o wide
replicas=$(kubectl -n "$NS" get deployment "$RELEASE" -o 'jsonpath={.status.readyReplicas}')
[ "$replicas" = 2 ] || die "want 2 ready controller replicas, have '$replicas'"

step "echo deployment"
kubectl -n "$APP_NS" apply -f manifests/echo.yaml
kubectl -n "$APP_NS" rollout status deployment/echo --timeout=180s

step "1. round trip (ws-check.js, and wsingress client from this build)"
node tests/e2e/ws-check.js roundtrip "$URL" "$PREFIX"
"$WSINGRESS_BIN" client "$URL" --send "hello from the host" --expect "${PREFIX}hello from the host" \
    --count 4 --retry-for 90s

step "2. connections spread over both echo pods"
node tests/e2e/ws-check.js spread "$URL" 12 2

step "3. Ingress status"
address=$(wait_for_output 120 "Ingress echo status address" kubectl -n "$APP_NS" get ingress echo \
    -o 'jsonpath={.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}')
echo "Ingress echo has address $address"

step "4. /metrics counts the connections"
HELD=6
node tests/e2e/ws-check.js hold "$URL" "$HELD" 120 "$WORK/held" &
hold_pid=$!
PIDS+=("$hold_pid")
wait_for_output 60 "held connections" cat "$WORK/held" >/dev/null
mapfile -t pods < <(kubectl -n "$NS" get pods -l app.kubernetes.io/component=controller \
    -o 'jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}')
[ "${#pods[@]}" -ge 1 ] || die "no controller pods"
active=0
upgrades=0
port=19090
for pod in "${pods[@]}"; do
    port=$((port + 1))
    kubectl -n "$NS" port-forward "pod/$pod" "$port:9090" >"$WORK/pf-$pod.log" 2>&1 &
    PIDS+=($!)
    wait_for_output 30 "port-forward to $pod" curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null
    curl -fsS "http://127.0.0.1:$port/metrics" >"$WORK/metrics-$pod.txt"
    pod_active=$(awk '/^wsingress_websocket_connections_active[{ ]/ {s += $NF} END {print s + 0}' "$WORK/metrics-$pod.txt")
    pod_upgrades=$(awk '/^wsingress_websocket_upgrades_total[{ ]/ {s += $NF} END {print s + 0}' "$WORK/metrics-$pod.txt")
    echo "$pod: wsingress_websocket_connections_active=$pod_active wsingress_websocket_upgrades_total=$pod_upgrades"
    active=$(awk -v a="$active" -v b="$pod_active" 'BEGIN {print a + b}')
    upgrades=$(awk -v a="$upgrades" -v b="$pod_upgrades" 'BEGIN {print a + b}')
done
awk -v a="$active" -v h="$HELD" 'BEGIN {exit !(a >= h)}' ||
    die "wsingress_websocket_connections_active sums to $active, want >= $HELD"
awk -v u="$upgrades" -v h="$HELD" 'BEGIN {exit !(u >= h)}' ||
    die "wsingress_websocket_upgrades_total sums to $upgrades, want >= $HELD"
echo "metrics ok: $active active, $upgrades upgrades"
kill "$hold_pid" 2>/dev/null || true

step "5. rolling restart of the echo drains with Close 1001"
node tests/e2e/ws-check.js drain "$URL" 6 -- \
    bash -c "kubectl -n $APP_NS rollout restart deployment/echo && kubectl -n $APP_NS rollout status deployment/echo --timeout=180s"

step "6. helm upgrade with 200 tunnels open: each survives or gets Close 1001, no resets"
node tests/e2e/ws-check.js upgrade "$URL" 200 -- \
    helm upgrade "$RELEASE" charts/wsingress --namespace "$NS" -f tests/e2e/values-kind.yaml \
    --set-string "podAnnotations.e2e/rollout=$(date +%s)" --wait --timeout 300s
kubectl -n "$NS" rollout status "deployment/$RELEASE" --timeout=120s

step "7. helm test (wsingress client from the release image)"
helm test "$RELEASE" --namespace "$NS" --logs --timeout 180s

# step "8. wss://": with TLS (issue 12): install with a TLS Secret for the echo host, then
#   node tests/e2e/ws-check.js roundtrip wss://127.0.0.1:8443/ "$PREFIX" (CA from the Secret),
#   and `helm test` with the wss variant of the test pod (wsingress client --ca).
# step "9. Gateway API": with issue 14: apply the Gateway API CRDs and
#   manifests/gateway-echo.yaml, then the same round trip and drain checks through the Gateway.

step "e2e: all checks passed"
