//! The capacity planner behind `shardline plan`: a bottleneck model. Its inputs are measured costs per
//! record of every resource on the path (shardline's CPU, the database's CPU per write, the broker's
//! CPU per record, the hosts' other CPU per record, bytes per record, write latency at a moderate
//! load); for a target rate it sizes
//! each resource, says which one binds, predicts the ceiling of the planned layout, and derives the
//! shard's in-flight window, write-rate cap and Kafka fetch settings.
//!
//! The model: a record costs `s` µs of shardline CPU, `d` µs of database CPU, `b` µs of broker CPU
//! and `o` µs of the hosts' other CPU (the kernel's network work in softirq context, charged to no
//! process; daemons; monitoring). A shard runs on one core, so a shard does at most `10⁶ / s`
//! records/s. Where the database and the broker run on separate machines, each is sized to the
//! target (`rate × cost / 10⁶` cores, plus headroom). Where they share the hosts (`colocated`, as on
//! a one-box test rig), the host's cores are one pool: a host does at most
//! `cores / (s + d + b + o) × 10⁶` records/s, and at most its shards' share. Leaving `o` out of the
//! pool is what made the bench's predictions err high by the share of the box it takes (3-5% there).
//!
//! Guarantee: pure functions of their inputs (unit-tested with worked examples); every output states
//! the formula it comes from in [`Plan::explain`]. Precondition: costs measured on the hardware being
//! planned for (a 2-core CI box's figures do not transfer to a 64-core host without a rerun), and the
//! database's cost measured against the real database (Cassandra's cost per write here validates the
//! model; ScyllaDB's is its own).

use serde::{Deserialize, Serialize};

/// Measured costs of one message.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Costs {
    /// shardline CPU per message on the full Kafka → Scylla path, in µs (bench: `cpu_us_per_msg`).
    pub cpu_us_per_msg: f64,
    /// Database CPU per message written, in µs (bench: the database process's CPU over the same
    /// window). None: unknown, the database is left out of the model (the plan warns).
    #[serde(default)]
    pub db_us_per_msg: Option<f64>,
    /// Kafka broker CPU per message consumed, in µs. None: unknown (the plan warns).
    #[serde(default)]
    pub broker_us_per_msg: Option<f64>,
    /// The hosts' CPU per message that none of the processes above is charged with, in µs (bench:
    /// the machine's busy CPU from `/proc/stat` less shardline's, the database's and the broker's
    /// over the same window): mostly the kernel's loopback or NIC work in softirq context, plus
    /// whatever else runs there. Only a colocated plan can charge it to a pool; on separate hosts
    /// it is split between them and shown as cores. Measured at full load, where the part that does
    /// not grow with the rate (idle JVM work, daemons) is spread thin: at a tenth of that rate it
    /// reads several times larger per record, so plan with it near the rate it was measured at.
    /// None: unknown, left out.
    #[serde(default)]
    pub other_us_per_msg: Option<f64>,
    /// Mean write latency in ms at a moderate load, not at saturation (bench: the 5,000 msg/s run):
    /// sizes the in-flight window by Little's law (records in flight = rate × mean time in flight).
    /// A latency measured at saturation is queueing; a p99 would size the window for the tail (on
    /// the bench box, JVM pauses), ten times what the database needs.
    pub write_mean_ms: f64,
    /// Average Kafka record size in bytes.
    pub msg_bytes: f64,
}

impl Costs {
    /// CPU µs per message of every modelled resource together.
    pub fn total_us(&self) -> f64 {
        self.cpu_us_per_msg
            + self.db_us_per_msg.unwrap_or(0.0)
            + self.broker_us_per_msg.unwrap_or(0.0)
            + self.other_us_per_msg.unwrap_or(0.0)
    }
}

/// What the cluster must do.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Target {
    pub msgs_per_s: f64,
    /// Usable cores per host (for shards; with `colocated`, for everything on the host).
    pub cores_per_host: u32,
    /// Fraction of each resource kept free for spikes and catch-up, e.g. 0.3.
    pub headroom: f64,
    /// Partitions the topic has now, if fixed.
    pub partitions: Option<u32>,
    /// The database and the broker run on the same hosts as shardline and share their cores.
    #[serde(default)]
    pub colocated: bool,
    /// Plan exactly this many shards, on the fewest hosts that hold them (to predict a given
    /// layout), instead of sizing from the rate.
    #[serde(default)]
    pub shards: Option<u32>,
}

/// The resource that limits the planned layout.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bottleneck {
    /// Each shard's core (one core per shard): more shards (and partitions) move it.
    ShardCores,
    /// The hosts' cores, shared by shardline, the database, the broker and the hosts' other work
    /// (colocated): more hosts, or a cheaper cost per record of the largest consumer, move it.
    HostCores,
}

/// The sizing decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub shards: u32,
    pub hosts: u32,
    pub shards_per_host: u32,
    pub partitions: u32,
    pub partitions_per_shard: f64,
    pub msgs_per_s_per_shard: f64,
    /// Cores each resource needs for the target, headroom included.
    pub shardline_cores: f64,
    pub database_cores: Option<f64>,
    pub broker_cores: Option<f64>,
    /// The hosts' other CPU (kernel network work and the like), in cores, headroom included.
    pub other_cores: Option<f64>,
    /// The most the planned layout can do, at full CPU, and what limits it.
    pub ceiling_msgs_per_s: f64,
    pub bottleneck: Bottleneck,
    pub max_in_flight_per_shard: u32,
    /// `scylla.max_writes_per_s`: the per-shard rate with the headroom on top, so catch-up after an
    /// outage runs at most that much faster than the steady state.
    pub max_writes_per_s: u32,
    pub fetch_min_bytes: u64,
    pub queued_max_messages_kbytes: u64,
    pub scylla_writes_per_s: f64,
    pub scylla_write_mib_per_s: f64,
    pub warnings: Vec<String>,
}

/// One shard's capacity in msg/s at full CPU.
pub fn shard_capacity(c: &Costs) -> f64 {
    1e6 / c.cpu_us_per_msg.max(1e-3)
}

/// The most `shards` shards on `hosts` hosts do, and what limits them (see the module docs). Shards
/// spread as evenly as they go; with an uneven spread the pooled bound is the hosts' total.
pub fn ceiling(c: &Costs, t: &Target, hosts: u32, shards: u32) -> (f64, Bottleneck) {
    let by_shards = f64::from(shards) * shard_capacity(c);
    let pool = f64::from(hosts) * f64::from(t.cores_per_host) * 1e6 / c.total_us().max(1e-3);
    if t.colocated && pool < by_shards {
        (pool, Bottleneck::HostCores)
    } else {
        (by_shards, Bottleneck::ShardCores)
    }
}

/// Refuses inputs that cannot be planned for.
fn validate(c: &Costs, t: &Target) -> Result<(), String> {
    if !(0.0..0.95).contains(&t.headroom) {
        return Err(format!("headroom {} must be in [0, 0.95)", t.headroom));
    }
    // `!(x > 0.0)` refuses NaN too (the command line parses "NaN" and "inf").
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if t.cores_per_host == 0 || !positive(t.msgs_per_s) || !positive(c.cpu_us_per_msg) {
        return Err(
            "cores_per_host, msgs_per_s and cpu_us_per_msg must be positive and finite".into(),
        );
    }
    if !positive(c.write_mean_ms) || !positive(c.msg_bytes) {
        return Err("write_mean_ms and msg_bytes must be positive and finite".into());
    }
    for (name, us) in [
        ("db_us_per_msg", c.db_us_per_msg),
        ("broker_us_per_msg", c.broker_us_per_msg),
        ("other_us_per_msg", c.other_us_per_msg),
    ] {
        if us.is_some_and(|us| !(us >= 0.0 && us.is_finite())) {
            return Err(format!("{name} must be a finite cost of at least 0"));
        }
    }
    if t.shards == Some(0) {
        return Err("shards must be at least 1".into());
    }
    if t.shards.is_some_and(|n| n > MAX_SHARDS) {
        return Err(format!("shards must be at most {MAX_SHARDS}"));
    }
    Ok(())
}

/// The most shards (and cores for any one resource) a plan sizes: far beyond any deployment, and far
/// enough below `u32::MAX` that the layout's products cannot overflow. Larger means the costs or the
/// rate are wrong (a cost in ns read as µs, a rate in bytes).
pub const MAX_SHARDS: u32 = 1_000_000;

/// Refuses a plan whose sizes would not fit [`MAX_SHARDS`]: checked before they are counted in `u32`.
fn within_bounds(cores: &[(&str, f64)]) -> Result<(), String> {
    match cores.iter().find(|(_, n)| *n > f64::from(MAX_SHARDS)) {
        Some((name, n)) => Err(format!(
            "{name} would need {n:.3e} cores, more than {MAX_SHARDS}: check the costs per record and \
             the rate"
        )),
        None => Ok(()),
    }
}

/// (shards, hosts, shards per host): a given layout as given, on the fewest hosts that hold it;
/// otherwise enough shards for `shardline_cores`, on enough hosts for everything they carry.
fn layout(
    c: &Costs,
    t: &Target,
    shardline_cores: f64,
    cores_for: impl Fn(f64) -> f64,
) -> (u32, u32, u32) {
    if let Some(n) = t.shards {
        let hosts = n.div_ceil(t.cores_per_host);
        return (n, hosts, n.div_ceil(hosts));
    }
    let needed = shardline_cores.ceil().max(1.0) as u32;
    // Colocated, a host's cores also carry its share of the database, the broker and the hosts'
    // other work.
    let pooled = if t.colocated {
        (cores_for(c.total_us()) / f64::from(t.cores_per_host)).ceil() as u32
    } else {
        0
    };
    let hosts = needed.div_ceil(t.cores_per_host).max(pooled).max(1);
    // Spread shards evenly over hosts.
    let per_host = needed.div_ceil(hosts);
    (per_host * hosts, hosts, per_host)
}

/// What the model leaves out or cannot reach: unknown costs, a target above the layout's ceiling, a
/// colocated host with a shard pinned on every core.
fn model_warnings(
    c: &Costs,
    t: &Target,
    shards_per_host: u32,
    ceiling_msgs_per_s: f64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let missing: Vec<&str> = [
        ("database", c.db_us_per_msg),
        ("broker", c.broker_us_per_msg),
    ]
    .iter()
    .filter(|(_, us)| us.is_none())
    .map(|(n, _)| *n)
    .collect();
    if !missing.is_empty() {
        warnings.push(format!(
            "the {} cost per record is unknown and left out of the model (measure it with \
             scripts/bench.sh, or give --db-us-per-msg / --broker-us-per-msg)",
            missing.join(" and the ")
        ));
    }
    if t.msgs_per_s > ceiling_msgs_per_s {
        warnings.push(format!(
            "the target {:.0} msg/s is above this layout's ceiling of {ceiling_msgs_per_s:.0} msg/s{}",
            t.msgs_per_s,
            if t.shards.is_some() {
                " (leave out --shards to size the layout for the target)"
            } else {
                ""
            }
        ));
    }
    if t.colocated && t.cores_per_host > 1 && shards_per_host >= t.cores_per_host {
        // Measured on the bench box (`preempted/record` in scripts/bench.sh's CPU table): with one of
        // its two cores free of shards, the database's and the broker's threads had a core to run on;
        // with a shard pinned on each core they could preempt the shards far more often per record
        // (unbatched, in some runs), and every cost per record rose with it. Costs measured with a
        // core free of shards then need not transfer. (With one core per host there is no other
        // layout to advise.)
        warnings.push(format!(
            "this layout pins a shard on every core of a host ({shards_per_host} on {}) and the \
             database and the broker run there too: they preempt the shards, so costs per record \
             measured with a core free of shards need not hold (scripts/bench.sh's report counts \
             preempted/record); plan from costs measured at this layout, keep batching on, \
             leave a core without a shard, or let the kernel move shards (shards.affinity = \
             \"none\")",
            t.cores_per_host
        ));
    }
    warnings
}

/// Partitions: at least one per shard, and a multiple of the shard count so each gets the same
/// share; a given count that misses either is kept, with a warning.
fn partitions_for(t: &Target, shards: u32, warnings: &mut Vec<String>) -> u32 {
    let partitions = match t.partitions {
        Some(p) if p >= shards => p,
        Some(p) => {
            warnings.push(format!(
                "the topic has {p} partitions for {shards} shards: {} shards would idle; raise partitions to {}",
                shards - p,
                shards
            ));
            p
        }
        None => shards * 2,
    };
    if partitions % shards != 0 && partitions >= shards {
        warnings.push(format!(
            "{partitions} partitions over {shards} shards is uneven: some shards get one more partition"
        ));
    }
    partitions
}

/// Computes the plan. Errors are inputs that cannot be planned for.
pub fn plan(c: &Costs, t: &Target) -> Result<Plan, String> {
    validate(c, t)?;
    let spare = 1.0 - t.headroom;
    let cores_for = |us: f64| t.msgs_per_s * us / 1e6 / spare;
    let shardline_cores = cores_for(c.cpu_us_per_msg);
    within_bounds(&[
        ("shardline", shardline_cores),
        ("everything modelled", cores_for(c.total_us())),
    ])?;
    let (shards, hosts, shards_per_host) = layout(c, t, shardline_cores, cores_for);
    let (ceiling_msgs_per_s, bottleneck) = ceiling(c, t, hosts, shards);
    let mut warnings = model_warnings(c, t, shards_per_host, ceiling_msgs_per_s);
    let partitions = partitions_for(t, shards, &mut warnings);
    let per_shard = t.msgs_per_s / f64::from(shards);
    // Little's law at the moderate-load mean write latency, doubled so a latency spike does not stall
    // fetching; never for more than the layout can absorb (a larger window only queues in the database).
    let absorbed = per_shard.min(ceiling_msgs_per_s / f64::from(shards));
    let in_flight = (absorbed * c.write_mean_ms / 1000.0 * 2.0)
        .ceil()
        .clamp(16.0, 65_536.0) as u32;
    let per_partition_bytes_s = t.msgs_per_s * c.msg_bytes / f64::from(partitions.max(1));
    // Fetch about 10 ms of a partition's data per request, at least 1 byte (latency) and at most 1 MiB.
    let fetch_min_bytes = (per_partition_bytes_s * 0.010).clamp(1.0, 1_048_576.0) as u64;
    // Keep one second of the shard's input prefetched.
    let queued_kb = ((per_shard * c.msg_bytes) / 1024.0)
        .ceil()
        .clamp(1024.0, 2_097_151.0) as u64;
    Ok(Plan {
        shards,
        hosts,
        shards_per_host,
        partitions,
        partitions_per_shard: f64::from(partitions) / f64::from(shards),
        msgs_per_s_per_shard: per_shard,
        shardline_cores,
        database_cores: c.db_us_per_msg.map(cores_for),
        broker_cores: c.broker_us_per_msg.map(cores_for),
        other_cores: c.other_us_per_msg.map(cores_for),
        ceiling_msgs_per_s,
        bottleneck,
        max_in_flight_per_shard: in_flight,
        max_writes_per_s: (per_shard * (1.0 + t.headroom))
            .ceil()
            .min(f64::from(u32::MAX)) as u32,
        fetch_min_bytes,
        queued_max_messages_kbytes: queued_kb,
        scylla_writes_per_s: t.msgs_per_s,
        scylla_write_mib_per_s: t.msgs_per_s * c.msg_bytes / (1024.0 * 1024.0),
        warnings,
    })
}

impl Plan {
    /// A human table with the formula behind each line.
    pub fn explain(&self, c: &Costs, t: &Target) -> String {
        let mut out = Vec::new();
        self.explain_cores(c, t, &mut out);
        self.explain_layout(c, t, &mut out);
        self.explain_settings(c, t, &mut out);
        out.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        out.iter().map(|l| format!("{l}\n")).collect()
    }

    /// A shard's capacity and each resource's cores for the target, with their formulas.
    fn explain_cores(&self, c: &Costs, t: &Target, out: &mut Vec<String>) {
        let cap = shard_capacity(c);
        let spare = 1.0 - t.headroom;
        out.push(format!(
            "shard capacity        {cap:>12.0} msg/s   = 1e6 / {:.3} µs shardline CPU per message",
            c.cpu_us_per_msg
        ));
        out.push(format!(
            "shardline cores       {:>12.2}         = {:.0} msg/s × {:.3} µs / 1e6 / (1 − {:.2})",
            self.shardline_cores, t.msgs_per_s, c.cpu_us_per_msg, t.headroom
        ));
        for (name, cores, us) in [
            ("database cores", self.database_cores, c.db_us_per_msg),
            ("broker cores", self.broker_cores, c.broker_us_per_msg),
            ("other host cores", self.other_cores, c.other_us_per_msg),
        ] {
            match (cores, us) {
                (Some(n), Some(us)) => out.push(format!(
                    "{name:<22}{n:>12.2}         = {:.0} msg/s × {us:.3} µs / 1e6 / {spare:.2}",
                    t.msgs_per_s
                )),
                _ => out.push(format!("{name:<22}{:>12}         (cost unknown)", "?")),
            }
            if name == "database cores" && cores.is_some() {
                out.push(format!(
                    "{:<22}{:>12}         (ScyllaDB's µs per write must be measured against the real \
                     cluster: a Cassandra figure only validates this model)",
                    "", ""
                ));
            }
        }
    }

    /// Shards, hosts, the ceiling, what binds it and the largest cost.
    fn explain_layout(&self, c: &Costs, t: &Target, out: &mut Vec<String>) {
        let cap = shard_capacity(c);
        out.push(format!(
            "shards                {:>12}         = {}",
            self.shards,
            match t.shards {
                Some(n) => format!("{n} (given)"),
                None => "ceil(shardline cores), rounded to fill hosts".into(),
            }
        ));
        let hosts = if t.shards.is_some() {
            format!(
                "= ceil(shards / {} cores per host): the given layout",
                t.cores_per_host
            )
        } else if t.colocated {
            format!(
                "= max(ceil(shards / {c}), ceil(cores for {:.3} µs per message of everything modelled / {c})): colocated",
                c.total_us(),
                c = t.cores_per_host
            )
        } else {
            format!("= ceil(shards / {} cores per host)", t.cores_per_host)
        };
        out.push(format!(
            "hosts                 {:>12}         {hosts}",
            self.hosts
        ));
        out.push(format!(
            "shards per host       {:>12}         = ceil(shards / hosts)",
            self.shards_per_host
        ));
        let formula = match self.bottleneck {
            Bottleneck::ShardCores => format!(
                "= shards × {cap:.0}: one core per shard binds; more shards (and partitions) \
                 move it"
            ),
            Bottleneck::HostCores => format!(
                "= hosts × {} cores × 1e6 / {:.3} µs (shardline + database + broker + other): the \
                 shared cores bind; more hosts, or a cheaper record for its largest consumer, move it",
                t.cores_per_host,
                c.total_us()
            ),
        };
        out.push(format!(
            "ceiling               {:>12.0} msg/s   {formula}",
            self.ceiling_msgs_per_s
        ));
        if let Some((name, us)) = [
            ("shardline", Some(c.cpu_us_per_msg)),
            ("the database", c.db_us_per_msg),
            ("the broker", c.broker_us_per_msg),
            ("the hosts' other work", c.other_us_per_msg),
        ]
        .into_iter()
        .filter_map(|(n, us)| Some((n, us?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        {
            out.push(format!(
                "largest cost          {name}: {us:.3} µs of {:.3} µs per message ({:.0}%)",
                c.total_us(),
                us / c.total_us().max(1e-9) * 100.0
            ));
        }
    }

    /// Partitions, the in-flight window, the fetch settings and the writes.
    fn explain_settings(&self, c: &Costs, t: &Target, out: &mut Vec<String>) {
        out.push(format!(
            "partitions            {:>12}         = {} ({:.2} per shard)",
            self.partitions,
            match t.partitions {
                Some(_) => "the topic's (given)",
                None => "2 × shards (no --partitions given)",
            },
            self.partitions_per_shard
        ));
        out.push(format!(
            "msg/s per shard       {:>12.0}         = {:.0} msg/s / shards",
            self.msgs_per_s_per_shard, t.msgs_per_s
        ));
        out.push(format!(
            "in-flight per shard   {:>12}         = 2 × min(msg/s per shard, ceiling / shards) × mean write {:.2} ms at moderate load, within [16, 65536]",
            self.max_in_flight_per_shard, c.write_mean_ms
        ));
        out.push(format!(
            "fetch.min.bytes       {:>12}         ≈ 10 ms of one partition",
            self.fetch_min_bytes
        ));
        out.push(format!(
            "queued.max.messages.kbytes {:>7}         ≈ 1 s of one shard's input",
            self.queued_max_messages_kbytes
        ));
        out.push(format!(
            "Scylla writes         {:>12.0} /s      = the target rate; {:.1} MiB/s of values (× {:.0} B per message)",
            self.scylla_writes_per_s, self.scylla_write_mib_per_s, c.msg_bytes
        ));
    }

    /// A config fragment for each host.
    pub fn config_fragment(&self) -> String {
        let cores: Vec<String> = (0..self.shards_per_host).map(|c| c.to_string()).collect();
        format!(
            "# shardline plan: {} hosts × {} shards\n[scylla]\nmax_in_flight_per_shard = {}\nmax_writes_per_s = {}\n\n[shards]\ncores = [{}]\n\n[kafka.librdkafka]\n\"fetch.min.bytes\" = \"{}\"\n\"fetch.wait.max.ms\" = \"10\"\n\"queued.max.messages.kbytes\" = \"{}\"\n",
            self.hosts,
            self.shards_per_host,
            self.max_in_flight_per_shard,
            self.max_writes_per_s,
            cores.join(", "),
            self.fetch_min_bytes,
            self.queued_max_messages_kbytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            cpu_us_per_msg: 5.0,
            db_us_per_msg: Some(20.0),
            broker_us_per_msg: Some(2.0),
            other_us_per_msg: None,
            write_mean_ms: 4.0,
            msg_bytes: 240.0,
        }
    }

    /// This project's bench box: shardline 4.2 µs, Cassandra 18 µs, Kafka 2 µs per record.
    fn bench_box() -> Costs {
        Costs {
            cpu_us_per_msg: 4.2,
            db_us_per_msg: Some(18.0),
            broker_us_per_msg: Some(2.0),
            other_us_per_msg: None,
            write_mean_ms: 2.0,
            msg_bytes: 240.0,
        }
    }

    fn target(msgs_per_s: f64, cores_per_host: u32, headroom: f64) -> Target {
        Target {
            msgs_per_s,
            cores_per_host,
            headroom,
            partitions: None,
            colocated: false,
            shards: None,
        }
    }

    fn assert_warns(p: &Plan, needle: &str) {
        assert!(
            p.warnings.iter().any(|w| w.contains(needle)),
            "no warning with {needle:?}: {:?}",
            p.warnings
        );
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn worked_example_motivating_case() {
        // 200k msg/s at 5 µs per message: 1.43 shardline cores with 30% headroom, so 2 shards; 16 cores
        // per host makes that 1 host. The database (20 µs) and the broker (2 µs) run elsewhere.
        let t = Target {
            partitions: Some(20),
            ..target(200_000.0, 16, 0.3)
        };
        let p = plan(&costs(), &t).expect("plannable");
        assert_eq!(
            (p.shards, p.hosts, p.shards_per_host, p.partitions),
            (2, 1, 2, 20)
        );
        assert_eq!(p.msgs_per_s_per_shard, 100_000.0);
        assert!(close(p.shardline_cores, 200_000.0 * 5.0 / 1e6 / 0.7));
        // 200k × 20 µs = 4 cores of database, 5.71 with the headroom; broker 0.4 → 0.57.
        assert!(close(p.database_cores.expect("known"), 4.0 / 0.7));
        assert!(close(p.broker_cores.expect("known"), 0.4 / 0.7));
        // Two shards of 200k msg/s each: the shard cores bind at 400k.
        assert_eq!(p.bottleneck, Bottleneck::ShardCores);
        assert!(close(p.ceiling_msgs_per_s, 400_000.0));
        // Catch-up cap: the per-shard rate plus the 30% headroom.
        assert_eq!(p.max_writes_per_s, 130_000);
        assert!(p.config_fragment().contains("max_writes_per_s = 130000"));
        // 2 × 100k/s × 4 ms = 800 writes in flight per shard.
        assert_eq!(p.max_in_flight_per_shard, 800);
        // 200k × 240 B / 20 partitions = 2.4 MB/s per partition; 10 ms of it = 24000 B.
        assert_eq!(p.fetch_min_bytes, 24_000);
        // One second of the shard's input prefetched: 100k/s × 240 B / 1024 = 23,437.5 → 23,438 KiB
        // (the total rate would give twice that).
        assert_eq!(p.queued_max_messages_kbytes, 23_438);
        assert!(p
            .config_fragment()
            .contains("\"queued.max.messages.kbytes\" = \"23438\""));
        assert!(close(p.partitions_per_shard, 10.0));
        // 200k × 240 B = 45.78 MiB/s written.
        assert!(close(
            p.scylla_write_mib_per_s,
            200_000.0 * 240.0 / 1_048_576.0
        ));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(p
            .config_fragment()
            .contains("max_in_flight_per_shard = 800"));
        let text = p.explain(&costs(), &t);
        assert!(
            text.contains("largest cost          the database"),
            "{text}"
        );
        // Issue 12: the Cassandra figure validates the model; ScyllaDB's must be measured.
        assert!(
            text.contains("ScyllaDB's µs per write must be measured against the real cluster"),
            "{text}"
        );
    }

    #[test]
    fn worked_example_one_colocated_box() {
        // This project's bench box: 2 cores shared by shardline (4.2 µs), Cassandra (18 µs) and Kafka
        // (2 µs). 24.2 µs per record over 2 cores: 82,645 msg/s, whatever the shard count, since one
        // shard alone could do 238k.
        let c = bench_box();
        for shards in [1, 2] {
            let t = Target {
                colocated: true,
                shards: Some(shards),
                ..target(1.0, 2, 0.0)
            };
            let p = plan(&c, &t).expect("plannable");
            assert_eq!((p.shards, p.hosts), (shards, 1));
            assert_eq!(p.bottleneck, Bottleneck::HostCores);
            assert!(
                close(p.ceiling_msgs_per_s, 2e6 / 24.2),
                "{}",
                p.ceiling_msgs_per_s
            );
        }
        // A fast database makes the one shard bind: 2e6 / (4.2 + 0.5 + 0.1) = 416k > 238k.
        let cheap = Costs {
            db_us_per_msg: Some(0.5),
            broker_us_per_msg: Some(0.1),
            ..c.clone()
        };
        let t = Target {
            colocated: true,
            shards: Some(1),
            ..target(1.0, 2, 0.0)
        };
        let p = plan(&cheap, &t).expect("plannable");
        assert_eq!(p.bottleneck, Bottleneck::ShardCores);
        assert!(close(p.ceiling_msgs_per_s, 1e6 / 4.2));
    }

    #[test]
    fn a_colocated_host_with_a_shard_on_every_core_is_warned_about() {
        let every_core = |colocated: bool, shards: u32| {
            let t = Target {
                colocated,
                shards: Some(shards),
                ..target(1.0, 2, 0.0)
            };
            plan(&bench_box(), &t).expect("plannable")
        };
        assert_warns(&every_core(true, 2), "they preempt the shards");
        assert_warns(&every_core(true, 4), "(2 on 2)");
        let one_core = Target {
            colocated: true,
            shards: Some(1),
            ..target(1.0, 1, 0.0)
        };
        let one_core = plan(&bench_box(), &one_core).expect("plannable");
        for quiet in [every_core(true, 1), every_core(false, 2), one_core] {
            assert!(
                !quiet.warnings.iter().any(|w| w.contains("preempt")),
                "{:?}",
                quiet.warnings
            );
        }
    }

    #[test]
    fn worked_example_the_hosts_other_cpu_is_in_the_pool() {
        // A bench run of 2026-11-27 (`ONLY=max MAX_ROUNDS=3 scripts/bench.sh`): the median 1-shard batched
        // run costs shardline 7.28, Cassandra 37.89, Kafka 0.43 µs per record, and the box's other
        // busy CPU 1.47 µs. 2 shards on the 2 cores: 2e6 / 47.07 = 42,490 msg/s (measured 40,123:
        // +5.9%); without the other CPU, 2e6 / 45.60 = 43,860 (+9.3%).
        let c = Costs {
            cpu_us_per_msg: 7.28,
            db_us_per_msg: Some(37.89),
            broker_us_per_msg: Some(0.43),
            other_us_per_msg: Some(1.47),
            write_mean_ms: 2.0,
            msg_bytes: 240.0,
        };
        let t = Target {
            colocated: true,
            shards: Some(2),
            ..target(40_000.0, 2, 0.0)
        };
        let p = plan(&c, &t).expect("plannable");
        assert_eq!(p.bottleneck, Bottleneck::HostCores);
        assert!(
            close(p.ceiling_msgs_per_s, 2e6 / 47.07),
            "{}",
            p.ceiling_msgs_per_s
        );
        let without = Costs {
            other_us_per_msg: None,
            ..c.clone()
        };
        let q = plan(&without, &t).expect("plannable");
        assert!(
            close(q.ceiling_msgs_per_s, 2e6 / 45.60),
            "{}",
            q.ceiling_msgs_per_s
        );
        // 40k msg/s × 1.47 µs = 0.0588 cores of the hosts' other work.
        assert!(close(p.other_cores.expect("known"), 0.0588));
        assert_eq!(q.other_cores, None);
        let text = p.explain(&c, &t);
        assert!(text.contains("other host cores"), "{text}");
        assert!(text.contains("broker + other"), "{text}");
        // On separate hosts the other CPU is sized, never a pool: one shard's core binds.
        let apart = Target {
            colocated: false,
            ..t
        };
        let r = plan(&c, &apart).expect("plannable");
        assert_eq!(r.bottleneck, Bottleneck::ShardCores);
        assert!(close(r.ceiling_msgs_per_s, 2.0 * 1e6 / 7.28));
    }

    #[test]
    fn colocated_hosts_carry_the_database_and_the_broker_too() {
        // 200k msg/s × 24.2 µs = 4.84 cores of work, 6.91 with 30% headroom: 4 hosts of 2 cores,
        // though shardline alone would need 2 shards (1 host).
        let c = bench_box();
        let t = Target {
            colocated: true,
            ..target(200_000.0, 2, 0.3)
        };
        let p = plan(&c, &t).expect("plannable");
        assert_eq!((p.hosts, p.shards_per_host, p.shards), (4, 1, 4));
        assert_eq!(p.bottleneck, Bottleneck::HostCores);
        assert!(close(p.ceiling_msgs_per_s, 4.0 * 2e6 / 24.2));
        assert!(
            p.ceiling_msgs_per_s >= t.msgs_per_s,
            "the plan carries its target"
        );
    }

    #[test]
    fn the_in_flight_window_stops_at_what_the_layout_absorbs() {
        // One shard of 4.2 µs (238,095 msg/s) asked for 500k msg/s: the plan warns, and the window is
        // 2 × 238,095 × 2 ms = 953 records, not 2 × 500k × 2 ms = 2000 that would only queue.
        let c = Costs {
            cpu_us_per_msg: 4.2,
            write_mean_ms: 2.0,
            ..costs()
        };
        let t = Target {
            shards: Some(1),
            ..target(500_000.0, 1, 0.0)
        };
        let p = plan(&c, &t).expect("plannable");
        assert_eq!((p.shards, p.hosts), (1, 1));
        assert!(close(p.ceiling_msgs_per_s, 1e6 / 4.2));
        assert_warns(&p, "above this layout's ceiling");
        assert_eq!(p.max_in_flight_per_shard, 953);
    }

    // Fails on the old code: NaN passed the checks (and gave `max_in_flight_per_shard = 0`), a cost
    // of 1e12 µs panicked on a shard count past u32 (debug) or divided by zero shards (release).
    #[test]
    fn absurd_or_non_finite_inputs_are_refused_not_planned() {
        for cpu in [f64::NAN, f64::INFINITY, 1e12] {
            let c = Costs {
                cpu_us_per_msg: cpu,
                ..costs()
            };
            assert!(plan(&c, &target(200_000.0, 8, 0.3)).is_err(), "{cpu}");
        }
        for rate in [f64::NAN, f64::INFINITY, 1e15] {
            assert!(plan(&costs(), &target(rate, 8, 0.3)).is_err(), "{rate}");
        }
        for bad in [0.0, -3.0, f64::NAN] {
            let c = Costs {
                write_mean_ms: bad,
                ..costs()
            };
            assert!(plan(&c, &target(1000.0, 8, 0.3)).is_err(), "write {bad}");
            let c = Costs {
                msg_bytes: bad,
                ..costs()
            };
            assert!(plan(&c, &target(1000.0, 8, 0.3)).is_err(), "bytes {bad}");
        }
        let t = Target {
            shards: Some(3_000_000_000),
            ..target(1000.0, 8, 0.3)
        };
        assert!(plan(&costs(), &t).is_err());
        // The largest plan allowed still counts without overflow.
        let c = Costs {
            cpu_us_per_msg: 1.0,
            db_us_per_msg: None,
            broker_us_per_msg: None,
            ..costs()
        };
        let p = plan(&c, &target(0.69e12, 4, 0.3)).expect("plannable");
        assert!(p.shards <= MAX_SHARDS + 4, "{}", p.shards);
    }

    #[test]
    fn a_given_layout_is_planned_as_given() {
        // 3 shards on 2-core hosts: 2 hosts, still 3 shards (not rounded up to 4).
        let p = plan(
            &costs(),
            &Target {
                shards: Some(3),
                ..target(1000.0, 2, 0.3)
            },
        )
        .expect("plannable");
        assert_eq!((p.shards, p.hosts, p.shards_per_host), (3, 2, 2));
        assert!(close(p.ceiling_msgs_per_s, 3.0 * 200_000.0));
        // The printed formula gives the printed value: 3 × 200000, not hosts × per host × 200000.
        let given = Target {
            shards: Some(3),
            ..target(1000.0, 2, 0.3)
        };
        let text = p.explain(&costs(), &given);
        assert!(text.contains("600000 msg/s   = shards × 200000"), "{text}");
        assert!(
            text.contains("3 (given)") && !text.contains("(given), rounded"),
            "{text}"
        );
        // One colocated box asked for more than it can do stays one box, and says so.
        let c = bench_box();
        let t = Target {
            colocated: true,
            shards: Some(1),
            ..target(200_000.0, 2, 0.3)
        };
        let p = plan(&c, &t).expect("plannable");
        assert_eq!((p.shards, p.hosts), (1, 1));
        assert!(close(p.ceiling_msgs_per_s, 2e6 / 24.2));
        assert_warns(&p, "leave out --shards");
    }

    #[test]
    fn unknown_database_and_broker_costs_are_said() {
        let c = Costs {
            db_us_per_msg: None,
            broker_us_per_msg: None,
            ..costs()
        };
        let p = plan(&c, &target(10_000.0, 4, 0.3)).expect("plannable");
        assert_warns(&p, "unknown");
        assert_eq!((p.database_cores, p.broker_cores), (None, None));
        assert!(p
            .explain(&c, &target(10_000.0, 4, 0.3))
            .contains("(cost unknown)"));
    }

    #[test]
    fn worked_example_many_hosts_and_too_few_partitions() {
        // 2M msg/s at 20 µs: 50k msg/s per shard flat out, 25k at 50% headroom → 80 shards;
        // 12 cores per host → 7 hosts; rounded to fill them evenly: 7 × 12 = 84 shards.
        let c = Costs {
            cpu_us_per_msg: 20.0,
            write_mean_ms: 10.0,
            msg_bytes: 1000.0,
            ..costs()
        };
        let t = Target {
            partitions: Some(64),
            ..target(2_000_000.0, 12, 0.5)
        };
        let p = plan(&c, &t).expect("plannable");
        assert_eq!((p.shards, p.hosts, p.shards_per_host), (84, 7, 12));
        assert_warns(&p, "20 shards would idle");
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(plan(&costs(), &target(1000.0, 4, 1.0)).is_err());
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let c = Costs {
                other_us_per_msg: Some(bad),
                ..costs()
            };
            let e = plan(&c, &target(1000.0, 4, 0.3)).expect_err("a negative or unknown cost");
            assert!(e.contains("other_us_per_msg"), "{e}");
        }
        let zero = Target {
            shards: Some(0),
            ..target(1000.0, 4, 0.3)
        };
        assert!(plan(&costs(), &zero).is_err());
    }
}
