# shellcheck shell=bash
# Shared by tests/e2e/run.sh and tests/e2e/gateway-conformance.sh (sourced, not run): the work
# folder, the failure message, the cleanup trap, the kind cluster and the image.
#
# Before sourcing, set CLUSTER, IMAGE, VERSION and E2E_NAME (the prefix of failure messages),
# and define `diagnostics` (printed when the script fails with a cluster up). After sourcing,
# append the pids of background helpers to PIDS: cleanup stops them.
# Environment: KEEP_CLUSTER=1 keeps the cluster (and the kubeconfig) afterwards, SKIP_BUILD=1
# reuses an image already built.

WORK=$(mktemp -d)
PIDS=()
export KUBECONFIG="$WORK/kubeconfig"

die() {
    printf '%s: FAIL: %s\n' "$E2E_NAME" "$*" >&2
    exit 1
}

e2e_cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ] && [ -f "$KUBECONFIG" ]; then
        echo "--- diagnostics"
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
trap e2e_cleanup EXIT

# A fresh cluster named $CLUSTER; arguments go to `kind create cluster` (--config, --image).
kind_cluster() {
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    kind create cluster --name "$CLUSTER" "$@" --kubeconfig "$KUBECONFIG" --wait 180s
}

# Build $IMAGE from the Dockerfile (unless SKIP_BUILD=1) and load it into the cluster's nodes.
# A plain single-platform image: no provenance or SBOM attestations, which would make it an
# index that `kind load docker-image` cannot import.
image_into_cluster() {
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        docker buildx build --load --provenance=false --sbom=false -t "$IMAGE" \
            --build-arg VERSION="$VERSION" \
            --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
    fi
    kind load docker-image "$IMAGE" --name "$CLUSTER"
}
