#!/usr/bin/env bash
# bench/chaos.sh: what clients feel when stable nodes die, freeze, or the router itself dies.
#
# A `janus up` cluster of samples/hello (3 stable nodes + 1 debug node, stable_weight 100, every port 0)
# under `wrk -t1 -c16 --timeout 5s`, in phases:
#   baseline   no trouble
#   kill       a stable node killed with SIGKILL every 5 s (the supervisor restarts it)
#   freeze     2 of the 3 stable nodes frozen with SIGSTOP (a wedged QEMU: accepts, never answers)
#   router     the router killed with SIGKILL mid-load (the supervisor restarts it)
# For each phase: requests, client-visible errors (non-2xx answers + socket errors), req/s as a share of
# the baseline, p99, fault rows written (and the faults they count); for the freeze phase also the time
# from SIGSTOP until both frozen nodes are out of rotation (the router's /pools says "unhealthy": no new
# request goes to them from then on) and the p99 from then on. Prints figures, asserts nothing.
#
#   bench/chaos.sh                       # uk stable nodes (QEMU), ~2-3 min once built
#   STABLE_FLAVOR=unix bench/chaos.sh    # process nodes in the stable pool (no QEMU)
#   PHASE_S=30 BASELINE_S=15 bench/chaos.sh
set -euo pipefail

PHASE_S="${PHASE_S:-30}"
BASELINE_S="${BASELINE_S:-15}"
STABLE_FLAVOR="${STABLE_FLAVOR:-uk}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

"$ROOT/scripts/install-deps" wrk >/dev/null 2>&1 || true
for tool in wrk curl python3 setpriv; do
  command -v "$tool" >/dev/null || { echo "chaos: missing $tool (scripts/install-deps wrk)" >&2; exit 2; }
done

NAME="chaos-$$"
WORK="$(mktemp -d /tmp/janus-chaos.XXXXXX)"
export JANUS_RUN_DIR="$WORK/run"
RUN="$JANUS_RUN_DIR/$NAME"
echo "building janus (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p janus)
JANUS="$CARGO_TARGET_DIR/release/janus"
STOPPED=()
cleanup() {
  for p in "${STOPPED[@]:-}"; do [ -n "$p" ] && kill -CONT "$p" 2>/dev/null || true; done
  "$JANUS" down --cluster "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/cluster.toml" <<TOML
name = "$NAME"
service = "$ROOT/samples/hello"
[stable]
count = 3
flavor = "$STABLE_FLAVOR"
[debug]
count = 1
spare = 0
[router]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
stable_weight = 100
debug_weight = 0
TOML
echo "janus up (3 $STABLE_FLAVOR stable + 1 unix debug)..." >&2
"$JANUS" up "$WORK/cluster.toml" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; exit 1; }

# state.json fields: `state router listen`, `state pid ID`, `state admin`, `state token`.
state() {
  python3 - "$RUN/state.json" "$@" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); what = sys.argv[2:]
procs = {p["spec"]["id"]: p for p in s["procs"]}
if what[0] == "listen": print(procs["router"]["spec"]["listen"])
elif what[0] == "admin": print(procs["router"]["spec"]["admin"])
elif what[0] == "token": print(procs["router"]["spec"]["token"])
elif what[0] == "pid": print(procs[what[1]]["pid"] or "")
PY
}
URL="http://$(state listen)/"
ADMIN="http://$(state admin)"
TOKEN="$(state token)"
faults() { # rows and the faults they count
  python3 - "$RUN/faults.db" <<'PY'
import sqlite3, sys
try:
    c = sqlite3.connect(sys.argv[1])
    r = c.execute("SELECT COUNT(*), COALESCE(SUM(count), 0) FROM faults").fetchone()
    print(r[0], r[1])
except Exception:
    print(0, 0)
PY
}
all_healthy() {
  curl -fsS -m 1 -H "authorization: Bearer $TOKEN" "$ADMIN/pools" 2>/dev/null | python3 -c '
import json, sys
p = json.load(sys.stdin)
sys.exit(0 if all(n["state"] == "healthy" for q in p["pools"] for n in q["nodes"]) else 1)'
}
wait_healthy() {
  for _ in $(seq 1 600); do all_healthy && return 0; sleep 0.1; done
  echo "chaos: the cluster did not become healthy again" >&2
}
wait_healthy

# run_wrk NAME SECONDS: wrk -t1 -c16 --timeout 5s; saves its output.
run_wrk() { wrk -t1 -c16 -d"$2s" --timeout 5s --latency "$URL" >"$WORK/wrk-$1.txt" 2>&1 || true; }
# parse NAME -> "requests errors req_per_s p99_ms"
parse() {
  python3 - "$WORK/wrk-$1.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
req = int(re.search(r"(\d+) requests in", t).group(1)) if re.search(r"(\d+) requests in", t) else 0
err = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
err += int(m.group(1)) if m else 0
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)) if "Requests/sec" in t else 0.0
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]
m = re.search(r"99%\s+([\d.]+)(us|ms|s|m)\b", t)
print(req, err, rps, ms(*m.groups()) if m else float("nan"))
PY
}
ROWS=()
# phase NAME FAULTS_BEFORE: records a result row
record() {
  local name="$1" f0_rows="$2" f0_count="$3" extra="${4:-}"
  read -r f1_rows f1_count < <(faults)
  read -r req err rps p99 < <(parse "$name")
  ROWS+=("$name $req $err $rps $p99 $((f1_rows - f0_rows)) $((f1_count - f0_count)) $extra")
}

# Warm-up (not measured): connections and lanes to the freshly booted nodes.
wrk -t1 -c16 -d5s --timeout 5s "$URL" >/dev/null 2>&1 || true

echo "phase baseline (${BASELINE_S}s)..." >&2
read -r r0 c0 < <(faults)
run_wrk baseline "$BASELINE_S"
record baseline "$r0" "$c0"

echo "phase kill: a stable node killed -9 every 5 s for ${PHASE_S}s..." >&2
read -r r0 c0 < <(faults)
run_wrk kill "$PHASE_S" &
WRK=$!
for i in $(seq 1 $((PHASE_S / 5 - 1))); do
  sleep 5
  pid="$(state pid "stable-$((i % 3))")"
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
done
wait "$WRK"
record kill "$r0" "$c0"
wait_healthy

echo "phase freeze: 2 of 3 stable nodes SIGSTOPped for ${PHASE_S}s..." >&2
read -r r0 c0 < <(faults)
run_wrk freeze "$PHASE_S" &
WRK=$!
sleep 1
P1="$(state pid stable-0)"; P2="$(state pid stable-1)"
# Detection: from SIGSTOP until /pools shows both frozen nodes unhealthy (polled every 10 ms).
python3 - "$ADMIN/pools" "$TOKEN" >"$WORK/detect.txt" <<'PY' &
import json, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
while time.monotonic() - t0 < 20:
    try:
        req = urllib.request.Request(url, headers={"authorization": "Bearer " + token})
        p = json.load(urllib.request.urlopen(req, timeout=1))
        st = {n["id"]: n["state"] for q in p["pools"] for n in q["nodes"]}
        if st.get("stable-0") == "unhealthy" and st.get("stable-1") == "unhealthy":
            print("%.0f" % ((time.monotonic() - t0) * 1000)); sys.exit(0)
    except Exception:
        pass
    time.sleep(0.01)
print("nan")
PY
DET=$!
kill -STOP "$P1" "$P2"; STOPPED=("$P1" "$P2")
wait "$DET"
DETECT_MS="$(cat "$WORK/detect.txt")"
# p99 once detected: a second wrk on the same router for the rest of the phase.
wrk -t1 -c4 -d"$((PHASE_S - 4))s" --timeout 5s --latency "$URL" >"$WORK/wrk-freeze-detected.txt" 2>&1 || true
wait "$WRK"
kill -CONT "$P1" "$P2"; STOPPED=()
record freeze "$r0" "$c0" "$DETECT_MS"
read -r _ _ _ P99_DETECTED < <(parse freeze-detected)
wait_healthy

echo "phase router: the router killed -9 mid-load (${BASELINE_S}s)..." >&2
read -r r0 c0 < <(faults)
run_wrk router "$BASELINE_S" &
WRK=$!
sleep $((BASELINE_S / 2))
kill -KILL "$(state pid router)"
wait "$WRK"
record router "$r0" "$c0"

# --- report -----------------------------------------------------------------------------------------
python3 - "$P99_DETECTED" "${ROWS[@]}" <<'PY'
import sys
p99_detected = sys.argv[1]
rows = [r.split() for r in sys.argv[2:]]
base = float(rows[0][3]) or 1.0
print("phase     requests  errors     req/s  of baseline   p99 ms  fault rows (faults)  detection")
for r in rows:
    name, req, err, rps, p99, rows_w, count = r[:7]
    det = (r[7] + " ms") if len(r) > 7 else "-"
    print(f"{name:<9} {int(req):>8} {int(err):>7} {float(rps):>9.0f} {float(rps) / base:>11.1%} "
          f"{float(p99):>8.1f}  {int(rows_w):>10} ({int(count)}) {det:>12}")
print(f"freeze: p99 once detected (second client, 4 connections, from detection on): {float(p99_detected):.1f} ms")
PY
echo "router counters at the end (the router restarted in the last phase: its counters start there):"
curl -fsS -m 2 -H "authorization: Bearer $TOKEN" "$ADMIN/metrics" 2>/dev/null \
  | grep -E '^janus_router_(upstream_lane_resent_total|health_transitions_total|retries_total|channel_fallbacks_total|panic_routed_total)' || true
