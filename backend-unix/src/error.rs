//! Error types: [`ConfigError`] (operator input, exit 2) and [`NodeError`] (everything that stops a node).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Bad operator input: flags, config file, environment, upstream map or service config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist or is not a file.
    #[error("config file '{}' does not exist or is not a regular file", .0.display())]
    File(PathBuf),
    /// The merged sources could not be read into a config.
    #[error("invalid configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("invalid value for '{key}': {reason}")]
    Invalid {
        /// The flag / key name.
        key: String,
        /// Why.
        reason: String,
    },
    /// The operator mapped an upstream the manifest does not declare.
    #[error("--upstream: {0}")]
    Upstream(String),
    /// The operator set a config key the manifest does not declare, or an invalid value.
    #[error("--set: {0}")]
    ServiceConfig(String),
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad operator input.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The service refused to start.
    #[error("service '{service}' failed to start: {reason}")]
    Init {
        /// Service name.
        service: &'static str,
        /// Its reason.
        reason: String,
    },
    /// The admin token file could not be written.
    #[error("cannot write admin token file '{}': {source}", path.display())]
    TokenFile {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The entropy source is unusable.
    #[error("entropy source: {0}")]
    Entropy(std::io::Error),
    /// Logging could not be set up.
    #[error("logging: {0}")]
    Logging(String),
    /// The runtime could not be built.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

impl NodeError {
    /// The process exit code for this error: 2 for operator input, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::Config(_) => 2,
            _ => 1,
        }
    }
}
