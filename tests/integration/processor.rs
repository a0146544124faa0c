//! `shardline run` end to end: 2 shards, 8 partitions, every event written once, offsets committed,
//! idempotent replay, and start-up refusals.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;

use crate::utils::*;

const EVENTS: u64 = 200_000;
const PARTITIONS: i32 = 8;
const SEED: u64 = 3;

#[test]
fn two_shards_write_every_event_once_and_replay_is_idempotent() -> Result<()> {
    let topic = unique("nav");
    let ks = unique("proc");
    let group = unique("grp");
    let dir = temp_dir("proc")?;
    create_topic(&topic, PARTITIONS)?;
    create_topic(&format!("{topic}.dlq"), 1)?;
    tokio().block_on(async { create_keyspace(&session().await?, &ks).await })?;
    let produced_from_ms = shardline::clock::now_us() / 1000;
    produce(&topic, EVENTS, SEED, 0)?;
    let config = write_config(&dir, &topic, &group, &ks, "", ALL_COLUMNS)?;

    let out = drain_ok(&config, Duration::from_secs(1200), &[])?;
    let summary = out.summary.expect("a summary is written at exit");
    assert_eq!(summary["consumed"], EVENTS);
    assert_eq!(summary["written"], EVENTS);
    assert_eq!(summary["dead_lettered"], 0);
    assert_eq!(summary["shards"], 2);
    // Each partition was handled by exactly one shard, and both shards worked.
    let parts = summary["partitions"].as_object().expect("partitions map");
    assert_eq!(parts.len(), PARTITIONS as usize);
    let mut shards_used = HashSet::new();
    for (p, by_shard) in parts {
        let by_shard = by_shard.as_object().expect("shard map");
        assert_eq!(
            by_shard.len(),
            1,
            "partition {p} was consumed by {by_shard:?}"
        );
        shards_used.extend(by_shard.keys().cloned());
    }
    assert_eq!(
        shards_used.len(),
        2,
        "both shards had partitions: {parts:?}"
    );

    assert_eq!(
        committed(&group, &topic, PARTITIONS)?,
        end_offsets(&topic, PARTITIONS)?
    );

    let s = tokio();
    let first = s.block_on(async { read_rows(&session().await?, &ks).await })?;
    assert_eq!(first.len() as u64, EVENTS, "one distinct row per event");
    for (n, row) in first.values().enumerate() {
        if n % 97 == 0 {
            assert_row_matches(row, SEED);
        }
        let i = shardline::loadgen::navigation::index_of(&row.event_id).expect("index");
        let e = shardline::loadgen::navigation::event(SEED, i, BASE_TS_MS, 20_000);
        // Default write timestamp: the Kafka record timestamp (producer create time) in µs plus the
        // offset modulo 1000, so its millisecond is the record's, taken while the producer ran.
        let now_ms = shardline::clock::now_us() / 1000;
        assert!(
            row.writetime_us
                .is_some_and(|w| (produced_from_ms..=now_ms).contains(&(w / 1000))),
            "writetime of {} is the Kafka timestamp of the record: {:?}",
            row.event_id,
            row.writetime_us
        );
        assert_eq!(row.uid, e.uid);
    }

    // Replay everything: same rows, same write timestamps.
    reset_group(&group, &topic, PARTITIONS)?;
    assert_eq!(
        committed(&group, &topic, PARTITIONS)?,
        vec![0; PARTITIONS as usize]
    );
    let out = drain_ok(&config, Duration::from_secs(1200), &[])?;
    assert_eq!(out.summary.expect("summary")["written"], EVENTS);
    let second = s.block_on(async { read_rows(&session().await?, &ks).await })?;
    assert_eq!(second.len(), first.len());
    for (id, row) in &first {
        let again = second.get(id).expect("row still there");
        assert_eq!(
            again.writetime_us, row.writetime_us,
            "write time of {id} changed on replay"
        );
        assert_eq!(again, row);
    }
    assert_eq!(
        committed(&group, &topic, PARTITIONS)?,
        end_offsets(&topic, PARTITIONS)?
    );
    Ok(())
}

#[test]
fn start_up_refuses_a_missing_column_and_an_impossible_conversion() -> Result<()> {
    let topic = unique("bad");
    let ks = unique("bad");
    let dir = temp_dir("bad")?;
    create_topic(&topic, 1)?;
    tokio().block_on(async { create_keyspace(&session().await?, &ks).await })?;
    produce(&topic, 10, 5, 0)?;

    let missing = write_config(
        &dir,
        &topic,
        &unique("g"),
        &ks,
        "",
        "uid = \"uid\"\nevent_id = \"event_id\"\nnope = \"url\"",
    )?;
    let out = run_drain(&missing, Duration::from_secs(120), &[])?;
    assert!(!out.ok, "start-up must fail");
    assert!(
        out.stderr
            .contains("column 'nope' (mapped from field 'url') does not exist in table"),
        "{}",
        out.stderr
    );

    let wrong = write_config(
        &dir,
        &topic,
        &unique("g"),
        &ks,
        "",
        "uid = \"uid\"\nevent_id = \"event_id\"\nduration_ms = \"url\"",
    )?;
    let out = run_drain(&wrong, Duration::from_secs(120), &[])?;
    assert!(!out.ok, "start-up must fail");
    assert!(
        out.stderr.contains("field 'url' of Avro type string cannot be written to column 'duration_ms' of CQL type int"),
        "{}",
        out.stderr
    );
    // Nothing was consumed: no offsets committed for these groups.
    Ok(())
}
