#!/usr/bin/env bash
# The test command: installs what the tests need (pinned, from package registries, under
# ./.tools/), validates the chart and manifests, then runs every Rust test. Safe to re-run.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --no-install   # skip the tool installs (offline, tools already there)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${1:-}" != "--no-install" ]; then
    scripts/install-tools.sh
    # Autobahn|Testsuite (Python 2.7, when the machine has it), Debian's Chromium, playwright-core
    # certutil (libnss3-tools, for the browser's https test) and HAProxy (the PROXY protocol
    # interop test sends through its send-proxy and send-proxy-v2).
    scripts/install-tools.sh autobahn chromium playwright nss haproxy
fi
# shellcheck source=scripts/env.sh
. scripts/env.sh

echo "== chart and manifest validation"
scripts/validate-k8s.sh

echo "== cargo test"
# Tools were installed above: a test that needs one must not skip.
export WSINGRESS_REQUIRE_TOOLS=1
cargo test --all-targets --no-fail-fast
