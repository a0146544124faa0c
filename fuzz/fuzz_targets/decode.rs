//! Any bytes through the wire frame and the compiled Avro decoder of the navigation schema, and of a
//! recursive schema: errors are fine, panics, aborts, hangs and runaway allocations are not.
#![no_main]

use std::sync::OnceLock;

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use shardline::codec::{frame, Plan, Row};
use shardline::loadgen::navigation;

fn plans() -> &'static (Plan, Plan) {
    static PLANS: OnceLock<(Plan, Plan)> = OnceLock::new();
    PLANS.get_or_init(|| {
        let nav = Schema::parse_str(navigation::SCHEMA).expect("navigation schema parses");
        let fields: Vec<String> = ["uid", "tags", "ts", "referer", "event_type", "duration_ms"].map(String::from).to_vec();
        let list = Schema::parse_str(
            r#"{"type":"record","name":"L","fields":[{"name":"v","type":{"type":"map","values":["null","double","bytes"]}},{"name":"next","type":["null","L"]}]}"#,
        )
        .expect("recursive schema parses");
        (
            Plan::compile(&nav, &fields).expect("navigation plan compiles"),
            Plan::compile(&list, &["v".to_string(), "next".to_string()]).expect("recursive plan compiles"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (nav, list) = plans();
    let mut row = Row::default();
    if let Ok((_id, datum)) = frame::split(data) {
        let _ = nav.decode(datum, &mut row);
    }
    let _ = nav.decode(data, &mut row);
    let _ = list.decode(data, &mut row);
});
