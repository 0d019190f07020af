#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the system's broker, for the cluster
# fault tests (`make test-brokers`).
#
#   scripts/cluster.sh start            start nbc1, nbc2, nbc3 and join them into one cluster
#   scripts/cluster.sh stop             stop the three and delete their data
#   scripts/cluster.sh kill NODE        kill -9 one node (nbc1, nbc2 or nbc3)
#   scripts/cluster.sh restart NODE     start a node again on its data (after kill or stop-node)
#   scripts/cluster.sh stop-node NODE   stop one node gracefully
#   scripts/cluster.sh urls             the nodes' AMQP URLs, comma-separated
#   scripts/cluster.sh leader QUEUE     the node that leads a quorum queue or a stream
#   scripts/cluster.sh ctl ARGS...      rabbitmqctl against a running node of the cluster
#
# The nodes are nbcN@localhost with AMQP on NB_CLUSTER_PORT+N (default 5780+N), distribution on
# that +20000, their own data directories and cookie under NB_RUN_DIR (default
# /tmp/notify-bridge-brokers/cluster), and a private epmd (NB_CLUSTER_EPMD_PORT, default 4372),
# never the system node's name, ports, data or epmd: the system broker is not touched.
#
# NB_CLUSTER_RABBITMQ=system (default) runs the system's RabbitMQ (3.10 on Debian 12);
# NB_CLUSTER_RABBITMQ=4 runs 4.0.x from scripts/rabbitmq4.sh's private root. The other
# subcommands use whichever the running cluster was started with.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
RUN="${NB_RUN_DIR:-/tmp/notify-bridge-brokers}/cluster"
BASE_PORT="${NB_CLUSTER_PORT:-5780}"
EPMD_PORT="${NB_CLUSTER_EPMD_PORT:-4372}"
START_TIMEOUT="${NB_START_TIMEOUT:-120}"
NODES=(nbc1 nbc2 nbc3)

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# The RabbitMQ a running cluster was started with, whatever the environment says now.
if [ "${1:-}" != start ] && [ -f "$RUN/rabbitmq" ]; then
  NB_CLUSTER_RABBITMQ=$(cat "$RUN/rabbitmq")
fi
case "${NB_CLUSTER_RABBITMQ:-system}" in
  system)
    SBIN=/usr/lib/rabbitmq/bin
    [ -x "$SBIN/rabbitmq-server" ] || die "no system RabbitMQ ($SBIN); apt-get install rabbitmq-server"
    ERL_BIN=
    ;;
  4)
    bash "$HERE/rabbitmq4.sh" install
    ROOT="${NB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/notify-bridge}/rabbitmq4/root"
    SBIN=$(ls -d "$ROOT"/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin | tail -1)
    ERL_BIN="$ROOT/usr/lib/erlang/bin"
    ;;
  *) die "NB_CLUSTER_RABBITMQ: system or 4" ;;
esac

index_of() {
  case "$1" in
    nbc1) echo 1 ;;
    nbc2) echo 2 ;;
    nbc3) echo 3 ;;
    *) die "node '$1': nbc1, nbc2 or nbc3" ;;
  esac
}

port_of() { echo $((BASE_PORT + $(index_of "$1"))); }

# The environment of one node: everything its own, nothing of the system node's.
node_env() {
  local name=$1 port
  port=$(port_of "$name")
  export HOME="$RUN/home" # the cluster's shared Erlang cookie
  [ -n "$ERL_BIN" ] && export PATH="$ERL_BIN:$PATH"
  export RABBITMQ_NODENAME="$name@localhost"
  export ERL_EPMD_PORT="$EPMD_PORT"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$port"
  export RABBITMQ_DIST_PORT=$((port + 20000))
  export RABBITMQ_CONFIG_FILE="$RUN/$name/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$RUN/$name/advanced.config"
  # Not /etc/rabbitmq/rabbitmq-env.conf: that one names the system node.
  export RABBITMQ_CONF_ENV_FILE="$RUN/$name/rabbitmq-env.conf"
  export RABBITMQ_MNESIA_BASE="$RUN/$name/data"
  export RABBITMQ_LOG_BASE="$RUN/$name/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$RUN/$name/enabled_plugins"
  export RABBITMQ_PID_FILE="$RUN/$name/pid"
  export RABBITMQ_SERVER_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbitmqctl_on() {
  local name=$1
  shift
  (
    node_env "$name"
    "$SBIN/rabbitmqctl" -n "$name@localhost" "$@"
  )
}

running() {
  local pid_file="$RUN/$1/pid"
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# Starts node $1 on its data directory (created if new) and waits, bounded, until it runs.
launch() {
  local name=$1 dir="$RUN/$1" port
  port=$(port_of "$name")
  running "$name" && die "node $name runs already"
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is taken"
  mkdir -p "$dir/data" "$dir/log"
  if [ ! -f "$dir/rabbitmq.conf" ]; then
    {
      echo "listeners.tcp.default = 127.0.0.1:$port"
      echo "loopback_users.guest = true"
      echo "log.console = false"
      echo "log.file.level = info"
      # A killed node's peers notice within a few seconds (the default is 60 s).
      echo "net_ticktime = 10"
    } >"$dir/rabbitmq.conf"
    echo "[]." >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
  fi
  rm -f "$dir/pid"
  (
    node_env "$name"
    cd "$dir"
    # setsid: the node outlives this script and the make target that called it.
    setsid "$SBIN/rabbitmq-server" >>"$dir/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/launcher.pid"
  )
  local deadline=$((SECONDS + START_TIMEOUT))
  # await_startup fails at once while the node is not yet registered with epmd: ask again.
  until rabbitmqctl_on "$name" -q await_startup --timeout 10 >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
      echo "cluster.sh: node $name did not start within ${START_TIMEOUT}s; its log:" >&2
      tail -n 30 "$dir/log/stdout.log" 2>/dev/null >&2 || true
      exit 1
    fi
    sleep 1
  done
}

start() {
  for name in "${NODES[@]}"; do
    running "$name" && die "node $name runs already; scripts/cluster.sh stop first"
  done
  rm -rf "$RUN"
  mkdir -p "$RUN/home"
  echo "${NB_CLUSTER_RABBITMQ:-system}" >"$RUN/rabbitmq"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/home/.erlang.cookie"
  chmod 400 "$RUN/home/.erlang.cookie"
  launch nbc1
  for name in nbc2 nbc3; do
    launch "$name"
    rabbitmqctl_on "$name" -q stop_app >/dev/null
    rabbitmqctl_on "$name" -q join_cluster nbc1@localhost >/dev/null
    rabbitmqctl_on "$name" -q start_app >/dev/null
  done
  local members
  members=$(rabbitmqctl_on nbc1 -q cluster_status --formatter json |
    grep -o '"running_nodes":\[[^]]*\]' || true)
  for name in "${NODES[@]}"; do
    [[ "$members" == *"$name@localhost"* ]] || die "node $name is not running in the cluster: $members"
  done
  echo "cluster.sh: cluster of nbc1, nbc2, nbc3 running: $(urls)" >&2
}

stop_node() {
  local name=$1
  running "$name" || return 0
  rabbitmqctl_on "$name" -q stop >/dev/null 2>&1 || kill -9 "$(cat "$RUN/$name/pid")" 2>/dev/null || true
}

stop() {
  # The pids first: a node removes its pid file as it begins to stop, well before it exits.
  local name pid pids=()
  for name in "${NODES[@]}"; do
    if running "$name"; then pids+=("$(cat "$RUN/$name/pid")"); fi
  done
  for name in "${NODES[@]}"; do
    stop_node "$name" &
  done
  wait
  # rabbitmqctl stop returns before the VM has exited: wait for it (bounded), then make sure.
  local deadline=$((SECONDS + 30))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # Our private epmd goes with the nodes; epmd -kill refuses while names are registered, and
  # a node that has just exited may take a moment to leave the list.
  local epmd
  epmd=$(PATH="${ERL_BIN:+$ERL_BIN:}$PATH" command -v epmd || true)
  if [ -n "$epmd" ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      ERL_EPMD_PORT=$EPMD_PORT "$epmd" -port "$EPMD_PORT" -names 2>/dev/null | grep -q '^name ' || break
      sleep 0.2
    done
    ERL_EPMD_PORT=$EPMD_PORT "$epmd" -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN"
}

kill_node() {
  local name=$1
  index_of "$name" >/dev/null
  running "$name" || die "node $name does not run"
  kill -9 "$(cat "$RUN/$name/pid")"
  # Gone once its AMQP port no longer answers.
  local deadline=$((SECONDS + 10))
  while (exec 3<>"/dev/tcp/127.0.0.1/$(port_of "$name")") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "node $name still answers after kill -9"
    sleep 0.1
  done
}

restart() {
  local name=$1
  index_of "$name" >/dev/null
  [ -d "$RUN/$name/data" ] || die "node $name was never started; scripts/cluster.sh start"
  launch "$name"
}

urls() {
  local out=() name
  for name in "${NODES[@]}"; do
    out+=("amqp://guest:guest@127.0.0.1:$(port_of "$name")/%2f")
  done
  (
    IFS=,
    echo "${out[*]}"
  )
}

# The first node that answers, for queries.
any_running() {
  local name
  for name in "${NODES[@]}"; do
    if running "$name" && rabbitmqctl_on "$name" -q ping >/dev/null 2>&1; then
      echo "$name"
      return 0
    fi
  done
  die "no node of the cluster runs"
}

leader() {
  [ $# -eq 1 ] || die "usage: leader QUEUE"
  local node
  node=$(any_running)
  # Quorum queues and streams report their leader (`leader` column); classic queues their node.
  rabbitmqctl_on "$node" -q list_queues --no-table-headers name type leader pid |
    awk -F'\t' -v q="$1" '$1 == q {
      n = ($3 ~ /@/) ? $3 : $4
      sub(/^</, "", n); sub(/@.*/, "", n); print n
      found = 1
    } END { exit found ? 0 : 1 }' || die "no queue $1"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  start) start ;;
  stop) stop ;;
  kill) kill_node "$@" ;;
  restart) restart "$@" ;;
  stop-node) stop_node "$@" ;;
  urls) urls ;;
  leader) leader "$@" ;;
  ctl)
    node=$(any_running)
    rabbitmqctl_on "$node" "$@"
    ;;
  *) die "usage: $0 start | stop | kill NODE | restart NODE | stop-node NODE | urls | leader QUEUE | ctl ARGS..." ;;
esac
