//! Metrics: one prometheus registry per shard (no cross-core cache lines on the message path), merged
//! at scrape time by the `/metrics` endpoint, read by `/health`, and summarised at exit.
//!
//! Guarantee: every metric name is `shardline_<thing>_<unit>` with a small fixed label set (shard,
//! topic, partition, stage, kind, outcome); latency histograms use [`LATENCY_BUCKETS`] (10 µs to 15 s).
//! A failed write observes no latency; it counts its error.
//! Precondition: a [`ShardMetrics`] is used by its own shard only; the endpoint only reads.

pub mod events;
pub mod http;

use std::collections::BTreeMap;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Seconds. Decode sits at the bottom (µs), inserts in the middle (sub-ms to ms), end to end at the top
/// (ms to seconds during catch-up or an outage).
pub const LATENCY_BUCKETS: &[f64] = &[
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// Seconds, for decoding and binding: each takes a few hundred nanoseconds or less, so the buckets
/// start at 100 ns (with [`LATENCY_BUCKETS`] every decode fell into the first bucket and read as
/// "0.01 ms").
pub const DECODE_BUCKETS: &[f64] = &[
    100e-9, 200e-9, 300e-9, 500e-9, 750e-9, 1e-6, 2e-6, 5e-6, 10e-6, 25e-6, 100e-6, 1e-3, 10e-3,
];

/// A shard's metrics, with the hot-path handles resolved once.
#[derive(Clone)]
pub struct ShardMetrics {
    pub registry: Registry,
    pub shard: String,
    pub decode_seconds: Histogram,
    pub bind_seconds: Histogram,
    pub write_seconds: Histogram,
    pub end_to_end_seconds: Histogram,
    /// Where a record's time goes before its write (`shardline_stage_seconds{stage}`): `fetch`, its
    /// Kafka timestamp → consumed by the shard (with CreateTime that includes the producer's batching
    /// and the broker's append; with a LogAppendTime topic only broker → shard), and `queue`, consumed
    /// → its write request sent (decode, processor steps, its batch closing). The write itself is
    /// `write_seconds` (per request, last attempt). Together they make up most of
    /// `end_to_end_seconds`; rate-cap waits, retry backoffs and the loop picking up the completion
    /// are in none of them. `fetch` and end to end have the Kafka timestamp's resolution (1 ms).
    pub stage_fetch: Histogram,
    pub stage_queue: Histogram,
    pub messages: IntCounterVec,
    pub partition_messages: IntCounterVec,
    pub errors: IntCounterVec,
    pub write_retries: IntCounterVec,
    pub commits: IntCounterVec,
    pub in_flight: IntGauge,
    pub paused: IntGauge,
    /// 1 once the shard hit a fatal error and stops; `/health` reports it (see [`http::health`]).
    pub failed: IntGauge,
    pub lag: IntGaugeVec,
    /// The consumer lag in time, per partition (see [`crate::kafka::partitions`]).
    pub lag_seconds: GaugeVec,
    pub assigned: IntGaugeVec,
    /// Unix time of the first record this shard consumed, and of its latest completed record.
    pub first_record_time: Gauge,
    /// Seconds the oldest not-yet-committable record of any partition has waited.
    pub oldest_pending_seconds: Gauge,
    pub last_done_time: Gauge,
    /// Per processor step: latency and outcomes (passed, dropped, missed, failed), labelled by step name.
    pub step_seconds: HistogramVec,
    pub step_outcomes: IntCounterVec,
    /// Lookup cache hits and misses per step.
    pub lookup_cache: IntCounterVec,
    /// Rows per write request (a batch, or a single INSERT as a batch of one).
    pub batch_rows: Histogram,
    /// Write requests by outcome: `written`, `split` (a refused row split the batch into single
    /// writes), `failed` (systemic or stopped).
    pub batches: IntCounterVec,
}

/// Rows per batch: powers of two up to CQL's practical sizes.
pub const BATCH_ROW_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 10.0, 16.0, 32.0, 64.0, 128.0, 256.0];

fn reg<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are static and unique per registry: a clash is a programming error caught by unit tests.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique within a shard registry");
    c
}

fn latency_histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    histogram(r, name, help, labels, LATENCY_BUCKETS)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("static histogram options are valid"),
    )
}

/// A latency histogram labelled by shard only, resolved to this shard's handle.
fn shard_histogram(r: &Registry, shard: &str, name: &str, help: &str) -> Histogram {
    latency_histogram(r, name, help, &["shard"]).with_label_values(&[shard])
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels)
            .expect("static counter options are valid"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("static gauge options are valid"),
    )
}

/// An integer gauge labelled by shard only, resolved to this shard's handle.
fn shard_gauge(r: &Registry, shard: &str, name: &str, help: &str) -> IntGauge {
    gauge(r, name, help, &["shard"]).with_label_values(&[shard])
}

/// A float gauge labelled by shard only (Unix times and ages), resolved to this shard's handle.
fn shard_time_gauge(r: &Registry, shard: &str, name: &str, help: &str) -> Gauge {
    reg(
        r,
        GaugeVec::new(Opts::new(name, help), &["shard"]).expect("static gauge options are valid"),
    )
    .with_label_values(&[shard])
}

/// When the shard's first record came, when its latest finished, how long its oldest pending waits.
fn time_gauges(r: &Registry, s: &str) -> (Gauge, Gauge, Gauge) {
    (
        shard_time_gauge(
            r,
            s,
            "shardline_first_record_time_seconds",
            "Unix time of the first record consumed by the shard.",
        ),
        shard_time_gauge(
            r,
            s,
            "shardline_last_done_time_seconds",
            "Unix time of the shard's latest written or dead-lettered record.",
        ),
        shard_time_gauge(
            r,
            s,
            "shardline_oldest_pending_seconds",
            "Seconds the oldest not-yet-committable record of any partition has waited (a stuck record shows here).",
        ),
    )
}

/// Per processor step: latency, outcomes, lookup cache results.
fn step_metrics(r: &Registry) -> (HistogramVec, IntCounterVec, IntCounterVec) {
    (
        latency_histogram(
            r,
            "shardline_step_seconds",
            "Latency of each processor step.",
            &["shard", "step"],
        ),
        counter(
            r,
            "shardline_step_outcomes_total",
            "Records per processor step and outcome: passed, dropped, missed, failed.",
            &["shard", "step", "outcome"],
        ),
        counter(
            r,
            "shardline_lookup_cache_total",
            "Lookup cache hits and misses per step.",
            &["shard", "step", "result"],
        ),
    )
}

/// The consumer lag per partition, in messages (librdkafka's statistics) and in seconds (the shard's
/// estimate from the last record's timestamp, see [`crate::kafka::partitions`]).
/// The sampled per-record timings, on [`DECODE_BUCKETS`]: decode and bind.
fn decode_and_bind(r: &Registry, s: &str) -> (Histogram, Histogram) {
    let sampled = |name: &str, help: &str| {
        histogram(r, name, help, &["shard"], DECODE_BUCKETS).with_label_values(&[s])
    };
    (
        sampled(
            "shardline_decode_seconds",
            "Wire frame + Avro datum to row, per message; one decode in 16 is timed.",
        ),
        sampled(
            "shardline_bind_seconds",
            "Decoded record to its table's bound row (values, TTL, write timestamp), per insert step; one bind in 16 is timed.",
        ),
    )
}

fn lag_gauges(r: &Registry) -> (IntGaugeVec, GaugeVec) {
    let labels = ["shard", "topic", "partition"];
    let messages = gauge(
        r,
        "shardline_consumer_lag_messages",
        "High watermark minus committed offset, per partition (librdkafka statistics).",
        &labels,
    );
    let seconds = reg(
        r,
        GaugeVec::new(
            Opts::new(
                "shardline_consumer_lag_seconds",
                "How far behind in time a partition's consumption is: 0 when the message lag is 0, \
                 else now minus the timestamp of the last record consumed (an upper bound by at \
                 most the gap to the next record).",
            ),
            &labels,
        )
        .expect("static gauge options are valid"),
    );
    (messages, seconds)
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let registry = Registry::new();
        let s = shard.to_string();
        let r = &registry;
        let (first_record_time, last_done_time, oldest_pending_seconds) = time_gauges(r, &s);
        let (step_seconds, step_outcomes, lookup_cache) = step_metrics(r);
        let (lag, lag_seconds) = lag_gauges(r);
        let stages = latency_histogram(
            r,
            "shardline_stage_seconds",
            "Record time by stage before the write: fetch (Kafka timestamp to consumed), queue (consumed to write sent).",
            &["shard", "stage"],
        );
        // `registry` and `shard` move in last: every field before them borrows them.
        let (decode_seconds, bind_seconds) = decode_and_bind(r, &s);
        ShardMetrics {
            decode_seconds,
            bind_seconds,
            write_seconds: shard_histogram(
                r,
                &s,
                "shardline_write_seconds",
                "INSERT latency of successful writes (last attempt).",
            ),
            end_to_end_seconds: shard_histogram(
                r,
                &s,
                "shardline_end_to_end_seconds",
                "Kafka record timestamp to write acknowledged.",
            ),
            stage_fetch: stages.with_label_values(&[s.as_str(), "fetch"]),
            stage_queue: stages.with_label_values(&[s.as_str(), "queue"]),
            messages: counter(
                r,
                "shardline_messages_total",
                "Messages per stage: consumed, decoded, written, dead_lettered.",
                &["shard", "topic", "stage"],
            ),
            partition_messages: counter(
                r,
                "shardline_partition_messages_total",
                "Messages consumed per partition by this shard.",
                &["shard", "topic", "partition"],
            ),
            errors: counter(
                r,
                "shardline_errors_total",
                "Errors by stage and kind (error class).",
                &["shard", "topic", "stage", "kind"],
            ),
            write_retries: counter(
                r,
                "shardline_write_retries_total",
                "Retried writes by error kind.",
                &["shard", "kind"],
            ),
            commits: counter(
                r,
                "shardline_commits_total",
                "Offset commits by result.",
                &["shard", "result"],
            ),
            in_flight: shard_gauge(
                r,
                &s,
                "shardline_in_flight_writes",
                "Writes and dead-letter produces in flight.",
            ),
            paused: shard_gauge(
                r,
                &s,
                "shardline_paused",
                "1 while the shard has paused its partitions (in-flight budget spent).",
            ),
            failed: shard_gauge(
                r,
                &s,
                "shardline_shard_failed",
                "1 once the shard hit a fatal error (it stops).",
            ),
            lag,
            lag_seconds,
            assigned: gauge(
                r,
                "shardline_partition_assigned",
                "1 for each partition assigned to a shard, with the shard's core.",
                &["shard", "core", "topic", "partition"],
            ),
            batch_rows: histogram(
                r,
                "shardline_batch_rows",
                "Rows per database write request (1: a single INSERT).",
                &["shard"],
                BATCH_ROW_BUCKETS,
            )
            .with_label_values(&[s.as_str()]),
            batches: counter(
                r,
                "shardline_batches_total",
                "Database write requests by outcome: written, split, failed.",
                &["shard", "outcome"],
            ),
            first_record_time,
            last_done_time,
            oldest_pending_seconds,
            step_seconds,
            step_outcomes,
            lookup_cache,
            registry,
            shard: s,
        }
    }

    /// The counter of one stage of one topic (resolve once, then increment freely).
    pub fn stage(&self, topic: &str, stage: &str) -> IntCounter {
        self.messages
            .with_label_values(&[self.shard.as_str(), topic, stage])
    }
}

/// Merges the families of several shard registries (same name → one family, metrics concatenated).
pub fn gather(registries: &[Registry]) -> Vec<MetricFamily> {
    let mut by_name: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for r in registries {
        for mut fam in r.gather() {
            match by_name.get_mut(fam.name()) {
                Some(existing) => {
                    let ms = fam.take_metric();
                    existing.mut_metric().extend(ms);
                }
                None => {
                    by_name.insert(fam.name().to_string(), fam);
                }
            }
        }
    }
    by_name.into_values().collect()
}

/// Min and max over shards of a gauge family (ignoring zeros: shards that never set it).
pub fn gauge_range(fams: &[MetricFamily], name: &str) -> Option<(f64, f64)> {
    let vals: Vec<f64> = fams
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_gauge().get_value())
        .filter(|v| *v > 0.0)
        .collect();
    let min = vals.iter().copied().reduce(f64::min)?;
    let max = vals.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// Sum of a counter family's values whose labels match all of `labels`.
pub fn counter_sum(fams: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> f64 {
    fams.iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// Merged cumulative buckets of a histogram family: (upper bound, cumulative count), plus total count.
pub fn histogram_buckets(fams: &[MetricFamily], name: &str) -> (Vec<(f64, u64)>, u64) {
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut total = 0;
    for m in fams
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
    {
        let h = m.get_histogram();
        total += h.get_sample_count();
        for b in h.get_bucket() {
            *merged.entry(b.upper_bound().to_bits()).or_default() += b.cumulative_count();
        }
    }
    let mut v: Vec<(f64, u64)> = merged
        .into_iter()
        .map(|(k, c)| (f64::from_bits(k), c))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    (v, total)
}

/// A quantile estimated from cumulative buckets by linear interpolation inside the bucket, as
/// Prometheus' `histogram_quantile` does. `None` without samples.
pub fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev_bound = 0.0;
    let mut prev_count = 0u64;
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - prev_count) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some(prev_bound + (bound - prev_bound) * frac.clamp(0.0, 1.0));
        }
        prev_bound = bound;
        prev_count = count;
    }
    // Beyond the last finite bucket: report its bound (a lower bound of the truth).
    Some(prev_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_only_queries_metrics_that_exist() {
        let m = ShardMetrics::new(0);
        m.stage("t", "written").inc();
        m.errors.with_label_values(&["0", "t", "decode", "x"]).inc();
        m.write_retries.with_label_values(&["0", "x"]).inc();
        m.commits.with_label_values(&["0", "ok"]).inc();
        m.lag.with_label_values(&["0", "t", "0"]).set(1);
        m.lag_seconds.with_label_values(&["0", "t", "0"]).set(1.0);
        m.assigned.with_label_values(&["0", "0", "t", "0"]).set(1);
        m.partition_messages
            .with_label_values(&["0", "t", "0"])
            .inc();
        m.batches.with_label_values(&["0", "written"]).inc();
        let names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let dash = include_str!("../../tuning/grafana-dashboard.json");
        let parsed: serde_json::Value = serde_json::from_str(dash).expect("dashboard is JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
        for word in dash.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(base) = word.strip_prefix("shardline_") {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(base, |b, suffix| b.trim_end_matches(suffix));
                assert!(
                    names.iter().any(|n| n == &format!("shardline_{base}")),
                    "dashboard queries unknown metric shardline_{base}"
                );
            }
        }
    }

    #[test]
    fn shard_registries_merge_and_quantiles_interpolate() {
        let a = ShardMetrics::new(0);
        let b = ShardMetrics::new(1);
        a.stage("t", "written").inc_by(3);
        b.stage("t", "written").inc_by(4);
        for _ in 0..90 {
            a.write_seconds.observe(0.0004);
        }
        for _ in 0..10 {
            b.write_seconds.observe(0.004);
        }
        let fams = gather(&[a.registry.clone(), b.registry.clone()]);
        assert_eq!(
            counter_sum(&fams, "shardline_messages_total", &[("stage", "written")]),
            7.0
        );
        assert_eq!(
            counter_sum(&fams, "shardline_messages_total", &[("shard", "1")]),
            4.0
        );
        let (buckets, total) = histogram_buckets(&fams, "shardline_write_seconds");
        assert_eq!(total, 100);
        let p50 = quantile(&buckets, total, 0.5).expect("has samples");
        assert!((250e-6..=500e-6).contains(&p50), "p50 {p50}");
        let p99 = quantile(&buckets, total, 0.99).expect("has samples");
        assert!((2.5e-3..=5e-3).contains(&p99), "p99 {p99}");
        assert_eq!(quantile(&buckets, 0, 0.5), None);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&fams)
            .expect("encodes");
        assert!(
            text.contains("shardline_write_seconds_bucket{shard=\"1\",le=\"0.005\"} 10"),
            "{text}"
        );
    }
}
