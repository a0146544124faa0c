#!/usr/bin/env bash
# End-to-end benchmark against the real services: raw consume ceiling, null sink, Cassandra at its
# maximum and at fixed rates, 1 vs 2 shards, and the same pipeline on tokio's multi-threaded runtime.
# Writes results/bench/{report.json,summary.md,latency.svg}. Criterion micro-benches: cargo bench.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/services.sh up kafka cassandra registry
cargo build --release --quiet
cargo bench --bench e2e --no-run --quiet
python3 scripts/bench.py "$@"
