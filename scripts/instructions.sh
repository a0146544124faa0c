#!/usr/bin/env bash
# Instructions per record, counted by callgrind: the one cost figure that does not move with the
# other processes on a shared box. This project's development VM has no hardware counters, and its
# CPU time per record swings up to 2x between days with the JVMs beside it (see README), so a change
# of a few percent shows here first. Instructions are not time: cache misses and the kernel (the
# loopback network stack, context switches) are not counted, and they are most of the difference
# between the null sink and the full path in CPU time.
#
# Drains a fresh 8-partition topic of N navigation records with one shard and the demo's mapping,
# under `valgrind --tool=callgrind`, with --null-sink and into Cassandra, and once more each over an
# empty topic; the empty run's count (start-up, the drain's end, shutdown) is subtracted. Prints per
# record: the whole process, the shard's thread (decode, bind, batching, the driver, the bridge), and
# the functions that execute most instructions. librdkafka's statistics are set to the longest
# interval shardline accepts (9.999 s) for these runs: under valgrind a run lasts ~50x longer, and
# their JSON (about a million instructions each) would be charged to the records; what is left is
# ~2 M instructions per 10 s of run that the empty run does not take away (a run lasts about 1 ms
# per record under valgrind: ~200 per record, the same for both binaries of an A/B).
# Needs the services (scripts/services.sh up kafka cassandra registry), a release build and valgrind
# (Debian: BOOTSTRAP_EXTRA=valgrind scripts/bootstrap.sh installs it).
#
# Not quite deterministic: the shard thread frees librdkafka's messages through glibc's malloc, and an
# idle loop runs for as long as a run lasts, so the same binary reads within about ±4% between runs
# (N = 20,000; less with more records). Compare alternated rounds, not single runs.
#
# usage: scripts/instructions.sh [N] [BINARY]    (N default 50000; each run takes about N/1000 s + 45 s)
# BEFORE=<binary>: the same runs with that binary too, alternated, and the change in %.
# ROUNDS=<k>: k alternated rounds (default 1); each figure is then the median of the rounds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Binaries given relative to the caller's directory still name the same files after the cd below.
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
N=${1:-50000}
BIN=$(absolute "${2:-$ROOT/target/release/shardline}")
[ -n "${BEFORE:-}" ] && BEFORE=$(absolute "$BEFORE")
for b in "$BIN" ${BEFORE:+"$BEFORE"}; do
  [ -f "$b" ] && [ -x "$b" ] || { echo "instructions.sh: $b is not an executable (give a path; cargo build --release)" >&2; exit 1; }
  # The shard's thread is told apart by its loop's symbol: a stripped binary would read as a shard
  # that costs nothing, after minutes of runs.
  grep -q ShardLoop "$b" || { echo "instructions.sh: $b has no ShardLoop symbol (stripped?)" >&2; exit 1; }
done
cd "$ROOT"
command -v valgrind >/dev/null || {
  echo "instructions.sh: valgrind not found (BOOTSTRAP_EXTRA=valgrind scripts/bootstrap.sh)" >&2
  exit 1
}
DIR=$(mktemp -d /tmp/instructions.XXXXXX)
T=ir_$(date +%s%N)
"$BIN" cql "CREATE KEYSPACE IF NOT EXISTS shardline WITH replication = {'class':'SimpleStrategy','replication_factor':1}" \
  "CREATE TABLE IF NOT EXISTS shardline.navigation_events (uid text, event_id text, url text, referer text, user_agent text, ts timestamp, ip inet, country text, event_type text, duration_ms int, tags frozen<list<text>>, PRIMARY KEY ((uid), event_id))" >/dev/null
for t in "$T" "$T.empty"; do
  "$BIN" create-topic --topic "$t" --partitions 8 >/dev/null
  "$BIN" create-topic --topic "$t.dlq" --partitions 1 >/dev/null
done
"$BIN" produce --topic "$T" --count "$N" --quiet >/dev/null
"$BIN" produce --topic "$T.empty" --count 0 --quiet >/dev/null # registers the subject

# One drain under callgrind: BINARY TOPIC LABEL [--null-sink]. Writes $DIR/LABEL.out-NN (one per thread).
run() {
  local bin=$1 topic=$2 label=$3
  shift 3
  sed -e "s/\"navigation\"/\"$topic\"/; s/\"navigation.dlq\"/\"$topic.dlq\"/" \
    -e "s/group_id = \"shardline-demo\"/group_id = \"$label-$(date +%s%N)\"/" \
    -e "s/listen = \"127.0.0.1:9898\"/listen = \"127.0.0.1:19798\"/" tuning/navigation.toml >"$DIR/$label.toml"
  printf '\n[kafka.librdkafka]\n"statistics.interval.ms" = "9999"\n\n[shards]\ncores = [0]\n' >>"$DIR/$label.toml"
  RUST_LOG=warn valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$DIR/$label.out" \
    "$bin" run --config "$DIR/$label.toml" --drain --drain-idle-ms 500 "$@" >"$DIR/$label.log" 2>&1 || {
    echo "instructions.sh: the $label run failed; its log: $DIR/$label.log" >&2
    tail -5 "$DIR/$label.log" >&2
    exit 1
  }
}

BINS=("$BIN")
[ -n "${BEFORE:-}" ] && BINS=("$BEFORE" "$BIN")
ROUNDS=${ROUNDS:-1}
for r in $(seq 1 "$ROUNDS"); do
  for b in "${!BINS[@]}"; do
    for sink in null cassandra; do
      args=()
      [ "$sink" = null ] && args=(--null-sink)
      run "${BINS[$b]}" "$T" "r$r-b$b-$sink-full" "${args[@]}"
      run "${BINS[$b]}" "$T.empty" "r$r-b$b-$sink-empty" "${args[@]}"
    done
  done
done

python3 - "$DIR" "$N" "$ROUNDS" "${#BINS[@]}" "${BINS[@]}" <<'PY'
import collections, glob, re, statistics, subprocess, sys
d, n, rounds, nb, bins = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]

def totals(label):
    """(whole process, the shard's thread) instructions of one run."""
    whole = shard = 0
    for f in glob.glob(f"{d}/{label}.out-*"):
        text = open(f, errors="replace").read()
        m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
        ir = int(m.group(1)) if m else 0
        whole += ir
        if "ShardLoop" in text:
            shard += ir
    return whole, shard

def functions(label):
    """Instructions by function, over every thread's file of one run."""
    by = collections.Counter()
    for f in glob.glob(f"{d}/{label}.out-*"):
        out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", f],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)", line)
            if m and ":" in m.group(2) and "PROGRAM TOTALS" not in line:
                fn = m.group(2).split(":", 1)[1].split(" [")[0]
                by[fn] += int(m.group(1).replace(",", ""))
    return by

def top(b, sink, k=15):
    """The functions that execute most instructions per record: the last round's full run less its
    empty one."""
    by = functions(f"r{rounds}-b{b}-{sink}-full")
    by.subtract(functions(f"r{rounds}-b{b}-{sink}-empty"))
    return [(ir, fn) for fn, ir in by.most_common(k)]

res, each = {}, {}
for b in range(nb):
    for sink in ("null", "cassandra"):
        per = []
        for r in range(1, rounds + 1):
            full, empty = totals(f"r{r}-b{b}-{sink}-full"), totals(f"r{r}-b{b}-{sink}-empty")
            per.append(tuple((f - e) / n for f, e in zip(full, empty)))
        each[b, sink] = per
        res[b, sink] = tuple(statistics.median(x[i] for x in per) for i in range(2))
what = "median of %d rounds; " % rounds if rounds > 1 else ""
print(f"Instructions per record (callgrind; {what}{n:,} records; the empty topic's run subtracted)")
for b in range(nb):
    print(f"\n{bins[b]}:")
    for sink in ("null", "cassandra"):
        w, s = res[b, sink]
        spread = ""
        if rounds > 1:
            spread = "   (shard thread per round: " + ", ".join(f"{x[1]:,.0f}" for x in each[b, sink]) + ")"
        print(f"  {'--null-sink' if sink == 'null' else 'into Cassandra':15s} whole process {w:8,.0f}   shard thread {s:8,.0f}{spread}")
if nb == 2:
    print("\nChange (second against first):")
    for sink in ("null", "cassandra"):
        (w0, s0), (w1, s1) = res[0, sink], res[1, sink]
        print(f"  {sink:10s} whole {100 * (w1 / w0 - 1):+6.1f}%   shard thread {100 * (s1 / s0 - 1):+6.1f}%")
for sink in ("null", "cassandra"):
    print(f"\nMost executed in the {sink} run of {bins[-1]} (instructions per record, the empty run's subtracted):")
    for ir, fn in top(nb - 1, sink):
        print(f"  {ir / n:8,.0f}  {fn[:110]}")
PY
echo "callgrind files: $DIR (callgrind_annotate $DIR/<run>.out-NN)"
