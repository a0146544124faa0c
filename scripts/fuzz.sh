#!/usr/bin/env bash
# Fuzzes the wire-format + Avro decode path and the config parser with cargo-fuzz (libFuzzer, nightly).
#   scripts/fuzz.sh [decode_seconds] [config_seconds]     (defaults 600 and 120)
# A crash leaves its input in fuzz/artifacts/<target>/; turn it into a unit test next to the decoder.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
rustup toolchain list | grep -q nightly || { echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
mkdir -p fuzz/corpus/decode fuzz/corpus/config
# Committed seeds (allocation bombs of zero-byte items, a valid datum): fuzz/corpus itself is not committed.
cp fuzz/seeds/decode/*.bin fuzz/corpus/decode/
cp tuning/*.toml fuzz/corpus/config/ 2>/dev/null || true
cargo +nightly fuzz build decode
cargo +nightly fuzz build config
# No legitimate datum of at most 4 KiB needs a 64 MiB allocation: one that asks for it is a finding.
cargo +nightly fuzz run decode -- -max_total_time="${1:-600}" -rss_limit_mb=2048 -malloc_limit_mb=64 -max_len=4096
cargo +nightly fuzz run config -- -max_total_time="${2:-120}" -rss_limit_mb=2048
