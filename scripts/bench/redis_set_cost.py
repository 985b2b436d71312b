"""redis-set-cost: Redis instructions per Set of the batch Set script, counted by callgrind.

Redis' CPU per Set is the part of a hybrid Set that the server's own profile cannot see, and timing it on a
shared machine drifts by 30 % between runs. This starts a private redis-server under
`valgrind --tool=callgrind`, replays batches of Sets over one connection the way the server sends them (one
`EVALSHA` of the Set script per batch: per Set its entry, read counter and type index as keys, a 1 KiB
value, a TTL and flags as arguments; one Set in 16 prunes), and the same batches as the transaction the
server sends over plain TCP (MULTI, one MSET, the keys-only script, EXEC, in one write), and prints Redis'
instructions per Set next to plain `SET`s of the same values (a pipeline of one batch per write). Variants
are counted in interleaved rounds; after the first round (which creates the keys) counts repeat to within
~1 %.

The scripts are read from cache-server/src/backend/redis.rs (`SET_LUA`, `SET_KEYS_LUA`), in the work tree
or, with `--rev`, at a git revision too, so that two versions are compared in one run:

    scripts/redis-set-cost                  # the work tree's script against plain SETs
    scripts/redis-set-cost --rev HEAD~1     # ... and the script at HEAD~1
    scripts/redis-set-cost --batch 4 --sets 4800 --value-size 4096

Needs valgrind (apt: valgrind), redis-server and redis-cli (apt: redis-server redis-tools). The breakdown by
Redis function is left in ${CARGO_TARGET_DIR:-target}/callgrind/redis-set-<variant>.out (callgrind_annotate;
Debian's redis-server is stripped, so build Redis from source for function names).
"""

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from . import common
from .common import ROOT, Children, die

SOURCE = "cache-server/src/backend/redis.rs"
BASE = "cache:default:"
PRUNE_EVERY = 16


def lua_constant(src, name):
    """The text of a Lua `&str` constant of redis.rs: a raw string or a `concat!` of raw strings and
    argument-less macros."""
    macros = {
        m.group(1): m.group(2)
        for m in re.finditer(r'macro_rules! (\w+) \{\s*\(\) => \{\s*r"(.*?)"\s*\};\s*\}', src, re.S)
    }
    m = re.search(r"const " + name + r': &str = (?:concat!\((.*?)\n\);|r"(.*?)";)', src, re.S)
    if m is None:
        die(f"no const {name} in {SOURCE}")
    if m.group(2) is not None:
        return m.group(2)
    out = ""
    for part in re.finditer(r'(\w+)!\(\)|r"(.*?)"|"((?:[^"\\]|\\.)*)"', m.group(1), re.S):
        if part.group(1):
            out += macros[part.group(1)]
        elif part.group(2) is not None:
            out += part.group(2)
        else:
            out += part.group(3).encode().decode("unicode_escape")
    return out


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += [b"$%d\r\n" % len(a), a, b"\r\n"]
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("redis-server closed the connection")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in b"+:":
            return rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def call(self, *args):
        self.sock.sendall(encode(*args))
        return self.reply()


def batches(args, rng, values):
    """Per batch: the Sets as (key index, value, prune)."""
    out, writes = [], 0
    for _ in range(args.sets // args.batch):
        batch = []
        for _ in range(args.batch):
            batch.append((rng.randrange(args.keys), rng.choice(values), writes % PRUNE_EVERY == 0))
            writes += 1
        out.append(batch)
    return out


def script_messages(sha, batch, ttl):
    keys, argv = [], []
    for i, value, prune in batch:
        keys += [f"{BASE}metadata:lg-{i}", f"{BASE}~:c:metadata:lg-{i}", f"{BASE}~:i:t:metadata"]
        # set_flags(1 index, not only-if-absent, prune)
        argv += [value, ttl, str(4 + int(prune))]
    return [encode("EVALSHA", sha, str(len(keys)), *keys, *argv)]


def transaction_messages(sha, batch, ttl):
    """The route of batches with no only-if-absent Set over plain TCP: MULTI, MSET, the keys-only script, EXEC
    (one write)."""
    mset, keys, argv = [], [], []
    for i, value, prune in batch:
        mset += [f"{BASE}metadata:lg-{i}", value]
        keys += [f"{BASE}metadata:lg-{i}", f"{BASE}~:c:metadata:lg-{i}", f"{BASE}~:i:t:metadata"]
        argv += [ttl, str(4 + int(prune))]
    return [encode("MULTI"), encode("MSET", *mset),
            encode("EVALSHA", sha, str(len(keys)), *keys, *argv), encode("EXEC")]


def plain_messages(batch):
    return [encode("SET", f"{BASE}metadata:lg-{i}", value) for i, value, _ in batch]


def parse_args():
    p = argparse.ArgumentParser(prog="redis-set-cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", action="append", default=[], help="also count the script at this git revision")
    p.add_argument("--batch", type=int, default=12, help="Sets per script call (default 12)")
    p.add_argument("--sets", type=int, default=2400, help="Sets counted per variant (default 2400)")
    p.add_argument("--keys", type=int, default=1000, help="distinct keys (default 1000)")
    p.add_argument("--value-size", type=int, default=1060, help="envelope bytes (default 1060: 1 KiB + header)")
    p.add_argument("--ttl-ms", default="3600000")
    p.add_argument("--rounds", type=int, default=3, help="counts per variant, interleaved (default 3)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    return p.parse_args()


def main():
    common.set_program("redis-set-cost")
    args = parse_args()
    common.need_tools("valgrind", "callgrind_control", "redis-cli")
    if shutil.which(args.redis_server) is None and not os.path.exists(args.redis_server):
        common.need_tools("redis-server")

    scripts = [("work tree", open(os.path.join(ROOT, SOURCE)).read())]
    for rev in args.rev:
        src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{SOURCE}"], check=True,
                             capture_output=True, text=True).stdout
        scripts.append((rev, src))
    out_dir = os.path.join(common.target_dir(), "callgrind")
    os.makedirs(out_dir, exist_ok=True)

    work = tempfile.mkdtemp(prefix="redis-set-cost-")
    try:
        with Children(work) as children:
            port, server = common.start_redis(
                children, binary=args.redis_server, ready_within=60,
                wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.out"])
            conn = Conn(port)
            count_all(args, scripts, conn, server.pid, work, out_dir)
            children.stop(server, grace=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def count_all(args, scripts, conn, pid, work, out_dir):
    """Counts every variant in interleaved rounds and prints Redis' instructions per Set."""
    rng = random.Random(1)
    values = [rng.randbytes(args.value_size) for _ in range(64)]
    work_batches = batches(args, rng, values)
    n = len(work_batches) * args.batch

    def count(name, make):
        msgs = [make(b) for b in work_batches]
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        for m in msgs:
            conn.sock.sendall(b"".join(m))
            for _ in m:
                r = conn.reply()
                if isinstance(r, list) and any(x not in (b"1", b"OK") for x in r):
                    die(f"the {name} script answered {r!r}")
        before = set(os.listdir(work))
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        dumps = [f for f in os.listdir(work) if f.startswith("cg.out") and f not in before]
        dump = max((os.path.join(work, f) for f in dumps), key=os.path.getmtime)
        with open(dump) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        shutil.copy(dump, os.path.join(out_dir, f"redis-set-{slug}.out"))
        return total / n

    variants = [("plain SET", plain_messages)]
    for label, src in scripts:
        sha = conn.call("SCRIPT", "LOAD", lua_constant(src, "SET_LUA")).decode()
        variants.append((f"script ({label})", lambda b, sha=sha: script_messages(sha, b, args.ttl_ms)))
        if "const SET_KEYS_LUA" in src:
            sha = conn.call("SCRIPT", "LOAD", lua_constant(src, "SET_KEYS_LUA")).decode()
            variants.append((f"transaction ({label})",
                             lambda b, sha=sha: transaction_messages(sha, b, args.ttl_ms)))
    print(f"redis-set-cost: {n} Sets of {args.value_size} B on {args.keys} keys, batches of {args.batch}, "
          f"Redis under callgrind; rounds 1..{args.rounds}, the first also creates the keys")
    counts = {name: [] for name, _ in variants}
    for _ in range(args.rounds):
        for name, make in variants:
            counts[name].append(count(name, make))
    for name, per_round in counts.items():
        rounds = "  ".join(f"{c:>8,.0f}" for c in per_round)
        print(f"  {name:<22} {rounds}  instructions per Set", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
