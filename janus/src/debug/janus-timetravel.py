# gdb support for `janus faults timetravel`: reverse-continue on a QEMU 7.2 replay.
#
# QEMU's own reverse-continue (the gdb `bc` packet) deadlocks in QEMU 7.2 when its forward pass
# ends: it loads the snapshot from a timer callback while holding the replay lock, the device
# reset waits for the vCPU thread, and the vCPU thread waits for the replay lock. So janus
# disables `bc` and implements reverse-continue with what does work, driven from here:
#   - QEMU's QMP socket (not gdb's `monitor`: a `loadvm` through the gdbstub leaves the replay
#     stalled): `loadvm` of a snapshot, `query-replay` (the instruction count), `replay-break`;
#   - gdb's own forward `continue`, which stops at the user's breakpoints and at a replay break.
# A reverse-continue from instruction count C: load the latest snapshot before C, replay forward
# to C noting the instruction count of every breakpoint/watchpoint stop; if there was one, load
# the snapshot again and replay to the last of them; otherwise try the snapshot before, and with
# none left, replay back to C and say that no breakpoint was hit. Every pass ends at C or
# earlier, so the command ends in bounded time; a watchdog stops a pass that makes no progress
# (a replay that stalls) and says so.
import json
import os
import socket
import sys
import threading
import time

import gdb

_DEBUG = bool(os.environ.get("JANUS_TIMETRAVEL_DEBUG"))


def _log(msg):
    if _DEBUG:
        sys.stderr.write("janus-timetravel: %s\n" % msg)
        sys.stderr.flush()


class _Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        # A QEMU that does not answer is deadlocked (see _load): fail instead of hanging.
        self.sock.settimeout(60)
        self.buf = b""
        self.lock = threading.Lock()
        self._read()  # greeting
        self.call("qmp_capabilities")

    def _read(self):
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.strip()
                if not line:
                    continue
                msg = json.loads(line)
                if "event" in msg:
                    continue
                return msg
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise gdb.GdbError("janus: QEMU did not answer on QMP for 60 s (QEMU deadlocked)")
            if not chunk:
                raise gdb.GdbError("janus: QEMU's QMP socket closed")
            self.buf += chunk

    def call(self, cmd, **args):
        _log("qmp %s %s" % (cmd, args))
        with self.lock:
            req = {"execute": cmd}
            if args:
                req["arguments"] = args
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            msg = self._read()
        if "error" in msg:
            raise gdb.GdbError("janus: QEMU %s: %s" % (cmd, msg["error"].get("desc", msg)))
        return msg.get("return")

    def hmp(self, line):
        out = self.call("human-monitor-command", **{"command-line": line}) or ""
        if "Error" in out or "error" in out:
            raise gdb.GdbError("janus: QEMU `%s`: %s" % (line, out.strip()))
        return out


_qmp = None
_SETTLE_SECONDS = 0.1
# Seconds a forward pass may go without its instruction count moving before it is stopped.
_stall_seconds = [30.0]


def _icount():
    return int(_qmp.call("query-replay")["icount"])


def _snapshots():
    """(icount, name) of the VM snapshots on the replay drive, oldest first."""
    out = _qmp.hmp("info snapshots")
    snaps = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 6 or cols[0] in ("ID", "--") and cols[1] == "TAG":
            continue
        try:
            icount = int(cols[-1])
        except ValueError:
            continue
        snaps.append((icount, cols[1]))
    return sorted(snaps)


def _load(name):
    # QEMU 7.2 deadlocks in loadvm when the vCPU thread has not yet settled after a stop (the
    # device reset waits for the vCPU, which waits for the replay lock loadvm holds): let it.
    time.sleep(_SETTLE_SECONDS)
    _qmp.hmp("loadvm " + name)
    gdb.execute("maintenance flush register-cache", to_string=True)


class _Pass:
    """One forward `continue` with a watchdog; records why it stopped."""

    def __init__(self):
        self.stop = None

    def _on_stop(self, ev):
        self.stop = ev

    def run(self):
        self.stop = None
        done = threading.Event()
        stalled = []

        def watchdog():
            last = None
            while not done.wait(_stall_seconds[0]):
                try:
                    now = int(_qmp.call("query-replay")["icount"])
                except Exception:
                    return
                if now == last:
                    stalled.append(now)
                    try:
                        _qmp.call("stop")
                    except Exception:
                        pass
                    return
                last = now

        _log("continue")
        gdb.events.stop.connect(self._on_stop)
        t = threading.Thread(target=watchdog, daemon=True)
        t.start()
        try:
            gdb.execute("continue", to_string=True)
        finally:
            done.set()
            gdb.events.stop.disconnect(self._on_stop)
            t.join()
        _log("stopped: %s" % type(self.stop).__name__)
        if stalled:
            raise gdb.GdbError(
                "janus: the replay made no progress for %.0f s at instruction %d (QEMU's "
                "record/replay lost an event; see docs/DEBUGGING.md)" % (_stall_seconds[0], stalled[0])
            )
        if not gdb.selected_inferior().pid:
            raise gdb.GdbError("janus: the replay ended (QEMU exited) during reverse-continue")
        return self.stop


def _hit(ev):
    """The breakpoints a stop event reports (empty for a replay break, which arrives as SIGINT)."""
    if isinstance(ev, gdb.BreakpointEvent):
        return list(ev.breakpoints)
    return []


class _Quiet:
    """gdb's own stop reports off (the passes of a reverse-continue are not the user's stops)."""

    def __enter__(self):
        gdb.execute("set suppress-cli-notifications on", to_string=True)
        # The "Program received signal SIGINT" of a replay break is printed regardless.
        gdb.flush()
        self.saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)

    def __exit__(self, *exc):
        gdb.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        gdb.execute("set suppress-cli-notifications off", to_string=True)


def _run_to(target):
    """Forward to exactly `target` (icount), through any breakpoint stops before it."""
    _qmp.call("replay-break", icount=target)
    try:
        with _Quiet():
            while _icount() < target:
                _Pass().run()
    finally:
        _qmp.call("replay-delete-break")


def _scan(end):
    """Replays forward to `end`; the icounts of the breakpoint stops before `end`."""
    hits = []
    _qmp.call("replay-break", icount=end)
    try:
        with _Quiet():
            while True:
                ev = _Pass().run()
                now = _icount()
                if now >= end:
                    return hits
                if _hit(ev):
                    hits.append(now)
    finally:
        _qmp.call("replay-delete-break")


class JanusReverseContinue(gdb.Command):
    """Run backward to the last breakpoint or watchpoint hit before this point of the replay
    (janus: QEMU 7.2's own reverse-continue deadlocks). Loads the nearest VM snapshot before
    here, replays forward noting the hits, and replays again to the last one. Without a hit
    since the start of the recording, it says so and stays here."""

    def __init__(self, name):
        super().__init__(name, gdb.COMMAND_RUNNING)

    def invoke(self, arg, from_tty):
        if _qmp is None:
            raise gdb.GdbError("janus: reverse-continue needs `janus faults timetravel`")
        now = _icount()
        if now == 0:
            gdb.write("\nNo more reverse-execution history.\n")
            return
        start = now
        snaps = [s for s in _snapshots() if s[0] < now]
        if not snaps:
            raise gdb.GdbError("janus: no VM snapshot before instruction %d on the replay drive" % now)
        for icount, name in reversed(snaps):
            _load(name)
            hits = _scan(now)
            if hits:
                target = hits[-1]
                _load(name)
                if len(hits) > 1:
                    _run_to(hits[-2])
                # The last stop is gdb's own, so it prints as a breakpoint stop does (inlined
                # functions included); a replay break one instruction later guards it.
                _qmp.call("replay-break", icount=target + 1)
                try:
                    _Pass().run()
                finally:
                    _qmp.call("replay-delete-break")
                if _icount() != target:
                    raise gdb.GdbError(
                        "janus: the replay did not stop at instruction %d again (it stopped at %d)"
                        % (target, _icount())
                    )
                return
            now = icount
        # No hit: back to where the command started, and say so.
        icount, name = snaps[-1]
        if len(snaps) > 1:
            _load(name)
            _run_to(start)
        gdb.write(
            "\nNo breakpoint or watchpoint was hit between the start of the recording and here "
            "(instruction %d): nothing to reverse-continue to; set one (`break FUNCTION`) and "
            "reverse-continue again.\n" % start
        )
        gdb.execute("frame")


class JanusReverseRefuse(gdb.Command):
    """(internal) Refuses a reverse command that needs QEMU's own reverse-continue."""

    def __init__(self):
        super().__init__("janus-reverse-refuse", gdb.COMMAND_OBSCURE)

    def invoke(self, arg, from_tty):
        raise gdb.GdbError(
            "janus: %s refused: it needs QEMU's own reverse-continue, which deadlocks QEMU 7.2. "
            "Use reverse-stepi, or a breakpoint and reverse-continue (janus' own)." % arg
        )


class JanusIcount(gdb.Command):
    """Print the replay's instruction count here (janus time travel)."""

    def __init__(self):
        super().__init__("janus-icount", gdb.COMMAND_STATUS)

    def invoke(self, arg, from_tty):
        gdb.write("icount %d\n" % _icount())


def janus_timetravel(qmp_path, stall_seconds=30.0):
    """Connects to the replaying QEMU's QMP socket and installs reverse-continue."""
    global _qmp
    _qmp = _Qmp(qmp_path)
    _stall_seconds[0] = float(stall_seconds)
    # Any reverse-continue gdb would send on its own (reverse-finish, reverse-next over a call)
    # fails instead of deadlocking QEMU.
    gdb.execute("set remote reverse-continue-packet off")
    for cmd in ("reverse-step", "reverse-next", "reverse-finish", "reverse-nexti"):
        gdb.execute("define hook-%s\njanus-reverse-refuse %s\nend" % (cmd, cmd), to_string=True)
    JanusReverseRefuse()
    JanusReverseContinue("reverse-continue")
    JanusIcount()
