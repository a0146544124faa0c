//! # shardline
//!
//! A thread-per-core, shard-nothing stream processor that moves Avro events from Kafka into ScyllaDB.
//! Each core runs one shard: a glommio executor with its own Kafka consumer (a member of the group),
//! its own schema cache and decoder, its own Scylla session (through a per-shard tokio bridge) and its
//! own metrics. Nothing on the per-message path is shared between cores.
//!
//! # Layout
//!
//! - [`config`]: the TOML file as typed values (serde enums, durations), defaults, environment
//!   overrides (addresses, secrets), one `validate()` with a `TableConfig::validate` for every table;
//!   `config::Route` is one route's view (topics, subject, table, processors, its record fields).
//! - [`runtime`]: shard placement on cores, start/stop/kill; [`runtime::shard`] is one shard:
//!   `setup` (resources), `run` (the event loop), `record` (the life of one record).
//! - [`kafka`]: consumer and producer configuration, the consumer context (rebalances, commits, lag),
//!   [`kafka::partitions`] (the `PartitionBook`: trackers, pause reasons, end-of-partition, stored and
//!   final offsets), the dead-letter producer, rdkafka's async hooks on glommio.
//! - [`codec`]: the Confluent wire frame, the schema registry client (HTTPS, mutual TLS, basic or
//!   bearer auth), the per-shard schema cache, the compiled Avro decoder (writer schema resolved once
//!   per schema id, nested field paths included), [`codec::reader`] (schema evolution: reader
//!   defaults and the per-id check against the tables) and [`codec::shared`] (decoded strings and
//!   bytes as ranges of the record's one payload copy).
//! - [`pipeline`]: the `Chain` every record goes through and one file per step (filter, lookup, insert,
//!   produce), the insert sink's owner-grouped batching (`batch`), [`pipeline::meta`] (Kafka key,
//!   headers and metadata as record fields), `build` (config → chain) and the `Processor` trait for
//!   custom steps.
//! - [`sink`]: the database: errors per phase, session and statement preparation, binding into
//!   [`sink::Cell`]s (text and bytes still in the payload until the driver serialises them), writers,
//!   the tokio runtime the driver needs, driven on the shard's own thread.
//! - [`retry`]: the one retry policy, the `Retryable` trait and the shard's `Shutdown` signal.
//! - [`metrics`]: per-shard prometheus registries, named events, the `/metrics` endpoint.
//! - [`check`]: the live start-up check (topics, subject, table, types).
//! - [`loadgen`], [`plan`], [`report`]: the load generator, the capacity planner, the run summary;
//!   [`clock`]: the wall clock in µs, ms and seconds.
//!
//! The binary (`src/bin/shardline.rs`) only parses arguments, sets up tracing and calls these.
//!
//! # The path of one record
//!
//! The shard's consumer (`runtime::shard::run`) hands a message to `on_message`, which registers its
//! offset in the `kafka::partitions::PartitionBook`, copies the payload once (shared by every value
//! decoded from it and by a dead letter) and decodes it right there in the loop with the
//! `codec::Decoder` of the topic's route (the `Plan` of its schema id); a record without a value (a
//! tombstone) is not decoded, and only the sinks see it (`Chain::run_tombstone`). When the route's
//! whole chain is one batching insert sink (the usual case), `runtime::shard::record::hand_off`
//! fills the Kafka metadata slots (`pipeline::meta`), binds the row and hands it to its batch right
//! there, the record parked in `record::DirectRows` without a future until its row's result comes
//! back (`pipeline::batch::RowDone`). Otherwise the decoded values go into a future
//! (`runtime::shard::record::process`) that fills the metadata slots and runs
//! the route's `pipeline::Chain`: filters and lookups in order,
//! then the sinks; the insert sink (`pipeline::insert`) binds the values with a `sink::Binder` and
//! hands the row to its `pipeline::batch::Batcher`, which groups rows by the replica that owns them
//! and writes each group as one batch through a `sink::ScyllaWriter` when it is full or the loop has
//! nothing more to bind, retrying transient errors with `retry::retry`; the record waits for its own
//! row's result. The future ends in a completion (a direct record's end becomes one in the loop's
//! `on_direct`); `on_completion` marks the offset done in the book, which stores the
//! contiguous done prefix for librdkafka to commit. A record that fails goes to the dead-letter topic
//! (`kafka::dead_letter`) before its offset is marked done; an error about the table or the session
//! stops the shard without marking it.

pub mod check;
pub mod clock;
pub mod codec;
pub mod config;
pub mod kafka;
pub mod loadgen;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod sink;
