//! The durable fault store: SQLite tables `faults` and `states` (schema in `lb-router/README.md`),
//! opened in WAL mode with `synchronous=FULL` by default so that a row whose write was acknowledged is
//! on disk before the router acknowledges it to anyone (the client sees its id in `x-janus-fault-id`).
//!
//! Writes go through one writer thread that commits whatever is queued in one transaction (group
//! commit): a fault storm costs one fsync per batch, not one per fault, and the request path never
//! waits on a lock held by another request's fsync. Hygiene, in the writer: the same (kind, node,
//! outcome, method, path) within `dedupe_window_ms` of a row's first occurrence is counted into that
//! row (`count`, `last_ms`) instead of a new one; retention drops the oldest rows past `max_rows` or `max_bytes`;
//! state snapshots are stored once per content (SHA-256) in `states`.
//!
//! This is also the read API for the `janus faults list|show|repro` command: [`FaultStore::open`],
//! [`FaultStore::list`], [`FaultStore::get`] (on a connection of their own: WAL readers never wait for
//! the writer).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Failures of the fault store. Always `internal`; a write may be retried.
#[derive(Debug, thiserror::Error)]
pub enum FaultStoreError {
    #[error("fault store (internal, retry is safe): sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("fault store (internal): the store's lock was poisoned by a panic")]
    Poisoned,
    #[error(
        "fault store (internal): schema version {found} is newer than this build understands ({supported})"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("fault store (internal, retry is safe): the commit of a batch failed: {0}")]
    Batch(String),
    #[error("fault store (internal): the writer thread is gone")]
    WriterGone,
}

/// Durability policy for commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every commit: an acknowledged fault survives a crash of the process and of the machine.
    Full,
    /// WAL without fsync per commit: survives a crash of the process (SIGKILL), may lose the last
    /// commits on power loss. Cheaper; for fault storms on slow disks.
    Normal,
}

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS faults (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms                 INTEGER NOT NULL,
    kind                    TEXT NOT NULL,
    route                   TEXT NOT NULL,
    method                  TEXT NOT NULL,
    path                    TEXT NOT NULL,
    request_headers         TEXT NOT NULL,
    request_body            BLOB NOT NULL,
    request_body_truncated  INTEGER NOT NULL,
    trace_id                TEXT NOT NULL,
    stable_node             TEXT,
    stable_outcome          TEXT,
    stable_status           INTEGER,
    stable_state_seq        INTEGER,
    stable_state_seq_source TEXT,
    stable_state            BLOB,
    stable_state_error      TEXT,
    debug_node              TEXT,
    debug_outcome           TEXT,
    debug_status            INTEGER,
    debug_trace_id          TEXT,
    debug_trace             TEXT,
    debug_trace_error       TEXT,
    stable_response_headers TEXT,
    stable_response_body    BLOB,
    debug_response_headers  TEXT,
    debug_response_body     BLOB,
    detail                  TEXT
);
CREATE INDEX IF NOT EXISTS faults_time ON faults(time_ms);
CREATE INDEX IF NOT EXISTS faults_kind_time ON faults(kind, time_ms);
CREATE INDEX IF NOT EXISTS faults_route_time ON faults(route, time_ms);
CREATE TABLE IF NOT EXISTS states (
    hash  TEXT PRIMARY KEY,
    data  BLOB NOT NULL,
    size  INTEGER NOT NULL
);
";

/// Version 1 -> 2: dedupe counts, retention accounting, snapshots by content hash.
const MIGRATE_2: &str = r"
ALTER TABLE faults ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE faults ADD COLUMN last_ms INTEGER;
ALTER TABLE faults ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE faults ADD COLUMN stable_state_hash TEXT;
UPDATE faults SET last_ms = time_ms,
    bytes = length(request_headers) + length(request_body) + COALESCE(length(stable_state), 0)
          + COALESCE(length(debug_trace), 0) + COALESCE(length(stable_response_body), 0)
          + COALESCE(length(debug_response_body), 0) + COALESCE(length(detail), 0);
";

/// Hygiene and durability settings of a store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    pub durability: Durability,
    /// A fault with the (kind, node, outcome) of a row first seen less than this long ago is counted
    /// into that row. 0: every fault is a row of its own.
    pub dedupe_window_ms: i64,
    /// Most rows kept; the oldest go first.
    pub max_rows: u64,
    /// Most bytes of stored request/response/trace/state data kept; the oldest rows go first.
    pub max_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            dedupe_window_ms: 60_000,
            max_rows: 50_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Where a recorded fault went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub id: i64,
    /// Counted into an existing row (same kind, node and outcome within the dedupe window).
    pub merged: bool,
}

/// A fault to insert.
#[derive(Clone, Debug, Default)]
pub struct NewFault {
    pub time_ms: i64,
    /// `fault` (a stable node failed a request) or `divergence` (a mirrored answer differed).
    pub kind: String,
    pub route: String,
    pub method: String,
    pub path: String,
    /// JSON object `{name: [values]}`, already redacted.
    pub request_headers: String,
    pub request_body: Vec<u8>,
    pub request_body_truncated: bool,
    pub trace_id: String,
    pub stable_node: Option<String>,
    pub stable_outcome: Option<String>,
    pub stable_status: Option<u16>,
    pub stable_state_seq: Option<u64>,
    /// `response` (from the failed response's `x-janus-state-seq`) or `last_seen`.
    pub stable_state_seq_source: Option<String>,
    pub debug_node: Option<String>,
    pub debug_outcome: Option<String>,
    pub debug_status: Option<u16>,
    pub debug_trace_id: Option<String>,
    pub stable_response_headers: Option<String>,
    pub stable_response_body: Option<Vec<u8>>,
    pub debug_response_headers: Option<String>,
    pub debug_response_body: Option<Vec<u8>>,
    pub detail: Option<String>,
}

/// One row, as listed (no blobs).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultSummary {
    pub id: i64,
    pub time_ms: i64,
    pub kind: String,
    pub route: String,
    pub method: String,
    pub path: String,
    pub trace_id: String,
    pub stable_node: Option<String>,
    pub stable_outcome: Option<String>,
    pub debug_node: Option<String>,
    pub debug_outcome: Option<String>,
    pub detail: Option<String>,
    /// Occurrences counted into this row (the first one's details are kept), and the last one's time.
    pub count: i64,
    pub last_ms: i64,
}

/// One row in full.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultRecord {
    #[serde(flatten)]
    pub summary: FaultSummary,
    pub request_headers: String,
    #[serde(serialize_with = "ser_bytes")]
    pub request_body: Vec<u8>,
    pub request_body_truncated: bool,
    pub stable_status: Option<u16>,
    pub stable_state_seq: Option<u64>,
    pub stable_state_seq_source: Option<String>,
    #[serde(serialize_with = "ser_opt_bytes")]
    pub stable_state: Option<Vec<u8>>,
    pub stable_state_error: Option<String>,
    pub debug_status: Option<u16>,
    pub debug_trace_id: Option<String>,
    /// The debug node's trace (JSON text) as fetched from its admin `/traces/{trace_id}`.
    pub debug_trace: Option<String>,
    pub debug_trace_error: Option<String>,
    pub stable_response_headers: Option<String>,
    #[serde(serialize_with = "ser_opt_bytes")]
    pub stable_response_body: Option<Vec<u8>>,
    pub debug_response_headers: Option<String>,
    #[serde(serialize_with = "ser_opt_bytes")]
    pub debug_response_body: Option<Vec<u8>>,
}

/// Bytes in JSON: a string if UTF-8, else `{"base64": "..."}`.
fn ser_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(b) {
        Ok(text) => s.serialize_str(text),
        Err(_) => {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry("base64", &base64(b))?;
            m.end()
        }
    }
}

fn ser_opt_bytes<S: serde::Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => ser_bytes(b, s),
        None => s.serialize_none(),
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Filters for [`FaultStore::list`].
#[derive(Clone, Debug, Default)]
pub struct FaultFilter {
    pub kind: Option<String>,
    pub route: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Newest first; at most this many (default 100, max 10 000).
    pub limit: Option<u32>,
}

/// The store. Cheap to share behind an `Arc`: a reading connection guarded by a mutex, and the
/// writer thread's queue.
#[derive(Debug)]
pub struct FaultStore {
    conn: Mutex<Connection>,
    writer: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    commits: std::sync::Arc<AtomicU64>,
}

/// One write for the writer thread.
#[derive(Debug)]
pub enum WriteOp {
    Insert(Box<NewFault>),
    AttachTrace(i64, Result<String, String>),
    AttachState(i64, Result<Vec<u8>, String>),
}

#[derive(Debug)]
struct Job {
    op: WriteOp,
    done: tokio::sync::oneshot::Sender<Result<Recorded, FaultStoreError>>,
}

/// Columns 0..=13 of both queries: the summary part of a row.
fn summary_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FaultSummary> {
    let time_ms: i64 = r.get(1)?;
    Ok(FaultSummary {
        id: r.get(0)?,
        time_ms,
        kind: r.get(2)?,
        route: r.get(3)?,
        method: r.get(4)?,
        path: r.get(5)?,
        trace_id: r.get(6)?,
        stable_node: r.get(7)?,
        stable_outcome: r.get(8)?,
        debug_node: r.get(9)?,
        debug_outcome: r.get(10)?,
        detail: r.get(11)?,
        count: r.get(12)?,
        last_ms: r.get::<_, Option<i64>>(13)?.unwrap_or(time_ms),
    })
}

const SUMMARY_COLUMNS: &str = "f.id, f.time_ms, f.kind, f.route, f.method, f.path, f.trace_id, f.stable_node, \
     f.stable_outcome, f.debug_node, f.debug_outcome, f.detail, f.count, f.last_ms";

fn u64_to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn connect(path: &Path, durability: Durability) -> Result<Connection, FaultStoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    Ok(conn)
}

impl FaultStore {
    /// Opens (creating if needed) with full durability and the default hygiene settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FaultStoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Self, FaultStoreError> {
        let path = path.as_ref();
        let conn = connect(path, opts.durability)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(FaultStoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        if version < 2 {
            conn.execute_batch(&format!("BEGIN; {MIGRATE_2} COMMIT;"))?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let write_conn = connect(path, opts.durability)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let commits = std::sync::Arc::new(AtomicU64::new(0));
        let mut writer = Writer::new(write_conn, opts, commits.clone())?;
        let thread = std::thread::Builder::new()
            .name("fault-store".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| FaultStoreError::Batch(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            conn: Mutex::new(conn),
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            commits,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, FaultStoreError> {
        self.conn.lock().map_err(|_| FaultStoreError::Poisoned)
    }

    /// Queues a write for the next group commit; the receiver resolves once it is committed (and,
    /// with [`Durability::Full`], fsynced).
    pub fn submit(
        &self,
        op: WriteOp,
    ) -> tokio::sync::oneshot::Receiver<Result<Recorded, FaultStoreError>> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let guard = self.writer.lock();
        match guard.as_ref().map(|g| g.as_ref()) {
            Ok(Some(w)) => {
                if let Err(std::sync::mpsc::SendError(job)) = w.send(Job { op, done }) {
                    let _ = job.done.send(Err(FaultStoreError::WriterGone));
                }
            }
            _ => {
                let _ = done.send(Err(FaultStoreError::WriterGone));
            }
        }
        rx
    }

    /// Records a fault (blocking: not for async contexts; the router awaits [`FaultStore::submit`]).
    pub fn record(&self, f: &NewFault) -> Result<Recorded, FaultStoreError> {
        self.submit(WriteOp::Insert(Box::new(f.clone())))
            .blocking_recv()
            .map_err(|_| FaultStoreError::WriterGone)?
    }

    /// Inserts a fault (or counts it into its row); when this returns `Ok(id)` the row is committed.
    pub fn insert(&self, f: &NewFault) -> Result<i64, FaultStoreError> {
        self.record(f).map(|r| r.id)
    }

    fn write_blocking(&self, op: WriteOp) -> Result<(), FaultStoreError> {
        self.submit(op)
            .blocking_recv()
            .map_err(|_| FaultStoreError::WriterGone)?
            .map(|_| ())
    }

    /// Attaches the debug node's trace (or why it could not be fetched).
    pub fn attach_trace(
        &self,
        id: i64,
        trace: Result<String, String>,
    ) -> Result<(), FaultStoreError> {
        self.write_blocking(WriteOp::AttachTrace(id, trace))
    }

    /// Attaches the stable node's state snapshot (or why it could not be fetched).
    pub fn attach_state(
        &self,
        id: i64,
        state: Result<Vec<u8>, String>,
    ) -> Result<(), FaultStoreError> {
        self.write_blocking(WriteOp::AttachState(id, state))
    }

    /// Transactions committed by the writer so far (a batch of writes is one).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Faults matching the filter, newest first.
    pub fn list(&self, filter: &FaultFilter) -> Result<Vec<FaultSummary>, FaultStoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS}
             FROM faults f
             WHERE (?1 IS NULL OR f.kind = ?1) AND (?2 IS NULL OR f.route = ?2)
               AND (?3 IS NULL OR f.time_ms >= ?3) AND (?4 IS NULL OR f.time_ms <= ?4)
             ORDER BY f.id DESC LIMIT ?5"
        ))?;
        let limit = filter.limit.unwrap_or(100).min(10_000);
        let rows = stmt.query_map(
            params![
                filter.kind,
                filter.route,
                filter.since_ms,
                filter.until_ms,
                limit
            ],
            summary_from_row,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// One fault in full.
    pub fn get(&self, id: i64) -> Result<Option<FaultRecord>, FaultStoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS}, f.request_headers, f.request_body, f.request_body_truncated,
                    f.stable_status, f.stable_state_seq, f.stable_state_seq_source,
                    COALESCE(s.data, f.stable_state), f.stable_state_error, f.debug_status,
                    f.debug_trace_id, f.debug_trace, f.debug_trace_error, f.stable_response_headers,
                    f.stable_response_body, f.debug_response_headers, f.debug_response_body
             FROM faults f LEFT JOIN states s ON s.hash = f.stable_state_hash WHERE f.id = ?1"
        ))?;
        let rec = stmt
            .query_row(params![id], |r| {
                Ok(FaultRecord {
                    summary: summary_from_row(r)?,
                    request_headers: r.get(14)?,
                    request_body: r.get(15)?,
                    request_body_truncated: r.get(16)?,
                    stable_status: r.get(17)?,
                    stable_state_seq: r
                        .get::<_, Option<i64>>(18)?
                        .and_then(|v| u64::try_from(v).ok()),
                    stable_state_seq_source: r.get(19)?,
                    stable_state: r.get(20)?,
                    stable_state_error: r.get(21)?,
                    debug_status: r.get(22)?,
                    debug_trace_id: r.get(23)?,
                    debug_trace: r.get(24)?,
                    debug_trace_error: r.get(25)?,
                    stable_response_headers: r.get(26)?,
                    stable_response_body: r.get(27)?,
                    debug_response_headers: r.get(28)?,
                    debug_response_body: r.get(29)?,
                })
            })
            .optional()?;
        Ok(rec)
    }

    /// Number of rows (all kinds).
    pub fn count(&self) -> Result<i64, FaultStoreError> {
        Ok(self
            .lock()?
            .query_row("SELECT COUNT(*) FROM faults", [], |r| r.get(0))?)
    }

    /// Number of distinct state snapshots stored.
    pub fn state_count(&self) -> Result<i64, FaultStoreError> {
        Ok(self
            .lock()?
            .query_row("SELECT COUNT(*) FROM states", [], |r| r.get(0))?)
    }
}

impl Drop for FaultStore {
    /// Lets the writer finish what is queued, so that a store dropped and opened again sees it all.
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// Kind, node, outcome, method, path without query.
type DedupeKey = [String; 5];

/// Most writes taken into one transaction.
const MAX_BATCH: usize = 512;

/// The writer thread's state: its connection, the open dedupe windows and the retention accounting.
struct Writer {
    conn: Connection,
    opts: StoreOptions,
    /// Dedupe key -> (row id, first occurrence ms).
    windows: HashMap<DedupeKey, (i64, i64)>,
    rows: u64,
    bytes: u64,
    commits: std::sync::Arc<AtomicU64>,
}

fn fault_bytes(f: &NewFault) -> u64 {
    let opt = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
    let opt_s = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    (f.request_headers.len()
        + f.request_body.len()
        + opt(&f.stable_response_body)
        + opt(&f.debug_response_body)
        + opt_s(&f.stable_response_headers)
        + opt_s(&f.debug_response_headers)
        + opt_s(&f.detail)) as u64
}

impl Writer {
    fn new(
        conn: Connection,
        opts: StoreOptions,
        commits: std::sync::Arc<AtomicU64>,
    ) -> Result<Self, FaultStoreError> {
        let (rows, bytes): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) + (SELECT COALESCE(SUM(size), 0) FROM states) FROM faults",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Self {
            conn,
            opts,
            windows: HashMap::new(),
            rows: rows.max(0) as u64,
            bytes: bytes.max(0) as u64,
            commits,
        })
    }

    fn run(&mut self, rx: &std::sync::mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let results = self.commit(&jobs);
            for (job, r) in jobs.into_iter().zip(results) {
                let _ = job.done.send(r);
            }
        }
    }

    /// Applies a batch in one transaction; every write of a failed commit fails. Accounting and
    /// dedupe windows are rolled back with it.
    fn commit(&mut self, jobs: &[Job]) -> Vec<Result<Recorded, FaultStoreError>> {
        let saved = (self.windows.clone(), self.rows, self.bytes);
        let outcome = (|| -> Result<Vec<Result<Recorded, FaultStoreError>>, rusqlite::Error> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let mut results = Vec::with_capacity(jobs.len());
            for job in jobs {
                results.push(self.apply(&job.op));
            }
            self.retain()?;
            self.conn.execute_batch("COMMIT")?;
            Ok(results)
        })();
        match outcome {
            Ok(results) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                results
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                (self.windows, self.rows, self.bytes) = saved;
                let why = e.to_string();
                jobs.iter()
                    .map(|_| Err(FaultStoreError::Batch(why.clone())))
                    .collect()
            }
        }
    }

    fn apply(&mut self, op: &WriteOp) -> Result<Recorded, FaultStoreError> {
        match op {
            WriteOp::Insert(f) => self.insert(f),
            WriteOp::AttachTrace(id, trace) => {
                let (t, e) = match trace {
                    Ok(t) => (Some(t.as_str()), None),
                    Err(e) => (None, Some(e.as_str())),
                };
                let add = t.map_or(0, str::len) + e.map_or(0, str::len);
                let n = self.conn.execute(
                    "UPDATE faults SET debug_trace = ?2, debug_trace_error = ?3, bytes = bytes + ?4 WHERE id = ?1",
                    params![id, t, e, add as i64],
                )?;
                self.bytes += if n > 0 { add as u64 } else { 0 };
                Ok(Recorded {
                    id: *id,
                    merged: false,
                })
            }
            WriteOp::AttachState(id, state) => {
                match state {
                    Ok(data) => {
                        use sha2::Digest;
                        let hash: String = sha2::Sha256::digest(data)
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        let new = self.conn.execute(
                            "INSERT OR IGNORE INTO states (hash, data, size) VALUES (?1, ?2, ?3)",
                            params![hash, data, data.len() as i64],
                        )?;
                        if new > 0 {
                            self.bytes += data.len() as u64;
                        }
                        self.conn.execute(
                            "UPDATE faults SET stable_state_hash = ?2, stable_state = NULL, stable_state_error = NULL WHERE id = ?1",
                            params![id, hash],
                        )?;
                    }
                    Err(e) => {
                        self.conn.execute(
                            "UPDATE faults SET stable_state = NULL, stable_state_error = ?2 WHERE id = ?1",
                            params![id, e],
                        )?;
                    }
                }
                Ok(Recorded {
                    id: *id,
                    merged: false,
                })
            }
        }
    }

    /// What a fault is deduplicated by, for the kinds that are: kind, node, outcome, and the request's
    /// method and path without its query (two bugs that fail the same way on one node stay apart;
    /// one bug hit with different arguments is one).
    fn dedupe_key(f: &NewFault) -> Option<DedupeKey> {
        let (node, outcome) = match f.kind.as_str() {
            "fault" => (f.stable_node.as_ref()?, f.stable_outcome.as_ref()?),
            "debug_fault" => (f.debug_node.as_ref()?, f.debug_outcome.as_ref()?),
            _ => return None,
        };
        let path = f.path.split('?').next().unwrap_or("");
        Some([
            f.kind.clone(),
            node.clone(),
            outcome.clone(),
            f.method.clone(),
            path.to_owned(),
        ])
    }

    fn insert(&mut self, f: &NewFault) -> Result<Recorded, FaultStoreError> {
        let key = Self::dedupe_key(f).filter(|_| self.opts.dedupe_window_ms > 0);
        if let Some(key) = &key
            && let Some(&(id, first_ms)) = self.windows.get(key)
            && f.time_ms.saturating_sub(first_ms) < self.opts.dedupe_window_ms
        {
            let n = self.conn.execute(
                "UPDATE faults SET count = count + 1, last_ms = MAX(COALESCE(last_ms, time_ms), ?2) WHERE id = ?1",
                params![id, f.time_ms],
            )?;
            if n > 0 {
                return Ok(Recorded { id, merged: true });
            }
        }
        let bytes = fault_bytes(f);
        self.conn.execute(
            "INSERT INTO faults (time_ms, kind, route, method, path, request_headers, request_body,
                request_body_truncated, trace_id, stable_node, stable_outcome, stable_status, stable_state_seq,
                stable_state_seq_source, debug_node, debug_outcome, debug_status, debug_trace_id,
                stable_response_headers, stable_response_body, debug_response_headers, debug_response_body, detail,
                count, last_ms, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, 1, ?1, ?24)",
            params![
                f.time_ms,
                f.kind,
                f.route,
                f.method,
                f.path,
                f.request_headers,
                f.request_body,
                f.request_body_truncated,
                f.trace_id,
                f.stable_node,
                f.stable_outcome,
                f.stable_status,
                f.stable_state_seq.map(u64_to_i64),
                f.stable_state_seq_source,
                f.debug_node,
                f.debug_outcome,
                f.debug_status,
                f.debug_trace_id,
                f.stable_response_headers,
                f.stable_response_body,
                f.debug_response_headers,
                f.debug_response_body,
                f.detail,
                bytes as i64,
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        self.rows += 1;
        self.bytes += bytes;
        if let Some(key) = key {
            self.windows.insert(key, (id, f.time_ms));
        }
        Ok(Recorded { id, merged: false })
    }

    /// Retention: drops the oldest rows while over `max_rows` or `max_bytes`, then the snapshots no
    /// row refers to any more.
    fn retain(&mut self) -> Result<(), rusqlite::Error> {
        if self.rows <= self.opts.max_rows && self.bytes <= self.opts.max_bytes {
            return Ok(());
        }
        let mut last = None;
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, bytes FROM faults ORDER BY id LIMIT 10000")?;
            let mut q = stmt.query([])?;
            while (self.rows > self.opts.max_rows || self.bytes > self.opts.max_bytes)
                && let Some(r) = q.next()?
            {
                let (id, b): (i64, i64) = (r.get(0)?, r.get(1)?);
                last = Some(id);
                self.rows = self.rows.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(b.max(0) as u64);
            }
        }
        if let Some(last) = last {
            self.conn
                .execute("DELETE FROM faults WHERE id <= ?1", params![last])?;
            let freed: i64 = self.conn.query_row(
                "SELECT COALESCE(SUM(size), 0) FROM states WHERE hash NOT IN
                     (SELECT stable_state_hash FROM faults WHERE stable_state_hash IS NOT NULL)",
                [],
                |r| r.get(0),
            )?;
            self.conn.execute(
                "DELETE FROM states WHERE hash NOT IN
                     (SELECT stable_state_hash FROM faults WHERE stable_state_hash IS NOT NULL)",
                [],
            )?;
            self.bytes = self.bytes.saturating_sub(freed.max(0) as u64);
            self.windows.retain(|_, (id, _)| *id > last);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lb-router-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tmp dir");
        dir.join("faults.db")
    }

    #[test]
    fn insert_list_get_roundtrip() {
        let path = tmp("roundtrip");
        let store = FaultStore::open(&path).expect("open");
        let mut f = NewFault {
            time_ms: 1000,
            kind: "fault".into(),
            route: "/kv".into(),
            method: "GET".into(),
            path: "/kv/a".into(),
            request_headers: "{}".into(),
            request_body: vec![0xff, 0x00],
            trace_id: "t".into(),
            stable_state_seq: Some(42),
            ..NewFault::default()
        };
        let a = store.insert(&f).expect("insert");
        f.kind = "divergence".into();
        f.time_ms = 2000;
        let b = store.insert(&f).expect("insert");
        store
            .attach_trace(a, Ok("{\"spans\":[]}".into()))
            .expect("trace");
        let all = store.list(&FaultFilter::default()).expect("list");
        assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b, a]);
        let div = store
            .list(&FaultFilter {
                kind: Some("divergence".into()),
                ..Default::default()
            })
            .expect("list");
        assert_eq!(div.len(), 1);
        let late = store
            .list(&FaultFilter {
                since_ms: Some(1500),
                ..Default::default()
            })
            .expect("list");
        assert_eq!(late[0].id, b);
        drop(store);
        let store = FaultStore::open(&path).expect("reopen");
        let rec = store.get(a).expect("get").expect("exists");
        assert_eq!(rec.stable_state_seq, Some(42));
        assert_eq!(rec.debug_trace.as_deref(), Some("{\"spans\":[]}"));
        let json = serde_json::to_string(&rec).expect("json");
        assert!(
            json.contains("\"request_body\":{\"base64\":\"/wA=\"}"),
            "{json}"
        );
        assert!(store.get(9999).expect("get").is_none());
    }

    fn fault(node: &str, outcome: &str, time_ms: i64) -> NewFault {
        NewFault {
            time_ms,
            kind: "fault".into(),
            route: "default".into(),
            method: "GET".into(),
            path: "/x".into(),
            request_headers: "{}".into(),
            trace_id: "t".into(),
            stable_node: Some(node.into()),
            stable_outcome: Some(outcome.into()),
            ..NewFault::default()
        }
    }

    fn opts(dedupe_window_ms: i64, max_rows: u64, max_bytes: u64) -> StoreOptions {
        StoreOptions {
            durability: Durability::Normal,
            dedupe_window_ms,
            max_rows,
            max_bytes,
        }
    }

    #[test]
    fn repeats_within_the_window_are_counted_into_one_row() {
        let store = FaultStore::open_with(tmp("dedupe"), opts(1000, 1000, 1 << 30)).expect("open");
        let first = store.record(&fault("s1", "panic", 0)).expect("record");
        assert!(!first.merged);
        for t in [10, 500, 999] {
            let r = store.record(&fault("s1", "panic", t)).expect("record");
            assert_eq!(
                r,
                Recorded {
                    id: first.id,
                    merged: true
                }
            );
        }
        // Another outcome, another node, or past the window: rows of their own.
        let mut other_path = fault("s1", "panic", 20);
        other_path.path = "/y".into();
        let mut same_path_other_query = fault("s1", "panic", 30);
        same_path_other_query.path = "/x?a=1".into();
        assert!(store.record(&same_path_other_query).expect("record").merged);
        let other = [
            fault("s1", "timeout", 20),
            fault("s2", "panic", 20),
            other_path,
            fault("s1", "panic", 1000),
        ];
        for f in &other {
            assert!(!store.record(f).expect("record").merged);
        }
        // Divergences are findings of their own: never merged.
        let mut d = fault("s1", "ok_200", 30);
        d.kind = "divergence".into();
        assert!(!store.record(&d).expect("record").merged);
        assert!(!store.record(&d).expect("record").merged);
        assert_eq!(store.count().expect("count"), 7);
        let row = store.get(first.id).expect("get").expect("row");
        assert_eq!((row.summary.count, row.summary.last_ms), (5, 999));
    }

    #[test]
    fn retention_drops_the_oldest_rows_by_count_and_by_bytes() {
        let store = FaultStore::open_with(tmp("retain-rows"), opts(0, 5, 1 << 30)).expect("open");
        let ids: Vec<i64> = (0..8)
            .map(|t| store.insert(&fault("s1", "panic", t)).expect("insert"))
            .collect();
        let kept: Vec<i64> = store
            .list(&FaultFilter::default())
            .expect("list")
            .iter()
            .map(|f| f.id)
            .rev()
            .collect();
        assert_eq!(kept, ids[3..]);

        let store = FaultStore::open_with(tmp("retain-bytes"), opts(0, 1000, 3500)).expect("open");
        for t in 0..10 {
            let mut f = fault("s1", "panic", t);
            f.request_body = vec![b'x'; 1000];
            store.insert(&f).expect("insert");
        }
        let n = store.count().expect("count");
        assert!(
            (1..=3).contains(&n),
            "{n} rows of ~1 kB kept under 3500 bytes"
        );
    }

    #[test]
    fn identical_states_are_stored_once_and_dropped_with_their_last_row() {
        let store = FaultStore::open_with(tmp("states"), opts(0, 3, 1 << 30)).expect("open");
        let ids: Vec<i64> = (0..3)
            .map(|t| store.insert(&fault("s1", "panic", t)).expect("insert"))
            .collect();
        for id in &ids {
            store
                .attach_state(*id, Ok(b"same state".to_vec()))
                .expect("attach");
        }
        assert_eq!(store.state_count().expect("states"), 1);
        for id in &ids {
            let rec = store.get(*id).expect("get").expect("row");
            assert_eq!(rec.stable_state.as_deref(), Some(&b"same state"[..]));
        }
        // Three new rows push the three old ones out, and their snapshot with them.
        for t in 3..6 {
            store.insert(&fault("s1", "panic", t)).expect("insert");
        }
        assert_eq!(store.state_count().expect("states"), 0);
    }

    /// Writers from many threads at once share commits (fsyncs): fewer commits than writes, none lost.
    #[test]
    fn concurrent_writes_are_group_committed() {
        let path = tmp("group");
        let store = std::sync::Arc::new(
            FaultStore::open_with(
                &path,
                StoreOptions {
                    durability: Durability::Full,
                    ..opts(0, 1_000_000, 1 << 40)
                },
            )
            .expect("open"),
        );
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|t| {
                            store
                                .insert(&fault("s1", "panic", i * 100 + t))
                                .expect("insert")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let ids: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(store.count().expect("count"), 400);
        assert!(
            store.commits() < 400,
            "{} commits for 400 writes",
            store.commits()
        );
        drop(store);
        let store = FaultStore::open(&path).expect("reopen");
        for id in ids {
            assert!(store.get(id).expect("get").is_some());
        }
    }

    /// A version 1 store (before dedupe and retention) opens and reads as version 2.
    #[test]
    fn a_version_1_store_is_migrated() {
        let path = tmp("v1");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(SCHEMA).expect("v1 schema");
            conn.execute(
                "INSERT INTO faults (time_ms, kind, route, method, path, request_headers, request_body,
                    request_body_truncated, trace_id) VALUES (5, 'fault', 'default', 'GET', '/', '{}', x'00', 0, 't')",
                [],
            )
            .expect("v1 row");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
        }
        let store = FaultStore::open(&path).expect("migrate");
        let rec = store.get(1).expect("get").expect("row");
        assert_eq!((rec.summary.count, rec.summary.last_ms), (1, 5));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
