//! Reliability regressions found in review, each against the real services: write-timestamp ties
//! within a millisecond, and `--null-sink` runs that must not move the group's offsets.

use std::time::Duration;

use anyhow::Result;
use shardline::loadgen::navigation;

use crate::utils::*;

/// Two updates of one primary key with the same Kafka timestamp: the later record must win. With the
/// old `ms × 1000` write timestamp both cells had the same timestamp and Cassandra kept the larger
/// value ("b"), not the later record ("a").
#[test]
fn a_later_record_with_the_same_kafka_timestamp_wins() -> Result<()> {
    let p = pipeline_with("ties", 1, "", ALL_COLUMNS)?;
    let base = navigation::event(1, 0, BASE_TS_MS, 10);
    let ts_ms = 1_767_225_600_123;
    let updates: Vec<_> = ["b", "a"]
        .into_iter()
        .map(|url| {
            let mut ev = base.clone();
            ev.url = url.into();
            (0, ts_ms, ev)
        })
        .collect();
    produce_events(&p.topic, &updates)?;
    drain_ok(&p.config, Duration::from_secs(300), &[])?;
    let rows = tokio().block_on(async { read_rows(&session().await?, &p.ks).await })?;
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
    let p = pipeline_with("nullsink", 4, "", ALL_COLUMNS)?;
    produce(&p.topic, 3_000, 5, 0)?;
    let before = committed(&p.group, &p.topic, 4)?;
    let out = drain_ok(&p.config, Duration::from_secs(300), &["--null-sink"])?;
    let summary = out.summary.expect("a summary is written at exit");
    assert_eq!(summary["consumed"], 3_000);
    assert_eq!(committed(&p.group, &p.topic, 4)?, before, "no offset moved");
    assert_eq!(row_count(&p.ks)?, 0, "nothing was written");
    Ok(())
}

/// `scylla.max_writes_per_s` caps each shard's writes: 3,000 records through 2 shards capped at
/// 500/s each (one second of burst) cannot be written faster than about 1,000/s, where the uncapped
/// pipeline writes tens of thousands per second.
#[test]
fn the_write_rate_cap_paces_each_shard() -> Result<()> {
    let p = pipeline_with("ratecap", 4, "", ALL_COLUMNS)?;
    let text = std::fs::read_to_string(&p.config)?.replace(
        "max_in_flight_per_shard = 512",
        "max_in_flight_per_shard = 512\nmax_writes_per_s = 500",
    );
    std::fs::write(&p.config, text)?;
    produce(&p.topic, 3_000, 111, 0)?;
    let out = drain_ok(&p.config, Duration::from_secs(300), &[])?;
    let s = out.summary.expect("summary");
    assert_eq!(s["written"], 3_000);
    let rate = s["msgs_per_s"].as_f64().unwrap_or(f64::MAX);
    // (3000 - 2 × 500 burst) / (2 × 500/s) = 2 s at least: ≤ 1,500/s over the whole run.
    assert!(rate <= 1_600.0, "{rate} msg/s with a cap of 2 × 500/s");
    assert_eq!(row_count(&p.ks)?, 3_000);
    eprintln!("write-rate cap 2 × 500/s: {rate:.0} msg/s");
    Ok(())
}

/// A record's value carries a marker; it fails its mapping (a URL into an `inet` column) and is
/// dead-lettered. The marker must not appear in the log, the metrics or the dead letter's headers
/// (its value is the original record, which does carry it).
#[test]
fn record_values_never_reach_logs_metrics_or_dead_letter_headers() -> Result<()> {
    const MARKER: &str = "MARKER-5521-do-not-log";
    let columns = ALL_COLUMNS.replace("ip = \"ip\"", "ip = \"url\"");
    let p = pipeline_with("marker", 1, "", &columns)?;
    let mut ev = navigation::event(9, 0, BASE_TS_MS, 10);
    ev.url = format!("https://{MARKER}.example/");
    produce_events(&p.topic, &[(0, BASE_TS_MS, ev)])?;
    let proc = Proc::spawn(&p.config, &["--drain", "--drain-idle-ms", "2000"])?;
    let mut proc = proc;
    let mut metrics = String::new();
    let done = wait_until(Duration::from_secs(120), || {
        let m = scrape(p.port);
        if !m.is_empty() {
            metrics = m;
        }
        Ok(!proc.alive())
    })?;
    anyhow::ensure!(done, "run did not finish:\n{}", proc.log_text());
    let letters = dead_letters(&p.topic)?;
    anyhow::ensure!(letters.len() == 1, "{} dead letters", letters.len());
    let letter = letters.first().expect("one dead letter");
    assert_eq!(
        letter
            .headers
            .get("shardline.error.class")
            .map(String::as_str),
        Some("mapping")
    );
    for (k, v) in &letter.headers {
        assert!(!v.contains(MARKER), "header {k} carries the value: {v}");
    }
    assert!(
        !proc.log_text().contains(MARKER),
        "the log carries the value"
    );
    assert!(!metrics.contains(MARKER), "the metrics carry the value");
    let value = String::from_utf8_lossy(letter.value.as_deref().unwrap_or_default()).into_owned();
    assert!(
        value.contains(MARKER),
        "the dead letter keeps the original record"
    );
    Ok(())
}

#[cfg(feature = "fault-tests")]
mod faults {
    //! Reliability regressions that need to stop services or produce large backlogs.

    use std::time::{Duration, Instant};

    use anyhow::{ensure, Result};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::BaseRecord;
    use rdkafka::ClientConfig;

    use crate::utils::*;

    /// Back-pressure holds through a rebalance: with the database down both shards pause at their
    /// in-flight budget; a member joining the group revokes and reassigns every partition, and the
    /// newly assigned ones must stay paused (the old loop let the assign callback resume them and
    /// pulled the whole backlog into memory).
    #[test]
    fn back_pressure_holds_through_a_rebalance() -> Result<()> {
        const N: u64 = 200_000;
        let p = pipeline_with("bprebal", 8, "", ALL_COLUMNS)?;
        produce(&p.topic, N, 71, 0)?;
        let mut proc = Proc::spawn(&p.config, &[])?;
        ensure!(
            wait_written(p.port, 1000.0, Duration::from_secs(60))?,
            "no writes:\n{}",
            proc.log_text()
        );
        services(&["down", "cassandra"])?;
        let during = rebalance_while_paused(&p, proc.child.id());
        services(&["up", "cassandra"])?;
        let (in_flight, rss_growth_kib) = during?;
        ensure!(
            in_flight <= 2.0 * 512.0,
            "in flight {in_flight} after the rebalance (budget 2 × 512)"
        );
        ensure!(
            rss_growth_kib < 100 * 1024,
            "RSS grew by {rss_growth_kib} KiB during the rebalance"
        );
        ensure!(
            wait_until(Duration::from_secs(300), || Ok(caught_up(
                &p.group, &p.topic, 8
            )))?,
            "did not catch up:\n{}",
            proc.log_text()
        );
        proc.signal("-TERM")?;
        ensure!(proc
            .wait_for(Duration::from_secs(60))?
            .is_some_and(|s| s.success()));
        assert_eq!(row_count(&p.ks)?, N as usize);
        eprintln!(
            "rebalance under back-pressure: in flight {in_flight}, RSS +{rss_growth_kib} KiB"
        );
        Ok(())
    }

    /// Waits for both shards to pause, lets a plain consumer join the group for 20 s, and returns
    /// the in-flight gauge and the RSS growth of the shardline process meanwhile.
    fn rebalance_while_paused(p: &Pipeline, pid: u32) -> Result<(f64, u64)> {
        ensure!(
            wait_until(Duration::from_secs(60), || Ok(metric_sum(
                &scrape(p.port),
                "shardline_paused",
                &[]
            ) >= 2.0))?,
            "the shards did not pause"
        );
        let rss_before = rss_kib(pid)?;
        let joiner: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", &p.group)
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "range,roundrobin")
            .create()?;
        joiner.subscribe(&[&p.topic])?;
        let start = Instant::now();
        let mut peak = 0.0f64;
        while start.elapsed() < Duration::from_secs(20) {
            // The joiner's own messages are not processed: it only makes the group rebalance.
            let _ = joiner.poll(Duration::from_millis(200));
            peak = peak.max(metric_sum(
                &scrape(p.port),
                "shardline_in_flight_writes",
                &[],
            ));
        }
        let rss_after = rss_kib(pid)?;
        drop(joiner);
        Ok((peak, rss_after.saturating_sub(rss_before)))
    }

    /// The registry is down when a record of a schema id the shard has not seen arrives: that record
    /// waits for its schema (its own future), records of a known schema on another partition keep
    /// being written, a SIGTERM still exits within the shutdown deadline, and once the registry is
    /// back the waiting record is written (the old loop did blocking HTTP and froze the shard).
    #[test]
    fn a_registry_outage_holds_one_record_not_the_shard() -> Result<()> {
        use shardline::codec::RegistryClient;
        use shardline::loadgen::navigation;
        let p = pipeline_with("regdown", 2, "", ALL_COLUMNS)?;
        let reg = RegistryClient::new(REGISTRY, Duration::from_secs(10));
        // Same binary encoding, another record name: a new schema id the shard has never resolved.
        let renamed = navigation::SCHEMA.replace("\"Navigation\"", "\"NavigationV2\"");
        let new_id = reg.register(&format!("{}-v2", p.topic), &renamed)?;
        let at = |seed, i| navigation::event(seed, i, BASE_TS_MS, 1_000);
        let v1_id = reg.register(&format!("{}-value", p.topic), navigation::SCHEMA)?;
        produce_framed(&p.topic, v1_id, &[(1, BASE_TS_MS, at(121, 0))])?;
        let mut proc = Proc::spawn(&p.config, &[])?;
        ensure!(
            wait_written(p.port, 1.0, Duration::from_secs(60))?,
            "{}",
            proc.log_text()
        );
        services(&["down", "registry"])?;
        let during = (|| -> Result<f64> {
            produce_framed(&p.topic, new_id, &[(0, BASE_TS_MS, at(122, 0))])?;
            let known: Vec<_> = (1..=100).map(|i| (1, BASE_TS_MS, at(121, i))).collect();
            produce_framed(&p.topic, v1_id, &known)?;
            ensure!(
                wait_written(p.port, 101.0, Duration::from_secs(60))?,
                "partition 1 stopped flowing: {} written\n{}",
                written(p.port),
                proc.log_text()
            );
            let t = Instant::now();
            proc.signal("-TERM")?;
            // Waited for longer than the shutdown deadline (20 s), so that a slow stop and one the
            // held record kept until the deadline read differently.
            ensure!(proc
                .wait_for(Duration::from_secs(60))?
                .is_some_and(|s| s.success()));
            let took = t.elapsed();
            ensure!(
                took < Duration::from_secs(15),
                "the stop took {took:?}: the held record kept the shard until its deadline"
            );
            Ok(took.as_secs_f64())
        })();
        services(&["up", "registry"])?;
        let stop_s = during?;
        ensure!(
            row_count(&p.ks)? == 101,
            "101 rows before the registry came back"
        );
        drain_ok(&p.config, Duration::from_secs(120), &[])?;
        ensure!(
            row_count(&p.ks)? == 102,
            "the waiting record was written afterwards"
        );
        ensure!(
            dead_letters(&p.topic)?.is_empty(),
            "nothing was dead-lettered"
        );
        eprintln!("registry outage: partition 1 flowed, SIGTERM exit after {stop_s:.2} s, the held record written after");
        Ok(())
    }

    /// `services.sh up` with the registry's port held by another process refuses to start it and
    /// names the holder (the old script started a registry that died, probed the port, found the other
    /// process and said "ready").
    #[test]
    fn services_up_names_the_process_holding_a_port() -> Result<()> {
        services(&["down", "registry"])?;
        let held = (|| -> Result<String> {
            let squatter = std::net::TcpListener::bind("127.0.0.1:8081")?;
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
            let out = std::process::Command::new("bash")
                .arg(script)
                .args(["up", "registry"])
                .output()?;
            drop(squatter);
            ensure!(!out.status.success(), "up succeeded with the port held");
            Ok(String::from_utf8_lossy(&out.stderr).into_owned())
        })();
        services(&["up", "registry"])?;
        let stderr = held?;
        let me = std::process::id().to_string();
        ensure!(
            stderr.contains("port 8081") && stderr.contains(&format!("pid {me}")),
            "the message does not name this process ({me}): {stderr}"
        );
        Ok(())
    }

    /// A ~1 MB poison record: its dead letter (record + headers) is over the producer's
    /// `message.max.bytes`, so it is sent truncated, and the partition's offset still advances (the
    /// old code retried it for ever and pinned the partition).
    #[test]
    fn a_dead_letter_too_large_for_the_broker_is_truncated_and_committed() -> Result<()> {
        let p = pipeline_with("bigpoison", 1, "", ALL_COLUMNS)?;
        produce(&p.topic, 50, 81, 0)?;
        let producer = checked_producer(&[("message.max.bytes", "1048000")])?;
        let poison = vec![b'x'; 1_000_000];
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&p.topic)
            .partition(0)
            .payload(poison.as_slice());
        if let Err((e, _)) = producer.send(rec) {
            anyhow::bail!("produce the poison record: {e}");
        }
        flush_checked(&producer)?;
        produce(&p.topic, 50, 82, 0)?;
        let out = drain_ok(&p.config, Duration::from_secs(300), &[])?;
        let s = out.summary.expect("summary");
        ensure!(
            s["dead_lettered"] == 1 && s["written"] == 100,
            "summary: {s}"
        );
        ensure!(committed(&p.group, &p.topic, 1)? == end_offsets(&p.topic, 1)?);
        let letters = dead_letters(&p.topic)?;
        ensure!(letters.len() == 1, "{} dead letters", letters.len());
        let l = letters.first().expect("one dead letter");
        assert_eq!(
            l.headers.get("shardline.truncated").map(String::as_str),
            Some("key=0,value=1000000,headers=0")
        );
        assert_eq!(l.value.as_ref().map(Vec::len), Some(1024));
        assert_eq!(l.key, None, "the poison record had no key");
        assert_eq!(
            l.headers.get("shardline.error.class").map(String::as_str),
            Some("bad_magic")
        );
        Ok(())
    }

    /// A dropped column is about the table, not the records: the shard stops without dead-lettering
    /// and without committing anything it did not write (the old code dead-lettered every record).
    #[test]
    fn a_dropped_column_stops_the_shard_instead_of_dead_lettering() -> Result<()> {
        const N: u64 = 100_000;
        let p = pipeline_with("dropcol", 4, "", ALL_COLUMNS)?;
        produce(&p.topic, N, 91, 0)?;
        let mut proc = Proc::spawn(&p.config, &[])?;
        ensure!(
            wait_written(p.port, 2000.0, Duration::from_secs(60))?,
            "no writes:\n{}",
            proc.log_text()
        );
        let ks = p.ks.clone();
        tokio().block_on(async {
            session()
                .await?
                .query_unpaged(
                    format!("ALTER TABLE {ks}.navigation_events DROP duration_ms"),
                    &[],
                )
                .await?;
            anyhow::Ok(())
        })?;
        let status = proc.wait_for(Duration::from_secs(90))?;
        ensure!(
            status.is_some_and(|s| !s.success()),
            "shardline should stop with an error: {status:?}\n{}",
            proc.log_text()
        );
        let log = proc.log_text();
        ensure!(log.contains("about the table or the session"), "{log}");
        ensure!(
            dead_letters(&p.topic)?.is_empty(),
            "records were dead-lettered"
        );
        let committed: i64 = committed(&p.group, &p.topic, 4)?
            .iter()
            .map(|o| (*o).max(0))
            .sum();
        let rows = count_rows(&p.ks)?;
        ensure!(
            committed <= rows,
            "{committed} records committed but only {rows} rows written"
        );
        eprintln!("dropped column: stopped with {rows} rows written, {committed} committed");
        Ok(())
    }

    /// Under a 3M-record backlog (null sink: the loop never waits) a SIGTERM is read and the
    /// process exits within 200 ms: the loop yields and reads control every millisecond.
    #[test]
    fn sigterm_under_a_backlog_exits_within_200_ms() -> Result<()> {
        let p = pipeline_with("backlog", 2, "", ALL_COLUMNS)?;
        produce(&p.topic, 3_000_000, 101, 0)?;
        let mut proc = Proc::spawn(&p.config, &["--null-sink"])?;
        ensure!(
            wait_until(Duration::from_secs(60), || Ok(metric_sum(
                &scrape(p.port),
                "shardline_messages_total",
                &["stage=\"consumed\""]
            ) >= 200_000.0))?,
            "no backlog consumed:\n{}",
            proc.log_text()
        );
        let consumed = metric_sum(
            &scrape(p.port),
            "shardline_messages_total",
            &["stage=\"consumed\""],
        );
        let t = Instant::now();
        proc.signal("-TERM")?;
        let status = proc.wait_for(Duration::from_secs(10))?;
        let took = t.elapsed();
        ensure!(status.is_some(), "still running 10 s after SIGTERM");
        eprintln!("SIGTERM under a backlog: exited after {took:?} ({consumed} consumed before)");
        for l in proc
            .log_text()
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  {l}");
        }
        ensure!(
            took <= Duration::from_millis(200),
            "exit took {took:?}:\n{}",
            proc.log_text()
        );
        Ok(())
    }
}
