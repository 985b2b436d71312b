"""What every tool of this package shares: logging, free ports, where the release binaries are, and the
processes the tools start (a private redis-server, cache-server, the `baseline` servers), stopped on exit.

Every server is started on 127.0.0.1 on a free port, never on 6379: a Redis may run there, and no tool here
uses or touches it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The release binaries (cache-server, and loadgen and baseline of cache-tests). `--workspace --examples` gives
# dependencies the same features as scripts/test's build and `cargo test` (building examples activates the
# dev-dependencies' features, as tests do), so the three share one set of compiled dependencies instead of
# compiling serde, tonic, fred, cache-server... once per feature set.
BUILD_HINT = "cargo build --release --workspace --bins --examples"
REDIS_PORT_NEVER = 6379

_program = os.path.basename(sys.argv[0]) or "bench"


def set_program(name):
    """The name that prefixes every log line and error (the command the user typed, e.g. bench-compare)."""
    global _program
    _program = name


def log(msg):
    print(f"{_program}: {msg}", file=sys.stderr, flush=True)


def die(msg, code=2):
    log(f"error: {msg}")
    sys.exit(code)


def wait_port(port, within=10.0):
    """Waits until 127.0.0.1:port accepts connections."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    die(f"nothing listens on 127.0.0.1:{port} after {within:g} s")


def free_port():
    """A loopback port nobody listens on right now; never 6379."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != REDIS_PORT_NEVER:
            return port


# --------------------------------------------------------------------------------------------------------
# Binaries and tools
# --------------------------------------------------------------------------------------------------------

def target_dir():
    """Cargo's target directory: $CARGO_TARGET_DIR (relative to the current directory, as cargo reads it),
    else `<repo>/target`."""
    configured = os.environ.get("CARGO_TARGET_DIR")
    return os.path.abspath(configured) if configured else os.path.join(ROOT, "target")


def release_bin(name):
    return os.path.join(target_dir(), "release", name)


def release_bins(names, build=False):
    """{name: path} of release binaries; builds them first with `build`, dies if one is missing."""
    if build:
        log(f"building release binaries ({BUILD_HINT})")
        # cargo runs in ROOT: hand it the target directory as an absolute path.
        env = {**os.environ, "CARGO_TARGET_DIR": target_dir()}
        p = subprocess.run(BUILD_HINT.split(), cwd=ROOT, stdin=subprocess.DEVNULL, env=env)
        if p.returncode != 0:
            die("cargo build failed")
    bins = {name: release_bin(name) for name in names}
    for path in bins.values():
        if not os.access(path, os.X_OK):
            die(f"{path} is missing: build it with `{BUILD_HINT}`")
    return bins


# Every external tool of the benchmark tooling, with the command that installs it.
INSTALL = {
    "cargo": "rustup (https://rustup.rs), then: rustup default stable",
    "redis-server": "apt-get install redis-server redis-tools",
    "redis-cli": "apt-get install redis-server redis-tools",
    "redis-benchmark": "apt-get install redis-server redis-tools",
    "h2load": "apt-get install nghttp2-client",
    "valgrind": "apt-get install valgrind",
    "callgrind_control": "apt-get install valgrind",
}


def need_tools(*tools):
    """Dies, naming every missing tool with its install command; nothing is skipped."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        die("missing prerequisites:\n" + "\n".join(f"  - {t}: {INSTALL.get(t, '?')}" for t in missing))


def run(argv, timeout=600, check=True):
    """Runs a command to completion, output captured; dies with its stderr if it fails and `check`."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        die(f"{' '.join(argv[:3])}... exited {p.returncode}:\n{p.stderr.decode(errors='replace')[-3000:]}")
    return p


def server_env():
    """The environment of a server under test: none of the caller's CACHE_* / REDIS_* / OTEL_* settings
    (the server reads them) leak in, and RUST_LOG is warn unless set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_", "REDIS_", "OTEL_"))}
    env.setdefault("RUST_LOG", "warn")
    return env


# --------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------

class Children:
    """Every process a tool started, each logging to `<tmp>/<name>.log`, stopped (by handle) on exit."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()

    def start(self, name, argv, env=None):
        with open(os.path.join(self.tmp, f"{name}.log"), "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env)
        self.procs.append((name, proc))
        return proc

    def find(self, name):
        for n, p in self.procs:
            if n == name:
                return p
        raise KeyError(name)

    def stop(self, proc, grace=5.0, sig=signal.SIGTERM):
        """Sends `sig`, waits up to `grace` seconds, then kills. Returns the exit status."""
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        return proc.returncode

    def stop_all(self):
        for _, proc in list(self.procs):
            self.stop(proc, grace=2.0)

    def log_tail(self, name, lines=20):
        try:
            with open(os.path.join(self.tmp, f"{name}.log"), "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""


def redis_ping(port):
    p = run(["redis-cli", "-p", str(port), "ping"], timeout=5, check=False)
    return p.stdout.strip() == b"PONG"


def start_redis(children, binary="redis-server", wrapper=(), ready_within=5.0, name="redis"):
    """A private redis-server on a free port (no persistence, files in the tool's temp dir), optionally
    under `wrapper` (e.g. valgrind). Returns (port, process) once it answers PING."""
    last = ""
    for _ in range(10):
        port = free_port()
        proc = children.start(f"{name}-{port}", [
            *wrapper, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", children.tmp, "--protected-mode", "no"])
        deadline = time.time() + ready_within
        while time.time() < deadline and proc.poll() is None:
            if redis_ping(port):
                return port, proc
            time.sleep(0.05)
        last = children.log_tail(f"{name}-{port}")
        children.stop(proc)
    die(f"redis-server did not start: {last}")


def redis_url(port):
    return f"redis://127.0.0.1:{port}"


def cache_server_argv(binary, backend, port, redis_port=None, metrics=True, extra=()):
    """cache-server on 127.0.0.1:port. Its Prometheus endpoint goes to a free loopback port (the default
    0.0.0.0:9090 would clash between servers), or is off."""
    argv = [binary, "--backend", backend, "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{free_port()}" if metrics else "off", *extra]
    if backend != "memory":
        argv += ["--redis-url", redis_url(redis_port)]
    return argv


def baseline_argv(binary, mode, port, redis_port=None, value_size=1024):
    """The bare tonic servers of tests/src/bin/baseline.rs: `constant` answers a constant value, `fred`
    passes Get/Set through to Redis."""
    argv = [binary, "--mode", mode, "--listen", f"127.0.0.1:{port}"]
    if mode == "plain":
        return argv
    if mode == "constant":
        return argv + ["--value-size", str(value_size)]
    return argv + ["--redis-url", redis_url(redis_port)]


def last_json_line(stdout):
    return json.loads(stdout.decode().strip().splitlines()[-1])
