#!/usr/bin/env bash
# End-to-end benchmark against the real services: raw consume ceiling, null sink, Cassandra at its
# maximum, idle and at fixed rates (stage by stage), 1 vs 2 shards, and the same pipeline on tokio's
# multi-threaded runtime. Writes results/bench/{report.json,summary.md,latency.svg} and the matplotlib
# plots (latency_percentiles, stages, cpu_per_record; PNG and SVG). Criterion micro-benches: cargo bench.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
# matplotlib from PyPI in a virtual environment of its own (Debian's python refuses pip installs into
# the system; the tests never need it): made once under the services' cache.
VENV=${SHARDLINE_CACHE:-$HOME/.cache/shardline}/bench-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  # Without matplotlib the bench still runs; it only draws no plots (bench.py says so).
  { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'; } \
    || echo "bench.sh: could not install matplotlib into $VENV: the report will have no plots" >&2
fi
PY=python3
[ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"
bash scripts/services.sh up kafka cassandra registry
cargo build --release --quiet
cargo bench --bench e2e --no-run --quiet
"$PY" scripts/bench.py "$@"
