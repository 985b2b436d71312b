"""The Python half of scripts/smoke-grpcurl.sh: JSON assertions on grpcurl's answers and the small helpers
bash lacks. Standard library only.

    PYTHONPATH=scripts python3 -m checks.grpcurl_json COMMAND ...

    assert FILE CODE [ARG...]  runs CODE with `r` bound to the JSON document in FILE (an empty file is {}),
                               `args` to the ARGs, and eq / fail / get / b64 / json at hand; exit 1 on a
                               mismatch, with what differs on stderr
    found FILE                 exit 0 if the GetResponse in FILE has found = true, else 1
    b64 FILE                   FILE's bytes in standard base64, on one line
    free-port                  a free loopback port (never 6379)
    scrape PORT                GETs http://127.0.0.1:PORT/metrics and checks cache_ metrics are there
    large-value FILE           writes a compressible ~2 MiB JSON building-model export to FILE
"""

import base64
import json
import sys
import urllib.request

from bench.common import free_port


class Mismatch(Exception):
    pass


def fail(msg):
    raise Mismatch(msg)


def eq(actual, expected, what):
    if actual != expected:
        fail(f"{what}: expected {expected!r}, got {actual!r}")


def get(obj, *path):
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return None
        obj = obj[p]
    return obj


def b64(s):
    return base64.b64decode(s or "")


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        print(f"  not JSON ({e}): {raw[:300]!r}", file=sys.stderr)
        sys.exit(1)


def cmd_assert(path, code, *args):
    scope = {"r": load(path), "args": list(args), "eq": eq, "fail": fail, "get": get, "b64": b64, "json": json}
    try:
        exec(code, scope)
    except Mismatch as e:
        print(f"  mismatch: {e}", file=sys.stderr)
        sys.exit(1)


def cmd_found(path):
    sys.exit(0 if load(path).get("found") else 1)


def cmd_b64(path):
    with open(path, "rb") as f:
        print(base64.b64encode(f.read()).decode())


def cmd_free_port():
    print(free_port())


def cmd_scrape(port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for needle in ('cache_info{mode="memory"} 1', "# TYPE cache_request_duration_seconds histogram",
                   "cache_memory_capacity_bytes"):
        if needle not in body:
            print(f"  {needle!r} missing from /metrics", file=sys.stderr)
            sys.exit(1)


def element(i):
    """One element of a building model export: many similar ones, so the export compresses well."""
    return {"id": f"elem-{i:06d}", "type": ["IfcWall", "IfcSlab", "IfcDoor", "IfcWindow"][i % 4],
            "storey": i % 12, "material": f"concrete-C{20 + i % 5}/{25 + i % 5}",
            "bbox": [i % 100, (i * 7) % 50, 0, i % 100 + 3, (i * 7) % 50 + 1, 3],
            "props": {"loadBearing": i % 3 == 0, "fireRating": f"F{30 * (1 + i % 4)}"}}


def cmd_large_value(path):
    parts, size, i = [], 0, 0
    while size < 2 * 1024 * 1024:
        s = json.dumps(element(i), separators=(",", ":"))
        parts.append(s)
        size += len(s) + 1
        i += 1
    with open(path, "wb") as f:
        f.write(('{"model":"smoke-building","elements":[' + ",".join(parts) + "]}").encode())


COMMANDS = {"assert": cmd_assert, "found": cmd_found, "b64": cmd_b64, "free-port": cmd_free_port,
            "scrape": cmd_scrape, "large-value": cmd_large_value}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
