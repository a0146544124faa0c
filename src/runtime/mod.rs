//! Shard start and stop: placement of shards on cores, the start-up check, control over crossbeam
//! channels, and the wait for every shard to end.
//!
//! Guarantee: no shard starts before the config validated and the live check (table columns against
//! the subject's latest writer schema) passed; a second stop request is a kill.
//! Precondition: memlock for glommio's io_memory (root, or about 3 × io_memory_bytes per shard).

pub mod bridge;
pub mod shard;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use prometheus::Registry;
use thiserror::Error;

use crate::codec::CodecError;
use crate::config::{Config, ConfigError};
use crate::kafka::KafkaError;
use crate::metrics::ShardMetrics;
use crate::sink::SinkError;

/// Errors of a run, by boundary.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Runtime(String),
}

impl RunError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Config(_) | RunError::Runtime(_) => false,
            RunError::Kafka(e) => e.is_retryable(),
            RunError::Codec(e) => e.is_retryable(),
            RunError::Sink(e) => e.is_retryable(),
        }
    }
}

/// Where one shard runs.
#[derive(Debug, Clone, Copy)]
pub struct ShardSpec {
    pub index: usize,
    pub core: usize,
    pub bridge_core: Option<usize>,
}

/// Control messages to a shard; never on the message path.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Stop fetching, finish in-flight work within the deadline, commit, exit.
    Stop,
    /// Exit now; uncommitted records are replayed by the next owner.
    Kill,
}

/// Switches of a run that are not configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Replace the database write with a no-op (benchmark: decode and map only).
    pub null_sink: bool,
    /// Exit once every assigned partition is at its end and nothing is in flight.
    pub drain: bool,
    /// How long the drained state must hold before a shard exits (lets late group members join).
    pub drain_idle_ms: u64,
}

/// The shard placement from config: `shards.cores` or every online core.
pub fn placement(config: &Config) -> Result<Vec<ShardSpec>, RunError> {
    let online: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cores = match &config.shards.cores {
        Some(c) => c.clone(),
        None => online.clone(),
    };
    if cores.is_empty() {
        return Err(RunError::Runtime(
            "no online cores found; set shards.cores".into(),
        ));
    }
    if let Some(bad) = cores.iter().find(|c| !online.contains(c)) {
        return Err(RunError::Config(ConfigError::Invalid(format!(
            "shards.cores lists core {bad}, which is not online here (online: {online:?})"
        ))));
    }
    Ok(cores
        .iter()
        .enumerate()
        .map(|(index, &core)| ShardSpec {
            index,
            core,
            bridge_core: Some(
                config
                    .shards
                    .bridge_cores
                    .as_ref()
                    .and_then(|b| b.get(index).copied())
                    .unwrap_or(core),
            ),
        })
        .collect())
}

/// One message per SIGINT or SIGTERM, for [`Running::supervise`] (first: graceful stop; second: exit).
pub fn stop_requests_on_signals() -> std::io::Result<Receiver<()>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::Builder::new()
        .name("shardline-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// A running set of shards.
pub struct Running {
    handles: Vec<Option<glommio::ExecutorJoinHandle<Result<(), RunError>>>>,
    controls: Vec<Sender<Control>>,
    pub registries: Vec<Registry>,
    pub specs: Vec<ShardSpec>,
}

/// What the shards of one process share for control: the start barrier (how many joined), the
/// drained flags of `--drain`, and the factory of custom steps. Never touched per message.
pub struct Siblings {
    pub joined: Arc<std::sync::atomic::AtomicUsize>,
    pub drained: Arc<Vec<std::sync::atomic::AtomicBool>>,
    pub custom: Option<ProcessorFactory>,
}

/// Makes a shard's custom processor steps (called once per shard, on the shard's thread).
pub type ProcessorFactory =
    Arc<dyn Fn(usize) -> Vec<Box<dyn crate::pipeline::Processor>> + Send + Sync>;

/// Starts one shard per placement entry. Call [`crate::check::check_live`] first.
pub fn start(config: Arc<Config>, opts: RunOptions) -> Result<Running, RunError> {
    start_with(config, opts, None)
}

/// As [`start`], with custom processor steps from `custom` in every shard's chain.
pub fn start_with(
    config: Arc<Config>,
    opts: RunOptions,
    custom: Option<ProcessorFactory>,
) -> Result<Running, RunError> {
    let specs = placement(&config)?;
    let mut handles = Vec::new();
    let mut controls = Vec::new();
    let mut registries = Vec::new();
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drained: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new(
        specs
            .iter()
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );
    for spec in &specs {
        let joined = joined.clone();
        let drained = drained.clone();
        let custom = custom.clone();
        let (tx, rx): (Sender<Control>, Receiver<Control>) = crossbeam_channel::unbounded();
        let metrics = ShardMetrics::new(spec.index);
        registries.push(metrics.registry.clone());
        let cfg = config.clone();
        let spec = *spec;
        let h = LocalExecutorBuilder::new(Placement::Fixed(spec.core))
            .name(&format!("shard{}", spec.index))
            .io_memory(config.shards.io_memory_bytes)
            .spawn(move || async move {
                let r = shard::run(
                    cfg,
                    spec,
                    Siblings {
                        joined,
                        drained,
                        custom,
                    },
                    metrics,
                    rx,
                    opts,
                )
                .await;
                if let Err(e) = &r {
                    tracing::error!(shard = spec.index, error = %e, "shard failed");
                }
                r
            })
            .map_err(|e| {
                RunError::Runtime(format!("shard {} on core {}: {e}", spec.index, spec.core))
            })?;
        handles.push(Some(h));
        controls.push(tx);
    }
    Ok(Running {
        handles,
        controls,
        registries,
        specs,
    })
}

impl Running {
    /// Asks every shard to stop gracefully.
    pub fn stop(&self) {
        for c in &self.controls {
            let _ = c.send(Control::Stop);
        }
    }

    /// Waits for every shard; the first error wins.
    pub fn wait(mut self) -> Result<(), RunError> {
        let mut first = Ok(());
        for h in self.handles.iter_mut() {
            if let Some(h) = h.take() {
                let r = h
                    .join()
                    .map_err(|e| RunError::Runtime(format!("shard thread: {e}")))
                    .and_then(|r| r);
                if first.is_ok() {
                    first = r;
                }
            }
        }
        first
    }

    /// Waits until every shard ended or `stop_requested` asks for a stop; a second request kills.
    pub fn supervise(self, stop_requests: &Receiver<()>) -> Result<(), RunError> {
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Result<(), RunError>>(1);
        let controls = self.controls.clone();
        std::thread::Builder::new()
            .name("shardline-join".into())
            .spawn(move || {
                let _ = done_tx.send(self.wait());
            })
            .map_err(|e| RunError::Runtime(format!("join thread: {e}")))?;
        let mut requests = 0;
        loop {
            crossbeam_channel::select! {
                recv(done_rx) -> r => return r.unwrap_or_else(|_| Err(RunError::Runtime("join thread vanished".into()))),
                recv(stop_requests) -> _ => {
                    requests += 1;
                    if requests == 1 {
                        tracing::info!("stop requested: finishing in-flight work (send again to exit at once)");
                        for c in &controls { let _ = c.send(Control::Stop); }
                    } else {
                        tracing::warn!("second stop request: exiting now; uncommitted records will be replayed");
                        return Err(RunError::Runtime("killed by a second stop request".into()));
                    }
                }
                default(Duration::from_secs(3600)) => {}
            }
        }
    }
}
