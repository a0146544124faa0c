//! The load generator behind `shardline produce`: realistic navigation events, deterministic from
//! (seed, index, base timestamp) so tests can regenerate what was sent, Avro-encoded and framed in the
//! Confluent wire format, keyed by uid, produced at a steady target rate or as fast as possible.
//!
//! Guarantee: the summary counts only records the broker acknowledged; failures are counted apart.
//! Poison records (for dead-letter tests) are produced only when asked, one class after another.
//! On a topic with `message.timestamp.type=LogAppendTime` the summary also gives the first stage of a
//! record's latency, send → appended by the broker (the acknowledgement carries the append time),
//! which shardline cannot see: its own stages start at that timestamp.

pub mod navigation;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;

use crate::codec::frame;

/// What to produce.
#[derive(Debug, Clone)]
pub struct ProduceSpec {
    pub brokers: String,
    pub topic: String,
    pub schema_id: u32,
    /// Stop after this many records (None: run for `duration`).
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Records per second; 0 means as fast as possible.
    pub rate: u64,
    pub seed: u64,
    pub base_ts_ms: i64,
    pub uids: u64,
    /// Every n-th record is a poison record (0: none).
    pub poison_every: u64,
    /// Registry id of [`navigation::SCHEMA_IP_AS_LONG`], for `schema_incompatible` poison records.
    pub alt_schema_id: Option<u32>,
    pub progress: bool,
    /// Records sent this long after the start also count in `send_to_append_steady` (zero: no
    /// steady figure).
    pub warmup: Duration,
}

/// What was produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProduceSummary {
    pub topic: String,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub poison: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    pub seed: u64,
    pub base_ts_ms: i64,
    pub schema_id: u32,
    /// Send → broker append of the acknowledged records sent after the first acknowledgement, on a
    /// LogAppendTime topic only (exact quantiles, millisecond resolution: the append time is in ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_to_append: Option<AppendLatency>,
    /// The same, over the records sent [`ProduceSpec::warmup`] after the start or later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_to_append_steady: Option<AppendLatency>,
}

/// Exact quantiles of the send → append latency.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AppendLatency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl AppendLatency {
    /// From the samples in µs (sorted here); None without any.
    pub fn of(mut us: Vec<u32>) -> Option<AppendLatency> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let n = us.len();
        let at = |q: f64| us[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
        Some(AppendLatency {
            count: n as u64,
            mean_ms: us.iter().map(|&v| v as f64).sum::<f64>() / n as f64 / 1000.0,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        })
    }
}

struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
    /// Send → append in µs, per acknowledged record of a LogAppendTime topic sent after the first
    /// acknowledgement: the records queued while the producer connects (its first few hundred ms) say
    /// how long a producer takes to start, not how long a send takes.
    append_us: Mutex<Vec<u32>>,
    /// When the first acknowledgement came, µs since the Unix epoch (0: none yet).
    first_ack_us: AtomicU64,
    /// Send → append in µs of the records sent at `steady_from_us` or later.
    steady_us: Mutex<Vec<u32>>,
    /// The end of the warm-up, µs since the Unix epoch (u64::MAX: no steady figure).
    steady_from_us: u64,
}

struct Ctx(Arc<Counting>);

/// The send → append samples gathered so far, leaving none.
fn take_samples(samples: &Mutex<Vec<u32>>) -> Vec<u32> {
    std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Keeps a send → append sample; bounded: a long --duration run keeps its first 10 M (40 MB).
fn push_sample(samples: &Mutex<Vec<u32>>, us: u32) {
    let mut v = samples.lock().unwrap_or_else(PoisonError::into_inner);
    if v.len() < 10_000_000 {
        v.push(us);
    }
}

impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    /// The record's send time, µs since the Unix epoch.
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, sent_us: usize) {
        match r {
            Ok(m) => {
                self.0.acked.fetch_add(1, Ordering::Relaxed);
                let now = crate::clock::now_us().max(1) as u64;
                let first = match self.0.first_ack_us.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => now,
                    Err(earlier) => earlier,
                };
                if let (Timestamp::LogAppendTime(ms), true) =
                    (m.timestamp(), sent_us as u64 >= first)
                {
                    let us = (ms * 1000 - sent_us as i64).clamp(0, u32::MAX as i64) as u32;
                    push_sample(&self.0.append_us, us);
                    if sent_us as u64 >= self.0.steady_from_us {
                        push_sample(&self.0.steady_us, us);
                    }
                }
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        };
    }
}

/// The poison classes, in the order they are produced.
/// Each is named by the dead-letter class shardline gives it, except `truncated` (a frame shorter
/// than its header: class `corrupt_datum`) and `empty_key` (the database refuses an empty partition
/// key: class `invalid`).
pub const POISON_CLASSES: &[&str] = &[
    "bad_magic",
    "corrupt_datum",
    "unknown_schema",
    "schema_incompatible",
    "truncated",
    "mapping",
    "empty_key",
];

/// The dead-letter class shardline reports for a poison class.
pub fn expected_dead_letter_class(poison: &str) -> &str {
    match poison {
        "truncated" => "corrupt_datum",
        "empty_key" => "invalid",
        other => other,
    }
}

/// The poison class of record `i`, if it is one.
pub fn poison_class_of(i: u64, poison_every: u64) -> Option<&'static str> {
    if poison_every == 0 || i % poison_every != poison_every - 1 {
        return None;
    }
    POISON_CLASSES
        .get(((i / poison_every) as usize) % POISON_CLASSES.len())
        .copied()
}

/// Produces per `spec`. Blocking; call from a plain thread.
pub fn produce(
    spec: &ProduceSpec,
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<ProduceSummary, rdkafka::error::KafkaError> {
    let mut cfg = rdkafka::ClientConfig::new();
    for (k, v) in extra {
        cfg.set(k, v);
    }
    cfg.set("bootstrap.servers", &spec.brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true");
    let counting = Arc::new(Counting {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        append_us: Mutex::new(Vec::new()),
        first_ack_us: AtomicU64::new(0),
        steady_us: Mutex::new(Vec::new()),
        steady_from_us: if spec.warmup.is_zero() {
            u64::MAX
        } else {
            (crate::clock::now_us().max(0) as u64).saturating_add(spec.warmup.as_micros() as u64)
        },
    });
    let producer: ThreadedProducer<Ctx> = cfg.create_with_context(Ctx(counting.clone()))?;
    let start = Instant::now();
    let mut sum = ProduceSummary {
        topic: spec.topic.clone(),
        seed: spec.seed,
        base_ts_ms: spec.base_ts_ms,
        schema_id: spec.schema_id,
        ..Default::default()
    };
    let mut datum = Vec::with_capacity(512);
    let mut framed = Vec::with_capacity(512);
    let mut last_progress = Instant::now();
    let mut i: u64 = 0;
    loop {
        if spec.count.is_some_and(|c| i >= c) || spec.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if spec.rate > 0 {
            // Steady pacing: record i is due at start + i/rate; sleep only when ahead.
            let due = Duration::from_secs_f64(i as f64 / spec.rate as f64);
            let now = start.elapsed();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let ev = navigation::event(spec.seed, i, spec.base_ts_ms, spec.uids);
        datum.clear();
        ev.encode(&mut datum);
        frame::frame_into(spec.schema_id, &datum, &mut framed);
        let mut key = ev.uid.as_str();
        if let Some(class) = poison_class_of(i, spec.poison_every) {
            poison(class, spec, &ev, &mut framed);
            if class == "empty_key" {
                key = "";
            }
            sum.poison += 1;
        }
        let sent_us = crate::clock::now_us().max(0) as usize;
        let mut rec = BaseRecord::with_opaque_to(&spec.topic, sent_us)
            .key(key.as_bytes())
            .payload(framed.as_slice());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
        sum.sent += 1;
        sum.bytes += framed.len() as u64;
        i += 1;
        if spec.progress && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            progress_line(spec, &sum, start.elapsed());
        }
    }
    producer.flush(Duration::from_secs(120))?;
    sum.acked = counting.acked.load(Ordering::Relaxed);
    sum.failed = counting.failed.load(Ordering::Relaxed);
    sum.send_to_append = AppendLatency::of(take_samples(&counting.append_us));
    sum.send_to_append_steady = AppendLatency::of(take_samples(&counting.steady_us));
    sum.seconds = start.elapsed().as_secs_f64();
    sum.rate_per_s = if sum.seconds > 0.0 {
        sum.sent as f64 / sum.seconds
    } else {
        0.0
    };
    if spec.progress {
        progress_line(spec, &sum, start.elapsed());
        eprintln!();
    }
    Ok(sum)
}

/// Replaces `framed` with a poison record of `class`.
fn poison(class: &str, spec: &ProduceSpec, ev: &navigation::NavigationEvent, framed: &mut Vec<u8>) {
    let schema_id = spec.schema_id;
    match class {
        "bad_magic" => {
            if let Some(b) = framed.first_mut() {
                *b = 9;
            }
        }
        // A string length that runs past the end of the datum.
        "corrupt_datum" => {
            framed.truncate(frame::HEADER_LEN);
            framed.extend_from_slice(&[0x7e, b'x']);
        }
        "unknown_schema" => {
            let mut d = Vec::new();
            ev.encode(&mut d);
            frame::frame_into(schema_id.wrapping_add(1_000_000), &d, framed);
        }
        "truncated" => framed.truncate(3),
        // A writer schema whose mapped field `ip` changed to a type its column cannot take.
        "schema_incompatible" => {
            let mut d = Vec::new();
            ev.encode_ip_as_long(&mut d);
            frame::frame_into(
                spec.alt_schema_id
                    .unwrap_or(schema_id.wrapping_add(2_000_000)),
                &d,
                framed,
            );
        }
        // Valid Avro and mapping, but an empty partition key: the database refuses the INSERT.
        "empty_key" => {
            let mut bad = ev.clone();
            bad.uid = String::new();
            let mut d = Vec::new();
            bad.encode(&mut d);
            frame::frame_into(schema_id, &d, framed);
        }
        // Decodes fine, but the ip is not an address: the inet column refuses it.
        "mapping" => {
            let mut bad = ev.clone();
            bad.ip = "not-an-ip".into();
            let mut d = Vec::new();
            bad.encode(&mut d);
            frame::frame_into(schema_id, &d, framed);
        }
        _ => {}
    }
}

fn progress_line(spec: &ProduceSpec, sum: &ProduceSummary, elapsed: Duration) {
    let width = 30usize;
    let frac = match (spec.count, spec.duration) {
        (Some(c), _) if c > 0 => sum.sent as f64 / c as f64,
        (_, Some(d)) => elapsed.as_secs_f64() / d.as_secs_f64().max(1e-9),
        _ => 0.0,
    }
    .clamp(0.0, 1.0);
    let filled = (frac * width as f64) as usize;
    let rate = sum.sent as f64 / elapsed.as_secs_f64().max(1e-9);
    eprint!(
        "\r[{}{}] {:5.1}% {} sent, {:.0} msg/s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        frac * 100.0,
        sum.sent,
        rate
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_latency_quantiles_are_exact_ranks() {
        assert_eq!(AppendLatency::of(Vec::new()), None);
        let us: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect(); // 1 … 1000 ms
        let a = AppendLatency::of(us).expect("samples");
        assert_eq!(
            (a.count, a.p50_ms, a.p99_ms, a.p999_ms, a.max_ms),
            (1000, 500.0, 990.0, 999.0, 1000.0)
        );
        assert!((a.mean_ms - 500.5).abs() < 1e-9);
    }
}
