"""Cross-file checks of deploy/ for scripts/check-deploy.sh (needs PyYAML: pip install pyyaml).

    PYTHONPATH=scripts python3 -m checks.deploy DEPLOY_DIR CHECK_NAME

runs one check: exit 0 if it passes, else 1 with what is wrong on stdout. The checks read the Kubernetes
manifests, compose.yaml and their agreement with each other; kubernetes-validate's schema checks and the
Dockerfile's are in the bash script.
"""
import glob
import os
import re
import sys

try:
    import yaml
except ImportError:
    print("PyYAML is not installed; install it with: pip install pyyaml")
    sys.exit(2)

DEPLOY = "deploy"  # set by main()
SERVICE = "cache.v1.CacheService"


def fail(msg):
    print(msg)
    sys.exit(1)


def seconds(text):
    """'15s', '1m30s', '500ms', '2h', or a bare number of seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        fail(f"cannot read duration {text!r}")
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * unit[u] for n, u in parts)


def mebibytes(q):
    m = re.fullmatch(r"(\d+)(Mi|Gi|M|G)?", str(q))
    if not m:
        fail(f"cannot read memory quantity {q!r}")
    n, unit = int(m.group(1)), m.group(2) or ""
    return n * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20, "": 1 / 2**20}[unit]


def k8s_docs():
    docs = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.y*ml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def find(kind, name):
    for d in k8s_docs():
        if d.get("kind") == kind and d.get("metadata", {}).get("name") == name:
            return d
    fail(f"no {kind} named {name} in deploy/k8s")


def server_container():
    pod = find("Deployment", "cache-server")["spec"]["template"]["spec"]
    for c in pod["containers"]:
        if c["name"] == "cache-server":
            return pod, c
    fail("Deployment cache-server has no container cache-server")


def compose():
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        fail("compose.yaml is not a mapping with a 'services' mapping")
    return doc


def env_map(env):
    if isinstance(env, list):
        return dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in (env or {}).items()}


def check_k8s_ports_and_probes():
    cm = find("ConfigMap", "cache-server")["data"]
    port = int(cm["CACHE_LISTEN_ADDR"].rsplit(":", 1)[1])
    pod, c = server_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("grpc") != port:
        fail(f"containerPort grpc {ports.get('grpc')} != CACHE_LISTEN_ADDR port {port}")
    probes = {k: c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for k, p in probes.items():
        if not p or "grpc" not in p:
            fail(f"{k} is missing or not a grpc probe")
        if p["grpc"]["port"] != port:
            fail(f"{k} probes port {p['grpc']['port']}, the server listens on {port}")
    if probes["readinessProbe"]["grpc"].get("service") != SERVICE:
        fail(f"readinessProbe must ask service {SERVICE}")
    for k in ("livenessProbe", "startupProbe"):
        if probes[k]["grpc"].get("service", "") != "":
            fail(f"{k} must ask the overall service \"\" (a Redis outage must not restart pods)")
    svc = find("Service", "cache-server")["spec"]
    sp = [p for p in svc["ports"] if p.get("name") == "grpc"]
    if not sp or sp[0]["port"] != port or sp[0].get("appProtocol") != "grpc":
        fail(f"Service cache-server needs port {port} named grpc with appProtocol grpc")
    labels = pod_labels()
    for kind, sel in (("Service", svc["selector"]),
                      ("PodDisruptionBudget", find("PodDisruptionBudget", "cache-server")["spec"]["selector"]["matchLabels"])):
        if any(labels.get(k) != v for k, v in sel.items()):
            fail(f"{kind} selector {sel} does not match the pod labels {labels}")


def pod_labels():
    return find("Deployment", "cache-server")["spec"]["template"]["metadata"]["labels"]


def check_k8s_grace():
    cm = find("ConfigMap", "cache-server")["data"]
    grace = seconds(cm.get("CACHE_SHUTDOWN_GRACE", "10s"))
    pod, c = server_container()
    prestop = 0.0
    hook = c.get("lifecycle", {}).get("preStop") or {}
    if "sleep" in hook:
        prestop = float(hook["sleep"]["seconds"])
    elif "exec" in hook:
        cmd = hook["exec"]["command"]
        if os.path.basename(cmd[0]) == "sleep":
            prestop = seconds(cmd[1])
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if not tgps > prestop + grace:
        fail(f"terminationGracePeriodSeconds {tgps} must exceed preStop {prestop}s + CACHE_SHUTDOWN_GRACE {grace}s")


def check_k8s_memory():
    cm = find("ConfigMap", "cache-server")["data"]
    tier = float(cm["CACHE_MAX_SIZE_MB"])
    _, c = server_container()
    res = c.get("resources", {})
    req = mebibytes(res.get("requests", {}).get("memory", "0"))
    lim = mebibytes(res.get("limits", {}).get("memory", "0"))
    if not tier < req <= lim:
        fail(f"need CACHE_MAX_SIZE_MB ({tier:.0f}Mi) < memory request ({req:.0f}Mi) <= limit ({lim:.0f}Mi)")
    if "cpu" not in res.get("requests", {}):
        fail("no cpu request")


def check_k8s_secrets():
    cm = find("ConfigMap", "cache-server")["data"]
    leaked = [k for k in cm if "PASSWORD" in k or k == "REDIS_URL"]
    if leaked:
        fail(f"secret settings in the ConfigMap: {leaked}")
    _, c = server_container()
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env.get("REDIS_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if ref.get("name") != "cache-redis" or ref.get("key") != "password":
        fail("REDIS_PASSWORD must come from secretKeyRef cache-redis/password")
    for d in k8s_docs():
        if d.get("kind") == "Secret":
            values = list((d.get("stringData") or {}).values()) + list((d.get("data") or {}).values())
            if any("REPLACE-ME" not in str(v) for v in values):
                fail(f"Secret {d['metadata']['name']} holds a value that is not the REPLACE-ME placeholder")


def check_k8s_security():
    pod, c = server_container()
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        fail("runAsNonRoot is not set")
    if not csc.get("readOnlyRootFilesystem"):
        fail("readOnlyRootFilesystem is not set")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        fail("capabilities are not dropped (drop: [ALL])")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail("allowPrivilegeEscalation is not false")


def check_compose_parses():
    compose()


def check_compose_services():
    services = compose()["services"]
    missing = {"redis", "cache-server"} - set(services)
    if missing:
        fail(f"missing services: {sorted(missing)}")


def check_compose_build():
    build = compose()["services"]["cache-server"].get("build")
    if not isinstance(build, dict):
        fail("cache-server has no build: {context, dockerfile}")
    context = os.path.normpath(os.path.join(DEPLOY, build.get("context", ".")))
    dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
    if not os.path.isfile(dockerfile):
        fail(f"build dockerfile {dockerfile} does not exist")
    if not os.path.isfile(os.path.join(context, "Cargo.lock")):
        fail(f"build context {context} is not the workspace root (no Cargo.lock)")


def check_compose_redis():
    cmd = compose()["services"]["redis"].get("command")
    if isinstance(cmd, str):
        fail("redis command should be a list (a string loses the empty --save argument)")
    args = [str(a) for a in cmd]

    def arg(flag):
        if flag not in args or args.index(flag) + 1 >= len(args):
            fail(f"redis command lacks {flag}")
        return args[args.index(flag) + 1]

    arg("--maxmemory")
    if not arg("--maxmemory-policy").startswith("allkeys-"):
        fail("--maxmemory-policy must evict any key (allkeys-*)")
    if arg("--save") != "":
        fail('--save must be "" (no RDB snapshots)')
    if arg("--appendonly") != "no":
        fail("--appendonly must be no")
    arg("--requirepass")
    if "healthcheck" not in compose()["services"]["redis"]:
        fail("redis has no healthcheck")


def check_compose_server():
    svc = compose()["services"]["cache-server"]
    env = env_map(svc.get("environment"))
    grace = seconds(env.get("CACHE_SHUTDOWN_GRACE", "10s"))
    stop = seconds(svc.get("stop_grace_period", "10s"))
    if not stop > grace:
        fail(f"stop_grace_period {stop}s must exceed CACHE_SHUTDOWN_GRACE {grace}s")
    if env.get("CACHE_BACKEND") == "hybrid":
        cond = (svc.get("depends_on") or {}).get("redis", {}).get("condition")
        if cond != "service_started":
            fail(f"hybrid starts without Redis: depends_on redis should be service_started, not {cond}")
    tier = float(env.get("CACHE_MAX_SIZE_MB", "1024"))
    limit = svc.get("mem_limit")
    m = re.fullmatch(r"(\d+)([mg])", str(limit or "").lower())
    if not m or int(m.group(1)) * (1024 if m.group(2) == "g" else 1) <= tier:
        fail(f"mem_limit {limit} must exceed CACHE_MAX_SIZE_MB {tier:.0f}")


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def main():
    global DEPLOY
    if len(sys.argv) != 3:
        fail(f"usage: python3 -m checks.deploy DEPLOY_DIR CHECK_NAME; checks: {sorted(CHECKS)}")
    DEPLOY, name = sys.argv[1], sys.argv[2]
    if name not in CHECKS:
        fail(f"unknown check {name}; known: {sorted(CHECKS)}")
    try:
        CHECKS[name]()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError, yaml.YAMLError) as e:
        fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
