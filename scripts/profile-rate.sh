#!/usr/bin/env bash
# Where a shard's CPU goes at a fixed rate: runs shardline (2 shards, the demo's mapping) on a fresh
# 8-partition LogAppendTime topic fed by `shardline produce --rate RATE`, and over a steady window (from
# WARMUP s after the producer starts, for SECONDS-WARMUP-2 s) prints, per thread name, CPU (user and
# system) and context switches per record from /proc/<pid>/task/*/{stat,status}, then the quantiles
# of the stage, write and end-to-end histograms gathered in that window (two /metrics scrapes, diffed).
# The bench's fixed-rate rows count from the first record to the last, warm-up included; this window
# does not. Needs the services (scripts/services.sh up kafka cassandra registry) and a release build.
#
# usage: scripts/profile-rate.sh RATE SECONDS [BINARY]     e.g. scripts/profile-rate.sh 2000 20
# For syscalls, while it runs: strace -c -p <tid of a shard thread> (ps -L -p <pid>).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATE=${1:?rate}; SECS=${2:?seconds}; BIN=${3:-target/release/shardline}
WARMUP=${WARMUP:-3}
[ "$SECS" -gt $((WARMUP + 4)) ] || { echo "profile-rate.sh: SECONDS must exceed WARMUP + 4" >&2; exit 1; }
PORT=${PORT:-19777}
DIR=$(mktemp -d /tmp/profile-rate.XXXXXX)
T=profile_$(date +%s%N)
"$BIN" create-topic --topic "$T" --partitions 8 --log-append-time >/dev/null
"$BIN" create-topic --topic "$T.dlq" --partitions 1 >/dev/null
sed -e "s/\"navigation\"/\"$T\"/; s/\"navigation.dlq\"/\"$T.dlq\"/; s/group_id = \"shardline-demo\"/group_id = \"$T\"/" \
  -e "s/listen = \"127.0.0.1:9898\"/listen = \"127.0.0.1:$PORT\"/; s/max_in_flight_per_shard = 256/max_in_flight_per_shard = 512/" \
  tuning/navigation.toml >"$DIR/config.toml"
printf '\n[shards]\ncores = [0, 1]\n' >>"$DIR/config.toml"
"$BIN" produce --topic "$T" --count 0 --quiet >/dev/null # registers the subject
RUST_LOG=warn "$BIN" run --config "$DIR/config.toml" 2>"$DIR/run.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
sleep 5
"$BIN" produce --topic "$T" --count $((RATE * SECS)) --rate "$RATE" --quiet >"$DIR/produce.json" &
PP=$!
sleep "$WARMUP"
# One line per thread: tid name utime stime context-switches
snap() {
  local t s v
  for t in /proc/$PID/task/*; do
    s=($(cut -d')' -f2 "$t/stat")) || continue
    v=$(awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n}' "$t/status" 2>/dev/null) || continue
    echo "$(basename "$t") $(tr ' ' '_' <"$t/comm") ${s[11]} ${s[12]} $v"
  done
}
snap >"$DIR/a"; t0=$(date +%s.%N); curl -fsS "127.0.0.1:$PORT/metrics" >"$DIR/m0"
sleep $((SECS - WARMUP - 2))
snap >"$DIR/b"; t1=$(date +%s.%N); curl -fsS "127.0.0.1:$PORT/metrics" >"$DIR/m1"
wait $PP
python3 - "$DIR" "$t0" "$t1" "$RATE" "$(getconf CLK_TCK)" <<'PY'
import collections, sys
d, t0, t1, rate, tick = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = lambda f: {l.split()[0]: l.split() for l in open(f"{d}/{f}") if len(l.split()) == 5}
a, b = rows("a"), rows("b")
dt = t1 - t0
n = rate * dt
agg = collections.defaultdict(lambda: [0, 0.0, 0.0, 0])
for tid, x in b.items():
    y = a.get(tid, [tid, x[1], "0", "0", "0"])
    g = agg[x[1]]
    g[0] += 1
    g[1] += (int(x[2]) - int(y[2])) / tick
    g[2] += (int(x[3]) - int(y[3])) / tick
    g[3] += int(x[4]) - int(y[4])
print(f"steady window {dt:.1f} s at {rate} msg/s offered ({n:.0f} records); per record:")
tot = [0.0, 0.0, 0]
for name, (k, u, s, c) in sorted(agg.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
    if u + s + c == 0:
        continue
    print(f"  {name:18s} x{k}  user {u / n * 1e6:6.1f} µs  sys {s / n * 1e6:6.1f} µs  ctx {c / n:5.2f}")
    tot = [tot[0] + u, tot[1] + s, tot[2] + c]
print(f"  {'all threads':18s}     user {tot[0] / n * 1e6:6.1f} µs  sys {tot[1] / n * 1e6:6.1f} µs  ctx {tot[2] / n:5.2f}"
      f"  = {(tot[0] + tot[1]) / n * 1e6:.1f} µs CPU per record")
print("histograms over the window (e2e and fetch have the Kafka timestamp's 1 ms resolution):")
PY
python3 "$ROOT/scripts/metrics_window.py" "$DIR/m0" "$DIR/m1"
