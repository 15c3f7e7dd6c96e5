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
//! client [`upstream`]; the request path [`proxy`] (its phases) with [`capture`] and [`mirror`]; the
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
pub mod faults;
pub mod health;
pub mod ids;
pub mod metrics;
#[cfg(not(loom))]
pub mod mirror;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
pub mod proxy;
pub mod rand;
#[cfg(not(loom))]
pub mod router;
#[cfg(not(loom))]
pub mod server;
pub(crate) mod sync;
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
}

#[cfg(not(loom))]
impl Running {
    /// Stops accepting and ends the background tasks.
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

#[cfg(not(loom))]
/// Loads the config, opens the fault store, binds both listeners and spawns the router's tasks.
pub async fn start(source: ConfigSource) -> Result<Running, StartError> {
    let config = source.load()?;
    let (listen, admin_listen) = (config.downstream.listen, config.admin.listen);
    let router = Router::new(config, source)?;
    let downstream = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "downstream.listen",
            addr: listen,
            source,
        })?;
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "admin.listen",
            addr: admin_listen,
            source,
        })?;
    let downstream_addr = downstream.local_addr().map_err(|source| StartError::Bind {
        what: "downstream.listen",
        addr: listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        what: "admin.listen",
        addr: admin_listen,
        source,
    })?;
    let tasks = vec![
        tokio::spawn(server::serve_downstream(router.clone(), downstream)),
        tokio::spawn(admin::serve_admin(router.clone(), admin)),
        tokio::spawn(router.clone().run_background()),
    ];
    Ok(Running {
        router,
        downstream_addr,
        admin_addr,
        tasks,
    })
}
