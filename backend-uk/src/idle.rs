//! Adaptive halt polling (host-testable): how long the kernel loop watches the receive ring
//! before it halts, adapted the way Linux's cpuidle-haltpoll governor does it.
//!
//! Halting and being woken by an interrupt costs several VM exits and CPL0 stubs, far more than
//! the gap between a busy client's requests, so under load the loop polls a little before
//! halting. When the gaps are longer than polling could cover, polling only burns a host core
//! that other guests could use (unikernels are packed densely), so the window shrinks towards
//! zero; when a halt ends soon after it began, the window grows again.

/// The halt-polling window and its adaptation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltPoll {
    window_ns: u64,
}

impl HaltPoll {
    /// Longest window (Linux's `guest_halt_poll_ns` default).
    pub const MAX_NS: u64 = 200_000;
    /// First window after a shrink to zero (Linux's `guest_halt_poll_grow_start`).
    pub const GROW_START_NS: u64 = 50_000;

    /// Starts at the longest window (a node is started to be used).
    pub const fn new() -> Self {
        Self {
            window_ns: Self::MAX_NS,
        }
    }

    /// How long to poll before halting now.
    pub const fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Adapts the window to an idle period that lasted `idle_ns` (polling included) before work
    /// came: caught by polling, nothing changes; ended soon after the halt, the window doubles
    /// (from [`Self::GROW_START_NS`]) up to [`Self::MAX_NS`]; longer than polling could ever
    /// cover, it halves (and drops to zero below the start size).
    pub fn idle_ended(&mut self, idle_ns: u64) {
        if idle_ns <= self.window_ns {
            return;
        }
        if idle_ns <= Self::MAX_NS {
            self.window_ns = (self.window_ns * 2).clamp(Self::GROW_START_NS, Self::MAX_NS);
        } else {
            self.window_ns /= 2;
            if self.window_ns < Self::GROW_START_NS {
                self.window_ns = 0;
            }
        }
    }
}

impl Default for HaltPoll {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_keeps_the_window_long_gaps_shrink_it_to_zero() {
        let mut p = HaltPoll::new();
        for _ in 0..100 {
            p.idle_ended(30_000); // requests every 30 us: caught by polling
        }
        assert_eq!(p.window_ns(), HaltPoll::MAX_NS);
        p.idle_ended(10_000_000); // a 10 ms pause
        assert_eq!(p.window_ns(), 100_000);
        p.idle_ended(10_000_000);
        assert_eq!(p.window_ns(), 50_000);
        p.idle_ended(10_000_000);
        assert_eq!(p.window_ns(), 0, "idle: no polling at all");
        p.idle_ended(50_000_000);
        assert_eq!(p.window_ns(), 0);
    }

    #[test]
    fn short_halts_grow_the_window_back() {
        let mut p = HaltPoll::new();
        for _ in 0..4 {
            p.idle_ended(1_000_000_000);
        }
        assert_eq!(p.window_ns(), 0);
        p.idle_ended(40_000); // woken 40 us into a halt: polling would have caught it
        assert_eq!(p.window_ns(), HaltPoll::GROW_START_NS);
        p.idle_ended(120_000);
        assert_eq!(p.window_ns(), 100_000);
        p.idle_ended(150_000);
        assert_eq!(p.window_ns(), HaltPoll::MAX_NS);
        p.idle_ended(199_000);
        assert_eq!(p.window_ns(), HaltPoll::MAX_NS, "capped");
    }
}
