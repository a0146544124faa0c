//! Reliability regressions found in review, each against the real services: write-timestamp ties
//! within a millisecond, and `--null-sink` runs that must not move the group's offsets.

use std::time::Duration;

use anyhow::{bail, Result};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use shardline::codec::{frame, RegistryClient};
use shardline::loadgen::navigation;

use crate::utils::*;

/// Two updates of one primary key with the same Kafka timestamp: the later record must win. With the
/// old `ms × 1000` write timestamp both cells had the same timestamp and Cassandra kept the larger
/// value ("b"), not the later record ("a").
#[test]
fn a_later_record_with_the_same_kafka_timestamp_wins() -> Result<()> {
    let topic = unique("ties");
    let ks = unique("ties");
    let group = unique("grp");
    let dir = temp_dir("ties")?;
    create_topic(&topic, 1)?;
    create_topic(&format!("{topic}.dlq"), 1)?;
    tokio().block_on(async { create_keyspace(&session().await?, &ks).await })?;
    let reg = RegistryClient::new(REGISTRY, Duration::from_secs(10));
    let schema_id = reg.register(&format!("{topic}-value"), navigation::SCHEMA)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()?;
    let base = navigation::event(1, 0, BASE_TS_MS, 10);
    let ts_ms = 1_767_225_600_123;
    for url in ["b", "a"] {
        let mut ev = base.clone();
        ev.url = url.into();
        let mut datum = Vec::new();
        ev.encode(&mut datum);
        let mut payload = Vec::new();
        frame::frame_into(schema_id, &datum, &mut payload);
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
            .partition(0)
            .timestamp(ts_ms)
            .key(ev.uid.as_bytes())
            .payload(payload.as_slice());
        if let Err((e, _)) = producer.send(rec) {
            bail!("produce: {e}");
        }
    }
    producer.flush(Duration::from_secs(10))?;
    let config = write_config(&dir, &topic, &group, &ks, "", ALL_COLUMNS)?;
    let out = run_drain(&config, Duration::from_secs(300), &[])?;
    assert!(out.ok, "run failed:\n{}", out.stderr);
    let rows = tokio().block_on(async { read_rows(&session().await?, &ks).await })?;
    assert_eq!(rows.len(), 1, "both records update one row");
    let row = rows.values().next().expect("one row");
    assert_eq!(row.url.as_deref(), Some("a"), "the later record wins");
    assert_eq!(
        row.writetime_us,
        Some(ts_ms * 1000 + 1),
        "Kafka ms × 1000 + offset mod 1000"
    );
    Ok(())
}

/// A `--null-sink --drain` run on a config with a real group consumes everything and commits nothing:
/// a benchmark must not make the group skip records it never wrote.
#[test]
fn a_null_sink_run_never_commits_the_group() -> Result<()> {
    let topic = unique("nullsink");
    let ks = unique("nullsink");
    let group = unique("grp");
    let dir = temp_dir("nullsink")?;
    create_topic(&topic, 4)?;
    create_topic(&format!("{topic}.dlq"), 1)?;
    tokio().block_on(async { create_keyspace(&session().await?, &ks).await })?;
    produce(&topic, 3_000, 5, 0)?;
    let config = write_config(&dir, &topic, &group, &ks, "", ALL_COLUMNS)?;
    let before = committed(&group, &topic, 4)?;
    let out = run_drain(&config, Duration::from_secs(300), &["--null-sink"])?;
    assert!(out.ok, "run failed:\n{}", out.stderr);
    let summary = out.summary.expect("a summary is written at exit");
    assert_eq!(summary["consumed"], 3_000);
    assert_eq!(committed(&group, &topic, 4)?, before, "no offset moved");
    assert_eq!(row_count(&ks)?, 0, "nothing was written");
    Ok(())
}
