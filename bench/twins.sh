#!/usr/bin/env bash
# bench/twins.sh: shadow twins under write load: twin lag, compared vs skipped mirrors, false divergences.
#
# A `janus up` cluster of samples/kv (1 stable node, 1 unix debug node, stable_weight 100, every GET of
# /kv mirrored) run twice with the same load:
#   before   [debug] twins = false: mirrors go to the debug node, whose store is its own (today's A/B)
#   after    [debug] twins = true: mirrors go to the stable node's twin at the stable answer's seq
# Load (python3, keep-alive connections through the router): WRITERS writers (default 4, each on a
# connection of its own: one writer waiting for each answer stays under ~700 writes/s) PUTting
# /kv/k<n % 200> paced at WRITES_PER_S together (default 1000), and one reader GETting random keys
# until READS (default 10000) mirrored GETs were answered. Meanwhile a sampler polls the stable node's
# /health seq and the twin's applied seq every 5 ms: lag in seqs (stable - twin) and in ms (from a
# write's answer until the twin's /health shows its seq; 5 ms polling granularity included).
# Prints per run: writes/s reached, mirrors sent/compared/skipped_lag/diverged/noisy/error, the share
# compared and skipped, and for twins the lag p50/p99/max. Every kv divergence is false (kv has no
# build-dependent bug), so `diverged` is the false-divergence count. Asserts nothing.
#
#   bench/twins.sh                        # uk stable node (QEMU), ~1 min once built
#   STABLE_FLAVOR=unix bench/twins.sh     # a process in the stable pool
#   WRITES_PER_S=500 READS=2000 bench/twins.sh
#   REPLAY_DELAY_MS=5 bench/twins.sh      # a twin's hold-back of each op log batch
set -euo pipefail

WRITES_PER_S="${WRITES_PER_S:-1000}"
WRITERS="${WRITERS:-4}"
READS="${READS:-10000}"
STABLE_FLAVOR="${STABLE_FLAVOR:-uk}"
REPLAY_DELAY_MS="${REPLAY_DELAY_MS:-}"   # twin_replay_delay_ms (default: the cluster file's default)
for v in WRITES_PER_S WRITERS READS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench: $v=${!v}: want a whole number above 0" >&2; exit 2; }
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

for tool in python3 setpriv; do
  command -v "$tool" >/dev/null || { echo "twins: missing $tool (scripts/install-deps)" >&2; exit 2; }
done

WORK="$(mktemp -d /tmp/janus-twins.XXXXXX)"
export JANUS_RUN_DIR="$WORK/run"
echo "building janus (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p janus)
JANUS="$CARGO_TARGET_DIR/release/janus"
NAMES=()
cleanup() {
  for n in "${NAMES[@]:-}"; do [ -n "$n" ] && "$JANUS" down --cluster "$n" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

run() { # run NAME TWINS
  local name="$1" twins="$2"
  NAMES+=("$name")
  cat >"$WORK/$name.toml" <<TOML
name = "$name"
service = "$ROOT/samples/kv"
[stable]
count = 1
flavor = "$STABLE_FLAVOR"
[debug]
count = 1
spare = 0
twins = $twins
${REPLAY_DELAY_MS:+twin_replay_delay_ms = $REPLAY_DELAY_MS}
[router]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
stable_weight = 100
debug_weight = 0
request_timeout_ms = 5000
[[router.mirror]]
prefix = "/kv"
fraction = 1.0
TOML
  echo "janus up ($name: 1 $STABLE_FLAVOR stable, twins = $twins)..." >&2
  "$JANUS" up "$WORK/$name.toml" >"$WORK/$name.up.log" 2>&1 || { cat "$WORK/$name.up.log" >&2; exit 1; }
  python3 - "$JANUS_RUN_DIR/$name/state.json" "$WRITES_PER_S" "$READS" "$name" "$WRITERS" <<'PY'
import http.client, json, random, sys, threading, time

state = json.load(open(sys.argv[1]))
writes_per_s, reads, name, writers = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
procs = {p["spec"]["id"]: p["spec"] for p in state["procs"]}
router, stable, twin = procs["router"], procs["stable-0"], procs.get("twin-stable-0")

def conn(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)

def call(c, method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r, data

def admin(spec, path, c=None):
    c = c or conn(spec["admin"])
    r, data = call(c, "GET", path, headers={"authorization": "Bearer " + spec["token"]})
    return data

def mirrors():
    text = admin(router, "/metrics").decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('janus_router_mirror_total{result="'):
            k = line.split('"')[1]
            out[k] = int(float(line.split()[-1]))
    return out

before = mirrors()
stop = threading.Event()
acks = {}          # write seq -> time its answer arrived
lag_ms, lag_seq = [], []
written = [0]
lock = threading.Lock()

def writer(w):
    # Writer w of `writers`, on a keep-alive connection of its own, paced at its share of the rate.
    c = conn(router["listen"])
    i, start, rate = 0, time.monotonic(), writes_per_s / writers
    while not stop.is_set():
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        n = i * writers + w
        r, _ = call(c, "PUT", f"/kv/k{n % 200}", body=f"v{n}".encode())
        seq = r.getheader("x-janus-state-seq")
        if seq is not None:
            acks[int(seq) + 1] = time.monotonic()
        i += 1
        with lock:
            written[0] += 1

def sampler():
    cs, ct = conn(stable["admin"]), conn(twin["admin"])
    marked = 0
    while not stop.is_set():
        s = json.loads(admin(stable, "/health", cs))["seq"]
        t = json.loads(admin(twin, "/health", ct))["twin"]["applied_seq"]
        now = time.monotonic()
        lag_seq.append(max(0, s - t))
        for seq in range(marked + 1, t + 1):
            at = acks.pop(seq, None)
            if at is not None:
                lag_ms.append((now - at) * 1000)
        marked = max(marked, t)
        time.sleep(0.005)

threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
if twin:
    threads.append(threading.Thread(target=sampler))
for t in threads:
    t.start()
c = conn(router["listen"])
t0 = time.monotonic()
for n in range(reads):
    call(c, "GET", f"/kv/k{random.randrange(200)}")
elapsed = time.monotonic() - t0
stop.set()
for t in threads:
    t.join()
# Let in-flight mirrors finish.
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    m = mirrors()
    if m.get("sent", 0) == sum(m.get(k, 0) for k in ("match", "diverged", "skipped_lag", "noisy", "error")):
        break
    time.sleep(0.1)
m = {k: v - before.get(k, 0) for k, v in mirrors().items()}
sent = max(m.get("sent", 0), 1)
print(f"== {name}: {reads} GETs in {elapsed:.1f} s with {written[0]} PUTs from {writers} writers ({written[0] / elapsed:.0f} writes/s, asked {writes_per_s})")
print("   mirrors: " + " ".join(f"{k}={m.get(k, 0)}" for k in ("sent", "match", "skipped_lag", "diverged", "noisy", "error", "dropped")))
print(f"   compared {100 * m.get('match', 0) / sent:.1f}%  skipped_lag {100 * m.get('skipped_lag', 0) / sent:.1f}%  false divergences {m.get('diverged', 0)} ({100 * m.get('diverged', 0) / sent:.2f}%)")
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")
if twin:
    print(f"   twin lag seq: p50 {pct(lag_seq, 50)} p99 {pct(lag_seq, 99)} max {max(lag_seq, default=0)} ({len(lag_seq)} samples)")
    print(f"   twin lag ms:  p50 {pct(lag_ms, 50):.1f} p99 {pct(lag_ms, 99):.1f} max {max(lag_ms, default=0):.1f} ({len(lag_ms)} writes)")
    h = json.loads(admin(twin, "/health"))["twin"]
    print(f"   twin: resyncs {h['resyncs']} ops_applied {h['ops_applied']}")
PY
  "$JANUS" down --cluster "$name" >/dev/null 2>&1 || true
}

run "twins-before-$$" false
run "twins-after-$$" true
