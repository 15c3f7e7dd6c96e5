#!/usr/bin/env bash
# bench/libvirt.sh: the libvirt engine. A `janus up` cluster of the hello sample (2 unikernel domains
# on a libvirt network + 1 unix debug node + the router, [engine] kind = "libvirt") next to a private
# libvirtd (scripts/libvirt-sandbox: own mount, network and pid namespaces; nothing global touched).
# Figures (the lines marked * keep this exact format):
#   * domain start to serving: X ms             libvirt's Started event -> first HTTP 200 on the
#                                               domain's address (median of $ROUNDS restarts)
#   * discovery, domain down to router: X ms    `virsh destroy` returned -> gone from the router's
#                                               /pools (median)
#   * discovery, serving to router: X ms        first 200 on the domain -> back in /pools (after the
#                                               router's own passing /health) (median)
#   * uk req/s through the bridge: N (c=C)      wrk GET / keep-alive to one domain's address (TAP + bridge)
#   * unix req/s on loopback: N (c=C)           wrk GET / to the unix node of the same cluster
#   * uk/unix throughput ratio: X.XXx
# The domain restarts are the supervisor's (its lifecycle-event watcher starts a destroyed domain again
# after the restart backoff, 200 ms by default), so "start to serving" begins at libvirt's Started event,
# not at the destroy. The two req/s figures take different paths (bridge+TAP vs loopback): the ratio
# says what a user of each gets on one host, not the kernel's own cost (bench/uk.sh compares the two
# builds on the same bridge path). 2 shared cores: wrk, QEMU and the node compete; compare within a run.
#
#   bench/libvirt.sh                 # ROUNDS=5 DURATION=10 CONNS=16
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-16}"
if [ "${JANUS_LIBVIRT_SANDBOX:-}" != 1 ]; then
  "$ROOT/scripts/install-deps" wrk curl python3 bc libvirt-daemon-system dnsmasq-base iproute2
  (cd "$ROOT" && cargo build -q -p janus)
  export JANUS_LIBVIRT_SANDBOX=1 ROUNDS DURATION CONNS
  exec "$ROOT/scripts/libvirt-sandbox" "$0" "$@"
fi
JANUS="$ROOT/target/debug/janus"
WORK="$(mktemp -d /tmp/janus-libvirt-bench.XXXXXX)"
NAME="lvbench$RANDOM"
cleanup() { "$JANUS" down --cluster "$NAME" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
cat >"$WORK/cluster.toml" <<EOF
name = "$NAME"
service = "$ROOT/samples/hello"
[stable]
count = 2
memory_mib = 64
[debug]
count = 1
spare = 0
[router]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
[engine]
kind = "libvirt"
subnet = "10.79.0.0/24"
EOF
"$JANUS" up "$WORK/cluster.toml" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; exit 1; }
RUN="$(sed -n 's/.*run directory \(.*\)$/\1/p' "$WORK/up.log" | head -1)"
virsh -q -c qemu:///system event --loop --timestamp --event lifecycle >"$WORK/events.log" 2>&1 &
EVPID=$!
sleep 0.3
python3 - "$RUN" "$NAME" "$WORK/events.log" "$ROUNDS" >"$WORK/timings.txt" <<'PY'
import json, subprocess, sys, time, urllib.request, datetime
run, name, events, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
state = json.load(open(f"{run}/state.json"))
procs = {p["spec"]["id"]: p["spec"] for p in state["procs"]}
router, node = procs["router"], procs["stable-0"]
dom = f"janus-{name}-stable-0"
def get(url, token=None, timeout=0.3):
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()
def in_router():
    _, body = get(f"http://{router['admin']}/pools", router["token"], 1.0)
    return any(n["id"] == "stable-0" for p in json.loads(body)["pools"] for n in p["nodes"])
def serving():
    try:
        return get(f"http://{node['listen']}/")[0] == 200
    except Exception:
        return False
def wait(pred, limit=60):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > limit:
            sys.exit(f"bench: timed out waiting ({pred.__name__})")
        time.sleep(0.002)
    return time.time()
def started_after(t):
    for line in open(events):
        if f"'{dom}': Started" in line:
            ts = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
            if ts >= t - 0.01:
                return ts
    return None
wait(in_router)
for _ in range(rounds):
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", "destroy", dom], check=True, capture_output=True)
    t_destroyed = time.time()
    t_gone = wait(lambda: not in_router())
    t_serve = wait(serving)
    t_join = wait(in_router)
    t_start = started_after(t_destroyed)
    print(f"{(t_serve - t_start) * 1000:.1f} {(t_gone - t_destroyed) * 1000:.1f} {(t_join - t_serve) * 1000:.1f}")
print(f"NODES {node['listen']} {procs['debug-0']['listen']}")
PY
kill "$EVPID" 2>/dev/null || true
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) {print a[(NR+1)/2]} else {printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}}'; }
read -r UK UNIX < <(awk '/^NODES/ {print $2, $3}' "$WORK/timings.txt")
echo "rounds (start->serving, down->router, serving->router, ms):"
grep -v '^NODES' "$WORK/timings.txt" | sed 's/^/  /'
echo "* domain start to serving: $(grep -v '^NODES' "$WORK/timings.txt" | awk '{print $1}' | median) ms"
echo "* discovery, domain down to router: $(grep -v '^NODES' "$WORK/timings.txt" | awk '{print $2}' | median) ms"
echo "* discovery, serving to router: $(grep -v '^NODES' "$WORK/timings.txt" | awk '{print $3}' | median) ms"
rps() { wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://$1/" 2>&1 | awk '/Requests\/sec/ {print $2}'; }
UK_RPS=$(rps "$UK")
UNIX_RPS=$(rps "$UNIX")
echo "* uk req/s through the bridge: $UK_RPS (c=$CONNS)"
echo "* unix req/s on loopback: $UNIX_RPS (c=$CONNS)"
echo "* uk/unix throughput ratio: $(echo "scale=4; $UK_RPS / $UNIX_RPS" | bc | awk '{printf "%.2f", $1}')x"
