//! The retry budget: a token bucket that every request deposits a fraction of a token into and every
//! retry withdraws one token from, refilled by a floor per second. It bounds retries under a storm of
//! stable faults. Lock-free, loom-checked.

use crate::sync::{AtomicU64, Ordering};

/// One token = this many milli-tokens (integer arithmetic keeps the atomics exact).
const MILLI: u64 = 1000;

#[derive(Debug)]
pub struct RetryBudget {
    balance_milli: AtomicU64,
    deposit_milli: AtomicU64,
    max_milli: AtomicU64,
    refill_milli: AtomicU64,
    denied: AtomicU64,
}

impl RetryBudget {
    /// `ratio`: retries per request; `min_per_sec`: floor added each second; `max_tokens`: cap.
    pub fn new(ratio: f64, min_per_sec: u32, max_tokens: u32) -> Self {
        let b = Self {
            balance_milli: AtomicU64::new(0),
            deposit_milli: AtomicU64::new(0),
            max_milli: AtomicU64::new(0),
            refill_milli: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        };
        b.configure(ratio, min_per_sec, max_tokens);
        b.balance_milli
            .store(u64::from(min_per_sec) * MILLI, Ordering::Release);
        b
    }

    pub fn configure(&self, ratio: f64, min_per_sec: u32, max_tokens: u32) {
        let deposit = (ratio.clamp(0.0, 10.0) * MILLI as f64) as u64;
        self.deposit_milli.store(deposit, Ordering::Release);
        self.max_milli
            .store(u64::from(max_tokens) * MILLI, Ordering::Release);
        self.refill_milli
            .store(u64::from(min_per_sec) * MILLI, Ordering::Release);
    }

    fn add(&self, amount: u64) {
        let max = self.max_milli.load(Ordering::Acquire);
        // A full budget (the usual state) is left alone: no write, so the cache line is not bounced
        // between workers on every request.
        if self.balance_milli.load(Ordering::Acquire) == max {
            return;
        }
        let _ = self
            .balance_milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_add(amount).min(max))
            });
    }

    /// Called once per ordinary request.
    pub fn deposit(&self) {
        let d = self.deposit_milli.load(Ordering::Acquire);
        if d > 0 {
            self.add(d);
        }
    }

    /// Called once per second by the router's ticker.
    pub fn refill(&self) {
        self.add(self.refill_milli.load(Ordering::Acquire));
    }

    /// Takes one token if there is one. Concurrent callers never overdraw.
    pub fn try_withdraw(&self) -> bool {
        let ok = self
            .balance_milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_sub(MILLI)
            })
            .is_ok();
        if !ok {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn tokens(&self) -> f64 {
        self.balance_milli.load(Ordering::Acquire) as f64 / MILLI as f64
    }

    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_retries() {
        let b = RetryBudget::new(0.1, 2, 5);
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        for _ in 0..10 {
            b.refill();
        }
        assert_eq!(b.tokens(), 5.0);
        assert_eq!(b.denied(), 2);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// One token, two concurrent retries: exactly one is allowed.
    #[test]
    fn loom_no_overdraw() {
        loom::model(|| {
            let b = Arc::new(RetryBudget::new(0.0, 1, 10));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    loom::thread::spawn(move || b.try_withdraw())
                })
                .collect();
            let granted = ts
                .into_iter()
                .filter(|_| true)
                .map(|t| t.join().expect("no panic"))
                .filter(|g| *g)
                .count();
            assert_eq!(granted, 1);
            assert_eq!(b.tokens(), 0.0);
        });
    }

    /// Concurrent deposits and a withdrawal: no deposit is lost.
    #[test]
    fn loom_no_lost_deposit() {
        loom::model(|| {
            let b = Arc::new(RetryBudget::new(1.0, 0, 10));
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    loom::thread::spawn(move || b.deposit())
                })
                .collect();
            let w = b.try_withdraw();
            for t in ts {
                t.join().expect("no panic");
            }
            let expected = if w { 1.0 } else { 2.0 };
            assert_eq!(b.tokens(), expected);
        });
    }
}
