//! The metrics exposition: `prometheus-client`'s OpenMetrics text encoder over the router's own
//! lock-free counters (which stay loom-checked, see the parent module). A family is named as its
//! samples are, minus `_total` for counters (the encoder adds it), so the sample lines scrapers read
//! are `janus_router_*_total{...} N` as before; label values are escaped as the format requires.
//! Differences from the hand-written text this replaces, all within the formats: every family has a
//! `# HELP`; a counter's `# TYPE` names the family (`janus_router_requests`, OpenMetrics), not the
//! sample; a histogram writes `_sum` and `_count` first and `le` before its other labels; the text
//! ends with `# EOF`; it is served as `application/openmetrics-text`.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{FAULT_KINDS, Flavor, LATENCY_BUCKETS, RouterMetrics};
use crate::ids::Pool;

/// The `status` label of the status classes counted per pool and flavour (index = class - 1).
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole exposition of `collector`, ending with `# EOF`.
pub fn render(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail, and our collectors only fail when the writer does.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A label value, escaped (`\\`, `\"`, `\n`) as the text formats require.
pub struct Label<'a>(pub &'a str);

impl EncodeLabelValue for Label<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Labels of one sample, in the order they are written.
pub type Labels<'a, const N: usize> = [(&'static str, Label<'a>); N];

/// A family of samples of `kind` (counter: `name` without `_total`; gauge).
pub fn family<'l, const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'l, N>, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let sample = metric.encode_family(&labels)?;
        value(sample, kind, v)?;
    }
    Ok(())
}

/// One unlabelled sample.
pub fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: u64,
) -> fmt::Result {
    value(enc.encode_descriptor(name, help, None, kind)?, kind, v)
}

fn value(mut m: MetricEncoder<'_>, kind: MetricType, v: u64) -> fmt::Result {
    if matches!(kind, MetricType::Counter) {
        m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
    } else {
        m.encode_gauge(&v)
    }
}

impl RouterMetrics {
    /// The router-wide families (the per-node ones are the caller's).
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pools = Pool::ALL.iter().flat_map(|&pool| {
            Flavor::ALL.iter().flat_map(move |&flavor| {
                STATUS_CLASSES.iter().enumerate().map(move |(ci, class)| {
                    let v = self.responses[Self::pool_index(pool)][flavor.index()][ci].get();
                    let labels = [
                        ("pool", Label(pool.as_str())),
                        ("flavor", Label(flavor.as_str())),
                        ("status", Label(class)),
                    ];
                    (labels, v)
                })
            })
        });
        let router = STATUS_CLASSES.iter().enumerate().map(|(ci, class)| {
            let labels = [
                ("pool", Label("router")),
                ("flavor", Label("none")),
                ("status", Label(class)),
            ];
            (labels, self.router_responses[ci].get())
        });
        family(
            enc,
            "janus_router_requests",
            "Responses sent to clients, by answering pool, flavor and status class.",
            MetricType::Counter,
            pools.chain(router),
        )?;
        let mut latency = enc.encode_descriptor(
            "janus_router_request_duration_seconds",
            "Time from request read to response ready, by answering pool.",
            None,
            MetricType::Histogram,
        )?;
        for pool in Pool::ALL {
            let h = &self.latency[Self::pool_index(pool)];
            let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .zip(&h.buckets)
                .map(|(b, c)| (*b, c.get()))
                .collect();
            let in_buckets: u64 = buckets.iter().map(|(_, c)| c).sum();
            let count = h.count.get();
            buckets.push((f64::MAX, count.saturating_sub(in_buckets)));
            let labels = [("pool", Label(pool.as_str()))];
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    h.sum_micros.get() as f64 / 1e6,
                    count,
                    &buckets,
                    None,
                )?;
        }
        let by = |key: &'static str, list: &[(&'static str, &super::Counter)]| {
            list.iter()
                .map(|(v, c)| ([(key, Label(v))], c.get()))
                .collect::<Vec<_>>()
        };
        family(
            enc,
            "janus_router_retries",
            "Retries of stable faults on debug nodes, by result.",
            MetricType::Counter,
            by(
                "result",
                &[
                    ("sent", &self.retries_sent),
                    ("denied_budget", &self.retries_denied_budget),
                    ("not_replayable", &self.retries_not_replayable),
                    ("no_debug_node", &self.retries_no_debug_node),
                ],
            ),
        )?;
        family(
            enc,
            "janus_router_faults",
            "Fault rows recorded, by kind.",
            MetricType::Counter,
            FAULT_KINDS
                .iter()
                .zip(&self.faults)
                .map(|(kind, c)| ([("kind", Label(kind))], c.get())),
        )?;
        single(
            enc,
            "janus_router_fault_store_errors",
            "Fault store writes that failed.",
            MetricType::Counter,
            self.fault_store_errors.get(),
        )?;
        family(
            enc,
            "janus_router_mirror",
            "Mirrored requests, by result.",
            MetricType::Counter,
            by(
                "result",
                &[
                    ("sent", &self.mirror_sent),
                    ("match", &self.mirror_match),
                    ("diverged", &self.mirror_diverged),
                    ("dropped", &self.mirror_dropped),
                    ("error", &self.mirror_errors),
                    ("skipped_lag", &self.mirror_skipped_lag),
                    ("noisy", &self.mirror_noisy),
                ],
            ),
        )?;
        family(
            enc,
            "janus_router_health_transitions",
            "Nodes turned unhealthy or healthy by active checks.",
            MetricType::Counter,
            by(
                "to",
                &[
                    ("unhealthy", &self.turned_unhealthy),
                    ("healthy", &self.turned_healthy),
                ],
            ),
        )?;
        for (name, help, c) in [
            (
                "janus_router_channel_fallbacks",
                "Requests moved to the other pool (spill-over by health, or no node in the wanted pool).",
                &self.channel_fallbacks,
            ),
            (
                "janus_router_panic_routed",
                "Requests routed in panic mode (both pools too degraded: health ignored).",
                &self.panic_routed,
            ),
            (
                "janus_router_downstream_rejected",
                "Client connections refused over downstream.max_connections.",
                &self.downstream_rejected,
            ),
            (
                "janus_router_upstream_pipelined_requests",
                "Requests answered on a lane (pipelined to a stable node).",
                &self.pipelined_requests,
            ),
            (
                "janus_router_upstream_pipelined_batches",
                "Batches of pipelined requests written to lanes.",
                &self.pipelined_batches,
            ),
            (
                "janus_router_upstream_lane_resent",
                "Requests a lane handed back unsent and that went again on a connection of their own.",
                &self.lane_resent,
            ),
            (
                "janus_router_upstream_stale_resent",
                "Repeatable requests sent again on a new connection after a reused one ended before any byte of their answer.",
                &self.stale_resent,
            ),
            (
                "janus_router_reloads_ok",
                "Configuration reloads applied.",
                &self.reloads_ok,
            ),
            (
                "janus_router_reloads_failed",
                "Configuration reloads refused (the old configuration stays).",
                &self.reloads_failed,
            ),
        ] {
            single(enc, name, help, MetricType::Counter, c.get())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Router(RouterMetrics);

    impl Collector for Router {
        fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
            self.0.encode(&mut enc)?;
            family(
                &mut enc,
                "x_node_weight",
                "A gauge with an awkward label.",
                MetricType::Gauge,
                [([("node", Label("a\"b\\c\nd"))], 3)],
            )
        }
    }

    #[test]
    fn samples_keep_their_names_and_labels_and_values_are_escaped() {
        let m = RouterMetrics::new();
        m.record_response(Pool::Stable, Flavor::Uk, 200, 50);
        m.record_response(Pool::Stable, Flavor::Uk, 200, 3_000);
        m.record_response(Pool::Stable, Flavor::Uk, 503, 10_000_000);
        m.retries_sent.inc();
        m.reloads_failed.add(2);
        let text = render(Router(m));
        for line in [
            "# HELP janus_router_requests Responses sent to clients, by answering pool, flavor and status class.",
            "# TYPE janus_router_requests counter",
            "janus_router_requests_total{pool=\"stable\",flavor=\"uk\",status=\"2xx\"} 2",
            "janus_router_requests_total{pool=\"router\",flavor=\"none\",status=\"5xx\"} 0",
            "# TYPE janus_router_request_duration_seconds histogram",
            "janus_router_request_duration_seconds_bucket{le=\"0.0001\",pool=\"stable\"} 1",
            "janus_router_request_duration_seconds_bucket{le=\"0.005\",pool=\"stable\"} 2",
            "janus_router_request_duration_seconds_bucket{le=\"5.0\",pool=\"stable\"} 2",
            "janus_router_request_duration_seconds_bucket{le=\"+Inf\",pool=\"stable\"} 3",
            "janus_router_request_duration_seconds_count{pool=\"stable\"} 3",
            "janus_router_retries_total{result=\"sent\"} 1",
            "janus_router_reloads_failed_total 2",
            "x_node_weight{node=\"a\\\"b\\\\c\\nd\"} 3",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        let sum = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("janus_router_request_duration_seconds_sum{pool=\"stable\"} ")
            })
            .and_then(|v| v.parse::<f64>().ok())
            .expect("sum");
        assert!((sum - 10.00305).abs() < 1e-9, "{sum}");
    }
}
