//! backend-unix: the instrumented debug build of a Janus service, as a Linux process.
//!
//! Layers, outside in: [`main`] parses the command line and merges the config ([`config`]: defaults,
//! TOML file, `JANUS_*` environment, flags), then [`Node::start`] checks it against the service's
//! manifest, grants the capabilities ([`providers`]: hyper upstream client, tokio clock,
//! `/dev/urandom`, a mutex around the shared `MemStore`), builds the service and binds two listeners.
//! The public listener serves HTTP/1.1 with janus-http1's codec, the one the uk build runs ([`conn`]),
//! so both builds give every request the same verdict; each request ([`public`]) runs the service
//! inside a `request` span with panics caught, so a panic becomes a 500 with `x-janus-fault: panic`. Tracing ([`telemetry`]) feeds both the log
//! (human or JSON, filter reloadable at run time) and the flight recorder ([`recorder`]) that keeps
//! whole traces. The admin listener ([`admin`]) serves health, metrics ([`metrics`]), log level,
//! traces and store state behind a bearer token. SIGTERM/SIGINT stop accepting and drain.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod conn;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod node;
pub mod plain_log;
pub mod providers;
pub mod public;
pub mod recorder;
pub mod telemetry;
pub mod twin;

use std::process::ExitCode;

use clap::Parser;
use runtime_abi::Service;

pub use config::{Cli, LogFormat, NodeConfig};
pub use error::{ConfigError, NodeError};
pub use node::{Node, serve};

/// The whole `main` of a node binary: `fn main() -> ExitCode { backend_unix::main::<MyService>() }`.
///
/// Exit codes: 0 after a drain on SIGTERM/SIGINT (or `--print-manifest`), 2 for bad flags or config
/// (the message names the problem), 1 when the service or the node cannot start, or when a second
/// signal cut the drain short.
pub fn main<S: Service>() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.print_manifest {
        println!("{}", S::MANIFEST.to_json());
        return ExitCode::SUCCESS;
    }
    let mut config = match cli.node_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {}", NodeError::Runtime(e));
            return ExitCode::from(1);
        }
    };
    config.global_dispatch = true;
    runtime.block_on(run_process::<S>(config))
}

async fn run_process<S: Service>(config: NodeConfig) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};

    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let node = match Node::start::<S>(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if let Some(path) = node.token_file() {
        println!("admin token written to {}", path.display());
    }
    println!(
        "janus node ready: node={} service={} flavor=unix listen={} admin={}",
        node.node_id(),
        S::MANIFEST.name,
        node.public_addr(),
        node.admin_addr()
    );
    let signal_name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = signal_name, "shutdown requested");
    node.shutdown();
    let sink = node.log_sink();
    // A second signal skips the rest of the drain (exit 1: requests may have been cut off).
    let code = tokio::select! {
        _ = node.wait() => ExitCode::SUCCESS,
        _ = term.recv() => forced("SIGTERM"),
        _ = int.recv() => forced("SIGINT"),
    };
    sink.flush();
    code
}

fn forced(signal: &str) -> ExitCode {
    tracing::warn!(signal, "second signal: exiting without finishing the drain");
    ExitCode::from(1)
}
