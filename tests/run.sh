#!/usr/bin/env bash
# Runs locald's whole test suite on a Debian 12 machine: installs what the
# tests need, builds every binary the integration tests drive, then tests.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup-debian.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
