"""redis-set-cost: Redis instructions per Set and per Get of the Redis tier, counted by callgrind.

Redis' CPU per call is the part of a hybrid call that the server's own profile cannot see, and timing it on a
shared machine drifts by 30 % between runs. This starts a private redis-server under
`valgrind --tool=callgrind` and replays, over one plain TCP connection, the commands the server sends
(cache-server/src/backend/redis/), each next to the plain Redis command that does the same data work:

  - Sets, batched as write.rs `store` sends them: one write of `MULTI`; per Set `SET <entry> <value> PX <ttl>`
    and `SET <meta> <expected tokens>|0|0 PX <ttl>`; `EVALSHA` of the Set script (keys: per dimension its
    generation and index, then per Set its entry and meta; arguments: a seed, the number of dimensions, the
    token expected for each, then per Set its TTL and its spec, the prune flag then its dimensions'
    numbers); `EXEC`. The tokens the script answers are the next batch's expected tokens, as the server
    learns them. One Set in 16 prunes. Against: a pipeline of `SET <entry> <value> PX <ttl>`, one batch per
    write.
  - Gets, as read.rs sends them: one `MGET` per batch of Gets, of each Get's entry, meta and the generation
    key of each of its dimensions, each key once (the generation check); every Get must be a hit, its meta
    recording the current token. Against: a pipeline of `GET <entry>`, one batch per write. Counted for
    each batch size of `--get-batch` (default 12 and 1: what a loaded server and an idle one send).

Every entry is a metadata entry without user or project, so its one dimension is its type's (`t:metadata`),
in bucket 0: `cache:default:{0}:metadata:lg-<i>`, its meta `cache:default:{0}:~m:metadata:lg-<i>`, the
generation `cache:default:{0}:~g:t:metadata` and index `cache:default:{0}:~i:t:metadata` (layout.rs). Gets
read the keys the Sets wrote. Variants are counted in interleaved rounds (every Set variant, then every Get
variant); after the first round (which creates the keys) counts repeat to within ~1 %. Each row prints
instructions per Set or per Get for each round and, from the last round, the ratio to its plain command.

The Set script is assembled as scripts.rs assembles `SET` with its `lua!` macro (common.lua, set_common.lua,
set.lua, from cache-server/src/backend/redis/lua/), in the work tree or, with `--rev`, at a git revision too
(`git show REV:path`), so that two versions are compared in one run. The commands are the work tree's: a
revision whose Set script takes other keys or arguments (or that predates redis/scripts.rs) cannot be counted.

    scripts/redis-set-cost                  # the work tree's script against plain SETs and GETs
    scripts/redis-set-cost --rev HEAD~1     # ... and the Set script at HEAD~1
    scripts/redis-set-cost --batch 4 --sets 4800 --value-size 4096 --get-batch 64

Needs valgrind (apt: valgrind), redis-server and redis-cli (apt: redis-server redis-tools). The breakdown by
Redis function is left in ${CARGO_TARGET_DIR:-target}/callgrind/redis-<set|get>-<variant>.out
(callgrind_annotate; Debian's redis-server is stripped, so build Redis from source for function names).
"""

import argparse
import os
import posixpath
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from . import common
from .common import ROOT, Children, die

REDIS_DIR = "cache-server/src/backend/redis"
SCRIPTS_RS = f"{REDIS_DIR}/scripts.rs"
BASE = "cache:default:"
BUCKET = 0
PRUNE_EVERY = 16


# --------------------------------------------------------------------------------------------------------
# The Set script, as scripts.rs assembles it
# --------------------------------------------------------------------------------------------------------

def set_script(read, where):
    """The source of scripts.rs' `SET`: its `lua!` macro's fixed files around the files `SET` names.
    `read(path)` gives a file's text (path relative to the repository), or None if there is none."""
    src = read(SCRIPTS_RS)
    if src is None:
        die(f"{where}: no {SCRIPTS_RS} (the Lua scripts live there since the Redis tier was split into "
            f"{REDIS_DIR}/; earlier revisions send Sets otherwise and cannot be counted by this tool)")
    macro = re.search(r"macro_rules!\s*lua\s*\{(.*?)\n\}", src, re.S)
    invocation = re.search(r"const SET: &str = lua!\(([^)]*)\);", src)
    if macro is None or invocation is None:
        die(f"{where}: no `lua!` macro or no `const SET: &str = lua!(...)` in {SCRIPTS_RS}")
    named = re.findall(r'"([^"]+)"', invocation.group(1))
    files = []
    # In the macro's expansion, each include_str! is a fixed file or the repetition over the named files.
    for m in re.finditer(r'include_str!\((?:"([^"]+)"|concat!\("([^"]*)",\s*\$\w+\))\)', macro.group(1)):
        files += [m.group(1)] if m.group(1) is not None else [m.group(2) + f for f in named]
    if not files:
        die(f"{where}: cannot read the `lua!` macro of {SCRIPTS_RS}")
    out = []
    for f in files:
        path = posixpath.normpath(posixpath.join(posixpath.dirname(SCRIPTS_RS), f))
        text = read(path)
        if text is None:
            die(f"{where}: {SCRIPTS_RS} includes {path}, which is missing")
        out.append(text)
    return "".join(out), files


def work_tree_file(path):
    try:
        with open(os.path.join(ROOT, path)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def rev_file(rev):
    def read(path):
        p = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else None

    if subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                      capture_output=True).returncode != 0:
        die(f"--rev {rev}: not a git revision")
    return read


# --------------------------------------------------------------------------------------------------------
# RESP over one plain TCP connection
# --------------------------------------------------------------------------------------------------------

def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += [b"$%d\r\n" % len(a), a, b"\r\n"]
    return b"".join(out)


class RedisError(Exception):
    pass


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
        """The next reply; an error reply (also one inside an array) raises RedisError."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
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


# --------------------------------------------------------------------------------------------------------
# Keys (layout.rs) and the workload
# --------------------------------------------------------------------------------------------------------

PREFIX = f"{BASE}{{{BUCKET}}}:"
# A metadata entry without user or project depends on its type only.
TYPE_DIM = (f"{PREFIX}~g:t:metadata", f"{PREFIX}~i:t:metadata")


def entry_keys(i):
    """An entry's name, its meta's, and its dimensions (generation key, index key) in snapshot order."""
    rendered = f"metadata:lg-{i}"
    return f"{PREFIX}{rendered}", f"{PREFIX}~m:{rendered}", [TYPE_DIM]


def set_batches(args, rng, values):
    """Per batch: the Sets as (key index, value, prune); one Set in 16 prunes, counted over all Sets."""
    out, writes = [], 0
    for _ in range(args.sets // args.batch):
        batch = []
        for _ in range(args.batch):
            batch.append((rng.randrange(args.keys), rng.choice(values), writes % PRUNE_EVERY == 0))
            writes += 1
        out.append(batch)
    return out


def get_batches(rng, written, gets, size):
    """Per batch: the key indexes of `size` Gets, each of a key the Sets wrote."""
    return [[rng.choice(written) for _ in range(size)] for _ in range(gets // size)]


def batch_dims(sets):
    """write.rs `batch_dims`: the batch's distinct dimensions (generation, index) in order of first use, and
    each Set's spec, its prune flag then the 1-based numbers of its dimensions, comma separated."""
    dims, numbers, specs = [], {}, []
    for dim_keys, prune in sets:
        spec = ["1" if prune else "0"]
        for generation, index in dim_keys:
            if generation not in numbers:
                dims.append((generation, index))
                numbers[generation] = len(dims)
            spec.append(str(numbers[generation]))
        specs.append(",".join(spec))
    return dims, specs


# --------------------------------------------------------------------------------------------------------
# Variants: per batch, the commands sent in one write and a check of their replies
# --------------------------------------------------------------------------------------------------------

def check_ok(replies):
    return all(r == b"OK" for r in replies)


def plain_set(batch, ttl):
    msgs = [encode("SET", entry_keys(i)[0], value, "PX", ttl) for i, value, _ in batch]
    return msgs, check_ok


def set_transaction(sha, batch, ttl, tokens):
    """write.rs `store`: MULTI, per Set the SET of its value and of its meta (with the tokens expected),
    EVALSHA of the Set script, EXEC. The script's answer (repaired count, then each dimension's token) is
    learned into `tokens` for the next batch."""
    sets = [(entry_keys(i), value, prune) for i, value, prune in batch]
    dims, specs = batch_dims((dim_keys, prune) for (_, _, dim_keys), _, prune in sets)
    expected = [tokens.get(generation, "") for generation, _ in dims]
    msgs = [encode("MULTI")]
    for ((entry, meta, _), value, _), spec in zip(sets, specs):
        msgs.append(encode("SET", entry, value, "PX", ttl))
        snapshot = "".join(expected[int(d) - 1] for d in spec.split(",")[1:])
        msgs.append(encode("SET", meta, snapshot + "|0|0", "PX", ttl))
    keys = [k for dim in dims for k in dim] + [k for (entry, meta, _), _, _ in sets for k in (entry, meta)]
    argv = ["%016x" % random.getrandbits(64), str(len(dims)), *expected]
    for spec in specs:
        argv += [ttl, spec]
    msgs.append(encode("EVALSHA", sha, str(len(keys)), *keys, *argv))
    msgs.append(encode("EXEC"))

    def check(replies):
        if replies[0] != b"OK" or any(r != b"QUEUED" for r in replies[1:-1]):
            return False
        results = replies[-1]
        if not isinstance(results, list) or len(results) != 2 * len(sets) + 1 or not check_ok(results[:-1]):
            return False
        answer = results[-1]
        if not isinstance(answer, list) or len(answer) != 1 + len(dims) or not all(answer[1:]):
            return False
        tokens.update((generation, t.decode()) for (generation, _), t in zip(dims, answer[1:]))
        return True

    return msgs, check


def plain_get(batch):
    msgs = [encode("GET", entry_keys(i)[0]) for i in batch]
    return msgs, lambda replies: all(r is not None for r in replies)


def generation_get(batch):
    """read.rs `fetch`: one MGET of every Get's entry, meta and generation keys, each key once. Checks that
    every Get is a hit: its entry there, its meta recording exactly its generations' tokens."""
    reads = []
    for i in batch:
        entry, meta, dims = entry_keys(i)
        reads.append([entry, meta, *(generation for generation, _ in dims)])
    keys, slots = [], []
    if len(reads) == 1:
        keys, slots = reads[0], [list(range(len(reads[0])))]
    else:
        seen = {}
        for read in reads:
            slots.append([seen.setdefault(k, len(seen)) for k in read])
        keys = list(seen)

    def check(replies):
        values = replies[0]
        if not isinstance(values, list) or len(values) != len(keys):
            return False
        for positions in slots:
            stored, meta, *gens = (values[p] for p in positions)
            if stored is None or meta is None or None in gens:
                return False
            if not meta.startswith(b"".join(gens) + b"|"):
                return False
        return True

    return [encode("MGET", *keys)], check


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------

def batch_sizes(text):
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of batch sizes, each at least 1")
    return sizes


def parse_args():
    p = argparse.ArgumentParser(prog="redis-set-cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", action="append", default=[],
                   help="also count the Set script at this git revision")
    p.add_argument("--batch", type=int, default=12, help="Sets per transaction (default 12)")
    p.add_argument("--sets", type=int, default=2400, help="Sets counted per variant (default 2400)")
    p.add_argument("--gets", type=int, help="Gets counted per variant (default: as many as --sets)")
    p.add_argument("--get-batch", type=batch_sizes, default=[12, 1],
                   help="Gets per MGET / per pipeline, comma separated (default 12,1)")
    p.add_argument("--keys", type=int, default=1000, help="distinct keys (default 1000)")
    p.add_argument("--value-size", type=int, default=1060,
                   help="envelope bytes (default 1060: 1 KiB + header)")
    p.add_argument("--ttl-ms", default="3600000")
    p.add_argument("--rounds", type=int, default=3, help="counts per variant, interleaved (default 3)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    args = p.parse_args()
    if args.batch < 1 or args.sets < args.batch:
        p.error("--sets must be at least --batch, and --batch at least 1")
    args.gets = args.sets if args.gets is None else args.gets
    if args.gets < max(args.get_batch):
        p.error("--gets must be at least every --get-batch")
    if args.rounds < 1 or args.keys < 1:
        p.error("--rounds and --keys must be at least 1")
    return args


def main():
    common.set_program("redis-set-cost")
    args = parse_args()
    common.need_tools("valgrind", "callgrind_control", "redis-cli")
    if shutil.which(args.redis_server) is None and not os.path.exists(args.redis_server):
        common.need_tools("redis-server")

    scripts = [("work tree", set_script(work_tree_file, "the work tree")[0])]
    for rev in args.rev:
        scripts.append((rev, set_script(rev_file(rev), f"--rev {rev}")[0]))
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
    """Counts every variant in interleaved rounds and prints Redis' instructions per Set and per Get."""
    rng = random.Random(1)
    random.seed(2)  # the transactions' seeds
    values = [rng.randbytes(args.value_size) for _ in range(64)]
    sets = set_batches(args, rng, values)
    n_sets = len(sets) * args.batch
    written = sorted({i for batch in sets for i, _, _ in batch})
    tokens = {}  # generation key -> token last answered (write.rs `Tokens`)

    def count(kind, name, batches, make):
        n = sum(len(b) for b in batches)
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        for batch in batches:
            # Made after the previous answer: a transaction expects the tokens the previous one answered.
            msgs, check = make(batch)
            conn.sock.sendall(b"".join(msgs))
            try:
                replies = [conn.reply() for _ in msgs]
            except RedisError as e:
                die(f"{kind} variant {name!r}: Redis answered an error: {e}")
            if not check(replies):
                die(f"{kind} variant {name!r}: unexpected answer {replies!r:.600}")
        before = set(os.listdir(work))
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        dumps = [f for f in os.listdir(work) if f.startswith("cg.out") and f not in before]
        dump = max((os.path.join(work, f) for f in dumps), key=os.path.getmtime)
        with open(dump) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{kind} {name}").strip("-").lower()
        shutil.copy(dump, os.path.join(out_dir, f"redis-{slug}.out"))
        return total / n

    # (kind, name, the plain variant it is compared with, batches, make)
    variants = [("Set", "plain SET PX", None, sets, lambda b: plain_set(b, args.ttl_ms))]
    for label, source in scripts:
        try:
            sha = conn.call("SCRIPT", "LOAD", source).decode()
        except RedisError as e:
            die(f"the Set script ({label}) does not load: {e}")
        variants.append(("Set", f"MULTI/SETs/EVALSHA/EXEC ({label})", "plain SET PX", sets,
                         lambda b, sha=sha: set_transaction(sha, b, args.ttl_ms, tokens)))
    for size in args.get_batch:
        gets = get_batches(rng, written, args.gets, size)
        plain = f"plain GET, {size} per write"
        variants.append(("Get", plain, None, gets, plain_get))
        variants.append(("Get", f"MGET entry+meta+gen, {size} per MGET", plain, gets, generation_get))

    n_gets = ", ".join(f"{args.gets // s * s} in batches of {s}" for s in args.get_batch)
    print(f"redis-set-cost: {n_sets} Sets of {args.value_size} B on {len(written)} keys in transactions of "
          f"{args.batch} (1 dimension, one Set in {PRUNE_EVERY} prunes); Gets of those keys: {n_gets}; "
          f"Redis under callgrind; rounds 1..{args.rounds}, the first also creates the keys")
    counts = {(kind, name): [] for kind, name, *_ in variants}
    for _ in range(args.rounds):
        for kind, name, _, batches, make in variants:
            counts[(kind, name)].append(count(kind, name, batches, make))
    width = max(len(name) for _, name, *_ in variants)
    rounds = "".join(f"{'round ' + str(r + 1):>10}" for r in range(args.rounds))
    print(f"  {'':<4}{'instructions per call':<{width}}{rounds}  {'x plain (last round)':>21}")
    for kind, name, plain, *_ in variants:
        per_round = counts[(kind, name)]
        ratio = per_round[-1] / counts[(kind, plain)][-1] if plain else 1.0
        cells = "".join(f"{c:>10,.0f}" for c in per_round)
        print(f"  {kind:<4}{name:<{width}}{cells}  {ratio:>21.2f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
