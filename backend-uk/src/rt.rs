//! Runtime glue: kernel bring-up after the boot path, fatal-error reporting and the panic handler.

use alloc::string::String;

use crate::drivers::exit::{self, ExitCode};

/// Where a fatal hook writes its lines (the serial port, without allocating).
pub type ConsoleSink<'a> = &'a mut dyn FnMut(&[u8]);

/// Hooks run when the kernel dies (set by the node runtime; e.g. the trace id and state dump).
pub struct FatalHooks {
    /// Trace id of the request in flight, if any.
    pub trace_id: fn() -> Option<String>,
    /// Writes extra lines (e.g. the `JANUS-STATE` dump) through the given writer.
    pub extra: fn(ConsoleSink<'_>),
}

static HOOKS: spinning_top::Spinlock<Option<FatalHooks>> = spinning_top::Spinlock::new(None);

/// Installs the fatal-error hooks.
pub fn set_fatal_hooks(hooks: FatalHooks) {
    *HOOKS.lock() = Some(hooks);
}

/// Writes formatted text straight to the serial port (no allocation, no lock).
struct SerialWriter;

impl core::fmt::Write for SerialWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::drivers::serial::write_bytes(s.as_bytes());
        Ok(())
    }
}

/// A fixed buffer that keeps the first bytes written to it (to classify panic messages).
#[cfg(all(not(test), feature = "kernel"))]
struct Prefix {
    buf: [u8; 64],
    len: usize,
}

#[cfg(all(not(test), feature = "kernel"))]
impl core::fmt::Write for Prefix {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints a fatal report (message, in-flight trace id, extra lines) and exits the VM with `code`.
pub fn fatal(code: ExitCode, msg: &str) -> ! {
    fatal_fmt(code, format_args!("{msg}"))
}

/// [`fatal`] with a formatted message. The message is written without allocating; the hooks
/// (trace id, state dump) run only when the heap is not the problem.
pub fn fatal_fmt(code: ExitCode, msg: core::fmt::Arguments<'_>) -> ! {
    use core::fmt::Write as _;
    // Never block on the console ring: the panic may have happened while it was locked.
    let _ = write!(SerialWriter, "\nJANUS-PANIC {msg}\n");
    if code != ExitCode::OutOfMemory {
        let hooks = HOOKS
            .try_lock()
            .and_then(|h| h.as_ref().map(|h| (h.trace_id, h.extra)));
        if let Some((trace_id, extra)) = hooks {
            if let Some(id) = trace_id() {
                let _ = writeln!(SerialWriter, "JANUS-PANIC trace_id={id}");
            }
            extra(&mut crate::drivers::serial::write_bytes);
        }
    }
    let _ = writeln!(SerialWriter, "JANUS-EXIT status={}", code.qemu_status());
    exit::exit(code)
}

// The panic handler is a lang item: it is only defined when the crate is linked into a kernel (feature
// `kernel`, enabled by the generated wrapper). A workspace build unifies dependency features (serde
// with std, ...), and std brings its own `panic_impl`.
#[cfg(all(not(test), feature = "kernel"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if PANICKING.swap(true, core::sync::atomic::Ordering::SeqCst) {
        crate::drivers::serial::write_bytes(b"\nJANUS-PANIC panic while panicking\n");
        exit::exit(ExitCode::Panic);
    }
    let mut prefix = Prefix {
        buf: [0; 64],
        len: 0,
    };
    let _ = write!(prefix, "{}", info.message());
    let code = if prefix.buf[..prefix.len].starts_with(b"memory allocation of") {
        ExitCode::OutOfMemory
    } else {
        ExitCode::Panic
    };
    match info.location() {
        Some(l) => fatal_fmt(
            code,
            format_args!(
                "panicked at {}:{}:{}: {}",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            ),
        ),
        None => fatal_fmt(code, format_args!("panicked: {}", info.message())),
    }
}

/// Defines the image entry point for service type `$service` (used by the generated wrapper crate):
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// backend_uk::entry!(hello::Hello);
/// ```
#[macro_export]
macro_rules! entry {
    ($service:ty) => {
        #[unsafe(no_mangle)]
        fn __janus_uk_main(boot: $crate::boot::BootInfo) -> ! {
            $crate::kernel::run::<$service>(boot)
        }
    };
}

/// What [`bring_up`] hands to the node runtime.
#[cfg(not(test))]
#[derive(Debug)]
pub struct KernelEnv {
    /// The parsed command line.
    pub config: crate::cmdline::BootConfig,
    /// The NIC's PIC line, if interrupts are available.
    pub nic_irq: Option<u8>,
    /// One line describing the machine (printed with the listening line).
    pub summary: alloc::string::String,
    /// When each bring-up step ended (the node runtime adds its own).
    pub marks: BootMarks,
}

static TIMERS: spinning_top::Spinlock<Option<alloc::sync::Arc<crate::executor::Timers>>> =
    spinning_top::Spinlock::new(None);

/// The running executor's timers.
pub fn timers() -> alloc::sync::Arc<crate::executor::Timers> {
    TIMERS.lock().clone().unwrap_or_default()
}

/// Microseconds since the PVH entry point.
#[cfg(not(test))]
pub fn since_entry_us() -> u64 {
    crate::clock::monotonic_ns() / 1000
}

/// TSC stamps of the bring-up steps (printed at debug level: where the boot time goes).
#[cfg(not(test))]
#[derive(Debug)]
pub struct BootMarks {
    entry: u64,
    marks: [(&'static str, u64); 16],
    len: usize,
}

#[cfg(not(test))]
impl BootMarks {
    /// Starts with two steps: `cpl0` (boot.s, up to the first Rust instruction, at `rust_tsc`)
    /// and `early` (the Rust start: page tables, IDT, serial, memory map, heap).
    fn start(rust_tsc: u64) -> Self {
        let mut m = BootMarks {
            entry: crate::arch::start::entry_tsc(),
            marks: [("", 0); 16],
            len: 0,
        };
        m.marks[0] = ("cpl0", rust_tsc);
        m.len = 1;
        m.mark("early");
        m
    }

    /// Records the end of step `what`.
    pub fn mark(&mut self, what: &'static str) {
        if self.len < self.marks.len() {
            self.marks[self.len] = (what, crate::arch::cpu::rdtsc());
            self.len += 1;
        }
    }
}

#[cfg(not(test))]
impl BootMarks {
    /// `boot steps (us): <step> <duration> ...`, from the PVH entry point.
    pub fn text(&self) -> alloc::string::String {
        let tsc_hz = crate::clock::CLOCK.tsc_hz().max(1);
        let mut text = alloc::string::String::from("boot steps (us):");
        let mut prev = self.entry;
        for &(what, tsc) in &self.marks[..self.len] {
            let us = tsc.saturating_sub(prev) * 1_000_000 / tsc_hz;
            text.push_str(&alloc::format!(" {what} {us}"));
            prev = tsc;
        }
        text
    }
}

/// Brings the machine up: command line, PIC, clocks, entropy, logging, NIC and network.
#[cfg(not(test))]
pub fn bring_up(boot: &crate::boot::BootInfo) -> KernelEnv {
    use crate::drivers::{pic, pit, rtc};
    use crate::{clock, cmdline, entropy, net};

    let mut marks = BootMarks::start(boot.boot_tsc);
    let config = match cmdline::parse(&boot.cmdline) {
        Ok(c) => c,
        Err(e) => fatal(ExitCode::BootFailure, &alloc::format!("{e}")),
    };
    let (mut tsc_hz, mut tsc_source) = match crate::drivers::kvmclock::tsc_hz() {
        Some(hz) => (hz, "kvmclock"),
        None => (pit::calibrate_tsc(10), "pit"),
    };
    if tsc_hz < 10_000_000 {
        // No usable PIT: CPUID leaf 0x16 (base MHz) when present, else assume 2 GHz.
        let leaf16 = if crate::arch::cpu::cpuid(0, 0).eax >= 0x16 {
            u64::from(crate::arch::cpu::cpuid(0x16, 0).eax)
        } else {
            0
        };
        tsc_hz = if leaf16 > 0 {
            leaf16 * 1_000_000
        } else {
            2_000_000_000
        };
        tsc_source = "assumed";
    }
    marks.mark("tsc");
    // kvmclock's wall clock when present (no CMOS port exits), else the RTC; a kvmclock time
    // before 2020 is not believed.
    let (wall_ns, wall_source) = match crate::drivers::kvmclock::wall_ns() {
        Some(ns) if ns > 1_577_836_800_000_000_000 => (Some(ns), "kvmclock"),
        _ => (rtc::unix_seconds().map(|s| s * 1_000_000_000), "rtc"),
    };
    marks.mark("wall");
    let entry_tsc = crate::arch::start::entry_tsc();
    let elapsed_ns = (u128::from(crate::arch::cpu::rdtsc().saturating_sub(entry_tsc))
        * 1_000_000_000
        / u128::from(tsc_hz.max(1))) as u64;
    let wall_at_entry = wall_ns.map_or(0, |ns| ns.saturating_sub(elapsed_ns));
    clock::CLOCK.calibrate(tsc_hz, entry_tsc, wall_at_entry);
    let (material, entropy_source) = entropy::gather_seed(&config.seed, clock::wall_ns());
    entropy::init(&material);
    crate::log::init(&config.log_level);
    marks.mark("entropy");
    let Some(nic) = crate::drivers::virtio::find_nic(&config.mmio_devices) else {
        fatal(
            ExitCode::BootFailure,
            "no virtio-net device found (virtio-mmio or PCI)",
        )
    };
    marks.mark("find-nic");
    let location = nic.location.clone();
    let irq = nic.irq;
    let level_triggered = nic.level_triggered;
    let device = match crate::drivers::virtio::NetDevice::new(nic.transport) {
        Ok(d) => d,
        Err(e) => fatal(
            ExitCode::BootFailure,
            &alloc::format!("virtio-net init at {location}: {e}"),
        ),
    };
    marks.mark("nic-init");
    net::init(
        device,
        config.ip,
        entropy::u64(),
        clock::monotonic_ns() / 1_000_000,
    );
    marks.mark("net");
    // The PIT (line 0) and the NIC's line are the only interrupts; the PICs are programmed once,
    // with masks only where a line must stay masked (see `pic::init`).
    if let Some(irq) = irq {
        if level_triggered {
            crate::arch::cpu::set_irq_level_triggered(irq);
        }
        net::enable_interrupts();
    }
    pic::init(
        1 | irq.filter(|i| *i < 16).map_or(0, |i| 1u16 << i),
        level_triggered,
    );
    crate::drivers::lapic::route_pic();
    marks.mark("pic");
    let summary = alloc::format!(
        "heap {} KiB, tsc {} MHz ({tsc_source}), wall clock {}, entropy {entropy_source}, virtio-net {location} irq {}, ip {}",
        crate::mm::heap::size() >> 10,
        tsc_hz / 1_000_000,
        if wall_ns.is_some() {
            wall_source
        } else {
            "unavailable"
        },
        irq.map_or(
            alloc::string::String::from("none (polling)"),
            |i| alloc::format!("{i}")
        ),
        match config.ip {
            cmdline::IpConfig::Dhcp => alloc::string::String::from("dhcp"),
            cmdline::IpConfig::Static { addr, prefix, .. } => alloc::format!("{addr}/{prefix}"),
        }
    );
    KernelEnv {
        config,
        nic_irq: irq,
        summary,
        marks,
    }
}

/// Spins up to `ns` until a frame is in the receive ring; whether one came.
#[cfg(not(test))]
fn poll_for_frame(ns: u64) -> bool {
    let until = crate::clock::monotonic_ns().saturating_add(ns);
    loop {
        if crate::net::rx_pending() {
            return true;
        }
        if crate::clock::monotonic_ns() >= until {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// The kernel loop: move packets, fire timers, run ready tasks; when nothing is left to do,
/// arm the PIT for the next deadline and halt until an interrupt.
#[cfg(not(test))]
pub fn run_loop(mut executor: crate::executor::Executor, nic_irq: Option<u8>) -> ! {
    use crate::drivers::{pic, pit};
    use crate::metrics::{KERNEL, KernelCounters};
    use crate::net;

    *TIMERS.lock() = Some(executor.timers());
    // Listening: tell the network where the address now is.
    net::announce();
    let now_ms = || crate::clock::monotonic_ns() / 1_000_000;
    let mut armed_until = 0u64;
    // Starts at the window `KERNEL.halt_poll_window_ns` starts at.
    let mut halt_poll = crate::idle::HaltPoll::new();
    loop {
        KernelCounters::bump(&KERNEL.loops);
        let irqs = crate::arch::cpu::take_pending_irqs();
        if let Some(irq) = nic_irq
            && irqs & (1 << irq) != 0
        {
            net::ack_interrupt();
            if crate::arch::cpu::irq_is_level(irq) {
                pic::unmask(irq);
            }
        }
        let now = now_ms();
        net::poll_ingress(now);
        executor.fire_timers(now);
        let ran = executor.run_ready();
        KERNEL.tasks.store(
            executor.live_tasks() as u64,
            core::sync::atomic::Ordering::Relaxed,
        );
        net::poll_egress(now_ms());
        if ran > 0 {
            continue;
        }
        let now = now_ms();
        let mut wait_ms: u64 = 50;
        if let Some(d) = net::poll_delay_ms(now) {
            wait_ms = wait_ms.min(d);
        }
        if let Some(t) = executor.next_deadline() {
            wait_ms = wait_ms.min(t.saturating_sub(now));
        }
        if nic_irq.is_none() {
            wait_ms = wait_ms.min(1);
        }
        if wait_ms == 0 || executor.has_ready() || net::rx_pending() {
            continue;
        }
        // Halt polling (see `idle`): for a short while after the last work, watch the receive
        // ring (a memory read, no exit) before halting; the window adapts to the load.
        let idle_from = crate::clock::monotonic_ns();
        // A frame caught by polling leaves the window as it is.
        if poll_for_frame(halt_poll.window_ns().min(wait_ms * 1_000_000)) {
            KernelCounters::bump(&KERNEL.halt_poll_hits);
            continue;
        }
        // Re-arm the PIT only when the armed one-shot is past or too late (3 port writes, each a
        // VM exit).
        let wake_at = now + wait_ms;
        if armed_until <= now || armed_until > wake_at {
            pit::oneshot_us(wait_ms * 1000);
            armed_until = wake_at;
        }
        // The NIC interrupts only when armed: arm it, then look at the ring once more (a frame
        // that came before the arming raised nothing).
        net::arm_interrupts();
        if net::rx_pending() {
            continue;
        }
        KernelCounters::bump(&KERNEL.halts);
        crate::arch::cpu::halt_until_interrupt();
        halt_poll.idle_ended(crate::clock::monotonic_ns().saturating_sub(idle_from));
        KERNEL
            .halt_poll_window_ns
            .store(halt_poll.window_ns(), core::sync::atomic::Ordering::Relaxed);
    }
}
