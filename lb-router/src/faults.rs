//! The durable fault store: one SQLite table `faults` (schema in `lb-router/README.md`), opened in WAL
//! mode with `synchronous=FULL` by default so that a row whose insert returned is on disk before the
//! router acknowledges it to anyone (the client sees its id in `x-janus-fault-id`).
//!
//! This is also the read API for the `janus faults list|show|repro` command: [`FaultStore::open`],
//! [`FaultStore::list`], [`FaultStore::get`]. The API is blocking; the router calls it from
//! `spawn_blocking`.

use std::path::Path;
use std::sync::Mutex;

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

const SCHEMA_VERSION: i64 = 1;

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
";

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

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// The store. Cheap to share behind an `Arc`; one connection guarded by a mutex.
#[derive(Debug)]
pub struct FaultStore {
    conn: Mutex<Connection>,
}

/// Columns 0..=11 of both queries: the summary part of a row.
fn summary_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FaultSummary> {
    Ok(FaultSummary {
        id: r.get(0)?,
        time_ms: r.get(1)?,
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
    })
}

fn u64_to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl FaultStore {
    /// Opens (creating if needed) with full durability.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FaultStoreError> {
        Self::open_with(path, Durability::Full)
    }

    pub fn open_with(
        path: impl AsRef<Path>,
        durability: Durability,
    ) -> Result<Self, FaultStoreError> {
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
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(FaultStoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, FaultStoreError> {
        self.conn.lock().map_err(|_| FaultStoreError::Poisoned)
    }

    /// Inserts a fault; when this returns `Ok(id)` the row is committed (and, with
    /// [`Durability::Full`], fsynced).
    pub fn insert(&self, f: &NewFault) -> Result<i64, FaultStoreError> {
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO faults (time_ms, kind, route, method, path, request_headers, request_body,
                request_body_truncated, trace_id, stable_node, stable_outcome, stable_status, stable_state_seq,
                stable_state_seq_source, debug_node, debug_outcome, debug_status, debug_trace_id,
                stable_response_headers, stable_response_body, debug_response_headers, debug_response_body, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
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
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Attaches the debug node's trace (or why it could not be fetched).
    pub fn attach_trace(
        &self,
        id: i64,
        trace: Result<String, String>,
    ) -> Result<(), FaultStoreError> {
        let (t, e) = match trace {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        self.lock()?.execute(
            "UPDATE faults SET debug_trace = ?2, debug_trace_error = ?3 WHERE id = ?1",
            params![id, t, e],
        )?;
        Ok(())
    }

    /// Attaches the stable node's state snapshot (or why it could not be fetched).
    pub fn attach_state(
        &self,
        id: i64,
        state: Result<Vec<u8>, String>,
    ) -> Result<(), FaultStoreError> {
        let (s, e) = match state {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        self.lock()?.execute(
            "UPDATE faults SET stable_state = ?2, stable_state_error = ?3 WHERE id = ?1",
            params![id, s, e],
        )?;
        Ok(())
    }

    /// Faults matching the filter, newest first.
    pub fn list(&self, filter: &FaultFilter) -> Result<Vec<FaultSummary>, FaultStoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, time_ms, kind, route, method, path, trace_id, stable_node, stable_outcome, debug_node,
                    debug_outcome, detail
             FROM faults
             WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR route = ?2)
               AND (?3 IS NULL OR time_ms >= ?3) AND (?4 IS NULL OR time_ms <= ?4)
             ORDER BY id DESC LIMIT ?5",
        )?;
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
        let mut stmt = conn.prepare_cached(
            "SELECT id, time_ms, kind, route, method, path, trace_id, stable_node, stable_outcome, debug_node,
                    debug_outcome, detail, request_headers, request_body, request_body_truncated, stable_status,
                    stable_state_seq, stable_state_seq_source, stable_state, stable_state_error, debug_status,
                    debug_trace_id, debug_trace, debug_trace_error, stable_response_headers, stable_response_body,
                    debug_response_headers, debug_response_body
             FROM faults WHERE id = ?1",
        )?;
        let rec = stmt
            .query_row(params![id], |r| {
                Ok(FaultRecord {
                    summary: summary_from_row(r)?,
                    request_headers: r.get(12)?,
                    request_body: r.get(13)?,
                    request_body_truncated: r.get(14)?,
                    stable_status: r.get(15)?,
                    stable_state_seq: r
                        .get::<_, Option<i64>>(16)?
                        .and_then(|v| u64::try_from(v).ok()),
                    stable_state_seq_source: r.get(17)?,
                    stable_state: r.get(18)?,
                    stable_state_error: r.get(19)?,
                    debug_status: r.get(20)?,
                    debug_trace_id: r.get(21)?,
                    debug_trace: r.get(22)?,
                    debug_trace_error: r.get(23)?,
                    stable_response_headers: r.get(24)?,
                    stable_response_body: r.get(25)?,
                    debug_response_headers: r.get(26)?,
                    debug_response_body: r.get(27)?,
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

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
