#!/usr/bin/env bash
# Installs what shardline's scripts need and a fresh Debian machine may lack: Java 17+, Maven, python3,
# curl, cmake and a C/C++ toolchain (librdkafka is built from source by rdkafka's cmake-build), and the
# OpenSSL headers (Kafka TLS/SASL). Rust itself must already be installed (rustup).
# Sourced or run by scripts/test.sh, scripts/demo.sh and scripts/bench.sh; a no-op when all is there.
set -euo pipefail

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v python3 >/dev/null || missing+=(python3)
# venv + ensurepip: scripts/bench.sh installs matplotlib into a virtual environment.
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(build-essential)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
# The openssl command makes the test CA and certificates (scripts/services.sh).
command -v openssl >/dev/null || missing+=(openssl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# Tools only some scripts need, by command name (a Debian package of the same name): for example
# BOOTSTRAP_EXTRA=valgrind for scripts/instructions.sh. Not installed by default: no test needs them.
for tool in ${BOOTSTRAP_EXTRA:-}; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "bootstrap: cargo not found: install Rust with rustup" >&2; exit 1; }
