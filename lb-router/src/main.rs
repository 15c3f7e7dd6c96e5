//! `lb-router --config router.toml`: runs the Janus router. Reloads its config on SIGHUP.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lb_router::config::{AdminOverride, ListenOverride};
use lb_router::{ConfigSource, FlagOverrides};

/// The Janus router: mixes stable (unikernel) and debug (instrumented) pools, retries stable faults on
/// debug nodes and records them.
#[derive(Debug, Parser)]
#[command(name = "lb-router", version)]
struct Args {
    /// Config file (TOML). Env `JANUS_ROUTER_<SECTION>__<KEY>` and these flags override it.
    #[arg(long, env = "JANUS_ROUTER_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `downstream.listen` (port 0 picks a free port; the bound address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `admin.listen`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Overrides `admin.token`. Visible to every user in `ps`: prefer the config file (0600) or
    /// JANUS_ROUTER_ADMIN__TOKEN.
    #[arg(long)]
    admin_token: Option<String>,
    /// Only load and validate the config, then exit (0 if valid).
    #[arg(long)]
    check: bool,
    /// The downstream listener is the listening socket on standard input (handed over by a
    /// supervisor that keeps it open across restarts, so clients wait instead of being refused
    /// while the router restarts); `downstream.listen` is then only informative.
    #[arg(long, conflicts_with = "listen")]
    listen_stdin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let admin =
        (args.admin_listen.is_some() || args.admin_token.is_some()).then(|| AdminOverride {
            listen: args.admin_listen,
            token: args.admin_token.clone(),
        });
    let source = ConfigSource {
        file: args.config.clone(),
        flags: FlagOverrides {
            downstream: args.listen.map(|listen| ListenOverride { listen }),
            admin,
        },
    };
    if args.check {
        return match source.load() {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb-router: {e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-router: internal: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(source, args.listen_stdin))
}

/// The listening socket on standard input (`--listen-stdin`).
fn stdin_listener() -> Result<std::net::TcpListener, String> {
    use std::os::fd::AsFd as _;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("--listen-stdin: cannot duplicate standard input: {e}"))?;
    let listener = std::net::TcpListener::from(fd);
    match listener.local_addr() {
        Ok(_) => Ok(listener),
        Err(e) => Err(format!(
            "--listen-stdin: standard input is not a listening TCP socket ({e}); start the router \
             from a supervisor that hands one over (janus up does), or use --listen"
        )),
    }
}

async fn run(source: ConfigSource, listen_stdin: bool) -> ExitCode {
    let inherited = if listen_stdin {
        match stdin_listener() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("lb-router: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let running = match lb_router::start_with(source, inherited).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lb-router: {e}");
            return ExitCode::from(2);
        }
    };
    // One machine-readable line so scripts and tests learn the bound ports.
    println!(
        "lb-router listening downstream={} admin={}",
        running.downstream_addr, running.admin_addr
    );
    let _ = std::io::stdout().flush();
    tracing::info!(downstream = %running.downstream_addr, admin = %running.admin_addr, "lb-router started");

    let (mut hup, mut term) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(h), Ok(t)) => (h, t),
        _ => {
            eprintln!("lb-router: internal: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match running.router.reload().await {
                Ok(()) => tracing::info!("config reloaded (SIGHUP)"),
                Err(e) => tracing::error!(error = %e, "config reload refused (SIGHUP); the old config stays in force"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("lb-router stopping");
    running.shutdown();
    ExitCode::SUCCESS
}
