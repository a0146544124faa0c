//! # shardline
//!
//! A thread-per-core, shard-nothing stream processor that moves Avro events from Kafka into ScyllaDB.
//! Each core runs one shard: a glommio executor with its own Kafka consumer (a member of the group),
//! its own schema cache and decoder, its own Scylla session (through a per-shard tokio bridge) and its
//! own metrics. Nothing on the per-message path is shared between cores.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, defaults, environment overrides, `validate()`.
//! - [`runtime`]: shard placement on cores, start/stop, the per-shard loop ([`runtime::shard`]) and the
//!   tokio bridge for the scylla driver ([`runtime::bridge`]).
//! - [`kafka`]: consumer configuration and context (rebalances, commits, lag), offset tracking,
//!   the dead-letter producer, rdkafka's async hooks on glommio.
//! - [`codec`]: the Confluent wire frame, the schema registry client, the per-shard schema cache and the
//!   compiled Avro decoder (writer schema resolved once per schema id).
//! - [`sink`]: Scylla session, prepared INSERT, field → column mapping and binding, write errors.
//! - [`metrics`]: per-shard prometheus registries, named events, the `/metrics` endpoint.
//! - [`check`]: the live start-up check (topics, subject, table, types).
//! - [`loadgen`]: the navigation-event load generator behind `shardline produce`.
//! - [`pipeline`]: the processor chain (filter, lookup, insert, produce) and the `Processor` trait.
//! - [`plan`]: the capacity planner behind `shardline plan` (pure functions).
//! - [`report`]: the end-of-run summary computed from the merged metrics.
//!
//! The binary (`src/bin/shardline.rs`) only parses arguments, sets up tracing and calls these.

pub mod check;
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
