//! The whole per-message CPU path of a shard: framed bytes in → schema-id lookup → Avro decode →
//! bound CQL values out (everything but the I/O), over a batch of distinct messages.
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardline::codec::{Decoder, Row, SchemaResolver};
use shardline::loadgen::navigation;

mod common;

/// The registry stand-in: the real one is hit once per schema id, never per message.
struct Fixed;
impl SchemaResolver for Fixed {
    fn schema_by_id(&self, _id: u32) -> Result<String, shardline::codec::CodecError> {
        Ok(navigation::SCHEMA.to_string())
    }
    fn latest(&self, _s: &str) -> Result<(u32, String), shardline::codec::CodecError> {
        Ok((common::SCHEMA_ID, navigation::SCHEMA.to_string()))
    }
}

fn bench(c: &mut Criterion) {
    let msgs: Vec<Vec<u8>> = (0..1024).map(|i| common::message(i).1).collect();
    let fields = common::config().needed_fields();
    let mut decoder = Decoder::framed(Fixed, fields.clone());
    let binder = common::binder(&fields);
    let mut row = Row::default();
    // The schema is fetched off the hot path: resolve it once before measuring.
    decoder
        .decode_blocking(&msgs[0], &mut row)
        .expect("the schema resolves");
    let mut g = c.benchmark_group("message_path");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("bytes_to_bound_values_x1024", |b| {
        b.iter(|| {
            for m in &msgs {
                // The shard's one copy of the payload, which the row's strings point into.
                let payload: Rc<[u8]> = Rc::from(m.as_slice());
                decoder.decode(&payload, &mut row).expect("decodes");
                let v = binder
                    .bind(&row.values, Some(1_767_225_600_000), 42)
                    .expect("binds");
                criterion::black_box(v);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
