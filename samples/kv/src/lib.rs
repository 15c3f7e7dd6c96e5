//! `kv`: a stateful Janus sample service over the runtime's versioned store.
//!
//! Routes: `PUT|GET|DELETE /kv/{key}`, `GET /kv?prefix=P` (keys with a prefix), and
//! `POST /counter/{name}/incr` (atomic increment).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use runtime_abi::tracing::info;
use runtime_abi::{
    Capabilities, InitError, Listener, Manifest, Method, Request, Response, Service, StatusCode,
    Store, StoreError, StoreSpec, Update,
};

/// Most keys `GET /kv?prefix=` returns.
pub const LIST_LIMIT: usize = 1000;

/// The service.
pub struct Kv {
    store: Store,
}

/// Maps a store refusal to an HTTP answer.
pub fn store_error(e: &StoreError) -> Response {
    let status = match e {
        StoreError::BadKey => StatusCode::BAD_REQUEST,
        StoreError::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::Full => StatusCode::new(507).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Response::error(status, &format!("{e}"))
}

impl Service for Kv {
    const MANIFEST: Manifest = Manifest {
        name: "kv",
        version: "0.1.0",
        listener: Listener::HTTP,
        upstreams: &[],
        store: Some(StoreSpec::DEFAULT),
        config: &[],
    };

    fn new(caps: Capabilities) -> Result<Self, InitError> {
        Ok(Kv {
            store: caps.store()?,
        })
    }

    async fn handle(&self, req: Request) -> Response {
        if let Some(key) = req.path.strip_prefix("/kv/") {
            return self.key(&req, key);
        }
        if req.path == "/kv" {
            return match req.method {
                Method::Get => self.list(&req.query_param("prefix").unwrap_or_default()),
                _ => Response::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            };
        }
        if let Some(name) = req
            .path
            .strip_prefix("/counter/")
            .and_then(|r| r.strip_suffix("/incr"))
        {
            return match req.method {
                Method::Post => self.incr(name),
                _ => Response::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            };
        }
        Response::not_found(&req.path)
    }
}

impl Kv {
    /// A kv service over an existing store handle (for services that extend this one).
    pub fn from_store(store: Store) -> Kv {
        Kv { store }
    }

    fn key(&self, req: &Request, key: &str) -> Response {
        let Some(key) = runtime_abi::http::percent_decode(key) else {
            return Response::error(
                StatusCode::BAD_REQUEST,
                "key is not valid percent-encoded UTF-8",
            );
        };
        match req.method {
            Method::Get | Method::Head => match self.store.get(&key) {
                Ok(Some(v)) => Response::new(StatusCode::OK)
                    .with_header("content-type", "application/octet-stream")
                    .with_body(v),
                Ok(None) => Response::error(StatusCode::NOT_FOUND, &format!("no key '{key}'")),
                Err(e) => store_error(&e),
            },
            Method::Put => match self.store.put(&key, &req.body) {
                Ok(seq) => {
                    info!(key = key.as_str(), seq, "stored");
                    Response::json(
                        StatusCode::OK,
                        &serde_json::json!({ "key": key, "seq": seq }),
                    )
                }
                Err(e) => store_error(&e),
            },
            Method::Delete => match self.store.delete(&key) {
                Ok(Some(_)) => Response::new(StatusCode::NO_CONTENT),
                Ok(None) => Response::error(StatusCode::NOT_FOUND, &format!("no key '{key}'")),
                Err(e) => store_error(&e),
            },
            _ => Response::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    }

    fn list(&self, prefix: &str) -> Response {
        match self.store.list(prefix, LIST_LIMIT) {
            Ok(entries) => {
                let keys: Vec<String> = entries.into_iter().map(|(k, _)| k).collect();
                Response::json(StatusCode::OK, &serde_json::json!({ "keys": keys }))
            }
            Err(e) => store_error(&e),
        }
    }

    fn incr(&self, name: &str) -> Response {
        let key = format!("counter/{name}");
        let mut bad = false;
        let result = self.store.update(&key, |old| {
            let current = match old.map(core::str::from_utf8) {
                None => 0,
                Some(Ok(s)) => match s.parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => {
                        bad = true;
                        return Update::Keep;
                    }
                },
                Some(Err(_)) => {
                    bad = true;
                    return Update::Keep;
                }
            };
            Update::Set(format!("{}", current.saturating_add(1)).into_bytes())
        });
        if bad {
            return Response::error(StatusCode::CONFLICT, &format!("'{key}' is not a counter"));
        }
        match result {
            Ok((Some(v), _)) => {
                let value: u64 = core::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                Response::json(
                    StatusCode::OK,
                    &serde_json::json!({ "name": name, "value": value }),
                )
            }
            Ok((None, _)) => Response::error(StatusCode::CONFLICT, "counter vanished"),
            Err(e) => store_error(&e),
        }
    }
}
