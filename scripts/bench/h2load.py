"""h2load as a gRPC load generator: pre-encoded unary Get/Set frames (1 KiB value, key "bench-0") and a runner
that reads h2load's summary and per-request log.

h2load only sees HTTP status (a gRPC error is HTTP 200 too), so the runner checks what it can: no failed,
errored or timed-out request, every answer 2xx, and for Gets at least a value's worth of DATA per answer (a
miss or a gRPC error carries trailers only). Correctness beyond that is the load generator's job.
"""

import os
import struct

from .common import die, run
from .loadgen import BENCH_KEY_PREFIX

CONNECTIONS = 50
VALUE_SIZE = 1024


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def grpc_frame(message):
    """5-byte gRPC prefix (not compressed, big-endian length) + the protobuf message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def cache_key(key_id):
    # CacheKey { type = CACHE_TYPE_METADATA (2), id }
    return varint(1 << 3 | 0) + varint(2) + field_bytes(2, key_id.encode())


def write_frames(tmp):
    """Writes get.bin and set.bin into tmp; {op: path}."""
    key = cache_key(f"{BENCH_KEY_PREFIX}-0")
    value = bytes((i * 31 + 7) % 251 for i in range(VALUE_SIZE))
    frames = {
        "get": grpc_frame(field_bytes(1, key)),                              # GetRequest { key }
        "set": grpc_frame(field_bytes(1, key) + field_bytes(2, value)),     # SetRequest { key, value }
    }
    paths = {}
    for op, frame in frames.items():
        paths[op] = os.path.join(tmp, f"{op}.bin")
        with open(paths[op], "wb") as f:
            f.write(frame)
    return paths


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def h2load(port, op, frame, seconds, warmup, tmp, scheme="http", headers=()):
    """One h2load run, CONNECTIONS x 1 in flight: rps, p50_ms, p99_ms, mbps and `problems` (a list). `scheme`
    https speaks TLS (h2load does not verify the certificate); `headers` are added to every request."""
    log_path = os.path.join(tmp, "h2load-requests.tsv")
    if os.path.exists(log_path):
        os.remove(log_path)
    method = "Get" if op == "get" else "Set"
    out = run(["h2load", "-c", str(CONNECTIONS), "-m", "1", "-t", "2", "-D", f"{int(seconds * 1000)}ms",
               "--warm-up-time", f"{int(warmup * 1000)}ms", "-d", frame,
               "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", log_path,
               *[a for h in headers for a in ("-H", h)],
               f"{scheme}://127.0.0.1:{port}/cache.v1.CacheService/{method}"],
              timeout=seconds + warmup + 120).stdout.decode()
    result = {"rps": None, "failed": 0, "errored": 0, "timeout": 0, "total": 0, "data_bytes": 0}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            result["rps"] = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            for p in line[len("requests:"):].split(","):
                n, word = p.split()[:2]
                if word in ("total", "failed", "errored", "timeout"):
                    result[word] = int(n)
        elif line.startswith("status codes:"):
            # "N 2xx, N 3xx, N 4xx, N 5xx". h2load's class counters are not exact at the warm-up and end
            # boundaries (2xx can differ from "total" by one), so check that no answer was outside 2xx.
            for part in line.split(":", 1)[1].split(","):
                n, klass = part.split()[:2]
                result[f"http_{klass}"] = int(n)
        elif line.startswith("traffic:"):
            # "... 58.21MB (61040000) data": the last parenthesised number is the DATA frame bytes.
            result["data_bytes"] = int(line.rsplit("(", 1)[1].split(")")[0])
    if result["rps"] is None:
        die(f"unexpected h2load output:\n{out}")
    latencies = []
    with open(log_path) as f:
        for line in f:
            cells = line.split("\t")
            if len(cells) >= 3:
                latencies.append(int(cells[2]))
    latencies.sort()
    result["p50_ms"] = percentile(latencies, 0.50) / 1000
    result["p99_ms"] = percentile(latencies, 0.99) / 1000
    result["mbps"] = result["rps"] * VALUE_SIZE / 1e6
    problems = []
    if result["failed"] or result["errored"] or result["timeout"]:
        problems.append(f"{result['failed']} failed, {result['errored']} errored, {result['timeout']} timed out")
    not_2xx = sum(result.get(f"http_{k}", 0) for k in ("3xx", "4xx", "5xx"))
    if not_2xx:
        problems.append(f"{not_2xx} answers were not HTTP 2xx")
    if op == "get" and result["total"] and result["data_bytes"] < result["total"] * VALUE_SIZE:
        problems.append(f"{result['data_bytes'] / result['total']:.0f} data bytes per Get answer: not hits")
    result["problems"] = problems
    return result
