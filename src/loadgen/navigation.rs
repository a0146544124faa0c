//! The navigation event: its Avro schema, a deterministic generator and a hand-written encoder.
//!
//! Guarantee: `encode` writes exactly the Avro binary encoding of [`SCHEMA`] (checked against
//! apache-avro in the tests), and `event(seed, i, ..)` always returns the same event.

use crate::codec::avro::write_long as long;

/// The writer schema of navigation events.
pub const SCHEMA: &str = r#"{"type":"record","name":"Navigation","namespace":"shardline.events","fields":[
{"name":"event_id","type":"string"},
{"name":"uid","type":"string"},
{"name":"url","type":"string"},
{"name":"referer","type":["null","string"],"default":null},
{"name":"user_agent","type":"string"},
{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
{"name":"ip","type":"string"},
{"name":"country","type":["null","string"],"default":null},
{"name":"event_type","type":{"type":"enum","name":"EventType","symbols":["PAGE_VIEW","CLICK","SCROLL","PURCHASE"]}},
{"name":"duration_ms","type":"int"},
{"name":"tags","type":{"type":"array","items":"string"}}
]}"#;

/// A later writer schema whose `ip` became a `long`: the `inet` column cannot take it, so shardline
/// refuses the schema id when first seen (`schema_incompatible`). A schema that only lacked `ip`
/// would be written, `ip` null (schema evolution).
pub const SCHEMA_IP_AS_LONG: &str = r#"{"type":"record","name":"NavigationIpAsLong","namespace":"shardline.events","fields":[
{"name":"event_id","type":"string"},
{"name":"uid","type":"string"},
{"name":"url","type":"string"},
{"name":"ip","type":"long"}
]}"#;

pub const EVENT_TYPES: [&str; 4] = ["PAGE_VIEW", "CLICK", "SCROLL", "PURCHASE"];
const PAGES: [&str; 8] = [
    "/",
    "/search",
    "/product/",
    "/cart",
    "/checkout",
    "/account",
    "/blog/",
    "/help",
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
];
const COUNTRIES: [&str; 6] = ["FR", "DE", "US", "JP", "BR", "IN"];
const TAGS: [&str; 6] = ["new", "returning", "mobile", "promo", "organic", "paid"];

#[derive(Debug, Clone, PartialEq)]
pub struct NavigationEvent {
    pub event_id: String,
    pub uid: String,
    pub url: String,
    pub referer: Option<String>,
    pub user_agent: String,
    pub ts_ms: i64,
    pub ip: String,
    pub country: Option<String>,
    pub event_type: usize,
    pub duration_ms: i32,
    pub tags: Vec<String>,
}

/// The `i`-th event of a run: a pure function of its arguments.
pub fn event(seed: u64, i: u64, base_ts_ms: i64, uids: u64) -> NavigationEvent {
    let mut r = fastrand::Rng::with_seed(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let pick = |r: &mut fastrand::Rng, n: usize| r.usize(0..n);
    let page = PAGES[pick(&mut r, PAGES.len())];
    let url = format!("https://shop.example.com{page}{}", r.u32(0..10_000));
    let referer =
        (r.u8(0..3) > 0).then(|| format!("https://search.example.org/?q={}", r.u32(0..1000)));
    let ntags = r.usize(0..4);
    NavigationEvent {
        event_id: format!("{seed:08x}-{i:012}"),
        uid: format!("u{:07}", r.u64(0..uids.max(1))),
        url,
        referer,
        user_agent: AGENTS[pick(&mut r, AGENTS.len())].to_string(),
        ts_ms: base_ts_ms + (i / 10) as i64,
        ip: format!("10.{}.{}.{}", r.u8(..), r.u8(..), r.u8(1..255)),
        country: (r.u8(0..5) > 0).then(|| COUNTRIES[pick(&mut r, COUNTRIES.len())].to_string()),
        event_type: pick(&mut r, EVENT_TYPES.len()),
        duration_ms: r.i32(0..120_000),
        tags: (0..ntags)
            .map(|_| TAGS[pick(&mut r, TAGS.len())].to_string())
            .collect(),
    }
}

/// The index encoded in an `event_id` (so a test can regenerate the event behind a row).
pub fn index_of(event_id: &str) -> Option<u64> {
    event_id.split('-').nth(1)?.parse().ok()
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn nullable(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => long(out, 0),
        Some(s) => {
            long(out, 1);
            string(out, s);
        }
    }
}

impl NavigationEvent {
    /// Appends the encoding of this event under [`SCHEMA_IP_AS_LONG`] (the address as a number).
    pub fn encode_ip_as_long(&self, out: &mut Vec<u8>) {
        string(out, &self.event_id);
        string(out, &self.uid);
        string(out, &self.url);
        let ip = self
            .ip
            .parse::<std::net::Ipv4Addr>()
            .map(|a| i64::from(u32::from(a)))
            .unwrap_or(0);
        crate::codec::avro::write_long(out, ip);
    }

    /// Appends the Avro binary encoding of this event.
    pub fn encode(&self, out: &mut Vec<u8>) {
        string(out, &self.event_id);
        string(out, &self.uid);
        string(out, &self.url);
        nullable(out, &self.referer);
        string(out, &self.user_agent);
        long(out, self.ts_ms);
        string(out, &self.ip);
        nullable(out, &self.country);
        long(out, self.event_type as i64);
        long(out, i64::from(self.duration_ms));
        if !self.tags.is_empty() {
            long(out, self.tags.len() as i64);
            for t in &self.tags {
                string(out, t);
            }
        }
        long(out, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as A;

    // apache-avro's encoder is the reference (deprecated, still exact).
    #[allow(deprecated)]
    #[test]
    fn encoding_matches_apache_avro_and_generation_is_deterministic() {
        let schema = apache_avro::Schema::parse_str(SCHEMA).expect("schema parses");
        for i in 0..200 {
            let e = event(42, i, 1_700_000_000_000, 1000);
            assert_eq!(e, event(42, i, 1_700_000_000_000, 1000));
            assert_eq!(index_of(&e.event_id), Some(i));
            let mut mine = Vec::new();
            e.encode(&mut mine);
            let opt = |s: &Option<String>| match s {
                None => A::Union(0, Box::new(A::Null)),
                Some(s) => A::Union(1, Box::new(A::String(s.clone()))),
            };
            let v = A::Record(vec![
                ("event_id".into(), A::String(e.event_id.clone())),
                ("uid".into(), A::String(e.uid.clone())),
                ("url".into(), A::String(e.url.clone())),
                ("referer".into(), opt(&e.referer)),
                ("user_agent".into(), A::String(e.user_agent.clone())),
                ("ts".into(), A::TimestampMillis(e.ts_ms)),
                ("ip".into(), A::String(e.ip.clone())),
                ("country".into(), opt(&e.country)),
                (
                    "event_type".into(),
                    A::Enum(e.event_type as u32, EVENT_TYPES[e.event_type].into()),
                ),
                ("duration_ms".into(), A::Int(e.duration_ms)),
                (
                    "tags".into(),
                    A::Array(e.tags.iter().map(|t| A::String(t.clone())).collect()),
                ),
            ]);
            let theirs = apache_avro::to_avro_datum(&schema, v).expect("value matches schema");
            assert_eq!(mine, theirs, "event {i}");
        }
    }
}
