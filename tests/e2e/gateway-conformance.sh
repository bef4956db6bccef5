#!/usr/bin/env bash
# The upstream Gateway API conformance suite against wsingress in kind. Needs Docker, kind, Go,
# git and internet access (a GitHub hosted runner: .github/workflows/e2e.yml, job
# gateway-conformance); the development machines have no Docker or kind, so
# `cargo test --test e2e_kind` reports it as ignored there. Run from anywhere:
#   tests/e2e/gateway-conformance.sh   # or: cargo test --test e2e_kind gateway_conformance -- --ignored
# Environment: KIND_CLUSTER (default wsingress-gateway), GATEWAY_API_VERSION (default v1.3.0:
# the CRDs installed and the suite run are the same release), REPORT_DIR (default
# target/gateway-conformance), KEEP_CLUSTER=1, SKIP_BUILD=1.
#
# Steps: create the cluster; build and load the image; run cloud-provider-kind so the proxy's
# LoadBalancer Service gets an address the host can reach (the suite sends its requests to the
# Gateways' status addresses, which wsingress publishes from that Service); install the
# standard-channel CRDs; helm install the chart with gatewayAPI.enabled (GatewayClass
# `wsingress`); run `go test ./conformance -run TestConformance` of sigs.k8s.io/gateway-api
# with the features wsingress claims, writing the report to $REPORT_DIR/report.yaml (the
# workflow uploads it as an artifact, pass or fail).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CLUSTER=${KIND_CLUSTER:-wsingress-gateway}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.3.0}
CLOUD_PROVIDER_KIND_VERSION=${CLOUD_PROVIDER_KIND_VERSION:-v0.7.0}
REPORT_DIR=${REPORT_DIR:-$ROOT/target/gateway-conformance}
VERSION=$("$ROOT/scripts/version.sh" get)
IMAGE=ghcr.io/wsingress/wsingress:$VERSION
NS=wsingress-system
RELEASE=wsingress
CLASS=wsingress
# What wsingress claims (docs/gateway-api.md, "Conformance features claimed"): the HTTP
# profile's core, ReferenceGrant, the extended HTTPRoute features it implements, and the
# WebSocket backend protocol (GEP-1911, appProtocol kubernetes.io/ws). Every claim is tested.
CLAIMED=Gateway,HTTPRoute,ReferenceGrant
CLAIMED+=,HTTPRouteMethodMatching,HTTPRouteQueryParamMatching,HTTPRouteResponseHeaderModification
CLAIMED+=,HTTPRouteSchemeRedirect,HTTPRoutePortRedirect,HTTPRoutePathRedirect
CLAIMED+=,HTTPRouteHostRewrite,HTTPRoutePathRewrite
CLAIMED+=,HTTPRouteRequestTimeout,HTTPRouteBackendTimeout,HTTPRouteBackendProtocolWebSocket
SUPPORTED_FEATURES=${SUPPORTED_FEATURES:-$CLAIMED}
E2E_NAME=gateway-conformance

diagnostics() {
    kubectl get gatewayclasses,gateways,httproutes -A -o wide || true
    kubectl -n "$NS" logs -l app.kubernetes.io/component=controller --tail=300 --prefix || true
}

# shellcheck source=tests/e2e/lib.sh
. "$ROOT/tests/e2e/lib.sh"

for tool in docker kind go git; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
"$ROOT/scripts/install-tools.sh" helm
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"
mkdir -p "$REPORT_DIR"

echo "=== kind cluster $CLUSTER"
# shellcheck disable=SC2119 # kind's defaults: no --config or --image for this cluster
kind_cluster

echo "=== image $IMAGE"
image_into_cluster

echo "=== cloud-provider-kind $CLOUD_PROVIDER_KIND_VERSION (LoadBalancer addresses)"
GOBIN="$WORK/bin" go install "sigs.k8s.io/cloud-provider-kind@$CLOUD_PROVIDER_KIND_VERSION"
"$WORK/bin/cloud-provider-kind" >"$REPORT_DIR/cloud-provider-kind.log" 2>&1 &
PIDS+=($!)

echo "=== Gateway API $GATEWAY_API_VERSION standard-channel CRDs"
kubectl apply --server-side -f \
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
kubectl wait --for=condition=Established --timeout=60s \
    crd/gatewayclasses.gateway.networking.k8s.io crd/gateways.gateway.networking.k8s.io \
    crd/httproutes.gateway.networking.k8s.io crd/referencegrants.gateway.networking.k8s.io

echo "=== helm install with gatewayAPI.enabled"
helm install "$RELEASE" charts/wsingress --namespace "$NS" --create-namespace \
    -f tests/e2e/values-kind.yaml --set service.type=LoadBalancer \
    --set gatewayAPI.enabled=true --set "gatewayAPI.gatewayClass.name=$CLASS" --set gatewayAPI.recheck=10s \
    --wait --timeout 240s
kubectl wait --for=condition=Accepted --timeout=120s "gatewayclass/$CLASS"
kubectl get gatewayclass "$CLASS" -o yaml

echo "=== conformance: $SUPPORTED_FEATURES"
git clone --quiet --depth 1 --branch "$GATEWAY_API_VERSION" https://github.com/kubernetes-sigs/gateway-api "$WORK/gateway-api"
rc=0
(
    cd "$WORK/gateway-api"
    go test ./conformance -run TestConformance -timeout 45m -v -args \
        --gateway-class="$CLASS" \
        --supported-features="$SUPPORTED_FEATURES" \
        --organization=wsingress \
        --project=wsingress \
        --url=https://github.com/wsingress/wsingress \
        --version="$VERSION" \
        --contact=https://github.com/wsingress/wsingress/issues \
        --report-output="$REPORT_DIR/report.yaml"
) 2>&1 | tee "$REPORT_DIR/conformance.log" || rc=$?
[ -s "$REPORT_DIR/report.yaml" ] || die "no conformance report written"
cat "$REPORT_DIR/report.yaml"
[ "$rc" -eq 0 ] || die "the conformance suite failed (report: $REPORT_DIR/report.yaml)"
echo "gateway-conformance: passed"
