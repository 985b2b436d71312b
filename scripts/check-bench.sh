#!/usr/bin/env bash
# Smoke test of the performance tooling, for CI: every criterion benchmark runs once (`-- --test`), then
# scripts/bench-compare runs its short version (one round, about a second per row, small fills) with the
# floors reported but not enforced: CI machines are noisy, and the point here is that the command keeps
# working. Correctness problems it finds (gRPC errors, misses, values dropped on insert) still fail it. Last,
# scripts/ab-compare runs one short round with each load generator, so that it keeps working too.
#
# Needs what bench-compare needs: redis-server, redis-cli, redis-benchmark (apt redis-server redis-tools) and
# h2load (apt nghttp2-client), and valgrind for scripts/redis-set-cost. Takes about two minutes once the release
# build is cached.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> check-bench: criterion benchmarks, each once (cargo bench -p cache-server -- --test)"
cargo bench -p cache-server --bench codec --bench memory -- --test

echo "==> check-bench: scripts/bench-compare --quick --no-floors"
scripts/bench-compare --quick --no-floors

# bench-compare has built the release binaries. One short round of the A/B tool per load generator, the
# build against itself.
echo "==> check-bench: scripts/ab-compare, one short round per load generator (the release build against itself)"
server="${CARGO_TARGET_DIR:-target}/release/cache-server"
scripts/ab-compare --a "$server" --b "$server" --op set --rounds 1 --seconds 0.5
scripts/ab-compare --a "$server" --b "$server" --mode memory --tool h2load --op set --rounds 1 --seconds 0.5

# The Redis-side counter of the Set script: one small round, so that it keeps working (valgrind: apt valgrind).
echo "==> check-bench: scripts/redis-set-cost, one small round"
scripts/redis-set-cost --rounds 1 --sets 240
