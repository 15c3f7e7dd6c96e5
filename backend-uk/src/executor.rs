//! A small single-CPU async executor with millisecond timers (host-testable).
//!
//! Tasks are boxed futures in a slab; a task's waker pushes its id onto the ready queue (once
//! until it runs again). [`Executor::run_ready`] polls each ready task once. Timers are a binary
//! heap of `(deadline_ms, waker)`; the kernel loop calls [`Executor::fire_timers`] with the
//! current time and sleeps until [`Executor::next_deadline`] or an interrupt.
//!
//! Wake contract: a future returning `Pending` MUST have arranged for its waker to be called
//! (socket waker, timer, or a [`Notify`]); a task that is woken is polled at the next
//! `run_ready`.

use alloc::boxed::Box;
use alloc::collections::{BinaryHeap, VecDeque};
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

use spinning_top::Spinlock;

type BoxedTask = Pin<Box<dyn Future<Output = ()>>>;

type ReadyQueue = Spinlock<VecDeque<usize>>;

struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.lock().push_back(self.id);
        }
    }
}

struct TimerEntry {
    deadline: u64,
    seq: u64,
    waker: Waker,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// The timer heap and the current time: `Send + Sync`, so `Send` futures can arm timers.
#[derive(Default)]
pub struct Timers {
    heap: Spinlock<BinaryHeap<Reverse<TimerEntry>>>,
    seq: AtomicU64,
    now_ms: AtomicU64,
}

impl core::fmt::Debug for Timers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Timers")
            .field("now_ms", &self.now_ms.load(Ordering::Relaxed))
            .finish()
    }
}

type SpawnQueue = alloc::rc::Rc<core::cell::RefCell<Vec<BoxedTask>>>;

struct Slot {
    future: Option<BoxedTask>,
    waker: Arc<TaskWaker>,
}

/// The executor.
pub struct Executor {
    ready: Arc<ReadyQueue>,
    spawned: SpawnQueue,
    timers: Arc<Timers>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    live: usize,
}

impl core::fmt::Debug for Executor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Executor")
            .field("live", &self.live)
            .finish()
    }
}

/// A handle for spawning tasks and arming timers from inside tasks.
#[derive(Clone)]
pub struct Spawner {
    spawned: SpawnQueue,
    timers: Arc<Timers>,
}

impl core::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Spawner")
    }
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    /// An empty executor.
    pub fn new() -> Self {
        Self {
            ready: Arc::new(Spinlock::new(VecDeque::new())),
            spawned: SpawnQueue::default(),
            timers: Arc::new(Timers::default()),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// A spawner for this executor.
    pub fn spawner(&self) -> Spawner {
        Spawner {
            spawned: SpawnQueue::clone(&self.spawned),
            timers: Arc::clone(&self.timers),
        }
    }

    /// The executor's timers.
    pub fn timers(&self) -> Arc<Timers> {
        Arc::clone(&self.timers)
    }

    /// Number of live tasks.
    pub fn live_tasks(&self) -> usize {
        self.live
    }

    fn adopt_spawned(&mut self) {
        let spawned: Vec<BoxedTask> = core::mem::take(&mut *self.spawned.borrow_mut());
        for future in spawned {
            let id = match self.free.pop() {
                Some(id) => id,
                None => {
                    self.slots.push(Slot {
                        future: None,
                        waker: Arc::new(TaskWaker {
                            id: self.slots.len(),
                            queued: AtomicBool::new(false),
                            ready: Arc::clone(&self.ready),
                        }),
                    });
                    self.slots.len() - 1
                }
            };
            self.slots[id].future = Some(future);
            self.live += 1;
            self.slots[id].waker.wake_by_ref();
        }
    }

    /// Polls every ready task once (tasks woken meanwhile wait for the next call). Returns how
    /// many tasks were polled.
    pub fn run_ready(&mut self) -> usize {
        self.adopt_spawned();
        let batch: Vec<usize> = self.ready.lock().drain(..).collect();
        let mut polled = 0;
        for id in batch {
            let Some(slot) = self.slots.get_mut(id) else {
                continue;
            };
            slot.waker.queued.store(false, Ordering::Release);
            let Some(future) = slot.future.as_mut() else {
                continue;
            };
            let waker = Waker::from(Arc::clone(&slot.waker));
            let mut cx = Context::from_waker(&waker);
            polled += 1;
            if future.as_mut().poll(&mut cx).is_ready() {
                slot.future = None;
                self.free.push(id);
                self.live -= 1;
            }
            self.adopt_spawned();
        }
        polled
    }

    /// Whether some task is ready to run.
    pub fn has_ready(&self) -> bool {
        !self.ready.lock().is_empty() || !self.spawned.borrow().is_empty()
    }

    /// Records the current time and wakes every timer due at or before it.
    pub fn fire_timers(&self, now_ms: u64) {
        self.timers.fire(now_ms);
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }
}

impl Timers {
    /// Records the current time and wakes every timer due at or before it.
    pub fn fire(&self, now_ms: u64) {
        self.now_ms.fetch_max(now_ms, Ordering::AcqRel);
        loop {
            let entry = {
                let mut timers = self.heap.lock();
                match timers.peek() {
                    Some(Reverse(e)) if e.deadline <= now_ms => timers.pop(),
                    _ => None,
                }
            };
            match entry {
                Some(Reverse(e)) => e.waker.wake(),
                None => break,
            }
        }
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.lock().peek().map(|Reverse(e)| e.deadline)
    }

    /// The time of the last [`Timers::fire`].
    pub fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Acquire)
    }

    /// A future completing at `deadline_ms`.
    pub fn sleep_until(self: &Arc<Self>, deadline_ms: u64) -> Sleep {
        Sleep {
            timers: Arc::clone(self),
            deadline: deadline_ms,
        }
    }

    /// A future completing after `ms` milliseconds.
    pub fn sleep_ms(self: &Arc<Self>, ms: u64) -> Sleep {
        self.sleep_until(self.now_ms().saturating_add(ms))
    }
}

impl Spawner {
    /// Spawns a task.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.spawned.borrow_mut().push(Box::pin(future));
    }

    /// The executor's timers.
    pub fn timers(&self) -> &Arc<Timers> {
        &self.timers
    }

    /// The time of the last [`Executor::fire_timers`].
    pub fn now_ms(&self) -> u64 {
        self.timers.now_ms()
    }

    /// A future completing at `deadline_ms`.
    pub fn sleep_until(&self, deadline_ms: u64) -> Sleep {
        self.timers.sleep_until(deadline_ms)
    }

    /// A future completing after `ms` milliseconds.
    pub fn sleep_ms(&self, ms: u64) -> Sleep {
        self.sleep_until(self.now_ms().saturating_add(ms))
    }
}

/// A timer future.
pub struct Sleep {
    timers: Arc<Timers>,
    deadline: u64,
}

impl core::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timers.now_ms() >= self.deadline {
            return Poll::Ready(());
        }
        // Re-arm on every pending poll: a stale waker entry only causes a spurious wake-up.
        let seq = self.timers.seq.fetch_add(1, Ordering::Relaxed);
        self.timers.heap.lock().push(Reverse(TimerEntry {
            deadline: self.deadline,
            seq,
            waker: cx.waker().clone(),
        }));
        Poll::Pending
    }
}

/// Runs `future` with a deadline: `None` if `deadline_ms` passes first.
pub async fn timeout<F: Future>(
    timers: &Arc<Timers>,
    deadline_ms: u64,
    future: F,
) -> Option<F::Output> {
    let mut future = core::pin::pin!(future);
    let mut sleep = timers.sleep_until(deadline_ms);
    core::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        match Pin::new(&mut sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A one-slot wake-up signal between tasks (or from the kernel loop to a task).
#[derive(Default)]
pub struct Notify {
    inner: Spinlock<(bool, Option<Waker>)>,
}

impl core::fmt::Debug for Notify {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Notify")
    }
}

impl Notify {
    /// A new signal.
    pub const fn new() -> Self {
        Self {
            inner: Spinlock::new((false, None)),
        }
    }

    /// Sets the signal and wakes the waiter.
    pub fn notify(&self) {
        let waker = {
            let mut inner = self.inner.lock();
            inner.0 = true;
            inner.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits until notified (consumes the signal).
    pub async fn wait(&self) {
        core::future::poll_fn(|cx| {
            let mut inner = self.inner.lock();
            if inner.0 {
                inner.0 = false;
                Poll::Ready(())
            } else {
                inner.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use core::cell::RefCell;

    #[test]
    fn tasks_run_and_finish() {
        let mut ex = Executor::new();
        let log = Rc::new(RefCell::new(Vec::new()));
        for i in 0..3 {
            let log = Rc::clone(&log);
            ex.spawner().spawn(async move { log.borrow_mut().push(i) });
        }
        assert_eq!(ex.run_ready(), 3);
        assert_eq!(*log.borrow(), [0, 1, 2]);
        assert_eq!(ex.live_tasks(), 0);
        assert_eq!(ex.run_ready(), 0);
    }

    #[test]
    fn timers_wake_in_order_and_slow_task_does_not_block_others() {
        let mut ex = Executor::new();
        let sp = ex.spawner();
        let log = Rc::new(RefCell::new(Vec::new()));
        for (name, ms) in [("slow", 50u64), ("fast", 10)] {
            let log = Rc::clone(&log);
            let sp2 = sp.clone();
            sp.spawn(async move {
                sp2.sleep_ms(ms).await;
                log.borrow_mut().push(name);
            });
        }
        ex.run_ready();
        assert_eq!(ex.next_deadline(), Some(10));
        ex.fire_timers(9);
        assert_eq!(ex.run_ready(), 0);
        ex.fire_timers(10);
        ex.run_ready();
        assert_eq!(*log.borrow(), ["fast"]);
        ex.fire_timers(60);
        ex.run_ready();
        assert_eq!(*log.borrow(), ["fast", "slow"]);
        assert_eq!(ex.live_tasks(), 0);
    }

    #[test]
    fn timeout_and_notify() {
        let mut ex = Executor::new();
        let sp = ex.spawner();
        let notify = Rc::new(Notify::new());
        let result = Rc::new(RefCell::new(Vec::new()));
        {
            let (sp2, notify, result) = (sp.clone(), Rc::clone(&notify), Rc::clone(&result));
            sp.spawn(async move {
                let r = timeout(sp2.timers(), 100, notify.wait()).await;
                result.borrow_mut().push(r.is_some());
                let r = timeout(sp2.timers(), 200, notify.wait()).await;
                result.borrow_mut().push(r.is_some());
            });
        }
        ex.run_ready();
        notify.notify();
        ex.run_ready();
        assert_eq!(*result.borrow(), [true]);
        ex.fire_timers(200);
        ex.run_ready();
        assert_eq!(*result.borrow(), [true, false]);
    }

    #[test]
    fn many_tasks_reuse_slots() {
        let mut ex = Executor::new();
        let count = Rc::new(RefCell::new(0));
        for _ in 0..10 {
            for _ in 0..100 {
                let count = Rc::clone(&count);
                ex.spawner().spawn(async move { *count.borrow_mut() += 1 });
            }
            ex.run_ready();
        }
        assert_eq!(*count.borrow(), 1000);
        assert!(ex.slots.len() <= 100);
    }
}
