#!/usr/bin/env bash
# `make test-brokers`: the broker-facing integration tests against the brokers operators have
# (contract v3 section 2), beside `make test`'s run against the local 3.10 node:
#
#   1. RabbitMQ 4.0 with 4.3's defaults (no transient non-exclusive queues, no global QoS)
#   2. RabbitMQ 4.0 with default_queue_type = quorum (as Amazon MQ 4.2 has it)
#   3. the local broker, the daemon in stream-less mode (RABBITMQ_STREAM=off, as for Amazon MQ)
#   4. a three-node cluster losing a node mid-run (tests/api/cluster.rs), 3.10 then 4.0
#      (NB_CLUSTER4=0 leaves the 4.0 one out)
#
# It starts those brokers itself (scripts/rabbitmq4.sh, scripts/cluster.sh) and stops them
# however it ends. Every run goes on even when an earlier one failed; the summary names each
# and the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# The tests that talk to RabbitMQ (cargo's filters match module paths); NB_BROKER_TESTS
# (space-separated filters) runs fewer.
read -r -a BROKER_TESTS <<<"${NB_BROKER_TESTS:-bridge:: brokers:: stream:: stats:: dead_letters:: publishing:: faults:: polling::}"
# The 4.0 nodes' AMQP ports (management +10000, distribution +20000); the cluster's are
# scripts/cluster.sh's (NB_CLUSTER_PORT).
R4_DEFAULTS_PORT=${NB_RABBITMQ4_PORT:-5701}
R4_QUORUM_PORT=$((R4_DEFAULTS_PORT + 1))
started=()
results=()
failed=0

cleanup() {
  local what
  for what in "${started[@]}"; do
    case "$what" in
      cluster) bash scripts/cluster.sh stop ;;
      *) bash scripts/rabbitmq4.sh stop "$what" ;;
    esac
  done
  started=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run NAME ENV... -- CARGO-TEST-ARGS...: one cargo test run, timed, recorded in the summary.
run() {
  local name=$1 envs=()
  shift
  while [ "$1" != "--" ]; do
    envs+=("$1")
    shift
  done
  shift
  echo "=== test-brokers: $name" >&2
  local t0=$SECONDS
  if env "${envs[@]}" cargo test --locked --test api -- "$@"; then
    results+=("ok      $name ($((SECONDS - t0)) s)")
  else
    results+=("FAILED  $name ($((SECONDS - t0)) s)")
    failed=1
  fi
}

t_start=$SECONDS
# Compiled once, before any broker takes memory and CPU.
cargo test --locked --test api --no-run || exit 1

# The two 4.0 nodes start side by side.
bash scripts/rabbitmq4.sh install || exit 1
bash scripts/rabbitmq4.sh start r4defaults $R4_DEFAULTS_PORT \
  "deprecated_features.permit.transient_nonexcl_queues = false" \
  "deprecated_features.permit.global_qos = false" &
p1=$!
bash scripts/rabbitmq4.sh start r4quorum $R4_QUORUM_PORT "default_queue_type = quorum" &
p2=$!
wait $p1 && started+=(r4defaults)
wait $p2 && started+=(r4quorum)
[ ${#started[@]} -eq 2 ] || exit 1
# The runs below only mean something if the nodes really have those defaults.
permitted=$(bash scripts/rabbitmq4.sh ctl r4defaults -q eval \
  '{rabbit_deprecated_features:is_permitted(transient_nonexcl_queues), rabbit_deprecated_features:is_permitted(global_qos)}.' \
  2>/dev/null | tail -n 1) # the answer is the last line, after the warnings the check itself logs
[ "$permitted" = "{false,false}" ] \
  || { echo "test-brokers: r4defaults still permits transient_nonexcl_queues/global_qos: $permitted" >&2; exit 1; }
default_type=$(bash scripts/rabbitmq4.sh ctl r4quorum -q list_vhosts --no-table-headers name default_queue_type |
  awk -F'\t' '$1 == "/" { print $2 }')
[ "$default_type" = quorum ] \
  || { echo "test-brokers: r4quorum's default vhost has default queue type '$default_type'" >&2; exit 1; }

run "RabbitMQ 4.0 with 4.3's defaults" \
  NB_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$R4_DEFAULTS_PORT/%2f" \
  NB_TEST_MANAGEMENT_URL="http://guest:guest@127.0.0.1:$((R4_DEFAULTS_PORT + 10000))" \
  -- "${BROKER_TESTS[@]}"
run "RabbitMQ 4.0 with default_queue_type = quorum" \
  NB_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$R4_QUORUM_PORT/%2f" \
  NB_TEST_MANAGEMENT_URL="http://guest:guest@127.0.0.1:$((R4_QUORUM_PORT + 10000))" \
  -- "${BROKER_TESTS[@]}"
cleanup # memory and CPU for what follows

bash scripts/ensure-rabbitmq.sh || exit 1
run "stream-less mode (RABBITMQ_STREAM=off) on the local broker" \
  NB_TEST_STREAM=off -- "${BROKER_TESTS[@]}"

# The 3.10 cluster, then a 4.0 one (about 2.5 minutes each).
cluster_versions=(system)
[ "${NB_CLUSTER4:-1}" = 0 ] || cluster_versions+=(4)
for version in "${cluster_versions[@]}"; do
  label="three-node cluster ($([ "$version" = 4 ] && echo 4.0 || echo 3.10)), a node killed mid-run"
  if NB_CLUSTER_RABBITMQ=$version bash scripts/cluster.sh start; then
    started+=(cluster)
    run "$label" NB_TEST_CLUSTER_URLS="$(bash scripts/cluster.sh urls)" -- cluster::
    cleanup
  else
    results+=("FAILED  $label: the cluster did not start")
    failed=1
  fi
done

echo "=== test-brokers: $((SECONDS - t_start)) s in all" >&2
printf '  %s\n' "${results[@]}" >&2
exit $failed
