//! `hello`: a stateless Janus sample service.
//!
//! Routes: `GET /` greeting (config key `greeting`), `GET /echo?msg=...`, `POST /json` (sums a list of
//! integers), `GET /via/{name}` (calls the declared upstream `name` and reports its answer).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use runtime_abi::tracing::info;
use runtime_abi::{
    Capabilities, ConfigKey, InitError, Listener, Manifest, Method, Request, Response, Service,
    StatusCode, Upstream,
};
use serde::{Deserialize, Serialize};

/// The service.
pub struct Hello {
    greeting: String,
    upstreams: BTreeMap<String, Upstream>,
}

#[derive(Deserialize)]
struct JsonIn {
    name: String,
    values: Vec<i64>,
}

#[derive(Serialize)]
struct JsonOut {
    name: String,
    count: usize,
    sum: i64,
    min: Option<i64>,
    max: Option<i64>,
}

impl Service for Hello {
    const MANIFEST: Manifest = Manifest {
        name: "hello",
        version: "0.1.0",
        listener: Listener::HTTP,
        upstreams: &["backend"],
        store: None,
        config: &[ConfigKey {
            name: "greeting",
            default: "Hello from Janus",
            doc: "First words of the answer to GET /",
        }],
    };

    fn new(caps: Capabilities) -> Result<Self, InitError> {
        Ok(Hello {
            greeting: caps.config().get("greeting")?.to_string(),
            upstreams: caps.upstreams(),
        })
    }

    async fn handle(&self, req: Request) -> Response {
        match (&req.method, req.path.as_str()) {
            (Method::Get | Method::Head, "/") => {
                Response::text(StatusCode::OK, format!("{}!\n", self.greeting))
            }
            (Method::Get, "/echo") => match req.query_param("msg") {
                Some(msg) => Response::text(StatusCode::OK, msg),
                None => Response::error(StatusCode::BAD_REQUEST, "missing query parameter 'msg'"),
            },
            (Method::Post, "/json") => match req.json::<JsonIn>() {
                Ok(input) => {
                    let sum = input.values.iter().try_fold(0i64, |a, v| a.checked_add(*v));
                    match sum {
                        Some(sum) => Response::json(
                            StatusCode::OK,
                            &JsonOut {
                                count: input.values.len(),
                                sum,
                                min: input.values.iter().min().copied(),
                                max: input.values.iter().max().copied(),
                                name: input.name,
                            },
                        ),
                        None => Response::error(StatusCode::BAD_REQUEST, "sum overflows i64"),
                    }
                }
                Err(e) => Response::error(StatusCode::BAD_REQUEST, &e.to_string()),
            },
            (Method::Get, path) if path.starts_with("/via/") => self.via(&req, &path[5..]).await,
            (_, "/" | "/echo" | "/json") => {
                Response::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => Response::not_found(&req.path),
        }
    }
}

impl Hello {
    async fn via(&self, req: &Request, name: &str) -> Response {
        let Some(upstream) = self.upstreams.get(name) else {
            return Response::error(
                StatusCode::NOT_FOUND,
                &format!("upstream '{name}' is not declared"),
            );
        };
        let mut call = Request::new(Method::Get, "/");
        call.trace_id = req.trace_id;
        info!(upstream = name, "calling upstream");
        match upstream.call(call).await {
            Ok(resp) => Response::json(
                StatusCode::OK,
                &serde_json::json!({
                    "upstream": name,
                    "status": resp.status.as_u16(),
                    "body": String::from_utf8_lossy(&resp.body),
                }),
            ),
            Err(e) => Response::error(
                StatusCode::BAD_GATEWAY,
                &format!("upstream '{name}' failed: {e}"),
            ),
        }
    }
}
