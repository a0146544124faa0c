//! The end-of-run summary: counts and latency quantiles from the merged shard metrics.
//!
//! Guarantee: every figure comes from the same counters and histograms `/metrics` exports;
//! quantiles are estimated from histogram buckets (linear interpolation), as Prometheus does.

use std::collections::BTreeMap;

use prometheus::Registry;
use serde::Serialize;

use crate::metrics::{counter_sum, gather, gauge_range, histogram_buckets, quantile};

#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub count: u64,
    /// The exact mean (the histogram's sum over its count): what Little's law takes.
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// The top finite bucket's bound and the samples above it. A quantile that falls among those is
    /// reported as the bound, which is then only a lower bound: print it as "> top" (see
    /// [`Quantiles::shown`]), never as a measurement.
    pub top_ms: Option<f64>,
    pub over_top: u64,
}

impl Quantiles {
    /// A quantile for people: "12.34 ms", "> 15000 ms" when it lies above the top bucket, "n/a".
    pub fn shown(&self, q: f64, value: Option<f64>) -> String {
        match (value, self.top_ms) {
            (None, _) => "n/a".into(),
            (Some(_), Some(top)) if self.beyond_top(q) => format!("> {top:.0} ms"),
            (Some(v), _) => format!("{v:.2} ms"),
        }
    }

    /// Whether quantile `q` falls among the samples above the top bucket.
    pub fn beyond_top(&self, q: f64) -> bool {
        self.over_top > 0 && q * self.count as f64 > (self.count - self.over_top) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub shards: usize,
    pub seconds: f64,
    pub consumed: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Dropped on purpose by a filter or a lookup miss policy.
    pub dropped: u64,
    /// Records per second between the first record consumed and the last one done (any shard).
    pub msgs_per_s: f64,
    /// That active span in seconds.
    pub active_seconds: f64,
    pub end_to_end: Quantiles,
    /// `end_to_end`'s cumulative buckets, (upper bound in ms, records at or below it): the whole
    /// distribution, for percentile curves beyond p999 (the bench's plots).
    pub end_to_end_buckets: Vec<(f64, u64)>,
    /// Where the time before the write goes: `fetch` (Kafka timestamp → consumed) and `queue`
    /// (consumed → write request sent); see `shardline_stage_seconds`.
    pub stages: BTreeMap<String, Quantiles>,
    pub write: Quantiles,
    pub decode: Quantiles,
    /// Decoded record → bound row, per insert step (sampled, like decode).
    pub bind: Quantiles,
    /// "topic/partition" → shard → messages consumed.
    pub partitions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Processor step → outcome (passed, dropped, missed, failed) → records, over all shards.
    pub steps: BTreeMap<String, BTreeMap<String, u64>>,
    /// Lookup step → hit/miss → cache lookups.
    pub lookup_cache: BTreeMap<String, BTreeMap<String, u64>>,
    /// Processor step → p50/p99 latency.
    pub step_latency: BTreeMap<String, Quantiles>,
    /// Database write requests (batches; a single INSERT is a batch of one).
    pub batches: Batches,
}

/// How the insert sinks batched their rows.
#[derive(Debug, Clone, Serialize)]
pub struct Batches {
    /// Requests by outcome: written, split, failed.
    pub outcomes: BTreeMap<String, u64>,
    /// Rows per request: mean and median (from `shardline_batch_rows`).
    pub mean_rows: Option<f64>,
    pub p50_rows: Option<f64>,
}

fn batches(fams: &[prometheus::proto::MetricFamily]) -> Batches {
    let (b, n) = histogram_buckets(fams, "shardline_batch_rows");
    let sum: f64 = fams
        .iter()
        .filter(|f| f.name() == "shardline_batch_rows")
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_histogram().get_sample_sum())
        .sum();
    let mut outcomes = BTreeMap::new();
    for f in fams
        .iter()
        .filter(|f| f.name() == "shardline_batches_total")
    {
        for m in f.get_metric() {
            *outcomes.entry(label_value(m, "outcome")).or_default() +=
                m.get_counter().get_value() as u64;
        }
    }
    Batches {
        outcomes,
        mean_rows: (n > 0).then(|| sum / n as f64),
        p50_rows: quantile(&b, n, 0.5),
    }
}

/// The value of label `k` of a sample ("" without it).
fn label_value(m: &prometheus::proto::Metric, k: &str) -> String {
    m.get_label()
        .iter()
        .find(|l| l.name() == k)
        .map(|l| l.value().to_string())
        .unwrap_or_default()
}

/// Sums a counter family by two labels.
fn by_labels(
    fams: &[prometheus::proto::MetricFamily],
    name: &str,
    a: &str,
    b: &str,
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for f in fams.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let label = |k: &str| label_value(m, k);
            *out.entry(label(a))
                .or_default()
                .entry(label(b))
                .or_default() += m.get_counter().get_value() as u64;
        }
    }
    out
}

/// The quantiles of histogram `name` per value of its label `label` (over all shards).
fn latency_by(
    fams: &[prometheus::proto::MetricFamily],
    name: &str,
    label: &str,
) -> BTreeMap<String, Quantiles> {
    let mut by: BTreeMap<String, Vec<prometheus::proto::Metric>> = BTreeMap::new();
    for f in fams.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            by.entry(label_value(m, label)).or_default().push(m.clone());
        }
    }
    by.into_iter()
        .map(|(value, ms)| {
            let mut fam = prometheus::proto::MetricFamily::default();
            fam.set_name("one".into());
            fam.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
            for m in ms {
                fam.mut_metric().push(m);
            }
            (value, quantiles(&[fam], "one"))
        })
        .collect()
}

fn quantiles(fams: &[prometheus::proto::MetricFamily], name: &str) -> Quantiles {
    let (b, n) = histogram_buckets(fams, name);
    let ms = |q| quantile(&b, n, q).map(|s| s * 1000.0);
    let sum: f64 = fams
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_histogram().get_sample_sum())
        .sum();
    let top = b.last().copied();
    Quantiles {
        count: n,
        mean_ms: (n > 0).then(|| sum / n as f64 * 1000.0),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        top_ms: top.map(|(bound, _)| bound * 1000.0),
        over_top: top.map_or(0, |(_, below)| n.saturating_sub(below)),
    }
}

/// Summarises a run from its shard registries.
pub fn summarize(registries: &[Registry], seconds: f64) -> RunSummary {
    let fams = gather(registries);
    let stage = |s: &str| counter_sum(&fams, "shardline_messages_total", &[("stage", s)]) as u64;
    let consumed = stage("consumed");
    let mut partitions: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for f in fams
        .iter()
        .filter(|f| f.name() == "shardline_partition_messages_total")
    {
        for m in f.get_metric() {
            let label = |k: &str| label_value(m, k);
            let v = m.get_counter().get_value() as u64;
            if v > 0 {
                partitions
                    .entry(format!("{}/{}", label("topic"), label("partition")))
                    .or_default()
                    .insert(label("shard"), v);
            }
        }
    }
    let first = gauge_range(&fams, "shardline_first_record_time_seconds").map(|r| r.0);
    let last = gauge_range(&fams, "shardline_last_done_time_seconds").map(|r| r.1);
    let active_seconds = match (first, last) {
        (Some(f), Some(l)) if l > f => l - f,
        _ => 0.0,
    };
    RunSummary {
        active_seconds,
        shards: registries.len(),
        seconds,
        consumed,
        written: stage("written"),
        dead_lettered: stage("dead_lettered"),
        dropped: stage("dropped"),
        msgs_per_s: if active_seconds > 0.0 {
            consumed as f64 / active_seconds
        } else {
            0.0
        },
        end_to_end: quantiles(&fams, "shardline_end_to_end_seconds"),
        end_to_end_buckets: histogram_buckets(&fams, "shardline_end_to_end_seconds")
            .0
            .into_iter()
            .map(|(le, n)| (le * 1000.0, n))
            .collect(),
        stages: latency_by(&fams, "shardline_stage_seconds", "stage"),
        write: quantiles(&fams, "shardline_write_seconds"),
        decode: quantiles(&fams, "shardline_decode_seconds"),
        bind: quantiles(&fams, "shardline_bind_seconds"),
        partitions,
        steps: by_labels(&fams, "shardline_step_outcomes_total", "step", "outcome"),
        lookup_cache: by_labels(&fams, "shardline_lookup_cache_total", "step", "result"),
        step_latency: latency_by(&fams, "shardline_step_seconds", "step"),
        batches: batches(&fams),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_above_the_top_bucket_is_shown_as_a_bound_not_a_measurement() {
        let m = crate::metrics::ShardMetrics::new(0);
        for _ in 0..90 {
            m.end_to_end_seconds.observe(0.004);
        }
        for _ in 0..10 {
            m.end_to_end_seconds.observe(40.0); // a cold start: past the 15 s top bucket
        }
        let s = summarize(std::slice::from_ref(&m.registry), 1.0);
        let e = &s.end_to_end;
        assert_eq!((e.count, e.over_top, e.top_ms), (100, 10, Some(15_000.0)));
        assert_eq!(e.shown(0.99, e.p99_ms), "> 15000 ms");
        assert!(
            e.shown(0.5, e.p50_ms).ends_with(" ms") && !e.shown(0.5, e.p50_ms).starts_with('>')
        );
        assert!(!e.beyond_top(0.9) && e.beyond_top(0.91));
        let empty = summarize(
            &[crate::metrics::ShardMetrics::new(1).registry.clone()],
            1.0,
        );
        assert_eq!(empty.end_to_end.shown(0.99, empty.end_to_end.p99_ms), "n/a");
    }

    #[test]
    fn stages_are_summarised_per_stage_over_every_shard() {
        let a = crate::metrics::ShardMetrics::new(0);
        let b = crate::metrics::ShardMetrics::new(1);
        a.stage_fetch.observe(0.002);
        b.stage_fetch.observe(0.004);
        a.stage_queue.observe(0.0001);
        a.end_to_end_seconds.observe(0.003);
        let s = summarize(&[a.registry.clone(), b.registry.clone()], 1.0);
        assert_eq!(s.stages["fetch"].count, 2);
        assert!((s.stages["fetch"].mean_ms.expect("samples") - 3.0).abs() < 1e-9);
        assert_eq!(s.stages["queue"].count, 1);
        let last = s.end_to_end_buckets.last().expect("buckets");
        assert_eq!(
            last.1, 1,
            "cumulative: every sample is at or below the top bucket"
        );
        assert!(
            s.end_to_end_buckets
                .iter()
                .any(|&(le, n)| (le - 5.0).abs() < 1e-9 && n == 1),
            "bounds in ms: {:?}",
            s.end_to_end_buckets
        );
    }

    #[test]
    fn the_mean_is_the_histograms_sum_over_its_count_across_shards() {
        let a = crate::metrics::ShardMetrics::new(0);
        let b = crate::metrics::ShardMetrics::new(1);
        for s in [0.001, 0.003] {
            a.write_seconds.observe(s);
        }
        b.write_seconds.observe(0.008);
        let fams = gather(&[a.registry.clone(), b.registry.clone()]);
        let q = quantiles(&fams, "shardline_write_seconds");
        assert_eq!(q.count, 3);
        let mean = q.mean_ms.expect("samples");
        assert!((mean - 4.0).abs() < 1e-9, "{mean}");
        let empty = crate::metrics::ShardMetrics::new(2);
        let none = quantiles(
            &gather(std::slice::from_ref(&empty.registry)),
            "shardline_write_seconds",
        );
        assert_eq!((none.count, none.mean_ms), (0, None));
    }
}
