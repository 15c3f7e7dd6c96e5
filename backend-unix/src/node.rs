//! A running node: the service built from its capabilities, the public and admin listeners, and the
//! drain on shutdown.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use runtime_abi::{
    Capabilities, Config, EntropySource, Providers, Service, StoreBackend, StoreLimits,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Dispatch;
use tracing::instrument::WithSubscriber;

use crate::admin::{self, AdminCtx};
use crate::config::NodeConfig;
use crate::conn::{self, ConnLimits};
use crate::error::{ConfigError, NodeError};
use crate::metrics::Metrics;
use crate::providers::{HyperTransport, NodeStore, TokioClock, TraceIds, Urandom};
use crate::public::PublicCtx;
use crate::recorder::FlightRecorder;
use crate::telemetry::{LogSink, Telemetry};

/// Time an admin client has to send a request head (hyper closes the connection after it).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A node serving in the background of the current tokio runtime.
pub struct Node {
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_token: String,
    token_file: Option<PathBuf>,
    node_id: String,
    dispatch: Dispatch,
    recorder: FlightRecorder,
    log_sink: LogSink,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id)
            .field("public_addr", &self.public_addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

/// Default node id: `hostname-pid`.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

fn write_token_file(node_id: &str, token: &str) -> Result<PathBuf, NodeError> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("janus-{node_id}.token"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        // An existing file keeps its mode on open; make sure it is private.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")
    };
    write().map_err(|source| NodeError::TokenFile {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })
}

impl Node {
    /// Checks the config against the service's manifest, builds the service, binds both listeners and
    /// starts serving. Returns once the listeners accept connections.
    pub async fn start<S: Service>(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let manifest = S::MANIFEST;
        manifest
            .check_upstreams(config.upstreams.keys().map(String::as_str))
            .map_err(|e| ConfigError::Upstream(e.to_string()))?;
        let service_config = Config::resolve(
            &manifest,
            config.set.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| ConfigError::ServiceConfig(e.to_string()))?;

        let telemetry = Telemetry::new(
            config.log_format,
            &config.log_level,
            config.log_to_stderr,
            config.trace_capacity,
            Duration::from_millis(config.log_flush_ms),
        )
        .map_err(|e| NodeError::Logging(e.to_string()))?;
        let dispatch = telemetry.dispatch.clone();
        let global = config.global_dispatch
            && tracing::dispatcher::set_global_default(dispatch.clone()).is_ok();
        let entropy = Arc::new(Urandom::open().map_err(NodeError::Entropy)?);
        let node_id = config.node_id.clone().unwrap_or_else(default_node_id);
        let admin_token = match &config.admin_token {
            Some(t) => t.clone(),
            None => {
                // A token only from the kernel's CSPRNG: no fallback, the node does not start.
                let mut b = [0u8; 24];
                entropy.try_fill(&mut b).map_err(NodeError::Entropy)?;
                b.iter().map(|x| format!("{x:02x}")).collect()
            }
        };

        let metrics = Arc::new(Metrics::default());
        let store = manifest.store.map(|spec| {
            Arc::new(NodeStore::new(
                StoreLimits::from_spec(&spec),
                Arc::clone(&metrics),
            ))
        });
        let providers = Providers {
            transport: Arc::new(HyperTransport::new(
                config.upstreams.clone(),
                Duration::from_millis(config.upstream_timeout_ms),
            )),
            store: store.clone().map(|s| -> Arc<dyn StoreBackend> { s }),
            clock: Arc::new(TokioClock::new()),
            entropy: Arc::clone(&entropy) as Arc<dyn EntropySource>,
            config: service_config,
        };
        let caps = Capabilities::new(manifest, providers);
        let service =
            tracing::dispatcher::with_default(&dispatch, || S::new(caps)).map_err(|e| {
                NodeError::Init {
                    service: manifest.name,
                    reason: e.to_string(),
                }
            })?;

        let public_listener = bind(config.listen).await?;
        let admin_listener = bind(config.admin).await?;
        let public_addr = public_listener
            .local_addr()
            .map_err(|source| NodeError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| NodeError::Bind {
                addr: config.admin,
                source,
            })?;
        // Written only once the node can start, so a refused start leaves no file behind.
        let token_file = match config.admin_token {
            Some(_) => None,
            None => Some(write_token_file(&node_id, &admin_token)?),
        };
        if !admin_addr.ip().is_loopback() {
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::warn!(%admin_addr, "admin listener is not on a loopback address");
            });
        }

        let twin = match (config.follow, &store) {
            (None, _) => None,
            (Some(leader), Some(store)) => Some(crate::twin::Twin::new(
                leader,
                config
                    .follow_token
                    .clone()
                    .unwrap_or_else(|| admin_token.clone()),
                Arc::clone(store),
                Duration::from_millis(config.mirror_wait_ms),
                Duration::from_millis(config.replay_delay_ms),
                config.heap_envelope.is_none(),
            )),
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "follow".to_string(),
                    reason: format!(
                        "service '{}' has no store: there is no state to follow",
                        manifest.name
                    ),
                }
                .into());
            }
        };
        if let Some(bytes) = config.heap_envelope {
            crate::envelope::set_cap(bytes);
        }
        let public_ctx = Arc::new(PublicCtx {
            service: Arc::new(service),
            node_id: node_id.clone(),
            store: store.clone(),
            metrics: Arc::clone(&metrics),
            trace_ids: TraceIds::new(),
            dispatch: dispatch.clone(),
            global_dispatch: global,
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            twin: twin.clone(),
        });
        let admin_ctx = Arc::new(AdminCtx {
            token: admin_token.clone(),
            node_id: node_id.clone(),
            service: manifest.name,
            store,
            metrics: Arc::clone(&metrics),
            recorder: telemetry.recorder.clone(),
            log: Arc::new(telemetry.log),
            twin: twin.clone(),
        });
        let limits = ConnLimits {
            max_header_bytes: config.max_header_bytes,
            max_body_bytes: config.max_body_bytes,
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        };
        let (stop, stop_rx) = watch::channel(false);
        let drain = Duration::from_millis(config.drain_timeout_ms);
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(
                node = node_id.as_str(),
                service = manifest.name,
                %public_addr,
                %admin_addr,
                "node listening"
            );
        });
        if let Some(twin) = twin {
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::info!(leader = %config.follow.map(|a| a.to_string()).unwrap_or_default(), "twin: following");
            });
            tokio::spawn(twin.run(stop_rx.clone()).with_subscriber(dispatch.clone()));
        }
        let task = tokio::spawn(
            run(
                public_listener,
                admin_listener,
                public_ctx,
                admin_ctx,
                limits,
                stop_rx,
                drain,
            )
            .with_subscriber(dispatch.clone()),
        );
        Ok(Node {
            public_addr,
            admin_addr,
            admin_token,
            token_file,
            node_id,
            dispatch,
            recorder: telemetry.recorder,
            log_sink: telemetry.sink,
            metrics,
            stop,
            task,
        })
    }

    /// The bound public address.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Where the generated admin token was written (`None` when it was given).
    pub fn token_file(&self) -> Option<&std::path::Path> {
        self.token_file.as_deref()
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's tracing dispatcher.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// The flight recorder.
    pub fn recorder(&self) -> &FlightRecorder {
        &self.recorder
    }

    /// Where the log lines go (flush it before the process exits).
    pub fn log_sink(&self) -> LogSink {
        self.log_sink.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting and starts draining (returns at once; see [`Node::wait`]).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the node has drained and stopped.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::dispatcher::with_default(&self.dispatch, || {
                tracing::error!(error = %e, "node task failed");
            });
        }
        self.log_sink.flush();
        // The generated token dies with the node; so does its file.
        if let Some(path) = &self.token_file {
            let _ = std::fs::remove_file(path);
        }
    }

    /// [`Node::shutdown`] then [`Node::wait`].
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

/// Runs a node until `shutdown` completes, then drains it.
pub async fn serve<S: Service>(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let node = Node::start::<S>(config).await?;
    shutdown.await;
    node.stop().await;
    Ok(())
}

async fn run<S: Service>(
    public: TcpListener,
    admin: TcpListener,
    public_ctx: Arc<PublicCtx<S>>,
    admin_ctx: Arc<AdminCtx>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let global = public_ctx.global_dispatch;
    let dispatch = public_ctx.dispatch.clone();
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(
        admin_loop(admin, admin_ctx, admin_stop_rx, dispatch.clone())
            .with_subscriber(dispatch.clone()),
    );
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = conn::stopped(&mut stop) => break,
            accepted = public.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Under a unikernel's resource envelope, no more connections than it holds:
                    // past its socket cap it refuses them, and so does this node.
                    let cap = crate::envelope::cap();
                    while cap > 0 && conns.try_join_next().is_some() {}
                    if cap > 0 && conns.len() >= runtime_abi::node::uk_connection_cap(cap) {
                        tracing::warn!(
                            connections = conns.len(),
                            envelope_bytes = cap,
                            "connection refused: the resource envelope's socket cap"
                        );
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let serve =
                        conn::serve(stream, limits, Arc::clone(&public_ctx), stop.clone());
                    if global {
                        // The node's dispatcher is the process default: no switch per poll.
                        conns.spawn(serve);
                    } else {
                        conns.spawn(serve.with_subscriber(dispatch.clone()));
                    }
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(public);
    tracing::info!(
        connections = conns.len(),
        in_flight = public_ctx.metrics.in_flight(),
        "shutdown: stopped accepting, draining"
    );
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "drain timeout: aborting remaining connections"
        );
        conns.shutdown().await;
    }
    admin_stop.send_replace(true);
    let _ = admin_task.await;
    tracing::info!("node stopped");
}

async fn admin_loop(
    listener: TcpListener,
    ctx: Arc<AdminCtx>,
    mut stop: watch::Receiver<bool>,
    dispatch: Dispatch,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = conn::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = Arc::clone(&ctx);
                    let mut stop = stop.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| admin::handle(Arc::clone(&ctx), req));
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = conn::stopped(&mut stop) => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                            }
                        }
                    }.with_subscriber(dispatch.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}
