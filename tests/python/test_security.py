#!/usr/bin/env python3
"""Python grpcio against a cache-server with TLS and tokens, as docs/security.md shows callers:

    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        grpc.access_token_call_credentials(token),
    )
    channel = grpc.secure_channel(addr, credentials)

Makes a private CA and a server certificate with openssl, writes a tokens file (two tenants), starts the release
binary with CACHE_TLS_CERT_FILE / CACHE_TLS_KEY_FILE / CACHE_AUTH_TOKENS_FILE, and checks: a valid token works,
a missing or unknown token is UNAUTHENTICATED, a call outside the scopes is PERMISSION_DENIED, the other tenant
does not see the entry, a plaintext channel is refused.

Usage: python3 tests/python/test_security.py   (CACHE_SERVER_BIN as for test_interop.py). Prints "N passed,
M failed"; exits non-zero on any failure.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_interop as base  # noqa: E402  (stub generation, free ports, the server binary)

grpc = base.grpc
TOKENS = {"writer": "py-writer-6d0f", "reader": "py-reader-2a9c", "other": "py-other-81be"}


def openssl(*args):
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    except FileNotFoundError:
        sys.exit("test_security.py: openssl is needed; install it with: apt-get install openssl")


def make_pki(d):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=py-test-ca",
            "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", f"{d}/server.key",
            "-out", f"{d}/server.csr")
    Path(f"{d}/ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/server.pem")


def write_tokens(path):
    entries = [("writer", "t1", '["read", "write"]'), ("reader", "t1", '["read"]'), ("other", "t2", '["read"]')]
    text = ""
    for name, tenant, scopes in entries:
        digest = hashlib.sha256(TOKENS[name].encode()).hexdigest()
        text += f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\ntenant = "{tenant}"\nscopes = {scopes}\n\n'
    Path(path).write_text(text)
    os.chmod(path, 0o600)


def start(d):
    binary = os.environ.get("CACHE_SERVER_BIN", str(base.ROOT / "target" / "release" / "cache-server"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"test_security.py: {binary} not found; build it with: cargo build --release -p cache-server")
    port = base.free_port()
    log = open(f"{d}/server.log", "wb")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CACHE_BACKEND": "memory",
        "CACHE_LISTEN_ADDR": f"127.0.0.1:{port}",
        "CACHE_METRICS_LISTEN": "off",
        "CACHE_TLS_CERT_FILE": f"{d}/server.pem",
        "CACHE_TLS_KEY_FILE": f"{d}/server.key",
        "CACHE_AUTH_TOKENS_FILE": f"{d}/tokens.toml",
    }
    proc = subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    addr = f"localhost:{port}"
    deadline = time.monotonic() + base.READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, addr
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"cache-server did not listen; log:\n{Path(d, 'server.log').read_text()}")


def channel(addr, ca, token):
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(addr, creds, options=base.NO_PROXY)


def code_of(call, *args):
    try:
        call(*args, timeout=base.DEADLINE_S)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def run(addr, ca):
    pb, pb_grpc = base.pb, base.pb_grpc
    key = pb.CacheKey(type=pb.CACHE_TYPE_METADATA, id="py-secure")
    results = []

    def check(name, fn):
        try:
            fn()
        except Exception:
            results.append((name, traceback.format_exc()))
        else:
            results.append((name, None))

    def writer_sets_and_reads():
        with channel(addr, ca, TOKENS["writer"]) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            stub.Set(pb.SetRequest(key=key, value=b"over tls with a token"), timeout=base.DEADLINE_S)
            got = stub.Get(pb.GetRequest(key=key), timeout=base.DEADLINE_S)
            assert got.found and got.value == b"over tls with a token", got

    def missing_and_unknown_tokens_are_unauthenticated():
        for token in (None, "py-unknown"):
            with channel(addr, ca, token) as ch:
                code = code_of(pb_grpc.CacheServiceStub(ch).Get, pb.GetRequest(key=key))
                assert code == grpc.StatusCode.UNAUTHENTICATED, (token, code)

    def reader_cannot_write():
        with channel(addr, ca, TOKENS["reader"]) as ch:
            stub = pb_grpc.CacheServiceStub(ch)
            assert stub.Get(pb.GetRequest(key=key), timeout=base.DEADLINE_S).found
            code = code_of(stub.Set, pb.SetRequest(key=key, value=b"x"))
            assert code == grpc.StatusCode.PERMISSION_DENIED, code

    def other_tenant_does_not_see_it():
        with channel(addr, ca, TOKENS["other"]) as ch:
            got = pb_grpc.CacheServiceStub(ch).Get(pb.GetRequest(key=key), timeout=base.DEADLINE_S)
            assert not got.found, got

    def plaintext_is_refused():
        with grpc.insecure_channel(addr, options=base.NO_PROXY) as ch:
            code = code_of(pb_grpc.CacheServiceStub(ch).Get, pb.GetRequest(key=key))
            assert code == grpc.StatusCode.UNAVAILABLE, code

    for fn in (writer_sets_and_reads, missing_and_unknown_tokens_are_unauthenticated, reader_cannot_write,
               other_tenant_does_not_see_it, plaintext_is_refused):
        check(fn.__name__, fn)
    return results


def main():
    with tempfile.TemporaryDirectory(prefix="cache-security-") as d:
        base.generate_stubs(os.path.join(d, "gen"))
        make_pki(d)
        write_tokens(f"{d}/tokens.toml")
        proc, addr = start(d)
        try:
            results = run(addr, Path(d, "ca.pem").read_bytes())
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        failed = [(n, tb) for n, tb in results if tb]
        for name, tb in results:
            print(f"{'FAIL' if tb else 'ok  '} {name}" + (f"\n{tb}" if tb else ""), flush=True)
        if failed:
            print(f"--- cache-server log ---\n{Path(d, 'server.log').read_text()}")
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
