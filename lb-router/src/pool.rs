//! Pools and nodes: the live topology (which nodes exist, their weights, health and counters) and the
//! two selection phases, *pick pool* and *pick node*.

use std::sync::{Arc, RwLock};

use crate::config::{Config, NodeConfig};
use crate::health::{EjectionPolicy, NodeHealth, PoolEjections};
use crate::ids::{AdminAddr, NodeId, Pool, UpstreamAddr};
use crate::metrics::Counter;
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Shards of a node's wake-up list ([`Node::until_unhealthy`]): more than the downstream workers of a
/// small machine, so that no two workers share one.
const WAKE_SHARDS: usize = 8;

/// This thread's shard of the wake-up lists: threads take shards in turn as they first ask. Tokio's
/// lock-free paths end where a waiter joins a `Notify`'s list (a mutex): two workers locking one list
/// per request contend, and on a loaded host a worker that loses the race can sleep until the other
/// is scheduled again (a tail-latency spike for all of its connections).
fn wake_shard() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering as O};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, O::Relaxed) % WAKE_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Sentinel for "no state sequence number seen yet".
const NO_SEQ: u64 = u64::MAX;

/// One node and everything the router knows about it.
#[derive(Debug)]
pub struct Node {
    pub id: NodeId,
    pub pool: Pool,
    pub addr: UpstreamAddr,
    pub admin_addr: AdminAddr,
    pub admin_token: Option<String>,
    /// Set on a shadow twin: the stable node whose store it follows. A twin is in no pool: it gets
    /// only that node's mirrored requests.
    pub twin_of: Option<NodeId>,
    /// `http://<addr>`, formatted once: the prefix of every upstream request URI.
    pub base_uri: String,
    weight: AtomicU32,
    pub health: NodeHealth,
    pub requests: Counter,
    pub failures: Counter,
    in_flight: AtomicU64,
    last_seq: AtomicU64,
    /// Woken when the node turns unhealthy: its in-flight requests stop waiting for it. One
    /// `Notify` per thread shard ([`wake_shard`]): every request on a stable node registers with
    /// one and leaves it (each a lock of its waiter list), so the workers must not share a list.
    turned_unhealthy: [tokio::sync::Notify; WAKE_SHARDS],
    /// The engine reported the node stopped (see [`Node::mark_stopped`]).
    stopped: AtomicBool,
}

impl Node {
    pub fn new(cfg: &NodeConfig) -> Self {
        Self {
            id: cfg.id.clone(),
            pool: cfg.pool,
            addr: cfg.addr,
            admin_addr: cfg.admin_addr,
            admin_token: cfg.admin_token.clone(),
            twin_of: cfg.twin_of.clone(),
            base_uri: format!("http://{}", cfg.addr),
            weight: AtomicU32::new(cfg.weight),
            health: NodeHealth::new(),
            requests: Counter::new(),
            failures: Counter::new(),
            in_flight: AtomicU64::new(0),
            last_seq: AtomicU64::new(NO_SEQ),
            turned_unhealthy: std::array::from_fn(|_| tokio::sync::Notify::new()),
            stopped: AtomicBool::new(false),
        }
    }

    /// Resolves once the node is unhealthy (at once if it already is): raced against every forward,
    /// so a request in flight on a stable node found wedged is abandoned (and retried elsewhere if
    /// safe) instead of waiting for `upstream.request_timeout_ms`. Never for a debug node: an
    /// instrumented process legitimately stalls for a while (its panic hook symbolising a backtrace
    /// takes ~1 s in a debug build, long enough to fail two checks), and the answer it is working on
    /// is the very fault it is there to capture; it only stops getting new requests.
    pub async fn until_unhealthy(&self) {
        if self.pool == Pool::Debug {
            return std::future::pending().await;
        }
        let notified = self.turned_unhealthy[wake_shard()].notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.health.is_unhealthy() || self.is_stopped() {
            return;
        }
        notified.await;
    }

    /// Called by discovery when the engine reports the node's VM stopped: its in-flight requests
    /// end at once as [`crate::upstream::UpstreamError::Stopped`] (a VM on a TAP that died sends no
    /// reset; without this they would wait for `upstream.request_timeout_ms`).
    pub fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
        self.retire_connections();
        self.wake_in_flight();
    }

    /// No connection made to the node's addresses until now is used again (see
    /// [`crate::transport::retire`]): whatever answers there next may be another process or VM.
    pub fn retire_connections(&self) {
        crate::transport::retire::retire(self.addr.0);
        crate::transport::retire::retire(self.admin_addr.0);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The error of a request abandoned by [`Node::until_unhealthy`].
    pub fn abandoned(&self) -> crate::upstream::UpstreamError {
        let node = self.id.to_string();
        if self.is_stopped() {
            crate::upstream::UpstreamError::Stopped { node }
        } else {
            crate::upstream::UpstreamError::Abandoned { node }
        }
    }

    /// Called by the checker when this node turned unhealthy.
    pub fn abandon_in_flight(&self) {
        self.retire_connections();
        self.wake_in_flight();
    }

    fn wake_in_flight(&self) {
        for shard in &self.turned_unhealthy {
            shard.notify_waiters();
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Release);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks a request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.inc();
        InFlight(self.clone())
    }

    /// Remembers the highest `x-janus-state-seq` seen from this node.
    pub fn observe_seq(&self, seq: u64) {
        if seq == NO_SEQ {
            return;
        }
        let _ = self
            .last_seq
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                if cur == NO_SEQ || seq > cur {
                    Some(seq)
                } else {
                    None
                }
            });
    }

    pub fn last_seq(&self) -> Option<u64> {
        match self.last_seq.load(Ordering::Acquire) {
            NO_SEQ => None,
            s => Some(s),
        }
    }
}

/// Guard counting one in-flight request on a node.
#[derive(Debug)]
pub struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The set of nodes in force. Replaced as a whole on reload or when a node is added; node state
/// (health, counters) carries over for ids that stay.
#[derive(Debug, Default)]
pub struct Topology {
    pub nodes: Vec<Arc<Node>>,
}

impl Topology {
    /// The nodes of `pool` that take traffic (twins take only their stable node's mirrors).
    pub fn pool(&self, pool: Pool) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes
            .iter()
            .filter(move |n| n.pool == pool && n.twin_of.is_none())
    }

    /// An available shadow twin of stable node `stable`.
    pub fn twin_of(&self, stable: &NodeId) -> Option<Arc<Node>> {
        self.nodes
            .iter()
            .find(|n| n.twin_of.as_ref() == Some(stable) && n.health.is_available())
            .cloned()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.id.as_str() == id)
    }

    /// Phase *pick node*: weighted random among the available nodes of `pool` (in panic mode among
    /// all its nodes, whatever their health), never `exclude`. Draining and weight-0 nodes never.
    pub fn pick_node(&self, pool: Pool, exclude: Option<&NodeId>, rnd: u64) -> Option<Arc<Node>> {
        self.pick_node_in(pool, exclude, rnd, false)
    }

    pub fn pick_node_in(
        &self,
        pool: Pool,
        exclude: Option<&NodeId>,
        rnd: u64,
        panic: bool,
    ) -> Option<Arc<Node>> {
        let eligible = || {
            self.pool(pool).filter(move |n| {
                (n.health.is_available() || (panic && !n.health.is_draining()))
                    && n.weight() > 0
                    && Some(&n.id) != exclude
            })
        };
        let total: u64 = eligible().map(|n| u64::from(n.weight())).sum();
        if total == 0 {
            return None;
        }
        let mut r = rnd % total;
        for n in eligible() {
            let w = u64::from(n.weight());
            if r < w {
                return Some(n.clone());
            }
            r -= w;
        }
        None
    }

    pub fn has_available(&self, pool: Pool) -> bool {
        self.pool(pool)
            .any(|n| n.health.is_available() && n.weight() > 0)
    }

    /// The weight of `pool`'s available nodes and of all its nodes in service (not draining), for its
    /// health score (see `proxy::spill`).
    pub fn pool_capacity(&self, pool: Pool) -> (u64, u64) {
        self.pool(pool)
            .filter(|n| !n.health.is_draining())
            .fold((0, 0), |(up, all), n| {
                let w = u64::from(n.weight());
                (up + if n.health.is_available() { w } else { 0 }, all + w)
            })
    }
}

/// The live topology plus the per-pool ejection accounting that outlives topology swaps.
#[derive(Debug)]
pub struct Pools {
    topology: RwLock<Arc<Topology>>,
    /// Bumped at every topology swap; lets request threads keep a cached `Arc` without touching the lock.
    generation: std::sync::atomic::AtomicU64,
    pub stable_ejections: PoolEjections,
    pub debug_ejections: PoolEjections,
    policy: RwLock<(EjectionPolicy, u32)>,
}

impl Pools {
    pub fn new(config: &Config) -> Self {
        let pools = Self {
            topology: RwLock::new(Arc::new(Topology::default())),
            generation: std::sync::atomic::AtomicU64::new(0),
            stable_ejections: PoolEjections::new(0),
            debug_ejections: PoolEjections::new(0),
            policy: RwLock::new((policy_of(config), config.health.max_ejected_percent)),
        };
        pools.apply_config(config);
        pools
    }

    pub fn ejections(&self, pool: Pool) -> &PoolEjections {
        match pool {
            Pool::Stable => &self.stable_ejections,
            Pool::Debug => &self.debug_ejections,
        }
    }

    pub fn policy(&self) -> EjectionPolicy {
        self.policy
            .read()
            .map(|p| p.0)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// Generation of the topology in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The topology in force (cheap: clones an `Arc`).
    pub fn current(&self) -> Arc<Topology> {
        match self.topology.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, new: Topology) {
        let max_percent = self
            .policy
            .read()
            .map(|p| p.1)
            .unwrap_or_else(|e| e.into_inner().1);
        for pool in Pool::ALL {
            self.ejections(pool)
                .set_cap(new.pool(pool).count(), max_percent);
        }
        let old = {
            let mut guard = match self.topology.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let old = std::mem::replace(&mut *guard, Arc::new(new));
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            old
        };
        // Nodes that left must give back their ejection slot; connections to nodes that left or
        // joined are not used again (a node that joins may be a new VM where an old one was).
        let cur = self.current();
        for n in &old.nodes {
            if cur.get(n.id.as_str()).is_none_or(|c| !Arc::ptr_eq(c, n)) {
                n.health.forget(self.ejections(n.pool));
                n.retire_connections();
            }
        }
        for n in &cur.nodes {
            if old.get(n.id.as_str()).is_none_or(|o| !Arc::ptr_eq(o, n)) {
                n.retire_connections();
            }
        }
    }

    /// Rebuilds the topology from a (validated) config, keeping the state of nodes whose id, pool and
    /// addresses did not change.
    pub fn apply_config(&self, config: &Config) {
        self.apply_nodes(config, &[]);
    }

    /// [`Self::apply_config`] with `extra` nodes (discovered ones) beside the config's; an extra node
    /// whose id the config already has is left out.
    pub fn apply_nodes(&self, config: &Config, extra: &[NodeConfig]) {
        if let Ok(mut p) = self.policy.write() {
            *p = (policy_of(config), config.health.max_ejected_percent);
        }
        let cur = self.current();
        let nodes = config
            .nodes
            .iter()
            .chain(
                extra
                    .iter()
                    .filter(|e| config.nodes.iter().all(|n| n.id != e.id)),
            )
            .map(|nc| match cur.get(nc.id.as_str()) {
                Some(existing)
                    if existing.pool == nc.pool
                        && existing.addr == nc.addr
                        && existing.admin_addr == nc.admin_addr
                        && existing.admin_token == nc.admin_token
                        && existing.twin_of == nc.twin_of =>
                {
                    existing.set_weight(nc.weight);
                    existing.clone()
                }
                _ => Arc::new(Node::new(nc)),
            })
            .collect();
        self.swap(Topology { nodes });
    }

    /// Adds (or replaces) one node at run time.
    pub fn add_node(&self, nc: &NodeConfig) {
        let cur = self.current();
        let mut nodes: Vec<_> = cur
            .nodes
            .iter()
            .filter(|n| n.id != nc.id)
            .cloned()
            .collect();
        nodes.push(Arc::new(Node::new(nc)));
        self.swap(Topology { nodes });
    }

    /// Removes one node at run time; in-flight requests finish on their own `Arc`.
    pub fn remove_node(&self, id: &str) -> bool {
        let cur = self.current();
        if cur.get(id).is_none() {
            return false;
        }
        let nodes = cur
            .nodes
            .iter()
            .filter(|n| n.id.as_str() != id)
            .cloned()
            .collect();
        self.swap(Topology { nodes });
        true
    }
}

fn policy_of(config: &Config) -> EjectionPolicy {
    EjectionPolicy {
        consecutive_failures: config.health.consecutive_failures,
        eject_base_ms: config.health.eject_base_ms,
        eject_max_ms: config.health.eject_max_ms,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn node(id: &str, pool: Pool, weight: u32) -> NodeConfig {
        NodeConfig {
            id: NodeId::new(id),
            pool,
            addr: UpstreamAddr("127.0.0.1:1".parse().expect("addr")),
            admin_addr: AdminAddr("127.0.0.1:2".parse().expect("addr")),
            weight,
            admin_token: None,
            twin_of: None,
        }
    }

    #[test]
    fn weighted_pick_follows_weights_and_skips_unavailable() {
        let c = Config {
            nodes: vec![
                node("a", Pool::Stable, 1),
                node("b", Pool::Stable, 3),
                node("d", Pool::Debug, 1),
            ],
            ..Config::default()
        };
        let pools = Pools::new(&c);
        let t = pools.current();
        let mut counts = [0u32; 2];
        for r in 0..4000u64 {
            let n = t.pick_node(Pool::Stable, None, r).expect("a node");
            counts[usize::from(n.id.as_str() == "b")] += 1;
        }
        assert_eq!(counts, [1000, 3000]);
        t.get("b").expect("b").health.set_draining(true);
        for r in 0..10 {
            assert_eq!(
                t.pick_node(Pool::Stable, None, r).expect("a").id.as_str(),
                "a"
            );
        }
        assert!(
            t.pick_node(Pool::Stable, Some(&NodeId::new("a")), 0)
                .is_none()
        );
    }

    #[test]
    fn reload_keeps_state_of_unchanged_nodes() {
        let mut c = Config {
            nodes: vec![node("a", Pool::Stable, 1), node("b", Pool::Stable, 1)],
            ..Config::default()
        };
        let pools = Pools::new(&c);
        pools.current().get("a").expect("a").requests.inc();
        c.nodes[0].weight = 7;
        c.nodes.remove(1);
        pools.apply_config(&c);
        let t = pools.current();
        let a = t.get("a").expect("a");
        assert_eq!(a.requests.get(), 1);
        assert_eq!(a.weight(), 7);
        assert!(t.get("b").is_none());
    }

    #[test]
    fn seq_only_grows() {
        let n = Node::new(&node("a", Pool::Stable, 1));
        assert_eq!(n.last_seq(), None);
        n.observe_seq(5);
        n.observe_seq(3);
        assert_eq!(n.last_seq(), Some(5));
    }
}
