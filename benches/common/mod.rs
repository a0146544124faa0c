// Shared set-up of the benches: a realistic navigation message and the demo pipeline's binder.
// Included with `#[path]`-less `mod common;` by each bench file.
#![allow(dead_code)]

use std::collections::HashMap;

use shardline::codec::frame;
use shardline::config::Config;
use shardline::loadgen::navigation;
use shardline::sink::{Binder, CqlType};

pub const SCHEMA_ID: u32 = 7;

// The allocator shardline's binary runs with: benches measure the same allocation costs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event `i` of seed 1, as the load generator sends it: (datum, framed payload).
pub fn message(i: u64) -> (Vec<u8>, Vec<u8>) {
    let e = navigation::event(1, i, 1_767_225_600_000, 100_000);
    let mut datum = Vec::new();
    e.encode(&mut datum);
    let mut framed = Vec::new();
    frame::frame_into(SCHEMA_ID, &datum, &mut framed);
    (datum, framed)
}

pub fn config() -> Config {
    Config::parse(include_str!("../../tuning/navigation.toml")).expect("the demo config parses")
}

/// The live types of the demo table, as `system_schema.columns` reports them.
pub fn table_types() -> HashMap<String, CqlType> {
    [
        ("uid", "text"),
        ("event_id", "text"),
        ("url", "text"),
        ("referer", "text"),
        ("user_agent", "text"),
        ("ts", "timestamp"),
        ("ip", "inet"),
        ("country", "text"),
        ("event_type", "text"),
        ("duration_ms", "int"),
        ("tags", "frozen<list<text>>"),
    ]
    .into_iter()
    .map(|(c, t)| (c.to_string(), CqlType::parse(t)))
    .collect()
}

pub fn binder(fields: &[String]) -> Binder {
    Binder::for_table(&config().table, fields, &table_types()).expect("the demo mapping binds")
}
