//! The harness end to end, without the processor: registry → Kafka (wire format) → consume →
//! decode → Cassandra rows → read back.

use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use scylla::value::CqlTimestamp;
use shardline::codec::{Decoder, RegistryClient, Row, Value};
use shardline::loadgen::navigation;

use crate::utils::*;

#[test]
fn registry_kafka_cassandra_round_trip() -> Result<()> {
    let topic = unique("harness");
    let ks = unique("harness");
    create_topic(&topic, 2)?;
    let sent = produce(&topic, 500, 11, 0)?;
    assert_eq!(sent.acked, 500);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("harness_group"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let fields: Vec<String> = ["event_id", "uid", "url", "ts", "tags"]
        .map(String::from)
        .to_vec();
    let mut decoder = Decoder::framed(
        RegistryClient::new(REGISTRY, Duration::from_secs(10)),
        fields,
    );
    let mut decoded = Vec::new();
    let start = Instant::now();
    while decoded.len() < 500 && start.elapsed() < Duration::from_secs(60) {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m?;
            let mut row = Row::default();
            let id = decoder.decode_blocking(m.payload().unwrap_or_default(), &mut row)?;
            assert_eq!(id, sent.schema_id, "the frame carries the registered id");
            decoded.push(row);
        }
    }
    assert_eq!(decoded.len(), 500);

    tokio().block_on(async {
        let s = session().await?;
        create_keyspace(&s, &ks).await?;
        let insert = s
            .prepare(format!("INSERT INTO {ks}.navigation_events (event_id, uid, url, ts, tags) VALUES (?, ?, ?, ?, ?)"))
            .await?;
        for r in &decoded {
            let v = |i: usize| r.values.get(i).cloned().unwrap_or(Value::Null);
            let (Value::Str(id), Value::Str(uid), Value::Str(url), Value::TimestampMillis(ts), Value::Array(tags)) =
                (v(0), v(1), v(2), v(3), v(4))
            else {
                panic!("decoded row has unexpected shapes: {r:?}");
            };
            let tags: Vec<String> = tags
                .into_iter()
                .filter_map(|t| if let Value::Str(s) = t { Some(s.to_string()) } else { None })
                .collect();
            s.execute_unpaged(&insert, (id.as_str(), uid.as_str(), url.as_str(), CqlTimestamp(ts), tags)).await?;
        }
        let rows = read_rows(&s, &ks).await?;
        assert_eq!(rows.len(), 500);
        for row in rows.values() {
            let i = navigation::index_of(&row.event_id).expect("index in event id");
            let e = navigation::event(11, i, BASE_TS_MS, 20_000);
            assert_eq!(row.uid, e.uid);
            assert_eq!(row.url.as_deref(), Some(e.url.as_str()));
            assert_eq!(row.ts_ms, Some(e.ts_ms));
            assert_eq!(row.tags.clone().unwrap_or_default(), e.tags);
            assert_eq!(row.referer, None, "not written by this test");
        }
        anyhow::Ok(())
    })
}
