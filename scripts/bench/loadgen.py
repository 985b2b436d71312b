"""Driving servers with our load generator (tests/src/bin/loadgen/, `--json`): runs, the prefill of the keys
the Gets read, waiting for SERVING, and the correctness problems a report shows."""

import subprocess

from .common import die, last_json_line, run

BENCH_KEY_PREFIX = "bench"  # h2load frames use key id "bench-0", which the prefill below stores.


class Loadgen:
    def __init__(self, binary):
        self.binary = binary

    def run(self, port, extra, timeout=900):
        """One loadgen run against 127.0.0.1:port; its JSON report. Dies if loadgen fails."""
        p = run([self.binary, "--addr", f"127.0.0.1:{port}", "--json", *extra], timeout=timeout, check=False)
        if p.returncode != 0:
            die(f"loadgen {' '.join(extra)} against :{port} failed:\n{p.stderr.decode(errors='replace')[-3000:]}")
        return last_json_line(p.stdout)

    def wait_serving(self, port, within="10s"):
        """The report of `--wait-serving` (with `serving_unix_ns`), or None if the server did not get there."""
        try:
            p = run([self.binary, "--addr", f"127.0.0.1:{port}", "--wait-serving", within, "--json"],
                    timeout=120, check=False)
        except subprocess.TimeoutExpired:
            return None
        if p.returncode != 0:
            return None
        return last_json_line(p.stdout)

    def prefill(self, port, keys=1000, value_size=1024, prefix=BENCH_KEY_PREFIX):
        """Stores the keys the Get measurements read."""
        return self.run(port, ["--connections", "8", "--concurrency", "4", "--keys", str(keys),
                               "--key-prefix", prefix, "--value-size", str(value_size), "--prefill",
                               "--requests", "0"])


def problems(report, expect_hits):
    """Correctness problems of one report: errors, misses where hits were expected, wrong sizes, drops."""
    found = []
    if report["error_count"]:
        found.append(f"errors {report['errors']}")
    if expect_hits and report.get("hit_ratio") is not None and report["hit_ratio"] < 1.0:
        found.append(f"hit ratio {report['hit_ratio']:.4f}")
    for field in ("wrong_size", "dropped", "not_stored"):
        if report.get(field):
            found.append(f"{field} {report[field]}")
    prefill = report.get("prefill")
    if prefill and prefill.get("errors"):
        found.append(f"prefill errors {prefill['errors']}")
    return found


def row(report):
    """The table's view of one report: req/s, MB/s, p50 and p99 in ms."""
    lat = report["latency_us"] or {}
    return {"rps": report["rps"], "mbps": report["mbps"], "p50_ms": lat.get("p50", float("nan")) / 1000,
            "p99_ms": lat.get("p99", float("nan")) / 1000, "hit_ratio": report.get("hit_ratio"),
            "errors": report["errors"]}
