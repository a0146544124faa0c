#!/usr/bin/env bash
# Runs every test: the unit tests (no service needed), then the integration tests against real Kafka,
# Cassandra and Apicurio Registry, which this script starts (and stops again if it started them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh

started=()
cleanup() {
  local rc=$?
  if [ ${#started[@]} -gt 0 ]; then
    bash scripts/services.sh down "${started[@]}" || true
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

echo "== unit tests (no services)"
cargo test --all-targets

echo "== services"
for s in kafka cassandra registry cassandra-tls; do
  if ! bash scripts/services.sh status "$s" >/dev/null 2>&1; then started+=("$s"); fi
done
bash scripts/services.sh up
bash scripts/services.sh status

echo "== integration tests (real services)"
cargo test --features integration,fault-tests --test integration -- --test-threads 1
