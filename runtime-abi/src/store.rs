//! The key-value store with a versioned operation log.
//!
//! Layers:
//! - [`MemStore`]: the one store engine both backends run (so both builds have the same semantics and
//!   byte-identical snapshots). Every mutation gets the next sequence number and is logged with the value
//!   it replaced, so the engine can produce the state *as of* any sequence number within its retained log.
//! - The snapshot format ([`MemStore::snapshot`], [`MemStore::restore`]): versioned binary with a CRC-32.
//! - [`StoreBackend`]: the provider trait a backend implements, normally a lock around a `MemStore`.
//! - [`Store`]: the handle a service uses; each call runs in a `store.*` tracing span carrying the key
//!   and the sequence number.
//!
//! Snapshot format, all integers little-endian:
//! ```text
//! magic "JNSS" | version u8 = 1 | seq u64 | count u32 |
//!   count x (key_len u32 | key UTF-8 | value_len u32 | value) in ascending key order |
//! crc32 u32 (IEEE, over every byte before it)
//! ```

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

/// Snapshot magic bytes.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"JNSS";
/// Snapshot format version.
pub const SNAPSHOT_VERSION: u8 = 1;

/// Size limits of one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Longest key in bytes.
    pub max_key_bytes: usize,
    /// Largest value in bytes.
    pub max_value_bytes: usize,
    /// Upper bound of all keys plus values.
    pub max_total_bytes: usize,
    /// How many recent mutations are kept for [`MemStore::snapshot_at`].
    pub retain_ops: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_total_bytes: 16 << 20,
            retain_ops: 1024,
        }
    }
}

impl StoreLimits {
    /// Limits from a manifest's store declaration.
    pub fn from_spec(spec: &crate::StoreSpec) -> StoreLimits {
        StoreLimits {
            max_total_bytes: spec.max_bytes as usize,
            retain_ops: spec.retain_ops as usize,
            ..StoreLimits::default()
        }
    }
}

/// Why a store operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The key is empty or longer than the limit.
    BadKey,
    /// The value is larger than the limit.
    ValueTooLarge,
    /// The store would exceed its total size.
    Full,
    /// The asked sequence number is older than the retained log.
    NotRetained {
        /// Oldest sequence number the store can still produce.
        oldest: u64,
    },
    /// The asked sequence number has not happened yet.
    FutureSeq {
        /// The current sequence number.
        current: u64,
    },
    /// A snapshot could not be decoded; the state is unchanged.
    Corrupt(SnapshotError),
    /// The backend could not reach its store.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::BadKey => f.write_str("key is empty or too long"),
            StoreError::ValueTooLarge => f.write_str("value too large"),
            StoreError::Full => f.write_str("store is full"),
            StoreError::NotRetained { oldest } => {
                write!(
                    f,
                    "sequence number is older than the retained log (oldest {oldest})"
                )
            }
            StoreError::FutureSeq { current } => {
                write!(f, "sequence number is in the future (current {current})")
            }
            StoreError::Corrupt(e) => write!(f, "corrupt snapshot: {e}"),
            StoreError::Unavailable(e) => write!(f, "store unavailable: {e}"),
        }
    }
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than its own header or entries say.
    Truncated,
    /// Not a Janus snapshot.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u8),
    /// The checksum does not match.
    Checksum,
    /// A key is not UTF-8, keys are out of order or repeated, or bytes follow the checksum.
    Malformed,
    /// The contents break the store's limits.
    TooLarge,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Truncated => f.write_str("truncated"),
            SnapshotError::BadMagic => f.write_str("not a Janus snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            SnapshotError::Checksum => f.write_str("checksum mismatch"),
            SnapshotError::Malformed => f.write_str("malformed entries"),
            SnapshotError::TooLarge => f.write_str("contents exceed the store limits"),
        }
    }
}

/// What [`MemStore::update`]'s closure decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Store this value.
    Set(Vec<u8>),
    /// Delete the key.
    Delete,
    /// Change nothing (no sequence number is used).
    Keep,
}

/// One logged mutation: its sequence number, key and the value it replaced.
#[derive(Debug, Clone)]
struct LogEntry {
    seq: u64,
    key: String,
    prev: Option<Vec<u8>>,
}

/// The store engine.
#[derive(Debug, Clone)]
pub struct MemStore {
    map: BTreeMap<String, Vec<u8>>,
    seq: u64,
    log: VecDeque<LogEntry>,
    bytes: usize,
    limits: StoreLimits,
}

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The sequence number the state is at.
    pub seq: u64,
    /// Contents.
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl MemStore {
    /// An empty store at sequence number 0.
    pub fn new(limits: StoreLimits) -> MemStore {
        MemStore {
            map: BTreeMap::new(),
            seq: 0,
            log: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// The sequence number of the last mutation (0 for a fresh store).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The oldest sequence number [`MemStore::snapshot_at`] can produce.
    pub fn oldest_retained(&self) -> u64 {
        self.seq - self.log.len() as u64
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys plus values, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The limits.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Keys starting with `prefix` and their values, in key order, at most `limit`.
    pub fn list(&self, prefix: &str, limit: usize) -> Vec<(String, Vec<u8>)> {
        self.map
            .range::<str, _>((
                core::ops::Bound::Included(prefix),
                core::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Sets `key` to `value`; returns the mutation's sequence number.
    pub fn put(&mut self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        self.apply(key, Some(value))
    }

    /// Deletes `key`; returns the mutation's sequence number, or `None` when the key was absent (no
    /// mutation, no sequence number used).
    pub fn delete(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        self.check_key(key)?;
        if !self.map.contains_key(key) {
            return Ok(None);
        }
        self.apply(key, None).map(Some)
    }

    /// Reads `key` and decides its new value atomically; returns the new value and the mutation's
    /// sequence number (`None` for [`Update::Keep`]).
    pub fn update(
        &mut self,
        key: &str,
        f: &mut dyn FnMut(Option<&[u8]>) -> Update,
    ) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError> {
        self.check_key(key)?;
        match f(self.get(key)) {
            Update::Keep => Ok((self.get(key).map(<[u8]>::to_vec), None)),
            Update::Delete => {
                let seq = if self.map.contains_key(key) {
                    Some(self.apply(key, None)?)
                } else {
                    None
                };
                Ok((None, seq))
            }
            Update::Set(v) => {
                let seq = self.apply(key, Some(v.clone()))?;
                Ok((Some(v), Some(seq)))
            }
        }
    }

    fn check_key(&self, key: &str) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > self.limits.max_key_bytes {
            return Err(StoreError::BadKey);
        }
        Ok(())
    }

    fn apply(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<u64, StoreError> {
        self.check_key(key)?;
        let old_len = self.map.get(key).map_or(0, |v| key.len() + v.len());
        let new_len = match &value {
            Some(v) if v.len() > self.limits.max_value_bytes => {
                return Err(StoreError::ValueTooLarge);
            }
            Some(v) => key.len() + v.len(),
            None => 0,
        };
        let total = self.bytes - old_len + new_len;
        if total > self.limits.max_total_bytes {
            return Err(StoreError::Full);
        }
        let prev = match value {
            Some(v) => self.map.insert(key.to_string(), v),
            None => self.map.remove(key),
        };
        self.bytes = total;
        self.seq += 1;
        if self.limits.retain_ops > 0 {
            if self.log.len() == self.limits.retain_ops {
                self.log.pop_front();
            }
            self.log.push_back(LogEntry {
                seq: self.seq,
                key: key.to_string(),
                prev,
            });
        }
        Ok(self.seq)
    }

    /// The contents as of sequence number `seq` (undoing the retained log back to it).
    pub fn state_at(&self, seq: u64) -> Result<Snapshot, StoreError> {
        if seq > self.seq {
            return Err(StoreError::FutureSeq { current: self.seq });
        }
        if seq < self.oldest_retained() {
            return Err(StoreError::NotRetained {
                oldest: self.oldest_retained(),
            });
        }
        let mut entries = self.map.clone();
        for entry in self.log.iter().rev().take_while(|e| e.seq > seq) {
            match &entry.prev {
                Some(v) => entries.insert(entry.key.clone(), v.clone()),
                None => entries.remove(&entry.key),
            };
        }
        Ok(Snapshot { seq, entries })
    }

    /// The current state, encoded.
    pub fn snapshot(&self) -> Vec<u8> {
        encode_snapshot(self.seq, &self.map)
    }

    /// The state as of `seq`, encoded.
    pub fn snapshot_at(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        let s = self.state_at(seq)?;
        Ok(encode_snapshot(s.seq, &s.entries))
    }

    /// Replaces the whole state with a snapshot. On any error the state is unchanged. The log is
    /// cleared: history before a restore is not this store's history.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<u64, StoreError> {
        let snap = decode_snapshot(bytes).map_err(StoreError::Corrupt)?;
        let mut total = 0usize;
        for (k, v) in &snap.entries {
            if k.is_empty()
                || k.len() > self.limits.max_key_bytes
                || v.len() > self.limits.max_value_bytes
            {
                return Err(StoreError::Corrupt(SnapshotError::TooLarge));
            }
            total += k.len() + v.len();
        }
        if total > self.limits.max_total_bytes {
            return Err(StoreError::Corrupt(SnapshotError::TooLarge));
        }
        self.map = snap.entries;
        self.seq = snap.seq;
        self.bytes = total;
        self.log.clear();
        Ok(self.seq)
    }
}

/// One mutation as a follower replays it: its sequence number, key and the value it set (`None`:
/// deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The mutation's sequence number.
    pub seq: u64,
    /// The key it changed.
    pub key: String,
    /// The value it set, `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// Op log magic bytes (`GET /state/log` bodies).
pub const OPLOG_MAGIC: &[u8; 4] = b"JNSL";
/// Op log format version.
pub const OPLOG_VERSION: u8 = 1;

impl MemStore {
    /// The mutations after `since`, oldest first, at most `max_ops` of them and at most about
    /// `max_bytes` of keys and values (always at least one when there is one). `NotRetained` when
    /// the log no longer reaches back to `since` (a follower then takes a snapshot), `FutureSeq`
    /// when `since` is ahead of this store (a follower of another history).
    pub fn ops_since(
        &self,
        since: u64,
        max_ops: usize,
        max_bytes: usize,
    ) -> Result<Vec<Op>, StoreError> {
        if since > self.seq {
            return Err(StoreError::FutureSeq { current: self.seq });
        }
        if since < self.oldest_retained() {
            return Err(StoreError::NotRetained {
                oldest: self.oldest_retained(),
            });
        }
        // The log keeps the value each mutation replaced; the value it set is the one the next
        // mutation of the same key replaced, or the current value when none followed.
        let pending: Vec<&LogEntry> = self.log.iter().filter(|e| e.seq > since).collect();
        let mut after: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
        let mut ops: Vec<Op> = Vec::with_capacity(pending.len().min(max_ops));
        let mut newest_first = Vec::with_capacity(pending.len());
        for e in pending.iter().rev() {
            let value = match after.get(e.key.as_str()) {
                Some(v) => *v,
                None => self.map.get(&e.key).map(Vec::as_slice),
            };
            after.insert(e.key.as_str(), e.prev.as_deref());
            newest_first.push((e.seq, e.key.as_str(), value));
        }
        let mut bytes = 0usize;
        for (seq, key, value) in newest_first.into_iter().rev() {
            let size = key.len() + value.map_or(0, <[u8]>::len);
            if ops.len() == max_ops || (!ops.is_empty() && bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            ops.push(Op {
                seq,
                key: key.to_string(),
                value: value.map(<[u8]>::to_vec),
            });
        }
        Ok(ops)
    }

    /// Replays one mutation of a followed store: `op.seq` MUST be this store's next sequence
    /// number. Refused (state unchanged) when it is not, or when the op does not fit the limits.
    pub fn apply_op(&mut self, op: &Op) -> Result<u64, StoreError> {
        if op.seq != self.seq + 1 {
            return Err(StoreError::Unavailable(format!(
                "op log out of order: op {} after seq {}",
                op.seq, self.seq
            )));
        }
        if op.value.is_none() && !self.map.contains_key(&op.key) {
            // A delete of an absent key uses no sequence number on the leader: this log is not
            // this store's history.
            return Err(StoreError::Unavailable(format!(
                "op {} deletes '{}', which this store does not hold",
                op.seq, op.key
            )));
        }
        self.apply(&op.key, op.value.clone())
    }

    /// Undoes the mutations after `seq` (newest first) from the retained log. Used by a follower
    /// to drop what a request made locally, so its state stays the leader's.
    pub fn rollback_to(&mut self, seq: u64) -> Result<(), StoreError> {
        if seq > self.seq {
            return Err(StoreError::FutureSeq { current: self.seq });
        }
        if seq < self.oldest_retained() {
            return Err(StoreError::NotRetained {
                oldest: self.oldest_retained(),
            });
        }
        while self.seq > seq {
            let Some(e) = self.log.pop_back() else { break };
            let cur = self.map.get(&e.key).map_or(0, |v| e.key.len() + v.len());
            let old = e.prev.as_ref().map_or(0, |v| e.key.len() + v.len());
            match e.prev {
                Some(v) => self.map.insert(e.key, v),
                None => self.map.remove(&e.key),
            };
            self.bytes = self.bytes - cur + old;
            self.seq -= 1;
        }
        Ok(())
    }
}

/// Encodes an op log batch: `magic "JNSL" | version u8 = 1 | count u32 | count x (seq u64 | kind u8
/// (0 delete, 1 set) | key_len u32 | key | [value_len u32 | value]) | crc32 u32`.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|o| 17 + o.key.len() + o.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(4 + 1 + 4 + size + 4);
    out.extend_from_slice(OPLOG_MAGIC);
    out.push(OPLOG_VERSION);
    out.extend_from_slice(&len_u32(ops.len()).to_le_bytes());
    for o in ops {
        out.extend_from_slice(&o.seq.to_le_bytes());
        out.push(u8::from(o.value.is_some()));
        out.extend_from_slice(&len_u32(o.key.len()).to_le_bytes());
        out.extend_from_slice(o.key.as_bytes());
        if let Some(v) = &o.value {
            out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and verifies an op log batch (see [`encode_ops`]); sequence numbers must be
/// consecutive. Never panics, never allocates more than the input's size.
pub fn decode_ops(bytes: &[u8]) -> Result<Vec<Op>, SnapshotError> {
    if bytes.len() < 4 + 1 + 4 + 4 {
        return Err(SnapshotError::Truncated);
    }
    if &bytes[..4] != OPLOG_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if bytes[4] != OPLOG_VERSION {
        return Err(SnapshotError::UnsupportedVersion(bytes[4]));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if crc32(body) != expected {
        return Err(SnapshotError::Checksum);
    }
    let mut r = Reader { buf: body, pos: 5 };
    let count = r.u32()?;
    let mut ops = Vec::new();
    for _ in 0..count {
        let seq = r.u64()?;
        let kind = r.take(1)?[0];
        let klen = r.u32()? as usize;
        let key = core::str::from_utf8(r.take(klen)?).map_err(|_| SnapshotError::Malformed)?;
        let value = match kind {
            0 => None,
            1 => {
                let vlen = r.u32()? as usize;
                Some(r.take(vlen)?.to_vec())
            }
            _ => return Err(SnapshotError::Malformed),
        };
        if ops.last().is_some_and(|l: &Op| l.seq + 1 != seq) {
            return Err(SnapshotError::Malformed);
        }
        ops.push(Op {
            seq,
            key: key.to_string(),
            value,
        });
    }
    if r.pos != body.len() {
        return Err(SnapshotError::Malformed);
    }
    Ok(ops)
}

/// Encodes a snapshot.
pub fn encode_snapshot(seq: u64, entries: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + 1 + 8 + 4 + size + 4);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len_u32(entries.len()).to_le_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&len_u32(k.len()).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
        out.extend_from_slice(v);
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn len_u32(n: usize) -> u32 {
    // Store limits keep every length far below 4 GiB.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes and verifies a snapshot. Never panics, never allocates more than the input's size.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    if bytes.len() < 4 + 1 + 8 + 4 + 4 {
        return Err(if bytes.len() >= 4 && &bytes[..4] != SNAPSHOT_MAGIC {
            SnapshotError::BadMagic
        } else {
            SnapshotError::Truncated
        });
    }
    if &bytes[..4] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if bytes[4] != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(bytes[4]));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let mut r = Reader { buf: body, pos: 5 };
    let seq = r.u64()?;
    let count = r.u32()?;
    let mut entries = BTreeMap::new();
    let mut last: Option<String> = None;
    for _ in 0..count {
        let klen = r.u32()? as usize;
        let key = core::str::from_utf8(r.take(klen)?).map_err(|_| SnapshotError::Malformed)?;
        let vlen = r.u32()? as usize;
        let value = r.take(vlen)?;
        if last.as_deref().is_some_and(|l| l >= key) {
            return Err(SnapshotError::Malformed);
        }
        last = Some(key.to_string());
        entries.insert(key.to_string(), value.to_vec());
    }
    let expected = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if r.pos != body.len() {
        // Either trailing garbage or a count that is too small; the checksum decides which message.
        return Err(if crc32(body) == expected {
            SnapshotError::Malformed
        } else {
            SnapshotError::Truncated
        });
    }
    if crc32(body) != expected {
        return Err(SnapshotError::Checksum);
    }
    Ok(Snapshot { seq, entries })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).ok_or(SnapshotError::Truncated)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(SnapshotError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it): the `crc` crate's `CRC_32_ISO_HDLC`
/// with its 1 KiB table built at compile time (no_std; `crc32fast` without std would put a 16 KiB
/// slice-by-16 table into every unikernel image with a store).
pub fn crc32(data: &[u8]) -> u32 {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC32.checksum(data)
}

/// Provider side of the store.
///
/// MUST rules: every mutation MUST be applied atomically with respect to all other operations on the
/// same store (a lock around one [`MemStore`] does this); `update`'s closure MUST run under that
/// atomicity; `seq` MUST return the sequence number of the last applied mutation.
pub trait StoreBackend: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets a value; returns its sequence number.
    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError>;
    /// Deletes a key; returns the sequence number, `None` when it was absent.
    fn delete(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Atomic read-modify-write.
    fn update(
        &self,
        key: &str,
        f: &mut dyn FnMut(Option<&[u8]>) -> Update,
    ) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError>;
    /// Keys with a prefix, in order, at most `limit`.
    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The current sequence number.
    fn seq(&self) -> u64;
}

/// The store handle a service uses.
#[derive(Clone)]
pub struct Store(Arc<dyn StoreBackend>);

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("seq", &self.0.seq()).finish()
    }
}

impl Store {
    /// Wraps a provider.
    pub fn new(backend: Arc<dyn StoreBackend>) -> Store {
        Store(backend)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _span = tracing::debug_span!("store.get", key, seq = self.0.seq()).entered();
        self.0.get(key)
    }

    /// Sets a value; returns its sequence number.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        let span = tracing::debug_span!("store.put", key, seq = tracing::field::Empty).entered();
        let r = self.0.put(key, value);
        if let Ok(seq) = r {
            span.record("seq", seq);
        }
        r
    }

    /// Deletes a key; returns the sequence number, `None` when it was absent.
    pub fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let span = tracing::debug_span!("store.delete", key, seq = tracing::field::Empty).entered();
        let r = self.0.delete(key);
        if let Ok(Some(seq)) = r {
            span.record("seq", seq);
        }
        r
    }

    /// Atomic read-modify-write: `f` sees the current value and decides.
    pub fn update(
        &self,
        key: &str,
        mut f: impl FnMut(Option<&[u8]>) -> Update,
    ) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError> {
        let span = tracing::debug_span!("store.update", key, seq = tracing::field::Empty).entered();
        let r = self.0.update(key, &mut f);
        if let Ok((_, Some(seq))) = r {
            span.record("seq", seq);
        }
        r
    }

    /// Keys with a prefix and their values, in key order, at most `limit`.
    pub fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let _span = tracing::debug_span!("store.list", prefix, seq = self.0.seq()).entered();
        self.0.list(prefix, limit)
    }

    /// The current sequence number.
    pub fn seq(&self) -> u64 {
        self.0.seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn store() -> MemStore {
        MemStore::new(StoreLimits {
            retain_ops: 4,
            ..StoreLimits::default()
        })
    }

    #[test]
    fn sequence_numbers_count_mutations_only() {
        let mut s = store();
        assert_eq!(s.seq(), 0);
        assert_eq!(s.put("a", b"1".to_vec()), Ok(1));
        assert_eq!(s.put("a", b"2".to_vec()), Ok(2));
        assert_eq!(s.delete("missing"), Ok(None));
        assert_eq!(s.delete("a"), Ok(Some(3)));
        assert_eq!(s.update("c", &mut |_| Update::Keep), Ok((None, None)));
        assert_eq!(s.seq(), 3);
        let (v, seq) = s
            .update("c", &mut |old| {
                let n = old.map_or(0, |b| b[0]);
                Update::Set(vec![n + 1])
            })
            .expect("update");
        assert_eq!((v, seq), (Some(vec![1]), Some(4)));
        assert_eq!(s.bytes(), 2);
    }

    #[test]
    fn state_as_of_earlier_seq_within_retention() {
        let mut s = store();
        s.put("a", b"1".to_vec()).expect("put"); // 1
        s.put("b", b"2".to_vec()).expect("put"); // 2
        s.put("a", b"3".to_vec()).expect("put"); // 3
        s.delete("b").expect("delete"); // 4
        let at2 = s.state_at(2).expect("retained");
        assert_eq!(at2.entries.get("a").map(Vec::as_slice), Some(&b"1"[..]));
        assert_eq!(at2.entries.get("b").map(Vec::as_slice), Some(&b"2"[..]));
        let at0 = s.state_at(0).expect("retained: log holds 4 ops");
        assert!(at0.entries.is_empty());
        s.put("c", b"5".to_vec()).expect("put"); // 5, drops op 1
        assert_eq!(s.oldest_retained(), 1);
        assert_eq!(s.state_at(0), Err(StoreError::NotRetained { oldest: 1 }));
        assert_eq!(s.state_at(6), Err(StoreError::FutureSeq { current: 5 }));
        let cur = s.state_at(5).expect("current");
        assert_eq!(encode_snapshot(cur.seq, &cur.entries), s.snapshot());
    }

    #[test]
    fn snapshot_round_trip_is_byte_identical() {
        let mut s = store();
        s.put("k/1", b"x".to_vec()).expect("put");
        s.put("k/2", vec![0, 255, 7]).expect("put");
        let snap = s.snapshot();
        let mut t = MemStore::new(StoreLimits::default());
        assert_eq!(t.restore(&snap), Ok(2));
        assert_eq!(t.snapshot(), snap);
        assert_eq!(t.get("k/2"), Some(&[0u8, 255, 7][..]));
        assert_eq!(t.list("k/", 10).len(), 2);
        assert_eq!(t.list("k/", 1).len(), 1);
        assert_eq!(
            t.put("z", b"1".to_vec()),
            Ok(3),
            "sequence continues after restore"
        );
    }

    #[test]
    fn corrupt_or_truncated_snapshots_are_refused_and_state_kept() {
        let mut s = store();
        s.put("a", b"1".to_vec()).expect("put");
        let good = s.snapshot();
        let mut t = store();
        t.put("keep", b"me".to_vec()).expect("put");
        let before = t.snapshot();
        for cut in 0..good.len() {
            assert!(t.restore(&good[..cut]).is_err(), "truncated at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(t.restore(&bad).is_err(), "flipped byte {i}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(t.restore(&trailing).is_err());
        assert_eq!(
            t.restore(b"NOPE00000000000000000000"),
            Err(StoreError::Corrupt(SnapshotError::BadMagic))
        );
        assert_eq!(
            t.snapshot(),
            before,
            "state unchanged after refused restores"
        );
        // A huge count with a valid checksum must not allocate or panic.
        let mut huge = Vec::new();
        huge.extend_from_slice(SNAPSHOT_MAGIC);
        huge.push(SNAPSHOT_VERSION);
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32(&huge);
        huge.extend_from_slice(&crc.to_le_bytes());
        assert!(decode_snapshot(&huge).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut s = MemStore::new(StoreLimits {
            max_key_bytes: 3,
            max_value_bytes: 4,
            max_total_bytes: 10,
            retain_ops: 0,
        });
        assert_eq!(s.put("", vec![]), Err(StoreError::BadKey));
        assert_eq!(s.put("abcd", vec![]), Err(StoreError::BadKey));
        assert_eq!(s.put("a", vec![0; 5]), Err(StoreError::ValueTooLarge));
        assert_eq!(s.put("a", vec![0; 4]), Ok(1));
        assert_eq!(s.put("b", vec![0; 4]), Ok(2));
        assert_eq!(s.put("c", vec![0; 1]), Err(StoreError::Full));
        assert_eq!(
            s.put("a", vec![0; 1]),
            Ok(3),
            "shrinking a value frees room"
        );
        assert_eq!(s.state_at(2), Err(StoreError::NotRetained { oldest: 3 }));
    }

    #[test]
    fn op_log_replays_into_an_identical_store() {
        let mut leader = store();
        let mut follower = store();
        leader.put("a", b"1".to_vec()).expect("put"); // 1
        leader.put("b", b"2".to_vec()).expect("put"); // 2
        let ops = leader.ops_since(0, 100, 1 << 20).expect("ops");
        for op in decode_ops(&encode_ops(&ops)).expect("decode") {
            follower.apply_op(&op).expect("apply");
        }
        leader.put("a", b"3".to_vec()).expect("put"); // 3
        leader.delete("b").expect("delete"); // 4
        leader.put("a", b"5".to_vec()).expect("put"); // 5
        let ops = leader.ops_since(2, 100, 1 << 20).expect("ops");
        assert_eq!(ops.iter().map(|o| o.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(
            ops[0].value.as_deref(),
            Some(&b"3"[..]),
            "value set at 3, not the current"
        );
        assert_eq!(ops[1].value, None);
        for op in &ops {
            follower.apply_op(op).expect("apply");
        }
        assert_eq!(follower.snapshot(), leader.snapshot());
        assert!(follower.apply_op(&ops[0]).is_err(), "replayed op refused");
        assert_eq!(leader.ops_since(5, 100, 1 << 20).expect("none"), []);
        assert_eq!(leader.ops_since(2, 2, 1 << 20).expect("capped").len(), 2);
        assert_eq!(leader.ops_since(2, 100, 0).expect("one at least").len(), 1);
        assert_eq!(
            leader.ops_since(0, 100, 1 << 20),
            Err(StoreError::NotRetained { oldest: 1 })
        );
        assert_eq!(
            leader.ops_since(9, 100, 1 << 20),
            Err(StoreError::FutureSeq { current: 5 })
        );
    }

    #[test]
    fn rollback_undoes_local_mutations() {
        let mut s = store();
        s.put("a", b"1".to_vec()).expect("put");
        let before = s.snapshot();
        s.put("a", b"22".to_vec()).expect("put");
        s.put("n", b"x".to_vec()).expect("put");
        s.rollback_to(1).expect("rollback");
        assert_eq!(s.snapshot(), before);
        assert_eq!(s.bytes(), 2);
        assert_eq!(s.put("z", b"1".to_vec()), Ok(2));
    }

    #[test]
    fn corrupt_op_logs_are_refused() {
        let mut s = store();
        s.put("a", b"1".to_vec()).expect("put");
        s.delete("a").expect("delete");
        let good = encode_ops(&s.ops_since(0, 10, 1 << 20).expect("ops"));
        for cut in 0..good.len() {
            assert!(decode_ops(&good[..cut]).is_err(), "truncated at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode_ops(&bad).is_err(), "flipped byte {i}");
        }
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
