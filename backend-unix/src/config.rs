//! Node configuration: defaults <- TOML file (`--config FILE`) <- `JANUS_*` environment <- flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// Everything a node needs to run, after all sources are merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Public (downstream) listener.
    pub listen: SocketAddr,
    /// Admin listener (loopback by default).
    pub admin: SocketAddr,
    /// Bearer token for the admin listener; generated and written to a 0600 file when absent.
    pub admin_token: Option<String>,
    /// Node id (default `hostname-pid`).
    pub node_id: Option<String>,
    /// Upstream name -> address.
    pub upstreams: BTreeMap<String, SocketAddr>,
    /// Service config key -> value.
    pub set: BTreeMap<String, String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (EnvFilter syntax).
    pub log_level: String,
    /// Completed traces the flight recorder keeps.
    pub trace_capacity: usize,
    /// Log lines are gathered in memory and written to stderr at most this long after they were
    /// made (or at once when 64 KiB gather); 0 writes every line when it is made. No line is ever
    /// dropped either way.
    pub log_flush_ms: u64,
    /// Largest request head (request line plus headers) in bytes.
    pub max_header_bytes: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send a whole request head, from its first byte.
    pub header_timeout_ms: u64,
    /// Time an idle keep-alive connection is kept open.
    pub idle_timeout_ms: u64,
    /// Upper bound of the drain after SIGTERM/SIGINT.
    pub drain_timeout_ms: u64,
    /// Deadline of one upstream call.
    pub upstream_timeout_ms: u64,
    /// Whether logs are written to stderr at all (tests turn this off).
    pub log_to_stderr: bool,
    /// Shadow twin: the admin address of the stable node whose store this node follows.
    pub follow: Option<SocketAddr>,
    /// Bearer token for the followed node's admin API (default: this node's own token).
    pub follow_token: Option<String>,
    /// On a twin, how long a mirrored request waits for the twin to reach its seq.
    pub mirror_wait_ms: u64,
    /// On a twin, how long each op log batch is held back before it is replayed (so that mirrors
    /// find the twin behind their seq, not past it).
    pub replay_delay_ms: u64,
    /// Resource envelope: each request's live allocations are capped at this many bytes minus the
    /// store's size (a unikernel's heap); 0 = none. A twin without it takes its leader's heap size.
    pub heap_envelope: Option<u64>,
    /// Make the node's tracing dispatcher the process-wide default (a node binary does: its tasks
    /// then need no per-poll dispatcher switch; tests running several nodes in one process do not).
    #[serde(skip)]
    pub global_dispatch: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9080)),
            admin_token: None,
            node_id: None,
            upstreams: BTreeMap::new(),
            set: BTreeMap::new(),
            log_format: LogFormat::Human,
            log_level: "info".to_string(),
            trace_capacity: 1024,
            log_flush_ms: 20,
            max_header_bytes: janus_http1::Limits::DEFAULT.max_head_bytes,
            max_body_bytes: 1 << 20,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            drain_timeout_ms: 10_000,
            upstream_timeout_ms: 10_000,
            log_to_stderr: true,
            follow: None,
            follow_token: None,
            mirror_wait_ms: 500,
            replay_delay_ms: 5,
            heap_envelope: None,
            global_dispatch: false,
        }
    }
}

impl NodeConfig {
    /// A config for tests: ephemeral loopback ports, a fixed token, no stderr logs.
    pub fn ephemeral() -> NodeConfig {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_to_stderr: false,
            ..NodeConfig::default()
        }
    }

    /// Checks the values that have a valid range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("trace-capacity", self.trace_capacity as u64),
            ("max-header-bytes", self.max_header_bytes as u64),
            ("header-timeout-ms", self.header_timeout_ms),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("upstream-timeout-ms", self.upstream_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key: name.to_string(),
                    reason: "must be greater than 0".to_string(),
                });
            }
        }
        if self.max_header_bytes < 64 {
            return Err(ConfigError::Invalid {
                key: "max-header-bytes".to_string(),
                reason: "must be at least 64".to_string(),
            });
        }
        if let Some(token) = &self.admin_token
            && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::Invalid {
                key: "admin-token".to_string(),
                reason: "must be non-empty visible ASCII".to_string(),
            });
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ConfigError::Invalid {
                key: "node-id".to_string(),
                reason: "must be non-empty and use only [A-Za-z0-9._-]".to_string(),
            });
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            ConfigError::Invalid {
                key: "log-level".to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(())
    }
}

/// Command line of a node binary.
#[derive(Debug, Parser)]
#[command(about = "A Janus service node (unix flavour: instrumented debug build)")]
pub struct Cli {
    /// Print the service manifest as JSON and exit.
    #[arg(long)]
    pub print_manifest: bool,
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Public listener address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Admin listener address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// Admin bearer token (generated and written to a file when absent). Visible to every user in
    /// `ps`: prefer the JANUS_ADMIN_TOKEN environment variable or `admin_token` in the config file.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Node id (default hostname-pid).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Maps a declared upstream to an address (repeatable).
    #[arg(long = "upstream", value_name = "NAME=ADDR:PORT", value_parser = parse_upstream)]
    pub upstreams: Vec<(String, SocketAddr)>,
    /// Sets a declared service config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, EnvFilter syntax (default info).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Completed traces kept by the flight recorder (default 1024).
    #[arg(long, value_name = "N")]
    pub trace_capacity: Option<usize>,
    /// Longest time a log line waits in memory before it is written to stderr (default 20; 0:
    /// write each line as it is made).
    #[arg(long, value_name = "MS")]
    pub log_flush_ms: Option<u64>,
    /// Largest request head in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Time to send a whole request head, from its first byte.
    #[arg(long, value_name = "MS")]
    pub header_timeout_ms: Option<u64>,
    /// Idle keep-alive connection timeout.
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Drain bound after SIGTERM/SIGINT.
    #[arg(long, value_name = "MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Deadline of one upstream call.
    #[arg(long, value_name = "MS")]
    pub upstream_timeout_ms: Option<u64>,
    /// Run as the shadow twin of the node whose admin listener is ADDR: follow its store through
    /// its op log (token: JANUS_FOLLOW_TOKEN, else this node's admin token).
    #[arg(long, value_name = "ADDR:PORT")]
    pub follow: Option<SocketAddr>,
    /// On a twin, how long a mirrored request waits for the twin to reach its seq (default 500).
    #[arg(long, value_name = "MS")]
    pub mirror_wait_ms: Option<u64>,
    /// On a twin, how long each op log batch is held back before it is replayed (default 5).
    #[arg(long, value_name = "MS")]
    pub replay_delay_ms: Option<u64>,
    /// Resource envelope in bytes (a unikernel's heap size; 0: none; a twin takes its leader's).
    #[arg(long, value_name = "BYTES")]
    pub heap_envelope: Option<u64>,
}

fn parse_upstream(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=ADDR:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("upstream '{name}': '{addr}' is not ADDR:PORT ({e})"))?;
    Ok((name.to_string(), addr))
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// The flags that were given, as a figment layer (absent flags leave lower layers alone).
#[derive(Serialize)]
struct FlagLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    upstreams: BTreeMap<String, SocketAddr>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_capacity: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_flush_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_header_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_body_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    follow: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mirror_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heap_envelope: Option<u64>,
}

/// Top-level keys the environment may set (`JANUS_<KEY>`, maps as `JANUS_UPSTREAMS__NAME`).
const ENV_KEYS: &[&str] = &[
    "listen",
    "admin",
    "admin_token",
    "node_id",
    "upstreams",
    "set",
    "log_format",
    "log_level",
    "trace_capacity",
    "log_flush_ms",
    "max_header_bytes",
    "max_body_bytes",
    "header_timeout_ms",
    "idle_timeout_ms",
    "drain_timeout_ms",
    "upstream_timeout_ms",
    "follow",
    "follow_token",
    "mirror_wait_ms",
    "replay_delay_ms",
    "heap_envelope",
];

impl Cli {
    /// Merges defaults, the config file, the environment and these flags.
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let mut upstreams = BTreeMap::new();
        for (name, addr) in &self.upstreams {
            if upstreams.insert(name.clone(), *addr).is_some() {
                return Err(ConfigError::Invalid {
                    key: "upstream".to_string(),
                    reason: format!("'{name}' is mapped twice"),
                });
            }
        }
        let flags = FlagLayer {
            listen: self.listen,
            admin: self.admin,
            admin_token: self.admin_token.clone(),
            node_id: self.node_id.clone(),
            upstreams,
            set: self.set.iter().cloned().collect(),
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            trace_capacity: self.trace_capacity,
            log_flush_ms: self.log_flush_ms,
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            header_timeout_ms: self.header_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            drain_timeout_ms: self.drain_timeout_ms,
            upstream_timeout_ms: self.upstream_timeout_ms,
            follow: self.follow,
            mirror_wait_ms: self.mirror_wait_ms,
            replay_delay_ms: self.replay_delay_ms,
            heap_envelope: self.heap_envelope,
        };
        let mut figment = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(path) = &self.config {
            if !path.is_file() {
                return Err(ConfigError::File(path.clone()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let env = Env::prefixed("JANUS_").split("__").filter(|k| {
            let top = k.as_str().split('.').next().unwrap_or("");
            ENV_KEYS.iter().any(|known| known.eq_ignore_ascii_case(top))
        });
        let config: NodeConfig = figment
            .merge(env)
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }
}
