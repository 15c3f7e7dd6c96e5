#!/usr/bin/env bash
# bench/uk.sh: the unikernel build. Figures (the lines marked * keep this exact format, to be
# compared run to run):
#   * image size: N bytes                       stripped hello image (janus build --flavor uk)
#   * guest boot to listening: X ms             PVH entry -> listening, printed by the guest (median)
#   * QEMU start to first 200: X ms             QEMU process start -> first HTTP 200 (median)
#   * QEMU floor: Y ms                          the same QEMU command line with an image that exits
#                                               at its entry point: process start -> exit (median)
#   * QEMU start to first 200 / QEMU floor: Z.ZZx
#   * uk/unix throughput ratio (same path): X.XXx (c=N)
#                                               wrk GET / keep-alive, both builds behind one bridge in
#                                               a network namespace the bench creates: the VM on a TAP
#                                               device (QEMU -netdev tap), the process in its own
#                                               namespace behind a veth; wrk on the bridge
#   * uk/unix throughput ratio (user networking vs loopback): X.XXx (c=N)
#                                               the old, unequal paths, kept beside it
#   * idle host CPU: X% of a core               an idle VM over $IDLE seconds
#   * smallest memory that serves: N MiB
# QEMU is started directly with the flags janus/src/flavor/uk.rs uses (so no cargo time is counted);
# one python process starts QEMU and polls HTTP with short timeouts, so both timings have the same
# overhead. This machine has 2 cores shared by wrk, QEMU and other work; compare ratios within a run.
#
#   bench/uk.sh                      # 10 s wrk runs, 10 boots
#   DURATION=5 RUNS=7 IDLE=5 bench/uk.sh
#   ACCEL=tcg bench/uk.sh            # without KVM
#   NETNS=0 bench/uk.sh              # skip the same-path comparison (needs root, /dev/net/tun)
set -euo pipefail
DURATION="${DURATION:-10}"
RUNS="${RUNS:-10}"
IDLE="${IDLE:-10}"
ACCEL="${ACCEL:-kvm}"
NETNS="${NETNS:-1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/install-deps" wrk curl bc python3 iproute2
for tool in qemu-system-x86_64 wrk curl python3 as ld bc ip; do
  command -v "$tool" >/dev/null || { echo "bench: $tool missing (run scripts/install-deps)" >&2; exit 1; }
done
if [ "$ACCEL" = kvm ] && ! [ -r /dev/kvm -a -w /dev/kvm ]; then echo "bench: /dev/kvm unusable; run with ACCEL=tcg" >&2; exit 1; fi
WORK="$(mktemp -d /tmp/janus-uk-bench.XXXXXX)"
NS="janus-ukb-$$"; NSU="janus-ukbu-$$"
QPID=""; UPID=""
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  [ -n "$UPID" ] && kill "$UPID" 2>/dev/null
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip netns del "$NSU" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"} else if (NR%2) {print a[(NR+1)/2]} else {printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}}'; }
ratio() { echo "scale=4; $1 / $2" | bc | awk '{printf "%.2f", $1}'; }

# qemu_args IMG MEMORY_MIB NETDEV APPEND: the command line janus uses (microvm, one vCPU, no defaults)
qemu_args() {
  local accel="$ACCEL"; [ "$accel" = kvm ] && accel=kvm,kernel-irqchip=on
  printf '%s\n' qemu-system-x86_64 -M microvm,acpi=off,rtc=on,pit=on,pic=on -accel "$accel" -smp 1 -m "$2" \
    -nodefaults -no-user-config -no-reboot -display none -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -netdev "$3" -device virtio-net-device,netdev=n0 -kernel "$1" -append "$4"
}
user_net() { echo "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:$1-:80"; }
USER_APPEND="janus.node=bench ip=10.0.2.15/24 gw=10.0.2.2"

# The timing helper: `serve HOST PORT LOG -- ARGS` starts ARGS, polls GET / until a 200 and prints
# the milliseconds; `exit LOG -- ARGS` prints the milliseconds until ARGS exits.
cat >"$WORK/qtime.py" <<'EOF'
import socket, subprocess, sys, time
mode, rest = sys.argv[1], sys.argv[2:]
sep = rest.index("--")
opts, args = rest[:sep], rest[sep + 1:]
log = open(opts[-1], "wb")
t0 = time.perf_counter()
p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
if mode == "exit":
    p.wait(timeout=60)
    print("%.1f" % ((time.perf_counter() - t0) * 1000))
    sys.exit(0)
host, port = opts[0], int(opts[1])
deadline = t0 + 30
while time.perf_counter() < deadline and p.poll() is None:
    try:
        s = socket.create_connection((host, port), timeout=0.02)
        s.settimeout(0.02)
        s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        if s.recv(12).startswith(b"HTTP/1.1 200"):
            print("%.1f" % ((time.perf_counter() - t0) * 1000))
            p.kill(); p.wait()
            sys.exit(0)
    except OSError:
        pass
    finally:
        try: s.close()
        except Exception: pass
p.kill(); p.wait()
sys.exit(1)
EOF

echo "building the samples (uk) and the floor image..." >&2
declare -A IMG
for s in hello kv faulty; do
  IMG[$s]="$(cd "$ROOT" && cargo run -q --release -p janus -- build "samples/$s" --flavor uk 2>/dev/null | tail -n1)"
done
# The floor image: a PVH ELF whose 32-bit entry point writes 0 to isa-debug-exit (QEMU exits, status 1).
cat >"$WORK/floor.s" <<'EOF'
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4, 8, 18
    .asciz "Xen"
    .p2align 2
    .quad floor_entry
    .text
    .code32
    .globl floor_entry
floor_entry:
    mov $0xf4, %dx
    xor %eax, %eax
    out %al, %dx
1:  hlt
    jmp 1b
EOF
cat >"$WORK/floor.ld" <<'EOF'
ENTRY(floor_entry)
PHDRS { text PT_LOAD FLAGS(5); note PT_NOTE FLAGS(4); }
SECTIONS { . = 0x100000; .note.Xen : ALIGN(4) { KEEP(*(.note.Xen)) } :text :note .text : { *(.text) } :text }
EOF
as --64 -o "$WORK/floor.o" "$WORK/floor.s"
ld -m elf_x86_64 -nostdlib -static -n -T "$WORK/floor.ld" -o "$WORK/floor.elf" "$WORK/floor.o"

TAP_NET="tap,id=n0,ifname=tap0,script=no,downscript=no"
TAP_APPEND="janus.node=bench ip=10.77.0.2/24 gw=10.77.0.1"
if [ "$NETNS" = 1 ]; then
  # One bridge in a namespace of our own: the VM on tap0, the unix process in a second namespace
  # behind a veth, wrk and the boot timer on the bridge.
  ip netns add "$NS"; ip netns add "$NSU"
  ip -n "$NS" link set lo up
  ip -n "$NS" link add br0 type bridge
  ip -n "$NS" addr add 10.77.0.1/24 dev br0
  ip -n "$NS" tuntap add dev tap0 mode tap
  ip -n "$NS" link set tap0 master br0
  ip -n "$NS" link add vu0 type veth peer name vu1 netns "$NSU"
  ip -n "$NS" link set vu0 master br0
  ip -n "$NSU" addr add 10.77.0.3/24 dev vu1
  for l in br0 tap0 vu0; do ip -n "$NS" link set "$l" up; done
  ip -n "$NSU" link set lo up; ip -n "$NSU" link set vu1 up
fi

echo "== image size (stripped)"
for s in hello kv faulty; do printf '  %-8s %8d bytes\n' "$s" "$(stat -c %s "${IMG[$s]}")"; done
echo "image size: $(stat -c %s "${IMG[hello]}") bytes"

# Boot timings over the TAP when there is one (QEMU user networking accepts the host's connection
# before the guest exists and retries its SYN to the guest on its own timer, which blurs the figure).
if [ "$NETNS" = 1 ]; then BOOT_PATH="TAP in netns $NS"; else BOOT_PATH="user networking"; fi
echo "== boot, microvm + $ACCEL, $RUNS runs each (hello, then the floor image), alternating; over $BOOT_PATH"
: >"$WORK/start.txt"; : >"$WORK/guest.txt"; : >"$WORK/floor.txt"
for i in $(seq 1 "$RUNS"); do
  for img in "${IMG[hello]}" "$WORK/floor.elf"; do
    if [ "$NETNS" = 1 ]; then
      mapfile -t ARGS < <(qemu_args "$img" 128 "$TAP_NET" "$TAP_APPEND")
      RUN=(ip netns exec "$NS" python3 "$WORK/qtime.py"); HOSTPORT=(10.77.0.2 80)
    else
      PORT=$(free_port)
      mapfile -t ARGS < <(qemu_args "$img" 128 "$(user_net "$PORT")" "$USER_APPEND")
      RUN=(python3 "$WORK/qtime.py"); HOSTPORT=(127.0.0.1 "$PORT")
    fi
    if [ "$img" = "${IMG[hello]}" ]; then
      "${RUN[@]}" serve "${HOSTPORT[@]}" "$WORK/boot$i.log" -- "${ARGS[@]}" >>"$WORK/start.txt" \
        || { echo "bench: boot $i failed:"; cat "$WORK/boot$i.log"; exit 1; }
      sed -n 's/.*boot to listen \([0-9.]*\) ms.*/\1/p' "$WORK/boot$i.log" >>"$WORK/guest.txt"
    else
      "${RUN[@]}" exit "$WORK/floor$i.log" -- "${ARGS[@]}" >>"$WORK/floor.txt"
    fi
  done
done
START=$(median <"$WORK/start.txt"); FLOOR=$(median <"$WORK/floor.txt"); GUEST=$(median <"$WORK/guest.txt")
echo "  boot steps of the last run: $(grep -h 'boot steps' "$WORK/boot$RUNS.log" | sed 's/.*boot steps/boot steps/')"
echo "  start->200 runs: $(tr '\n' ' ' <"$WORK/start.txt")"
echo "  floor runs:      $(tr '\n' ' ' <"$WORK/floor.txt")"
echo "guest boot to listening: $GUEST ms"
echo "QEMU start to first 200: $START ms"
echo "QEMU floor: $FLOOR ms"
echo "QEMU start to first 200 / QEMU floor: $(ratio "$START" "$FLOOR")x"

# wrk_rps URL CONNS [NETNS]: prints req/s (and keeps the report in $WORK/wrk.txt)
wrk_rps() {
  local threads; threads=$([ "$2" = 1 ] && echo 1 || echo 2)
  local run=(wrk -t"$threads" -c"$2" -d"${DURATION}s" --latency "$1")
  if [ -n "${3:-}" ]; then ip netns exec "$3" "${run[@]}" >"$WORK/wrk.txt" 2>&1 || true
  else "${run[@]}" >"$WORK/wrk.txt" 2>&1 || true; fi
  awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt"
}
wrk_detail() { awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} /Socket errors/ {err=$0}
  END {printf "p50 %-8s p99 %-8s%s%s", p50, p99, (bad ? "  non-2xx " bad : ""), (err ? "  " err : "")}' "$WORK/wrk.txt"; }

UNIX_BIN="$(cd "$ROOT" && cargo run -q --release -p janus -- build samples/hello --flavor unix 2>/dev/null | tail -n1)"

if [ "$NETNS" = 1 ]; then
  echo "== wrk, keep-alive, GET / (hello), ${DURATION}s per run: same path (bridge in netns $NS; VM on a TAP, process behind a veth)"
  mapfile -t ARGS < <(qemu_args "${IMG[hello]}" 128 "$TAP_NET" "$TAP_APPEND")
  ip netns exec "$NS" "${ARGS[@]}" >"$WORK/tap.log" 2>&1 & QPID=$!
  ip netns exec "$NSU" "$UNIX_BIN" --listen 10.77.0.3:80 --admin 127.0.0.1:81 --admin-token bench --node-id bench \
    --log-level warn >"$WORK/unix-ns.log" 2>&1 & UPID=$!
  for url in http://10.77.0.2/ http://10.77.0.3/; do
    ok=""
    for _ in $(seq 1 300); do
      ip netns exec "$NS" curl -fs -o /dev/null -m 0.2 "$url" && { ok=1; break; }
      sleep 0.05
    done
    [ -n "$ok" ] || { echo "bench: $url never answered:"; cat "$WORK/tap.log" "$WORK/unix-ns.log"; exit 1; }
  done
  for conns in 1 16; do
    uk=$(wrk_rps http://10.77.0.2/ "$conns" "$NS"); ukd=$(wrk_detail)
    ux=$(wrk_rps http://10.77.0.3/ "$conns" "$NS"); uxd=$(wrk_detail)
    printf '  uk   c=%-3s %10s req/s  %s\n  unix c=%-3s %10s req/s  %s\n' "$conns" "$uk" "$ukd" "$conns" "$ux" "$uxd"
    echo "uk/unix throughput ratio (same path): $(ratio "${uk:-0}" "${ux:-1}")x (c=$conns)"
  done
  kill "$QPID" "$UPID" 2>/dev/null || true; wait "$QPID" "$UPID" 2>/dev/null || true; QPID=""; UPID=""
fi

echo "== wrk, keep-alive, GET / (hello), ${DURATION}s per run: VM over QEMU user networking, process on loopback"
PORT=$(free_port)
mapfile -t ARGS < <(qemu_args "${IMG[hello]}" 128 "$(user_net "$PORT")" "$USER_APPEND")
"${ARGS[@]}" >"$WORK/wrk.log" 2>&1 & QPID=$!
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -m 0.1 -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null)" = 200 ] && break
done
UPORT=$(free_port); UADMIN=$(free_port)
"$UNIX_BIN" --listen "127.0.0.1:$UPORT" --admin "127.0.0.1:$UADMIN" --admin-token bench --node-id bench \
  --log-level warn >"$WORK/unix.log" 2>&1 & UPID=$!
for _ in $(seq 1 200); do curl -fs -o /dev/null -m 1 "http://127.0.0.1:$UPORT/" && break; sleep 0.05; done
for conns in 1 16; do
  uk=$(wrk_rps "http://127.0.0.1:$PORT/" "$conns"); ukd=$(wrk_detail)
  ux=$(wrk_rps "http://127.0.0.1:$UPORT/" "$conns"); uxd=$(wrk_detail)
  printf '  uk   c=%-3s %10s req/s  %s\n  unix c=%-3s %10s req/s  %s\n' "$conns" "$uk" "$ukd" "$conns" "$ux" "$uxd"
  echo "uk/unix throughput ratio (user networking vs loopback): $(ratio "${uk:-0}" "${ux:-1}")x (c=$conns)"
done
kill "$UPID" 2>/dev/null || true; wait "$UPID" 2>/dev/null || true; UPID=""

echo "== idle host CPU (hello, ${IDLE}s, no traffic)"
ticks() { awk '{print $14 + $15}' "/proc/$QPID/stat"; }
HZ=$(getconf CLK_TCK)
a=$(ticks); sleep "$IDLE"; b=$(ticks)
echo "idle host CPU: $(echo "scale=2; 100 * ($b - $a) / $HZ / $IDLE" | bc)% of a core"
kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; QPID=""

echo "== smallest --memory that serves (hello)"
smallest=""
for mib in 128 64 32 16 8 6 5 4 3 2 1; do
  PORT=$(free_port)
  mapfile -t ARGS < <(qemu_args "${IMG[hello]}" "$mib" "$(user_net "$PORT")" "$USER_APPEND")
  if python3 "$WORK/qtime.py" serve 127.0.0.1 "$PORT" "$WORK/mem$mib.log" -- "${ARGS[@]}" >/dev/null; then smallest=$mib; else
    echo "  $mib MiB: does not serve ($(grep -h -m1 -E 'fatal|PANIC|error' "$WORK/mem$mib.log" 2>/dev/null || echo 'no answer'))"; break; fi
done
echo "smallest memory that serves: ${smallest:-none} MiB"
