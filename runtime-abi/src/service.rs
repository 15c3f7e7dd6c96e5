//! The service contract: a [`Manifest`] that declares what a service needs, and the [`Service`] trait
//! that builds it from granted [`Capabilities`] and answers requests.
//!
//! MUST rules for services:
//! - `handle` MUST answer every request with a [`Response`]; errors are responses (4xx/5xx), not panics.
//!   A panic is a fault: the unix backend catches it and answers 500 with `x-janus-fault: panic`, the
//!   unikernel prints a panic report and stops.
//! - A service MUST NOT rely on anything it did not declare in its manifest: it can only reach the
//!   upstreams, store and config keys declared there ([`Capabilities`] refuses anything else).
//!
//! MUST rules for backends:
//! - A backend MUST call [`Service::new`] once, before it accepts the first request, and refuse to start
//!   (with the error's message) when it fails.
//! - A backend MUST refuse to start when the operator maps an upstream the manifest does not declare
//!   ([`Manifest::check_upstreams`]) or sets a config key it does not declare ([`crate::Config::resolve`]).
//! - A backend MAY poll several `handle` futures concurrently; the service is `Sync`.

use core::fmt;
use core::future::Future;

use alloc::string::String;
use serde::Serialize;

use crate::caps::{CapError, Capabilities, ConfigError};
use crate::http::{Request, Response};

/// What a service needs from the platform. `janus build` writes it next to the artifact as the
/// requirements file the platform reads.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Manifest {
    /// Service name (`[a-z0-9-]+`).
    pub name: &'static str,
    /// Service version.
    pub version: &'static str,
    /// The listener it serves.
    pub listener: Listener,
    /// Names of the upstream services it may call; the operator maps each to an address.
    pub upstreams: &'static [&'static str],
    /// Whether it uses the key-value store, and how much history the store retains.
    pub store: Option<StoreSpec>,
    /// Config keys with their defaults.
    pub config: &'static [ConfigKey],
}

/// The listener a service serves.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Listener {
    /// Protocol spoken (`"http/1.1"`).
    pub protocol: &'static str,
    /// The port the service listens on inside a unikernel (the unix build takes `--listen`).
    pub port: u16,
}

impl Listener {
    /// HTTP/1.1 on port 80.
    pub const HTTP: Listener = Listener {
        protocol: "http/1.1",
        port: 80,
    };
}

/// Store requirements.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StoreSpec {
    /// How many of the most recent mutations the store keeps, for state as of an earlier sequence number.
    pub retain_ops: u32,
    /// Upper bound of keys plus values in bytes.
    pub max_bytes: u32,
}

impl StoreSpec {
    /// 1024 retained operations, 16 MiB of data.
    pub const DEFAULT: StoreSpec = StoreSpec {
        retain_ops: 1024,
        max_bytes: 16 << 20,
    };
}

/// One declared config key.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConfigKey {
    /// Key name (`[a-z0-9_.-]+`).
    pub name: &'static str,
    /// Default value, as text.
    pub default: &'static str,
    /// One line saying what it does.
    pub doc: &'static str,
}

impl Manifest {
    /// Whether `name` is a declared upstream.
    pub fn declares_upstream(&self, name: &str) -> bool {
        self.upstreams.contains(&name)
    }

    /// Checks an operator's upstream mapping: every mapped name must be declared.
    pub fn check_upstreams<'a>(
        &self,
        mapped: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), InitError> {
        for name in mapped {
            if !self.declares_upstream(name) {
                return Err(InitError::Capability(CapError::UndeclaredUpstream(
                    name.into(),
                )));
            }
        }
        Ok(())
    }

    /// The requirements document as JSON (what `janus build` writes next to the artifact).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| alloc::format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Why a service could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitError {
    /// A capability was refused.
    Capability(CapError),
    /// A config value was missing or invalid.
    Config(ConfigError),
    /// The service's own reason.
    Other(String),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Capability(e) => write!(f, "capability refused: {e}"),
            InitError::Config(e) => write!(f, "config: {e}"),
            InitError::Other(s) => write!(f, "{s}"),
        }
    }
}

impl From<CapError> for InitError {
    fn from(e: CapError) -> Self {
        InitError::Capability(e)
    }
}

impl From<ConfigError> for InitError {
    fn from(e: ConfigError) -> Self {
        InitError::Config(e)
    }
}

/// An HTTP service, written once against this crate and run by either backend.
pub trait Service: Send + Sync + Sized + 'static {
    /// What the service needs.
    const MANIFEST: Manifest;

    /// Builds the service from the capabilities the platform granted.
    fn new(caps: Capabilities) -> Result<Self, InitError>;

    /// Answers one request.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}
