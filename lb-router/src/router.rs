//! The router's shared state: config in force, pools, metrics, retry budget, upstream clients, fault
//! store, mirror slots; and config reload (SIGHUP or admin API), which swaps what can change without
//! dropping connections and refuses the rest.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::budget::RetryBudget;
use crate::config::{Config, ConfigError, ConfigSource, NodeConfig};
use crate::faults::{Durability, FaultStore, FaultStoreError, StoreOptions};
use crate::metrics::RouterMetrics;
use crate::pool::{Pools, Topology};
use crate::upstream::Upstream;

/// One thread's cached view of one router (keyed by its address, so several routers in one process
/// never mix).
struct Snapshot {
    key: usize,
    config_gen: u64,
    topology_gen: u64,
    config: Arc<Config>,
    topology: Arc<Topology>,
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    FaultStore(#[from] FaultStoreError),
    #[error("internal: cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Everything the request path, the admin API and the background tasks share.
#[derive(Debug)]
pub struct Router {
    config: RwLock<Arc<Config>>,
    /// Bumped at every config swap (see [`Router::snapshot`]).
    config_generation: std::sync::atomic::AtomicU64,
    source: ConfigSource,
    pub pools: Pools,
    pub metrics: RouterMetrics,
    pub budget: RetryBudget,
    pub upstream: Upstream,
    pub faults: Arc<FaultStore>,
    pub mirror_slots: Arc<Semaphore>,
    /// Routes whose mirrors were judged noisy (admin `GET /mirrors/noisy`).
    pub noisy: crate::noisy::NoisyRoutes,
    clock: tokio::time::Instant,
    reload_lock: tokio::sync::Mutex<()>,
    /// Nodes found by `[discovery]`, in force beside the config's `[[nodes]]`.
    discovered: RwLock<Vec<NodeConfig>>,
}

impl Router {
    /// Builds the router from a loaded, validated config.
    pub fn new(config: Config, source: ConfigSource) -> Result<Arc<Self>, StartError> {
        if let Some(parent) = config.faults.path.parent()
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
        let durability = if config.faults.synchronous == "normal" {
            Durability::Normal
        } else {
            Durability::Full
        };
        let f = &config.faults;
        let opts = StoreOptions {
            durability,
            dedupe_window_ms: i64::try_from(f.dedupe_window_ms).unwrap_or(i64::MAX),
            max_rows: f.max_rows,
            max_bytes: f.max_bytes,
        };
        let faults = Arc::new(FaultStore::open_with(&f.path, opts)?);
        let r = &config.retry;
        Ok(Arc::new(Self {
            pools: Pools::new(&config),
            metrics: RouterMetrics::new(),
            budget: RetryBudget::new(r.budget_ratio, r.budget_min_per_sec, r.budget_max_tokens),
            upstream: Upstream::new(&config.upstream),
            faults,
            mirror_slots: Arc::new(Semaphore::new(config.mirror.max_in_flight)),
            noisy: crate::noisy::NoisyRoutes::default(),
            clock: tokio::time::Instant::now(),
            reload_lock: tokio::sync::Mutex::new(()),
            discovered: RwLock::new(Vec::new()),
            config: RwLock::new(Arc::new(config)),
            config_generation: std::sync::atomic::AtomicU64::new(0),
            source,
        }))
    }

    /// The config in force (cheap: clones an `Arc`).
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The config and topology in force, from a per-thread cache that is refreshed only when either
    /// changed: the request path reads two rarely written atomics instead of taking two locks and
    /// bouncing two reference counts between cores on every request.
    pub fn snapshot(&self) -> (Arc<Config>, Arc<Topology>) {
        thread_local! {
            static CACHE: std::cell::RefCell<Vec<Snapshot>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let key = std::ptr::from_ref(self) as usize;
        let (cg, tg) = (
            self.config_generation
                .load(std::sync::atomic::Ordering::Acquire),
            self.pools.generation(),
        );
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(s) = c
                .iter()
                .find(|s| s.key == key && s.config_gen == cg && s.topology_gen == tg)
            {
                return (s.config.clone(), s.topology.clone());
            }
            let fresh = Snapshot {
                key,
                config_gen: cg,
                topology_gen: tg,
                config: self.config(),
                topology: self.pools.current(),
            };
            let out = (fresh.config.clone(), fresh.topology.clone());
            c.retain(|s| s.key != key);
            c.push(fresh);
            out
        })
    }

    /// Milliseconds on the router's monotonic clock (follows paused tokio time in tests).
    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Re-reads the config sources and applies them. On error nothing changes.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let _guard = self.reload_lock.lock().await;
        let source = self.source.clone();
        let result = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| ConfigError::Load(format!("internal: config loader task failed: {e}")))
            .and_then(|r| r);
        let new = match result {
            Ok(new) => new,
            Err(e) => {
                self.metrics.reloads_failed.inc();
                return Err(e);
            }
        };
        if let Err(e) = self.check_reloadable(&new) {
            self.metrics.reloads_failed.inc();
            return Err(e);
        }
        self.apply(new);
        self.metrics.reloads_ok.inc();
        Ok(())
    }

    /// Keys bound at start-up (listeners, the store file, upstream connection settings, mirror slots)
    /// cannot change on reload: such a reload is refused naming the key, and a restart is needed.
    fn check_reloadable(&self, new: &Config) -> Result<(), ConfigError> {
        let old = self.config();
        let fixed: [(&str, bool); 12] = [
            (
                "downstream.workers",
                old.downstream.workers == new.downstream.workers,
            ),
            (
                "downstream.max_connections",
                old.downstream.max_connections == new.downstream.max_connections,
            ),
            (
                "downstream.listen",
                old.downstream.listen == new.downstream.listen,
            ),
            ("admin.listen", old.admin.listen == new.admin.listen),
            ("faults.path", old.faults.path == new.faults.path),
            (
                "faults.synchronous",
                old.faults.synchronous == new.faults.synchronous,
            ),
            (
                "faults.dedupe_window_ms, max_rows, max_bytes",
                (
                    old.faults.dedupe_window_ms,
                    old.faults.max_rows,
                    old.faults.max_bytes,
                ) == (
                    new.faults.dedupe_window_ms,
                    new.faults.max_rows,
                    new.faults.max_bytes,
                ),
            ),
            (
                "upstream.connect_timeout_ms",
                old.upstream.connect_timeout_ms == new.upstream.connect_timeout_ms,
            ),
            (
                "upstream.pool_idle_timeout_ms",
                old.upstream.pool_idle_timeout_ms == new.upstream.pool_idle_timeout_ms,
            ),
            (
                "upstream.pool_max_idle_per_node",
                old.upstream.pool_max_idle_per_node == new.upstream.pool_max_idle_per_node,
            ),
            (
                "mirror.max_in_flight",
                old.mirror.max_in_flight == new.mirror.max_in_flight,
            ),
            ("discovery", old.discovery == new.discovery),
        ];
        for (key, same) in fixed {
            if !same {
                return Err(ConfigError::Invalid {
                    key: key.to_owned(),
                    message: "cannot change on reload; restart the router to change it".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The nodes `[discovery]` found (those in force beside `[[nodes]]`).
    pub fn discovered(&self) -> Vec<NodeConfig> {
        match self.discovered.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the discovered nodes through the reload path: nodes whose id, pool, addresses and
    /// token stay keep their state (health, counters, connections); the others join or leave.
    pub async fn set_discovered(&self, nodes: Vec<NodeConfig>) {
        let _guard = self.reload_lock.lock().await;
        match self.discovered.write() {
            Ok(mut d) => *d = nodes,
            Err(poisoned) => *poisoned.into_inner() = nodes,
        }
        let config = self.config();
        self.pools.apply_nodes(&config, &self.discovered());
    }

    fn apply(&self, new: Config) {
        self.pools.apply_nodes(&new, &self.discovered());
        let r = &new.retry;
        self.budget
            .configure(r.budget_ratio, r.budget_min_per_sec, r.budget_max_tokens);
        let mut guard = match self.config.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(new);
        self.config_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Runs the background duties: retry budget refill and active health checks. Never returns.
    pub async fn run_background(self: Arc<Self>) {
        let budget = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    me.budget.refill();
                }
            })
        };
        crate::checks::run_active_checks(self).await;
        budget.abort();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::config::{AdminConfig, FaultsConfig, FlagOverrides, RetryConfig};

    fn router(name: &str) -> Arc<Router> {
        let dir =
            std::env::temp_dir().join(format!("lb-router-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config {
            admin: AdminConfig {
                token: "t".into(),
                ..AdminConfig::default()
            },
            faults: FaultsConfig {
                path: dir.join("f.db"),
                ..FaultsConfig::default()
            },
            retry: RetryConfig {
                budget_ratio: 0.0,
                budget_min_per_sec: 2,
                budget_max_tokens: 7,
                ..RetryConfig::default()
            },
            ..Config::default()
        };
        Router::new(
            config,
            ConfigSource {
                file: None,
                flags: FlagOverrides::default(),
            },
        )
        .expect("router")
    }

    /// The retry budget refills by the floor each second, up to its cap (paused time: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn budget_refills_per_second_up_to_the_cap() {
        let r = router("budget");
        assert!(r.budget.try_withdraw() && r.budget.try_withdraw());
        assert!(!r.budget.try_withdraw(), "the initial floor is spent");
        let bg = tokio::spawn(r.clone().run_background());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The interval ticks at once and after 1 s: two refills of 2 tokens.
        assert_eq!(r.budget.tokens(), 4.0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(r.budget.tokens(), 7.0, "capped at budget_max_tokens");
        bg.abort();
    }

    /// A reload from a source without a file falls back to defaults, which lack `admin.token`: refused,
    /// naming the key, and the old config stays.
    #[tokio::test]
    async fn refused_reload_keeps_config() {
        let r = router("reload");
        let before = r.config();
        let err = r
            .reload()
            .await
            .expect_err("no token in defaults")
            .to_string();
        assert!(err.contains("admin.token"), "{err}");
        assert_eq!(*r.config(), *before);
        assert_eq!(r.metrics.reloads_failed.get(), 1);
    }

    fn discovered_node(id: &str, port: u16) -> NodeConfig {
        NodeConfig {
            id: crate::ids::NodeId::new(id),
            pool: crate::ids::Pool::Stable,
            addr: crate::ids::UpstreamAddr(([10, 77, 0, 10], port).into()),
            admin_addr: crate::ids::AdminAddr(([10, 77, 0, 10], port + 1).into()),
            weight: 1,
            admin_token: Some("tok".into()),
            twin_of: None,
        }
    }

    /// Discovered nodes go through the reload path: one that stays keeps its state (the same node),
    /// one that leaves is gone, one that changed address is a new node; a stopped node's in-flight
    /// requests end as `Stopped`.
    #[tokio::test]
    async fn discovered_nodes_join_and_leave_without_disturbing_the_others() {
        let r = router("discovery");
        r.set_discovered(vec![discovered_node("a", 80), discovered_node("b", 90)])
            .await;
        let a = r.pools.current().get("a").cloned().expect("a joined");
        a.requests.inc();
        let b = r.pools.current().get("b").cloned().expect("b joined");
        let made = crate::transport::retire::generation();
        r.set_discovered(vec![discovered_node("a", 80), discovered_node("c", 100)])
            .await;
        // Connections to a node that left or joined are not used again; to one that stayed they are.
        let current =
            |n: &NodeConfig| crate::transport::retire::still_current(n.addr.0, &mut { made });
        assert!(current(&discovered_node("a", 80)));
        assert!(!current(&discovered_node("b", 90)), "b left");
        assert!(!current(&discovered_node("c", 100)), "c joined");
        let topo = r.pools.current();
        assert!(Arc::ptr_eq(topo.get("a").expect("a stays"), &a));
        assert_eq!(topo.get("a").expect("a").requests.get(), 1);
        assert!(topo.get("b").is_none() && topo.get("c").is_some());
        r.set_discovered(vec![discovered_node("a", 81)]).await;
        assert!(!Arc::ptr_eq(r.pools.current().get("a").expect("a"), &a));
        // A config swap (what a reload applies) keeps the discovered nodes beside the config's.
        r.apply((*r.config()).clone());
        assert_eq!(r.pools.current().nodes.len(), 1);
        b.mark_stopped();
        tokio::time::timeout(Duration::from_secs(1), b.until_unhealthy())
            .await
            .expect("a stopped node's in-flight requests end at once");
        assert!(matches!(
            b.abandoned(),
            crate::upstream::UpstreamError::Stopped { .. }
        ));
        assert!(matches!(
            a.abandoned(),
            crate::upstream::UpstreamError::Abandoned { .. }
        ));
    }
}
