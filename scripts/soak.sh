#!/usr/bin/env bash
# Soak: thousands of WebSocket connections with steady traffic and churn through the
# release binary, reporting the proxy's RSS and open descriptors at start and end
# (tests/soak.rs). Fails on client errors or growth beyond the bounds stated there.
#
#   scripts/soak.sh                  # the full run: 600 s, 2000 client slots, release binary
#   scripts/soak.sh --short          # CI form: 30 s, 1000 slots, the test-profile binary
#   scripts/soak.sh --secs 120 --conns 3000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs=600
conns=2000
release=1
while [ $# -gt 0 ]; do
    case "$1" in
        --short) secs=30; conns=1000; release=0 ;;
        --secs) secs="$2"; shift ;;
        --conns) conns="$2"; shift ;;
        --debug) release=0 ;;
        *) echo "usage: $0 [--short] [--secs N] [--conns N] [--debug]" >&2; exit 2 ;;
    esac
    shift
done

if [ "$release" = 1 ]; then
    cargo build --release --bin wsingress
    export WSINGRESS_SOAK_BIN="$PWD/target/release/wsingress"
fi
echo "== soak: ${secs} s, ${conns} client slots, binary ${WSINGRESS_SOAK_BIN:-test profile}"
echo "== machine: $(nproc) CPUs, $(uname -srm), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
WSINGRESS_SOAK_SECS="$secs" WSINGRESS_SOAK_CONNS="$conns" \
    cargo test --test soak -- --ignored --nocapture --test-threads 1
