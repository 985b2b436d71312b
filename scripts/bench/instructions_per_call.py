"""instructions-per-call: CPU instructions a server spends per gRPC call, counted by callgrind.

Throughput on a shared 2-core machine moves by 10-20 % between runs; instruction counts barely move (a
server's timers and background tasks make repeated runs differ by well under 1 %, whatever else the machine
does). This runs the server under callgrind twice, with a small and a large number of calls from the load
generator (50 connections x 1 in flight, 1 KiB values, cache hits on 1000 keys), and prints
(large - small) / (difference in calls): the per-call cost without start-up and prefill. Use it to compare
two builds, or cache-server with a baseline.

    scripts/instructions-per-call TARGET OP [SMALL LARGE]
      TARGET: memory | hybrid | redis (cache-server) or constant | fred (tests/src/bin/baseline.rs)
      OP:     get | set
    e.g. scripts/instructions-per-call hybrid get && scripts/instructions-per-call fred get

The per-function breakdown is left in ${CARGO_TARGET_DIR:-target}/callgrind/<target>-<op>-<large>.out
(callgrind_annotate). Caveat: callgrind counts `rep movsb` per byte, so copies above ~8 KiB (glibc switches
to it there) weigh far more than their real time. Needs valgrind (apt: valgrind), redis-server and redis-cli
(apt: redis-server redis-tools) and the release binaries (cargo build --release --workspace --bins
--examples; under $CARGO_TARGET_DIR when it is set).
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile

from . import common
from .common import Children, die
from .loadgen import BENCH_KEY_PREFIX, Loadgen

TARGETS = ("memory", "hybrid", "redis", "constant", "fred")


def parse_args():
    ap = argparse.ArgumentParser(prog="instructions-per-call", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=TARGETS)
    ap.add_argument("op", choices=("get", "set"))
    ap.add_argument("small", type=int, nargs="?", default=1000, help="calls of the small run (default 1000)")
    ap.add_argument("large", type=int, nargs="?", default=5000, help="calls of the large run (default 5000)")
    args = ap.parse_args()
    if args.large <= args.small:
        ap.error("LARGE must exceed SMALL")
    return args


def measure(args, bins, out_dir, calls):
    """Runs the target under callgrind for `calls` calls (after start-up and prefill); the instruction total."""
    name = f"{args.target}-{args.op}-{calls}"
    profile = os.path.join(out_dir, f"{name}.out")
    tmp = tempfile.mkdtemp(prefix="instructions-per-call-")
    try:
        with Children(tmp) as children:
            redis_port, _ = common.start_redis(children)
            port = common.free_port()
            if args.target in ("constant", "fred"):
                argv = common.baseline_argv(bins["baseline"], args.target, port, redis_port)
            else:
                argv = common.cache_server_argv(bins["cache-server"], args.target, port, redis_port, metrics=False)
            server = children.start(name, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", *argv],
                                    env=common.server_env())
            loadgen = Loadgen(bins["loadgen"])
            if loadgen.wait_serving(port, "60s") is None:
                die(f"{args.target} under valgrind did not become SERVING:\n{children.log_tail(name)}")
            loadgen.prefill(port)
            loadgen.run(port, ["--connections", "50", "--concurrency", "1", "--requests", str(calls),
                               "--mix", f"{args.op}=100", "--keys", "1000", "--key-prefix", BENCH_KEY_PREFIX,
                               "--value-size", "1024"])
            # valgrind runs the server in its own process: SIGINT reaches the server, which shuts down and lets
            # callgrind write the profile.
            children.stop(server, grace=120, sig=signal.SIGINT)
            shutil.copy(os.path.join(tmp, f"{name}.log"), os.path.join(out_dir, f"{name}.log"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        with open(profile) as f:
            return next(int(line.split()[1]) for line in f if line.startswith("summary:"))
    except (OSError, StopIteration):
        die(f"no callgrind summary in {profile}")


def main():
    common.set_program("instructions-per-call")
    args = parse_args()
    common.need_tools("valgrind", "redis-server", "redis-cli")
    bins = common.release_bins(("cache-server", "baseline", "loadgen"))
    out_dir = os.path.join(common.target_dir(), "callgrind")
    os.makedirs(out_dir, exist_ok=True)
    small_total = measure(args, bins, out_dir, args.small)
    large_total = measure(args, bins, out_dir, args.large)
    per_call = (large_total - small_total) // (args.large - args.small)
    print(f"{args.target} {args.op}: {per_call} instructions per call (callgrind; ({large_total} - {small_total}) "
          f"/ ({args.large} - {args.small}))")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
