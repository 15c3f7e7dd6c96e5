//! Node metrics: the shared implementation of the node protocol's `/metrics` (same names, buckets and
//! layout as backend-unix, by construction), plus the kernel's own counters (`janus_uk_*`).

use alloc::string::String;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

pub use runtime_abi::node::{Metrics, StoreOp};

/// Counters of the kernel loop, bumped by [`crate::rt`] and read by `/metrics`.
#[derive(Debug)]
pub struct KernelCounters {
    /// Turns of the kernel loop.
    pub loops: AtomicU64,
    /// Halts until an interrupt (each several VM exits).
    pub halts: AtomicU64,
    /// Frames found by halt polling, each a halt and an interrupt saved.
    pub halt_poll_hits: AtomicU64,
    /// The halt-polling window now (see [`crate::idle`]).
    pub halt_poll_window_ns: AtomicU64,
    /// Tasks alive (the accept loops, one per connection, upstream calls).
    pub tasks: AtomicU64,
    /// Requests whose client closed or reset the connection before the answer: their handler
    /// was dropped.
    pub abandoned: AtomicU64,
    /// Connections aborted because the client took none of an answer for the write timeout.
    pub write_timeouts: AtomicU64,
}

/// The kernel loop's counters.
pub static KERNEL: KernelCounters = KernelCounters {
    loops: AtomicU64::new(0),
    halts: AtomicU64::new(0),
    halt_poll_hits: AtomicU64::new(0),
    halt_poll_window_ns: AtomicU64::new(crate::idle::HaltPoll::new().window_ns()),
    tasks: AtomicU64::new(0),
    abandoned: AtomicU64::new(0),
    write_timeouts: AtomicU64::new(0),
};

/// The kernel's counters as `/metrics` text (the network stack's figures are zero in host tests,
/// which have no network stack).
pub fn kernel_text() -> String {
    #[cfg(not(test))]
    let (frames, sockets) = (crate::net::frame_counters(), crate::net::tcp_sockets());
    #[cfg(test)]
    let (frames, sockets) = ((0, 0), 0);
    KERNEL.render(frames, sockets)
}

impl KernelCounters {
    /// Adds one to `c` (one CPU: a relaxed load and store would do; this is as cheap here).
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus text format, with `frames` (received, sent) and the number of
    /// TCP sockets open.
    pub fn render(&self, frames: (u64, u64), tcp_sockets: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            );
        };
        counter(
            "janus_uk_loop_turns_total",
            "Turns of the kernel loop.",
            self.loops.load(Ordering::Relaxed),
        );
        counter(
            "janus_uk_halts_total",
            "Halts until an interrupt.",
            self.halts.load(Ordering::Relaxed),
        );
        counter(
            "janus_uk_halt_poll_hits_total",
            "Frames picked up by polling the receive ring instead of halting.",
            self.halt_poll_hits.load(Ordering::Relaxed),
        );
        counter(
            "janus_uk_frames_received_total",
            "Ethernet frames received.",
            frames.0,
        );
        counter(
            "janus_uk_frames_sent_total",
            "Ethernet frames sent.",
            frames.1,
        );
        counter(
            "janus_uk_requests_abandoned_total",
            "Requests dropped because their client closed the connection before the answer.",
            self.abandoned.load(Ordering::Relaxed),
        );
        counter(
            "janus_uk_write_timeouts_total",
            "Connections aborted because the client stopped taking the answer.",
            self.write_timeouts.load(Ordering::Relaxed),
        );
        let _ = write!(
            out,
            "# HELP janus_uk_tasks Tasks alive (accept loops, connections, upstream calls).\n\
             # TYPE janus_uk_tasks gauge\njanus_uk_tasks {}\n\
             # HELP janus_uk_tcp_sockets TCP sockets open (listening, connected, closing).\n\
             # TYPE janus_uk_tcp_sockets gauge\njanus_uk_tcp_sockets {tcp_sockets}\n\
             # HELP janus_uk_halt_poll_window_seconds How long the kernel polls before halting.\n\
             # TYPE janus_uk_halt_poll_window_seconds gauge\n\
             janus_uk_halt_poll_window_seconds ",
            self.tasks.load(Ordering::Relaxed),
        );
        runtime_abi::node::write_decimal(
            &mut out,
            self.halt_poll_window_ns.load(Ordering::Relaxed),
            9,
        );
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_render_as_prometheus_text() {
        let k = KernelCounters {
            loops: AtomicU64::new(0),
            halts: AtomicU64::new(0),
            halt_poll_hits: AtomicU64::new(0),
            halt_poll_window_ns: AtomicU64::new(50_000),
            tasks: AtomicU64::new(3),
            abandoned: AtomicU64::new(0),
            write_timeouts: AtomicU64::new(0),
        };
        KernelCounters::bump(&k.loops);
        KernelCounters::bump(&k.loops);
        KernelCounters::bump(&k.halts);
        let text = k.render((5, 7), 24);
        assert!(text.contains("\njanus_uk_loop_turns_total 2\n"), "{text}");
        assert!(text.contains("\njanus_uk_halts_total 1\n"), "{text}");
        assert!(
            text.contains("\njanus_uk_halt_poll_hits_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\njanus_uk_frames_received_total 5\n"),
            "{text}"
        );
        assert!(text.contains("\njanus_uk_frames_sent_total 7\n"), "{text}");
        assert!(text.contains("\njanus_uk_tcp_sockets 24\n"), "{text}");
        assert!(
            text.contains("\njanus_uk_halt_poll_window_seconds 0.00005\n"),
            "{text}"
        );
        assert!(text.contains("\njanus_uk_tasks 3\n"), "{text}");
        assert!(
            text.contains("\njanus_uk_requests_abandoned_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\njanus_uk_write_timeouts_total 0\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 10);
    }
}
