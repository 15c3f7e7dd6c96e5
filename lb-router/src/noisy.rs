//! Routes found noisy: a mirrored request whose stable answer differs from a second answer of the
//! same stable node at the same seq (`mirror::stable_noise`) is noise, not a divergence. Besides the
//! `noisy` mirror counter, each route is reported here (admin `GET /mirrors/noisy`, and
//! `janus_router_mirror_noisy_total{route=...}`) with the keys the stable node itself varies on,
//! so an operator can add them to the route's noise filters (or see which route is unjudgeable).

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use crate::metrics::exposition::{self, Label};

/// Distinct keys kept per route.
const MAX_KEYS: usize = 16;
/// Routes kept (a route label is a configured prefix or "default", so this is a guard only).
const MAX_ROUTES: usize = 256;

/// One noisy route.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NoisyRoute {
    /// The route (its configured prefix, or "default").
    pub route: String,
    /// Mirrors of it judged noisy.
    pub count: u64,
    /// The last noisy request's path.
    pub last_path: String,
    /// When, in Unix milliseconds.
    pub last_ms: i64,
    /// Keys (headers, JSON fields, the body) that differed between the stable node's own answers.
    pub keys: Vec<String>,
}

/// The routes found noisy since the router started.
#[derive(Debug, Default)]
pub struct NoisyRoutes(Mutex<BTreeMap<String, NoisyRoute>>);

impl NoisyRoutes {
    /// Records one noisy mirror of `route`.
    pub fn record<'a>(
        &self,
        route: &str,
        path: &str,
        keys: impl IntoIterator<Item = &'a str>,
        now_ms: i64,
    ) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(route) && map.len() >= MAX_ROUTES {
            return;
        }
        let r = map.entry(route.to_owned()).or_insert_with(|| NoisyRoute {
            route: route.to_owned(),
            count: 0,
            last_path: String::new(),
            last_ms: 0,
            keys: Vec::new(),
        });
        r.count += 1;
        r.last_path = path.to_owned();
        r.last_ms = now_ms;
        for k in keys {
            if r.keys.len() < MAX_KEYS && !r.keys.iter().any(|have| have == k) {
                r.keys.push(k.to_owned());
            }
        }
    }

    /// The noisy routes, by route.
    pub fn list(&self) -> Vec<NoisyRoute> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// `janus_router_mirror_noisy_total{route=...}`.
    /// `janus_router_mirror_noisy_total{route=...}`.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let list = self.list();
        exposition::family(
            enc,
            "janus_router_mirror_noisy",
            "Mirrors judged noisy, per route: the stable node's own answers differ at the same seq.",
            MetricType::Counter,
            list.iter()
                .map(|r| ([("route", Label(r.route.as_str()))], r.count)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_count_and_keep_distinct_keys() {
        let n = NoisyRoutes::default();
        n.record("/nonce", "/nonce", ["json nonce"], 1);
        n.record("/nonce", "/nonce?x=1", ["json nonce", "header date"], 2);
        n.record("/\"q", "/\"q", [], 3);
        let l = n.list();
        assert_eq!(l.len(), 2);
        let nonce = l.iter().find(|r| r.route == "/nonce").expect("route");
        assert_eq!(nonce.count, 2);
        assert_eq!(nonce.last_path, "/nonce?x=1");
        assert_eq!(nonce.keys, ["json nonce", "header date"]);
        #[derive(Debug)]
        struct Only(NoisyRoutes);
        impl prometheus_client::collector::Collector for Only {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                self.0.encode(&mut enc)
            }
        }
        let out = exposition::render(Only(n));
        assert!(out.contains("janus_router_mirror_noisy_total{route=\"/nonce\"} 2"));
        assert!(out.contains("route=\"/\\\"q\"} 1"));
    }
}
