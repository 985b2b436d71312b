"""ab-compare: two builds of cache-server side by side, against the matching bare baseline, in one run.

Measures whether a change to the server makes a call cheaper or faster, on the shared, noisy machine: both
builds and the floor's reference (`baseline --mode fred` for hybrid and redis modes, `baseline --mode
constant` for memory mode) run at once, against one private redis-server, and are driven in alternating
rounds (the order reverses every round), so the machine's drift hits them alike. Per round and target it
reports calls/s and, from /proc, the CPU that redis-server and the server spent per call; at the end the
medians and the per-round ratios of each build to the reference and of B to A.

    scripts/ab-compare --a /tmp/before/cache-server --b target/release/cache-server --op set --rounds 12
    scripts/ab-compare --a ... --b ... --mode memory --tool h2load --op set

Typical use: copy the release binary aside before a change (`cp target/release/cache-server /tmp/before/`),
rebuild, compare. Both builds must accept the same flags. The load is 50 connections x 1 call in flight,
1 KiB values, cache hits for Gets: `--tool loadgen` (default) on `--keys` keys, or `--tool h2load`, the
pre-encoded frames of scripts/bench-compare on its one key (the cheapest client, so the server's own cost
shows most; h2load sees HTTP status only, so answers are checked the way bench-compare checks them).

Needs redis-server, redis-cli, h2load for `--tool h2load` (apt: nghttp2-client), and the release binaries of
`baseline` and `loadgen` (cargo build --release --workspace --bins --examples; under $CARGO_TARGET_DIR
when it is set).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from . import common
from .common import Children, die
from .h2load import h2load, write_frames
from .loadgen import BENCH_KEY_PREFIX, Loadgen

WARMUP_S = 0.5


def cpu_seconds(pid):
    """User + system CPU of a process, from /proc (fields 14 and 15 of stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    """User + system CPU of every child process waited for so far (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_seconds():
    """Idle + iowait seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


def parse_args():
    ap = argparse.ArgumentParser(prog="ab-compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="cache-server binary A (e.g. the build before a change)")
    ap.add_argument("--b", required=True, help="cache-server binary B (e.g. target/release/cache-server)")
    ap.add_argument("--op", choices=("get", "set"), default="set")
    ap.add_argument("--mode", choices=("hybrid", "redis", "memory"), default="hybrid",
                    help="cache-server --backend for both builds (default hybrid)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per target and round")
    ap.add_argument("--keys", type=int, default=1000, help="keys loadgen reads or writes (h2load uses one)")
    ap.add_argument("--tool", choices=("loadgen", "h2load"), default="loadgen",
                    help="load generator (default loadgen)")
    ap.add_argument("--json-out", help="also write every measurement to this JSON file")
    return ap.parse_args()


def main():
    common.set_program("ab-compare")
    args = parse_args()
    bins = common.release_bins(("loadgen", "baseline"))
    for path in (args.a, args.b):
        if not os.access(path, os.X_OK):
            die(f"{path} is not an executable (build it with `{common.BUILD_HINT}`)")
    common.need_tools("redis-server", "redis-cli", *(("h2load",) if args.tool == "h2load" else ()))
    reference = "constant" if args.mode == "memory" else "fred"
    loadgen = Loadgen(bins["loadgen"])
    env = common.server_env()

    tmp = tempfile.mkdtemp(prefix="ab-compare-")
    try:
        with Children(tmp) as children:
            redis_port, redis = common.start_redis(children)
            targets = {}
            port = common.free_port()
            targets[reference] = (port, children.start(
                reference, common.baseline_argv(bins["baseline"], reference, port, redis_port), env=env))
            for name, binary in (("A", args.a), ("B", args.b)):
                port = common.free_port()
                targets[name] = (port, children.start(
                    name, common.cache_server_argv(binary, args.mode, port, redis_port, metrics=False), env=env))
            for name, (port, _) in targets.items():
                if loadgen.wait_serving(port, "20s") is None:
                    die(f"{name} did not become SERVING:\n{children.log_tail(name)}")
                loadgen.prefill(port, keys=args.keys)
            samples = measure(args, targets, redis, loadgen, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summarize(args, reference, samples)


def measure(args, targets, redis, loadgen, tmp):
    names = list(targets)
    samples = {name: [] for name in names}
    frames = write_frames(tmp) if args.tool == "h2load" else None
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            port, proc = targets[name]
            before = (cpu_seconds(redis.pid), cpu_seconds(proc.pid), children_cpu_seconds(), idle_seconds(),
                      time.monotonic())
            if args.tool == "h2load":
                h = h2load(port, args.op, frames[args.op], args.seconds, WARMUP_S, tmp)
                rps, errors = h["rps"], ({"h2load": 1} if h["problems"] else {})
                for problem in h["problems"]:
                    print(f"ab-compare: {name} h2load {args.op}: {problem}", file=sys.stderr)
            else:
                report = loadgen.run(port, [
                    "--connections", "50", "--concurrency", "1", "--duration", f"{args.seconds}s",
                    "--warmup", f"{WARMUP_S}s", "--mix", f"{args.op}=100", "--keys", str(args.keys),
                    "--key-prefix", BENCH_KEY_PREFIX, "--value-size", "1024"])
                rps, errors = report["ops"][args.op]["rps"], report.get("errors", {})
            after = (cpu_seconds(redis.pid), cpu_seconds(proc.pid), children_cpu_seconds(), idle_seconds(),
                     time.monotonic())
            # CPU counters cover the warm-up too: divide by the calls of warm-up and measurement alike.
            calls = rps * (args.seconds + WARMUP_S)
            samples[name].append({
                "rps": rps,
                "redis_us": (after[0] - before[0]) / calls * 1e6,
                "server_us": (after[1] - before[1]) / calls * 1e6,
                "client_us": (after[2] - before[2]) / calls * 1e6,
                "idle_cores": (after[3] - before[3]) / (after[4] - before[4]),
                "errors": errors,
            })
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{n} {samples[n][-1]['rps']:,.0f}/s (redis {samples[n][-1]['redis_us']:.1f} us, "
            f"server {samples[n][-1]['server_us']:.1f} us, client {samples[n][-1]['client_us']:.1f} us, "
            f"idle {samples[n][-1]['idle_cores']:.2f})" for n in names), flush=True)
    return samples


def summarize(args, reference, samples):
    keys = "1 key" if args.tool == "h2load" else f"{args.keys} keys"
    print(f"\n{args.op}, {args.mode} mode, {args.tool} 50 x 1, {keys}, {args.rounds} rounds x "
          f"{args.seconds:g} s; medians; CPU per call from /proc")
    for name, s in samples.items():
        errors = {}
        for x in s:
            for code, n in x["errors"].items():
                errors[code] = errors.get(code, 0) + n
        print(f"  {name:8s} {statistics.median(x['rps'] for x in s):>9,.0f} calls/s   redis "
              f"{statistics.median(x['redis_us'] for x in s):5.1f} us   server "
              f"{statistics.median(x['server_us'] for x in s):5.1f} us   client "
              f"{statistics.median(x['client_us'] for x in s):5.1f} us   idle "
              f"{statistics.median(x['idle_cores'] for x in s):4.2f} cores   errors {errors or 'none'}")
    for num, den in (("A", reference), ("B", reference), ("B", "A")):
        ratios = [a["rps"] / b["rps"] for a, b in zip(samples[num], samples[den])]
        print(f"  {num}/{den}: median {statistics.median(ratios):.3f}  (rounds "
              f"{' '.join(f'{x:.2f}' for x in ratios)})")
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump({"args": vars(args), "samples": samples}, out, indent=1)
    if any(x["errors"] for s in samples.values() for x in s):
        die("some calls failed (see errors above)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
