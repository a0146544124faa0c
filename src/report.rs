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
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub shards: usize,
    pub seconds: f64,
    pub consumed: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Records per second between the first record consumed and the last one done (any shard).
    pub msgs_per_s: f64,
    /// That active span in seconds.
    pub active_seconds: f64,
    pub end_to_end: Quantiles,
    pub write: Quantiles,
    pub decode: Quantiles,
    /// "topic/partition" → shard → messages consumed.
    pub partitions: BTreeMap<String, BTreeMap<String, u64>>,
}

fn quantiles(fams: &[prometheus::proto::MetricFamily], name: &str) -> Quantiles {
    let (b, n) = histogram_buckets(fams, name);
    let ms = |q| quantile(&b, n, q).map(|s| s * 1000.0);
    Quantiles {
        count: n,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
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
            let label = |k: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == k)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
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
        msgs_per_s: if active_seconds > 0.0 {
            consumed as f64 / active_seconds
        } else {
            0.0
        },
        end_to_end: quantiles(&fams, "shardline_end_to_end_seconds"),
        write: quantiles(&fams, "shardline_write_seconds"),
        decode: quantiles(&fams, "shardline_decode_seconds"),
        partitions,
    }
}
