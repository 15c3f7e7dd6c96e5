//! Router configuration: TOML file <- environment (`JANUS_ROUTER_*`, `__` separates nesting) <- flags,
//! merged with figment, then validated. Every error names the key at fault; a config that fails to
//! load or validate is refused as a whole (on reload the old one stays in force).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::ids::{AdminAddr, NodeId, Pool, UpstreamAddr};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key has the wrong type or is unknown.
    #[error("config refused: {0}")]
    Load(String),
    /// A key parsed but its value is not acceptable.
    #[error("config refused: key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole router configuration. See `lb-router/router.example.toml` for every key.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub downstream: DownstreamConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub mix: MixConfig,
    pub channels: ChannelConfig,
    pub health: HealthConfig,
    pub retry: RetryConfig,
    pub faults: FaultsConfig,
    pub mirror: MirrorConfig,
    pub routes: Vec<RouteConfig>,
    pub nodes: Vec<NodeConfig>,
    pub discovery: DiscoveryConfig,
}

/// Where nodes come from besides `[[nodes]]`: `static` (only those) or `libvirt` (also every running
/// domain carrying Janus node metadata on the listed connection URIs; see `discovery`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    pub kind: String,
    pub uri: Vec<String>,
    /// Only domains of this cluster (the metadata's `cluster`); empty = every Janus domain.
    pub cluster: String,
    /// Admin token of discovered nodes (default: `upstream.admin_token`).
    pub admin_token: Option<String>,
    /// Full re-listing period, besides the lifecycle events.
    pub resync_ms: u64,
    /// How long a new domain may take to pass its first health check before it is given up on (until
    /// its next lifecycle event or re-listing).
    pub join_timeout_ms: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            kind: "static".into(),
            uri: Vec::new(),
            cluster: String::new(),
            admin_token: None,
            resync_ms: 10_000,
            join_timeout_ms: 60_000,
        }
    }
}

/// Limits applied to clients (the downstream side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamConfig {
    pub listen: SocketAddr,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    /// A client that reads nothing of its answer for this long is disconnected.
    pub write_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    /// Accept loops, one per thread with its own runtime and upstream pool (SO_REUSEPORT);
    /// 0 = one per CPU.
    pub workers: usize,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            max_connections: 4096,
            workers: 0,
        }
    }
}

/// How the router talks to nodes (the upstream side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_response_body_bytes: usize,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_node: usize,
    /// Most requests pipelined on one connection to a stable node (0: none, each request has its own).
    pub pipeline_depth: usize,
    /// A pipelined answer this late hands the requests queued behind it on the same connection back,
    /// to be sent again on connections of their own (a slow request holds up only itself).
    pub pipeline_stall_ms: u64,
    /// Bearer token for nodes' admin APIs, unless a node sets its own `admin_token`.
    pub admin_token: String,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            max_response_body_bytes: 8 * 1024 * 1024,
            pool_idle_timeout_ms: 30_000,
            pool_max_idle_per_node: 256,
            pipeline_depth: 16,
            pipeline_stall_ms: 25,
            admin_token: String::new(),
        }
    }
}

/// The router's own admin API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: String,
    pub allow_non_loopback: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            token: String::new(),
            allow_non_loopback: false,
        }
    }
}

/// Weighted mixing of ordinary traffic across the two pools, and spill-over between them by health
/// (formula in `proxy::spill` and `lb-router/README.md`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MixConfig {
    pub stable_weight: u32,
    pub debug_weight: u32,
    /// A pool's health score is its available share (by node weight) times this, capped at 1: with
    /// 1.4 a pool keeps all its traffic until fewer than ~72% of it are available (Envoy's default).
    pub overprovisioning_factor: f64,
    /// Panic mode when the two pools' summed health scores (capped at 1) fall below this percentage:
    /// traffic is spread over all nodes of its pool whatever their health. 0 disables it.
    pub panic_threshold_percent: f64,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self {
            stable_weight: 90,
            debug_weight: 10,
            overprovisioning_factor: 1.4,
            panic_threshold_percent: 50.0,
        }
    }
}

/// How beta users are recognised. Beta users always go to the debug pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// Header whose value `beta_value` marks a beta request ("" disables).
    pub beta_header: String,
    /// Cookie whose value `beta_value` marks a beta request ("" disables).
    pub beta_cookie: String,
    pub beta_value: String,
    /// Header carrying a user id ("" disables). Users hash consistently onto channel and pool.
    pub user_id_header: String,
    /// Share of user ids (by consistent hash) that are beta users, in percent (0..=100).
    pub beta_user_percent: f64,
    /// HMAC-SHA256 key, hex ("" = off). When set, the beta header and cookie count only when signed:
    /// `<beta_value>.<expires>.<hex HMAC-SHA256(key, "<beta_value>.<expires>")>`, `expires` in Unix
    /// seconds and not passed (see `proxy::sign_beta`).
    pub beta_signing_key: String,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            beta_header: "x-janus-channel".to_owned(),
            beta_cookie: "janus_channel".to_owned(),
            beta_value: "beta".to_owned(),
            user_id_header: "x-user-id".to_owned(),
            beta_user_percent: 0.0,
            beta_signing_key: String::new(),
        }
    }
}

/// Active checks and passive ejection (see `health`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Period of the active checks, plus a random `0..=interval_jitter_ms` per round.
    pub interval_ms: u64,
    pub interval_jitter_ms: u64,
    pub timeout_ms: u64,
    /// Failed active checks in a row that make a node unhealthy (never capped).
    pub unhealthy_threshold: u32,
    /// Passing active checks in a row that make an unhealthy node healthy again.
    pub healthy_threshold: u32,
    pub consecutive_failures: u32,
    pub eject_base_ms: u64,
    pub eject_max_ms: u64,
    pub max_ejected_percent: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            // A wedged node (accepts, never answers) is out within interval + jitter + 2 timeouts +
            // interval + jitter in the worst case: ~1 s.
            interval_ms: 200,
            interval_jitter_ms: 50,
            timeout_ms: 250,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            consecutive_failures: 3,
            eject_base_ms: 1_000,
            eject_max_ms: 30_000,
            max_ejected_percent: 50,
        }
    }
}

/// Retry of stable faults onto the debug pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub enabled: bool,
    pub max_body_bytes: usize,
    /// Retries allowed as a fraction of requests (token bucket deposit per request).
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the traffic.
    pub budget_min_per_sec: u32,
    /// Cap of the bucket, in retries.
    pub budget_max_tokens: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_body_bytes: 64 * 1024,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_max_tokens: 100,
        }
    }
}

/// The durable fault store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    pub path: PathBuf,
    pub max_body_bytes: usize,
    pub redact_headers: Vec<String>,
    pub fetch_trace: bool,
    pub fetch_state: bool,
    /// `full` (default: fsync at every commit, survives power loss) or `normal` (survives a process
    /// crash such as SIGKILL, may lose the last commits on power loss).
    pub synchronous: String,
    /// The same (kind, node, outcome, method, path without query) within this long of a row's first
    /// occurrence is counted into that row (`count`, `last_ms`). 0: a row per fault.
    pub dedupe_window_ms: u64,
    /// Retention: most rows, and most bytes of stored bodies/headers/traces/states; oldest dropped
    /// first.
    pub max_rows: u64,
    pub max_bytes: u64,
}

impl Default for FaultsConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("janus-faults.db"),
            max_body_bytes: 64 * 1024,
            redact_headers: vec![
                "authorization".to_owned(),
                "proxy-authorization".to_owned(),
                "cookie".to_owned(),
                "set-cookie".to_owned(),
            ],
            fetch_trace: true,
            fetch_state: true,
            synchronous: "full".to_owned(),
            dedupe_window_ms: 60_000,
            max_rows: 50_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Shadow mirroring of stable traffic to the debug pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    pub max_in_flight: usize,
    pub max_body_bytes: usize,
    pub methods: Vec<String>,
    pub compare_headers: Vec<String>,
    pub ignore_json_fields: Vec<String>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_body_bytes: 256 * 1024,
            methods: vec!["GET".to_owned(), "HEAD".to_owned()],
            compare_headers: vec!["content-type".to_owned()],
            // Fields that legitimately differ between two nodes: trace ids, node ids, timestamps.
            ignore_json_fields: [
                "trace_id",
                "traceId",
                "node",
                "node_id",
                "timestamp",
                "time",
                "now",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// A route: a path prefix that names traffic in metrics and faults, with its mirror fraction and
/// its noise filters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    #[serde(default)]
    pub mirror_fraction: f64,
    /// Noise filter: headers of `mirror.compare_headers` not compared on this route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,
    /// Noise filter: JSON fields (names or `$.paths`) ignored on this route, besides
    /// `mirror.ignore_json_fields`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_json_fields: Vec<String>,
}

/// One node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    pub pool: Pool,
    pub addr: UpstreamAddr,
    pub admin_addr: AdminAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub admin_token: Option<String>,
    /// A debug node that follows this stable node's store (`--follow`): it takes none of the pools'
    /// traffic, only that node's mirrored requests, compared at the same state seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_of: Option<NodeId>,
}

fn default_weight() -> u32 {
    1
}

/// Overrides given on the command line (highest precedence).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<ListenOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminOverride>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListenOverride {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AdminOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where a config comes from; kept so that a reload re-reads the same sources.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub flags: FlagOverrides,
}

impl ConfigSource {
    /// Reads file <- env <- flags and validates the result.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &self.file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file(file));
        }
        fig = fig
            .merge(
                Env::prefixed("JANUS_ROUTER_")
                    .ignore(&["config"])
                    .split("__"),
            )
            .merge(Serialized::defaults(&self.flags));
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment(e)))?;
        config.validate()?;
        Ok(config)
    }
}

fn describe_figment(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::from("<root>")
            } else {
                e.path.join(".")
            };
            format!("key `{key}`: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Loads a file only (no env, no flags): convenient for tests and tools.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        ConfigSource {
            file: Some(path.to_owned()),
            flags: FlagOverrides::default(),
        }
        .load()
    }

    /// Checks every value; the error names the first key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.downstream;
        if d.header_read_timeout_ms == 0 {
            return Err(invalid("downstream.header_read_timeout_ms", "must be > 0"));
        }
        if d.write_timeout_ms == 0 {
            return Err(invalid("downstream.write_timeout_ms", "must be > 0"));
        }
        if d.body_read_timeout_ms == 0 {
            return Err(invalid("downstream.body_read_timeout_ms", "must be > 0"));
        }
        if d.max_header_bytes < 1024 {
            return Err(invalid("downstream.max_header_bytes", "must be >= 1024"));
        }
        if d.max_headers == 0 {
            return Err(invalid("downstream.max_headers", "must be > 0"));
        }
        if d.workers > 256 {
            return Err(invalid(
                "downstream.workers",
                "must be <= 256 (0 = one per CPU)",
            ));
        }
        if d.max_connections == 0 {
            return Err(invalid("downstream.max_connections", "must be > 0"));
        }
        let u = &self.upstream;
        if u.connect_timeout_ms == 0 {
            return Err(invalid("upstream.connect_timeout_ms", "must be > 0"));
        }
        if u.request_timeout_ms == 0 {
            return Err(invalid("upstream.request_timeout_ms", "must be > 0"));
        }
        if u.pipeline_stall_ms == 0 {
            return Err(invalid("upstream.pipeline_stall_ms", "must be > 0"));
        }
        if u.pipeline_depth > 1024 {
            return Err(invalid(
                "upstream.pipeline_depth",
                "must be <= 1024 (0 = no pipelining)",
            ));
        }
        if self.admin.token.is_empty() {
            return Err(invalid(
                "admin.token",
                "must be set (bearer token of the router's admin API)",
            ));
        }
        if !self.admin.allow_non_loopback && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.listen",
                "must be a loopback address unless admin.allow_non_loopback = true",
            ));
        }
        if self.mix.stable_weight == 0 && self.mix.debug_weight == 0 {
            return Err(invalid(
                "mix",
                "stable_weight and debug_weight cannot both be 0",
            ));
        }
        if !(1.0..=10.0).contains(&self.mix.overprovisioning_factor) {
            return Err(invalid(
                "mix.overprovisioning_factor",
                "must be within 1.0..=10.0",
            ));
        }
        if !(0.0..=100.0).contains(&self.mix.panic_threshold_percent) {
            return Err(invalid(
                "mix.panic_threshold_percent",
                "must be within 0..=100",
            ));
        }
        if !(0.0..=100.0).contains(&self.channels.beta_user_percent) {
            return Err(invalid(
                "channels.beta_user_percent",
                "must be within 0..=100",
            ));
        }
        let key = &self.channels.beta_signing_key;
        if !key.is_empty() && (key.len() < 32 || crate::proxy::decode_hex(key).is_none()) {
            return Err(invalid(
                "channels.beta_signing_key",
                "must be hex, at least 16 bytes (32 hex digits; 32 bytes recommended), or \"\" for unsigned beta markers",
            ));
        }
        if !key.is_empty() && self.channels.beta_value.contains(';') {
            return Err(invalid("channels.beta_value", "must not contain ';'"));
        }
        let h = &self.health;
        if h.interval_ms == 0 || h.timeout_ms == 0 {
            return Err(invalid(
                "health.interval_ms",
                "interval_ms and timeout_ms must be > 0",
            ));
        }
        if h.unhealthy_threshold == 0 {
            return Err(invalid("health.unhealthy_threshold", "must be > 0"));
        }
        if h.healthy_threshold == 0 {
            return Err(invalid("health.healthy_threshold", "must be > 0"));
        }
        if h.consecutive_failures == 0 {
            return Err(invalid("health.consecutive_failures", "must be > 0"));
        }
        if h.eject_base_ms == 0 || h.eject_max_ms < h.eject_base_ms {
            return Err(invalid(
                "health.eject_max_ms",
                "need 0 < eject_base_ms <= eject_max_ms",
            ));
        }
        if h.max_ejected_percent > 100 {
            return Err(invalid(
                "health.max_ejected_percent",
                "must be within 0..=100",
            ));
        }
        let r = &self.retry;
        if !(0.0..=10.0).contains(&r.budget_ratio) {
            return Err(invalid("retry.budget_ratio", "must be within 0.0..=10.0"));
        }
        if self.faults.path.as_os_str().is_empty() {
            return Err(invalid("faults.path", "must be set"));
        }
        if self.faults.max_rows == 0 || self.faults.max_bytes == 0 {
            return Err(invalid(
                "faults.max_rows",
                "max_rows and max_bytes must be > 0",
            ));
        }
        if !matches!(self.faults.synchronous.as_str(), "full" | "normal") {
            return Err(invalid(
                "faults.synchronous",
                "must be \"full\" or \"normal\"",
            ));
        }
        for (i, name) in self.faults.redact_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    format!("faults.redact_headers[{i}]"),
                    "not a header name",
                ));
            }
        }
        if self.mirror.max_in_flight == 0 {
            return Err(invalid("mirror.max_in_flight", "must be > 0"));
        }
        for (i, m) in self.mirror.methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                return Err(invalid(
                    format!("mirror.methods[{i}]"),
                    "not an HTTP method",
                ));
            }
        }
        for (i, name) in self.mirror.compare_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    format!("mirror.compare_headers[{i}]"),
                    "not a header name",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.prefix.starts_with('/') {
                return Err(invalid(
                    format!("routes[{i}].prefix"),
                    "must start with '/'",
                ));
            }
            if !(0.0..=1.0).contains(&r.mirror_fraction) {
                return Err(invalid(
                    format!("routes[{i}].mirror_fraction"),
                    "must be within 0.0..=1.0",
                ));
            }
        }
        let disc = &self.discovery;
        match disc.kind.as_str() {
            "static" => {}
            "libvirt" => {
                if disc.uri.is_empty() {
                    return Err(invalid(
                        "discovery.uri",
                        "list at least one libvirt connection URI (e.g. \"qemu:///system\")",
                    ));
                }
                let virsh_found = std::env::var_os("PATH").is_some_and(|paths| {
                    std::env::split_paths(&paths).any(|d| d.join("virsh").is_file())
                });
                if !virsh_found {
                    return Err(invalid(
                        "discovery.kind",
                        "\"libvirt\" runs virsh, which is not on PATH (install libvirt-clients)",
                    ));
                }
                if disc.resync_ms == 0 || disc.join_timeout_ms == 0 {
                    return Err(invalid(
                        "discovery.resync_ms, join_timeout_ms",
                        "must be > 0",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    "discovery.kind",
                    format!("`{other}`: expected \"static\" or \"libvirt\""),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.id.as_str().is_empty() || !n.id.as_str().bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    format!("nodes[{i}].id"),
                    "must be non-empty printable ASCII",
                ));
            }
            if !seen.insert(n.id.clone()) {
                return Err(invalid(
                    format!("nodes[{i}].id"),
                    format!("duplicate node id `{}`", n.id),
                ));
            }
            if n.weight > 10_000 {
                return Err(invalid(format!("nodes[{i}].weight"), "must be <= 10000"));
            }
            if let Some(of) = &n.twin_of {
                if n.pool != Pool::Debug {
                    return Err(invalid(
                        format!("nodes[{i}].twin_of"),
                        "a twin is a debug node (pool = \"debug\")",
                    ));
                }
                // With discovery, the stable node may be one discovered later (a libvirt domain).
                if self.discovery.kind == "static"
                    && !self
                        .nodes
                        .iter()
                        .any(|s| &s.id == of && s.pool == Pool::Stable && s.twin_of.is_none())
                {
                    return Err(invalid(
                        format!("nodes[{i}].twin_of"),
                        format!(
                            "`{of}` is not a stable node of this config (nor discovered: discovery is static)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.downstream.header_read_timeout_ms)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.downstream.body_read_timeout_ms)
    }
    pub fn upstream_request_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream.request_timeout_ms)
    }

    /// The route label of a path: the longest configured prefix that matches, else `default`.
    pub fn route_for<'a>(&'a self, path: &str) -> Option<&'a RouteConfig> {
        self.routes
            .iter()
            .filter(|r| path.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            admin: AdminConfig {
                token: "t".into(),
                ..AdminConfig::default()
            },
            ..Config::default()
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = base();
        c.nodes.push(NodeConfig {
            id: NodeId::new("a"),
            pool: Pool::Stable,
            addr: UpstreamAddr("127.0.0.1:1".parse().expect("addr")),
            admin_addr: AdminAddr("127.0.0.1:2".parse().expect("addr")),
            weight: 1,
            admin_token: None,
            twin_of: None,
        });
        c.nodes.push(c.nodes[0].clone());
        let err = c.validate().expect_err("duplicate id").to_string();
        assert!(err.contains("nodes[1].id"), "{err}");
        let mut twin = c.nodes[0].clone();
        twin.id = NodeId::new("t");
        twin.twin_of = Some(NodeId::new("a"));
        let mut t = base();
        t.nodes = vec![c.nodes[0].clone(), twin.clone()];
        let err = t
            .validate()
            .expect_err("twin in the stable pool")
            .to_string();
        assert!(err.contains("nodes[1].twin_of"), "{err}");
        t.nodes[1].pool = Pool::Debug;
        t.validate().expect("a debug twin of a stable node");
        t.nodes[1].twin_of = Some(NodeId::new("nope"));
        let err = t.validate().expect_err("twin of nothing").to_string();
        assert!(err.contains("`nope` is not a stable node"), "{err}");
        let mut c = base();
        c.admin.listen = "0.0.0.0:9".parse().expect("addr");
        assert!(
            c.validate()
                .expect_err("non loopback")
                .to_string()
                .contains("admin.listen")
        );
        assert!(base().validate().is_ok());
        for bad in ["00ff", "zz".repeat(16).as_str(), "0".repeat(33).as_str()] {
            let mut c = base();
            c.channels.beta_signing_key = bad.into();
            let err = c.validate().expect_err("bad signing key").to_string();
            assert!(err.contains("channels.beta_signing_key"), "{err}");
        }
        let mut c = base();
        c.channels.beta_signing_key = "0a".repeat(32);
        assert!(c.validate().is_ok());
        for (kind, uri, key) in [
            ("consul", vec![], "discovery.kind"),
            ("libvirt", vec![], "discovery.uri"),
        ] {
            let mut c = base();
            c.discovery.kind = kind.into();
            c.discovery.uri = uri;
            let err = c.validate().expect_err("bad discovery").to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn routes_pick_longest_prefix() {
        let mut c = base();
        c.routes = vec![
            RouteConfig {
                prefix: "/kv".into(),
                mirror_fraction: 0.0,
                ..RouteConfig::default()
            },
            RouteConfig {
                prefix: "/kv/admin".into(),
                mirror_fraction: 0.5,
                ..RouteConfig::default()
            },
        ];
        assert_eq!(
            c.route_for("/kv/admin/x").map(|r| r.prefix.as_str()),
            Some("/kv/admin")
        );
        assert_eq!(c.route_for("/kv/x").map(|r| r.prefix.as_str()), Some("/kv"));
        assert!(c.route_for("/other").is_none());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                out.push(k.clone());
                keys(&format!("{prefix}{k}."), v, out);
            }
        }
    }

    /// The shipped example loads, and documents every key the config has.
    #[test]
    fn example_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("router.example.toml");
        let cfg = Config::from_file(&path).expect("example config loads");
        assert_eq!(cfg.nodes.len(), 3);
        assert_eq!(
            cfg.nodes[2].twin_of.as_ref().map(NodeId::as_str),
            Some("uk-1")
        );
        let text = std::fs::read_to_string(&path).expect("read");
        let mut all = Vec::new();
        keys(
            "",
            &serde_json::to_value(Config::default()).expect("json"),
            &mut all,
        );
        keys(
            "",
            &serde_json::to_value(&cfg.nodes[0]).expect("json"),
            &mut all,
        );
        all.push("admin_token".into());
        for k in all {
            assert!(
                text.contains(&format!("{k} ="))
                    || text.contains(&format!("[{k}]"))
                    || text.contains(&format!("[[{k}]]"))
                    || text.contains(&format!("# {k} =")),
                "key `{k}` undocumented"
            );
        }
    }
}
