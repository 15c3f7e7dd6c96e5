#!/usr/bin/env bash
# bench/uk.sh: the unikernel build. Figures:
#   - stripped image size of each sample (janus build --flavor uk)
#   - QEMU process start to first HTTP 200 (median of $RUNS boots), microvm + KVM
#   - in-guest time from the PVH entry point to listening (printed by the guest; median)
#   - requests/s with wrk, keep-alive, 1 and 16 connections (hello, GET /)
#   - host CPU used by an idle VM over $IDLE seconds
#   - the smallest --memory (MiB) with which the hello image boots and serves
# QEMU is started directly with the flags janus/src/flavor/uk.rs uses (so no cargo time is counted).
# This machine has 2 cores shared by wrk, QEMU and other engineers; compare ratios, not absolutes.
#
#   bench/uk.sh                      # 10 s wrk runs, 10 boots
#   DURATION=20 RUNS=20 bench/uk.sh
#   ACCEL=tcg bench/uk.sh            # without KVM
set -euo pipefail
DURATION="${DURATION:-10}"
RUNS="${RUNS:-10}"
IDLE="${IDLE:-10}"
ACCEL="${ACCEL:-kvm}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
command -v qemu-system-x86_64 >/dev/null || { echo "bench: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench: wrk missing (apt-get install wrk)" >&2; exit 1; }
if [ "$ACCEL" = kvm ] && ! [ -r /dev/kvm -a -w /dev/kvm ]; then echo "bench: /dev/kvm unusable; run with ACCEL=tcg" >&2; exit 1; fi
WORK="$(mktemp -d /tmp/janus-uk-bench.XXXXXX)"
QPID=""
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"} else if (NR%2) {print a[(NR+1)/2]} else {printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}}'; }

# boot IMG MEMORY_MIB PORT LOG: starts QEMU in the background (sets QPID)
boot() {
  qemu-system-x86_64 -M microvm,acpi=off,rtc=on,pit=on,pic=on -accel "$ACCEL" -smp 1 -m "$2" \
    -nodefaults -no-user-config -no-reboot -display none -serial "file:$4" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -netdev "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:$3-:80" -device virtio-net-device,netdev=n0 \
    -kernel "$1" -append "janus.node=bench ip=10.0.2.15/24 gw=10.0.2.2" >"$4.qemu" 2>&1 &
  QPID=$!
}
stop() { [ -n "$QPID" ] && { kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; }; QPID=""; }
# wait_200 URL TIMEOUT_S: polls with short timeouts (QEMU accepts before the guest listens)
wait_200() {
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    [ "$(curl -s -o /dev/null -m 0.05 -w '%{http_code}' "$1" 2>/dev/null)" = 200 ] && return 0
    kill -0 "$QPID" 2>/dev/null || return 1
  done
  return 1
}

echo "building the samples (uk)..." >&2
declare -A IMG
for s in hello kv faulty; do
  IMG[$s]="$(cd "$ROOT" && cargo run -q --release -p janus -- build "samples/$s" --flavor uk 2>/dev/null | tail -n1)"
done

echo "== image size (stripped)"
for s in hello kv faulty; do printf '  %-8s %8d bytes\n' "$s" "$(stat -c %s "${IMG[$s]}")"; done

echo "== boot, microvm + $ACCEL, $RUNS runs (hello)"
: >"$WORK/start.txt"; : >"$WORK/guest.txt"
for i in $(seq 1 "$RUNS"); do
  PORT=$(free_port)
  t0=$(now_ns)
  boot "${IMG[hello]}" 128 "$PORT" "$WORK/boot$i.log"
  wait_200 "http://127.0.0.1:$PORT/" 30 || { echo "bench: boot $i failed:"; cat "$WORK/boot$i.log" "$WORK/boot$i.log.qemu"; exit 1; }
  t1=$(now_ns)
  stop
  echo "scale=1; ($t1 - $t0) / 1000000" | bc >>"$WORK/start.txt"
  sed -n 's/.*boot to listen \([0-9.]*\) ms.*/\1/p' "$WORK/boot$i.log" >>"$WORK/guest.txt"
done
echo "  QEMU start -> first HTTP 200: median $(median <"$WORK/start.txt") ms (min $(sort -n "$WORK/start.txt" | head -1), max $(sort -n "$WORK/start.txt" | tail -1))"
echo "  PVH entry -> listening (in guest): median $(median <"$WORK/guest.txt") ms"

echo "== wrk, keep-alive, GET / (hello), ${DURATION}s per run"
PORT=$(free_port)
boot "${IMG[hello]}" 128 "$PORT" "$WORK/wrk.log"
wait_200 "http://127.0.0.1:$PORT/" 30
wrk_line() { # label conns url
  local threads; threads=$([ "$2" = 1 ] && echo 1 || echo 2)
  wrk -t"$threads" -c"$2" -d"${DURATION}s" --latency "$3" >"$WORK/wrk.txt" 2>&1 || true
  awk -v c="$2" -v l="$1" '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF} /Socket errors/ {err=$0}
    END {printf "  %-5s c=%-3s %10s req/s  p50 %-8s p99 %-8s%s%s\n", l, c, r, p50, p99, (bad ? "  non-2xx " bad : ""), (err ? "  " err : "")}' "$WORK/wrk.txt"
}
for conns in 1 16; do wrk_line uk "$conns" "http://127.0.0.1:$PORT/"; done
stop
# The unix build of the same sample, reached the same way (wrk on 127.0.0.1, one hop).
UNIX_BIN="$(cd "$ROOT" && cargo run -q --release -p janus -- build samples/hello --flavor unix 2>/dev/null | tail -n1)"
UPORT=$(free_port); UADMIN=$(free_port)
"$UNIX_BIN" --listen "127.0.0.1:$UPORT" --admin "127.0.0.1:$UADMIN" --admin-token bench --node-id bench \
  --log-level warn >"$WORK/unix.log" 2>&1 & UPID=$!
for _ in $(seq 1 200); do curl -fs -o /dev/null -m 1 "http://127.0.0.1:$UPORT/" && break; sleep 0.05; done
for conns in 1 16; do wrk_line unix "$conns" "http://127.0.0.1:$UPORT/"; done
kill "$UPID"; wait "$UPID" 2>/dev/null || true

echo "== idle host CPU (hello, ${IDLE}s after boot, no traffic)"
PORT=$(free_port)
boot "${IMG[hello]}" 128 "$PORT" "$WORK/idle.log"
wait_200 "http://127.0.0.1:$PORT/" 30
ticks() { awk '{print $14 + $15}' "/proc/$QPID/stat"; }
HZ=$(getconf CLK_TCK)
a=$(ticks); sleep "$IDLE"; b=$(ticks)
echo "  $(echo "scale=2; 100 * ($b - $a) / $HZ / $IDLE" | bc)% of one core"
stop

echo "== smallest --memory that serves (hello)"
smallest=""
for mib in 128 64 32 16 12 8 6 5 4 3 2; do
  PORT=$(free_port)
  boot "${IMG[hello]}" "$mib" "$PORT" "$WORK/mem$mib.log"
  if wait_200 "http://127.0.0.1:$PORT/" 15; then smallest=$mib; stop; else
    stop; echo "  $mib MiB: does not serve ($(grep -h -m1 -E 'fatal|PANIC|error' "$WORK/mem$mib.log" "$WORK/mem$mib.log.qemu" 2>/dev/null || echo 'no answer'))"; break; fi
done
echo "  smallest that serves: ${smallest:-none} MiB"
