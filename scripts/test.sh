#!/usr/bin/env bash
# Runs the whole test suite: unit tests and real-mount integration tests
# against private redis-server, moto (S3) and Azurite instances that the
# tests start themselves on loopback. Needs root (FUSE mounts, uid switches).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
# pyenv/npm shims may live outside a minimal PATH.
export PATH="$PATH:/usr/local/bin:$HOME/.cargo/bin"
exec cargo nextest run --no-fail-fast --test-threads 4 "$@"
