//! Hot path: field → CQL value mapping and binding of one decoded navigation row
//! (conversions, TTL, write timestamp), as the shard does before handing values to the driver.
use apache_avro::Schema;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardline::codec::{Plan, Row};
use shardline::loadgen::navigation;

mod common;

fn bench(c: &mut Criterion) {
    let (datum, _) = common::message(3);
    let schema = Schema::parse_str(navigation::SCHEMA).expect("schema parses");
    let fields = common::config().needed_fields();
    let plan = Plan::compile(&schema, &fields).expect("plan compiles");
    let binder = common::binder(&fields);
    let mut row = Row::default();
    plan.decode_copy(&datum, &mut row).expect("decodes");
    let mut g = c.benchmark_group("bind");
    g.throughput(Throughput::Elements(1));
    g.bench_function("navigation_row", |b| {
        b.iter_batched_ref(
            || row.clone(),
            |r| binder.bind(black_box(&r.values), Some(1_767_225_600_000), 42),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
