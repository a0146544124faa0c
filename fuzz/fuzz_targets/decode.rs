//! Any bytes through the wire frame and the compiled Avro decoder of the navigation schema, of a
//! recursive schema, and of a schema of zero-byte items (nulls, records of nulls, in arrays, maps and
//! nested arrays), read and skipped: errors are fine, panics, aborts, hangs and runaway allocations
//! are not.
//!
//! Input layout: the whole input is tried as a Confluent-framed payload (magic 0, 4-byte schema id,
//! datum) for the navigation plan, then as a bare datum for every plan. Seeds for the zero-byte shapes
//! (the allocation bombs of a per-block item cap) are bare datums of `ZERO_SIZE`, committed in
//! `fuzz/seeds/decode/` and copied into the corpus by `scripts/fuzz.sh`.
#![no_main]

use std::rc::Rc;
use std::sync::OnceLock;

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use shardline::codec::{frame, Plan, Row};
use shardline::loadgen::navigation;

/// Items that take no bytes: the input length alone does not bound how many a datum may claim.
const ZERO_SIZE: &str = r#"{"type":"record","name":"Z","fields":[
{"name":"a","type":{"type":"array","items":"null"}},
{"name":"r","type":{"type":"array","items":{"type":"record","name":"E","fields":[{"name":"x","type":"null"},{"name":"y","type":"null"}]}}},
{"name":"m","type":{"type":"map","values":"null"}},
{"name":"n","type":{"type":"array","items":{"type":"array","items":"null"}}}
]}"#;

struct Plans {
    nav: Plan,
    list: Plan,
    zero_read: Plan,
    zero_skip: Plan,
}

fn plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        let nav = Schema::parse_str(navigation::SCHEMA).expect("navigation schema parses");
        let fields: Vec<String> = ["uid", "tags", "ts", "referer", "event_type", "duration_ms"].map(String::from).to_vec();
        let list = Schema::parse_str(
            r#"{"type":"record","name":"L","fields":[{"name":"v","type":{"type":"map","values":["null","double","bytes"]}},{"name":"next","type":["null","L"]}]}"#,
        )
        .expect("recursive schema parses");
        let zero = Schema::parse_str(ZERO_SIZE).expect("zero-size schema parses");
        let zero_fields: Vec<String> = ["a", "r", "m", "n"].map(String::from).to_vec();
        Plans {
            nav: Plan::compile(&nav, &fields).expect("navigation plan compiles"),
            list: Plan::compile(&list, &["v".to_string(), "next".to_string()]).expect("recursive plan compiles"),
            zero_read: Plan::compile(&zero, &zero_fields).expect("zero-size plan compiles"),
            zero_skip: Plan::compile(&zero, &[]).expect("zero-size skip plan compiles"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let p = plans();
    let mut row = Row::default();
    // As the shard holds a payload: decoded strings and bytes are ranges of this one copy.
    let payload: Rc<[u8]> = Rc::from(data);
    if frame::split(data).is_ok() {
        let _ = p.nav.decode(&payload, frame::HEADER_LEN, &mut row);
    }
    let _ = p.nav.decode(&payload, 0, &mut row);
    let _ = p.list.decode(&payload, 0, &mut row);
    let _ = p.zero_read.decode(&payload, 0, &mut row);
    let _ = p.zero_skip.decode(&payload, 0, &mut row);
});
