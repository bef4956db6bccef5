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
#   8. wss://: TLS Secrets (openssl) for an Ingress host and --default-tls-secret; SNI picks the
#      certificate (openssl s_client, verified with the CA), wss round trips from the host
#      (wsingress client --ca) and in the cluster (helm test's wss pod, tests.wss.*), a
#      rotation keeps a tunnel opened before, a bad Secret gets a Warning Event and the last
#      good certificate keeps serving;
#   9. Gateway API: the standard-channel CRDs, the chart with gatewayAPI.enabled, the echo
#      Ingress replaced by manifests/gateway-echo.yaml (GatewayClass and HTTPRoute Accepted by
#      our controller), a round trip through the HTTPRoute, the Gateway's status address.
#      The upstream conformance suite is tests/e2e/gateway-conformance.sh (its own job).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CLUSTER=${KIND_CLUSTER:-wsingress-e2e}
VERSION=$("$ROOT/scripts/version.sh" get)
IMAGE=ghcr.io/wsingress/wsingress:$VERSION
NS=wsingress-system
RELEASE=wsingress
APP_NS=default
URL=ws://127.0.0.1:8080/
PREFIX="Server received from client: "
WSINGRESS_BIN=${WSINGRESS_BIN:-$ROOT/target/debug/wsingress}
E2E_NAME=e2e

step() { printf '\n=== %s\n' "$*"; }

diagnostics() {
    kubectl get nodes,pods,svc,endpointslices,ingress -A -o wide || true
    kubectl -n "$NS" describe pods || true
    kubectl -n "$NS" logs -l app.kubernetes.io/component=controller --tail=200 --prefix || true
    kubectl -n "$APP_NS" logs -l app.kubernetes.io/name=echo --tail=50 --prefix || true
    kubectl get events -A --sort-by=.lastTimestamp | tail -40 || true
}

# shellcheck source=tests/e2e/lib.sh
. "$ROOT/tests/e2e/lib.sh"

for tool in docker kind node npm; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -x "$WSINGRESS_BIN" ] || die "$WSINGRESS_BIN is not built (cargo build, or set WSINGRESS_BIN)"
"$ROOT/scripts/install-tools.sh" node helm
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"

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
node_image=()
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
    node_image=(--image "$KIND_NODE_IMAGE")
fi
kind_cluster --config tests/e2e/kind-config.yaml "${node_image[@]}"
kubectl version

step "image $IMAGE"
image_into_cluster
docker run --rm "$IMAGE" --version
docker image inspect --format 'image size (uncompressed): {{.Size}} bytes' "$IMAGE"

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

step "8. wss:// with TLS Secrets: SNI, the default certificate, rotation, a bad Secret, wss in the cluster"
TLS_HOST=echo.e2e.test
TLS_DIR="$WORK/tls"
mkdir -p "$TLS_DIR"
# A CA, then leaves it issues (ECDSA P-256): NAME CN SAN.
make_leaf() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
        -keyout "$TLS_DIR/$1.key" -out "$TLS_DIR/$1.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$3" >"$TLS_DIR/$1.ext"
    openssl x509 -req -in "$TLS_DIR/$1.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 2 -extfile "$TLS_DIR/$1.ext" -out "$TLS_DIR/$1.crt" 2>/dev/null
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=wsingress e2e CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" 2>/dev/null
make_leaf echo-v1 "echo e2e v1" "DNS:$TLS_HOST"
make_leaf echo-v2 "echo e2e v2" "DNS:$TLS_HOST"
make_leaf default "e2e default" "DNS:default.e2e.test"
kubectl -n "$APP_NS" create secret tls echo-tls --cert "$TLS_DIR/echo-v1.crt" --key "$TLS_DIR/echo-v1.key"
kubectl -n "$NS" create secret tls e2e-default-tls --cert "$TLS_DIR/default.crt" --key "$TLS_DIR/default.key"
# The CA for the wss `helm test` pod: an Opaque Secret no route names, so the controller never
# reads it.
kubectl -n "$NS" create secret generic e2e-ca --from-file=ca.crt="$TLS_DIR/ca.crt"
kubectl -n "$APP_NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: echo-tls
spec:
  ingressClassName: wsingress
  tls:
    - hosts: [$TLS_HOST]
      secretName: echo-tls
  rules:
    - host: $TLS_HOST
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: echo
                port:
                  name: ws
YAML
cat >"$WORK/values-tls.yaml" <<YAML
controller:
  defaultTLSSecret: $NS/e2e-default-tls
tests:
  wss:
    caSecret: e2e-ca
    host: $TLS_HOST
YAML
helm upgrade "$RELEASE" charts/wsingress --namespace "$NS" -f tests/e2e/values-kind.yaml \
    -f "$WORK/values-tls.yaml" --wait --timeout 300s
kubectl -n "$NS" rollout status "deployment/$RELEASE" --timeout=120s
kubectl -n "$NS" port-forward "svc/$RELEASE" 18443:443 >"$WORK/pf-tls.log" 2>&1 &
PIDS+=($!)
TLS_ADDR=127.0.0.1:18443
WSS_URL="wss://$TLS_ADDR/"
# The subject of the certificate served for SNI $1, verified against the CA (empty if not).
served_subject() {
    openssl s_client -connect "$TLS_ADDR" -servername "$1" -CAfile "$TLS_DIR/ca.crt" -alpn http/1.1 \
        -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -subject 2>/dev/null
}
subject=$(wait_for_output 90 "certificate for $TLS_HOST" served_subject "$TLS_HOST")
case "$subject" in *"echo e2e v1"*) ;; *) die "SNI $TLS_HOST got '$subject', want echo e2e v1" ;; esac
subject=$(wait_for_output 30 "default certificate" served_subject unknown.e2e.test)
case "$subject" in *"e2e default"*) ;; *) die "an unknown SNI got '$subject', want the default" ;; esac
"$WSINGRESS_BIN" client "$WSS_URL" --host "$TLS_HOST" --ca "$TLS_DIR/ca.crt" \
    --send "hello over wss" --expect "${PREFIX}hello over wss" --count 4 --retry-for 60s

# Rotation: a wss tunnel opened before keeps echoing; new handshakes get the new certificate.
# shellcheck disable=SC2016 # JavaScript template literals, not shell expansions
NODE_EXTRA_CA_CERTS="$TLS_DIR/ca.crt" node -e '
const WebSocket = require("ws");
const [url, host, prefix, seconds] = process.argv.slice(1);
const ws = new WebSocket(url, { servername: host, headers: { Host: host }, handshakeTimeout: 10000 });
let sent = 0, echoed = 0;
ws.on("open", () => {
  console.log("wss tunnel open");
  const t = setInterval(() => ws.send(`tick ${sent++}`), 1000);
  setTimeout(() => { clearInterval(t); ws.close(1000); }, Number(seconds) * 1000);
});
ws.on("message", (d) => { if (String(d).startsWith(prefix + "tick ")) echoed++; });
ws.on("close", (code) => {
  console.log(`wss tunnel closed ${code}: ${echoed} of ${sent} echoed`);
  process.exit(code === 1000 && echoed >= sent - 1 && sent > 0 ? 0 : 1);
});
ws.on("error", (e) => { console.error(`wss tunnel: ${e.message}`); process.exit(1); });
' "$WSS_URL" "$TLS_HOST" "$PREFIX" 20 &
tunnel_pid=$!
PIDS+=("$tunnel_pid")
sleep 3
kubectl -n "$APP_NS" create secret tls echo-tls --cert "$TLS_DIR/echo-v2.crt" --key "$TLS_DIR/echo-v2.key" \
    --dry-run=client -o yaml | kubectl -n "$APP_NS" apply -f -
rotated() { served_subject "$TLS_HOST" | grep "echo e2e v2" || true; }
wait_for_output 60 "the rotated certificate" rotated >/dev/null
wait "$tunnel_pid" || die "the wss tunnel opened before the rotation did not keep echoing"

# A bad Secret (the key of another certificate): a Warning Event names it, and the last good
# certificate keeps serving.
kubectl -n "$APP_NS" create secret tls echo-tls --cert "$TLS_DIR/echo-v2.crt" --key "$TLS_DIR/echo-v1.key" \
    --dry-run=client -o yaml | kubectl -n "$APP_NS" apply -f -
bad_event() {
    kubectl -n "$APP_NS" get events.events.k8s.io --field-selector reason=InvalidCertificate \
        -o 'jsonpath={range .items[*]}{.note}{"\n"}{end}' | grep "echo-tls" || true
}
wait_for_output 60 "InvalidCertificate Event for Secret echo-tls" bad_event
subject=$(served_subject "$TLS_HOST")
case "$subject" in *"echo e2e v2"*) ;; *) die "after a bad Secret $TLS_HOST got '$subject', want echo e2e v2" ;; esac

# wss inside the cluster: `helm test` now also runs the wss test pod (the release's image,
# the CA from Secret e2e-ca, through the Service's TLS port with SNI $TLS_HOST).
helm test "$RELEASE" --namespace "$NS" --logs --timeout 180s

step "9. Gateway API: standard-channel CRDs, gatewayAPI.enabled, manifests/gateway-echo.yaml"
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.3.0}
kubectl apply --server-side -f \
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
kubectl wait --for=condition=Established --timeout=60s crd/httproutes.gateway.networking.k8s.io
# The manifest brings its own GatewayClass `wsingress`, so the chart creates none.
helm upgrade "$RELEASE" charts/wsingress --namespace "$NS" -f tests/e2e/values-kind.yaml \
    -f "$WORK/values-tls.yaml" --set gatewayAPI.enabled=true --set gatewayAPI.gatewayClass.create=false \
    --wait --timeout 300s
kubectl -n "$NS" rollout status "deployment/$RELEASE" --timeout=120s
# The HTTPRoute names no hostname, like the echo Ingress: remove the Ingress so the two do not
# conflict and the round trip can only go through the Gateway.
kubectl -n "$APP_NS" delete ingress echo --wait=true
kubectl -n "$APP_NS" apply -f manifests/gateway-echo.yaml
kubectl wait --for=condition=Accepted --timeout=120s gatewayclass/wsingress
# Every HTTPRoute of the manifest accepted by our controller (status written by the leader).
routes_accepted() {
    kubectl -n "$APP_NS" get httproutes -o \
        'jsonpath={range .items[*]}{.metadata.name}={.status.parents[?(@.controllerName=="wsingress.io/gateway-controller")].conditions[?(@.type=="Accepted")].status}{"\n"}{end}' |
        awk -F= 'NF == 2 && $2 != "True" {bad = 1} NF == 2 {n++} END {if (n > 0 && !bad) print n}'
}
wait_for_output 120 "HTTPRoutes Accepted" routes_accepted
"$WSINGRESS_BIN" client "$URL" --send "hello via the Gateway" --expect "${PREFIX}hello via the Gateway" \
    --count 4 --retry-for 90s
gateway_address=$(wait_for_output 120 "Gateway echo status address" kubectl -n "$APP_NS" get gateway echo \
    -o 'jsonpath={.status.addresses[0].value}')
echo "Gateway echo has address $gateway_address"

step "e2e: all checks passed"
