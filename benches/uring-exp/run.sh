#!/usr/bin/env bash
# Issue #11's io_uring experiment: proxy CPU per operation (user and system, from
# /proc/PID/stat) for wsingress, nginx, a tokio (epoll) byte relay and an io_uring byte relay,
# same backends, same wsbench load, interleaved rounds. Needs a release build of wsingress and
# wsbench (cargo build --release --bins), nginx and the Node echo (scripts/install-tools.sh).
#   benches/uring-exp/run.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(cd ../.. && pwd)
ROUNDS=${1:-3}
cargo build --release --quiet
EXP=$PWD/target/release/uring-exp
WSB=$ROOT/target/release/wsbench
WSI=$ROOT/target/release/wsingress
NM=$ROOT/.tools/node/node_modules
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B1=$(free_port); B2=$(free_port); PW=$(free_port); PN=$(free_port); PE=$(free_port); PU=$(free_port); PA=$(free_port)
WS_NODE_MODULES=$NM node "$ROOT/scripts/bench/echo-server.js" "$B1" >"$WORK/e1.log" 2>&1 & PIDS+=($!)
WS_NODE_MODULES=$NM node "$ROOT/scripts/bench/echo-server.js" "$B2" >"$WORK/e2.log" 2>&1 & PIDS+=($!)
RUST_LOG=warn "$WSI" serve --upstream "127.0.0.1:$B1,127.0.0.1:$B2" --workers 1 --listen "127.0.0.1:$PW" \
  --tls-listen off --admin-listen "127.0.0.1:$PA" --idle-timeout 300s >"$WORK/wsi.log" 2>&1 & PIDS+=($!); P_WSI=$!
mkdir -p "$WORK/ng"
sed -e "s|@DIR@|$WORK/ng|g" -e "s|@PORT@|$PN|g" -e "s|@BACKEND1@|$B1|g" -e "s|@BACKEND2@|$B2|g" -e "s|@MAXCONN@|9990|g" \
  "$ROOT/scripts/bench/nginx.conf.in" >"$WORK/ng/nginx.conf"
nginx -p "$WORK/ng" -e "$WORK/ng/error.log" -c "$WORK/ng/nginx.conf" 2>/dev/null & PIDS+=($!); P_MASTER=$!
"$EXP" epoll "127.0.0.1:$PE" "127.0.0.1:$B1" 2>"$WORK/epoll.log" & PIDS+=($!); P_EPOLL=$!
"$EXP" uring "127.0.0.1:$PU" "127.0.0.1:$B1" 2>"$WORK/uring.log" & PIDS+=($!); P_URING=$!
for p in $PW $PN $PE $PU; do "$WSB" probe --url "ws://127.0.0.1:$p/" --duration 10 >/dev/null; done
P_NGINX=$(pgrep -P "$P_MASTER" | head -1)
tck=$(getconf CLK_TCK)
measure() { # name pid port mode...
  local name=$1 pid=$2 port=$3; shift 3
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  local out; out=$("$WSB" "$@" --duration 10 --warmup 0 --url "ws://127.0.0.1:$port/" 2>&1)
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  local ops; ops=$(grep -oP '^\s*\K[0-9]+(?= ops)' <<<"$out")
  python3 -c "n=$ops; u=($u1-$u0)/$tck*1e6/n; s=($s1-$s0)/$tck*1e6/n; print(f'| $* | $name | {n} | {u:.1f} | {s:.1f} | {u+s:.1f} |')"
}
echo "| mode | target | ops | user µs/op | system µs/op | total µs/op |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for mode in "pingpong -c 64 --size 1024" "pingpong -c 1 --size 1024" "stream -c 4 --window 4 --size 65536"; do
    # shellcheck disable=SC2086
    for t in "wsingress $P_WSI $PW" "nginx $P_NGINX $PN" "epoll $P_EPOLL $PE" "uring $P_URING $PU"; do
      set -- $t; measure "$1" "$2" "$3" $mode
    done
  done
done
