#!/usr/bin/env bash
# bench/unix-callgrind.sh: instructions per request (user space) of the hello sample's unix build with
# the log off and at info, counted by callgrind: deterministic, unlike timings on a shared machine.
# Each node runs under valgrind; wrk (-c16) warms it up, then callgrind counts only while a second
# wrk run lasts, and the node's janus_requests_total (admin /metrics) before and after gives the
# number of requests it answered meanwhile.
#
#   bench/unix-callgrind.sh                  # the default (`checked`) build, 8 s counted per level
#   BIN=path/to/hello-unix SECONDS_COUNTED=15 bench/unix-callgrind.sh
#   KEEP=/tmp/cg bench/unix-callgrind.sh     # keeps the callgrind files (callgrind_annotate FILE)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
COUNTED="${SECONDS_COUNTED:-8}"
"$ROOT/scripts/install-deps" wrk valgrind
OUT="${KEEP:-$(mktemp -d /tmp/janus-callgrind.XXXXXX)}"
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  echo "building samples/hello (unix, profile checked)..." >&2
  BIN="$(cd "$ROOT" && cargo run -q -p janus -- build samples/hello --flavor unix --profile checked 2>/dev/null | tail -n1)"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
declare -A PER
for level in off info; do
  port=$(free_port); admin=$(free_port)
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$level.cg" "$BIN" \
    --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --admin-token bench --node-id bench \
    --log-level "$level" >"$OUT/$level.log" 2>&1 &
  vpid=$!
  for _ in $(seq 1 600); do curl -fsS -o /dev/null -m 1 "http://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.1; done
  count() { curl -fsS -H 'Authorization: Bearer bench' "http://127.0.0.1:$admin/metrics" | awk '/^janus_requests_total/ {s+=$2} END {print s}'; }
  wrk -t1 -c16 -d3s "http://127.0.0.1:$port/" >/dev/null
  n0=$(count)
  callgrind_control -i on "$vpid" >/dev/null 2>&1
  wrk -t1 -c16 -d"${COUNTED}s" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -i off "$vpid" >/dev/null 2>&1
  n1=$(count)
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
  ir=$(callgrind_annotate "$OUT/$level.cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  PER[$level]=$((ir / (n1 - n0)))
  echo "log $level: $((n1 - n0)) requests, $ir instructions, ${PER[$level]} per request ($OUT/$level.cg.1)"
done
python3 -c "print(f'instructions per request off/info = {${PER[off]} / ${PER[info]}:.3f} (the log at info costs {${PER[info]} - ${PER[off]}} per request)')"
[ -n "${KEEP:-}" ] || rm -rf "$OUT"
