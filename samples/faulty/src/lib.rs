//! `faulty`: the kv service with six deliberate latent bugs, for the router and the reproduction work.
//! See README.md next to this file for each bug, its trigger and what a fixed version does.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use core::time::Duration;

use janus_samples_kv::{Kv, store_error};
use runtime_abi::tracing::{info, warn};
use runtime_abi::{
    Capabilities, Clock, Entropy, InitError, Listener, Manifest, Method, Request, Response,
    Service, StatusCode, Store, StoreSpec, Update,
};

/// Size of the per-counter milestone table (bug 2 indexes past it).
pub const MILESTONES: usize = 8;
/// Page size of `/stats` (bug 3 reads only the first page).
pub const STATS_PAGE: usize = 16;

/// The service.
pub struct Faulty {
    kv: Kv,
    store: Store,
    clock: Clock,
    entropy: Entropy,
}

impl Service for Faulty {
    const MANIFEST: Manifest = Manifest {
        name: "faulty",
        version: "0.1.0",
        listener: Listener::HTTP,
        upstreams: &[],
        store: Some(StoreSpec::DEFAULT),
        config: &[],
    };

    fn new(caps: Capabilities) -> Result<Self, InitError> {
        let store = caps.store()?;
        Ok(Faulty {
            kv: Kv::from_store(store.clone()),
            store,
            clock: caps.clock(),
            entropy: caps.entropy(),
        })
    }

    async fn handle(&self, req: Request) -> Response {
        match (&req.method, req.path.as_str()) {
            (Method::Get, "/div") => div(&req),
            (Method::Get, "/stats") => self.stats(),
            (Method::Get, "/wait") => self.wait(&req).await,
            (Method::Get, "/forged-headers") => forged_headers(),
            (Method::Get, "/avg") => avg(&req),
            (Method::Get, "/nonce") => self.nonce(),
            (Method::Post, "/blob") => blob(&req),
            (Method::Post, path) if path.starts_with("/counter/") && path.ends_with("/incr") => {
                // `/counter/incr` and `/counter//incr` name no counter.
                match path
                    .strip_prefix("/counter/")
                    .and_then(|p| p.strip_suffix("/incr"))
                {
                    Some(name) if !name.is_empty() => self.incr(name),
                    _ => Response::error(
                        StatusCode::BAD_REQUEST,
                        "POST /counter/{name}/incr needs a non-empty name",
                    ),
                }
            }
            _ => self.kv.handle(req).await,
        }
    }
}

/// Not a bug of the service but a test of the platform: `GET /forged-headers` sets the fields the
/// node owns (the `x-janus-*` protocol headers and the framing), which both builds must drop.
fn forged_headers() -> Response {
    let mut r = Response::text(StatusCode::OK, "forged headers dropped\n");
    for (name, value) in [
        ("x-janus-node", "forged"),
        ("X-Janus-Flavor", "forged"),
        ("x-janus-trace-id", "forged"),
        ("x-janus-state-seq", "forged"),
        ("x-janus-fault", "panic"),
        ("x-janus-retried-from", "forged"),
        ("content-length", "1"),
        ("transfer-encoding", "chunked"),
        ("connection", "close"),
    ] {
        r = r.with_header(name, value);
    }
    r
}

/// Bug 1 (input): `GET /div?a=A&b=0` divides by zero and panics.
fn div(req: &Request) -> Response {
    let parse = |name: &str| req.query_param(name).and_then(|v| v.parse::<i64>().ok());
    let (Some(a), Some(b)) = (parse("a"), parse("b")) else {
        return Response::error(
            StatusCode::BAD_REQUEST,
            "need integer query parameters a and b",
        );
    };
    info!(a, b, "dividing");
    let q = a / b; // BUG: no check for b == 0
    Response::json(
        StatusCode::OK,
        &serde_json::json!({ "a": a, "b": b, "quotient": q }),
    )
}

/// Most values `/avg` takes.
pub const AVG_MAX_VALUES: usize = 64;
/// Largest `/blob?kib=`.
pub const BLOB_MAX_KIB: usize = 256 * 1024;

/// Bug 5 (build-dependent wrong answer): `GET /avg?values=200,100` sums the values (each 0..=255)
/// into a `u8`. A build with overflow checks (the unix debug build's `checked` profile) panics with
/// `attempt to add with overflow`; a release build (the unikernel) wraps silently and answers a
/// wrong average (`200,100` gives 22 instead of 150).
fn avg(req: &Request) -> Response {
    let Some(text) = req.query_param("values") else {
        return Response::error(StatusCode::BAD_REQUEST, "missing query parameter 'values'");
    };
    let mut values = alloc::vec::Vec::new();
    for v in text.split(',') {
        match v.trim().parse::<u8>() {
            Ok(n) if values.len() < AVG_MAX_VALUES => values.push(n),
            Ok(_) => {
                return Response::error(
                    StatusCode::BAD_REQUEST,
                    &format!("at most {AVG_MAX_VALUES} values"),
                );
            }
            Err(_) => {
                return Response::error(
                    StatusCode::BAD_REQUEST,
                    &format!("'{v}' is not an integer from 0 to 255"),
                );
            }
        }
    }
    let mut sum: u8 = 0;
    for v in &values {
        sum += *v; // BUG: u8 accumulator: wraps in release, panics with overflow checks
    }
    let avg = u64::from(sum) / values.len() as u64;
    Response::json(
        StatusCode::OK,
        &serde_json::json!({ "count": values.len(), "avg": avg }),
    )
}

/// Bug 6 (resources): `POST /blob?kib=N` builds an N KiB buffer in memory for the request (a
/// checksum of a generated blob). Harmless on a process; on a unikernel with a small heap a large
/// N exhausts it (the node exits with its out-of-memory status, 39).
fn blob(req: &Request) -> Response {
    let kib = match req.query_param("kib").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if (1..=BLOB_MAX_KIB).contains(&n) => n,
        _ => {
            return Response::error(
                StatusCode::BAD_REQUEST,
                &format!("kib must be an integer from 1 to {BLOB_MAX_KIB}"),
            );
        }
    };
    // BUG: the whole blob is held in memory instead of checksummed as it is generated.
    let buf: alloc::vec::Vec<u8> = (0..kib * 1024).map(|i| (i % 251) as u8).collect();
    info!(kib, "blob built");
    Response::json(
        StatusCode::OK,
        &serde_json::json!({ "kib": kib, "crc32": runtime_abi::store::crc32(&buf) }),
    )
}

impl Faulty {
    /// Not a bug: `GET /nonce` answers a fresh random value each time (with the store's seq), so two
    /// answers of one node at the same seq differ: the router's mirror comparison must call such a
    /// route noisy, not divergent.
    fn nonce(&self) -> Response {
        Response::json(
            StatusCode::OK,
            &serde_json::json!({
                "nonce": format!("{:016x}", self.entropy.u64()),
                "seq": self.store.seq(),
            }),
        )
    }

    /// Bug 2 (state): each increment stamps a fixed table of `MILESTONES` slots at the new value's
    /// index; once a counter reaches `MILESTONES` the index runs past the table and panics.
    fn incr(&self, name: &str) -> Response {
        let key = format!("counter/{name}");
        let current = match self.store.get(&key) {
            Ok(v) => v
                .and_then(|b| core::str::from_utf8(&b).ok()?.parse::<u64>().ok())
                .unwrap_or(0),
            Err(e) => return store_error(&e),
        };
        let next = current + 1;
        let mut milestones = [0u64; MILESTONES];
        let stamp = self.clock.monotonic().as_millis() as u64;
        milestones[next as usize] = stamp; // BUG: index == MILESTONES once the counter reaches it
        info!(
            counter = name,
            value = next,
            milestone = milestones[next as usize],
            "increment"
        );
        let value = format!("{next}").into_bytes();
        match self.store.update(&key, |_| Update::Set(value.clone())) {
            Ok(_) => Response::json(
                StatusCode::OK,
                &serde_json::json!({ "name": name, "value": next }),
            ),
            Err(e) => store_error(&e),
        }
    }

    /// Bug 3 (wrong answer): counts keys from the first page only, so it under-reports once the
    /// store holds more than `STATS_PAGE` keys.
    fn stats(&self) -> Response {
        match self.store.list("", STATS_PAGE) {
            // BUG: never fetches the following pages
            Ok(page) => Response::json(
                StatusCode::OK,
                &serde_json::json!({ "keys": page.len(), "seq": self.store.seq() }),
            ),
            Err(e) => store_error(&e),
        }
    }

    /// Bug 4 (hang): `GET /wait?key=K` waits for key K to exist, with no deadline: a key that never
    /// appears holds the request forever.
    async fn wait(&self, req: &Request) -> Response {
        let Some(key) = req.query_param("key") else {
            return Response::error(StatusCode::BAD_REQUEST, "missing query parameter 'key'");
        };
        let mut polls = 0u64;
        loop {
            match self.store.get(&key) {
                Ok(Some(v)) => return Response::new(StatusCode::OK).with_body(v),
                Ok(None) => {}
                Err(e) => return store_error(&e),
            }
            polls += 1;
            if polls.is_multiple_of(100) {
                warn!(key = key.as_str(), polls, "still waiting for key");
            }
            self.clock.sleep(Duration::from_millis(20)).await; // BUG: no deadline
        }
    }
}
