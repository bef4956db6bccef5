#!/usr/bin/env bash
# WebSocket relay benchmark: direct vs nginx vs HAProxy vs wsingress, in one run.
#
#   scripts/bench.sh            # full run: 3 rounds, ~10 minutes of measuring on 2 cores
#   scripts/bench.sh --quick    # smoke run: 1 round, short windows, 2,000 idle connections (~2 minutes)
#
# Options: --rounds N  --duration SECONDS  --idle N  --targets direct,nginx,haproxy,wsingress,wsingress-2r,wsingress-1k
#          --cases handshake,tls-handshake,... (default: every case)
#          --no-install  --no-build  --no-docs (print the table only; docs/performance.md is left alone)
#          --keep (keep the temporary folder with configs, logs and results.jsonl)
#          --report-only (redo the table, docs/performance.md and .png from target/bench-results.jsonl)
# Environment: WSINGRESS_BIN=path measures another build of wsingress (an A/B of two commits:
#          build the other one in a git worktree, run --no-build --no-docs once with each).
#
# Each proxy runs pinned to CPU 0 with one worker/thread; the load generator (target/release/wsbench)
# and the two echo backends share CPU 1. Modes run interleaved (every target once per mode, the order
# rotated each round), and proxies are restarted at the start of every round so idle memory is
# measured on a fresh process. Results: one JSON line per run in $WORK/results.jsonl, a table on
# stdout, docs/performance.md and docs/performance.png.
# TLS cases (tls-*): nginx, HAProxy and wsingress terminate TLS on a second port with the same ECDSA
# P-256 certificate (made here by openssl), TLS 1.3 only, session tickets and caches off where the
# proxy has the setting (wsingress has none: it keeps rustls' defaults), and wsbench never resumes.
# Route-table cases (routes-*): wsingress with 2 routes (wsingress-2r) and with 1,000 (wsingress-1k,
# 500 exact hosts and 500 one-label wildcards), both from a manifests file, handshakes to one exact
# and one wildcard host that both tables hold.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=3 DURATION=8 WARMUP=1 IDLE=9900 HOLD=3 QUICK=0
INSTALL=1 BUILD=1 DOCS=1 KEEP=0 REPORT_ONLY=0 TARGETS=direct,nginx,haproxy,wsingress,wsingress-2r,wsingress-1k
ONLY_CASES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; DURATION=2; WARMUP=0.5; IDLE=2000; HOLD=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --cases) ONLY_CASES=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --no-docs) DOCS=0 ;;
    --keep) KEEP=1 ;;
    --report-only) REPORT_ONLY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Table on stdout; with docs on, also docs/performance.md and docs/performance.png.
report() {
  local results=${1:-$ROOT/target/bench-results.jsonl} meta=${2:-$ROOT/target/bench-meta.json} tmp
  if [ "$DOCS" = 1 ]; then
    tmp=$(mktemp -d)
    python3 scripts/bench/report.py "$results" --meta "$meta" --markdown docs/performance.md \
      --chart docs/performance.png --workdir "$tmp"
    rm -rf "$tmp"
  else
    python3 scripts/bench/report.py "$results" --meta "$meta"
  fi
}
if [ "$REPORT_ONLY" = 1 ]; then
  report
  exit 0
fi
T0=$(date +%s)

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v gnuplot >/dev/null 2>&1 || need_pkgs+=(gnuplot-nox)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v taskset >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$INSTALL" = 1 ]; then
    log "installing ${need_pkgs[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    log "missing: ${need_pkgs[*]} (run without --no-install)"; exit 69
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$BUILD" = 1 ]; then
  log "building release binaries (first build takes several minutes)"
  cargo build --release --quiet --bin wsingress --bin wsbench
fi
WSBENCH=$ROOT/target/release/wsbench
WSINGRESS=${WSINGRESS_BIN:-$ROOT/target/release/wsingress}   # WSINGRESS_BIN: compare another build
[ -x "$WSBENCH" ] || { log "no $WSBENCH: build it first"; exit 69; }
T_BUILT=$(date +%s)

# ---------------------------------------------------------------- CPU placement
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  ON_PROXY_CPU=(taskset -c 0); ON_LOAD_CPU=(taskset -c 1)
else
  log "one CPU only: nothing is pinned"
  ON_PROXY_CPU=(); ON_LOAD_CPU=()
fi

WORK=$(mktemp -d /tmp/wsbench.XXXXXX)
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
STARTED=()   # pids this script started; only these are stopped
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then log "work files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=()
  for p in "${STARTED[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

# Free loopback ports, all asked for at once so none repeats.
read -r -a PORTS <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(13)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()')"
B1=${PORTS[0]} B2=${PORTS[1]} P_NGINX=${PORTS[2]} P_HAPROXY=${PORTS[3]} P_WSI=${PORTS[4]} P_ADMIN=${PORTS[5]}
T_NGINX=${PORTS[6]} T_HAPROXY=${PORTS[7]} T_WSI=${PORTS[8]}
P_WSI2=${PORTS[9]} P_ADMIN2=${PORTS[10]} P_WSI1K=${PORTS[11]} P_ADMIN1K=${PORTS[12]}

# probe URL [SECONDS [HOST]]
probe() {
  local extra=()
  [ -n "${3:-}" ] && extra+=(--host "$3")
  case "$1" in wss://*) extra+=(--ca "$TLS_DIR/ca.pem" --server-name "$TLS_NAME") ;; esac
  "${ON_LOAD_CPU[@]}" "$WSBENCH" probe --url "$1" --duration "${2:-5}" "${extra[@]}" --json >/dev/null 2>&1
}

# ---------------------------------------------------------------- TLS material and route tables
# One CA and one ECDSA P-256 leaf for bench.test, shared by every TLS listener.
TLS_DIR=$WORK/tls TLS_NAME=bench.test
mkdir -p "$TLS_DIR"
(
  cd "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=wsbench-CA \
    -keyout ca.key -out ca.pem
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$TLS_NAME" \
    -addext "subjectAltName=DNS:$TLS_NAME" -keyout tls.key -out tls.csr
  openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out tls.crt
  cat tls.crt tls.key >haproxy.pem
) >"$WORK/openssl.log" 2>&1 || { log "openssl could not make the TLS certificate; see $WORK/openssl.log"; exit 70; }

# routes N FILE: a manifests file with N routes to the two echo backends: N/2 exact hosts
# (hI.bench.test) and N/2 one-label wildcards (*.wI.bench.test), each its own Ingress rule; the
# hosts the routes-* cases ask for (ROUTE_EXACT, ROUTE_WILDCARD) are in every table.
ROUTE_EXACT=h0.bench.test ROUTE_WILDCARD=x.w0.bench.test
routes() {
  python3 - "$1" "$B1" "$B2" >"$2" <<'PY'
import sys
n, b1, b2 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rule = "    - host: \"{h}\"\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}]}}\n"
hosts = [f"h{i}.bench.test" for i in range(n // 2)] + [f"*.w{i}.bench.test" for i in range(n - n // 2)]
print("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bench, namespace: bench}\nspec:\n  ingressClassName: wsingress\n  rules:")
print("".join(rule.format(h=h) for h in hosts), end="")
print("---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: bench}\nspec: {ports: [{name: http, port: 80}]}")
print("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: echo-1, namespace: bench, labels: {kubernetes.io/service-name: echo}}")
print("addressType: IPv4\nports: [{name: http, port: %s}]" % b1)
print("endpoints: [{addresses: [\"127.0.0.1\"], conditions: {ready: true}}]")
print("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: echo-2, namespace: bench, labels: {kubernetes.io/service-name: echo}}")
print("addressType: IPv4\nports: [{name: http, port: %s}]" % b2)
print("endpoints: [{addresses: [\"127.0.0.1\"], conditions: {ready: true}}]")
PY
}
routes 2 "$WORK/routes-2.yaml"
routes 1000 "$WORK/routes-1000.yaml"

# ---------------------------------------------------------------- echo backends
ECHO_KIND=""
start_backends() {
  if [ -x "$WSINGRESS" ]; then
    "${ON_LOAD_CPU[@]}" "$WSINGRESS" echo --listen "127.0.0.1:$B1" >"$WORK/echo1.log" 2>&1 & STARTED+=($!); E1=$!
    "${ON_LOAD_CPU[@]}" "$WSINGRESS" echo --listen "127.0.0.1:$B2" >"$WORK/echo2.log" 2>&1 & STARTED+=($!); E2=$!
    if probe "ws://127.0.0.1:$B1/" 3 && probe "ws://127.0.0.1:$B2/" 3; then
      ECHO_KIND="wsingress echo"; return
    fi
    log "note: \`wsingress echo\` does not answer yet; using the Node ws stand-in"
    stop_pid "$E1"; stop_pid "$E2"
  fi
  local nm=$ROOT/.tools/node/node_modules
  if [ ! -d "$nm/ws" ]; then
    command -v npm >/dev/null 2>&1 || { log "need npm for the stand-in echo backend"; exit 69; }
    log "installing ws@8 under .tools/node"
    mkdir -p "$ROOT/.tools/node"
    (cd "$ROOT/.tools/node" && npm install --no-save --silent --no-audit --no-fund ws@8 >/dev/null)
  fi
  WS_NODE_MODULES=$nm "${ON_LOAD_CPU[@]}" node scripts/bench/echo-server.js "$B1" >"$WORK/echo1.log" 2>&1 & STARTED+=($!)
  WS_NODE_MODULES=$nm "${ON_LOAD_CPU[@]}" node scripts/bench/echo-server.js "$B2" >"$WORK/echo2.log" 2>&1 & STARTED+=($!)
  if ! { probe "ws://127.0.0.1:$B1/" 10 && probe "ws://127.0.0.1:$B2/" 10; }; then
    log "echo backends did not start"
    exit 70
  fi
  ECHO_KIND="Node ws $(node -p "require('$nm/ws/package.json').version") (stand-in)"
}

# ---------------------------------------------------------------- proxies
declare -A PID URL TLS_URL HOST
URL[direct]="ws://127.0.0.1:$B1/"
URL[nginx]="ws://127.0.0.1:$P_NGINX/"
URL[haproxy]="ws://127.0.0.1:$P_HAPROXY/"
URL[wsingress]="ws://127.0.0.1:$P_WSI/"
URL[wsingress-2r]="ws://127.0.0.1:$P_WSI2/"
URL[wsingress-1k]="ws://127.0.0.1:$P_WSI1K/"
TLS_URL[nginx]="wss://127.0.0.1:$T_NGINX/"
TLS_URL[haproxy]="wss://127.0.0.1:$T_HAPROXY/"
TLS_URL[wsingress]="wss://127.0.0.1:$T_WSI/"
HOST[wsingress-2r]=$ROUTE_EXACT
HOST[wsingress-1k]=$ROUTE_EXACT
SKIPPED=()

fill() {
  sed -e "s|@DIR@|$2|g" -e "s|@PORT@|$3|g" -e "s|@TLSPORT@|$4|g" -e "s|@BACKEND1@|$B1|g" -e "s|@BACKEND2@|$B2|g" \
      -e "s|@MAXCONN@|9990|g" -e "s|@CERT@|$TLS_DIR/tls.crt|g" -e "s|@KEY@|$TLS_DIR/tls.key|g" \
      -e "s|@PEM@|$TLS_DIR/haproxy.pem|g" "$1"
}

# start_wsingress TARGET LISTEN ADMIN ARGS... : wsingress with access logs off, as for nginx
# (access_log off) and HAProxy (no log target).
start_wsingress() {
  local t=$1 listen=$2 admin=$3
  shift 3
  RUST_LOG=warn "${ON_PROXY_CPU[@]}" "$WSINGRESS" serve --workers 1 --listen "127.0.0.1:$listen" \
    --admin-listen "127.0.0.1:$admin" --idle-timeout 300s "$@" >"$WORK/$t.log" 2>&1 & STARTED+=($!)
  PID[$t]=$!
}

start_target() {
  local t=$1
  case "$t" in
    direct) PID[direct]="" ;;
    nginx)
      local d=$WORK/nginx; mkdir -p "$d"
      fill scripts/bench/nginx.conf.in "$d" "$P_NGINX" "$T_NGINX" >"$d/nginx.conf"
      "${ON_PROXY_CPU[@]}" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout.log" 2>&1 & STARTED+=($!)
      local master=$! worker=""
      for _ in $(seq 100); do
        worker=$(pgrep -P "$master" | head -1 || true)
        [ -n "$worker" ] && break; sleep 0.05
      done
      PID[nginx]=$worker; MASTER_NGINX=$master ;;
    haproxy)
      local d=$WORK/haproxy; mkdir -p "$d"
      fill scripts/bench/haproxy.cfg.in "$d" "$P_HAPROXY" "$T_HAPROXY" >"$d/haproxy.cfg"
      "${ON_PROXY_CPU[@]}" haproxy -db -f "$d/haproxy.cfg" >"$d/haproxy.log" 2>&1 & STARTED+=($!)
      PID[haproxy]=$! ;;
    wsingress)
      [ -x "$WSINGRESS" ] || { PID[wsingress]=""; return 1; }
      start_wsingress wsingress "$P_WSI" "$P_ADMIN" --upstream "127.0.0.1:$B1,127.0.0.1:$B2" \
        --tls-listen "127.0.0.1:$T_WSI" --tls-cert "$TLS_DIR/tls.crt" --tls-key "$TLS_DIR/tls.key" ;;
    wsingress-2r)
      [ -x "$WSINGRESS" ] || { PID[$t]=""; return 1; }
      start_wsingress "$t" "$P_WSI2" "$P_ADMIN2" --manifests "$WORK/routes-2.yaml" --tls-listen off ;;
    wsingress-1k)
      [ -x "$WSINGRESS" ] || { PID[$t]=""; return 1; }
      start_wsingress "$t" "$P_WSI1K" "$P_ADMIN1K" --manifests "$WORK/routes-1000.yaml" --tls-listen off ;;
  esac
  probe "${URL[$t]}" 5 "${HOST[$t]:-}" || return 1
  if [ -n "${TLS_URL[$t]:-}" ]; then probe "${TLS_URL[$t]}" 5; fi
}

stop_target() {
  case "$1" in
    direct) ;;
    nginx) [ -n "${MASTER_NGINX:-}" ] && stop_pid "$MASTER_NGINX"; MASTER_NGINX="" ;;
    *) [ -n "${PID[$1]:-}" ] && stop_pid "${PID[$1]}" ;;
  esac
  PID[$1]=""
}

# ---------------------------------------------------------------- runs
IFS=, read -r -a WANTED <<<"$TARGETS"
start_backends
log "echo backends: $ECHO_KIND on :$B1 and :$B2"

ACTIVE=()
for t in "${WANTED[@]}"; do
  if start_target "$t"; then
    ACTIVE+=("$t")
  else
    log "note: $t does not answer at ${URL[$t]}; skipped (not yet measured)"
    [ "$t" = wsingress ] && tail -3 "$WORK/wsingress.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    stop_target "$t"; SKIPPED+=("$t")
  fi
done
log "targets: ${ACTIVE[*]}"

# case name | wsbench arguments. tls-* cases go to the TLS ports of nginx, HAProxy and wsingress;
# routes-* cases to wsingress-2r and wsingress-1k; the others to every other target.
CASES=(
  "idle|idle -c $IDLE --duration $HOLD --sample 100 --size 64"
  "handshake|handshake -c 16 --size 128 --duration $DURATION --warmup $WARMUP"
  "pingpong-1|pingpong -c 1 --size 1024 --duration $DURATION --warmup $WARMUP"
  "pingpong-64|pingpong -c 64 --size 1024 --duration $DURATION --warmup $WARMUP"
  "stream|stream -c 4 --window 4 --size 65536 --duration $DURATION --warmup $WARMUP"
  "tls-idle|idle -c $IDLE --duration $HOLD --sample 100 --size 64"
  "tls-handshake|handshake -c 16 --size 128 --duration $DURATION --warmup $WARMUP"
  "tls-stream|stream -c 4 --window 4 --size 65536 --duration $DURATION --warmup $WARMUP"
  "routes-exact|handshake -c 16 --size 128 --duration $DURATION --warmup $WARMUP --host $ROUTE_EXACT"
  "routes-wildcard|handshake -c 16 --size 128 --duration $DURATION --warmup $WARMUP --host $ROUTE_WILDCARD"
)
if [ -n "$ONLY_CASES" ]; then
  kept=()
  for entry in "${CASES[@]}"; do
    case ",$ONLY_CASES," in *",${entry%%|*},"*) kept+=("$entry") ;; esac
  done
  CASES=("${kept[@]}")
fi

# case_targets CASE : the active targets CASE runs against.
case_targets() {
  local t out=()
  for t in "${ACTIVE[@]}"; do
    case "$1" in
      tls-*) [ -n "${TLS_URL[$t]:-}" ] && out+=("$t") ;;
      routes-*) case "$t" in wsingress-2r | wsingress-1k) out+=("$t") ;; esac ;;
      *) case "$t" in wsingress-2r | wsingress-1k) ;; *) out+=("$t") ;; esac ;;
    esac
  done
  [ ${#out[@]} -eq 0 ] || printf '%s\n' "${out[@]}"
}

run_case() {
  local round=$1 case=$2 args=$3 t=$4 pidarg=() url=${URL[$4]} extra=()
  [ -n "${PID[$t]:-}" ] && pidarg=(--proxy-pid "${PID[$t]}")
  case "$case" in
    tls-*) url=${TLS_URL[$t]}; extra=(--ca "$TLS_DIR/ca.pem" --server-name "$TLS_NAME") ;;
  esac
  local out rc=0
  # shellcheck disable=SC2086
  out=$("${ON_LOAD_CPU[@]}" "$WSBENCH" $args --url "$url" "${extra[@]}" "${pidarg[@]}" --json --label "$t" 2>"$WORK/wsbench.err") || rc=$?
  [ -n "$out" ] || out=null
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  printf '{"round":%d,"case":"%s","target":"%s","exit":%d,"load1":%s,"result":%s}\n' \
    "$round" "$case" "$t" "$rc" "$load1" "$out" >>"$RESULTS"
  local summary
  summary=$(python3 scripts/bench/report.py --one "$RESULTS")
  log "round $round $case $t: $summary"
}

for round in $(seq 1 "$ROUNDS"); do
  if [ "$round" -gt 1 ]; then
    for t in "${ACTIVE[@]}"; do stop_target "$t"; done
    for t in "${ACTIVE[@]}"; do start_target "$t" || log "warning: $t did not come back in round $round"; done
  fi
  for entry in "${CASES[@]}"; do
    case=${entry%%|*} args=${entry#*|}
    mapfile -t targets < <(case_targets "$case")
    n=${#targets[@]}
    for i in $(seq 0 $((n - 1))); do
      t=${targets[$(((i + round - 1) % n))]}
      run_case "$round" "$case" "$args" "$t"
      sleep 0.5
    done
  done
done
T_DONE=$(date +%s)

# ---------------------------------------------------------------- report
META=$WORK/meta.json
python3 - "$META" <<EOF
import json, sys, subprocess
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
cpu = next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
  "date": sh("date -u +%Y-%m-%dT%H:%MZ"),
  "nproc": int(sh("nproc") or 0),
  "cpu": cpu,
  "kernel": sh("uname -r"),
  "nginx": sh("nginx -v 2>&1").replace("nginx version: nginx/", "nginx "),
  "haproxy": " ".join(sh("haproxy -v 2>&1 | head -1").split()[0:3:2]),
  "rustc": sh("rustc --version"),
  "commit": sh("git rev-parse --short HEAD"),
  "echo": "$ECHO_KIND",
  "rounds": $ROUNDS, "duration": "$DURATION", "warmup": "$WARMUP", "idle": $IDLE, "quick": bool($QUICK),
  "skipped": "${SKIPPED[*]}".split(),
  "measure_s": $((T_DONE - T_BUILT)), "build_s": $((T_BUILT - T0)),
  "cases": [c.split("|",1) for c in """$(printf '%s\n' "${CASES[@]}")""".strip().splitlines()],
}, open(sys.argv[1], "w"))
EOF
cp "$RESULTS" "$ROOT/target/bench-results.jsonl"
cp "$META" "$ROOT/target/bench-meta.json"
report
log "raw results: target/bench-results.jsonl; measuring took $((T_DONE - T_BUILT)) s"
