#!/usr/bin/env bash
# bench/unix.sh: the hello sample's unix build: binary size, and requests/s with wrk (keep-alive,
# 1 and 64 connections) with tracing at info and with tracing off, next to a static nginx measured in
# the same run (the ratio is what to compare; this machine has 2 cores shared by wrk and the server).
#
#   bench/unix.sh                 # 10 s per run
#   DURATION=20 bench/unix.sh
set -euo pipefail
DURATION="${DURATION:-10}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/install-deps" wrk nginx-light
WORK="$(mktemp -d /tmp/janus-unix-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 300); do curl -fsS -o /dev/null -m 1 "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "bench: $1 not ready" >&2; exit 1; }
rps() { # url connections threads -> "req/s p50 p99"
  wrk -t"$3" -c"$2" -d"${DURATION}s" --latency "$1" 2>/dev/null | awk '
    /Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%s %s %s", r, p50, p99}'
}

echo "building samples/hello (unix, release)..." >&2
BIN="$(cd "$ROOT" && cargo run -q -p janus -- build samples/hello --flavor unix 2>/dev/null | tail -n1)"
SIZE=$(stat -c %s "$BIN")
STRIPPED=$(strip -o "$WORK/stripped" "$BIN" && stat -c %s "$WORK/stripped")

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; user root; pid $WORK/nginx/pid; error_log $WORK/nginx/err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $WORK/nginx/tmp;
  proxy_temp_path $WORK/nginx/tmp; fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp;
  scgi_temp_path $WORK/nginx/tmp;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 "Hello from Janus!\n"; } } }
CONF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/"

printf '%-26s %12s %10s %10s\n' "target" "req/s" "p50" "p99"
declare -A R
for conns in 1 64; do
  threads=$([ "$conns" = 1 ] && echo 1 || echo 2)
  read -r r p50 p99 <<<"$(rps "http://127.0.0.1:$NGINX_PORT/" "$conns" "$threads")"
  R[nginx-$conns]=$r; printf '%-26s %12s %10s %10s\n' "nginx static, c=$conns" "$r" "$p50" "$p99"
  for level in info off; do
    PORT=$(free_port); ADMIN=$(free_port)
    "$BIN" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --admin-token bench --node-id bench \
      --log-level "$level" >"$WORK/node-$level-$conns.log" 2>&1 & PID=$!
    wait_http "http://127.0.0.1:$PORT/"
    read -r r p50 p99 <<<"$(rps "http://127.0.0.1:$PORT/" "$conns" "$threads")"
    kill "$PID"; wait "$PID" 2>/dev/null || true
    R[$level-$conns]=$r
    printf '%-26s %12s %10s %10s\n' "hello unix, log $level, c=$conns" "$r" "$p50" "$p99"
  done
done
echo
echo "binary: $SIZE bytes ($STRIPPED stripped)"
for conns in 1 64; do
  python3 - "$conns" "${R[info-$conns]}" "${R[off-$conns]}" "${R[nginx-$conns]}" <<'PY'
import sys
c, info, off, ngx = sys.argv[1], *map(float, sys.argv[2:])
print(f"c={c}: tracing info/off = {info/off:.2f}x; hello(info)/nginx = {info/ngx:.2f}x; hello(off)/nginx = {off/ngx:.2f}x")
PY
done
