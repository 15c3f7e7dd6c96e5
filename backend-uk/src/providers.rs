//! The capabilities a unikernel node hands its service: the store (runtime-abi's `MemStore`), the
//! clock (TSC, RTC, executor timers) and entropy (RDRAND/RDSEED-seeded ChaCha20).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::time::Duration;

use runtime_abi::{
    BoxFuture, ClockSource, EntropySource, MemStore, StoreBackend, StoreError, Update,
};
use spinning_top::Spinlock;

use crate::executor::Timers;
use crate::metrics::{Metrics, StoreOp};

/// The store: runtime-abi's `MemStore` behind a spin lock (same engine and snapshot bytes as the
/// unix build), counting operations.
pub struct UkStore {
    inner: Spinlock<MemStore>,
    metrics: Arc<Metrics>,
    /// This history's id (`x-janus-state-epoch`): random at boot and on every restore.
    epoch: core::sync::atomic::AtomicU64,
    /// Tasks waiting for the next mutation (long-polls of `GET /state/log`).
    waiters: Spinlock<Vec<core::task::Waker>>,
}

impl core::fmt::Debug for UkStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UkStore").field("seq", &self.seq()).finish()
    }
}

impl UkStore {
    /// Wraps a store.
    pub fn new(store: MemStore, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Spinlock::new(store),
            metrics,
            epoch: core::sync::atomic::AtomicU64::new(1),
            waiters: Spinlock::new(Vec::new()),
        }
    }

    /// This history's id.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(core::sync::atomic::Ordering::Acquire)
    }

    /// Starts a new history id (at boot and after a restore).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch
            .store(epoch.max(1), core::sync::atomic::Ordering::Release);
    }

    fn changed(&self) {
        let waiters = core::mem::take(&mut *self.waiters.lock());
        for w in waiters {
            w.wake();
        }
    }

    /// Resolves once the store's seq is no longer `seq` (a mutation or a restore happened).
    pub async fn changed_from(&self, seq: u64) {
        poll_fn(|cx| {
            if self.seq() != seq {
                return core::task::Poll::Ready(());
            }
            let mut waiters = self.waiters.lock();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            core::task::Poll::Pending
        })
        .await
    }

    /// The mutations after `since` for a follower (see `MemStore::ops_since`).
    pub fn ops_since(&self, since: u64) -> Result<Vec<runtime_abi::Op>, StoreError> {
        self.inner.lock().ops_since(
            since,
            runtime_abi::node::LOG_MAX_OPS,
            runtime_abi::node::LOG_MAX_BYTES,
        )
    }

    /// Snapshot of the current state (and its sequence number).
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        self.metrics.store_op(StoreOp::Snapshot);
        let store = self.inner.lock();
        (store.seq(), store.snapshot())
    }

    /// Snapshot as of `seq`.
    pub fn snapshot_at(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.metrics.store_op(StoreOp::Snapshot);
        self.inner.lock().snapshot_at(seq)
    }

    /// Replaces the state with a snapshot; the state is unchanged on error.
    pub fn restore(&self, bytes: &[u8]) -> Result<u64, StoreError> {
        self.metrics.store_op(StoreOp::Restore);
        let r = self.inner.lock().restore(bytes);
        self.changed();
        r
    }

    /// The store's size limit (keys plus values).
    pub fn max_total_bytes(&self) -> usize {
        self.inner.lock().limits().max_total_bytes
    }

    /// Non-blocking snapshot as of `seq` for the panic path (None if the lock is held).
    pub fn try_snapshot_at(&self, seq: u64) -> Option<Result<Vec<u8>, StoreError>> {
        self.inner.try_lock().map(|s| s.snapshot_at(seq))
    }
}

impl StoreBackend for UkStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.metrics.store_op(StoreOp::Get);
        Ok(self.inner.lock().get(key).map(<[u8]>::to_vec))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.metrics.store_op(StoreOp::Put);
        let r = self.inner.lock().put(key, value.to_vec());
        self.changed();
        r
    }

    fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.metrics.store_op(StoreOp::Delete);
        let r = self.inner.lock().delete(key);
        self.changed();
        r
    }

    fn update(
        &self,
        key: &str,
        f: &mut dyn FnMut(Option<&[u8]>) -> Update,
    ) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError> {
        self.metrics.store_op(StoreOp::Update);
        // The closure is service code: it runs without the lock held, on a copy of the value, so
        // a panic inside it leaves the store unlocked for the panic's state dump, and a closure
        // that calls the store does not deadlock the only CPU. Nothing else runs meanwhile (one
        // CPU, the closure is synchronous), so the read and the write are still one atomic step
        // unless the closure itself wrote to the store, which is refused.
        let (current, seq) = {
            let store = self.inner.lock();
            (store.get(key).map(<[u8]>::to_vec), store.seq())
        };
        let mut decision = Some(f(current.as_deref()));
        let mut store = self.inner.lock();
        if store.seq() != seq {
            drop(store);
            panic!("store: the update closure of key '{key}' wrote to the store itself");
        }
        let r = store.update(key, &mut |_| decision.take().unwrap_or(Update::Keep));
        drop(store);
        self.changed();
        r
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.metrics.store_op(StoreOp::List);
        Ok(self.inner.lock().list(prefix, limit))
    }

    fn seq(&self) -> u64 {
        self.inner.lock().seq()
    }
}

/// The clock provider: TSC monotonic time, RTC-based wall time, executor timers for `sleep`.
pub struct UkClock {
    /// The executor's timers.
    pub timers: Arc<Timers>,
    /// Monotonic nanoseconds.
    pub monotonic_ns: fn() -> u64,
    /// Wall nanoseconds since the epoch.
    pub wall_ns: fn() -> u64,
}

impl ClockSource for UkClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos((self.monotonic_ns)())
    }

    fn wall(&self) -> Duration {
        Duration::from_nanos((self.wall_ns)())
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        // Round up so the sleep never ends early (the MUST rule).
        let now_ms = (self.monotonic_ns)() / 1_000_000;
        let ms = d.as_nanos().div_ceil(1_000_000) as u64;
        let sleep = self
            .timers
            .sleep_until(now_ms.saturating_add(ms).saturating_add(1));
        Box::pin(sleep)
    }
}

/// The entropy provider.
pub struct UkEntropy;

impl EntropySource for UkEntropy {
    fn fill(&self, buf: &mut [u8]) {
        crate::entropy::fill(buf);
    }
}
