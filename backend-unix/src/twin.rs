//! Shadow twin: a debug node that follows a stable node's store (`--follow ADDR`, the leader's
//! admin address) by replaying its op log, so a mirrored request runs on the same state as the
//! stable answer it is compared with.
//!
//! The follower long-polls `GET /state/log?since=<applied>` and replays the batch in seq order,
//! held back `replay_delay_ms` (default 5) from when it asked, so that a mirror of a request the
//! leader answered at one of those seqs (sent after the leader's answer) finds the twin behind that
//! seq rather than past it; a
//! gap beyond the leader's retained log (410), a leader behind the twin (409) or a new epoch (the
//! leader restarted or was restored) takes a snapshot (`GET /state`) instead.
//!
//! A mirrored request carries `x-janus-mirror-seq: N` (the stable answer's `x-janus-state-seq`). It
//! waits (bounded by `mirror_wait_ms`) until the twin has applied exactly N and holds the replay
//! back while it runs: the follower does not apply N+1 while a mirrored request wants N, for at most
//! the same bound. A twin already past N, or not at N in time, answers 503 with
//! `x-janus-mirror-skipped: lag` and the router counts the comparison as skipped. Whatever a request
//! writes on a twin is rolled back after it: the twin's state is only ever the leader's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runtime_abi::node;
use tokio::sync::{Notify, RwLock, RwLockReadGuard, watch};

use crate::providers::NodeStore;

/// Long-poll of one `GET /state/log`.
const POLL_WAIT_MS: u64 = 1_000;
/// Pause after a failed call to the leader.
const RETRY_MS: u64 = 200;

/// The follower's state, shared with the request path and `/health`.
pub struct Twin {
    leader: SocketAddr,
    token: String,
    store: Arc<NodeStore>,
    mirror_wait: Duration,
    replay_delay: Duration,
    /// Take the leader's heap size (its `/health` `heap_bytes`) as the resource envelope.
    auto_envelope: bool,
    /// Replays take it exclusively; a request on the twin holds it shared while it runs.
    gate: RwLock<()>,
    /// Sequence numbers mirrored requests are waiting for, with how many wait for each.
    wanted: Mutex<BTreeMap<u64, usize>>,
    /// Woken when a mirrored request stops wanting its seq.
    released: Notify,
    /// The leader's epoch the twin's state belongs to (0: none yet).
    epoch: AtomicU64,
    /// Highest seq the leader reported.
    leader_seq: AtomicU64,
    resyncs: AtomicU64,
    ops_applied: AtomicU64,
    skipped_lag: AtomicU64,
    compared: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Why a mirrored request is not answered at its seq.
#[derive(Debug)]
pub struct Lagging {
    /// The seq asked for.
    pub wanted: u64,
    /// The twin's seq when it gave up.
    pub applied: u64,
}

/// Held while a request runs on the twin: replays wait; on drop, what the request wrote is rolled
/// back and its wanted seq released.
pub struct Entered<'a> {
    twin: &'a Twin,
    at: u64,
    wanted: Option<u64>,
    _read: RwLockReadGuard<'a, ()>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if runtime_abi::StoreBackend::seq(&*self.twin.store) != self.at
            && let Err(e) = self.twin.store.rollback_to(self.at)
        {
            tracing::warn!(error = %e, "twin: cannot roll back a request's writes; taking a snapshot");
            self.twin.epoch.store(0, Ordering::Release);
        }
        if let Some(n) = self.wanted {
            self.twin.unwant(n);
        }
    }
}

impl Twin {
    /// A twin of the node whose admin listener is `leader`.
    pub fn new(
        leader: SocketAddr,
        token: String,
        store: Arc<NodeStore>,
        mirror_wait: Duration,
        replay_delay: Duration,
        auto_envelope: bool,
    ) -> Arc<Twin> {
        Arc::new(Twin {
            leader,
            token,
            store,
            mirror_wait,
            replay_delay,
            auto_envelope,
            gate: RwLock::new(()),
            wanted: Mutex::new(BTreeMap::new()),
            released: Notify::new(),
            epoch: AtomicU64::new(0),
            leader_seq: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            ops_applied: AtomicU64::new(0),
            skipped_lag: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })
    }

    fn applied(&self) -> u64 {
        runtime_abi::StoreBackend::seq(&*self.store)
    }

    /// `/health`'s `twin` object.
    pub fn health(&self) -> serde_json::Value {
        let applied = self.applied();
        let leader = self.leader_seq.load(Ordering::Acquire);
        serde_json::json!({
            "leader": self.leader.to_string(),
            "applied_seq": applied,
            "leader_seq": leader,
            "lag_seq": leader.saturating_sub(applied),
            "connected": self.connected.load(Ordering::Acquire),
            "ops_applied": self.ops_applied.load(Ordering::Relaxed),
            "resyncs": self.resyncs.load(Ordering::Relaxed),
            "mirrors_answered": self.compared.load(Ordering::Relaxed),
            "mirrors_skipped_lag": self.skipped_lag.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }

    /// Prometheus lines of the twin.
    pub fn metrics_text(&self) -> String {
        let applied = self.applied();
        let leader = self.leader_seq.load(Ordering::Acquire);
        format!(
            "# TYPE janus_twin_applied_seq gauge\njanus_twin_applied_seq {applied}\n\
             # TYPE janus_twin_lag_seq gauge\njanus_twin_lag_seq {}\n\
             # TYPE janus_twin_resyncs_total counter\njanus_twin_resyncs_total {}\n\
             # TYPE janus_twin_mirrors_total counter\n\
             janus_twin_mirrors_total{{result=\"answered\"}} {}\n\
             janus_twin_mirrors_total{{result=\"skipped_lag\"}} {}\n",
            leader.saturating_sub(applied),
            self.resyncs.load(Ordering::Relaxed),
            self.compared.load(Ordering::Relaxed),
            self.skipped_lag.load(Ordering::Relaxed),
        )
    }

    fn want(&self, n: u64) {
        *self
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(n)
            .or_default() += 1;
    }

    fn unwant(&self, n: u64) {
        {
            let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = w.get_mut(&n) {
                *c -= 1;
                if *c == 0 {
                    w.remove(&n);
                }
            }
        }
        self.released.notify_waiters();
    }

    fn first_wanted_from(&self, from: u64) -> Option<u64> {
        self.wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range(from..)
            .next()
            .map(|(k, _)| *k)
    }

    /// Enters a request: a mirrored one (`wanted`) once the twin is at exactly that seq, any other
    /// at the current state.
    pub async fn enter(&self, wanted: Option<u64>) -> Result<Entered<'_>, Lagging> {
        let Some(n) = wanted else {
            let read = self.gate.read().await;
            return Ok(Entered {
                twin: self,
                at: self.applied(),
                wanted: None,
                _read: read,
            });
        };
        self.want(n);
        let deadline = tokio::time::Instant::now() + self.mirror_wait;
        loop {
            let changed = self.store.changed();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let applied = self.applied();
            if applied == n {
                let read = self.gate.read().await;
                if self.applied() == n {
                    self.compared.fetch_add(1, Ordering::Relaxed);
                    return Ok(Entered {
                        twin: self,
                        at: n,
                        wanted: Some(n),
                        _read: read,
                    });
                }
                continue;
            }
            if applied > n || tokio::time::timeout_at(deadline, changed).await.is_err() {
                self.unwant(n);
                self.skipped_lag.fetch_add(1, Ordering::Relaxed);
                return Err(Lagging {
                    wanted: n,
                    applied: self.applied(),
                });
            }
        }
    }

    fn note_error(&self, e: String) {
        self.connected.store(false, Ordering::Release);
        tracing::debug!(error = %e, leader = %self.leader, "twin: leader call failed");
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    /// Replays `ops`, pausing at a seq a mirrored request wants until it ran (bounded).
    async fn replay(&self, ops: &[runtime_abi::Op]) -> Result<(), runtime_abi::StoreError> {
        let mut rest = ops;
        while !rest.is_empty() {
            let applied = self.applied();
            if let Some(w) = self.first_wanted_from(applied)
                && w == applied
            {
                let started = Instant::now();
                while self.first_wanted_from(applied) == Some(applied)
                    && started.elapsed() < self.mirror_wait
                {
                    let released = self.released.notified();
                    let mut released = std::pin::pin!(released);
                    released.as_mut().enable();
                    if self.first_wanted_from(applied) != Some(applied) {
                        break;
                    }
                    let left = self.mirror_wait.saturating_sub(started.elapsed());
                    let _ = tokio::time::timeout(left, released).await;
                }
            }
            // Apply up to (and including) the next wanted seq, then look again.
            let stop = self
                .first_wanted_from(applied + 1)
                .and_then(|w| rest.iter().position(|o| o.seq == w))
                .map_or(rest.len(), |i| i + 1);
            let (now, later) = rest.split_at(stop);
            {
                let _w = self.gate.write().await;
                self.store.apply_ops(now)?;
            }
            self.ops_applied
                .fetch_add(now.len() as u64, Ordering::Relaxed);
            rest = later;
        }
        Ok(())
    }

    /// Follows the leader until `stop`.
    pub async fn run(self: Arc<Twin>, mut stop: watch::Receiver<bool>) {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let step = self.step(&client);
            tokio::select! {
                _ = crate::conn::stopped(&mut stop) => return,
                r = step => if let Err(e) = r {
                    self.note_error(e);
                    tokio::select! {
                        _ = crate::conn::stopped(&mut stop) => return,
                        _ = tokio::time::sleep(Duration::from_millis(RETRY_MS)) => {}
                    }
                },
            }
        }
    }

    async fn get(
        &self,
        client: &Client<HttpConnector, Empty<Bytes>>,
        path: &str,
        timeout: Duration,
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
        let req = http::Request::get(format!("http://{}{path}", self.leader))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            // A snapshot of a full store: the leader's own cap (twice its size plus 1 MiB).
            let cap = self
                .store
                .limits()
                .max_total_bytes
                .saturating_mul(2)
                .saturating_add(1 << 20);
            let body = Limited::new(body, cap)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("GET {path}: no answer in {timeout:?}"))?
    }

    /// Runs under the leader's heap size when it reports one (a unikernel's `/health` `heap_bytes`).
    async fn adopt_envelope(&self, client: &Client<HttpConnector, Empty<Bytes>>) {
        let Ok((http::StatusCode::OK, _, body)) =
            self.get(client, "/health", Duration::from_secs(5)).await
        else {
            return;
        };
        let heap = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|h| h["heap_bytes"].as_u64());
        if let Some(bytes) = heap
            && bytes != crate::envelope::cap()
        {
            crate::envelope::set_cap(bytes);
            tracing::info!(bytes, "twin: running under the leader's heap size");
        }
    }

    async fn step(&self, client: &Client<HttpConnector, Empty<Bytes>>) -> Result<(), String> {
        let since = self.applied();
        let asked = tokio::time::Instant::now();
        let (status, headers, body) = self
            .get(
                client,
                &format!("/state/log?since={since}&wait_ms={POLL_WAIT_MS}"),
                Duration::from_millis(POLL_WAIT_MS + 5_000),
            )
            .await?;
        self.connected.store(true, Ordering::Release);
        let epoch = header_u64(&headers, node::STATE_EPOCH);
        match status {
            http::StatusCode::OK => {
                let mine = self.epoch.load(Ordering::Acquire);
                match (mine, epoch) {
                    // A fresh twin replaying from the leader's first op takes its history.
                    (0, Some(e)) if since == 0 => {
                        self.epoch.store(e, Ordering::Release);
                        self.store.set_epoch(e);
                        if self.auto_envelope {
                            self.adopt_envelope(client).await;
                        }
                    }
                    (m, Some(e)) if m == e => {}
                    _ => return self.resync(client).await,
                }
                let ops = runtime_abi::decode_ops(&body).map_err(|e| format!("op log: {e}"))?;
                if let Some(to) = header_u64(&headers, node::STATE_SEQ) {
                    self.leader_seq.fetch_max(to, Ordering::AcqRel);
                }
                if ops.first().is_some_and(|o| o.seq != since + 1) {
                    return self.resync(client).await;
                }
                if !ops.is_empty() {
                    // Hold the batch back: a mirror of a request the leader answered at one of
                    // these seqs then finds the twin behind it (and waits), not already past it.
                    tokio::time::sleep_until(asked + self.replay_delay).await;
                }
                if self.replay(&ops).await.is_err() {
                    return self.resync(client).await;
                }
                Ok(())
            }
            http::StatusCode::GONE | http::StatusCode::CONFLICT => self.resync(client).await,
            s => Err(format!(
                "GET /state/log: {s}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }

    /// Takes the leader's whole state.
    async fn resync(&self, client: &Client<HttpConnector, Empty<Bytes>>) -> Result<(), String> {
        let (status, headers, body) = self.get(client, "/state", Duration::from_secs(30)).await?;
        if status != http::StatusCode::OK {
            return Err(format!("GET /state: {status}"));
        }
        let epoch = header_u64(&headers, node::STATE_EPOCH)
            .ok_or_else(|| format!("GET /state: no {} header", node::STATE_EPOCH))?;
        let seq = {
            let _w = self.gate.write().await;
            self.store
                .restore_as(&body, epoch)
                .map_err(|e| format!("restore: {e}"))?
        };
        // Counted before anything else is awaited: the restored seq is already visible.
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        self.epoch.store(epoch, Ordering::Release);
        self.leader_seq.store(seq, Ordering::Release);
        if self.auto_envelope {
            self.adopt_envelope(client).await;
        }
        tracing::info!(leader = %self.leader, seq, "twin: took the leader's snapshot");
        Ok(())
    }
}

fn header_u64(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}
