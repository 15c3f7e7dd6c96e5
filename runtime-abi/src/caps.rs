//! Capabilities: everything a service can touch outside its own memory, granted by the backend.
//!
//! There is no ambient authority: a service cannot name an address, open a file or read a global
//! clock. It gets [`Capabilities`] once, at construction, and takes from it handles to the upstreams
//! it declared, the store, a clock, entropy and its typed config.
//!
//! The consumer side ([`Upstream`], [`Clock`], [`Entropy`], [`Config`], [`crate::Store`]) is what a
//! service uses. The provider side ([`UpstreamTransport`], [`ClockSource`], [`EntropySource`],
//! [`crate::StoreBackend`]) is what a backend implements; its MUST rules are on each trait.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::str::FromStr;
use core::time::Duration;

use tracing::Instrument;

use crate::http::{Request, Response};
use crate::service::Manifest;
use crate::store::{Store, StoreBackend};

/// A boxed, `Send` future (what provider traits return, so they stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a capability was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapError {
    /// The service asked for (or the operator mapped) an upstream the manifest does not declare.
    UndeclaredUpstream(String),
    /// The service asked for a store but its manifest declares none.
    NoStore,
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapError::UndeclaredUpstream(n) => {
                write!(f, "upstream '{n}' is not declared in the service manifest")
            }
            CapError::NoStore => f.write_str("the service manifest declares no store"),
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The upstream is declared but the operator mapped no address to it.
    Unmapped(String),
    /// The connection could not be made or was lost.
    Connect(String),
    /// No complete response within the backend's deadline.
    Timeout,
    /// The upstream's answer was not valid HTTP/1.1 or exceeded the response limits.
    Protocol(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Unmapped(n) => write!(f, "upstream '{n}' has no address mapped"),
            UpstreamError::Connect(e) => write!(f, "connection failed: {e}"),
            UpstreamError::Timeout => f.write_str("timed out"),
            UpstreamError::Protocol(e) => write!(f, "bad response: {e}"),
        }
    }
}

/// Provider side of upstream calls.
///
/// MUST rules: an implementation MUST send the request only to the address the operator mapped to
/// `name` (never to an address taken from the request), MUST return [`UpstreamError::Unmapped`] for a
/// name without a mapping, MUST bound the call with a timeout, and MUST send the request's non-zero
/// `trace_id` as `x-janus-trace-id` unless the request already carries one.
pub trait UpstreamTransport: Send + Sync {
    /// Sends `req` to the upstream called `name` and returns its complete response.
    fn call(&self, name: &str, req: Request) -> BoxFuture<'_, Result<Response, UpstreamError>>;
}

/// A handle to one declared upstream.
#[derive(Clone)]
pub struct Upstream {
    name: Arc<str>,
    transport: Arc<dyn UpstreamTransport>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

impl Upstream {
    /// The declared name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the upstream (in a `upstream.call` span with the name and the answer's status).
    pub async fn call(&self, req: Request) -> Result<Response, UpstreamError> {
        let span = tracing::info_span!(
            "upstream.call",
            upstream = &*self.name,
            method = req.method.as_str(),
            path = req.path.as_str(),
            status = tracing::field::Empty,
        );
        let result = self
            .transport
            .call(&self.name, req)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(resp) => {
                span.record("status", resp.status.as_u16());
            }
            Err(e) => {
                let _enter = span.enter();
                tracing::warn!(error = %e, "upstream call failed");
            }
        }
        result
    }
}

/// Provider side of time.
///
/// MUST rules: `monotonic` MUST never go backwards and MUST advance at real-time rate; `wall` is the
/// time since the Unix epoch and MAY jump; `sleep` MUST complete no earlier than `d` from the call and
/// MUST NOT block other tasks while it waits.
pub trait ClockSource: Send + Sync {
    /// Time since an arbitrary fixed point (boot).
    fn monotonic(&self) -> Duration;
    /// Time since 1970-01-01T00:00:00Z.
    fn wall(&self) -> Duration;
    /// A future that completes after `d`.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// A clock handle.
#[derive(Clone)]
pub struct Clock(Arc<dyn ClockSource>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

impl Clock {
    /// Wraps a provider.
    pub fn new(source: Arc<dyn ClockSource>) -> Clock {
        Clock(source)
    }
    /// Monotonic time since boot.
    pub fn monotonic(&self) -> Duration {
        self.0.monotonic()
    }
    /// Wall time since the Unix epoch.
    pub fn wall(&self) -> Duration {
        self.0.wall()
    }
    /// Waits `d` without blocking other requests.
    pub async fn sleep(&self, d: Duration) {
        self.0.sleep(d).await;
    }
}

/// Provider side of randomness.
///
/// MUST rule: `fill` MUST fill the whole buffer with bytes from a cryptographically seeded generator.
pub trait EntropySource: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// An entropy handle.
#[derive(Clone)]
pub struct Entropy(Arc<dyn EntropySource>);

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Entropy")
    }
}

impl Entropy {
    /// Wraps a provider.
    pub fn new(source: Arc<dyn EntropySource>) -> Entropy {
        Entropy(source)
    }
    /// Fills `buf`.
    pub fn fill(&self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
    /// A random u64.
    pub fn u64(&self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// Why a config value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The operator set a key the manifest does not declare.
    UnknownKey(String),
    /// A key was read that the manifest does not declare.
    Undeclared(String),
    /// The value does not parse as the type asked for.
    Invalid {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownKey(k) => {
                write!(f, "config key '{k}' is not declared by the service")
            }
            ConfigError::Undeclared(k) => write!(f, "config key '{k}' read but not declared"),
            ConfigError::Invalid { key, value } => {
                write!(f, "config key '{key}' has an invalid value '{value}'")
            }
        }
    }
}

/// Typed access to the declared config keys, resolved from defaults and operator overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    values: BTreeMap<String, String>,
}

impl Config {
    /// Defaults from the manifest, overridden by the operator's values; an undeclared key is refused.
    pub fn resolve<'a>(
        manifest: &Manifest,
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Config, ConfigError> {
        let mut values: BTreeMap<String, String> = manifest
            .config
            .iter()
            .map(|k| (k.name.to_string(), k.default.to_string()))
            .collect();
        for (k, v) in overrides {
            match values.get_mut(k) {
                Some(slot) => *slot = v.to_string(),
                None => return Err(ConfigError::UnknownKey(k.to_string())),
            }
        }
        Ok(Config { values })
    }

    /// The value of a declared key, as text.
    pub fn get(&self, key: &str) -> Result<&str, ConfigError> {
        self.values
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| ConfigError::Undeclared(key.to_string()))
    }

    /// The value of a declared key, parsed.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<T, ConfigError> {
        let v = self.get(key)?;
        v.parse().map_err(|_| ConfigError::Invalid {
            key: key.to_string(),
            value: v.to_string(),
        })
    }

    /// Every key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What a backend grants a service at construction.
pub struct Capabilities {
    manifest: Manifest,
    transport: Arc<dyn UpstreamTransport>,
    store: Option<Store>,
    clock: Clock,
    entropy: Entropy,
    config: Config,
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capabilities")
            .field("service", &self.manifest.name)
            .field("store", &self.store.is_some())
            .field("config", &self.config)
            .finish()
    }
}

/// The provider parts a backend hands to [`Capabilities::new`].
pub struct Providers {
    /// Upstream calls.
    pub transport: Arc<dyn UpstreamTransport>,
    /// The store, when the manifest declares one.
    pub store: Option<Arc<dyn StoreBackend>>,
    /// Time.
    pub clock: Arc<dyn ClockSource>,
    /// Randomness.
    pub entropy: Arc<dyn EntropySource>,
    /// Resolved config.
    pub config: Config,
}

impl Capabilities {
    /// Backend side: grants the capabilities the manifest declares.
    pub fn new(manifest: Manifest, providers: Providers) -> Capabilities {
        let store = if manifest.store.is_some() {
            providers.store.map(Store::new)
        } else {
            None
        };
        Capabilities {
            manifest,
            transport: providers.transport,
            store,
            clock: Clock::new(providers.clock),
            entropy: Entropy::new(providers.entropy),
            config: providers.config,
        }
    }

    /// A handle to a declared upstream; an undeclared name is refused.
    pub fn upstream(&self, name: &str) -> Result<Upstream, CapError> {
        if !self.manifest.declares_upstream(name) {
            return Err(CapError::UndeclaredUpstream(name.to_string()));
        }
        Ok(Upstream {
            name: Arc::from(name),
            transport: Arc::clone(&self.transport),
        })
    }

    /// Handles to every declared upstream, by name.
    pub fn upstreams(&self) -> BTreeMap<String, Upstream> {
        // Inserted one by one: `collect` into a BTreeMap sorts through the stable sort, about
        // 5 KB of every unikernel image, for a handful of names.
        let mut map = BTreeMap::new();
        for name in self.manifest.upstreams {
            if let Ok(upstream) = self.upstream(name) {
                map.insert(name.to_string(), upstream);
            }
        }
        map
    }

    /// The store; refused when the manifest declares none.
    pub fn store(&self) -> Result<Store, CapError> {
        self.store.clone().ok_or(CapError::NoStore)
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Entropy.
    pub fn entropy(&self) -> Entropy {
        self.entropy.clone()
    }

    /// The resolved config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The manifest the capabilities were granted against.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}
