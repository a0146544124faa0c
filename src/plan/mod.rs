//! The capacity planner behind `shardline plan`: from measured per-message costs (a bench report or
//! explicit figures) and a target, the shards, hosts, partitions, in-flight budget, Kafka fetch settings
//! and the write load on Scylla.
//!
//! Guarantee: pure functions of their inputs (unit-tested with worked examples); every output states
//! the formula it comes from in [`Plan::explain`]. Precondition: costs measured on the hardware being
//! planned for (a 2-core CI box's figures do not transfer to a 64-core host without a rerun).

use serde::{Deserialize, Serialize};

/// Measured costs of one message.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Costs {
    /// shardline CPU per message on the full Kafka → Scylla path, in µs (bench: `cpu_us_per_msg`).
    pub cpu_us_per_msg: f64,
    /// Write latency p99 in ms (bench: `write_p99_ms`): sizes the in-flight budget (Little's law).
    pub write_p99_ms: f64,
    /// Average Kafka record size in bytes.
    pub msg_bytes: f64,
}

/// What the cluster must do.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Target {
    pub msgs_per_s: f64,
    /// Usable cores per host for shards (leave some for IRQs, librdkafka and the tokio bridges).
    pub cores_per_host: u32,
    /// Fraction of each shard's CPU kept free for spikes and catch-up, e.g. 0.3.
    pub headroom: f64,
    /// Partitions the topic has now, if fixed.
    pub partitions: Option<u32>,
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

/// Computes the plan. Errors are inputs that cannot be planned for.
pub fn plan(c: &Costs, t: &Target) -> Result<Plan, String> {
    if !(0.0..0.95).contains(&t.headroom) {
        return Err(format!("headroom {} must be in [0, 0.95)", t.headroom));
    }
    if t.cores_per_host == 0 || t.msgs_per_s <= 0.0 || c.cpu_us_per_msg <= 0.0 {
        return Err("cores_per_host, msgs_per_s and cpu_us_per_msg must be positive".into());
    }
    let usable = shard_capacity(c) * (1.0 - t.headroom);
    let shards = (t.msgs_per_s / usable).ceil().max(1.0) as u32;
    let hosts = shards.div_ceil(t.cores_per_host);
    // Spread shards evenly over hosts.
    let shards_per_host = shards.div_ceil(hosts);
    let shards = shards_per_host * hosts;
    let mut warnings = Vec::new();
    // Partitions: at least one per shard, and a multiple of the shard count so each gets the same share.
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
    let per_shard = t.msgs_per_s / f64::from(shards);
    // Little's law at the p99 write latency, doubled so a latency spike does not stall fetching.
    let in_flight = (per_shard * c.write_p99_ms / 1000.0 * 2.0)
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
        let mut s = String::new();
        let cap = shard_capacity(c);
        s.push_str(&format!(
            "shard capacity        {cap:>12.0} msg/s   = 1e6 / {:.3} µs per message\n",
            c.cpu_us_per_msg
        ));
        s.push_str(&format!(
            "shards                {:>12}         = ceil({:.0} / ({cap:.0} × (1 − {:.2}))), rounded to fill hosts\n",
            self.shards, t.msgs_per_s, t.headroom
        ));
        s.push_str(&format!(
            "hosts                 {:>12}         = ceil(shards / {} cores per host)\n",
            self.hosts, t.cores_per_host
        ));
        s.push_str(&format!(
            "shards per host       {:>12}\n",
            self.shards_per_host
        ));
        s.push_str(&format!(
            "partitions            {:>12}         ({:.2} per shard)\n",
            self.partitions, self.partitions_per_shard
        ));
        s.push_str(&format!(
            "msg/s per shard       {:>12.0}\n",
            self.msgs_per_s_per_shard
        ));
        s.push_str(&format!(
            "in-flight per shard   {:>12}         = 2 × msg/s per shard × write p99 {:.2} ms\n",
            self.max_in_flight_per_shard, c.write_p99_ms
        ));
        s.push_str(&format!(
            "fetch.min.bytes       {:>12}         ≈ 10 ms of one partition\n",
            self.fetch_min_bytes
        ));
        s.push_str(&format!(
            "queued.max.messages.kbytes {:>7}         ≈ 1 s of one shard's input\n",
            self.queued_max_messages_kbytes
        ));
        s.push_str(&format!(
            "Scylla writes         {:>12.0} /s      {:.1} MiB/s of values\n",
            self.scylla_writes_per_s, self.scylla_write_mib_per_s
        ));
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
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
            write_p99_ms: 4.0,
            msg_bytes: 240.0,
        }
    }

    #[test]
    fn worked_example_motivating_case() {
        // 200k msg/s at 5 µs per message: a shard does 200k msg/s flat out, 140k with 30% headroom,
        // so 2 shards; 16 cores per host makes that 1 host.
        let t = Target {
            msgs_per_s: 200_000.0,
            cores_per_host: 16,
            headroom: 0.3,
            partitions: Some(20),
        };
        let p = plan(&costs(), &t).expect("plannable");
        assert_eq!(
            (p.shards, p.hosts, p.shards_per_host, p.partitions),
            (2, 1, 2, 20)
        );
        assert_eq!(p.msgs_per_s_per_shard, 100_000.0);
        // Catch-up cap: the per-shard rate plus the 30% headroom.
        assert_eq!(p.max_writes_per_s, 130_000);
        assert!(p.config_fragment().contains("max_writes_per_s = 130000"));
        // 2 × 100k/s × 4 ms = 800 writes in flight per shard.
        assert_eq!(p.max_in_flight_per_shard, 800);
        // 200k × 240 B / 20 partitions = 2.4 MB/s per partition; 10 ms of it = 24000 B.
        assert_eq!(p.fetch_min_bytes, 24_000);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(p
            .config_fragment()
            .contains("max_in_flight_per_shard = 800"));
        assert!(p.explain(&costs(), &t).contains("shards"));
    }

    #[test]
    fn worked_example_many_hosts_and_too_few_partitions() {
        // 2M msg/s at 20 µs: 50k msg/s per shard flat out, 25k at 50% headroom → 80 shards;
        // 12 cores per host → 7 hosts; rounded to fill them evenly: 7 × 12 = 84 shards.
        let c = Costs {
            cpu_us_per_msg: 20.0,
            write_p99_ms: 10.0,
            msg_bytes: 1000.0,
        };
        let t = Target {
            msgs_per_s: 2_000_000.0,
            cores_per_host: 12,
            headroom: 0.5,
            partitions: Some(64),
        };
        let p = plan(&c, &t).expect("plannable");
        assert_eq!((p.shards, p.hosts, p.shards_per_host), (84, 7, 12));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("20 shards would idle")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let t = Target {
            msgs_per_s: 1000.0,
            cores_per_host: 4,
            headroom: 1.0,
            partitions: None,
        };
        assert!(plan(&costs(), &t).is_err());
    }
}
