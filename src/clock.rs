//! The wall clock in the units the pipeline uses: µs for write timestamps, ms for Kafka timestamps,
//! seconds for metric gauges.
//!
//! Guarantee: never panics; a clock before the Unix epoch reads as 0.
//! Precondition: none.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Seconds since the epoch, for gauges.
pub fn unix_seconds() -> f64 {
    now_us() as f64 / 1e6
}
