//! A small single-CPU async executor with millisecond timers (host-testable).
//!
//! Tasks are boxed futures in a slab; a task's waker pushes its id onto the ready queue (once
//! until it runs again). [`Executor::run_ready`] polls each ready task once. Timers are an ordered
//! map of `(deadline_ms, seq) -> waker`; a timer future holds its entry and removes it when it is
//! dropped (a finished `timeout` leaves nothing behind, so the map holds only live timers however
//! many requests went by); the kernel loop calls [`Executor::fire_timers`] with the current time
//! and sleeps until [`Executor::next_deadline`] or an interrupt.
//!
//! Wake contract: a future returning `Pending` MUST have arranged for its waker to be called
//! (socket waker, timer, or a [`Notify`]); a task that is woken is polled at the next
//! `run_ready`.
//!
//! Why not an existing executor: `embassy-executor` wants statically allocated tasks (a service's
//! connections are spawned per accept, boxed) and a time driver and critical-section
//! implementation of its own, and `async-task`/`futures`' `LocalPool` would still leave the timers,
//! the idle decision and the `hlt` wake-up to this kernel loop. What remains here is a slab, a
//! ready queue and a timer map (about 400 lines with their docs, without tests), driven by [`crate::rt::run_loop`].

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
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

/// A timer's place in [`Timers`]: its deadline, then the order it was armed in.
type TimerKey = (u64, u64);

/// The armed timers and the current time: `Send + Sync`, so `Send` futures can arm timers.
#[derive(Default)]
pub struct Timers {
    armed: Spinlock<BTreeMap<TimerKey, Waker>>,
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
                let mut armed = self.armed.lock();
                match armed.first_key_value() {
                    Some((&(deadline, _), _)) if deadline <= now_ms => armed.pop_first(),
                    _ => None,
                }
            };
            match entry {
                Some((_, waker)) => waker.wake(),
                None => break,
            }
        }
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.armed.lock().first_key_value().map(|(&(d, _), _)| d)
    }

    /// Timers armed now.
    pub fn armed(&self) -> usize {
        self.armed.lock().len()
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
            key: None,
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
    /// Its entry in `timers`, while armed.
    key: Option<TimerKey>,
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
        let Sleep {
            timers,
            deadline,
            key,
        } = self.get_mut();
        let mut armed = timers.armed.lock();
        if timers.now_ms() >= *deadline {
            if let Some(k) = key.take() {
                armed.remove(&k);
            }
            return Poll::Ready(());
        }
        // Keep the entry while it would wake the same task; otherwise arm it anew. An entry that
        // has fired is gone from the map: it is armed again (the fire may have raced this poll).
        if let Some(k) = key
            && armed.get(k).is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if let Some(k) = key.take() {
            armed.remove(&k);
        }
        let k = (*deadline, timers.seq.fetch_add(1, Ordering::Relaxed));
        armed.insert(k, cx.waker().clone());
        *key = Some(k);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.timers.armed.lock().remove(&key);
        }
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

/// Runs `future` until `cancel` completes first: `None` then (and `future` is dropped by the
/// caller). Used to drop a request's handler when its client has gone.
pub async fn unless<F: Future, C: Future<Output = ()>>(cancel: C, future: F) -> Option<F::Output> {
    let mut future = core::pin::pin!(future);
    let mut cancel = core::pin::pin!(cancel);
    core::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        match cancel.as_mut().poll(cx) {
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
    fn finished_timeouts_leave_no_timer_behind() {
        let mut ex = Executor::new();
        let sp = ex.spawner();
        let notify = Rc::new(Notify::new());
        let done = Rc::new(RefCell::new(0));
        {
            let (sp2, notify, done) = (sp.clone(), Rc::clone(&notify), Rc::clone(&done));
            sp.spawn(async move {
                // A keep-alive connection: every read is raced against a far deadline.
                for i in 0..1000u64 {
                    let r = timeout(sp2.timers(), 5_000 + i, notify.wait()).await;
                    assert!(r.is_some());
                    *done.borrow_mut() += 1;
                }
            });
        }
        ex.run_ready();
        for _ in 0..1000 {
            assert_eq!(ex.timers.armed(), 1, "one live timer at a time");
            notify.notify();
            ex.run_ready();
        }
        assert_eq!(*done.borrow(), 1000);
        assert_eq!(ex.timers.armed(), 0, "nothing left to wake");
        assert_eq!(ex.next_deadline(), None);
        assert_eq!(ex.live_tasks(), 0);
    }

    #[test]
    fn a_timer_polled_again_keeps_one_entry_and_still_fires() {
        let mut ex = Executor::new();
        let sp = ex.spawner();
        let waker_slot: Rc<RefCell<Option<Waker>>> = Rc::new(RefCell::new(None));
        let fired = Rc::new(RefCell::new(false));
        {
            let (sp2, slot, fired) = (sp.clone(), Rc::clone(&waker_slot), Rc::clone(&fired));
            sp.spawn(async move {
                let mut sleep = core::pin::pin!(sp2.sleep_until(100));
                core::future::poll_fn(|cx| {
                    *slot.borrow_mut() = Some(cx.waker().clone());
                    sleep.as_mut().poll(cx)
                })
                .await;
                *fired.borrow_mut() = true;
            });
        }
        ex.run_ready();
        // Woken by something else three times before the deadline: polled again, not re-armed.
        for _ in 0..3 {
            let w = waker_slot.borrow_mut().take().expect("polled");
            w.wake();
            assert_eq!(ex.run_ready(), 1);
            assert_eq!(ex.timers.armed(), 1);
        }
        ex.fire_timers(99);
        assert_eq!(ex.run_ready(), 0);
        assert!(!*fired.borrow());
        ex.fire_timers(100);
        ex.run_ready();
        assert!(*fired.borrow());
        assert_eq!(ex.timers.armed(), 0);
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

    #[test]
    fn unless_drops_the_future_when_cancelled() {
        let poll = |f: &mut Pin<&mut dyn Future<Output = Option<u32>>>| {
            f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        };
        let notify = Notify::default();
        let mut answered = core::pin::pin!(unless(notify.wait(), async { 5u32 }));
        assert_eq!(
            poll(&mut (answered.as_mut() as Pin<&mut dyn Future<Output = _>>)),
            Poll::Ready(Some(5))
        );
        let mut left = core::pin::pin!(unless(notify.wait(), core::future::pending::<u32>()));
        let mut left = left.as_mut() as Pin<&mut dyn Future<Output = _>>;
        assert_eq!(poll(&mut left), Poll::Pending);
        notify.notify();
        assert_eq!(poll(&mut left), Poll::Ready(None));
    }
}
