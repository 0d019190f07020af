#!/usr/bin/env bash
# Private RabbitMQ 4.0.x nodes beside the system's broker, on Debian 12, for `make test-brokers`.
#
#   scripts/rabbitmq4.sh install                     download and unpack once (cached)
#   scripts/rabbitmq4.sh start NAME PORT [CONF...]   start node NAME: AMQP on PORT, management
#                                                   on PORT+10000, distribution on PORT+20000;
#                                                   each CONF is one rabbitmq.conf line
#   scripts/rabbitmq4.sh stop NAME                   stop it (and its epmd once no node is left)
#   scripts/rabbitmq4.sh ctl NAME ARGS...            rabbitmqctl against it
#
# Debian 12 has RabbitMQ 3.10 only; trixie (Debian 13) has 4.0.5 and the Erlang 27 it needs.
# Their packages are downloaded with a private apt configuration (the system's apt state is not
# touched) and unpacked with `dpkg -x` into a private root. Trixie's Erlang needs trixie's glibc,
# so every ELF file of that Erlang gets trixie's loader as interpreter and the private library
# directory as DT_RPATH (not RUNPATH: NIFs and libcrypto's own dependencies must resolve there
# too). No LD_LIBRARY_PATH: the node runs the system's /bin/sh and df, which keep the system's
# glibc.
#
# A node has its own name (NAME@localhost), ports, data directory, cookie, config file and a
# private epmd (never the system's 4369), everything bound to 127.0.0.1. The system broker is
# never touched.
#
# Environment: NB_RABBITMQ4_PLUGINS (plugins to enable beside management, comma-separated, e.g.
# rabbitmq_stream), NB_CACHE_DIR (downloads and the unpacked root; default ~/.cache/notify-bridge),
# NB_RUN_DIR (node data; default /tmp/notify-bridge-brokers), NB_RABBITMQ4_EPMD_PORT (default
# 4371), NB_START_TIMEOUT (seconds a start may take; default 120).
set -euo pipefail

CACHE="${NB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/notify-bridge}/rabbitmq4"
RUN="${NB_RUN_DIR:-/tmp/notify-bridge-brokers}"
EPMD_PORT="${NB_RABBITMQ4_EPMD_PORT:-4371}"
START_TIMEOUT="${NB_START_TIMEOUT:-120}"
ROOT="$CACHE/root"
TOOLS="$CACHE/tools"

# What the node needs from trixie: RabbitMQ, its Erlang applications, and the libraries trixie's
# Erlang was linked against (glibc 2.38+, OpenSSL 3 with the t64 ABI...).
PACKAGES=(
  rabbitmq-server erlang-base erlang-asn1 erlang-crypto erlang-eldap erlang-inets
  erlang-mnesia erlang-os-mon erlang-parsetools erlang-public-key erlang-runtime-tools
  erlang-ssl erlang-syntax-tools erlang-tools erlang-xmerl
  libc6 libgcc-s1 libstdc++6 libtinfo6 zlib1g libssl3t64 libzstd1 libsystemd0 libcap2
)

die() {
  echo "rabbitmq4.sh: $*" >&2
  exit 1
}

private_apt() {
  apt-get -q \
    -o Dir::Etc::sourcelist="$CACHE/apt/sources.list" \
    -o Dir::Etc::sourceparts="$CACHE/apt/sources.list.d" \
    -o Dir::Etc::preferences="$CACHE/apt/preferences" \
    -o Dir::Etc::preferencesparts="$CACHE/apt/preferences.d" \
    -o Dir::State::Lists="$CACHE/apt/lists" \
    -o Dir::Cache="$CACHE/apt/cache" \
    -o Debug::NoLocking=1 \
    -o APT::Sandbox::User=root \
    "$@"
}

install_root() {
  [ -f "$ROOT/.complete" ] && return 0
  command -v apt-get >/dev/null || die "needs apt-get (Debian 12)"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "needs $keyring (package debian-archive-keyring)"
  echo "rabbitmq4.sh: downloading RabbitMQ 4.0 and Erlang 27 from Debian trixie into $CACHE" >&2
  mkdir -p "$CACHE/apt/sources.list.d" "$CACHE/apt/preferences.d" "$CACHE/apt/lists/partial" \
    "$CACHE/apt/cache/archives/partial" "$CACHE/debs"
  : >"$CACHE/apt/sources.list"
  : >"$CACHE/apt/preferences"
  cat >"$CACHE/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie bookworm
Components: main
Signed-By: $keyring
EOF
  private_apt update >/dev/null || die "apt-get update of the private trixie lists failed"
  (
    cd "$CACHE/debs"
    # A download interrupted half-way leaves a .deb that dpkg -x refuses; start those again.
    local pkg
    for pkg in "${PACKAGES[@]}"; do
      ls "${pkg}"_*.deb >/dev/null 2>&1 || private_apt download "$pkg/trixie" >/dev/null \
        || die "could not download $pkg/trixie"
    done
    ls patchelf_*.deb >/dev/null 2>&1 || private_apt download patchelf/bookworm >/dev/null \
      || die "could not download patchelf/bookworm"
  )
  # Unpacked where it runs (the patched paths name $ROOT); .complete marks a finished unpack.
  rm -rf "$ROOT" "$TOOLS"
  mkdir -p "$ROOT" "$TOOLS"
  local deb
  for deb in "$CACHE"/debs/*.deb; do
    case "$(basename "$deb")" in
      patchelf_*) dpkg -x "$deb" "$TOOLS" ;;
      *) dpkg -x "$deb" "$ROOT" ;;
    esac
  done
  patch_root "$ROOT"
  touch "$ROOT/.complete"
}

# Points trixie's Erlang at trixie's loader and libraries inside root $1.
patch_root() {
  local root=$1 patchelf="$TOOLS/usr/bin/patchelf" libdir="$1/usr/lib/x86_64-linux-gnu" f
  local loader="$libdir/ld-linux-x86-64.so.2"
  [ -x "$loader" ] || loader="$1/lib64/ld-linux-x86-64.so.2"
  [ -e "$loader" ] || die "no loader in $1"
  while IFS= read -r -d '' f; do
    [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
    if "$patchelf" --print-interpreter "$f" >/dev/null 2>&1; then
      "$patchelf" --set-interpreter "$loader" --force-rpath --set-rpath "$libdir" "$f"
    else
      "$patchelf" --force-rpath --set-rpath "$libdir" "$f"
    fi
  done < <(find "$root/usr/lib/erlang" -type f -print0)
  # `erl` and `start` hard-code where Erlang lives.
  for f in "$root"/usr/lib/erlang/bin/erl "$root"/usr/lib/erlang/bin/start \
    "$root"/usr/lib/erlang/erts-*/bin/erl "$root"/usr/lib/erlang/erts-*/bin/start; do
    [ -f "$f" ] && sed -i -E "s|^([[:space:]]*ROOTDIR=).*|\1\"$root/usr/lib/erlang\"|" "$f"
  done
}

sbin() {
  local dir
  dir=$(ls -d "$ROOT"/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin | tail -1)
  [ -d "$dir" ] || die "no rabbitmq_server in $ROOT"
  echo "$dir"
}

check_name() {
  [[ "$1" =~ ^[a-z][a-z0-9_-]{0,30}$ ]] || die "node name '$1': use [a-z][a-z0-9_-]*"
}

# The environment of node $1 (AMQP port $2, when known).
node_env() {
  local name=$1 dir="$RUN/$1"
  export HOME="$dir/home" # its Erlang cookie
  export PATH="$ROOT/usr/lib/erlang/bin:$PATH"
  export RABBITMQ_NODENAME="$name@localhost"
  export ERL_EPMD_PORT="$EPMD_PORT"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_MNESIA_BASE="$dir/data"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_PID_FILE="$dir/pid"
  if [ -n "${2:-}" ]; then
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$2"
    export RABBITMQ_DIST_PORT=$(($2 + 20000))
  fi
  export RABBITMQ_SERVER_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start() {
  [ $# -ge 2 ] || die "usage: start NAME PORT [CONF...]"
  local name=$1 port=$2
  shift 2
  check_name "$name"
  if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1024 ] || [ "$port" -gt 45000 ]; then
    die "port '$port': 1024-45000 (management and distribution use +10000 and +20000)"
  fi
  install_root
  local dir="$RUN/$name"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    die "node $name runs already (pid $(cat "$dir/pid")); stop it first"
  fi
  local p
  for p in "$port" $((port + 10000)) $((port + 20000)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is taken"
  done
  # A fresh data directory every start: a test run never sees an earlier run's queues.
  rm -rf "$dir"
  mkdir -p "$dir/home" "$dir/data" "$dir/log"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
  chmod 400 "$dir/home/.erlang.cookie"
  {
    echo "listeners.tcp.default = 127.0.0.1:$port"
    echo "management.tcp.ip = 127.0.0.1"
    echo "management.tcp.port = $((port + 10000))"
    # guest may log in from 127.0.0.1 only, which is where the tests are.
    echo "loopback_users.guest = true"
    echo "log.file.level = info"
    echo "log.console = false"
    # The management API's figures every second (default 5 s): tests poll them.
    echo "collect_statistics_interval = 1000"
    local line
    for line in "$@"; do echo "$line"; done
  } >"$dir/rabbitmq.conf"
  echo "[rabbitmq_management${NB_RABBITMQ4_PLUGINS:+,$NB_RABBITMQ4_PLUGINS}]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  echo "$port" >"$dir/port"
  (
    node_env "$name" "$port"
    cd "$dir"
    # setsid: the node outlives this script and the make target that called it.
    setsid "$(sbin)/rabbitmq-server" >"$dir/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/launcher.pid"
  )
  wait_ready "$name" "$port"
}

wait_ready() {
  local name=$1 port=$2 dir="$RUN/$1"
  local deadline=$((SECONDS + START_TIMEOUT))
  # await_startup fails at once while the node is not yet registered with epmd: ask again.
  until (
    node_env "$name" "$port"
    timeout 15 "$(sbin)/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" \
      await_startup --timeout 10 >/dev/null 2>&1
  ); do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
      echo "rabbitmq4.sh: node $name did not start within ${START_TIMEOUT}s; its log:" >&2
      tail -n 30 "$dir/log/stdout.log" "$dir"/log/*.log 2>/dev/null >&2 || true
      stop "$name" || true
      exit 1
    fi
    sleep 1
  done
  # The management listener starts with the node, a moment after AMQP.
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "node $name: management never listened on $((port + 10000))"
    sleep 0.2
  done
  echo "rabbitmq4.sh: node $name@localhost ready: amqp://guest:guest@127.0.0.1:$port/%2f," \
    "http://127.0.0.1:$((port + 10000))" >&2
}

stop() {
  [ $# -eq 1 ] || die "usage: stop NAME"
  local name=$1 dir="$RUN/$1"
  check_name "$name"
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    local pid
    pid=$(cat "$dir/pid")
    (
      node_env "$name"
      timeout 60 "$(sbin)/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1
    ) || kill -9 "$pid" 2>/dev/null || true
    # rabbitmqctl stop returns before the VM has exited, and the node's epmd name goes only
    # with its process.
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  stop_epmd_if_idle
}

# Our private epmd goes when it has no node left (epmd -kill refuses while names are
# registered; a node that has just exited may take a moment to leave the list, so it is asked
# again for up to 2 s; while another node of ours runs, the epmd stays).
stop_epmd_if_idle() {
  local epmd="$ROOT/usr/lib/erlang/bin/epmd"
  [ -x "$epmd" ] || return 0
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if ! ERL_EPMD_PORT=$EPMD_PORT "$epmd" -port "$EPMD_PORT" -names 2>/dev/null | grep -q '^name '; then
      ERL_EPMD_PORT=$EPMD_PORT "$epmd" -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
      return 0
    fi
    sleep 0.2
  done
}

ctl() {
  [ $# -ge 1 ] || die "usage: ctl NAME ARGS..."
  local name=$1
  shift
  check_name "$name"
  [ -d "$RUN/$name" ] || die "no node $name"
  node_env "$name"
  exec "$(sbin)/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  install) install_root ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  ctl) ctl "$@" ;;
  *) die "usage: $0 install | start NAME PORT [CONF...] | stop NAME | ctl NAME ARGS..." ;;
esac
