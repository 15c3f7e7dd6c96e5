//! Lanes: the pool's pipelined mode (`upstream.pipeline_depth` > 0).
//!
//! Requests for the same node that become ready in the same scheduler turn of one worker go out on
//! one connection as one write, and their answers come back in order on it: the node reads many
//! requests per read and the router makes one write and few reads for all of them, where separate
//! connections cost each request its own segments, syscalls and wake-ups on both sides. Before it
//! writes, a lane lets its worker poll the sockets again, for as long as each such turn brings more
//! requests (at most [`MAX_GATHER_TURNS`], never past the depth): under load the batches grow (5.2
//! requests per batch on average in `bench/router.sh` before, 6.8 after), and a lone request waits
//! one extra poll of the worker's sockets.
//!
//! A lane takes requests only while it is *collecting* (idle, or holding requests not yet written);
//! once written it is *busy* until every answer is in, and new requests go to another lane. So a
//! request only ever waits behind requests that arrived with it, never behind an older slow one, and
//! the pipeline depth is bounded. Only requests that are safe to pipeline use lanes: no body, and an
//! idempotent method (`GET`, `HEAD`, `OPTIONS`); everything else keeps an exclusive connection.
//!
//! A slow answer holds up only itself: when the answer at the front of a lane is later than
//! `upstream.pipeline_stall_ms`, the requests behind it are handed back as unsent (they are bodiless
//! idempotent requests) and each goes out again on a connection of its own; their answers, should the
//! node still send them on the lane, are skipped.
//!
//! Failure rules, the same as for exclusive connections: a request the lane never wrote (connect
//! failed, the node closed the idle connection, an earlier answer said `connection: close`) fails as
//! *unsent* and the caller sends it once more on a new exclusive connection (or reports the connect
//! error); a request written and then lost fails as a reset, and is never re-sent to the node.
//!
//! One task per lane owns the socket; the waiting requests hold a [`Slot`] it fills. The lane lives
//! on its worker's thread (the per-worker runtimes are single-threaded): its locks are never
//! contended and only make the types `Send` for `tokio::spawn`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep, sleep_until, timeout};

use super::answer::{AnswerReader, ExchangeError, RawResponse};
use super::{Limits, READ_CHUNK};

/// Most extra I/O turns a lane waits for more requests before it writes a batch (each turn that
/// brings none ends the wait at once).
const MAX_GATHER_TURNS: usize = 8;

/// A node's answer taken off a lane: its bytes (head and body as sent) and where its parts are.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) buf: Vec<u8>,
    pub(super) raw: RawResponse,
    /// The first answer of its batch (counts batches in the metrics).
    pub(super) first: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind: keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// --- slots -----------------------------------------------------------------------------------------

enum SlotState {
    Waiting(Option<Waker>),
    Done(Result<Answer, ExchangeError>),
    /// The request gave up (its timeout fired): its answer is read and dropped.
    Abandoned,
}

struct Slot(Mutex<SlotState>);

impl Slot {
    fn fill(&self, result: Result<Answer, ExchangeError>) {
        let mut st = lock(&self.0);
        if let SlotState::Waiting(waker) = &mut *st {
            let waker = waker.take();
            *st = SlotState::Done(result);
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// The answer to one request submitted to a lane.
pub(super) struct Pending(Arc<Slot>);

impl Future for Pending {
    type Output = Result<Answer, ExchangeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = lock(&self.0.0);
        match &mut *st {
            SlotState::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            SlotState::Done(_) => match std::mem::replace(&mut *st, SlotState::Abandoned) {
                SlotState::Done(r) => Poll::Ready(r),
                _ => unreachable!("matched Done above"),
            },
            SlotState::Abandoned => {
                Poll::Ready(Err(ExchangeError::Reset("answer already taken".into())))
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        *lock(&self.0.0) = SlotState::Abandoned;
    }
}

// --- lanes -----------------------------------------------------------------------------------------

/// A request a lane took: its slot, whether it is a `HEAD`, and where it is in its batch.
struct Waiting {
    slot: Arc<Slot>,
    head_request: bool,
    start: usize,
    /// Handed back as unsent (stalled behind a slow answer): its answer, if it comes, is skipped.
    handed_back: bool,
}

#[derive(Default)]
struct LaneState {
    /// Requests taken and not yet written, and their slots.
    outbox: Vec<u8>,
    queued: Vec<Waiting>,
    /// Written requests are waiting for answers: the lane takes no more until they are in.
    busy: bool,
    closed: bool,
    /// The lane's task, waiting for requests.
    task: Option<Waker>,
    /// The generation the lane's connection was made at (see [`super::retire`]).
    generation: u64,
}

struct Lane(Mutex<LaneState>);

impl Lane {
    /// Takes a request if the lane is collecting and has room; returns its answer.
    fn offer(&self, depth: usize, request: &[u8], head_request: bool) -> Option<Pending> {
        let mut st = lock(&self.0);
        if st.busy || st.closed || st.queued.len() >= depth {
            return None;
        }
        let slot = Arc::new(Slot(Mutex::new(SlotState::Waiting(None))));
        let start = st.outbox.len();
        st.outbox.extend_from_slice(request);
        st.queued.push(Waiting {
            slot: slot.clone(),
            head_request,
            start,
            handed_back: false,
        });
        let task = st.task.take();
        drop(st);
        if let Some(w) = task {
            w.wake();
        }
        Some(Pending(slot))
    }

    fn idle(&self) -> bool {
        let st = lock(&self.0);
        !st.busy && !st.closed && st.queued.is_empty()
    }

    /// Takes the queued requests (written next: the lane turns busy); `false` if the lane was
    /// closed meanwhile.
    fn take_batch(&self, out: &mut Vec<u8>, slots: &mut VecDeque<Waiting>) -> bool {
        let mut st = lock(&self.0);
        if st.closed {
            return false;
        }
        st.busy = true;
        std::mem::swap(out, &mut st.outbox);
        slots.extend(st.queued.drain(..));
        true
    }

    /// Waits until requests are queued (without taking them); `false` if the lane was closed.
    async fn has_requests(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut st = lock(&self.0);
            if st.closed {
                return Poll::Ready(false);
            }
            if st.queued.is_empty() {
                st.task = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(true)
        })
        .await
    }

    /// Requests taken and not yet written.
    fn queued(&self) -> usize {
        lock(&self.0).queued.len()
    }

    /// Lets requests that become ready in the worker's next I/O turns join the queued batch: the
    /// worker polls its sockets again (a `yield_now` runs after the I/O driver's next poll) for as
    /// long as each turn brings more requests, at most [`MAX_GATHER_TURNS`] and up to `depth`.
    async fn gather(&self, depth: usize) {
        let mut queued = self.queued();
        for _ in 0..MAX_GATHER_TURNS {
            if queued >= depth {
                break;
            }
            tokio::task::yield_now().await;
            let now = self.queued();
            if now == queued {
                break;
            }
            queued = now;
        }
    }

    /// The written requests are all answered: the lane collects again.
    fn answered(&self) {
        lock(&self.0).busy = false;
    }

    /// Closes the lane; requests it took and never wrote fail as unsent.
    fn close(&self, why: &str) {
        let (queued, task) = {
            let mut st = lock(&self.0);
            st.closed = true;
            st.outbox = Vec::new();
            (std::mem::take(&mut st.queued), st.task.take())
        };
        if let Some(w) = task {
            w.wake();
        }
        for w in queued {
            w.slot.fill(Err(ExchangeError::Unsent(why.to_owned())));
        }
    }
}

thread_local! {
    /// This worker's lanes, per node address.
    static LANES: RefCell<Vec<(SocketAddr, Vec<Arc<Lane>>)>> = const { RefCell::new(Vec::new()) };
}

/// Submits a request (no body, idempotent) for the node at `addr` on one of this worker's lanes,
/// starting a new lane if none is collecting.
pub(super) fn submit(
    addr: SocketAddr,
    limits: Limits,
    request: &[u8],
    head_request: bool,
) -> Pending {
    LANES.with(|lanes| {
        let mut lanes = lanes.borrow_mut();
        close_retired(&mut lanes);
        let list = super::conn::per_node(&mut lanes, addr);
        // From the back: the lane that took the last request is kept there, and is still collecting
        // while the requests of the same turn come (the first request of a turn finds an idle lane
        // and moves it there).
        let last = list.len().saturating_sub(1);
        for i in (0..list.len()).rev() {
            if let Some(p) = list[i].offer(limits.depth, request, head_request) {
                list.swap(i, last);
                return p;
            }
        }
        list.retain(|l| !lock(&l.0).closed);
        let lane = Arc::new(Lane(Mutex::new(LaneState {
            generation: super::retire::generation(),
            ..LaneState::default()
        })));
        let pending = lane
            .offer(limits.depth, request, head_request)
            .expect("a new lane takes a request");
        list.push(lane.clone());
        tokio::spawn(drive(lane, addr, limits));
        pending
    })
}

thread_local! {
    /// The generation at which this worker last closed its lanes to retired addresses.
    static SWEPT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// After an address was retired (see [`super::retire`]): closes this worker's lanes made before
/// it. A request already written on such a lane keeps waiting for its answer there.
fn close_retired(lanes: &mut [(SocketAddr, Vec<Arc<Lane>>)]) {
    let now = super::retire::generation();
    if SWEPT.get() == now {
        return;
    }
    for (addr, list) in lanes.iter_mut() {
        list.retain(|lane| {
            let current = super::retire::still_current(*addr, &mut lock(&lane.0).generation);
            if !current {
                lane.close("the node's address was retired");
            }
            current
        });
    }
    SWEPT.set(now);
}

/// Idle lanes of this worker for `addr` beyond `max`: the newest one closes.
fn surplus(addr: SocketAddr, max: usize) -> bool {
    LANES.with(|lanes| {
        let lanes = lanes.borrow();
        lanes
            .iter()
            .find(|(a, _)| *a == addr)
            .is_some_and(|(_, list)| list.iter().filter(|l| l.idle()).count() > max)
    })
}

fn forget(addr: SocketAddr, lane: &Arc<Lane>) {
    LANES.with(|lanes| {
        if let Some((_, list)) = lanes.borrow_mut().iter_mut().find(|(a, _)| *a == addr) {
            list.retain(|l| !Arc::ptr_eq(l, lane));
        }
    });
}

/// The lane's task: connects, then writes each batch and hands out its answers in order.
async fn drive(lane: Arc<Lane>, addr: SocketAddr, limits: Limits) {
    let why = run(&lane, addr, limits).await;
    lane.close(&why);
    forget(addr, &lane);
}

/// Runs the lane until it closes; returns why.
async fn run(lane: &Lane, addr: SocketAddr, limits: Limits) -> String {
    let mut stream = match timeout(limits.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            fail_queued(lane, || ExchangeError::Connect(e.to_string()));
            return format!("connect: {e}");
        }
        Err(_) => {
            let why = format!(
                "no connection within {} ms",
                limits.connect_timeout.as_millis()
            );
            fail_queued(lane, || ExchangeError::Connect(why.clone()));
            return why;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut out = Vec::with_capacity(1024);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    // One timer for the lane's life, moved from deadline to deadline.
    let mut timer = Box::pin(sleep_until(Instant::now() + limits.idle_timeout));
    // The connection carried an earlier batch: it may have gone stale since.
    let mut reused = false;
    loop {
        // Collecting: wait for requests; meanwhile the node must stay quiet.
        timer.as_mut().reset(Instant::now() + limits.idle_timeout);
        tokio::select! {
            biased;
            r = stream.readable() => {
                if r.is_err() {
                    return "node connection failed while idle".into();
                }
                let mut probe = [0u8; 1];
                match stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Ok(0) | Err(_) => return "the node closed the idle connection".into(),
                    Ok(_) => return "the node sent bytes nobody asked for".into(),
                }
            }
            taken = lane.has_requests() => {
                if !taken {
                    return "closed".into();
                }
                lane.gather(limits.depth).await;
                if !lane.take_batch(&mut out, &mut waiting) {
                    return "closed".into();
                }
            }
            () = timer.as_mut() => return "idle".into(),
        }
        timer
            .as_mut()
            .reset(Instant::now() + limits.request_timeout);
        let written = tokio::select! {
            biased;
            r = write_batch(&mut stream, &out, &mut waiting) => r,
            () = timer.as_mut() => {
                fail_all(
                    &mut waiting,
                    "the node took no requests within upstream.request_timeout_ms",
                );
                return "write timeout".into();
            }
        };
        if let Err(why) = written {
            return why;
        }
        out.clear();
        let answered = answers(
            &mut stream,
            &mut buf,
            &mut waiting,
            timer.as_mut(),
            limits,
            reused,
        );
        if let Err(why) = answered.await {
            return why;
        }
        reused = true;
        lane.answered();
        if surplus(addr, limits.max_idle) {
            return "more idle lanes than upstream.pool_max_idle_per_node".into();
        }
    }
}

/// Writes a batch. If the write fails, requests the node cannot have received whole are failed as
/// unsent (sent again on a new connection); the others as lost.
async fn write_batch(
    stream: &mut TcpStream,
    out: &[u8],
    waiting: &mut VecDeque<Waiting>,
) -> Result<(), String> {
    let mut written = 0;
    while written < out.len() {
        match stream.write(&out[written..]).await {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) => {
                let why = e.to_string();
                for w in waiting.drain(..) {
                    w.slot.fill(Err(if w.start >= written {
                        ExchangeError::Unsent(why.clone())
                    } else {
                        ExchangeError::Reset(why.clone())
                    }));
                }
                return Err(why);
            }
        }
    }
    if written < out.len() {
        fail_all(waiting, "the node connection took no more bytes");
        return Err("write returned 0".into());
    }
    Ok(())
}

fn fail_queued(lane: &Lane, e: impl Fn() -> ExchangeError) {
    let queued = std::mem::take(&mut lock(&lane.0).queued);
    for w in queued {
        w.slot.fill(Err(e()));
    }
}

/// Reads the answers to the written requests in order and hands each to its slot. `Err`: the lane
/// must close (every request still waiting has been failed). A `reused` connection that ends before
/// any byte of the batch's answers fails them all as [`ExchangeError::Stale`].
async fn answers(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    waiting: &mut VecDeque<Waiting>,
    mut deadline: Pin<&mut Sleep>,
    limits: Limits,
    reused: bool,
) -> Result<(), String> {
    let mut reader = AnswerReader::default();
    let mut first = true;
    // When the answer at the front is this late, the requests behind it are handed back (see
    // `hand_back`); re-armed at each answer.
    let mut stall = Box::pin(sleep(limits.stall));
    while let Some(front) = waiting.front() {
        match reader.step(buf, front.head_request, limits.max_body) {
            Ok(Some((raw, end))) => {
                let close = !raw.reusable;
                let answer = Answer {
                    buf: buf[..end].to_vec(),
                    raw,
                    first: std::mem::take(&mut first),
                };
                buf.drain(..end);
                front.slot.fill(Ok(answer));
                waiting.pop_front();
                stall.as_mut().reset(Instant::now() + limits.stall);
                if close {
                    // The node closes after this answer: it never took the requests behind it.
                    fail_unsent(
                        waiting,
                        "the node closed the connection after an earlier answer",
                    );
                    return Err("the node closes the connection".into());
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                front.slot.fill(Err(e));
                waiting.pop_front();
                fail_all(waiting, "an earlier answer on the connection was broken");
                return Err("broken answer".into());
            }
        }
        buf.reserve(READ_CHUNK);
        let behind = waiting.iter().skip(1).any(|w| !w.handed_back);
        let read = tokio::select! {
            biased;
            r = stream.read_buf(buf) => r,
            () = deadline.as_mut() => {
                fail_all(waiting, "no answer within upstream.request_timeout_ms");
                return Err("timeout".into());
            }
            () = stall.as_mut(), if behind => {
                hand_back(waiting);
                continue;
            }
        };
        let front = match read {
            Ok(0) => reader.at_close(buf),
            Ok(_) => continue,
            Err(e) => Err(reader.on_error(buf, e)),
        };
        if let (true, Err(ExchangeError::Unanswered(why))) = (reused && first, &front) {
            for w in waiting.drain(..) {
                w.slot.fill(Err(ExchangeError::Stale(why.clone())));
            }
            return Err("stale".into());
        }
        let w = waiting.pop_front().expect("checked above");
        match front {
            Ok(raw) => {
                // A close-delimited answer: the node took nothing after it.
                w.slot.fill(Ok(Answer {
                    buf: std::mem::take(buf),
                    raw,
                    first,
                }));
                fail_unsent(
                    waiting,
                    "the node closed the connection after an earlier answer",
                );
            }
            Err(e) => {
                w.slot.fill(Err(e));
                fail_all(waiting, "the connection closed under an earlier request");
            }
        }
        return Err("closed".into());
    }
    if !buf.is_empty() {
        return Err("the node sent more than was asked".into());
    }
    Ok(())
}

/// The answer at the front is late (`upstream.pipeline_stall_ms`): the requests behind it, idempotent
/// and bodiless, are handed back as unsent so that each goes out again on a connection of its own
/// instead of waiting for a slow (or hanging) request that happened to be batched before them. The
/// node may still answer them here later: those answers are read and skipped. The front request keeps
/// waiting for its own answer.
fn hand_back(waiting: &mut VecDeque<Waiting>) {
    for w in waiting.iter_mut().skip(1).filter(|w| !w.handed_back) {
        w.handed_back = true;
        w.slot.fill(Err(ExchangeError::Unsent(
            "stalled behind a slow answer on its pipelined connection".to_owned(),
        )));
    }
}

fn fail_unsent(waiting: &mut VecDeque<Waiting>, why: &str) {
    for w in waiting.drain(..) {
        w.slot.fill(Err(ExchangeError::Unsent(why.to_owned())));
    }
}

/// Written requests behind a lost one: their fate is unknown (the node may have taken them), so they
/// are lost too, never re-sent.
fn fail_all(waiting: &mut VecDeque<Waiting>, why: &str) {
    for w in waiting.drain(..) {
        w.slot.fill(Err(ExchangeError::Reset(why.to_owned())));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    fn limits() -> Limits {
        Limits {
            depth: 16,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_idle: 8,
            max_body: 1 << 20,
            stall: Duration::from_secs(30),
        }
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nhost: n\r\n\r\n").into_bytes()
    }

    fn ok(body: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    }

    /// Accepts connections and, on each, reads until `heads` request heads are in (counting every
    /// connection in `conns`), then writes `answer(paths)` and closes if it returns `true`.
    async fn node(
        heads: usize,
        answer: fn(&[String]) -> (String, bool),
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if text.matches("\r\n\r\n").count() >= heads {
                            let paths: Vec<String> = text
                                .split("\r\n\r\n")
                                .filter_map(|h| h.split_whitespace().nth(1).map(str::to_owned))
                                .collect();
                            buf.clear();
                            if paths.iter().any(|p| p.starts_with("/slow")) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            let (out, close) = answer(&paths);
                            if s.write_all(out.as_bytes()).await.is_err() || close {
                                return;
                            }
                            continue;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn busy(addr: SocketAddr) -> bool {
        LANES.with(|lanes| {
            lanes
                .borrow()
                .iter()
                .any(|(a, list)| *a == addr && list.iter().any(|l| lock(&l.0).busy))
        })
    }

    fn body(a: &Answer) -> String {
        String::from_utf8_lossy(a.raw.body(&a.buf)).into_owned()
    }

    #[tokio::test]
    async fn requests_submitted_together_share_one_write_and_get_their_own_answers() {
        // The node answers only once all three requests are in: they must have come together.
        let (addr, conns) = node(3, |paths| {
            (paths.iter().map(|p| ok(p, "")).collect(), false)
        })
        .await;
        let a = submit(addr, limits(), &get("/a"), false);
        let b = submit(addr, limits(), &get("/b"), false);
        let c = submit(addr, limits(), &get("/c"), false);
        let (a, b, c) = tokio::join!(a, b, c);
        let got: Vec<String> = [a, b, c]
            .iter()
            .map(|r| r.as_ref().map(body).unwrap_or_else(|e| format!("{e:?}")))
            .collect();
        assert_eq!(got, ["/a", "/b", "/c"]);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);

        // The lane collects again once answered: the next batch uses the same connection.
        let d = submit(addr, limits(), &get("/d"), false);
        let e = submit(addr, limits(), &get("/e"), false);
        let f = submit(addr, limits(), &get("/f"), false);
        let (d, e, f) = tokio::join!(d, e, f);
        assert_eq!(body(&d.expect("d")), "/d");
        assert_eq!(body(&e.expect("e")), "/e");
        assert_eq!(body(&f.expect("f")), "/f");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// `/a` and `/b` submitted together (one batch), and their outcomes.
    async fn two(
        addr: SocketAddr,
    ) -> (Result<Answer, ExchangeError>, Result<Answer, ExchangeError>) {
        let a = submit(addr, limits(), &get("/a"), false);
        let b = submit(addr, limits(), &get("/b"), false);
        tokio::join!(a, b)
    }

    #[tokio::test]
    async fn requests_behind_an_answer_that_closes_are_unsent_and_behind_a_loss_are_lost() {
        // `connection: close` on the first answer: the node took nothing after it.
        let (addr, _) = node(2, |paths| (ok(&paths[0], "connection: close\r\n"), true)).await;
        let (a, b) = two(addr).await;
        assert_eq!(body(&a.expect("a")), "/a");
        assert!(matches!(b, Err(ExchangeError::Unsent(_))), "{b:?}");

        // The node dies with both requests read and only the first answered: the second was taken
        // and lost, never to be sent again.
        let (addr, _) = node(2, |paths| (ok(&paths[0], ""), true)).await;
        let (a, b) = two(addr).await;
        assert_eq!(body(&a.expect("a")), "/a");
        assert!(matches!(b, Err(ExchangeError::Unanswered(_))), "{b:?}");

        // Dying before any answer: the first is unanswered, the rest lost.
        let (addr, _) = node(2, |_| (String::new(), true)).await;
        let (a, b) = two(addr).await;
        assert!(matches!(a, Err(ExchangeError::Unanswered(_))), "{a:?}");
        assert!(matches!(b, Err(ExchangeError::Reset(_))), "{b:?}");
    }

    #[tokio::test]
    async fn a_busy_lane_takes_no_new_requests_and_an_abandoned_answer_is_skipped() {
        let (addr, conns) = node(1, |paths| {
            (paths.iter().map(|p| ok(p, "")).collect(), false)
        })
        .await;
        // Written and waiting for its (slow) answer, so the lane is busy, when the next one comes.
        let mut a = Box::pin(submit(addr, limits(), &get("/slow"), false));
        while !busy(addr) {
            tokio::select! {
                biased;
                _ = &mut a => panic!("answered before the lane was seen busy"),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let b = submit(addr, limits(), &get("/b"), false);
        let (a, b) = tokio::join!(a, b);
        assert_eq!(body(&a.expect("a")), "/slow");
        assert_eq!(body(&b.expect("b")), "/b");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);

        // A request that gives up: its answer is read and dropped, the lane goes on.
        drop(submit(addr, limits(), &get("/gone"), false));
        let c = submit(addr, limits(), &get("/c"), false);
        assert_eq!(body(&c.await.expect("c")), "/c");
    }

    /// A node that answers pipelined requests one by one, in order, like an HTTP/1.1 server, and
    /// never answers `/hang`.
    async fn sequential_node() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                            if path == "/hang" {
                                std::future::pending::<()>().await;
                            }
                            if s.write_all(ok(&path, "").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    /// A request that hangs at the front of a batch: the requests behind it are handed back as
    /// unsent (to be sent again on connections of their own) after `stall`, while it keeps waiting.
    #[tokio::test]
    async fn requests_behind_a_hanging_answer_are_handed_back() {
        let addr = sequential_node().await;
        let limits = Limits {
            stall: Duration::from_millis(50),
            ..limits()
        };
        let mut hang = Box::pin(submit(addr, limits, &get("/hang"), false));
        let behind: Vec<_> = (0..15)
            .map(|i| submit(addr, limits, &get(&format!("/f{i}")), false))
            .collect();
        let handed_back = tokio::select! {
            r = futures_join_all(behind) => r,
            _ = &mut hang => panic!("the hanging request was answered"),
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("held up behind /hang"),
        };
        for r in handed_back {
            assert!(matches!(r, Err(ExchangeError::Unsent(_))), "{r:?}");
        }
        // The hanging request still waits on the lane.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut hang)
                .await
                .is_err()
        );
    }

    async fn futures_join_all(v: Vec<Pending>) -> Vec<Result<Answer, ExchangeError>> {
        let mut out = Vec::new();
        for p in v {
            out.push(p.await);
        }
        out
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let r = submit(addr, limits(), &get("/a"), false).await;
        assert!(matches!(r, Err(ExchangeError::Connect(_))), "{r:?}");
    }
}
