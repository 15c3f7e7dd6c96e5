//! What the panic path reports: the request in flight (its trace id, the store's sequence number
//! when it started) and the state as of that sequence number, dumped on the console as base64
//! `JANUS-STATE` lines the supervisor keeps for `janus faults repro`.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;

use spinning_top::Spinlock;

use crate::providers::UkStore;

/// Standard base64 (with padding) of `data`, handed to `out` in pieces of at most 256 bytes
/// (no allocation: the panic path streams a state of many MiB through it). Each piece is the
/// `base64` crate's encoding of 192 input bytes (a multiple of 3, so the pieces concatenate).
pub fn base64_to(data: &[u8], out: &mut dyn FnMut(&[u8])) {
    use base64::Engine as _;
    let mut buf = [0u8; 256];
    for chunk in data.chunks(192) {
        match base64::engine::general_purpose::STANDARD.encode_slice(chunk, &mut buf) {
            Ok(n) => out(&buf[..n]),
            // 192 bytes always encode into 256: unreachable, and never a panic on the panic path.
            Err(_) => return,
        }
    }
}

/// Most snapshot bytes per console line of the panic state dump (a multiple of 3, so the
/// lines' base64 texts concatenate; 64 KiB of base64 per line). A state up to this size is
/// one `JANUS-STATE seq=<N> <base64>` line; a larger one is `JANUS-STATE-PART seq=<N> <i>/<K>
/// <base64>` lines, i = 1..=K, each holding the next piece (the store's 16 MiB is 342 lines).
pub const STATE_LINE_BYTES: usize = 48 * 1024;

/// Writes the console lines of a state dump of `snapshot` (taken at `seq`) through `out`.
pub fn write_state_dump(seq: u64, snapshot: &[u8], out: &mut dyn FnMut(&[u8])) {
    if snapshot.len() <= STATE_LINE_BYTES {
        out(format!("JANUS-STATE seq={seq} ").as_bytes());
        base64_to(snapshot, out);
        out(b"\n");
        return;
    }
    let parts = snapshot.len().div_ceil(STATE_LINE_BYTES);
    for (i, piece) in snapshot.chunks(STATE_LINE_BYTES).enumerate() {
        out(format!("JANUS-STATE-PART seq={seq} {}/{parts} ", i + 1).as_bytes());
        base64_to(piece, out);
        out(b"\n");
    }
}

/// What the panic path reports about the request being handled.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Its trace id (hex).
    pub trace_id: String,
    /// The store's sequence number when it started.
    pub seq: Option<u64>,
}

pub(crate) static CURRENT: Spinlock<Option<InFlight>> = Spinlock::new(None);
pub(crate) static PANIC_STORE: Spinlock<Option<Arc<UkStore>>> = Spinlock::new(None);

/// The request whose future is being polled right now (for the panic report).
pub fn current_request() -> Option<InFlight> {
    CURRENT.try_lock().and_then(|c| c.clone())
}

/// The panic path's state dump: for a request in flight on a service with a store, the state as
/// of the request's start (see [`write_state_dump`]); when it cannot be produced, one
/// `JANUS-PANIC state not dumped: <why>` line instead.
pub fn write_panic_state(out: &mut dyn FnMut(&[u8])) {
    let Some(seq) = current_request().and_then(|r| r.seq) else {
        return;
    };
    let Some(store) = PANIC_STORE.try_lock().and_then(|s| s.clone()) else {
        return;
    };
    // Service code never runs with the store locked (see `UkStore::update`): a held lock means
    // the panic is inside the store engine itself, whose state may be half changed.
    let why = match store.try_snapshot_at(seq) {
        Some(Ok(snapshot)) => return write_state_dump(seq, &snapshot, out),
        Some(Err(e)) => format!("{e}"),
        None => String::from("the store engine panicked with its lock held"),
    };
    out(format!("JANUS-PANIC state not dumped: {why}\n").as_bytes());
}

/// Makes `store` the one the panic path dumps.
pub fn set_panic_store(store: Option<Arc<UkStore>>) {
    *PANIC_STORE.lock() = store;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec::Vec;
    use base64::Engine as _;

    /// [`base64_to`]'s pieces, joined.
    pub(crate) fn base64(data: &[u8]) -> String {
        let mut text = String::new();
        base64_to(data, &mut |piece| {
            text.extend(piece.iter().map(|&b| char::from(b)));
        });
        text
    }

    /// A state above one line's worth is streamed as numbered parts whose base64 texts
    /// concatenate to the whole state's.
    #[test]
    fn large_state_dump_is_split_into_parts() {
        let snapshot: Vec<u8> = (0..STATE_LINE_BYTES * 3 + 100)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let mut out = Vec::new();
        write_state_dump(9, &snapshot, &mut |b| out.extend_from_slice(b));
        let text = String::from_utf8(out).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let mut joined = String::new();
        for (i, line) in lines.iter().enumerate() {
            let prefix = format!("JANUS-STATE-PART seq=9 {}/4 ", i + 1);
            let b64 = line.strip_prefix(&prefix).expect("part prefix");
            assert!(b64.len() <= STATE_LINE_BYTES / 3 * 4);
            joined.push_str(b64);
        }
        assert_eq!(joined, base64(&snapshot));
        // Up to one line's worth: the single-line form.
        let mut out = Vec::new();
        write_state_dump(3, &snapshot[..STATE_LINE_BYTES], &mut |b| {
            out.extend_from_slice(b)
        });
        assert!(out.starts_with(b"JANUS-STATE seq=3 "));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
    #[test]
    fn base64_vectors() {
        // Every length across the 192-byte pieces: the pieces concatenate to the whole encoding.
        for n in 0..600 {
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(
                base64(&data),
                base64::engine::general_purpose::STANDARD.encode(&data),
                "{n}"
            );
        }
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let long: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = base64(&long);
        assert_eq!(text.len(), 1336);
        assert!(
            text.starts_with("AAECAwQF") && text.ends_with("5OXm5w=="),
            "{text}"
        );
    }
}
