//! Hot path: Avro decode of the navigation record, side by side:
//! - apache-avro `from_avro_datum` (re-resolves the schema on every call),
//! - apache-avro with a reused `GenericDatumReader` into a `Value`, and its `from_value` path into a struct,
//! - apache-avro's reused reader deserialising straight into a struct (`read_deser`),
//! - serde_avro_fast (`from_datum_slice` with a parsed schema) into an owned struct and into a struct
//!   that borrows its strings from the datum: the fastest general Rust Avro decoder, as a yardstick,
//! - shardline's compiled `Plan` into a reused `Row` (the path shardline runs): its strings point into
//!   the payload's shared copy, which the shard makes once per record anyway (a dead letter sends it);
//!   `shardline_plan_with_copy` counts that copy too.
use std::rc::Rc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde::Deserialize;
use shardline::codec::{Plan, Row};
use shardline::loadgen::navigation;

mod common;

#[allow(dead_code)]
#[derive(Deserialize)]
struct Navigation {
    event_id: String,
    uid: String,
    url: String,
    referer: Option<String>,
    user_agent: String,
    ts: i64,
    ip: String,
    country: Option<String>,
    event_type: String,
    duration_ms: i32,
    tags: Vec<String>,
}

/// The navigation enum's symbols, so the borrowing struct allocates nothing.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum EventType {
    PageView,
    Click,
    Scroll,
    Purchase,
}

/// The same record, its strings borrowed from the datum (serde_avro_fast's zero-copy path).
#[allow(dead_code)]
#[derive(Deserialize)]
struct NavigationRef<'a> {
    event_id: &'a str,
    uid: &'a str,
    url: &'a str,
    referer: Option<&'a str>,
    user_agent: &'a str,
    ts: i64,
    ip: &'a str,
    country: Option<&'a str>,
    event_type: EventType,
    duration_ms: i32,
    tags: Vec<&'a str>,
}

#[allow(deprecated)]
fn bench(c: &mut Criterion) {
    let (datum, _) = common::message(3);
    let schema = Schema::parse_str(navigation::SCHEMA).expect("schema parses");
    let fields = common::config().needed_fields();
    let plan = Plan::compile(&schema, &fields).expect("plan compiles");
    let reader = GenericDatumReader::builder(&schema)
        .build()
        .expect("reader builds");
    let mut g = c.benchmark_group("avro_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("apache_avro_from_avro_datum", |b| {
        b.iter(|| apache_avro::from_avro_datum(&schema, &mut black_box(datum.as_slice()), None))
    });
    g.bench_function("apache_avro_reused_reader_value", |b| {
        b.iter(|| reader.read_value(&mut black_box(datum.as_slice())))
    });
    g.bench_function("apache_avro_from_value", |b| {
        b.iter(|| {
            let v = reader
                .read_value(&mut black_box(datum.as_slice()))
                .expect("decodes");
            apache_avro::from_value::<Navigation>(&v)
        })
    });
    g.bench_function("apache_avro_read_deser", |b| {
        b.iter(|| reader.read_deser::<Navigation>(&mut black_box(datum.as_slice())))
    });
    let fast: serde_avro_fast::Schema = navigation::SCHEMA.parse().expect("schema parses");
    let owned = serde_avro_fast::from_datum_slice::<Navigation>(&datum, &fast);
    assert!(owned.is_ok(), "serde_avro_fast decodes the datum");
    let borrowed = serde_avro_fast::from_datum_slice::<NavigationRef>(&datum, &fast);
    assert!(
        borrowed.is_ok(),
        "serde_avro_fast decodes the datum, borrowing"
    );
    g.bench_function("serde_avro_fast_owned", |b| {
        b.iter(|| serde_avro_fast::from_datum_slice::<Navigation>(black_box(&datum), &fast))
    });
    g.bench_function("serde_avro_fast_borrowed", |b| {
        b.iter(|| serde_avro_fast::from_datum_slice::<NavigationRef>(black_box(&datum), &fast))
    });
    let mut row = Row::default();
    let payload: Rc<[u8]> = Rc::from(datum.as_slice());
    g.bench_function("shardline_plan", |b| {
        b.iter(|| plan.decode(black_box(&payload), 0, &mut row))
    });
    g.bench_function("shardline_plan_with_copy", |b| {
        b.iter(|| {
            let payload: Rc<[u8]> = Rc::from(black_box(datum.as_slice()));
            plan.decode(&payload, 0, &mut row)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
