"""The measurements of bench-compare, one method per section, sharing one private Redis and one set of child
processes. Each adds table rows, floors (name, passed, detail), correctness problems and raw results."""

import os
import time

from . import common
from . import loadgen as lg
from .common import die, log, run
from .h2load import CONNECTIONS, VALUE_SIZE, h2load, write_frames
from .loadgen import BENCH_KEY_PREFIX
from .report import med

SECTIONS = ["redis", "grpc", "plain", "batch", "large", "fill", "startup", "security"]

# Floors (issue 6): 2-core machine, loopback, 1 KiB values, 50 connections x 1 in-flight call, cache hits.
GET_FLOOR = 0.90
SET_FLOOR = 0.85
P99_CEILING = 1.5
LARGE_VALUE_MBPS_FLOOR = 200.0
RSS_FACTOR = 1.15
RSS_SLACK_MIB = 50
STARTUP_CEILING_MS = 200.0


def rss_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def redis_used_memory(port):
    out = run(["redis-cli", "-p", str(port), "info", "memory"]).stdout.decode()
    for line in out.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    die("INFO memory has no used_memory")


def redis_benchmark(port, requests):
    """One redis-benchmark run: {'set': {...}, 'get': {...}} with rps, p50 and p99 in ms."""
    out = run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-d", str(VALUE_SIZE),
               "-c", str(CONNECTIONS), "-n", str(requests), "-t", "get,set", "--csv"]).stdout.decode()
    rows = {}
    header = None
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if cells and cells[0] == "test":
            header = cells
        elif header and len(cells) == len(header):
            row = dict(zip(header, cells))
            rows[row["test"].lower()] = {
                "rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
                "p99_ms": float(row["p99_latency_ms"]), "mbps": float(row["rps"]) * VALUE_SIZE / 1e6,
            }
    if "get" not in rows or "set" not in rows:
        die(f"unexpected redis-benchmark output:\n{out}")
    return rows


def summarise(runs, **fields):
    """A table row: the given fields plus the medians of rps, MB/s, p50 and p99 over `runs`."""
    return {**fields, "runs": len(runs), "rps": med([x["rps"] for x in runs]), "mbps": med([x["mbps"] for x in runs]),
            "p50_ms": med([x["p50_ms"] for x in runs]), "p99_ms": med([x["p99_ms"] for x in runs])}


class Bench:
    def __init__(self, args, bins, loadgen, children, pairs):
        self.bins, self.loadgen, self.children, self.pairs = bins, loadgen, children, pairs
        quick = args.quick
        self.quick = quick
        self.rounds = args.rounds or (1 if quick else 3)
        self.seconds = args.duration or (1.0 if quick else 6.0)
        self.warmup = 0.5 if quick else 1.0
        self.grpc_rounds = args.grpc_rounds or (1 if quick else 8)
        self.grpc_seconds = args.grpc_duration or (1.0 if quick else 3.0)
        self.grpc_warmup = 0.5
        self.redis_requests = 20_000 if quick else 200_000
        self.fill_capacity_mb = 64 if quick else 256
        self.startup_repeats = 3 if quick else 5
        self.large_keys = 8 if quick else 64
        self.redis_port = None
        self.rows = []
        self.floors = []  # (name, passed, detail)
        self.correctness = []
        self.results = {"rounds": self.rounds, "seconds": self.seconds, "quick": quick}

    def floor(self, name, passed, detail):
        self.floors.append((name, bool(passed), detail))

    def problems(self, label, report, expect_hits):
        self.correctness += [f"{label}: {p}" for p in lg.problems(report, expect_hits)]

    def start_server(self, name, target, extra=()):
        """One gRPC server (cache-server in a mode, or a baseline) on a free port, SERVING."""
        last = ""
        for _ in range(5):
            port = common.free_port()
            proc = self.children.start(name, self.server_argv(target, port, extra), env=common.server_env())
            if self.loadgen.wait_serving(port) is not None and proc.poll() is None:
                return port, proc
            last = self.children.log_tail(name)
            self.children.stop(proc)
        die(f"{name} did not become SERVING:\n{last}")

    def server_argv(self, target, port, extra=()):
        if target in ("constant", "fred", "plain"):
            return common.baseline_argv(self.bins["baseline"], target, port, self.redis_port, VALUE_SIZE)
        return common.cache_server_argv(self.bins["cache-server"], target, port, self.redis_port, extra=extra)

    # --- redis-benchmark ------------------------------------------------------------------------------
    def redis_benchmark(self):
        rb_runs = [redis_benchmark(self.redis_port, self.redis_requests) for _ in range(self.rounds)]
        self.results["redis_benchmark"] = rb_runs
        for op in ("get", "set"):
            self.rows.append(summarise([r[op] for r in rb_runs], target="redis-server", tool="redis-benchmark",
                                       op=op, check="reference"))

    # --- the four gRPC servers, paired rounds ---------------------------------------------------------
    def grpc(self, targets):
        frames = write_frames(self.children.tmp)
        ports = {}
        for target in targets:
            ports[target], _ = self.start_server(target, target)
            # Store the keys the Gets read: 1000 for loadgen, including "bench-0" for the h2load frames.
            self.problems(f"{target} prefill", self.loadgen.prefill(ports[target]), False)
        log(f"servers up: {ports}")

        def measure(target, tool, op):
            if tool == "h2load":
                h = h2load(ports[target], op, frames[op], self.grpc_seconds, self.grpc_warmup, self.children.tmp)
                self.correctness += [f"{target} h2load {op}: {p}" for p in h["problems"]]
                return h
            report = self.loadgen.run(ports[target], [
                "--connections", str(CONNECTIONS), "--concurrency", "1", "--duration", f"{self.grpc_seconds}s",
                "--warmup", f"{self.grpc_warmup}s", "--mix", f"{op}=100", "--keys", "1000",
                "--key-prefix", BENCH_KEY_PREFIX, "--value-size", str(VALUE_SIZE)])
            self.problems(f"{target} loadgen {op}", report, op == "get")
            return lg.row(report)

        # Paired rounds: each target is measured right next to its baseline (the order alternating from
        # round to round), and its ratio is the median of the per-round ratios. The shared machine's speed
        # drifts by 10-20 % over tens of seconds; a baseline measured half a minute away from its target
        # (as the first version of this script did) put that drift straight into the ratio.
        samples = {}  # (target, tool, op) -> [row]
        ratios = {}  # (target, tool, op) -> [(throughput ratio, p99 ratio)] per round
        measured = [t for t in targets if t in self.pairs]
        for r in range(self.grpc_rounds):
            for target in measured:
                base_name = self.pairs[target]
                for op in ("set", "get"):
                    for tool in ("h2load", "loadgen"):
                        order = (base_name, target) if r % 2 == 0 else (target, base_name)
                        log(f"round {r + 1}/{self.grpc_rounds}: {order[0]} then {order[1]}, {op} ({tool})")
                        got = {}
                        for name in order:
                            got[name] = measure(name, tool, op)
                            samples.setdefault((name, tool, op), []).append(got[name])
                        ratios.setdefault((target, tool, op), []).append(
                            (got[target]["rps"] / got[base_name]["rps"],
                             got[target]["p99_ms"] / got[base_name]["p99_ms"]))
        self.results["grpc"] = {"|".join(k): v for k, v in samples.items()}
        self.results["grpc_ratios"] = {"|".join(k): v for k, v in ratios.items()}

        summary = {(t, tool, op): summarise(samples[(t, tool, op)], target=t, tool=tool, op=op)
                   for t in targets for tool in ("h2load", "loadgen") for op in ("get", "set")}
        for target in targets:
            for tool in ("h2load", "loadgen"):
                for op in ("get", "set"):
                    row = summary[(target, tool, op)]
                    if target in self.pairs:
                        self._ratio_row(row, ratios[(target, tool, op)], summary[(self.pairs[target], tool, op)])
                    else:
                        row["thr_ratio_text"], row["p99_ratio_text"] = "1.00", "1.00"
                        row["check"] = f"baseline of {[k for k, v in self.pairs.items() if v == target][0]}"
                    self.rows.append(row)
        for target in targets:
            self.children.stop(self.children.find(target))

    def _ratio_row(self, row, pairs_measured, base):
        target, tool, op = row["target"], row["tool"], row["op"]
        base_name = self.pairs[target]
        thr = med([x[0] for x in pairs_measured])
        p99 = med([x[1] for x in pairs_measured])
        need = GET_FLOOR if op == "get" else SET_FLOOR
        lo, hi = min(x[0] for x in pairs_measured), max(x[0] for x in pairs_measured)
        row["thr_ratio"], row["p99_ratio"], row["thr_ratio_range"] = thr, p99, (lo, hi)
        row["thr_ratio_text"], row["p99_ratio_text"] = f"{thr:.2f}", f"{p99:.2f}"
        ok = thr >= need and p99 <= P99_CEILING
        row["check"] = f"{'ok' if ok else 'MISS'} (>= {need:.2f}x, p99 <= {P99_CEILING}x)"
        self.floor(f"{target} {op} vs {base_name} ({tool}): throughput >= {need:.2f}x", thr >= need,
                   f"{thr:.2f}x, median of {len(pairs_measured)} paired rounds (each {lo:.2f}..{hi:.2f}; "
                   f"medians {row['rps']:,.0f} vs {base['rps']:,.0f} req/s)")
        self.floor(f"{target} {op} vs {base_name} ({tool}): p99 <= {P99_CEILING}x", p99 <= P99_CEILING,
                   f"{p99:.2f}x ({row['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms)")

    # --- 1 MiB JSON-like values -----------------------------------------------------------------------
    def large_values(self):
        large = {}
        for target in ("memory", "hybrid"):
            port, proc = self.start_server(f"{target}-large", target)
            before = redis_used_memory(self.redis_port)
            prefill = self.loadgen.run(port, [
                "--connections", "8", "--concurrency", "1", "--keys", str(self.large_keys), "--key-prefix",
                "large", "--value-size", "1m", "--compressible", "--prefill", "--requests", "0"])
            self.problems(f"{target} 1 MiB prefill", prefill, False)
            if target == "hybrid":
                per_byte = (redis_used_memory(self.redis_port) - before) / (self.large_keys * (1 << 20))
                self.results["redis_memory_per_logical_byte"] = per_byte
            for op in ("set", "get"):
                runs = []
                for _ in range(self.rounds):
                    report = self.loadgen.run(port, [
                        "--connections", "16", "--concurrency", "1", "--duration", f"{self.seconds}s",
                        "--warmup", f"{self.warmup}s", "--mix", f"{op}=100", "--keys", str(self.large_keys),
                        "--key-prefix", "large", "--value-size", "1m", "--compressible"])
                    self.problems(f"{target} 1 MiB {op}", report, op == "get")
                    runs.append(lg.row(report))
                row = summarise(runs, target=target, tool="loadgen", op=f"{op} 1MiB json")
                ok = row["mbps"] >= LARGE_VALUE_MBPS_FLOOR
                row["check"] = f"{'ok' if ok else 'MISS'} (>= {LARGE_VALUE_MBPS_FLOOR:.0f} MB/s)"
                self.floor(f"{target} {op} 1 MiB JSON: >= {LARGE_VALUE_MBPS_FLOOR:.0f} MB/s logical", ok,
                           f"{row['mbps']:.0f} MB/s")
                large[(target, op)] = row
                self.rows.append(row)
            self.children.stop(proc)
        self.results["large"] = {"|".join(k): v for k, v in large.items()}

    # --- memory tier filled to twice its capacity -----------------------------------------------------
    def fill(self):
        cap_mb = self.fill_capacity_mb
        cap = cap_mb << 20
        fill_flags = ["--max-size-mb", str(cap_mb)]
        if self.quick:
            # The server wants capacity >= 1.125 x the largest value: keep the small quick fill valid.
            fill_flags += ["--max-value-bytes", str(16 << 20)]
        port, proc = self.start_server("memory-fill", "memory", fill_flags)
        fill = self.loadgen.run(port, [
            "--connections", "4", "--concurrency", "2", "--mix", "set=100", "--keys", "1000000",
            "--key-prefix", "fill", "--value-size", "1k..8m", "--max-bytes", str(2 * cap), "--server-metrics"])
        self.problems("memory fill", fill, False)
        # One call in flight: a Set that answered stored=true must be readable right after it.
        raw = self.loadgen.run(port, [
            "--connections", "1", "--concurrency", "1", "--mix", "set=100", "--keys", "1000000",
            "--key-prefix", "raw", "--value-size", "1k..8m", "--max-bytes", str(cap // 2),
            "--read-after-write", "--server-metrics"])
        mem = rss_kib(proc.pid)
        server = raw.get("server") or {}
        rss_mib, hwm_mib = mem["VmRSS"] / 1024, mem["VmHWM"] / 1024
        limit_mib = RSS_FACTOR * cap_mb + RSS_SLACK_MIB
        rejected = server.get("memory_rejected")
        held_mib = (server.get("memory_cache_size") or 0) / (1 << 20)
        self.results["fill"] = {"capacity_mib": cap_mb, "rss_mib": rss_mib, "peak_rss_mib": hwm_mib,
                                "limit_mib": limit_mib, "memory_rejected": rejected, "held_mib": held_mib,
                                "dropped": raw["dropped"], "fill": fill, "read_after_write": raw}
        self.floor(f"memory tier {cap_mb} MiB filled to 2x with 1 KiB..8 MiB: RSS <= "
                   f"{RSS_FACTOR} x capacity + {RSS_SLACK_MIB} MiB", rss_mib <= limit_mib,
                   f"RSS {rss_mib:.0f} MiB (peak {hwm_mib:.0f}) vs limit {limit_mib:.0f} MiB; "
                   f"tier holds {held_mib:.0f} MiB")
        self.floor("no value below the maximum size silently dropped on insert",
                   rejected == 0 and raw["dropped"] == 0 and not raw["error_count"] and not fill["error_count"],
                   f"memory_rejected={rejected}, unreadable right after Set={raw['dropped']} of "
                   f"{raw['calls']}, errors={fill['errors'] or raw['errors'] or 'none'}")
        self.problems("memory read-after-write", raw, False)
        self.children.stop(proc)

    # --- against the plainest tonic server ------------------------------------------------------------
    def plain(self):
        """Memory-mode Get and Set against `baseline --mode plain` (tonic with default settings, a prebuilt
        GetResponse of the same encoded size as cache-server's 1 KiB hit), h2load, paired alternating rounds.
        Floors (issue: per-call overhead): Get >= 0.95x, p99 <= 1.2x."""
        frames = write_frames(self.children.tmp)
        ports = {}
        for target in ("plain", "memory"):
            ports[target], _ = self.start_server(f"{target}-vs-plain", target)
            h2load(ports[target], "set", frames["set"], 0.3, 0.1, self.children.tmp)
        for op in ("get", "set"):
            samples, ratios = {"plain": [], "memory": []}, []
            for r in range(self.grpc_rounds):
                order = ("plain", "memory") if r % 2 == 0 else ("memory", "plain")
                got = {}
                for name in order:
                    got[name] = h2load(ports[name], op, frames[op], self.grpc_seconds, self.grpc_warmup,
                                       self.children.tmp)
                    self.correctness += [f"{name} h2load {op} (vs plain): {p}" for p in got[name]["problems"]]
                    samples[name].append(got[name])
                ratios.append((got["memory"]["rps"] / got["plain"]["rps"],
                               got["memory"]["p99_ms"] / got["plain"]["p99_ms"]))
            thr, p99 = med([x[0] for x in ratios]), med([x[1] for x in ratios])
            base = summarise(samples["plain"], target="plain", tool="h2load", op=op, check="plain baseline")
            base["thr_ratio_text"], base["p99_ratio_text"] = "1.00", "1.00"
            row = summarise(samples["memory"], target="memory vs plain", tool="h2load", op=op)
            row["thr_ratio_text"], row["p99_ratio_text"] = f"{thr:.2f}", f"{p99:.2f}"
            if op == "get":
                ok = thr >= 0.95 and p99 <= 1.2
                row["check"] = f"{'ok' if ok else 'MISS'} (>= 0.95x, p99 <= 1.2x)"
                self.floor("memory get vs plain tonic (h2load): throughput >= 0.95x", thr >= 0.95,
                           f"{thr:.2f}x, median of {len(ratios)} paired rounds")
                self.floor("memory get vs plain tonic (h2load): p99 <= 1.2x", p99 <= 1.2, f"{p99:.2f}x")
            else:
                row["check"] = "reference (plain Set stores nothing)"
            self.rows += [base, row]
            self.results[f"plain_{op}"] = {"thr_ratio": thr, "p99_ratio": p99}
        for target in ("plain", "memory"):
            self.children.stop(self.children.find(f"{target}-vs-plain"))

    # --- batches --------------------------------------------------------------------------------------
    def batch(self):
        """Hybrid GetMany / SetMany of 100 keys against single Gets / Sets, keys per second, with the load
        generator (50 connections x 1 in flight, 1 KiB values). Floors: GetMany >= 15x, SetMany >= 10x."""
        port, _ = self.start_server("hybrid-batch", "hybrid")
        self.problems("hybrid-batch prefill", self.loadgen.prefill(port), False)
        keys_per_s = {}
        for op in ("get", "set"):
            for batch in (1, 100):
                runs = []
                for _ in range(self.rounds):
                    report = self.loadgen.run(port, [
                        "--connections", str(CONNECTIONS), "--concurrency", "1", "--duration", f"{self.seconds}s",
                        "--warmup", f"{self.warmup}s", "--mix", f"{op}=100", "--keys", "1000",
                        "--key-prefix", BENCH_KEY_PREFIX, "--value-size", str(VALUE_SIZE),
                        "--batch", str(batch)])
                    self.problems(f"hybrid {op} batch {batch}", report, op == "get")
                    runs.append(lg.row(report))
                row = summarise(runs, target=f"hybrid x{batch}", tool="loadgen",
                                op=("getmany" if op == "get" else "setmany") if batch > 1 else op,
                                check=f"{batch} keys per call")
                keys_per_s[(op, batch)] = row["rps"] * batch
                self.rows.append(row)
        for op, floor in (("get", 15.0), ("set", 10.0)):
            gain = keys_per_s[(op, 100)] / keys_per_s[(op, 1)]
            self.results[f"batch_{op}_gain"] = gain
            name = "GetMany" if op == "get" else "SetMany"
            self.floor(f"hybrid {name}(100) keys/s >= {floor:.0f}x single {op.title()}s", gain >= floor,
                       f"{gain:.1f}x ({keys_per_s[(op, 100)]:,.0f} vs {keys_per_s[(op, 1)]:,.0f} keys/s)")
        self.children.stop(self.children.find("hybrid-batch"))

    # --- tokens and TLS on the Get path -------------------------------------------------------------------
    def security(self):
        """Memory-mode Get with h2load three ways, in alternating rounds: plaintext without a tokens file,
        plaintext with a token, TLS with a token. Floor: TLS + token >= 0.8x plaintext."""
        import hashlib
        token = "bench-token-0123456789abcdef"
        tmp = self.children.tmp
        tokens = os.path.join(tmp, "bench-tokens.toml")
        with open(tokens, "w") as f:
            f.write(f'[[token]]\nname = "bench"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                    f'tenant = "bench"\nscopes = ["read", "write"]\n')
        os.chmod(tokens, 0o600)
        cert, key = os.path.join(tmp, "bench-tls.pem"), os.path.join(tmp, "bench-tls.key")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert], timeout=60)
        auth = ("authorization: Bearer " + token,)
        variants = {
            "memory": ((), "http", ()),
            "memory+token": (("--auth-tokens-file", tokens), "http", auth),
            "memory+tls+token": (("--auth-tokens-file", tokens, "--tls-cert", cert, "--tls-key", key), "https", auth),
        }
        frames = write_frames(tmp)
        ports = {}
        for name, (extra, scheme, headers) in variants.items():
            port = common.free_port()
            argv = common.cache_server_argv(self.bins["cache-server"], "memory", port, extra=extra)
            self.children.start(name, argv, env=common.server_env())
            common.wait_port(port)
            # The Gets read "bench-0": store it through the same path.
            h2load(port, "set", frames["set"], 0.3, 0.1, tmp, scheme, headers)
            ports[name] = (port, scheme, headers)
        runs = {name: [] for name in variants}
        for _ in range(self.grpc_rounds):
            for name, (port, scheme, headers) in ports.items():
                h = h2load(port, "get", frames["get"], self.grpc_seconds, self.grpc_warmup, tmp, scheme, headers)
                self.correctness += [f"{name} h2load get: {p}" for p in h["problems"]]
                runs[name].append(h)
        for name, rs in runs.items():
            self.rows.append(summarise(rs, target=name, tool="h2load", op="get", check="auth"))
        ratio = med([t["rps"] / p["rps"] for t, p in zip(runs["memory+tls+token"], runs["memory"])])
        token_ratio = med([t["rps"] / p["rps"] for t, p in zip(runs["memory+token"], runs["memory"])])
        self.results["security"] = {"tls_token_vs_plain": ratio, "token_vs_plain": token_ratio}
        self.floor("TLS + token Get >= 0.8x plaintext Get (memory, h2load)", ratio >= 0.8,
                   f"{ratio:.2f}x (token alone {token_ratio:.2f}x)")

    # --- start to SERVING -----------------------------------------------------------------------------
    def startup(self):
        startups = []
        for i in range(self.startup_repeats):
            port = common.free_port()
            t0 = time.time_ns()
            proc = self.children.start(f"startup-{i}", self.server_argv("memory", port), env=common.server_env())
            seen = self.loadgen.wait_serving(port, "5s")
            if seen is not None:
                startups.append((seen["serving_unix_ns"] - t0) / 1e6)
            self.children.stop(proc)
        startup_ms = med(startups) if startups else float("inf")
        self.results["startup_ms"] = startups
        self.floor(f"memory mode start to SERVING < {STARTUP_CEILING_MS:.0f} ms", startup_ms < STARTUP_CEILING_MS,
                   f"median {startup_ms:.1f} ms of {['%.1f' % s for s in startups]}")

    def notes(self):
        """The results that are not table rows, one sentence each."""
        out = []
        if "redis_memory_per_logical_byte" in self.results:
            out.append(f"Redis memory per logical byte (1 MiB JSON-like values, hybrid, zstd at rest): "
                       f"{self.results['redis_memory_per_logical_byte']:.3f}")
        if "fill" in self.results:
            f = self.results["fill"]
            out.append(f"Memory tier {f['capacity_mib']} MiB after 2x fill: RSS {f['rss_mib']:.0f} MiB "
                       f"(peak {f['peak_rss_mib']:.0f}), tier holds {f['held_mib']:.0f} MiB, memory_rejected "
                       f"{f['memory_rejected']}, unreadable right after Set {f['dropped']}")
        if "startup_ms" in self.results:
            out.append(f"Start to SERVING (memory mode): {['%.1f ms' % s for s in self.results['startup_ms']]}")
        return out

