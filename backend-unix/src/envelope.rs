//! Resource envelope: a debug node can run its requests under a stable node's heap size, so a request
//! that would exhaust a unikernel's heap (which then exits with its out-of-memory status, 39) fails
//! on the debug build too: as a service panic naming the allocation, with the allocation's backtrace,
//! instead of succeeding on a process with gigabytes to spare.
//!
//! The process allocator is `tracking_allocator`'s wrapper of the system allocator (the only unsafe
//! code involved is that crate's). Each request is an allocation group: the bytes its polls allocate
//! and that are still live count against the envelope (the cap minus what the store holds: on a
//! unikernel both share one heap). The allocation that passes it still succeeds (the process must not
//! die), its backtrace is captured, and the request path turns it into a panic right after that poll.
//! An approximation of the unikernel's heap, not a copy: the node's own buffers and other requests
//! are not counted against one request.

use std::backtrace::Backtrace;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker, Allocator,
};

/// The process allocator (see the module docs).
#[global_allocator]
static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

/// The envelope in bytes; 0 = none.
static CAP: AtomicU64 = AtomicU64::new(0);

/// What passed a request's envelope: the allocation's size and backtrace.
#[derive(Debug)]
pub struct Exceeded {
    /// Bytes asked for by the allocation that passed the envelope.
    pub size: usize,
    /// The request's live bytes then.
    pub live: usize,
    /// The request's envelope.
    pub limit: usize,
    /// Where it was allocated.
    pub backtrace: String,
}

struct Group {
    live: usize,
    limit: usize,
    exceeded: Option<(usize, usize, Backtrace)>,
}

#[derive(Default)]
struct Groups(Mutex<HashMap<usize, Group>>);

fn groups() -> &'static Groups {
    static GROUPS: OnceLock<Groups> = OnceLock::new();
    GROUPS.get_or_init(Groups::default)
}

struct Tracker;

impl AllocationTracker for Tracker {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, group: AllocationGroupId) {
        // Outside a request (the root group) nothing is counted, and the map's lock is not taken:
        // the map itself allocates under it.
        if group == AllocationGroupId::ROOT {
            return;
        }
        let id = group.as_usize().get();
        let mut map = groups().0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = map.get_mut(&id) {
            g.live = g.live.saturating_add(size);
            // The backtrace is taken once per request, never while a panic is being reported (its
            // hook holds the backtrace lock). Allocations in here are not tracked.
            if g.live > g.limit && g.exceeded.is_none() && !std::thread::panicking() {
                g.exceeded = Some((size, g.live, Backtrace::force_capture()));
            }
        }
    }

    fn deallocated(
        &self,
        _addr: usize,
        size: usize,
        _wrapped: usize,
        source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        if source == AllocationGroupId::ROOT {
            return;
        }
        let id = source.as_usize().get();
        let mut map = groups().0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = map.get_mut(&id) {
            g.live = g.live.saturating_sub(size);
        }
    }
}

/// Sets the envelope (0 turns it off). Tracking runs only while an envelope is set.
pub fn set_cap(bytes: u64) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = AllocationRegistry::set_global_tracker(Tracker);
    });
    CAP.store(bytes, Ordering::Release);
    if bytes > 0 {
        AllocationRegistry::enable_tracking();
    } else {
        AllocationRegistry::disable_tracking();
    }
}

/// The envelope in bytes (0: none).
pub fn cap() -> u64 {
    CAP.load(Ordering::Acquire)
}

/// One request's allocation group, registered while it lives.
pub struct Account {
    token: AllocationGroupToken,
}

impl Account {
    /// An account of `cap - store_bytes` bytes, or `None` when no envelope is set.
    pub fn new(store_bytes: usize) -> Option<Account> {
        let cap = usize::try_from(cap()).unwrap_or(usize::MAX);
        if cap == 0 {
            return None;
        }
        let token = AllocationGroupToken::register()?;
        groups()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                token.id().as_usize().get(),
                Group {
                    live: 0,
                    limit: cap.saturating_sub(store_bytes),
                    exceeded: None,
                },
            );
        Some(Account { token })
    }

    /// Runs `f` (one poll of the request) in this request's group; returns what passed the envelope
    /// during it, once.
    pub fn poll<R>(&mut self, f: impl FnOnce() -> R) -> (R, Option<Exceeded>) {
        let r = {
            let _in_group = self.token.enter();
            f()
        };
        let id = self.token.id().as_usize().get();
        let over = groups()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&id)
            .and_then(|g| {
                let limit = g.limit;
                g.exceeded
                    .take()
                    .map(|(size, live, bt)| (size, live, limit, bt))
            });
        (
            r,
            over.map(|(size, live, limit, bt)| Exceeded {
                size,
                live,
                limit,
                backtrace: bt.to_string(),
            }),
        )
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        groups()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token.id().as_usize().get());
    }
}
