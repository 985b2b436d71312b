"""bench-compare: cache-server against Redis and against bare tonic baselines, in one run, on one table.

What it does, in order (everything on 127.0.0.1, free ports, never 6379):
  1. builds the release binaries (cargo build --release --workspace --bins --examples);
  2. starts a private redis-server (--save "" --appendonly no) and runs redis-benchmark GET and SET
     (50 clients, 1 KiB values): what a user gets talking to Redis directly;
  3. starts four gRPC servers side by side (idle ones cost nothing):
       constant  bare tonic, Get answers a constant 1 KiB value      (baseline of memory)
       memory    cache-server --backend memory
       fred      bare tonic + fred GET/SET passthrough to the Redis  (baseline of hybrid)
       hybrid    cache-server --backend hybrid on the same Redis
     and drives each with h2load (pre-encoded unary Get/Set frames, 1 KiB value, cache hits) and with our
     loadgen, both at 50 connections x 1 call in flight, in paired rounds: each target right next to its
     baseline, the order alternating (the noisy machine's speed drifts by 10-20 % over tens of seconds);
     reports medians over the rounds and, as the ratio, the median of the per-round ratios;
  4. 1 MiB JSON-like values through memory and hybrid (MB/s of logical payload, Redis memory per logical byte);
  5. fills a memory-mode server to twice its capacity with 1 KiB..8 MiB values (resident memory, rejections,
     values readable right after their Set);
  6. times cache-server start to SERVING in memory mode (polling grpc.health.v1).

h2load only sees HTTP status (a gRPC error is HTTP 200 too), so correctness is checked separately: loadgen
counts errors by gRPC code, hits and value sizes, and a Get through h2load must carry >= 1 KiB of data per
answer. A correctness failure always fails the run; a missed floor fails it unless --no-floors.

With --write-docs [FILE] (default docs/benchmarks.md) the run's table, command line and machine replace the
text between <!-- bench-table:start --> and <!-- bench-table:end --> in FILE (checked before the run starts;
not written if the run found a correctness problem).

Usage: scripts/bench-compare [--quick] [--no-floors] [--rounds N] [--duration S] [--grpc-rounds N]
                             [--grpc-duration S] [--json-out FILE] [--write-docs [FILE]]
                             [--only redis,grpc,plain,batch,large,fill,startup,security] [--pairs memory,hybrid]
(--only and --pairs measure a part again while working on it; the full run is the one that counts.)
Needs: cargo, redis-server, redis-cli, redis-benchmark (apt: redis-server redis-tools), h2load
(apt: nghttp2-client), python3 >= 3.8. The machine is shared and noisy: read the ratios, not the absolutes.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from . import common, report
from .common import Children, die, log
from .h2load import CONNECTIONS, VALUE_SIZE
from .loadgen import Loadgen
from .sections import SECTIONS, Bench

PAIRS = {"memory": "constant", "hybrid": "fred"}
TARGET_ORDER = ["constant", "memory", "fred", "hybrid"]


def parse_args():
    ap = argparse.ArgumentParser(prog="bench-compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="seconds per row, one round, small fills: for CI (combine with --no-floors)")
    ap.add_argument("--no-floors", action="store_true", help="report floors but do not fail on them")
    ap.add_argument("--rounds", type=int, help="repeats of every measurement (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 6, quick 1)")
    ap.add_argument("--grpc-rounds", type=int,
                    help="paired rounds of the gRPC servers against their baselines (default 8, quick 1)")
    ap.add_argument("--grpc-duration", type=float,
                    help="seconds per gRPC measurement (default 3, quick 1)")
    ap.add_argument("--skip-build", action="store_true", help="use the release binaries already built")
    ap.add_argument("--json-out", help="also write every measurement to this JSON file")
    ap.add_argument("--write-docs", nargs="?", const=report.DOCS_FILE, metavar="FILE",
                    help="replace the generated table between the bench-table markers of FILE "
                         "(default docs/benchmarks.md) with this run's; needs a full run (no --only/--pairs)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    ap.add_argument("--pairs", default=",".join(PAIRS),
                    help="comma-separated gRPC targets with their baselines (default memory,hybrid)")
    args = ap.parse_args()
    args.only_set = set(args.only.split(","))
    if not args.only_set <= set(SECTIONS):
        ap.error(f"--only takes {','.join(SECTIONS)}")
    args.pair_list = [p for p in args.pairs.split(",") if p]
    if not args.pair_list or not set(args.pair_list) <= set(PAIRS):
        ap.error(f"--pairs takes {','.join(PAIRS)}")
    if args.write_docs and (args.only_set != set(SECTIONS) or set(args.pair_list) != set(PAIRS)):
        ap.error("--write-docs replaces the whole table: run every section and pair (no --only, no --pairs)")
    return args


def main():
    common.set_program("bench-compare")
    args = parse_args()
    if args.write_docs:
        try:
            report.check_docs(args.write_docs)
        except ValueError as e:
            die(f"--write-docs: {e}")
    targets = [t for t in TARGET_ORDER if t in args.pair_list or any(PAIRS[p] == t for p in args.pair_list)]

    common.need_tools("cargo", "redis-server", "redis-cli", "redis-benchmark", "h2load")
    bins = common.release_bins(("cache-server", "baseline", "loadgen"), build=not args.skip_build)
    tmp = tempfile.mkdtemp(prefix="bench-compare-")
    b = Bench(args, bins, Loadgen(bins["loadgen"]), Children(tmp), PAIRS)
    load_at_start = os.getloadavg()[0]
    try:
        b.redis_port, _ = common.start_redis(b.children)
        log(f"private redis-server on 127.0.0.1:{b.redis_port}; logs in {tmp}")
        if "redis" in args.only_set:
            b.redis_benchmark()
        if "grpc" in args.only_set:
            b.grpc(targets)
        if "plain" in args.only_set:
            b.plain()
        if "batch" in args.only_set:
            b.batch()
        if "large" in args.only_set:
            b.large_values()
        if "fill" in args.only_set:
            b.fill()
        if "startup" in args.only_set:
            b.startup()
        if "security" in args.only_set:
            b.security()
    finally:
        b.children.stop_all()
    load_at_end = os.getloadavg()[0]

    params = (f"gRPC servers: {b.grpc_rounds} paired round(s) x {b.grpc_seconds:g} s per measurement "
              f"(+{b.grpc_warmup:g} s warm-up), each target right next to its baseline (memory vs constant, hybrid "
              f"vs fred), {CONNECTIONS} connections x 1 in flight, {VALUE_SIZE} B values, cache hits; req/s, p50 "
              f"and p99 are medians over rounds, ratios the median of the per-round ratios; other rows: "
              f"{b.rounds} round(s) x {b.seconds:g} s (+{b.warmup:g} s warm-up), medians.")
    print()
    print(f"bench-compare: {params} {report.machine_line(load_at_start, load_at_end)}.")
    print()
    if b.rows:
        print(report.table(b.rows))
        print()
    notes = b.notes()
    for n in notes:
        print(n)
    print()
    print("Floors:")
    for name, passed, detail in b.floors:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
    if b.correctness:
        print("\nCorrectness problems (always fatal):")
        for p in b.correctness:
            print(f"  - {p}")
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump({"results": b.results, "rows": b.rows, "floors": b.floors, "correctness": b.correctness},
                      out, indent=1, default=str)
    if args.write_docs:
        if b.correctness:
            log(f"not writing {args.write_docs}: the run found correctness problems")
        else:
            report.write_docs(args.write_docs,
                              report.docs_block(b.rows, notes, params, load_at_start, load_at_end, b.floors))
            log(f"wrote the table into {args.write_docs}")
    shutil.rmtree(tmp, ignore_errors=True)
    missed = [f for f in b.floors if not f[1]]
    if b.correctness:
        return 1
    if missed and not args.no_floors:
        print(f"\n{len(missed)} floor(s) missed.")
        return 1
    if missed:
        print(f"\n{len(missed)} floor(s) missed (not enforced: --no-floors).")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
