#!/usr/bin/env bash
# Python interop: generates a Python client from proto/ with grpcio-tools and runs tests/python/test_interop.py
# against the release cache-server (Set / Get / Invalidate / Metrics, a 6 MiB value, the message-size options a
# Python caller needs), then tests/python/test_security.py (TLS + tokens with grpcio's ssl_channel_credentials and
# access_token_call_credentials). Run by scripts/test like every scripts/check-*.sh.
#
# Usage: scripts/check-python.sh
#   CACHE_SERVER_BIN   the server binary (default: ${CARGO_TARGET_DIR:-target}/release/cache-server; build it
#                      with `cargo build --release -p cache-server`)
#   PYTHON             the interpreter (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"
cd "$ROOT"
PYTHON=${PYTHON:-python3}
export CACHE_SERVER_BIN=${CACHE_SERVER_BIN:-$TARGET_DIR/release/cache-server}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "check-python: $PYTHON is not installed; install it with: apt-get install python3 python3-pip" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import grpc, grpc_tools' >/dev/null 2>&1; then
    echo "check-python: $PYTHON cannot import grpc and grpc_tools; install them with: pip install grpcio grpcio-tools" >&2
    exit 2
fi
if [[ ! -x "$CACHE_SERVER_BIN" ]]; then
    echo "check-python: $CACHE_SERVER_BIN not found; build it with: cargo build --release -p cache-server" >&2
    exit 2
fi

"$PYTHON" "$ROOT/tests/python/test_interop.py"
exec "$PYTHON" "$ROOT/tests/python/test_security.py"
