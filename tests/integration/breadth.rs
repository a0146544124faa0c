//! What Kafka → Cassandra sink users expect (issue 11): tombstones as deletes, Kafka key, headers
//! and metadata as columns, and the wider Avro types (nested paths, decimals, durations, records as
//! UDTs, general unions) written into a real table, compared cell by cell.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use apache_avro::types::Value as Avro;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use scylla::value::{CqlDecimal, CqlDuration, CqlTimestamp, CqlValue, CqlVarint};
use shardline::codec::RegistryClient;

use crate::utils::*;

/// One record to produce: key, value (None: a tombstone), Kafka timestamp, headers.
struct Rec {
    key: Vec<u8>,
    value: Option<Avro>,
    ts_ms: i64,
    headers: Vec<(&'static str, String)>,
}

fn rec(key: &str, value: Option<Avro>, ts_ms: i64) -> Rec {
    Rec {
        key: key.as_bytes().to_vec(),
        value,
        ts_ms,
        headers: Vec::new(),
    }
}

/// Registers `schema` under the topic's value subject and produces `recs` to partition 0, in order,
/// framed in the Confluent wire format; waits for every acknowledgement.
fn produce_avro(topic: &str, schema: &str, recs: &[Rec]) -> Result<()> {
    let subject = format!("{topic}-value");
    let writer = Writer::register(&subject, schema)?;
    let all: Vec<(&Writer, &Rec)> = recs.iter().map(|r| (&writer, r)).collect();
    produce_with(topic, &all)
}

/// A registered writer schema.
struct Writer {
    id: u32,
    schema: apache_avro::Schema,
}

impl Writer {
    fn register(subject: &str, json: &str) -> Result<Writer> {
        let reg = RegistryClient::new(REGISTRY, Duration::from_secs(10));
        Ok(Writer {
            id: reg.register(subject, json)?,
            schema: apache_avro::Schema::parse_str(json)?,
        })
    }
}

/// Produces each record with its own writer schema, to partition 0 in order; waits for every
/// acknowledgement.
#[allow(deprecated)] // apache-avro's reference encoder: deprecated, still exact.
fn produce_with(topic: &str, recs: &[(&Writer, &Rec)]) -> Result<()> {
    let producer = checked_producer(&[])?;
    for (w, r) in recs {
        let payload = match &r.value {
            None => None,
            Some(v) => {
                let datum = apache_avro::to_avro_datum(&w.schema, v.clone())?;
                let mut framed = Vec::new();
                shardline::codec::frame::frame_into(w.id, &datum, &mut framed);
                Some(framed)
            }
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(0)
            .timestamp(r.ts_ms)
            .key(r.key.as_slice())
            .headers(headers);
        if let Some(p) = &payload {
            out = out.payload(p.as_slice());
        }
        if let Err((e, _)) = producer.send(out) {
            bail!("produce: {e}");
        }
    }
    flush_checked(&producer).with_context(|| format!("producing {} records to {topic}", recs.len()))
}

/// One test's names: its topic (one partition, its dead-letter topic created too), keyspace, group
/// and folder.
struct Case {
    topic: String,
    ks: String,
    group: String,
    dir: std::path::PathBuf,
}

fn case(name: &str) -> Result<Case> {
    let c = Case {
        topic: unique(name),
        ks: unique(name),
        group: unique("grp"),
        dir: temp_dir(name)?,
    };
    create_topic(&c.topic, 1)?;
    create_topic(&format!("{}.dlq", c.topic), 1)?;
    Ok(c)
}

/// A keyspace with the navigation table (the primary route's) and a `kv` table (another route's).
fn nav_and_kv_tables(ks: &str) -> Result<()> {
    tokio().block_on(async {
        let s = session().await?;
        create_keyspace(&s, ks).await?;
        s.query_unpaged(kv_table(ks, "kv"), &[]).await?;
        anyhow::Ok(())
    })
}

/// The primary route's `[table]` body: every navigation field into its table.
fn nav_table() -> String {
    format!(
        "table = \"navigation_events\"\nttl_seconds = 2592000\n\n[table.columns]\n{ALL_COLUMNS}"
    )
}

async fn cql(ks: &str, statements: &[String]) -> Result<()> {
    let s = session().await?;
    s.query_unpaged(
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class':'SimpleStrategy','replication_factor':1}}"),
        &[],
    )
    .await?;
    for st in statements {
        s.query_unpaged(st.as_str(), &[]).await?;
    }
    Ok(())
}

/// Rows of `q` keyed by their first column (text).
fn rows_by_key(q: &str) -> Result<HashMap<String, Vec<Option<CqlValue>>>> {
    let all = tokio().block_on(async { rows(&session().await?, q).await })?;
    let mut out = HashMap::new();
    for r in all {
        let Some(Some(CqlValue::Text(k))) = r.first().cloned() else {
            bail!("a row without a text key: {r:?}");
        };
        out.insert(k, r);
    }
    Ok(out)
}

/// A record whose key is not UTF-8 (a `kafka.key` column refuses it: dead-lettered as `metadata`),
/// with a header mapped to a column (`trace = t-bad`) and one that is not (`origin = edge-7`).
fn bad_key_rec() -> Rec {
    Rec {
        key: vec![0xff, 0xfe],
        value: kv("bad-key"),
        ts_ms: BASE_TS_MS + 200,
        headers: vec![("trace", "t-bad".into()), ("origin", "edge-7".into())],
    }
}

/// Drains `config` (group, topic) and checks that it consumed and wrote `counts`, dead-lettered one
/// record of the given class and source offset and committed every offset; gives that dead letter.
fn drain_to_one_dead_letter(
    config: &std::path::Path,
    (group, topic): (&str, &str),
    (consumed, written): (u64, u64),
    (class, offset): (&str, i64),
) -> Result<Letter> {
    let out = drain_ok(config, Duration::from_secs(180), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["consumed"], consumed);
    assert_eq!(summary["written"], written);
    assert_eq!(summary["dead_lettered"], 1);
    assert_eq!(committed(group, topic, 1)?, end_offsets(topic, 1)?);
    let mut letters = dead_letters(topic)?;
    assert_eq!(letters.len(), 1);
    let letter = letters.remove(0);
    assert_eq!(letter.headers["shardline.error.class"], class);
    assert_eq!(
        letter.headers["shardline.source.offset"],
        offset.to_string()
    );
    Ok(letter)
}

const KV_SCHEMA: &str =
    r#"{"type":"record","name":"kv","namespace":"t","fields":[{"name":"url","type":"string"}]}"#;

fn kv(url: &str) -> Option<Avro> {
    Some(Avro::Record(vec![("url".into(), Avro::String(url.into()))]))
}

const KV_COLUMNS: &str = r#"k = "kafka.key"
url = "url"
part = "kafka.partition"
off = "kafka.offset"
kts = "kafka.timestamp"
trace = "kafka.header.trace"
src = "kafka.topic""#;

fn kv_table(ks: &str, name: &str) -> String {
    format!(
        "CREATE TABLE {ks}.{name} (k text PRIMARY KEY, url text, part int, off bigint, kts timestamp, \
         trace text, src text)"
    )
}

// Fails on the old code: a tombstone was dead-lettered as a corrupt datum, and kafka.* fields were
// "not in writer schema".
#[test]
fn tombstones_delete_by_key_and_an_older_insert_replayed_later_does_not_bring_the_row_back(
) -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("tomb")?;
    tokio().block_on(cql(&ks, &[kv_table(&ks, "kv"), kv_table(&ks, "kv_all")]))?;
    // Offsets 0-9: inserts of k0..k9 (even ones carry a trace header); 10: a key that is not UTF-8
    // (dead-lettered); 11-14: tombstones of k0..k3, later than their inserts.
    let mut recs: Vec<Rec> = (0..10)
        .map(|i| {
            let mut r = rec(&format!("k{i}"), kv(&format!("u{i}")), BASE_TS_MS + i * 10);
            if i % 2 == 0 {
                r.headers.push(("trace", format!("t{i}")));
            }
            r
        })
        .collect();
    // Its own headers, one mapped to a column and one not: its dead letter carries both.
    recs.push(bad_key_rec());
    recs.extend((0..4).map(|i| rec(&format!("k{i}"), None, BASE_TS_MS + 1000 + i)));
    produce_avro(&topic, KV_SCHEMA, &recs)?;
    // `kv` deletes on tombstones; the insert step's `kv_all` skips them.
    let table =
        format!("table = \"kv\"\non_tombstone = \"delete\"\n\n[table.columns]\n{KV_COLUMNS}");
    let processors = format!(
        "[[processors]]\nkind = \"insert\"\nname = \"all\"\n[processors.table]\nkeyspace = \"{ks}\"\n\
         table = \"kv_all\"\non_tombstone = \"skip\"\n[processors.table.columns]\n{KV_COLUMNS}"
    );
    let config = dir.join("tomb.toml");
    std::fs::write(
        &config,
        config_text(&topic, &group, &ks, 64, &table, &processors),
    )?;
    // 10 inserts and 4 deletes written, the key that is not UTF-8 dead-lettered.
    let letter = &drain_to_one_dead_letter(&config, (&group, &topic), (15, 14), ("metadata", 10))?;
    // Fails on the old code: a dead letter carried shardline's headers only.
    assert_eq!(
        letter.headers.get("trace").map(String::as_str),
        Some("t-bad")
    );
    assert_eq!(
        letter.headers.get("origin").map(String::as_str),
        Some("edge-7")
    );
    assert_eq!(letter.key.as_deref(), Some(&[0xff, 0xfe][..]));

    let q = |t: &str| {
        format!("SELECT k, url, part, off, kts, trace, src, writetime(url) FROM {ks}.{t}")
    };
    let kept = rows_by_key(&q("kv"))?;
    let all = rows_by_key(&q("kv_all"))?;
    let mut expected_kept: Vec<String> = (4..10).map(|i| format!("k{i}")).collect();
    expected_kept.sort();
    let mut got: Vec<String> = kept.keys().cloned().collect();
    got.sort();
    assert_eq!(got, expected_kept, "k0..k3 deleted by their tombstones");
    assert_eq!(all.len(), 10, "the skipping table keeps every row");
    for i in 0..10i64 {
        let k = format!("k{i}");
        let ts = BASE_TS_MS + i * 10;
        let expected = vec![
            Some(CqlValue::Text(k.clone())),
            Some(CqlValue::Text(format!("u{i}"))),
            Some(CqlValue::Int(0)),
            Some(CqlValue::BigInt(i)),
            Some(CqlValue::Timestamp(CqlTimestamp(ts))),
            (i % 2 == 0).then(|| CqlValue::Text(format!("t{i}"))),
            Some(CqlValue::Text(topic.clone())),
            // The default write timestamp: Kafka ms × 1000 + offset mod 1000.
            Some(CqlValue::BigInt(ts * 1000 + i)),
        ];
        assert_eq!(all.get(&k), Some(&expected), "kv_all row {k}");
        if i >= 4 {
            assert_eq!(kept.get(&k), Some(&expected), "kv row {k}");
        }
    }

    // A replay of k0's insert with an older timestamp than its tombstone stays deleted; a newer
    // insert of k1 writes the row again.
    produce_avro(
        &topic,
        KV_SCHEMA,
        &[
            rec("k0", kv("late-old"), BASE_TS_MS + 500),
            rec("k1", kv("late-new"), BASE_TS_MS + 5000),
        ],
    )?;
    drain_ok(&config, Duration::from_secs(180), &[])?;
    let kept = rows_by_key(&q("kv"))?;
    assert!(
        !kept.contains_key("k0"),
        "an older insert does not resurrect k0"
    );
    assert_eq!(
        kept.get("k1").and_then(|r| r[1].clone()),
        Some(CqlValue::Text("late-new".into()))
    );
    assert_eq!(committed(&group, &topic, 1)?, end_offsets(&topic, 1)?);
    Ok(())
}

// `kafka.dead_letter_source_headers = false`: a dead letter carries shardline's headers only, and a
// header mapped to a column is still read. Fails if the option is ignored (the letter would carry
// `origin` and `trace`).
#[test]
fn a_dead_letter_goes_without_source_headers_when_configured_and_mapped_headers_still_land(
) -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("nohdr")?;
    tokio().block_on(cql(&ks, &[kv_table(&ks, "kv")]))?;
    let mut recs: Vec<Rec> = (0..3)
        .map(|i| {
            let mut r = rec(&format!("k{i}"), kv(&format!("u{i}")), BASE_TS_MS + i * 10);
            r.headers.push(("trace", format!("t{i}")));
            r.headers.push(("origin", "edge-1".into()));
            r
        })
        .collect();
    // Offset 3: a key that is not UTF-8, with headers of its own: dead-lettered without them.
    recs.push(bad_key_rec());
    produce_avro(&topic, KV_SCHEMA, &recs)?;
    let table = format!("table = \"kv\"\n\n[table.columns]\n{KV_COLUMNS}");
    let text = config_text(&topic, &group, &ks, 64, &table, "").replace(
        &format!("dead_letter_topic = \"{topic}.dlq\""),
        &format!("dead_letter_topic = \"{topic}.dlq\"\ndead_letter_source_headers = false"),
    );
    assert!(text.contains("dead_letter_source_headers = false"));
    let config = dir.join("nohdr.toml");
    std::fs::write(&config, text)?;
    let letter = &drain_to_one_dead_letter(&config, (&group, &topic), (4, 3), ("metadata", 3))?;
    assert_eq!(letter.headers.get("trace"), None);
    assert_eq!(letter.headers.get("origin"), None);
    assert!(
        letter.headers.keys().all(|k| k.starts_with("shardline.")),
        "shardline's headers only: {:?}",
        letter.headers.keys().collect::<Vec<_>>()
    );
    assert_eq!(letter.key.as_deref(), Some(&[0xff, 0xfe][..]));
    assert!(letter.value.is_some(), "the dead letter keeps its value");

    let rows = rows_by_key(&format!("SELECT k, trace FROM {ks}.kv"))?;
    assert_eq!(rows.len(), 3);
    for i in 0..3 {
        let k = format!("k{i}");
        assert_eq!(
            rows.get(&k),
            Some(&vec![
                Some(CqlValue::Text(k.clone())),
                Some(CqlValue::Text(format!("t{i}")))
            ]),
            "row {k}: its mapped header"
        );
    }
    Ok(())
}

#[test]
fn a_tombstone_is_dead_lettered_by_default_and_a_delete_needs_a_key_from_kafka() -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("tombdl")?;
    tokio().block_on(cql(&ks, &[kv_table(&ks, "kv")]))?;
    produce_avro(
        &topic,
        KV_SCHEMA,
        &[
            rec("a", kv("u-a"), BASE_TS_MS),
            rec("a", None, BASE_TS_MS + 1),
            rec("b", kv("u-b"), BASE_TS_MS + 2),
        ],
    )?;
    let columns = "k = \"kafka.key\"\nurl = \"url\"";
    let table = format!("table = \"kv\"\n\n[table.columns]\n{columns}");
    let config = dir.join("dl.toml");
    std::fs::write(&config, config_text(&topic, &group, &ks, 64, &table, ""))?;
    let out = drain_ok(&config, Duration::from_secs(180), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["written"], 2);
    assert_eq!(summary["dead_lettered"], 1);
    let letters = dead_letters(&topic)?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers["shardline.error.class"], "tombstone");
    assert_eq!(
        letters[0].value, None,
        "the dead letter is the tombstone itself"
    );
    assert_eq!(letters[0].key.as_deref(), Some(&b"a"[..]));
    assert_eq!(rows_by_key(&format!("SELECT k FROM {ks}.kv"))?.len(), 2);
    assert_eq!(committed(&group, &topic, 1)?, end_offsets(&topic, 1)?);

    // Deleting needs every primary-key column from Kafka metadata: refused before any shard starts.
    let refused_cols = "k = \"url\"";
    let table =
        format!("table = \"kv\"\non_tombstone = \"delete\"\n\n[table.columns]\n{refused_cols}");
    std::fs::write(
        &config,
        config_text(&topic, &unique("grp"), &ks, 64, &table, ""),
    )?;
    let out = run_drain(&config, Duration::from_secs(120), &[])?;
    assert!(!out.ok, "a delete without a key from Kafka is refused");
    assert!(
        out.stderr
            .contains("primary-key column 'k' is mapped from field 'url'"),
        "{}",
        tail_text(&out.stderr)
    );
    Ok(())
}

fn tail_text(s: &str) -> &str {
    let start = s.len().saturating_sub(3000);
    s.get(start..).unwrap_or(s)
}

const WIDE_SCHEMA: &str = r#"{"type":"record","name":"order","namespace":"t","fields":[
    {"name":"id","type":"string"},
    {"name":"geo","type":["null",{"type":"record","name":"geo","fields":[
        {"name":"lat","type":"double"},
        {"name":"lon","type":["null","double"]}]}]},
    {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
    {"name":"price","type":{"type":"fixed","name":"p8","size":8,"logicalType":"decimal","precision":18,"scale":0}},
    {"name":"wait","type":{"type":"fixed","name":"d12","size":12,"logicalType":"duration"}},
    {"name":"items","type":{"type":"array","items":{"type":"record","name":"item","fields":[
        {"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}},
    {"name":"u","type":["null","string","long"]},
    {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}}
]}"#;

fn order(id: &str, geo: Option<(f64, Option<f64>)>, u: Avro) -> Avro {
    use apache_avro::{Days, Decimal, Duration as AvroDuration, Millis, Months};
    let null = || Avro::Union(0, Box::new(Avro::Null));
    let geo = match geo {
        None => null(),
        Some((lat, lon)) => Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("lat".into(), Avro::Double(lat)),
                (
                    "lon".into(),
                    lon.map_or_else(null, |x| Avro::Union(1, Box::new(Avro::Double(x)))),
                ),
            ])),
        ),
    };
    let item = |sku: &str, qty: i32| {
        Avro::Record(vec![
            ("sku".into(), Avro::String(sku.into())),
            ("qty".into(), Avro::Int(qty)),
        ])
    };
    Avro::Record(vec![
        ("id".into(), Avro::String(id.into())),
        ("geo".into(), geo),
        // -12.50 (unscaled -1250).
        (
            "amount".into(),
            Avro::Decimal(Decimal::from(vec![0xfb, 0x1e])),
        ),
        (
            "price".into(),
            Avro::Decimal(Decimal::from(vec![0, 0, 0, 0, 0, 0, 0x04, 0xe2])),
        ),
        (
            "wait".into(),
            Avro::Duration(AvroDuration::new(
                Months::new(1),
                Days::new(2),
                Millis::new(3),
            )),
        ),
        (
            "items".into(),
            Avro::Array(vec![item("a", 2), item("b", 3)]),
        ),
        ("u".into(), u),
        ("at".into(), Avro::TimestampMicros(1_767_225_600_123_456)),
    ])
}

// Fails on the old code: the start-up check refused decimal -> decimal, a nested path, a union and
// an array of records.
#[test]
fn nested_fields_decimals_durations_udts_and_unions_land_exactly() -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("wide")?;
    tokio().block_on(cql(
        &ks,
        &[
            format!("CREATE TYPE {ks}.item (sku text, qty int)"),
            format!("CREATE TYPE {ks}.place (lat double, lon double, alt int)"),
            format!(
                "CREATE TABLE {ks}.wide (id text PRIMARY KEY, lat double, amount decimal, \
                 amount_text text, price varint, wait duration, items frozen<list<frozen<item>>>, \
                 place frozen<place>, u text, at timestamp)"
            ),
        ],
    ))?;
    produce_avro(
        &topic,
        WIDE_SCHEMA,
        &[
            rec(
                "r1",
                Some(order(
                    "r1",
                    Some((1.5, Some(-2.0))),
                    Avro::Union(1, Box::new(Avro::String("s".into()))),
                )),
                BASE_TS_MS,
            ),
            // The union's long branch does not convert to text: this record alone is dead-lettered.
            rec(
                "r2",
                Some(order("r2", None, Avro::Union(2, Box::new(Avro::Long(7))))),
                BASE_TS_MS + 1,
            ),
            // A null nested record: its paths and its UDT column are null (unset).
            rec(
                "r3",
                Some(order("r3", None, Avro::Union(0, Box::new(Avro::Null)))),
                BASE_TS_MS + 2,
            ),
        ],
    )?;
    let columns = r#"id = "id"
lat = "geo.lat"
amount = "amount"
amount_text = "amount"
price = "price"
wait = "wait"
items = "items"
place = "geo"
u = "u"
at = "at""#;
    let table = format!("table = \"wide\"\n\n[table.columns]\n{columns}");
    let config = dir.join("wide.toml");
    std::fs::write(&config, config_text(&topic, &group, &ks, 64, &table, ""))?;
    let out = drain_ok(&config, Duration::from_secs(180), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["written"], 2);
    assert_eq!(summary["dead_lettered"], 1);
    let letters = dead_letters(&topic)?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers["shardline.source.offset"], "1");
    assert_eq!(letters[0].headers["shardline.error.class"], "mapping");

    let got = rows_by_key(&format!(
        "SELECT id, lat, amount, amount_text, price, wait, items, place, u, at FROM {ks}.wide"
    ))?;
    let item = |sku: &str, qty: i32| CqlValue::UserDefinedType {
        keyspace: ks.clone(),
        name: "item".into(),
        fields: vec![
            ("sku".into(), Some(CqlValue::Text(sku.into()))),
            ("qty".into(), Some(CqlValue::Int(qty))),
        ],
    };
    let common = |id: &str| {
        vec![
            Some(CqlValue::Text(id.into())),
            None,
            Some(CqlValue::Decimal(
                CqlDecimal::from_signed_be_bytes_slice_and_exponent(&[0xfb, 0x1e], 2),
            )),
            Some(CqlValue::Text("-12.50".into())),
            Some(CqlValue::Varint(CqlVarint::from_signed_bytes_be_slice(&[
                0, 0, 0, 0, 0, 0, 0x04, 0xe2,
            ]))),
            Some(CqlValue::Duration(CqlDuration {
                months: 1,
                days: 2,
                nanoseconds: 3_000_000,
            })),
            Some(CqlValue::List(vec![item("a", 2), item("b", 3)])),
            None,
            None,
            // timestamp-micros, rounded down to the column's millisecond.
            Some(CqlValue::Timestamp(CqlTimestamp(1_767_225_600_123))),
        ]
    };
    let mut r1 = common("r1");
    r1[1] = Some(CqlValue::Double(1.5));
    r1[7] = Some(CqlValue::UserDefinedType {
        keyspace: ks.clone(),
        name: "place".into(),
        fields: vec![
            ("lat".into(), Some(CqlValue::Double(1.5))),
            ("lon".into(), Some(CqlValue::Double(-2.0))),
            ("alt".into(), None),
        ],
    });
    r1[8] = Some(CqlValue::Text("s".into()));
    let r1_got = got.get("r1").context("row r1")?;
    assert_eq!(r1_got.len(), r1.len());
    for (i, (g, e)) in r1_got.iter().zip(&r1).enumerate() {
        assert!(same(g, e), "r1 column {i}: {g:?} != {e:?}");
    }
    let r3_got = got.get("r3").context("row r3")?;
    for (i, (g, e)) in r3_got.iter().zip(&common("r3")).enumerate() {
        assert!(same(g, e), "r3 column {i}: {g:?} != {e:?}");
    }
    assert!(!got.contains_key("r2"));
    Ok(())
}

/// Equal as written: the database returns varints and decimals in their shortest form.
fn same(got: &Option<CqlValue>, expected: &Option<CqlValue>) -> bool {
    let norm = |v: &Option<CqlValue>| -> Option<String> {
        v.as_ref().map(|v| match v {
            CqlValue::Varint(x) => format!("varint {}", i128_of(x.as_signed_bytes_be_slice())),
            CqlValue::Decimal(d) => {
                let (b, s) = d.as_signed_be_bytes_slice_and_exponent();
                format!("decimal {} e-{s}", i128_of(b))
            }
            other => format!("{other:?}"),
        })
    };
    norm(got) == norm(expected)
}

fn i128_of(b: &[u8]) -> i128 {
    let mut v: i128 = if b.first().is_some_and(|x| x & 0x80 != 0) {
        -1
    } else {
        0
    };
    for x in b {
        v = (v << 8) | i128::from(*x);
    }
    v
}

const EVO_V1: &str = r#"{"type":"record","name":"evo","namespace":"t","fields":[
    {"name":"id","type":"string"},{"name":"url","type":"string"},{"name":"n","type":"int"}]}"#;
const EVO_V2: &str = r#"{"type":"record","name":"evo","namespace":"t","fields":[
    {"name":"id","type":"string"},{"name":"url","type":"string"},{"name":"n","type":"int"},
    {"name":"ref","type":"string","default":"none"},
    {"name":"note","type":["null","string"],"default":null}]}"#;
/// `n` changed to a string: its int column cannot take it.
const EVO_BAD: &str = r#"{"type":"record","name":"evo","namespace":"t","fields":[
    {"name":"id","type":"string"},{"name":"url","type":"string"},{"name":"n","type":"string"},
    {"name":"ref","type":"string","default":"none"},
    {"name":"note","type":["null","string"],"default":null}]}"#;

fn evo(id: &str, n: i64, extra: Option<(&str, Option<&str>)>, n_as_text: bool) -> Option<Avro> {
    let mut fields = vec![
        ("id".to_string(), Avro::String(id.into())),
        ("url".to_string(), Avro::String(format!("/{id}"))),
        (
            "n".to_string(),
            if n_as_text {
                Avro::String(n.to_string())
            } else {
                Avro::Int(n as i32)
            },
        ),
    ];
    if let Some((r, note)) = extra {
        fields.push(("ref".into(), Avro::String(r.into())));
        fields.push((
            "note".into(),
            match note {
                None => Avro::Union(0, Box::new(Avro::Null)),
                Some(t) => Avro::Union(1, Box::new(Avro::String(t.into()))),
            },
        ));
    }
    Some(Avro::Record(fields))
}

// Fails on the old code: every record of the older schema (it lacks `ref` and `note`) was
// dead-lettered as schema_resolution.
#[test]
fn two_schema_versions_interleaved_write_every_record_and_a_changed_type_is_refused_per_id(
) -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("evo")?;
    tokio().block_on(cql(
        &ks,
        &[format!(
            "CREATE TABLE {ks}.evo (id text PRIMARY KEY, url text, n int, ref text, note text)"
        )],
    ))?;
    let subject = format!("{topic}-value");
    let v1 = Writer::register(&subject, EVO_V1)?;
    let v2 = Writer::register(&subject, EVO_V2)?;
    // Under another subject, so the value subject's latest (the reader) stays v2.
    let bad = Writer::register(&format!("{topic}-other"), EVO_BAD)?;
    let mut recs = Vec::new();
    for i in 0..12i64 {
        let id = format!("r{i}");
        let (w, value) = match i % 3 {
            0 => (&v1, evo(&id, i, None, false)),
            1 => (&v2, evo(&id, i, Some(("given", Some("hello"))), false)),
            _ => (&bad, evo(&id, i, Some(("given", None)), true)),
        };
        recs.push((w, rec(&id, value, BASE_TS_MS + i)));
    }
    let refs: Vec<(&Writer, &Rec)> = recs.iter().map(|(w, r)| (*w, r)).collect();
    produce_with(&topic, &refs)?;
    let columns = "id = \"id\"\nurl = \"url\"\nn = \"n\"\nref = \"ref\"\nnote = \"note\"";
    let table = format!("table = \"evo\"\n\n[table.columns]\n{columns}");
    let config = dir.join("evo.toml");
    std::fs::write(&config, config_text(&topic, &group, &ks, 64, &table, ""))?;
    let out = drain_ok(&config, Duration::from_secs(180), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["written"], 8, "both versions written");
    assert_eq!(summary["dead_lettered"], 4, "the changed type's records");
    let letters = dead_letters(&topic)?;
    assert_eq!(letters.len(), 4);
    for l in &letters {
        assert_eq!(l.headers["shardline.error.class"], "schema_incompatible");
        let offset: i64 = l.headers["shardline.source.offset"].parse()?;
        assert_eq!(offset % 3, 2, "only records of the changed schema");
    }
    assert_eq!(
        out.stderr.matches("writer schema refused").count(),
        1,
        "the refusal is logged once (one partition, one shard)"
    );
    let rows = rows_by_key(&format!("SELECT id, url, n, ref, note FROM {ks}.evo"))?;
    assert_eq!(rows.len(), 8);
    for i in (0..12i64).filter(|i| i % 3 != 2) {
        let id = format!("r{i}");
        let (r, note) = if i % 3 == 0 {
            // v1 lacks them: the reader's default, and null (unset) where the default is null.
            ("none", None)
        } else {
            ("given", Some(CqlValue::Text("hello".into())))
        };
        assert_eq!(
            rows.get(&id),
            Some(&vec![
                Some(CqlValue::Text(id.clone())),
                Some(CqlValue::Text(format!("/{id}"))),
                Some(CqlValue::Int(i as i32)),
                Some(CqlValue::Text(r.into())),
                note,
            ]),
            "row {id}"
        );
    }
    assert_eq!(committed(&group, &topic, 1)?, end_offsets(&topic, 1)?);
    Ok(())
}

// Fails on the old code: one process consumed one topic mapping; `[[routes]]` did not parse.
#[test]
fn two_routes_share_the_shards_each_topic_written_to_its_own_table() -> Result<()> {
    let nav = unique("rnav");
    let kvt = unique("rkv");
    let ks = unique("routes");
    let group = unique("grp");
    let dir = temp_dir("routes")?;
    create_topic(&nav, 4)?;
    create_topic(&kvt, 1)?;
    create_topic(&format!("{nav}.dlq"), 1)?;
    nav_and_kv_tables(&ks)?;
    let seed = 5;
    produce(&nav, 300, seed, 0)?;
    let mut recs: Vec<Rec> = (0..20)
        .map(|i| rec(&format!("k{i}"), kv(&format!("u{i}")), BASE_TS_MS + i))
        .collect();
    recs.push(rec("k0", None, BASE_TS_MS + 100));
    produce_avro(&kvt, KV_SCHEMA, &recs)?;
    let table = nav_table();
    let route = |columns: &str| {
        format!(
            "[[routes]]\nname = \"kv\"\ntopics = [\"{kvt}\"]\n[routes.table]\nkeyspace = \"{ks}\"\n\
             table = \"kv\"\non_tombstone = \"delete\"\nconsistency = \"one\"\n\
             [routes.table.columns]\n{columns}"
        )
    };
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        config_text(&nav, &group, &ks, 512, &table, &route(KV_COLUMNS)),
    )?;
    let out = drain_ok(&config, Duration::from_secs(300), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["consumed"], 321);
    assert_eq!(summary["written"], 321, "300 events, 20 rows and 1 delete");
    assert_eq!(summary["dead_lettered"], 0);
    let rows = tokio().block_on(async { read_rows(&session().await?, &ks).await })?;
    assert_eq!(rows.len(), 300);
    for row in rows.values() {
        assert_row_matches(row, seed);
    }
    let kv_rows = rows_by_key(&format!("SELECT k, url, off, src FROM {ks}.kv"))?;
    assert_eq!(kv_rows.len(), 19, "k0 deleted by its tombstone");
    for i in 1..20i64 {
        assert_eq!(
            kv_rows.get(&format!("k{i}")),
            Some(&vec![
                Some(CqlValue::Text(format!("k{i}"))),
                Some(CqlValue::Text(format!("u{i}"))),
                Some(CqlValue::BigInt(i)),
                Some(CqlValue::Text(kvt.clone())),
            ])
        );
    }
    assert_eq!(committed(&group, &nav, 4)?, end_offsets(&nav, 4)?);
    assert_eq!(committed(&group, &kvt, 1)?, end_offsets(&kvt, 1)?);

    // The start-up check covers every route: a field the route's subject lacks is refused there.
    std::fs::write(
        &config,
        config_text(
            &nav,
            &unique("grp"),
            &ks,
            512,
            &table,
            &route(&KV_COLUMNS.replace("url = \"url\"", "url = \"nope\"")),
        ),
    )?;
    let out = run_drain(&config, Duration::from_secs(120), &[])?;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("field 'nope' is not in writer schema t.kv")
            && !out.stderr.contains("shard started"),
        "{}",
        tail_text(&out.stderr)
    );
    Ok(())
}

const ORDER_KEY: &str = r#"{"type":"record","name":"okey","namespace":"t","fields":[
    {"name":"tenant","type":"string"},{"name":"id","type":"int"}]}"#;

/// An Avro key in the Confluent wire format.
#[allow(deprecated)] // apache-avro's reference encoder: deprecated, still exact.
fn avro_key(w: &Writer, tenant: &str, id: i32) -> Result<Vec<u8>> {
    let datum = apache_avro::to_avro_datum(
        &w.schema,
        Avro::Record(vec![
            ("tenant".into(), Avro::String(tenant.into())),
            ("id".into(), Avro::Int(id)),
        ]),
    )?;
    let mut framed = Vec::new();
    shardline::codec::frame::frame_into(w.id, &datum, &mut framed);
    Ok(framed)
}

// Fails on the old code: kafka.key.<field> did not exist, so a composite key could not come from
// the Kafka key and a tombstone could not say which row to delete.
#[test]
fn an_avro_key_feeds_a_composite_primary_key_and_its_tombstone_deletes_the_row() -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("akey")?;
    tokio().block_on(cql(
        &ks,
        &[format!(
            "CREATE TABLE {ks}.orders (tenant text, id int, url text, PRIMARY KEY ((tenant), id))"
        )],
    ))?;
    let key = Writer::register(&format!("{topic}-key"), ORDER_KEY)?;
    let value = Writer::register(&format!("{topic}-value"), KV_SCHEMA)?;
    let keyed = |tenant: &str, id: i32, v: Option<Avro>, ts: i64| -> Result<Rec> {
        Ok(Rec {
            key: avro_key(&key, tenant, id)?,
            value: v,
            ts_ms: ts,
            headers: Vec::new(),
        })
    };
    let recs = [
        keyed("acme", 1, kv("u1"), BASE_TS_MS)?,
        keyed("acme", 2, kv("u2"), BASE_TS_MS + 1)?,
        keyed("beta", 1, kv("u3"), BASE_TS_MS + 2)?,
        // A key that is not Avro: that record alone is dead-lettered.
        rec("plain-key", kv("u4"), BASE_TS_MS + 3),
        keyed("acme", 1, None, BASE_TS_MS + 4)?,
    ];
    let refs: Vec<(&Writer, &Rec)> = recs.iter().map(|r| (&value, r)).collect();
    produce_with(&topic, &refs)?;
    let columns = "tenant = \"kafka.key.tenant\"\nid = \"kafka.key.id\"\nurl = \"url\"";
    let table =
        format!("table = \"orders\"\non_tombstone = \"delete\"\n\n[table.columns]\n{columns}");
    let config = dir.join("akey.toml");
    std::fs::write(
        &config,
        config_text(&topic, &group, &ks, 64, &table, "").replacen(
            "commit_interval_ms = 500",
            "commit_interval_ms = 500\nkey_format = \"avro\"",
            1,
        ),
    )?;
    let out = drain_ok(&config, Duration::from_secs(180), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["written"], 4, "three rows and one delete");
    assert_eq!(summary["dead_lettered"], 1);
    let letters = dead_letters(&topic)?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers["shardline.source.offset"], "3");
    assert_eq!(letters[0].headers["shardline.error.class"], "bad_magic");
    let rows = tokio().block_on(async {
        rows(
            &session().await?,
            &format!("SELECT tenant, id, url FROM {ks}.orders"),
        )
        .await
    })?;
    let mut got: Vec<(String, i32, String)> = rows
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [Some(CqlValue::Text(t)), Some(CqlValue::Int(i)), Some(CqlValue::Text(u))] => {
                Some((t.clone(), *i, u.clone()))
            }
            _ => None,
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("acme".to_string(), 2, "u2".to_string()),
            ("beta".to_string(), 1, "u3".to_string()),
        ],
        "acme/1 deleted by its tombstone"
    );
    assert_eq!(committed(&group, &topic, 1)?, end_offsets(&topic, 1)?);
    Ok(())
}

// Fails on the old code: `topic_regex` did not exist.
#[test]
fn a_topic_regex_route_consumes_every_matching_topic_into_its_table() -> Result<()> {
    let prefix = unique("rx");
    let nav = unique("rxnav");
    let ks = unique("rx");
    let group = unique("grp");
    let dir = temp_dir("rx")?;
    create_topic(&nav, 1)?;
    create_topic(&format!("{nav}.dlq"), 1)?;
    let matching = [format!("{prefix}-eu"), format!("{prefix}-us")];
    for t in &matching {
        create_topic(t, 1)?;
    }
    // Listed by no route and matched by nothing: never consumed.
    let other = format!("{prefix}x-eu");
    create_topic(&other, 1)?;
    nav_and_kv_tables(&ks)?;
    produce(&nav, 10, 3, 0)?;
    for (i, t) in matching.iter().chain([&other]).enumerate() {
        let recs: Vec<Rec> = (0..5)
            .map(|j| rec(&format!("t{i}-k{j}"), kv("u"), BASE_TS_MS + j))
            .collect();
        produce_avro(t, KV_SCHEMA, &recs)?;
    }
    let table = nav_table();
    // The subject of a regex route is named: its topics are only known at start-up.
    let route = format!(
        "[[routes]]\nname = \"regional\"\ntopic_regex = \"{prefix}-(eu|us)\"\n\
         subject = \"{}-value\"\n[routes.table]\nkeyspace = \"{ks}\"\ntable = \"kv\"\n\
         [routes.table.columns]\n{KV_COLUMNS}",
        matching[0]
    );
    let config = dir.join("rx.toml");
    std::fs::write(&config, config_text(&nav, &group, &ks, 64, &table, &route))?;
    let out = drain_ok(&config, Duration::from_secs(180), &[])?;
    let summary = out.summary.context("a summary")?;
    assert_eq!(
        summary["written"], 20,
        "10 events and 5 rows from each matching topic"
    );
    let rows = rows_by_key(&format!("SELECT k, src FROM {ks}.kv"))?;
    assert_eq!(rows.len(), 10);
    for (i, t) in matching.iter().enumerate() {
        for j in 0..5 {
            assert_eq!(
                rows.get(&format!("t{i}-k{j}")).and_then(|r| r[1].clone()),
                Some(CqlValue::Text(t.clone())),
                "a row of {t}, with its topic"
            );
        }
    }
    for t in &matching {
        assert_eq!(committed(&group, t, 1)?, end_offsets(t, 1)?);
    }
    assert_eq!(committed(&group, &other, 1)?, vec![-1], "never consumed");
    Ok(())
}

// Fails on the old code: an Avro key could only be read by its record fields; a primitive one (a
// KafkaAvroSerializer string key) was "not a record".
#[test]
#[allow(deprecated)] // apache-avro's reference encoder: deprecated, still exact.
fn a_primitive_avro_key_maps_whole_and_its_tombstone_deletes() -> Result<()> {
    let Case {
        topic,
        ks,
        group,
        dir,
    } = case("pkey")?;
    tokio().block_on(cql(&ks, &[kv_table(&ks, "kv")]))?;
    let key = Writer::register(&format!("{topic}-key"), r#""string""#)?;
    let value = Writer::register(&format!("{topic}-value"), KV_SCHEMA)?;
    let keyed = |k: &str, v: Option<Avro>, ts: i64| -> Result<Rec> {
        let datum = apache_avro::to_avro_datum(&key.schema, Avro::String(k.into()))?;
        let mut framed = Vec::new();
        shardline::codec::frame::frame_into(key.id, &datum, &mut framed);
        Ok(Rec {
            key: framed,
            value: v,
            ts_ms: ts,
            headers: Vec::new(),
        })
    };
    let recs = [
        keyed("a", kv("u-a"), BASE_TS_MS)?,
        keyed("b", kv("u-b"), BASE_TS_MS + 1)?,
        keyed("a", None, BASE_TS_MS + 2)?,
    ];
    let refs: Vec<(&Writer, &Rec)> = recs.iter().map(|r| (&value, r)).collect();
    produce_with(&topic, &refs)?;
    let table = "table = \"kv\"\non_tombstone = \"delete\"\n\n[table.columns]\nk = \"kafka.key\"\nurl = \"url\"";
    let config = dir.join("pkey.toml");
    std::fs::write(
        &config,
        config_text(&topic, &group, &ks, 64, table, "").replacen(
            "commit_interval_ms = 500",
            "commit_interval_ms = 500\nkey_format = \"avro\"",
            1,
        ),
    )?;
    let out = drain_ok(&config, Duration::from_secs(180), &[])?;
    assert_eq!(out.summary.context("a summary")?["written"], 3);
    let rows = rows_by_key(&format!("SELECT k, url FROM {ks}.kv"))?;
    assert_eq!(rows.len(), 1, "a deleted by its tombstone");
    assert_eq!(
        rows.get("b"),
        Some(&vec![
            Some(CqlValue::Text("b".into())),
            Some(CqlValue::Text("u-b".into()))
        ])
    );
    Ok(())
}
