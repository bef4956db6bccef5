#!/usr/bin/env bash
# Fuzz every target for a bounded time with cargo-fuzz (libFuzzer), on the stable toolchain
# (RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz passes). cargo-fuzz is installed,
# pinned, under ./.tools/cargo. Seeds: fuzz/corpus/TARGET (checked in); what a run finds
# new stays in fuzz/corpus-local/TARGET (git-ignored); crashes land in fuzz/artifacts/TARGET.
#
#   scripts/fuzz.sh                 # 60 s per target
#   scripts/fuzz.sh --seconds 600   # longer
#   scripts/fuzz.sh --short         # CI form: 10 s per target
#   scripts/fuzz.sh scanner         # one target (any of: scanner request_head annotations
#                                   #   manifests_text manifests_structured trusted_proxies
#                                   #   forwarded_for tls_material proxy_protocol)
#   scripts/fuzz.sh --asan          # with AddressSanitizer (slower; the crate has no unsafe code)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CARGO_FUZZ_VERSION=0.13.1
TOOLS="$ROOT/.tools/cargo"
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1

seconds=60
sanitizer=none
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift ;;
        --short) seconds=10 ;;
        --asan) sanitizer=address ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] || targets=(scanner request_head annotations manifests_text manifests_structured
    trusted_proxies forwarded_for tls_material proxy_protocol)

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION under .tools/cargo"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi

cd fuzz
echo "== building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -s "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-local/$t"
    echo "== fuzzing $t for ${seconds}s"
    # New inputs go to the first (git-ignored) corpus directory; the checked-in seeds are read only.
    if cargo fuzz run -s "$sanitizer" "$t" "corpus-local/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"corpus-local/$t.log"; then
        grep -E "stat::number_of_executed_units|stat::new_units_added" "corpus-local/$t.log" | tr '\n' ' '
        echo
    else
        failed+=("$t")
        tail -40 "corpus-local/$t.log"
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: findings in: ${failed[*]} (inputs in fuzz/artifacts/); add each as a regression test in tests/fuzz_regressions.rs" >&2
    exit 1
fi
echo "fuzz: no findings"
