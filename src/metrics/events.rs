//! Named events: each one logs and counts together, so logs and metrics never disagree.
//!
//! Guarantee: events on error paths only; the success path increments pre-resolved handles directly.

use super::ShardMetrics;

/// A record could not be processed at `stage` (`decode`, `map`, `write`, `dead_letter`).
pub fn record_failed(
    m: &ShardMetrics,
    topic: &str,
    partition: i32,
    offset: i64,
    stage: &str,
    kind: &str,
    error: &dyn std::fmt::Display,
) {
    tracing::warn!(shard = %m.shard, topic, partition, offset, stage, kind, %error, "record failed");
    m.errors
        .with_label_values(&[m.shard.as_str(), topic, stage, kind])
        .inc();
}

/// A retryable error of a write, lookup, produce, dead letter or schema fetch; it will be tried again
/// after `backoff`.
pub fn write_retried(
    m: &ShardMetrics,
    kind: &str,
    attempt: u32,
    backoff: std::time::Duration,
    error: &dyn std::fmt::Display,
) {
    let backoff_ms = backoff.as_millis() as u64;
    if attempt == 1 || attempt.is_power_of_two() {
        tracing::warn!(shard = %m.shard, kind, attempt, backoff_ms, %error, "write failed, retrying");
    }
    m.write_retries
        .with_label_values(&[m.shard.as_str(), kind])
        .inc();
}

/// The shard's partitions were assigned (one log line and one gauge per partition).
pub fn partitions_assigned(m: &ShardMetrics, core: usize, parts: &[(String, i32)]) {
    let core = core.to_string();
    m.assigned.reset();
    for (t, p) in parts {
        m.assigned
            .with_label_values(&[
                m.shard.as_str(),
                core.as_str(),
                t.as_str(),
                p.to_string().as_str(),
            ])
            .set(1);
    }
    let list: Vec<String> = parts.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    tracing::info!(shard = %m.shard, core = %core, partitions = %list.join(","), "partitions assigned");
}

/// The shard's partitions were revoked.
pub fn partitions_revoked(m: &ShardMetrics, parts: &[(String, i32)]) {
    m.assigned.reset();
    let list: Vec<String> = parts.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    tracing::info!(shard = %m.shard, partitions = %list.join(","), "partitions revoked");
}

/// An offset commit completed.
pub fn committed(m: &ShardMetrics, ok: bool, error: Option<&dyn std::fmt::Display>) {
    let result = if ok { "ok" } else { "error" };
    m.commits
        .with_label_values(&[m.shard.as_str(), result])
        .inc();
    if let Some(e) = error {
        tracing::warn!(shard = %m.shard, error = %e, "offset commit failed");
    }
}

/// Pausing or resuming fetch because the in-flight budget is spent or free again.
pub fn paused(m: &ShardMetrics, paused: bool, in_flight: usize) {
    m.paused.set(i64::from(paused));
    tracing::debug!(shard = %m.shard, paused, in_flight, "fetch pause state");
}

/// The shard hit a fatal error and stops (a fatal Kafka error, a fenced `group.instance.id`, or a
/// systemic write error): `shardline_shard_failed` goes to 1, so `/health` turns unhealthy.
/// Logs at error level on the first call only; later calls for the same shard (the loop reporting
/// the stop that the fatal error caused) log at debug. `reason` must not carry record values.
pub fn shard_failed(m: &ShardMetrics, reason: &dyn std::fmt::Display) {
    // Same-shard callers only (precondition of `ShardMetrics`), so read-then-set does not race.
    if m.failed.get() == 0 {
        m.failed.set(1);
        tracing::error!(shard = %m.shard, %reason, "shard failed");
    } else {
        tracing::debug!(shard = %m.shard, %reason, "shard failed again");
    }
}
