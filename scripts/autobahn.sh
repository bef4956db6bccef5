#!/usr/bin/env bash
# Protocol conformance through the proxy: runs the Autobahn|Testsuite fuzzing client against exact
# echo servers directly and through wsingress, and compares the two reports case by case.
#
#   scripts/autobahn.sh [--fast|--full] [--no-install] [--docs FILE | --no-docs]
#
#   --fast   sections 1-8, 10, 11 (no 9 "limits/performance", 12/13 "permessage-deflate"):
#            about 250 cases per target, well under a minute. The default.
#   --full   all 517 cases, with a third target that negotiates permessage-deflate so that
#            sections 12 and 13 really compress (about 25 min on 2 busy CPUs). Writes its summary into
#            docs/conformance.md (between the autobahn-summary markers) unless --no-docs.
#
# Targets (each run directly, through `wsingress serve --upstream` on its plain listener, and
# through the same proxy's TLS listener with wss://, a certificate made here by openssl):
#   echo        `wsingress echo` (tungstenite; never negotiates permessage-deflate)
#   ws          Node `ws` echo, permessage-deflate off
#   ws-deflate  Node `ws` echo, permessage-deflate on (--full only; in --fast no case offers it)
# The direct, proxied and TLS agents run in three fuzzing clients side by side (same load on all).
# The fuzzing client does not verify the server's certificate (Twisted's ClientContextFactory)
# and sends no SNI, so the TLS listener serves its --tls-cert fallback.
#
# Exit status: 0 same verdicts and no FAILED; 1 a difference, a FAILED case or an error;
# 77 skipped (no Python 2.7 on this machine: the testsuite is Python 2 code).
# Environment: WSINGRESS_BIN (the wsingress binary; default: cargo build, target/debug),
# WSINGRESS_PYTHON27 (the Python 2.7 interpreter; default: pyenv's 2.7.x).
# Reports (HTML per case) are left in reports/autobahn/MODE/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/scripts/autobahn"
MODE=fast
INSTALL=1
DOCS=default
while [ "$#" -gt 0 ]; do
    case "$1" in
    --fast) MODE=fast ;;
    --full) MODE=full ;;
    --no-install) INSTALL=0 ;;
    --docs)
        DOCS=${2:?--docs needs a file}
        shift
        ;;
    --no-docs) DOCS= ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "autobahn: unknown argument '$1' (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done
if [ "$DOCS" = default ]; then
    if [ "$MODE" = full ]; then DOCS="$ROOT/docs/conformance.md"; else DOCS=; fi
fi

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# --- tools ---------------------------------------------------------------------------------
PY27=${WSINGRESS_PYTHON27:-}
if [ -z "$PY27" ]; then
    for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python; do
        [ -x "$py" ] && PY27=$py && break
    done
fi
if [ -z "$PY27" ] || ! "$PY27" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    log "SKIP: no Python 2.7 (Autobahn|Testsuite 0.8.2 is Python 2 code); looked for" \
        "\$PYENV_ROOT/versions/2.7*/bin/python, or set WSINGRESS_PYTHON27"
    exit 77
fi
export WSINGRESS_PYTHON27=$PY27
if [ "$INSTALL" = 1 ]; then
    "$ROOT/scripts/install-tools.sh" autobahn node >&2
fi
AB_LIB="$ROOT/.tools/ab27/lib"
[ -d "$AB_LIB/autobahntestsuite" ] || die "Autobahn|Testsuite not installed in $AB_LIB (run scripts/install-tools.sh autobahn)"
command -v node >/dev/null || die "node not found"
command -v openssl >/dev/null || die "openssl not found (it makes the TLS listener's certificate)"
export NODE_PATH="$ROOT/.tools/node/node_modules${NODE_PATH:+:$NODE_PATH}"
node -e 'require("ws")' 2>/dev/null || die "Node ws not installed (run scripts/install-tools.sh node)"

BIN=${WSINGRESS_BIN:-}
if [ -z "$BIN" ]; then
    log "building wsingress (debug)"
    (cd "$ROOT" && cargo build --quiet --bin wsingress) || die "cargo build failed"
    BIN="$ROOT/target/debug/wsingress"
fi
[ -x "$BIN" ] || die "wsingress binary $BIN not found"

# --- processes -----------------------------------------------------------------------------
WORK="$ROOT/reports/autobahn/$MODE"
rm -rf "$WORK"
mkdir -p "$WORK/logs"
PIDS=()
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND... : run in the background, output to logs/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    PIDS+=("$!")
}

# address_from NAME SED-EXPRESSION : poll logs/NAME.log (10 s deadline) for the bound address.
address_from() {
    local name=$1 expr=$2 addr deadline=$((SECONDS + 10))
    while [ "$SECONDS" -le "$deadline" ]; do
        addr=$(sed -n "$expr" "$WORK/logs/$name.log" 2>/dev/null | head -n 1)
        if [ -n "$addr" ]; then
            printf '%s' "$addr"
            return
        fi
        sleep 0.05
    done
    cat "$WORK/logs/$name.log" >&2 || true
    die "$name did not report its address within 10 s"
}

export RUST_LOG=${RUST_LOG:-warn,wsingress::app=info}
# The TLS listener's certificate: ECDSA P-256, for 127.0.0.1, valid a day.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>"$WORK/logs/openssl.log" ||
    die "openssl could not make a certificate; see $WORK/logs/openssl.log"
# start_proxy NAME UPSTREAM : a wsingress proxy in sidecar mode in front of UPSTREAM, plain and
# TLS listeners. Called in this shell, never inside $(...), so its PID reaches PIDS and the EXIT
# cleanup.
start_proxy() {
    start "$1-proxy" "$BIN" serve --upstream "$2" --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
        --tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key" --admin-listen 127.0.0.1:0
}

# counter NAME FAMILY : the result="ok" sample of FAMILY from the proxy in front of NAME.
counter() {
    local admin
    admin=$(address_from "$1-proxy" 's/.*wsingress serving .* admin=\(127\.0\.0\.1:[0-9]*\).*/\1/p')
    curl -fsS --max-time 5 "http://$admin/metrics" |
        sed -n "s/^$2{[^}]*result=\"ok\"[^}]*} \\([0-9]*\\)\$/\\1/p" | head -n 1
}

TARGETS=(echo ws)
[ "$MODE" = full ] && TARGETS+=(ws-deflate)
declare -A LABEL=([echo]="wsingress echo" [ws]="Node ws" [ws-deflate]="Node ws + permessage-deflate")
declare -A DIRECT PROXIED SECURE

start echo-backend "$BIN" echo --listen 127.0.0.1:0
DIRECT[echo]=$(address_from echo-backend 's/.*echo serving listen=\(127\.0\.0\.1:[0-9]*\).*/\1/p')
start ws-backend node "$ROOT/tests/peers/echo-server.js"
DIRECT[ws]=127.0.0.1:$(address_from ws-backend 's/^{"listening":\([0-9]*\)}$/\1/p')
if [ "$MODE" = full ]; then
    start ws-deflate-backend node "$ROOT/tests/peers/echo-server.js" --deflate
    DIRECT[ws-deflate]=127.0.0.1:$(address_from ws-deflate-backend 's/^{"listening":\([0-9]*\)}$/\1/p')
fi
for t in "${TARGETS[@]}"; do
    start_proxy "$t" "${DIRECT[$t]}"
    PROXIED[$t]=$(address_from "$t-proxy" 's/.*wsingress serving proxy=\(127\.0\.0\.1:[0-9]*\).*/\1/p')
    SECURE[$t]=$(address_from "$t-proxy" 's/.*wsingress serving .* tls=\(127\.0\.0\.1:[0-9]*\).*/\1/p')
    log "$(printf '%-11s direct ws://%s  through wsingress ws://%s and wss://%s' "$t" "${DIRECT[$t]}" \
        "${PROXIED[$t]}" "${SECURE[$t]}")"
done

# --- specs and runs ------------------------------------------------------------------------
if [ "$MODE" = fast ]; then
    EXCLUDE='["9.*", "12.*", "13.*"]'
    EXCLUDED_TEXT="9, 12, 13"
else
    EXCLUDE='[]'
    EXCLUDED_TEXT=""
fi

# spec WAY : writes WAY/spec.json naming every target's WAY agent.
spec() {
    local way=$1 servers="" t url
    for t in "${TARGETS[@]}"; do
        case "$way" in
        direct) url=ws://${DIRECT[$t]} ;;
        proxy) url=ws://${PROXIED[$t]} ;;
        tls) url=wss://${SECURE[$t]} ;;
        esac
        servers+="${servers:+, }{\"agent\": \"$t-$way\", \"url\": \"$url/\"}"
    done
    mkdir -p "$WORK/$way"
    sed -e "s#@OUTDIR@#$WORK/$way/report#" -e "s#@SERVERS@#[$servers]#" -e "s#@EXCLUDE@#$EXCLUDE#" \
        "$HERE/fuzzingclient.json.in" >"$WORK/$way/spec.json"
}

started=$SECONDS
RUNS=()
WAYS=(direct proxy tls)
for way in "${WAYS[@]}"; do
    spec "$way"
    (cd "$WORK/$way" && exec "$PY27" "$HERE/wstest.py" "$AB_LIB" -m fuzzingclient -s spec.json) \
        >"$WORK/logs/wstest-$way.log" 2>&1 &
    RUNS+=("$!")
    PIDS+=("$!")
done
log "running the fuzzing client ($MODE) against ${#TARGETS[@]} target(s), direct and through wsingress (ws and wss)"
progress=$SECONDS
running() {
    local pid
    for pid in "${RUNS[@]}"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}
while running; do
    sleep 1
    if [ $((SECONDS - progress)) -ge 30 ]; then
        progress=$SECONDS
        log "$(printf '%ds: cases started: direct %s, through wsingress %s, over TLS %s' $((SECONDS - started)) \
            "$(grep -c '^Running test case' "$WORK/logs/wstest-direct.log" || true)" \
            "$(grep -c '^Running test case' "$WORK/logs/wstest-proxy.log" || true)" \
            "$(grep -c '^Running test case' "$WORK/logs/wstest-tls.log" || true)")"
    fi
done
status=0
for pid in "${RUNS[@]}"; do
    wait "$pid" || status=$?
done
elapsed=$((SECONDS - started))
[ "$status" = 0 ] || die "wstest failed (exit $status); see $WORK/logs/"
for way in "${WAYS[@]}"; do
    [ -f "$WORK/$way/report/index.json" ] || die "no report from the $way run; see $WORK/logs/wstest-$way.log"
done

# --- compare ---------------------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
machine="$(uname -sm), ${cpu:-unknown CPU}, $(nproc) CPU(s), Node $(node --version), ws $(node -p 'require("ws/package.json").version')"
version="$("$BIN" --version 2>/dev/null | head -n 1) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), $(basename "$(dirname "$BIN")") build)"
targets=()
note="WebSocket upgrades and TLS handshakes completed by each proxy (its /metrics; one upgrade per case and way, one handshake per TLS case):"
for t in "${TARGETS[@]}"; do
    targets+=(--target "$t=${LABEL[$t]}")
    n=$(counter "$t" wsingress_websocket_upgrades_total)
    [ "${n:-0}" -gt 0 ] || die "the proxy in front of $t completed no upgrade: the proxied run did not go through it"
    h=$(counter "$t" wsingress_tls_handshakes_total)
    [ "${h:-0}" -gt 0 ] || die "the proxy in front of $t completed no TLS handshake: the wss run did not go through it"
    note+=" ${LABEL[$t]} $n upgrades, $h TLS handshakes;"
done
set +e
python3 "$HERE/compare.py" "$WORK/direct/report/index.json" "$WORK/proxy/report/index.json" \
    "$WORK/tls/report/index.json" --ways proxy,tls "${targets[@]}" \
    --mode "$MODE" --excluded "$EXCLUDED_TEXT" --elapsed "$((elapsed / 60))m $((elapsed % 60))s" \
    --machine "$machine" --version "$version" --note "${note%;}" ${DOCS:+--docs "$DOCS"}
result=$?
set -e
[ -n "$DOCS" ] && log "summary written to $DOCS"
log "reports: $WORK/{direct,proxy,tls}/report/index.html"
exit "$result"
