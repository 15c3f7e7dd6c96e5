# gdb support for Janus unikernels, loaded by `janus debug` (and `janus faults timetravel`).
#
# The kernel runs its Rust code at CPL3; interrupts and the privileged-instruction gate (`hlt`,
# `wrmsr` from CPL3 trap into the #GP stub) run in small CPL0 assembly stubs that have no unwind
# tables. An idle node is almost always stopped inside one of them (the `hlt` of janus_exc_13).
# This unwinder walks from such a stub back into the interrupted Rust code: it finds the
# interrupt frame (rip, cs, rflags, rsp, ss) the CPU pushed, recognised by a CPL3 code selector
# and an rip inside the kernel's text, and hands gdb the interrupted registers. From there gdb's
# DWARF unwinder (the ELF keeps .eh_frame for gdb) does the rest.
import gdb
from gdb.unwinder import Unwinder, register_unwinder

USER_CS = 0x23  # GDT user code selector, RPL 3
SCAN_WORDS = 16  # the stubs push at most a few registers, an error code and a vector


class _FrameId:
    def __init__(self, sp, pc):
        self.sp = sp
        self.pc = pc


def _text_range():
    out = gdb.execute("maint info sections .text", to_string=True)
    for word in out.split():
        if "->" in word:
            lo, hi = word.split("->")
            try:
                return (int(lo, 16), int(hi, 16))
            except ValueError:
                pass
    return None


class JanusTrapUnwinder(Unwinder):
    def __init__(self):
        super().__init__("janus-cpl0-stubs")
        self.text = None

    def __call__(self, pending_frame):
        try:
            cs = int(pending_frame.read_register("cs"))
        except (gdb.error, ValueError):
            return None
        if cs & 3 != 0:
            return None  # CPL3: ordinary Rust code, DWARF unwinds it
        if self.text is None:
            self.text = _text_range() or (0x100000, 0x200000)
        lo, hi = self.text
        rsp = int(pending_frame.read_register("rsp"))
        inferior = gdb.selected_inferior()
        u64 = gdb.lookup_type("unsigned long long")
        u32 = gdb.lookup_type("unsigned int")
        for i in range(SCAN_WORDS):
            at = rsp + 8 * i
            try:
                words = inferior.read_memory(at, 40).tobytes()
            except gdb.MemoryError:
                return None
            rip, cs_saved, rflags, sp, ss = (
                int.from_bytes(words[k : k + 8], "little") for k in range(0, 40, 8)
            )
            if cs_saved == USER_CS and lo <= rip < hi and ss & 3 == 3:
                info = pending_frame.create_unwind_info(
                    _FrameId(
                        pending_frame.read_register("rsp"),
                        pending_frame.read_register("rip"),
                    )
                )
                info.add_saved_register("rip", gdb.Value(rip).cast(u64))
                info.add_saved_register("rsp", gdb.Value(sp).cast(u64))
                info.add_saved_register("cs", gdb.Value(cs_saved).cast(u32))
                info.add_saved_register("eflags", gdb.Value(rflags).cast(u32))
                return info
        return None


register_unwinder(None, JanusTrapUnwinder(), replace=True)


class JanusStore(gdb.Command):
    """Print the node's store (runtime-abi MemStore: map, seq, op log) without stopping it for long."""

    def __init__(self):
        super().__init__("janus-store", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        expr = "('backend_uk::panic_state::PANIC_STORE').data.value"
        try:
            store = gdb.parse_and_eval(expr + ".Some.__0.ptr.pointer.data.inner.data.value")
        except gdb.error as e:
            raise gdb.GdbError("janus-store: the service has no store (%s)" % e)
        gdb.write("%s\n" % store)


JanusStore()


def janus_attach(spec):
    """Connects to QEMU's gdbstub; quits with status 2 and a plain message when it cannot."""
    try:
        gdb.execute("target remote " + spec)
    except gdb.error as e:
        gdb.write("janus: cannot attach to the gdbstub %s: %s\n" % (spec, e), gdb.STDERR)
        gdb.execute("quit 2")


_NESTED_KVM_NOTE = (
    "this node runs under the host's nested KVM (kvm_pvm), where a software breakpoint reaches "
    "the guest as #BP and stops the node, hardware breakpoints never fire and single steps do not "
    "stop in the kernel's CPL3 code. Run the node with accel = \"tcg\" to use breakpoints and steps."
)


class JanusRefuse(gdb.Command):
    """(internal) Refuses a command that cannot work under this host's nested KVM."""

    def __init__(self):
        super().__init__("janus-refuse", gdb.COMMAND_OBSCURE)

    def invoke(self, arg, from_tty):
        raise gdb.GdbError("janus: %s refused: %s" % (arg, _NESTED_KVM_NOTE))


JanusRefuse()


def janus_guard_nested_kvm():
    """Under this host's nested KVM: keep gdb from planting int3 (it would kill the node) and refuse
    the commands that rely on breakpoints or single steps."""
    text = _text_range()
    if text:
        gdb.execute("set mem inaccessible-by-default off")
        # Read-only to gdb: it falls back to hardware breakpoints, which do no harm (they never fire).
        gdb.execute("mem 0x%x 0x%x ro" % text, to_string=True)
    for cmd in ("step", "next", "finish", "until", "advance", "reverse-step", "reverse-next"):
        gdb.execute("define hook-%s\njanus-refuse %s\nend" % (cmd, cmd), to_string=True)

    def on_breakpoint(bp):
        gdb.write("janus: breakpoint %d will not stop the node: %s\n" % (bp.number, _NESTED_KVM_NOTE))

    gdb.events.breakpoint_created.connect(on_breakpoint)
