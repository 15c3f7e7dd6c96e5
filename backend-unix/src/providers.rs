//! Capability providers of the unix backend: upstream calls over a pooled hyper client, tokio time,
//! entropy from `/dev/urandom`, and the store (a mutex around [`MemStore`], counting operations).

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runtime_abi::{
    BoxFuture, ClockSource, EntropySource, Headers, MemStore, Request, Response, StatusCode,
    StoreBackend, StoreError, StoreLimits, TraceId, Update, UpstreamError, UpstreamTransport,
};

use crate::metrics::{Metrics, StoreOp};

/// Largest upstream response body accepted.
pub const MAX_UPSTREAM_RESPONSE_BYTES: usize = 16 << 20;

/// Upstream calls over a pooled hyper client, only to the addresses the operator mapped.
pub struct HyperTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    map: BTreeMap<String, SocketAddr>,
    timeout: Duration,
}

impl HyperTransport {
    /// A transport for this mapping, each call bounded by `timeout`.
    pub fn new(map: BTreeMap<String, SocketAddr>, timeout: Duration) -> HyperTransport {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HyperTransport {
            client,
            map,
            timeout,
        }
    }

    async fn send(&self, addr: SocketAddr, req: Request) -> Result<Response, UpstreamError> {
        let method = http::Method::from_bytes(req.method.as_str().as_bytes())
            .map_err(|e| UpstreamError::Protocol(format!("method: {e}")))?;
        let uri = format!("http://{addr}{}", req.target());
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in req.headers.iter() {
            if is_hop_by_hop(name) || name == "host" || name == "content-length" {
                continue;
            }
            builder = builder.header(name, value);
        }
        if req.trace_id != TraceId::ZERO && !req.headers.contains("x-janus-trace-id") {
            builder = builder.header("x-janus-trace-id", req.trace_id.to_hex());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body)))
            .map_err(|e| UpstreamError::Protocol(format!("request: {e}")))?;
        let response = self.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect(format!("{addr}: {e}"))
            } else {
                UpstreamError::Protocol(e.to_string())
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_UPSTREAM_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| UpstreamError::Protocol(format!("body: {e}")))?
            .to_bytes();
        let status = StatusCode::new(parts.status.as_u16())
            .ok_or_else(|| UpstreamError::Protocol(format!("status {}", parts.status)))?;
        let mut headers = Headers::new();
        for (name, value) in &parts.headers {
            headers.append(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        }
        Ok(Response {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

impl UpstreamTransport for HyperTransport {
    fn call(&self, name: &str, req: Request) -> BoxFuture<'_, Result<Response, UpstreamError>> {
        let addr = self.map.get(name).copied();
        let name = name.to_string();
        Box::pin(async move {
            let addr = addr.ok_or(UpstreamError::Unmapped(name))?;
            tokio::time::timeout(self.timeout, self.send(addr, req))
                .await
                .map_err(|_| UpstreamError::Timeout)?
        })
    }
}

/// Time from tokio and the system clock.
pub struct TokioClock {
    start: Instant,
}

impl TokioClock {
    /// A clock whose monotonic zero is now.
    pub fn new() -> TokioClock {
        TokioClock {
            start: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl ClockSource for TokioClock {
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }

    fn wall(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Entropy from `/dev/urandom` (the kernel CSPRNG).
pub struct Urandom {
    file: Mutex<File>,
    fallback: AtomicU64,
}

impl Urandom {
    /// Opens `/dev/urandom`.
    pub fn open() -> std::io::Result<Urandom> {
        let file = File::open("/dev/urandom")?;
        Ok(Urandom {
            file: Mutex::new(file),
            fallback: AtomicU64::new(0),
        })
    }

    /// Fills `buf` from the device, or fails (for secrets, which must not come from a fallback).
    pub fn try_fill(&self, buf: &mut [u8]) -> std::io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read_exact(buf)
    }
}

impl EntropySource for Urandom {
    fn fill(&self, buf: &mut [u8]) {
        if self.try_fill(buf).is_err() {
            // The device was opened at start, so a read failure is not expected; fall back to
            // SipHash keyed by the OS-seeded `RandomState` rather than leave the buffer predictable.
            for chunk in buf.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(self.fallback.fetch_add(1, Ordering::Relaxed));
                let bytes = h.finish().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
    }
}

/// Trace ids for requests that bring none: SipHash-1-3 (keyed once from the OS, as
/// `std::collections::hash_map::RandomState` is) over a counter. Unique per node and unpredictable
/// without the key, at ~20 ns instead of a `/dev/urandom` read (a system call and a lock) per request.
/// The services' entropy capability stays [`Urandom`].
pub struct TraceIds {
    key: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

impl Default for TraceIds {
    fn default() -> Self {
        TraceIds::new()
    }
}

impl TraceIds {
    /// A generator with a fresh OS-seeded key.
    pub fn new() -> TraceIds {
        TraceIds {
            key: std::collections::hash_map::RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next(&self) -> TraceId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 16];
        for (half, lane) in bytes.chunks_exact_mut(8).zip([0u64, 1]) {
            let mut h = self.key.build_hasher();
            h.write_u64(n);
            h.write_u64(lane);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        TraceId::from_random(bytes)
    }
}

/// The store provider: one [`MemStore`] behind a std mutex, counting operations for the metrics.
///
/// Poisoning: a panic can happen under the lock only inside a service's `update` closure, which
/// `MemStore::update` runs before it changes anything, so a poisoned lock still guards a consistent
/// store and is recovered rather than propagated.
pub struct NodeStore {
    inner: Mutex<MemStore>,
    metrics: Arc<Metrics>,
    /// This history's id: new at start and on every restore (see `runtime_abi::node::STATE_EPOCH`).
    epoch: std::sync::atomic::AtomicU64,
    /// Woken after every mutation and restore (long-polls of `GET /state/log`, twins' waiters).
    changed: tokio::sync::Notify,
}

/// A fresh epoch: unique per store history, not a secret.
fn fresh_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    // Never 0: followers use 0 for "no epoch yet".
    h.finish().max(1)
}

impl NodeStore {
    /// An empty store with these limits.
    pub fn new(limits: StoreLimits, metrics: Arc<Metrics>) -> NodeStore {
        NodeStore {
            inner: Mutex::new(MemStore::new(limits)),
            metrics,
            epoch: std::sync::atomic::AtomicU64::new(fresh_epoch()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemStore> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state, encoded, with its sequence number.
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        self.metrics.store_op(StoreOp::Snapshot);
        let store = self.lock();
        (store.seq(), store.snapshot())
    }

    /// The state as of `seq`, encoded.
    pub fn snapshot_at(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.metrics.store_op(StoreOp::Snapshot);
        self.lock().snapshot_at(seq)
    }

    /// Replaces the state; unchanged on error. Starts a new epoch.
    pub fn restore(&self, bytes: &[u8]) -> Result<u64, StoreError> {
        self.restore_as(bytes, fresh_epoch())
    }

    /// Replaces the state and takes `epoch` as its history's id (a follower adopting its leader's).
    pub fn restore_as(&self, bytes: &[u8], epoch: u64) -> Result<u64, StoreError> {
        self.metrics.store_op(StoreOp::Restore);
        let r = {
            let mut store = self.lock();
            let r = store.restore(bytes);
            if r.is_ok() {
                self.epoch
                    .store(epoch, std::sync::atomic::Ordering::Release);
            }
            r
        };
        self.changed.notify_waiters();
        r
    }

    /// This history's id.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes `epoch` as this history's id (a follower whose log replay started from seq 0).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
    }

    /// The mutations after `since` (see `MemStore::ops_since`) with the epoch they belong to. With
    /// a `wait`, an up-to-date `since` waits up to that long for the next mutation (a long-poll);
    /// an empty batch means none came.
    pub async fn ops_since(
        &self,
        since: u64,
        wait: std::time::Duration,
    ) -> (u64, Result<Vec<runtime_abi::Op>, StoreError>) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let r = {
                let store = self.lock();
                (
                    self.epoch(),
                    store.ops_since(
                        since,
                        runtime_abi::node::LOG_MAX_OPS,
                        runtime_abi::node::LOG_MAX_BYTES,
                    ),
                )
            };
            if !matches!(&r.1, Ok(ops) if ops.is_empty()) {
                return r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return r;
            }
        }
    }

    /// Replays a leader's mutations in order; stops at the first refused one (the follower then
    /// takes a snapshot).
    pub fn apply_ops(&self, ops: &[runtime_abi::Op]) -> Result<u64, StoreError> {
        let r = {
            let mut store = self.lock();
            let mut r = Ok(store.seq());
            for op in ops {
                r = store.apply_op(op);
                if r.is_err() {
                    break;
                }
            }
            r
        };
        self.changed.notify_waiters();
        r
    }

    /// Undoes the mutations after `seq` (a twin dropping what a request wrote locally).
    pub fn rollback_to(&self, seq: u64) -> Result<(), StoreError> {
        let r = self.lock().rollback_to(seq);
        self.changed.notify_waiters();
        r
    }

    /// Resolves after the next mutation or restore.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Keys plus values, in bytes.
    pub fn bytes(&self) -> usize {
        self.lock().bytes()
    }

    /// The store's size limits.
    pub fn limits(&self) -> StoreLimits {
        self.lock().limits()
    }
}

impl StoreBackend for NodeStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.metrics.store_op(StoreOp::Get);
        Ok(self.lock().get(key).map(<[u8]>::to_vec))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.metrics.store_op(StoreOp::Put);
        let r = self.lock().put(key, value.to_vec());
        self.changed.notify_waiters();
        r
    }

    fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.metrics.store_op(StoreOp::Delete);
        let r = self.lock().delete(key);
        self.changed.notify_waiters();
        r
    }

    fn update(
        &self,
        key: &str,
        f: &mut dyn FnMut(Option<&[u8]>) -> Update,
    ) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError> {
        self.metrics.store_op(StoreOp::Update);
        let r = self.lock().update(key, f);
        self.changed.notify_waiters();
        r
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.metrics.store_op(StoreOp::List);
        Ok(self.lock().list(prefix, limit))
    }

    fn seq(&self) -> u64 {
        self.lock().seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_survives_a_panicking_update_closure() {
        let store = Arc::new(NodeStore::new(
            StoreLimits::default(),
            Arc::new(Metrics::default()),
        ));
        store.put("a", b"1").expect("put");
        let s = Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let _ = s.update("a", &mut |_| panic!("closure panics"));
        })
        .join();
        assert!(joined.is_err(), "the closure panicked");
        assert_eq!(store.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(store.put("b", b"2").expect("put after poison"), 2);
    }

    #[test]
    fn entropy_fills_the_whole_buffer() {
        let e = Urandom::open().expect("urandom");
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        e.fill(&mut a);
        e.fill(&mut b);
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 64]);
    }
}
