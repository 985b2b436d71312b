#!/usr/bin/env python3
"""Python interop: a client generated from proto/ alone (grpcio-tools) calls a real cache-server.

This is how another backend service calls the cache:

    python3 -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT proto/cache/v1/cache.proto

then `from cache.v1 import cache_pb2, cache_pb2_grpc` with OUT on sys.path, and a channel whose message limits
match the server's maximum value (64 MiB by default) plus 1 MiB of overhead:

    grpc.insecure_channel(addr, options=[
        ("grpc.max_receive_message_length", 65 << 20),  # grpcio refuses responses above 4 MiB by default
        ("grpc.max_send_message_length", 65 << 20),     # unlimited by default; set it to fail fast locally
    ])

Without the receive option, a Get of a value above 4 MiB fails on the client with RESOURCE_EXHAUSTED
("Received message larger than max"), although the server stored and sent it: test_large_value_* shows both.

Usage: python3 tests/python/test_interop.py   (CACHE_SERVER_BIN: the server binary, default
target/release/cache-server). Prints "N passed, M failed"; exits non-zero on any failure.
"""

import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

try:
    import grpc
    from google.protobuf import struct_pb2
except ImportError as e:  # fail loudly: never skip
    sys.exit(f"test_interop.py: {e}; install the Python gRPC tools with: pip install grpcio grpcio-tools")

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
# The server's default largest value (64 MiB) + 1 MiB for the key, metadata and framing.
MAX_MESSAGE_BYTES = 65 * MIB
# Loopback calls must not go through an HTTP proxy from the environment.
NO_PROXY = [("grpc.enable_http_proxy", 0)]
LARGE_MESSAGES = NO_PROXY + [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
READY_TIMEOUT_S = 10
DEADLINE_S = 10

pb = None  # cache.v1.cache_pb2, generated at start
pb_grpc = None  # cache.v1.cache_pb2_grpc


def generate_stubs(out_dir):
    """Runs grpcio-tools' protoc on proto/ and imports the generated modules."""
    global pb, pb_grpc
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "proto/cache/v1/cache.proto",
        ],
        cwd=ROOT,
        check=True,
    )
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("cache.v1.cache_pb2")
    pb_grpc = importlib.import_module("cache.v1.cache_pb2_grpc")
    assert Path(pb.__file__).is_relative_to(out_dir), f"imported {pb.__file__}, not the generated module"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_check(channel):
    """grpc.health.v1.Health/Check for cache.v1.CacheService, hand-encoded (no extra package needed):
    HealthCheckRequest{service = 1: string}; HealthCheckResponse{status = 1: enum}, SERVING = 1."""
    service = b"cache.v1.CacheService"
    request = b"\x0a" + bytes([len(service)]) + service
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    return check(request, timeout=1) == b"\x08\x01"


class Server:
    """A cache-server child process (memory backend) on a free loopback port."""

    def __init__(self, log_dir):
        self.binary = os.environ.get("CACHE_SERVER_BIN", str(ROOT / "target" / "release" / "cache-server"))
        if not os.access(self.binary, os.X_OK):
            sys.exit(f"test_interop.py: {self.binary} not found; build it with: cargo build --release -p cache-server")
        self.log_path = Path(log_dir) / "cache-server.log"
        self.proc = None
        self.addr = None

    def start(self):
        for _ in range(5):  # a free port can be taken before the server binds it: try another
            port = free_port()
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "--backend", "memory", "--listen", f"127.0.0.1:{port}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.addr = f"127.0.0.1:{port}"
            if self.wait_serving():
                return
            self.stop()
        raise RuntimeError(f"cache-server did not become healthy; log:\n{self.log()}")

    def wait_serving(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        with grpc.insecure_channel(self.addr, options=NO_PROXY) as channel:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if health_check(channel):
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        return False

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def key(cache_type, id_, **fields):
    return pb.CacheKey(type=cache_type, id=id_, **fields)


def options(mapping):
    s = struct_pb2.Struct()
    s.update(mapping)
    return s


def expect_error(code, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


# ---------------------------------------------------------------------------------------------------------------
# Tests: each takes the server's address
# ---------------------------------------------------------------------------------------------------------------


def test_set_get_and_miss(addr):
    with grpc.insecure_channel(addr, options=LARGE_MESSAGES) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        k = key(pb.CACHE_TYPE_METADATA, "py-model-1", user_id="alice")
        value = b'{"name": "Office tower", "elements": 18250}'
        set_reply = stub.Set(
            pb.SetRequest(key=k, value=value, content_type="application/json", metadata={"source": "python"}),
            timeout=DEADLINE_S,
        )
        assert set_reply.stored
        assert set_reply.entry.key == "cache:default:metadata:py-model-1:user:alice", set_reply.entry.key

        got = stub.Get(pb.GetRequest(key=k), timeout=DEADLINE_S)
        assert got.found
        assert got.value == value
        assert got.entry.content_type == "application/json"
        assert dict(got.entry.metadata) == {"source": "python"}
        assert got.entry.type == pb.CACHE_TYPE_METADATA
        assert got.entry.expires_at.seconds - got.entry.created_at.seconds == 3600, "metadata's default TTL"

        miss = stub.Get(pb.GetRequest(key=key(pb.CACHE_TYPE_METADATA, "py-model-1")), timeout=DEADLINE_S)
        assert not miss.found, "another scope is another entry: a miss, not an error"
        assert miss.value == b""


def test_export_options_in_any_order_and_model_hash(addr):
    with grpc.insecure_channel(addr, options=LARGE_MESSAGES) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        written = key(
            pb.CACHE_TYPE_EXPORT_RESULT,
            "py-model-2",
            format="ifc",
            options=options({"schema": "IFC4", "precision": 3, "geometry": {"tessellate": True}}),
            project_id="p-1",
        )
        stub.Set(pb.SetRequest(key=written, value=b"ISO-10303-21;", model_hash="v1"), timeout=DEADLINE_S)
        read = key(
            pb.CACHE_TYPE_EXPORT_RESULT,
            "py-model-2",
            format="ifc",
            options=options({"geometry": {"tessellate": True}, "precision": 3.0, "schema": "IFC4"}),
            project_id="p-1",
        )
        got = stub.Get(pb.GetRequest(key=read, model_hash="v1"), timeout=DEADLINE_S)
        assert got.found and got.value == b"ISO-10303-21;"
        assert got.entry.model_hash == "v1"
        assert got.entry.export_options["schema"] == "IFC4"
        stale = stub.Get(pb.GetRequest(key=read, model_hash="v2"), timeout=DEADLINE_S)
        assert not stale.found, "another model version is a miss"


def test_invalid_argument_names_the_field(addr):
    with grpc.insecure_channel(addr, options=LARGE_MESSAGES) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        err = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, stub.Get, pb.GetRequest(key=key(pb.CACHE_TYPE_METADATA, "")), timeout=DEADLINE_S
        )
        assert err.details().startswith("key.id:"), err.details()
        err = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.Set,
            pb.SetRequest(key=key(pb.CACHE_TYPE_USER_PREFERENCE, "theme"), value=b"dark"),
            timeout=DEADLINE_S,
        )
        assert err.details().startswith("key.user_id:"), err.details()


def test_invalidate_key_selector_pattern_all(addr):
    with grpc.insecure_channel(addr, options=LARGE_MESSAGES) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        stub.Invalidate(pb.InvalidateRequest(all=True), timeout=DEADLINE_S)
        entries = [
            key(pb.CACHE_TYPE_METADATA, "py-3"),
            key(pb.CACHE_TYPE_OBJECT_INFO, "py-3"),
            key(pb.CACHE_TYPE_EXPORT_RESULT, "py-3", format="json"),
            key(pb.CACHE_TYPE_EXPORT_RESULT, "py-3", format="svg", user_id="bob"),
            key(pb.CACHE_TYPE_SYSTEM_CONFIG, "flags"),
            key(pb.CACHE_TYPE_USER_PREFERENCE, "theme", user_id="bob"),
        ]
        populate = lambda: stub.SetMany(  # noqa: E731
            pb.SetManyRequest(requests=[pb.SetRequest(key=k, value=b"1") for k in entries]), timeout=DEADLINE_S
        )
        populate()

        one = stub.Invalidate(pb.InvalidateRequest(key=entries[0]), timeout=DEADLINE_S)
        assert one.invalidated == 1
        assert not stub.Get(pb.GetRequest(key=entries[0]), timeout=DEADLINE_S).found
        by_object = stub.Invalidate(pb.InvalidateRequest(selector=pb.Selector(object_id="py-3")), timeout=DEADLINE_S)
        assert by_object.invalidated == 3, by_object  # object info and both exports
        by_user = stub.Invalidate(pb.InvalidateRequest(selector=pb.Selector(user_id="bob")), timeout=DEADLINE_S)
        assert by_user.invalidated == 1, by_user  # the preference (bob's export went with the object)

        populate()
        by_pattern = stub.Invalidate(pb.InvalidateRequest(pattern="export_result:py-3:*"), timeout=DEADLINE_S)
        assert by_pattern.invalidated == 2, by_pattern
        everything = stub.Invalidate(pb.InvalidateRequest(all=True), timeout=DEADLINE_S)
        assert everything.invalidated == 4, everything

        answers = stub.GetMany(pb.GetManyRequest(requests=[pb.GetRequest(key=k) for k in entries]), timeout=DEADLINE_S)
        assert [a.found for a in answers.responses] == [False] * len(entries)


def test_metrics(addr):
    with grpc.insecure_channel(addr, options=LARGE_MESSAGES) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        k = key(pb.CACHE_TYPE_OBJECT_INFO, "py-metrics")
        stub.Set(pb.SetRequest(key=k, value=b"{}"), timeout=DEADLINE_S)
        stub.Get(pb.GetRequest(key=k), timeout=DEADLINE_S)
        stub.Get(pb.GetRequest(key=key(pb.CACHE_TYPE_OBJECT_INFO, "py-metrics-missing")), timeout=DEADLINE_S)
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.Get, pb.GetRequest(key=pb.CacheKey()), timeout=DEADLINE_S)
        m = stub.Metrics(pb.MetricsRequest(), timeout=DEADLINE_S)
        assert m.mode == "memory"
        assert m.set_count >= 1
        assert m.metrics.hit_count >= 1 and m.metrics.miss_count >= 1
        assert 0.0 < m.metrics.hit_rate < 1.0
        assert m.metrics.total_entries >= 1
        rows = {row.type: row for row in m.by_type}
        assert rows[pb.CACHE_TYPE_OBJECT_INFO].sets >= 1
        assert rows[pb.CACHE_TYPE_OBJECT_INFO].hits >= 1
        assert m.errors_by_code["INVALID_ARGUMENT"] >= 1, dict(m.errors_by_code)


def test_large_value_needs_raised_message_limits(addr):
    value = os.urandom(6 * MIB)  # incompressible, above grpcio's 4 MiB default receive limit
    k = key(pb.CACHE_TYPE_EXPORT_RESULT, "py-large", format="bin")

    # With the limits raised to the server's maximum value + 1 MiB, a 6 MiB value round-trips.
    with grpc.insecure_channel(addr, options=LARGE_MESSAGES) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        set_reply = stub.Set(pb.SetRequest(key=k, value=value), timeout=DEADLINE_S)
        assert set_reply.stored and set_reply.entry.size_bytes == len(value)
        got = stub.Get(pb.GetRequest(key=k), timeout=DEADLINE_S)
        assert got.found and got.value == value

    # With grpcio's defaults the response is refused by the client itself (receive limit 4 MiB):
    # RESOURCE_EXHAUSTED although the server found and sent the value. Metadata-only reads still work.
    with grpc.insecure_channel(addr, options=NO_PROXY) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        err = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Get, pb.GetRequest(key=k), timeout=DEADLINE_S)
        assert "larger than max" in err.details(), err.details()
        head = stub.Get(pb.GetRequest(key=k, metadata_only=True), timeout=DEADLINE_S)
        assert head.found and head.value == b"" and head.entry.size_bytes == len(value)


def main():
    tests = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_") and callable(fn)]
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="cache-interop-") as tmp:
        generate_stubs(os.path.join(tmp, "gen"))
        server = Server(tmp)
        server.start()
        try:
            for name, test in tests:
                started = time.monotonic()
                try:
                    test(server.addr)
                except Exception:  # a failed test: report it and go on
                    failed += 1
                    print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
                else:
                    passed += 1
                    print(f"ok   {name} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)
        finally:
            server.stop()
            if failed:
                print(f"--- cache-server log ---\n{server.log()}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
