#!/usr/bin/env bash
# bench/unix.sh: the hello sample's unix build: binary size, and requests/s with wrk (keep-alive,
# 1 and 64 connections) with tracing at info and with tracing off, next to a static nginx measured in
# the same run (the ratio is what to compare; this machine has 2 cores shared by wrk and the server).
#
# Two builds of hello are measured side by side: the `checked` profile (what `janus build --flavor
# unix` makes by default, the debug build users run: overflow checks and debug assertions in the
# workspace's crates) gives the target lines; the `release` profile (`--profile release`, none of
# them) is printed beside it.
#
#   bench/unix.sh                 # 3 rounds of 10 s per run, medians compared
#   DURATION=20 ROUNDS=5 bench/unix.sh
#   PROFILES=checked bench/unix.sh   # only the default build
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
rps() { # url connections threads -> "req/s p50 p99 requests"
  wrk -t"$3" -c"$2" -d"${DURATION}s" --latency "$1" 2>/dev/null | awk '
    /Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} / requests in / {n=$1}
    END {printf "%s %s %s %s", r, p50, p99, n}'
}
# CPU time (user+system, clock ticks) used so far by process $1 and its child processes (nginx's
# worker): the server's own cost per request, which other load on the machine does not inflate.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

PROFILES="${PROFILES:-checked release}"
declare -A BIN
for profile in $PROFILES; do
  echo "building samples/hello (unix, profile $profile)..." >&2
  built="$(cd "$ROOT" && cargo run -q -p janus -- build samples/hello --flavor unix --profile "$profile" 2>/dev/null | tail -n1)"
  # Both profiles are built to the same output path: keep a copy of each.
  BIN[$profile]="$WORK/hello-$profile"
  cp "$built" "${BIN[$profile]}"
done

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
declare -A SPID
SPID[nginx]=$!
wait_http "http://127.0.0.1:$NGINX_PORT/"

# The hello nodes run with their default runtime settings; nginx runs one worker process.
# One node per profile and log level, started once; ROUNDS rounds of (nginx, then each node) per
# connection count, interleaved so that load from elsewhere on the machine hits all alike; medians
# are compared.
declare -A PORT
NODES=()
for profile in $PROFILES; do
  for level in info off; do
    t="$profile-$level"; NODES+=("$t")
    PORT[$t]=$(free_port); ADMIN=$(free_port)
    "${BIN[$profile]}" --listen "127.0.0.1:${PORT[$t]}" --admin "127.0.0.1:$ADMIN" --admin-token bench \
      --node-id bench --log-level "$level" >"$WORK/node-$t.log" 2>&1 & PIDS+=($!)
    SPID[$t]=$!
    wait_http "http://127.0.0.1:${PORT[$t]}/"
  done
done
PORT[nginx]=$NGINX_PORT
ROUNDS="${ROUNDS:-3}"
printf '%-30s %12s %10s %10s %12s\n' "target" "req/s" "p50" "p99" "cpu us/req"
declare -A R C
for conns in 1 64; do
  threads=$([ "$conns" = 1 ] && echo 1 || echo 2)
  for round in $(seq 1 "$ROUNDS"); do
    for t in nginx "${NODES[@]}"; do
      before=$(cpu_ticks "${SPID[$t]}")
      read -r r p50 p99 n <<<"$(rps "http://127.0.0.1:${PORT[$t]}/" "$conns" "$threads")"
      used=$(( ($(cpu_ticks "${SPID[$t]}") - before) * TICK_US ))
      cpu=$(python3 -c "print(f'{$used / max($n, 1):.2f}')")
      R[$t-$conns]="${R[$t-$conns]:-} $r"
      C[$t-$conns]="${C[$t-$conns]:-} $cpu"
      label=$([ "$t" = nginx ] && echo "nginx static" || echo "hello ${t%-*}, log ${t##*-}")
      printf '%-30s %12s %10s %10s %12s\n' "$label, c=$conns #$round" "$r" "$p50" "$p99" "$cpu"
    done
  done
done
echo
for profile in $PROFILES; do
  size=$(stat -c %s "${BIN[$profile]}")
  stripped=$(strip -o "$WORK/stripped" "${BIN[$profile]}" && stat -c %s "$WORK/stripped")
  echo "binary ($profile): $size bytes ($stripped stripped)"
done
echo "medians of $ROUNDS rounds; the target lines are the checked profile's (the default unix build):"
for conns in 1 64; do
  for profile in $PROFILES; do
    python3 - "$conns" "$profile" "${R[$profile-info-$conns]}" "${R[$profile-off-$conns]}" "${R[nginx-$conns]}" \
      "${C[$profile-info-$conns]}" "${C[$profile-off-$conns]}" "${C[nginx-$conns]}" <<'PY'
import statistics, sys
c, profile = sys.argv[1:3]
info, off, ngx, cinfo, coff, cngx = (statistics.median(map(float, a.split())) for a in sys.argv[3:])
print(f"c={c} {profile}: nginx {ngx:.0f}, info {info:.0f}, off {off:.0f} req/s; tracing info/off = {info/off:.2f}x; hello(info)/nginx = {info/ngx:.2f}x; hello(off)/nginx = {off/ngx:.2f}x")
print(f"c={c} {profile}: server CPU per request: nginx {cngx:.1f} us, off {coff:.1f} us, info {cinfo:.1f} us; nginx/off = {cngx/coff:.2f}x, off/info = {coff/cinfo:.2f}x (the same ratios by CPU cost, not disturbed by other load)")
PY
  done
done
