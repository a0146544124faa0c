//! Hot path: splitting the Confluent wire frame (magic byte, schema id, datum).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shardline::codec::frame;

mod common;

fn bench(c: &mut Criterion) {
    let (datum, framed) = common::message(0);
    let mut g = c.benchmark_group("wire_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("split", |b| b.iter(|| frame::split(black_box(&framed))));
    let mut out = Vec::with_capacity(framed.len());
    g.bench_function("frame_into", |b| {
        b.iter(|| frame::frame_into(black_box(7), black_box(&datum), &mut out))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
