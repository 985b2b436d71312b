#!/usr/bin/env bash
# Static checks of deploy/: no Docker engine and no Kubernetes cluster are needed (or used).
#
# Usage: scripts/check-deploy.sh
#   K8S_MIN_VERSION=1.31.0   oldest Kubernetes the manifests must validate against (besides the validator's
#                            default, its newest bundled version); it must be one kubernetes-validate bundles
#
# - every manifest in deploy/k8s/ validates with kubernetes-validate --strict (offline, bundled schemas), and
#   the validator is shown to reject an unknown field, so a pass means something;
# - the manifests agree with each other (ports, probe services, grace periods, memory sizing, secrets);
# - deploy/compose.yaml parses (PyYAML), has the services redis and cache-server, and its timings agree
#   (these cross-file checks are scripts/checks/deploy.py);
# - deploy/Dockerfile has a builder stage, a non-root USER, HEALTHCHECK, EXPOSE and ENTRYPOINT.
#
# One line per check ("ok - ..." / "not ok - ..."), then "N passed, M failed"; exits non-zero if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
K8S_MIN_VERSION="${K8S_MIN_VERSION:-1.31.0}"

die() {
    echo "check-deploy: $*" >&2
    exit 1
}

# --- prerequisites -------------------------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v kubernetes-validate >/dev/null 2>&1 ||
    die "kubernetes-validate is not installed; install it with: pip install kubernetes-validate"
python3 -c 'import yaml' 2>/dev/null || die "PyYAML is not installed; install it with: pip install pyyaml"
[[ -d "$DEPLOY/k8s" ]] || die "$DEPLOY/k8s is missing"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0

# check DESCRIPTION COMMAND...: runs the command, prints ok / not ok (with its output indented) and counts.
check() {
    local desc="$1" out
    shift
    if out="$("$@" 2>&1)"; then
        echo "ok - $desc"
        passed=$((passed + 1))
    else
        echo "not ok - $desc"
        [[ -n "$out" ]] && sed 's/^/#   /' <<<"$out"
        failed=$((failed + 1))
    fi
    return 0
}

# k8s_validate FILE [VERSION]: kubernetes-validate --strict, failing also on its warnings (an unknown kind or
# apiVersion is only a WARN there) and on a file without any resource (it passes an empty file).
k8s_validate() {
    local file="$1" version="${2:-}" out rc=0
    out="$(kubernetes-validate --strict ${version:+-k "$version"} "$file" 2>&1)" || rc=$?
    echo "$out"
    ((rc == 0)) || return 1
    if grep -q '^WARN' <<<"$out"; then
        echo "kubernetes-validate warned (unknown kind or apiVersion?)"
        return 1
    fi
    grep -q 'passed for resource' <<<"$out" || {
        echo "no Kubernetes resource found in $file"
        return 1
    }
}

# The validator must reject what it should: a deployment.yaml with a misspelt probe field, under --strict.
validator_rejects_typo() {
    sed 's/failureThreshold:/failureThresold:/' "$DEPLOY/k8s/deployment.yaml" >"$TMP/typo.yaml"
    grep -q failureThresold "$TMP/typo.yaml" || {
        echo "could not inject the typo"
        return 1
    }
    if kubernetes-validate --strict -k "$K8S_MIN_VERSION" "$TMP/typo.yaml" >"$TMP/typo.out" 2>&1; then
        cat "$TMP/typo.out"
        echo "kubernetes-validate accepted an unknown field"
        return 1
    fi
    grep -q "failureThresold" "$TMP/typo.out" || {
        cat "$TMP/typo.out"
        return 1
    }
}

# --- Kubernetes manifests ------------------------------------------------------------------------------------
shopt -s nullglob
manifests=("$DEPLOY"/k8s/*.yaml "$DEPLOY"/k8s/*.yml)
shopt -u nullglob
check "deploy/k8s has manifests (${#manifests[@]})" test "${#manifests[@]}" -gt 0

check "kubernetes-validate --strict rejects an unknown field (the validation below is real)" validator_rejects_typo
for f in "${manifests[@]}"; do
    rel="${f#"$ROOT"/}"
    check "kubernetes-validate --strict -k $K8S_MIN_VERSION: $rel" k8s_validate "$f" "$K8S_MIN_VERSION"
    check "kubernetes-validate --strict (bundled default version): $rel" k8s_validate "$f"
done

# --- consistency checks (scripts/checks/deploy.py, Python + PyYAML) ----------------------------------------
py() { PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" python3 -m checks.deploy "$DEPLOY" "$1"; }

check "k8s: probe ports, containerPort, Service and CACHE_LISTEN_ADDR agree; readiness asks cache.v1.CacheService, liveness/startup ask \"\"; selectors match" \
    py k8s_ports_and_probes
check "k8s: terminationGracePeriodSeconds > preStop + CACHE_SHUTDOWN_GRACE" py k8s_grace
check "k8s: memory request/limit above CACHE_MAX_SIZE_MB, cpu request set" py k8s_memory
check "k8s: no secret in the ConfigMap, REDIS_PASSWORD from Secret cache-redis/password, Secrets only placeholders" py k8s_secrets
check "k8s: runAsNonRoot, readOnlyRootFilesystem, drop ALL, no privilege escalation" py k8s_security

# --- compose -------------------------------------------------------------------------------------------------
check "deploy/compose.yaml parses as YAML (PyYAML) with a services mapping" py compose_parses
check "compose: services redis and cache-server" py compose_services
check "compose: cache-server builds from the workspace root with deploy/Dockerfile" py compose_build
check "compose: redis as a cache (maxmemory, allkeys-* eviction, --save \"\", --appendonly no, password, healthcheck)" py compose_redis
check "compose: stop_grace_period > CACHE_SHUTDOWN_GRACE, depends_on service_started, mem_limit > memory tier" py compose_server

# --- Dockerfile ----------------------------------------------------------------------------------------------
DOCKERFILE="$DEPLOY/Dockerfile"
dockerfile_has() { grep -Eiq "$1" "$DOCKERFILE" || { echo "no line matching /$1/ in $DOCKERFILE"; return 1; }; }
dockerfile_user_not_root() {
    local user
    user="$(grep -Ei '^USER[[:space:]]' "$DOCKERFILE" | tail -n 1 | awk '{print $2}')"
    [[ -n "$user" ]] || { echo "no USER line"; return 1; }
    [[ "${user%%:*}" != "root" && "${user%%:*}" != "0" ]] || { echo "last USER is root ($user)"; return 1; }
}
check "Dockerfile: FROM ... AS builder" dockerfile_has '^FROM[[:space:]]+[^[:space:]]+[[:space:]]+AS[[:space:]]+builder[[:space:]]*$'
check "Dockerfile: runtime stage FROM debian:bookworm-slim" dockerfile_has '^FROM[[:space:]]+debian:bookworm-slim([[:space:]]|$)'
check "Dockerfile: USER (last one not root)" dockerfile_user_not_root
check "Dockerfile: HEALTHCHECK" dockerfile_has '^HEALTHCHECK[[:space:]]'
check "Dockerfile: EXPOSE 50051" dockerfile_has '^EXPOSE[[:space:]]+50051([/[:space:]]|$)'
check "Dockerfile: ENTRYPOINT [\"/usr/local/bin/cache-server\"]" dockerfile_has '^ENTRYPOINT[[:space:]]+\["/usr/local/bin/cache-server"\]'
check "Dockerfile: cargo build --release -p cache-server --locked" dockerfile_has 'cargo build --release -p cache-server --locked'

echo "$passed passed, $failed failed"
((failed == 0))
