//! Integration tests against the real services of `scripts/services.sh` (Kafka, Cassandra, Apicurio).
//! One binary; each scenario a module; unique topic, group and keyspace names per test.
//! Run with `cargo test --features integration --test integration` (scripts/test.sh does).
#![cfg(feature = "integration")]

mod batching;
mod breadth;
#[cfg(feature = "fault-tests")]
mod faults;
mod harness;
mod pipeline;
mod processor;
mod reliability;
mod security;
mod utils;
