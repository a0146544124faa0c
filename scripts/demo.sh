#!/usr/bin/env bash
# The main job end to end: services up, topic (8 partitions) and table created, navigation events
# produced at a steady rate while `shardline run` consumes them, then a graceful stop and a summary.
# A warm-up (WARM events, default 2 s of RATE) goes first and is not measured: on a fresh machine the
# first seconds meet a cold Cassandra and JVMs that are still compiling, and their latencies would be
# the summary's. The summary's latencies come from /metrics scraped before and after the measured part.
#
#   scripts/demo.sh                 # 300k events at 20k msg/s, the insert-only pipeline
#   EVENTS=500000 RATE=0 scripts/demo.sh   # as fast as the producer goes
#   PIPELINE=enrichment scripts/demo.sh     # the three-processors-in-one example (tuning/enrichment.toml)
# Services stay up afterwards (scripts/services.sh down stops them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EVENTS=${EVENTS:-300000}
RATE=${RATE:-20000}
PIPELINE=${PIPELINE:-insert}
case $PIPELINE in
  insert) CONFIG=${CONFIG:-tuning/navigation.toml} ;;
  enrichment) CONFIG=${CONFIG:-tuning/enrichment.toml} ;;
  *) echo "demo.sh: PIPELINE is insert or enrichment" >&2; exit 1 ;;
esac
UIDS=${UIDS:-4000}
WARM=${WARM:-$(( RATE > 0 ? RATE * 2 : 20000 ))}
# A topic and group of its own per run, so the summary counts exactly what this run produced.
RUN_ID=$(date +%s)
TOPIC=navigation_$RUN_ID
OUT=${OUT:-$ROOT/results/demo}
mkdir -p "$OUT"
sed -e "s/\"navigation\"/\"$TOPIC\"/; s/\"navigation.dlq\"/\"$TOPIC.dlq\"/; s/\"navigation.enriched\"/\"$TOPIC.enriched\"/" \
  -e "s/^group_id = \"\(.*\)\"/group_id = \"\1-$RUN_ID\"/" "$CONFIG" >"$OUT/config.toml"
CONFIG=$OUT/config.toml

bash scripts/bootstrap.sh
bash scripts/services.sh up kafka cassandra registry
echo "== building shardline (release)"
cargo build --release --quiet
B=target/release/shardline

echo "== topic, dead-letter topic, keyspace and table"
$B create-topic --topic $TOPIC --partitions 8
$B create-topic --topic $TOPIC.dlq --partitions 1
$B cql "CREATE KEYSPACE IF NOT EXISTS shardline WITH replication = {'class':'SimpleStrategy','replication_factor':1}" \
  "DROP TABLE IF EXISTS shardline.navigation_events" \
  "CREATE TABLE shardline.navigation_events (uid text, event_id text, url text, referer text, user_agent text, ts timestamp, ip inet, country text, event_type text, duration_ms int, tags frozen<list<text>>, PRIMARY KEY ((uid), event_id))"
if [ "$PIPELINE" = enrichment ]; then
  $B create-topic --topic $TOPIC.enriched --partitions 8
  $B cql "DROP TABLE IF EXISTS shardline.user_segments" "DROP TABLE IF EXISTS shardline.last_seen" \
    "DROP TABLE IF EXISTS shardline.visits_by_uid" \
    "CREATE TABLE shardline.user_segments (uid text PRIMARY KEY, segment text)" \
    "CREATE TABLE shardline.last_seen (uid text PRIMARY KEY, ts timestamp, url text, segment text)" \
    "CREATE TABLE shardline.visits_by_uid (uid text, event_id text, ts timestamp, url text, event_type text, segment text, PRIMARY KEY ((uid), event_id))"
  # Segments for the even users: the odd ones exercise the lookup's miss policy (default "unknown").
  seeds=()
  for n in $(seq 0 2 $((UIDS - 1))); do
    seeds+=("INSERT INTO shardline.user_segments (uid, segment) VALUES ('$(printf 'u%07d' "$n")', 'seg-$((n % 4))')")
  done
  $B cql "${seeds[@]}"
fi
# Register the schema first so that `run`'s start-up check finds the subject.
$B produce --topic $TOPIC --count 0 --quiet >/dev/null

echo "== shardline run ($CONFIG), metrics on http://127.0.0.1:9898/metrics"
$B run --config "$CONFIG" --summary "$OUT/summary.json" >"$OUT/run.log" 2>&1 &
RUN_PID=$!
trap 'kill -9 $RUN_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do curl -fs http://127.0.0.1:9898/health >/dev/null 2>&1 && break; sleep 0.5; done
# The shards of the process join the group together (start barrier, about 3 s): produce after that.
sleep 5

written() {
  curl -fs http://127.0.0.1:9898/metrics | awk '/^shardline_messages_total/ && /stage="(written|dead_lettered|dropped)"/ {s+=$2} END {printf "%d\n", s}'
}
# Waits (up to 5 min) until `written` reaches $1.
wait_written() {
  local w
  for _ in $(seq 1 600); do
    w=$(written)
    [ "${w%.*}" -ge "$1" ] && return 0
    sleep 0.5
  done
  return 1
}
if [ "$WARM" -gt 0 ]; then
  echo "== warming up: $WARM events at ${RATE} msg/s (not measured)"
  base=$(written)
  $B produce --topic $TOPIC --count "$WARM" --rate "$RATE" --seed $RANDOM --uids "$UIDS" --quiet >/dev/null
  wait_written $((base + WARM)) || echo "demo.sh: the warm-up was not written within 5 min" >&2
fi
curl -fs http://127.0.0.1:9898/metrics >"$OUT/metrics.before"
base=$(written)
echo "== producing $EVENTS events at ${RATE} msg/s (0 = as fast as possible)"
$B produce --topic $TOPIC --count "$EVENTS" --rate "$RATE" --seed $RANDOM --uids "$UIDS" >"$OUT/produce.json"
# Kept up: what was left to write when the producer finished, and how long it took.
produced_at=$(date +%s.%N)
target=$((base + EVENTS))
left=$((target - $(written)))
echo "== waiting until shardline has written everything ($left records to go)"
wait_written "$target" || echo "demo.sh: not everything was written within 5 min" >&2
caught_up=$(python3 -c "import time; print(f'{time.time() - $produced_at:.1f}')")
curl -fs http://127.0.0.1:9898/metrics >"$OUT/metrics.after"
echo "== metrics excerpt"
curl -fs http://127.0.0.1:9898/metrics | grep -E '^shardline_(messages_total|end_to_end_seconds_count|partition_assigned|commits_total|in_flight_writes)' | head -30
kill -TERM $RUN_PID
wait $RUN_PID || { echo "shardline run exited with an error; see $OUT/run.log" >&2; exit 1; }
trap - EXIT

if [ "$PIPELINE" = enrichment ]; then
  rows="visits_by_uid $($B cql "SELECT COUNT(*) FROM shardline.visits_by_uid"), last_seen $($B cql "SELECT COUNT(*) FROM shardline.last_seen")"
else
  rows=$($B cql "SELECT COUNT(*) FROM shardline.navigation_events")
fi
python3 - "$OUT/summary.json" "$OUT/produce.json" "$rows" "$OUT/metrics.before" "$OUT/metrics.after" "$left" "$caught_up" "$WARM" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from metrics_window import summary_line, window
s = json.load(open(sys.argv[1]))
p = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
rows = sys.argv[3].strip()
left, caught_up, warm = int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
rate = p["rate_per_s"] or 0.0
fmt = lambda v: "n/a" if v is None else f"{v:.2f} ms"
# The measured part: what the histograms gathered between the two scrapes; "> top" past the top bucket.
w = window(open(sys.argv[4]).read(), open(sys.argv[5]).read())
measured = lambda name, unit="ms", scale=1.0: summary_line(w[name], unit, scale) if name in w else "n/a"
print()
print("== shardline demo summary")
print(f"  produced          {p['acked']} events at {p['rate_per_s']:.0f} msg/s (after {warm} warm-up events, not measured)")
print(f"  consumed          {s['consumed']}  (written {s['written']}, dead-lettered {s['dead_lettered']}) by {s['shards']} shards")
print(f"  throughput        {s['msgs_per_s']:.0f} msg/s from first record to last write ({s['active_seconds']:.1f} s; paced by the producer at RATE)")
# Kept up: at most 0.2 s of the offered rate was still unwritten when the producer finished (the
# records in flight and in the last fetches), and it was written within 2 s.
backlog_s = left / rate if rate > 0 else 0.0
kept = backlog_s <= 0.2 and caught_up <= 2.0
print(f"  kept up           {'yes' if kept else 'NO'}: {left} records ({backlog_s:.2f} s of the offered rate) were unwritten "
      f"when the producer finished, all written {caught_up:.1f} s later"
      + ("" if kept else "; the offered rate is above what this machine sustains now (see scripts/bench.sh)"))
print(f"  end to end        {measured('end_to_end')}  (Kafka timestamp -> write acked, measured part)")
print(f"  insert            {measured('write')}  (per write request, measured part)")
print(f"  decode            {measured('decode', 'µs', 1000.0)}  (one decode in 16 is timed)")
print(f"  rows in table     {rows}  (warm-up included)")
print(f"  metrics           http://127.0.0.1:9898/metrics (while shardline runs)")
if s.get("steps"):
    print("  processor steps   " + "; ".join(f"{k}: {v}" for k, v in s["steps"].items()))
    print("  lookup cache      " + "; ".join(f"{k}: {v}" for k, v in s["lookup_cache"].items()))
    print("  step p50/p99      " + "; ".join(f"{k}: {fmt(v['p50_ms'])} / {fmt(v['p99_ms'])}" for k, v in s["step_latency"].items()))
PY
