//! One shard: a glommio executor pinned to one core that consumes, decodes, processes and commits the
//! partitions Kafka assigns to it, sharing nothing with other shards on the message path.
//!
//! Guarantee (at least once): a record's offset becomes committable only when it and every earlier
//! record of its partition is written, dropped on purpose, or dead-lettered and acknowledged.
//! Retryable errors are retried ([`crate::retry`]), never skipped; a record that can never be written
//! goes to the dead-letter topic, or, without one, stops the shard uncommitted; an error about the
//! table, the session or the credentials stops the shard uncommitted.
//! Memory bound: at most `max_in_flight_per_shard` records in flight; at the bound the shard stops
//! reading and, if the bound holds, pauses its partitions (through rebalances too, see
//! [`crate::kafka::partitions`]) instead of buffering.
//! Precondition: runs inside a glommio `LocalExecutor`; the eager assignment protocol (set by
//! `kafka::consumer_config`).
//!
//! Layout: [`setup`] builds a shard's resources (decoder, chain, consumer, dead letters, partition
//! book); `run` is the event loop (message, completion, direct row end, tick, control → one handler
//! each); `record` is the life of one record after the loop handed it off (straight into its batch,
//! or its future: chain, dead letter, completion); `drain` is drain mode's fallback for a partition
//! end librdkafka never reports.

mod drain;
mod record;
mod run;
mod setup;

use std::sync::Arc;

use super::{ControlReceiver, RunError, RunOptions, ShardSpec, Siblings};
use crate::config::Config;
use crate::metrics::ShardMetrics;

/// Runs one shard to completion. Called inside the shard's executor.
pub async fn run(
    config: Arc<Config>,
    spec: ShardSpec,
    siblings: Siblings,
    metrics: ShardMetrics,
    control: ControlReceiver,
    opts: RunOptions,
) -> Result<(), RunError> {
    let (consumer, resources) = setup::setup(&config, spec, &siblings, metrics, opts).await?;
    run::ShardLoop::new(&config, spec, siblings, resources, control, opts)
        .run(consumer)
        .await
}
