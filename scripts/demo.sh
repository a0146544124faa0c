#!/usr/bin/env bash
# The main job end to end: services up, topic (8 partitions) and table created, navigation events
# produced at a steady rate while `shardline run` consumes them, then a graceful stop and a summary.
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
base=$(written)
echo "== producing $EVENTS events at ${RATE} msg/s (0 = as fast as possible)"
$B produce --topic $TOPIC --count "$EVENTS" --rate "$RATE" --seed $RANDOM --uids "$UIDS" >"$OUT/produce.json"

echo "== waiting until shardline has written everything"
target=$((base + EVENTS))
for _ in $(seq 1 600); do
  w=$(written)
  [ "${w%.*}" -ge "$target" ] && break
  sleep 0.5
done
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
python3 - "$OUT/summary.json" "$OUT/produce.json" "$rows" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
rows = sys.argv[3].strip()
e = s["end_to_end"]
fmt = lambda v: "n/a" if v is None else f"{v:.2f} ms"
print()
print("== shardline demo summary")
print(f"  produced          {p['acked']} events at {p['rate_per_s']:.0f} msg/s")
print(f"  consumed          {s['consumed']}  (written {s['written']}, dead-lettered {s['dead_lettered']}) by {s['shards']} shards")
print(f"  throughput        {s['msgs_per_s']:.0f} msg/s from first record to last write ({s['active_seconds']:.1f} s; paced by the producer at RATE)")
print(f"  end to end        p50 {fmt(e['p50_ms'])}  p99 {fmt(e['p99_ms'])}  p999 {fmt(e['p999_ms'])}  (Kafka timestamp -> write acked)")
if not s.get("steps"):
    print(f"  insert            p50 {fmt(s['write']['p50_ms'])}  p99 {fmt(s['write']['p99_ms'])}")
print(f"  decode            p50 {fmt(s['decode']['p50_ms'])}")
print(f"  rows in table     {rows}")
print(f"  metrics           http://127.0.0.1:9898/metrics (while shardline runs)")
if s.get("steps"):
    print("  processor steps   " + "; ".join(f"{k}: {v}" for k, v in s["steps"].items()))
    print("  lookup cache      " + "; ".join(f"{k}: {v}" for k, v in s["lookup_cache"].items()))
    print("  step p50/p99      " + "; ".join(f"{k}: {fmt(v['p50_ms'])} / {fmt(v['p99_ms'])}" for k, v in s["step_latency"].items()))
PY
