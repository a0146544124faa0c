//! Batched writes against the real services (batching is on by default): every row of a pre-filled
//! backlog lands with its content, TTL and write timestamp; a row the database refuses inside a full
//! batch is dead-lettered alone while the rest of its batch is written; the token that groups rows by
//! replica is the database's own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use scylla::value::CqlValue;
use shardline::kafka::dead_letter::headers;
use shardline::loadgen::navigation;

use crate::utils::*;

/// Kafka timestamps of the produced events: `T0 + i` identifies event `i` when read back.
const T0: i64 = 1_767_225_600_000;

/// (Kafka timestamp, offset) of every record of `topic`, by event index (timestamp − T0).
fn positions(topic: &str, partitions: i32, n: usize) -> Result<HashMap<i64, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("positions"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = HashMap::new();
    let start = Instant::now();
    while out.len() < n && start.elapsed() < Duration::from_secs(120) {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m?;
            ensure!(m.partition() < partitions, "unexpected partition");
            let ts = m.timestamp().to_millis().unwrap_or(0);
            out.insert(ts - T0, m.offset());
        }
    }
    Ok(out)
}

/// TTL(url) of every row, by event id.
async fn ttls(s: &scylla::client::session::Session, ks: &str) -> Result<HashMap<String, i32>> {
    let q = format!("SELECT event_id, TTL(url) FROM {ks}.navigation_events");
    Ok(rows(s, &q)
        .await?
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [Some(CqlValue::Text(id)), Some(CqlValue::Int(ttl))] => Some((id.clone(), *ttl)),
            _ => None,
        })
        .collect())
}

/// 20,000 records pre-filled in 4 partitions go out in batches (the summary says so), and every row
/// holds exactly its record: all columns, TTL from the config, write time Kafka ms × 1000 + offset
/// mod 1000.
#[test]
fn batched_writes_land_with_content_ttl_and_writetime() -> Result<()> {
    const N: u64 = 20_000;
    const SEED: u64 = 21;
    let p = pipeline("batched", 4)?;
    let events: Vec<_> = (0..N)
        .map(|i| {
            let e = navigation::event(SEED, i, BASE_TS_MS, 20_000);
            ((i % 4) as i32, T0 + i as i64, e)
        })
        .collect();
    produce_events(&p.topic, &events)?;
    let at = positions(&p.topic, 4, N as usize)?;
    assert_eq!(at.len(), N as usize, "every record read back");

    let out = drain_ok(&p.config, Duration::from_secs(300), &[])?;
    let summary = out.summary.expect("a summary is written at exit");
    assert_eq!(summary["written"], N);
    let batches = &summary["batches"];
    let requests = batches["outcomes"]["written"].as_u64().unwrap_or(0);
    let mean = batches["mean_rows"].as_f64().unwrap_or(0.0);
    assert!(
        mean > 2.0 && requests < N / 2,
        "a pre-filled backlog is written in batches: {batches}"
    );
    assert!(mean <= 10.0, "no batch over batch_max_rows: {batches}");

    let (rows, ttl) = tokio().block_on(async {
        let s = session().await?;
        anyhow::Ok((read_rows(&s, &p.ks).await?, ttls(&s, &p.ks).await?))
    })?;
    assert_eq!(rows.len(), N as usize, "one row per record");
    for row in rows.values() {
        assert_row_matches(row, SEED);
        let i = navigation::index_of(&row.event_id).expect("event ids carry their index") as i64;
        let offset = at.get(&i).copied().expect("every event was read back");
        assert_eq!(
            row.writetime_us,
            Some((T0 + i) * 1000 + offset % 1000),
            "write time of {}",
            row.event_id
        );
        let t = ttl.get(&row.event_id).copied().unwrap_or(-1);
        assert!(
            (2_592_000 - 600..=2_592_000).contains(&t),
            "TTL of {} is the configured 30 days: {t}",
            row.event_id
        );
    }
    Ok(())
}

/// One record whose partition key Cassandra refuses (empty) among 29 good ones in one
/// partition: its batch fails as a whole, is split into single writes, and only that record goes to
/// the dead-letter topic; the 29 others are written and every offset is committed.
#[test]
fn a_refused_row_in_a_full_batch_is_dead_lettered_alone() -> Result<()> {
    let p = pipeline("batchpoison", 1)?;
    let mut events: Vec<_> = (0..30u64)
        .map(|i| {
            (
                0,
                T0 + i as i64,
                navigation::event(5, i, BASE_TS_MS, 20_000),
            )
        })
        .collect();
    events[14].2.uid = String::new();
    produce_events(&p.topic, &events)?;
    assert_eq!(
        end_offsets(&p.topic, 1)?,
        vec![30],
        "all 30 records in the topic"
    );

    let out = drain_ok(&p.config, Duration::from_secs(300), &[])?;
    let summary = out.summary.as_ref().expect("a summary is written at exit");
    assert!(
        summary["written"] == 29 && summary["dead_lettered"] == 1,
        "29 written, 1 dead-lettered: {summary}\nlog:\n{}",
        out.stderr
    );
    let split = summary["batches"]["outcomes"]["split"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        split >= 1,
        "the refused row was inside a batch: {}",
        summary["batches"]
    );

    let rows = tokio().block_on(async { read_rows(&session().await?, &p.ks).await })?;
    assert_eq!(rows.len(), 29);
    assert!(
        !rows.contains_key(&events[14].2.event_id),
        "the refused record has no row"
    );
    let letters = dead_letters(&p.topic)?;
    assert_eq!(letters.len(), 1);
    let h = &letters[0].headers;
    assert_eq!(
        h.get(headers::SOURCE_OFFSET).map(String::as_str),
        Some("14")
    );
    assert_eq!(
        h.get(headers::ERROR_CLASS).map(String::as_str),
        Some("invalid")
    );
    assert_eq!(
        committed(&p.group, &p.topic, 1)?,
        vec![30],
        "every offset committed"
    );
    Ok(())
}

/// The token shardline computes to group rows by their replica (on ScyllaDB, or any cluster of more
/// than one node: a single Cassandra node skips it) is the database's own `token()`, for a single and
/// a composite partition key, text with non-ASCII characters and negative ints included; and the
/// writer's own path (key slots from a prepared INSERT that binds the key out of order, the row as
/// bound) agrees with both the database and the driver's `calculate_token`, which routes the request.
#[test]
fn partition_tokens_are_the_databases_own() -> Result<()> {
    use scylla::cluster::metadata::{ColumnType, NativeType};
    use scylla::routing::partitioner::PartitionerName;
    use scylla::value::MaybeUnset;
    use shardline::sink::session::{key_slots, partition_token, row_token};
    use shardline::sink::{BoundRow, Cell};
    const TEXT: ColumnType<'static> = ColumnType::Native(NativeType::Text);
    const INT: ColumnType<'static> = ColumnType::Native(NativeType::Int);
    let ks = unique("tokens");
    let (single, composite, insert) = tokio().block_on(async {
        let s = session().await?;
        create_keyspace(&s, &ks).await?;
        for cql in [
            format!("CREATE TABLE {ks}.single (a text PRIMARY KEY, c int)"),
            format!("CREATE TABLE {ks}.composite (a text, b int, c int, PRIMARY KEY ((a, b), c))"),
        ] {
            s.query_unpaged(cql, &[]).await?;
        }
        for i in 0..200i32 {
            let a = format!("user-{i}-\u{e9}\u{4e16}");
            let b = i.wrapping_mul(7919) - 500_000;
            s.query_unpaged(
                format!("INSERT INTO {ks}.single (a, c) VALUES (?, 0)"),
                (&a,),
            )
            .await?;
            s.query_unpaged(
                format!("INSERT INTO {ks}.composite (a, b, c) VALUES (?, ?, 0)"),
                (&a, b),
            )
            .await?;
        }
        let single: Vec<(String, i64)> = s
            .query_unpaged(format!("SELECT a, token(a) FROM {ks}.single"), &[])
            .await?
            .into_rows_result()?
            .rows::<(String, i64)>()?
            .collect::<Result<_, _>>()?;
        let composite: Vec<(String, i32, i64)> = s
            .query_unpaged(format!("SELECT a, b, token(a, b) FROM {ks}.composite"), &[])
            .await?
            .into_rows_result()?
            .rows::<(String, i32, i64)>()?
            .collect::<Result<_, _>>()?;
        // The key's columns bound out of partition-key order (b before a), as a writer's INSERT
        // may bind them: the writer must hash them in key order all the same.
        let insert = s
            .prepare(format!(
                "INSERT INTO {ks}.composite (c, b, a) VALUES (?, ?, ?)"
            ))
            .await?;
        anyhow::Ok((single, composite, insert))
    })?;
    ensure!(
        single.len() == 200 && composite.len() == 200,
        "{} / {} rows",
        single.len(),
        composite.len()
    );
    let mut buf = Vec::new();
    let murmur3 = PartitionerName::Murmur3;
    for (a, token) in &single {
        let a = Cell::Cql(CqlValue::Text(a.clone()));
        let ours = partition_token(&murmur3, [Some((&a, &TEXT))].into_iter(), &mut buf);
        ensure!(
            ours.map(|t| t.value()) == Some(*token),
            "single key: {ours:?} against {token}"
        );
    }
    for (a, b, token) in &composite {
        let (a, b) = (
            Cell::Cql(CqlValue::Text(a.clone())),
            Cell::Cql(CqlValue::Int(*b)),
        );
        let key = [Some((&a, &TEXT)), Some((&b, &INT))];
        let ours = partition_token(&murmur3, key.into_iter(), &mut buf);
        ensure!(
            ours.map(|t| t.value()) == Some(*token),
            "composite key: {ours:?} against {token}"
        );
    }
    let a = Cell::Cql(CqlValue::Text("x".into()));
    ensure!(
        partition_token(&murmur3, [Some((&a, &TEXT)), None].into_iter(), &mut buf).is_none(),
        "a missing component has no token"
    );
    // The writer's own path (`ScyllaWriter::owner`): key slots from the prepared statement, the
    // row as bound; against the database's token and the driver's, which routes the request.
    let slots = key_slots(&insert);
    ensure!(*slots == [2, 1], "key slots in key order: {slots:?}");
    for (a, b, token) in &composite {
        let cell = |v: CqlValue| MaybeUnset::Set(Some(Cell::Cql(v)));
        let row: BoundRow = vec![
            cell(CqlValue::Int(0)),
            cell(CqlValue::Int(*b)),
            cell(CqlValue::Text(a.clone())),
        ];
        let ours = row_token(&insert, &slots, &row, &mut buf);
        let drivers = insert.calculate_token(&row)?;
        ensure!(
            ours.map(|t| t.value()) == Some(*token) && ours == drivers,
            "bound row: ours {ours:?}, the driver's {drivers:?}, the database's {token}"
        );
    }
    let unset: BoundRow = vec![
        MaybeUnset::Set(Some(Cell::Cql(CqlValue::Int(0)))),
        MaybeUnset::Unset,
        MaybeUnset::Set(Some(Cell::Cql(CqlValue::Text("x".into())))),
    ];
    ensure!(
        row_token(&insert, &slots, &unset, &mut buf).is_none(),
        "an unset key value has no token"
    );
    // (The driver hashes an unset value's marker into some token; the database refuses the write
    // either way, so grouping such a row with any owner changes nothing.)
    let null = vec![
        MaybeUnset::Set(Some(Cell::Cql(CqlValue::Int(0)))),
        MaybeUnset::Set(None),
        MaybeUnset::Set(Some(Cell::Cql(CqlValue::Text("x".into())))),
    ];
    ensure!(
        row_token(&insert, &slots, &null, &mut buf).is_none(),
        "a null key value has no token"
    );
    ensure!(
        row_token(&insert, &slots, &null[..1].to_vec(), &mut buf).is_none(),
        "a row shorter than its key slots has no token"
    );
    Ok(())
}

/// Writers route a request, a batch included, to the first replica of its (first row's) token:
/// the owner they group rows by (`ScyllaWriter::owner` and `FirstReplica::pick` share
/// `first_replica`). This one-node cluster cannot tell a first replica from another one; what it
/// checks is the wiring: a writer's statement and its batches carry the profile with the policy
/// (without it, the driver's default policy picks a random replica), which picks for every row the
/// node `first_replica` names, and leaves requests without a token to the driver's default policy.
#[test]
fn writes_are_routed_to_the_owner_they_are_grouped_by() -> Result<()> {
    use scylla::policies::load_balancing::RoutingInfo;
    use scylla::value::MaybeUnset;
    use shardline::sink::bridge::TokioBridge;
    use shardline::sink::session::{
        first_replica, key_slots, row_token, write_profile, FIRST_REPLICA,
    };
    use shardline::sink::{BoundRow, Cell, ScyllaWriter};
    use std::sync::Arc;
    let ks = unique("routing");
    let config = shardline::config::Config::parse(&config_text(
        "t",
        "g",
        &ks,
        64,
        "table = \"navigation_events\"\n\n[table.columns]\nuid = \"uid\"\nevent_id = \"event_id\"",
        "",
    ))?;
    let profile = write_profile(&config).to_profile();
    let policy = profile.get_load_balancing_policy();
    ensure!(
        policy.name() == FIRST_REPLICA,
        "the writers' policy: {}",
        policy.name()
    );
    // Built (and dropped) outside the test's runtime: a runtime may not be dropped inside another.
    let bridge = TokioBridge::new()?;
    tokio().block_on(async {
        let s = Arc::new(session().await?);
        create_keyspace(&s, &ks).await?;
        let insert = s
            .prepare(format!(
                "INSERT INTO {ks}.navigation_events (event_id, uid) VALUES (?, ?)"
            ))
            .await?;
        let writer =
            ScyllaWriter::with_statement(s.clone(), insert.clone(), bridge.handle(), &config);
        for (what, handle) in ["statement", "batch"].into_iter().zip(writer.profiles()) {
            let name = handle.map(|h| h.to_profile().get_load_balancing_policy().name());
            ensure!(
                name.as_deref() == Some(FIRST_REPLICA),
                "the writer's {what} goes with {name:?}"
            );
        }
        let table = insert
            .get_table_spec()
            .ok_or_else(|| anyhow::anyhow!("no table spec"))?;
        let state = s.get_cluster_state();
        let strategy = &state
            .get_keyspace(&ks)
            .ok_or_else(|| anyhow::anyhow!("no keyspace {ks}"))?
            .strategy;
        let slots = key_slots(&insert);
        let mut buf = Vec::new();
        for i in 0..100 {
            let cell = |v: String| MaybeUnset::Set(Some(Cell::Cql(CqlValue::Text(v))));
            let row: BoundRow = vec![cell(format!("e{i}")), cell(format!("user-{i}"))];
            let token = row_token(&insert, &slots, &row, &mut buf)
                .ok_or_else(|| anyhow::anyhow!("row {i} has no token"))?;
            let mut info = RoutingInfo::default();
            info.token = Some(token);
            info.table = Some(table);
            let picked = policy.pick(&info, &state).map(|(n, _)| n.host_id);
            let owner = first_replica(&state, token, strategy, None, table).map(|(n, _)| n.host_id);
            ensure!(
                picked.is_some() && picked == owner,
                "row {i}: picked {picked:?}, owner {owner:?}"
            );
        }
        let untargeted = RoutingInfo::default();
        ensure!(
            policy.pick(&untargeted, &state).is_some(),
            "a request without a token goes where the default policy says"
        );
        anyhow::Ok(())
    })?;
    drop(bridge);
    Ok(())
}

/// Two records of the same primary key one after the other in a partition, with the same Kafka
/// timestamp, pre-filled so that they go out in the same batch: the later one's values are the row,
/// because its write timestamp (Kafka ms × 1000 + offset mod 1000) is the greater one, whatever order
/// the database applies a batch's statements in.
#[test]
fn the_later_of_two_records_of_one_key_in_a_batch_is_the_row() -> Result<()> {
    const PAIRS: u64 = 20;
    let p = pipeline("samekey", 1)?;
    let mut events = Vec::new();
    for i in 0..PAIRS {
        let mut first = navigation::event(9, i, BASE_TS_MS, 20_000);
        let mut second = first.clone();
        // The later value sorts first: with equal write timestamps the database would keep the
        // greater value (its tie-break), the earlier record's.
        first.url = format!("https://b/first/{i}");
        second.url = format!("https://a/second/{i}");
        events.push((0, T0 + i as i64, first));
        events.push((0, T0 + i as i64, second));
    }
    produce_events(&p.topic, &events)?;
    assert_eq!(end_offsets(&p.topic, 1)?, vec![2 * PAIRS as i64]);

    let out = drain_ok(&p.config, Duration::from_secs(300), &[])?;
    let summary = out.summary.as_ref().expect("a summary is written at exit");
    assert_eq!(summary["written"], 2 * PAIRS, "{summary}");
    let mean = summary["batches"]["mean_rows"].as_f64().unwrap_or(0.0);
    assert!(
        mean > 2.0,
        "the pairs went out in batches: {}",
        summary["batches"]
    );

    let rows = tokio().block_on(async { read_rows(&session().await?, &p.ks).await })?;
    assert_eq!(rows.len(), PAIRS as usize, "one row per key");
    for i in 0..PAIRS {
        let id = navigation::event(9, i, BASE_TS_MS, 20_000).event_id;
        let row = rows.get(&id).expect("every key has its row");
        // The second record of pair i is at offset 2i + 1.
        let offset = 2 * i as i64 + 1;
        assert_eq!(
            row.url.as_deref(),
            Some(format!("https://a/second/{i}").as_str())
        );
        assert_eq!(row.writetime_us, Some((T0 + i as i64) * 1000 + offset));
    }
    Ok(())
}
