//! runtime-abi: the contract between a Janus service and the backend that runs it.
//!
//! A service is a `#![no_std]` + `alloc` crate that depends on this crate only. It implements
//! [`Service`]: a [`Manifest`] saying what it needs, a constructor taking the [`Capabilities`] the
//! platform granted, and an `async` handler from [`Request`] to [`Response`]. The same crate, unchanged,
//! is linked into either backend: `backend-unix` (an instrumented Linux process) or `backend-uk` (a
//! unikernel image). The build flavour is chosen outside the service, by the `janus` tool.
//!
//! Layers, from the service's point of view:
//! - [`http`]: portable request/response types, case-insensitive headers, JSON helpers.
//! - [`caps`]: capabilities, not ambient authority: declared upstreams by name, a clock, entropy and
//!   typed config; the provider traits backends implement, each with its MUST rules.
//! - [`store`]: the key-value store with a versioned operation log, snapshots and state as of an
//!   earlier sequence number; one engine ([`MemStore`]) shared by both backends.
//! - [`node`]: the node protocol both backends speak (header names, the `/metrics` exposition).
//! - [`trace`]: trace ids; services log with the re-exported [`tracing`] macros and each backend decides
//!   what a span or an event costs.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod caps;
pub mod http;
pub mod node;
pub mod service;
pub mod store;
pub mod trace;

pub use caps::{
    BoxFuture, CapError, Capabilities, Clock, ClockSource, Config, ConfigError, Entropy,
    EntropySource, Providers, Upstream, UpstreamError, UpstreamTransport,
};
pub use http::{Headers, JsonError, Method, Request, Response, StatusCode};
pub use service::{ConfigKey, InitError, Listener, Manifest, Service, StoreSpec};
pub use store::{
    MemStore, Op, SnapshotError, Store, StoreBackend, StoreError, StoreLimits, Update, decode_ops,
    encode_ops,
};
pub use trace::TraceId;

pub use serde_json;
pub use tracing;
