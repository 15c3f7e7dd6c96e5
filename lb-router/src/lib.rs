//! # lb-router
//!
//! The Janus router. It mixes two pools of nodes that run the same service: the **stable** pool
//! (lean unikernel images) and the **debug** pool (instrumented Linux processes). Ordinary traffic
//! is mixed by weight, beta users (header, cookie or a consistent hash of their user id) always go to
//! debug nodes, and whenever a stable node fails a request the router replays it (if that is safe) on
//! a debug node, answers the client from there, and records the fault with the debug node's trace in
//! a durable SQLite store. A share of good stable traffic is also mirrored to debug nodes and the two
//! answers compared.
//!
//! Layers, bottom-up: [`ids`] (newtypes) and [`sync`] (loom seam); the lock-free shared state
//! ([`health`], [`budget`], [`metrics`]); [`config`] and the live topology [`pool`]; the upstream
//! vocabulary [`upstream`] and the one [`transport`] to nodes (pool, lanes, head writer, answer
//! reader); the request path [`proxy`] (its phases) with [`capture`] and [`mirror`]; the
//! listeners [`server`] and [`admin`]; [`router`] ties the state together and [`start`] runs it all.
#![forbid(unsafe_code)]

#[cfg(not(loom))]
pub mod admin;
pub mod budget;
#[cfg(not(loom))]
pub mod capture;
#[cfg(not(loom))]
pub mod checks;
#[cfg(not(loom))]
pub mod config;
#[cfg(not(loom))]
pub mod discovery;
#[cfg(not(loom))]
mod fast;
#[cfg(not(loom))]
pub mod faults;
pub mod health;
pub mod ids;
pub mod metrics;
#[cfg(not(loom))]
pub mod mirror;
#[cfg(not(loom))]
pub mod noisy;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
pub mod proxy;
pub mod rand;
#[cfg(not(loom))]
mod relay;
#[cfg(not(loom))]
pub mod router;
#[cfg(not(loom))]
pub mod server;
#[cfg(not(loom))]
pub mod status;
pub(crate) mod sync;
#[cfg(not(loom))]
pub mod transport;
#[cfg(not(loom))]
pub mod upstream;

#[cfg(not(loom))]
use std::net::SocketAddr;
#[cfg(not(loom))]
use std::sync::Arc;

#[cfg(not(loom))]
pub use config::{Config, ConfigError, ConfigSource, FlagOverrides};
#[cfg(not(loom))]
pub use faults::{FaultFilter, FaultRecord, FaultStore, FaultStoreError, FaultSummary};
#[cfg(not(loom))]
pub use router::{Router, StartError};

#[cfg(not(loom))]
/// A started router: its state and the addresses it actually listens on.
#[derive(Debug)]
pub struct Running {
    pub router: Arc<Router>,
    pub downstream_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

#[cfg(not(loom))]
impl Running {
    /// Stops accepting, closes client connections and ends the background tasks.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

#[cfg(not(loom))]
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

#[cfg(not(loom))]
/// Loads the config, opens the fault store, binds both listeners and starts the router: one accept
/// thread per `downstream.workers` (each its own single-threaded runtime on a SO_REUSEPORT listener,
/// with its own pool of node connections), plus the admin API and background duties on the caller's
/// runtime.
pub async fn start(source: ConfigSource) -> Result<Running, StartError> {
    start_with(source, None).await
}

#[cfg(not(loom))]
/// [`start`], with the downstream listener handed over already bound (`lb-router --listen-stdin`:
/// a supervisor keeps the socket open across restarts, so connections made while the router is
/// down wait in its backlog instead of being refused). Every worker accepts on a duplicate of it.
pub async fn start_with(
    source: ConfigSource,
    inherited: Option<std::net::TcpListener>,
) -> Result<Running, StartError> {
    let config = source.load()?;
    let (listen, admin_listen) = (config.downstream.listen, config.admin.listen);
    let workers = match config.downstream.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let max_connections = config.downstream.max_connections;
    let router = Router::new(config, source)?;
    let bind_err = |source| StartError::Bind {
        what: "downstream.listen",
        addr: listen,
        source,
    };
    let mut listeners = Vec::with_capacity(workers);
    let downstream_addr = match inherited {
        Some(l) => {
            l.set_nonblocking(true).map_err(bind_err)?;
            let addr = l.local_addr().map_err(bind_err)?;
            for _ in 1..workers {
                listeners.push(l.try_clone().map_err(bind_err)?);
            }
            listeners.push(l);
            addr
        }
        None => {
            let first = bind_reuseport(listen).map_err(bind_err)?;
            let addr = first.local_addr().map_err(bind_err)?;
            listeners.push(first);
            for _ in 1..workers {
                listeners.push(bind_reuseport(addr).map_err(bind_err)?);
            }
            addr
        }
    };
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "admin.listen",
            addr: admin_listen,
            source,
        })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        what: "admin.listen",
        addr: admin_listen,
        source,
    })?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut worker_threads = Vec::new();
    let (balance, handed) = server::Balance::new(listeners.len());
    for (i, (listener, handed)) in listeners.into_iter().zip(handed).enumerate() {
        let (router, slots, mut stop_rx) = (router.clone(), slots.clone(), stop_rx.clone());
        let balance = balance.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StartError::Bind {
                what: "downstream.workers",
                addr: listen,
                source,
            })?;
        let handle = std::thread::Builder::new()
            .name(format!("lb-router-worker-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "internal: worker cannot register its listener");
                            return;
                        }
                    };
                    tokio::select! {
                        () = server::serve_downstream(router, listener, slots, balance, i, handed) => {}
                        _ = stop_rx.wait_for(|stop| *stop) => {}
                    }
                });
                // Dropping the runtime here closes this worker's client and node connections.
            })
            .map_err(|source| StartError::Bind { what: "downstream.workers", addr: listen, source })?;
        worker_threads.push(handle);
    }
    let tasks = vec![
        tokio::spawn(admin::serve_admin(router.clone(), admin)),
        tokio::spawn(router.clone().run_background()),
        tokio::spawn(discovery::run(router.clone())),
    ];
    Ok(Running {
        router,
        downstream_addr,
        admin_addr,
        tasks,
        stop,
        workers: worker_threads,
    })
}
