//! Runtime glue: kernel bring-up after the boot path, fatal-error reporting and the panic handler.

use alloc::string::String;

use crate::drivers::exit::{self, ExitCode};

/// Hooks run when the kernel dies (set by the node runtime; e.g. the trace id and state dump).
pub struct FatalHooks {
    /// Trace id of the request in flight, if any.
    pub trace_id: fn() -> Option<String>,
    /// Extra lines to print (e.g. `JANUS-STATE ...`).
    pub extra: fn() -> Option<String>,
}

static HOOKS: spinning_top::Spinlock<Option<FatalHooks>> = spinning_top::Spinlock::new(None);

/// Installs the fatal-error hooks.
pub fn set_fatal_hooks(hooks: FatalHooks) {
    *HOOKS.lock() = Some(hooks);
}

/// Prints a fatal report (message, in-flight trace id, extra lines) and exits the VM with `code`.
pub fn fatal(code: ExitCode, msg: &str) -> ! {
    // Never block on the console ring: the panic may have happened while it was locked.
    crate::drivers::serial::write_bytes(b"\nJANUS-PANIC ");
    crate::drivers::serial::write_bytes(msg.as_bytes());
    crate::drivers::serial::write_bytes(b"\n");
    let hooks = HOOKS.try_lock().and_then(|h| h.as_ref().map(|h| (h.trace_id, h.extra)));
    if let Some((trace_id, extra)) = hooks {
        if let Some(id) = trace_id() {
            crate::drivers::serial::write_bytes(b"JANUS-PANIC trace_id=");
            crate::drivers::serial::write_bytes(id.as_bytes());
            crate::drivers::serial::write_bytes(b"\n");
        }
        if let Some(text) = extra() {
            crate::drivers::serial::write_bytes(text.as_bytes());
            crate::drivers::serial::write_bytes(b"\n");
        }
    }
    let status = alloc::format!("JANUS-EXIT status={}\n", code.qemu_status());
    crate::drivers::serial::write_bytes(status.as_bytes());
    exit::exit(code)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if PANICKING.swap(true, core::sync::atomic::Ordering::SeqCst) {
        crate::drivers::serial::write_bytes(b"\nJANUS-PANIC panic while panicking\n");
        exit::exit(ExitCode::Panic);
    }
    let location = info.location().map(|l| alloc::format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
    let msg = alloc::format!("panicked at {location}: {}", info.message());
    fatal(ExitCode::Panic, &msg)
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
            $crate::node::run::<$service>(boot)
        }
    };
}
