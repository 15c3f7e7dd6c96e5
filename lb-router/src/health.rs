//! Node health, two independent judgements (Envoy's split):
//!
//! * *active* (`unhealthy`): `health.unhealthy_threshold` failed active checks in a row make a node
//!   unhealthy, `health.healthy_threshold` passing ones healthy again. Never capped: a node that does
//!   not answer its checks gets no traffic, however many of its pool are in the same state (a pool of
//!   one node can be unhealthy; traffic then spills to the other pool, see `pool::Topology::shares`).
//! * *passive* (outlier ejection): `health.consecutive_failures` failed requests in a row, or a single
//!   connect error or timeout, eject a node with exponential backoff, within the pool's cap
//!   (`health.max_ejected_percent`); a passing active check after the backoff readmits it.
//!
//! Everything here is lock-free and updated from many request tasks at once, so it is built on
//! [`crate::sync`] and model-checked with loom (`RUSTFLAGS="--cfg loom" cargo test -p lb-router --lib loom`).
//! Time is passed in (milliseconds on the router's clock), never read here.

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Ejection policy, copied out of the config so the hot path never touches the config lock.
#[derive(Clone, Copy, Debug)]
pub struct EjectionPolicy {
    pub consecutive_failures: u32,
    pub eject_base_ms: u64,
    pub eject_max_ms: u64,
}

/// How many nodes of one pool are ejected, and how many may be.
#[derive(Debug)]
pub struct PoolEjections {
    ejected: AtomicU32,
    max_ejected: AtomicU32,
}

impl PoolEjections {
    pub fn new(max_ejected: u32) -> Self {
        Self {
            ejected: AtomicU32::new(0),
            max_ejected: AtomicU32::new(max_ejected),
        }
    }

    /// Sets the cap from the pool size and the configured percentage (floor, so a cap of 50% of one
    /// node ejects nothing: the last node of a pool is never ejected by a percentage below 100).
    pub fn set_cap(&self, pool_size: usize, max_percent: u32) {
        let cap = (pool_size as u64 * u64::from(max_percent) / 100) as u32;
        self.max_ejected.store(cap, Ordering::Release);
    }

    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Acquire)
    }

    /// Reserves one ejection slot if the cap allows it.
    fn try_reserve(&self) -> bool {
        let max = self.max_ejected.load(Ordering::Acquire);
        let mut cur = self.ejected.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return false;
            }
            match self.ejected.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    fn release(&self) {
        // Saturating decrement: a release without a reservation is a bug, but must not wrap.
        let mut cur = self.ejected.load(Ordering::Acquire);
        while cur > 0 {
            match self.ejected.compare_exchange_weak(
                cur,
                cur - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// What a failure report did to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureEffect {
    /// Below the threshold, or already ejected.
    Counted,
    /// This report ejected the node until the given time.
    Ejected { until_ms: u64 },
    /// The threshold is reached but the pool's ejection cap is full: the node stays in rotation.
    CapReached,
}

/// Health state of one node.
#[derive(Debug)]
pub struct NodeHealth {
    consecutive_failures: AtomicU32,
    ejected: AtomicBool,
    ejected_until_ms: AtomicU64,
    /// Backoff multiplier: grows per ejection, shrinks by one per passing check while admitted.
    ejections: AtomicU32,
    total_ejections: AtomicU64,
    draining: AtomicBool,
    /// Failed active checks: `unhealthy` is set at the threshold, whatever the pool's ejection cap.
    unhealthy: AtomicBool,
    check_failures: AtomicU32,
    check_passes: AtomicU32,
    /// An active check of this node is under way (at most one at a time).
    probing: AtomicBool,
}

/// What an active check result did to the node's active state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveEffect {
    Unchanged,
    /// This result made the node unhealthy: it gets no new requests, in-flight ones are abandoned.
    BecameUnhealthy,
    /// This result made an unhealthy node healthy again.
    BecameHealthy,
}

impl Default for NodeHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeHealth {
    pub fn new() -> Self {
        Self {
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            total_ejections: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            check_failures: AtomicU32::new(0),
            check_passes: AtomicU32::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// May new requests be sent to this node?
    pub fn is_available(&self) -> bool {
        !self.ejected.load(Ordering::Acquire)
            && !self.unhealthy.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
    }

    /// Failed its active checks (see the module doc).
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Acquire)
    }

    /// Claims the right to run this node's next active check; `false` if one is already under way
    /// (a wedged node's check waits for its timeout while the other nodes keep being checked).
    pub fn begin_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn end_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// An active check failed: unhealthy at `threshold` failures in a row (uncapped).
    pub fn active_failed(&self, threshold: u32) -> ActiveEffect {
        self.check_passes.store(0, Ordering::Release);
        let n = self
            .check_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if n >= threshold
            && self
                .unhealthy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return ActiveEffect::BecameUnhealthy;
        }
        ActiveEffect::Unchanged
    }

    /// An active check passed: healthy again at `threshold` passes in a row.
    pub fn active_passed(&self, threshold: u32) -> ActiveEffect {
        self.check_failures.store(0, Ordering::Release);
        if !self.unhealthy.load(Ordering::Acquire) {
            return ActiveEffect::Unchanged;
        }
        let n = self
            .check_passes
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if n >= threshold
            && self
                .unhealthy
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.check_passes.store(0, Ordering::Release);
            return ActiveEffect::BecameHealthy;
        }
        ActiveEffect::Unchanged
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }

    pub fn total_ejections(&self) -> u64 {
        self.total_ejections.load(Ordering::Acquire)
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// A request (or check) succeeded.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Release);
        }
    }

    /// A request failed. Ejects the node when it reaches the threshold (or at once if `at_once`: a
    /// connect error or a timeout, the node is not to be tried again before its state is known), if
    /// the pool's cap allows. Exactly one of several concurrent reporters performs the ejection.
    pub fn record_failure(
        &self,
        policy: &EjectionPolicy,
        pool: &PoolEjections,
        now_ms: u64,
        at_once: bool,
    ) -> FailureEffect {
        let n = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if (n < policy.consecutive_failures && !at_once) || self.ejected.load(Ordering::Acquire) {
            return FailureEffect::Counted;
        }
        if !pool.try_reserve() {
            return FailureEffect::CapReached;
        }
        if self
            .ejected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another task ejected it first; give our slot back.
            pool.release();
            return FailureEffect::Counted;
        }
        let until_ms = self.next_ejection_deadline(policy, now_ms);
        self.total_ejections.fetch_add(1, Ordering::AcqRel);
        FailureEffect::Ejected { until_ms }
    }

    /// Counts one more ejection and sets (and returns) its deadline: exponential backoff from
    /// `eject_base_ms`, capped at `eject_max_ms`.
    fn next_ejection_deadline(&self, policy: &EjectionPolicy, now_ms: u64) -> u64 {
        let k = self.ejections.fetch_add(1, Ordering::AcqRel).min(20);
        let backoff = policy
            .eject_base_ms
            .saturating_mul(1u64 << k)
            .min(policy.eject_max_ms);
        let until_ms = now_ms.saturating_add(backoff);
        self.ejected_until_ms.store(until_ms, Ordering::Release);
        until_ms
    }

    /// An ejected node failed its check after the backoff: it stays ejected with the next backoff.
    pub fn extend_ejection(&self, policy: &EjectionPolicy, now_ms: u64) -> FailureEffect {
        if !self.ejected.load(Ordering::Acquire) {
            return FailureEffect::Counted;
        }
        let until_ms = self.next_ejection_deadline(policy, now_ms);
        FailureEffect::Ejected { until_ms }
    }

    /// Should the active checker probe this node now? (Admitted nodes always; ejected ones once their
    /// backoff has passed.)
    pub fn due_for_check(&self, now_ms: u64) -> bool {
        !self.ejected.load(Ordering::Acquire)
            || now_ms >= self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// An active check passed. Readmits an ejected node whose backoff is over; returns true if this
    /// call readmitted it.
    pub fn check_passed(&self, pool: &PoolEjections, now_ms: u64) -> bool {
        if self.ejected.load(Ordering::Acquire) {
            if now_ms < self.ejected_until_ms.load(Ordering::Acquire) {
                return false;
            }
            if self
                .ejected
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.consecutive_failures.store(0, Ordering::Release);
                pool.release();
                return true;
            }
            return false;
        }
        self.record_success();
        // Decay the backoff multiplier while the node stays healthy.
        let _ = self
            .ejections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| k.checked_sub(1));
        false
    }

    /// Forgets an ejection when the node leaves the topology, so the pool's count stays right.
    pub fn forget(&self, pool: &PoolEjections) {
        if self
            .ejected
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            pool.release();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const POLICY: EjectionPolicy = EjectionPolicy {
        consecutive_failures: 3,
        eject_base_ms: 100,
        eject_max_ms: 350,
    };

    #[test]
    fn ejects_after_threshold_with_backoff_and_readmits() {
        let pool = PoolEjections::new(1);
        let h = NodeHealth::new();
        assert_eq!(
            h.record_failure(&POLICY, &pool, 0, false),
            FailureEffect::Counted
        );
        assert_eq!(
            h.record_failure(&POLICY, &pool, 0, false),
            FailureEffect::Counted
        );
        assert_eq!(
            h.record_failure(&POLICY, &pool, 0, false),
            FailureEffect::Ejected { until_ms: 100 }
        );
        assert!(!h.is_available());
        assert!(!h.due_for_check(50));
        assert!(!h.check_passed(&pool, 50));
        assert!(h.check_passed(&pool, 100));
        assert!(h.is_available());
        assert_eq!(pool.ejected(), 0);
        for _ in 0..3 {
            h.record_failure(&POLICY, &pool, 1000, false);
        }
        // Second ejection doubles the backoff.
        assert_eq!(h.ejected_until_ms(), 1200);
        assert!(h.check_passed(&pool, 1200));
        for _ in 0..3 {
            h.record_failure(&POLICY, &pool, 2000, false);
        }
        // Third: 400 capped at 350.
        assert_eq!(h.ejected_until_ms(), 2350);
    }

    #[test]
    fn cap_keeps_nodes_in_rotation() {
        let pool = PoolEjections::new(0);
        pool.set_cap(3, 50);
        let (a, b) = (NodeHealth::new(), NodeHealth::new());
        for _ in 0..3 {
            a.record_failure(&POLICY, &pool, 0, false);
        }
        let mut last = FailureEffect::Counted;
        for _ in 0..3 {
            last = b.record_failure(&POLICY, &pool, 0, false);
        }
        assert!(a.is_ejected());
        assert_eq!(last, FailureEffect::CapReached);
        assert!(b.is_available());
        assert_eq!(pool.ejected(), 1);
    }

    /// Active checks are not capped: every node of a pool (even a pool of one) can be unhealthy,
    /// and comes back after `healthy_threshold` passes in a row.
    #[test]
    fn active_health_is_uncapped_and_has_thresholds() {
        let nodes = [NodeHealth::new(), NodeHealth::new(), NodeHealth::new()];
        for n in &nodes {
            assert_eq!(n.active_failed(2), ActiveEffect::Unchanged);
            assert!(n.is_available());
            assert_eq!(n.active_failed(2), ActiveEffect::BecameUnhealthy);
            assert_eq!(n.active_failed(2), ActiveEffect::Unchanged);
            assert!(!n.is_available() && n.is_unhealthy());
        }
        let n = &nodes[0];
        assert_eq!(n.active_passed(2), ActiveEffect::Unchanged);
        // A failure in between starts the count of passes again.
        assert_eq!(n.active_failed(2), ActiveEffect::Unchanged);
        assert_eq!(n.active_passed(2), ActiveEffect::Unchanged);
        assert_eq!(n.active_passed(2), ActiveEffect::BecameHealthy);
        assert!(n.is_available());
        assert_eq!(n.active_passed(2), ActiveEffect::Unchanged);
    }

    /// A connect error or timeout ejects at once, still within the pool's cap.
    #[test]
    fn at_once_failures_eject_within_the_cap() {
        let pool = PoolEjections::new(0);
        pool.set_cap(2, 50);
        let (a, b) = (NodeHealth::new(), NodeHealth::new());
        assert!(matches!(
            a.record_failure(&POLICY, &pool, 0, true),
            FailureEffect::Ejected { .. }
        ));
        assert_eq!(
            b.record_failure(&POLICY, &pool, 0, true),
            FailureEffect::CapReached
        );
        assert!(b.is_available());
    }

    #[test]
    fn one_probe_at_a_time() {
        let h = NodeHealth::new();
        assert!(h.begin_probe());
        assert!(!h.begin_probe());
        h.end_probe();
        assert!(h.begin_probe());
    }

    #[test]
    fn success_resets_the_count() {
        let pool = PoolEjections::new(1);
        let h = NodeHealth::new();
        h.record_failure(&POLICY, &pool, 0, false);
        h.record_failure(&POLICY, &pool, 0, false);
        h.record_success();
        h.record_failure(&POLICY, &pool, 0, false);
        assert!(h.is_available());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    const POLICY: EjectionPolicy = EjectionPolicy {
        consecutive_failures: 2,
        eject_base_ms: 100,
        eject_max_ms: 1000,
    };

    /// Two tasks report the failures that cross the threshold at once: exactly one ejection, the pool
    /// count is exactly one, no failure report is lost.
    #[test]
    fn loom_concurrent_failures_eject_once() {
        loom::model(|| {
            let pool = Arc::new(PoolEjections::new(5));
            let h = Arc::new(NodeHealth::new());
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (pool, h) = (pool.clone(), h.clone());
                    loom::thread::spawn(move || h.record_failure(&POLICY, &pool, 0, false))
                })
                .collect();
            let effects: Vec<_> = threads
                .into_iter()
                .map(|t| t.join().expect("no panic"))
                .collect();
            let ejections = effects
                .iter()
                .filter(|e| matches!(e, FailureEffect::Ejected { .. }))
                .count();
            assert_eq!(ejections, 1);
            assert_eq!(pool.ejected(), 1);
            assert_eq!(h.consecutive_failures(), 2);
            assert_eq!(h.total_ejections(), 1);
        });
    }

    /// Two nodes trip at once with room for one ejection: the cap holds.
    #[test]
    fn loom_cap_holds_under_races() {
        loom::model(|| {
            let pool = Arc::new(PoolEjections::new(1));
            let a = Arc::new(NodeHealth::new());
            let b = Arc::new(NodeHealth::new());
            a.record_failure(&POLICY, &pool, 0, false);
            b.record_failure(&POLICY, &pool, 0, false);
            let ta = {
                let (pool, a) = (pool.clone(), a.clone());
                loom::thread::spawn(move || a.record_failure(&POLICY, &pool, 0, false))
            };
            let tb = {
                let (pool, b) = (pool.clone(), b.clone());
                loom::thread::spawn(move || b.record_failure(&POLICY, &pool, 0, false))
            };
            let _ = ta.join();
            let _ = tb.join();
            assert_eq!(pool.ejected(), 1);
            assert!(a.is_ejected() ^ b.is_ejected());
        });
    }

    /// Two check results that cross the unhealthy threshold at once: exactly one reports the change,
    /// and the node ends unavailable whatever the pool's cap (here 0).
    #[test]
    fn loom_active_failures_mark_unhealthy_once() {
        loom::model(|| {
            let h = Arc::new(NodeHealth::new());
            h.active_failed(3);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let h = h.clone();
                    loom::thread::spawn(move || h.active_failed(3))
                })
                .collect();
            let changed = threads
                .into_iter()
                .map(|t| t.join().expect("no panic"))
                .filter(|e| *e == ActiveEffect::BecameUnhealthy)
                .count();
            assert_eq!(changed, 1);
            assert!(!h.is_available());
        });
    }

    /// A pass racing a failure on a node at the threshold of both: the node ends in one state, and
    /// the effects reported agree with it.
    #[test]
    fn loom_active_pass_races_failure() {
        loom::model(|| {
            let h = Arc::new(NodeHealth::new());
            h.active_failed(1);
            let tp = {
                let h = h.clone();
                loom::thread::spawn(move || h.active_passed(1))
            };
            let tf = {
                let h = h.clone();
                loom::thread::spawn(move || h.active_failed(1))
            };
            let p = tp.join().expect("no panic");
            let f = tf.join().expect("no panic");
            match (p, f) {
                (ActiveEffect::BecameHealthy, ActiveEffect::BecameUnhealthy) => {
                    assert!(h.is_unhealthy());
                }
                (ActiveEffect::BecameHealthy, ActiveEffect::Unchanged) => {
                    assert!(!h.is_unhealthy());
                }
                (ActiveEffect::Unchanged, ActiveEffect::Unchanged) => assert!(h.is_unhealthy()),
                other => panic!("impossible pair {other:?}"),
            }
        });
    }

    /// A readmission racing a new ejection of another node leaves a consistent count.
    #[test]
    fn loom_readmit_races_eject() {
        loom::model(|| {
            let pool = Arc::new(PoolEjections::new(1));
            let a = Arc::new(NodeHealth::new());
            let b = Arc::new(NodeHealth::new());
            a.record_failure(&POLICY, &pool, 0, false);
            a.record_failure(&POLICY, &pool, 0, false);
            b.record_failure(&POLICY, &pool, 0, false);
            let ta = {
                let (pool, a) = (pool.clone(), a.clone());
                loom::thread::spawn(move || a.check_passed(&pool, 10_000))
            };
            let tb = {
                let (pool, b) = (pool.clone(), b.clone());
                loom::thread::spawn(move || b.record_failure(&POLICY, &pool, 0, false))
            };
            assert!(ta.join().expect("no panic"));
            let _ = tb.join();
            let expected = u32::from(a.is_ejected()) + u32::from(b.is_ejected());
            assert_eq!(pool.ejected(), expected);
            assert!(pool.ejected() <= 1);
        });
    }
}
