#!/usr/bin/env bash
# What reading the notification stream costs over AMQP 0-9-1 (lapin, as the daemon reads it;
# amqprs, with its I/O on the runtime) against RabbitMQ's native stream protocol
# (rabbitmq-stream-client), in CPU per 10,000 records at 500/s and 2,000/s. The system broker
# offers no stream listener, so this starts a RabbitMQ 4.0 node of its own with the
# rabbitmq_stream plugin (scripts/rabbitmq4.sh), runs the three readers against it and stops
# it. Prints figures only.
#
#   tools/stream-readers/run.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
NODE=nb-stream-bench
PORT="${NB_STREAM_BENCH_PORT:-5795}"
STREAM_PORT=$((PORT + 1))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/stream-readers}"

cargo build --release --manifest-path "$HERE/Cargo.toml"
BIN="$CARGO_TARGET_DIR/release/stream-readers"

trap 'bash "$ROOT/scripts/rabbitmq4.sh" stop "$NODE" >/dev/null 2>&1 || true' EXIT
echo "== RabbitMQ 4.0 node $NODE: AMQP on $PORT, streams on $STREAM_PORT"
NB_RABBITMQ4_PLUGINS=rabbitmq_stream bash "$ROOT/scripts/rabbitmq4.sh" start "$NODE" "$PORT" \
  "stream.listeners.tcp.1 = 127.0.0.1:$STREAM_PORT" \
  "stream.advertised_host = 127.0.0.1" \
  "stream.advertised_port = $STREAM_PORT"

for rate in 500 2000; do
  "$BIN" --amqp "amqp://guest:guest@127.0.0.1:$PORT/%2f" --stream-host 127.0.0.1 \
    --stream-port "$STREAM_PORT" --rate "$rate" --seconds 20
done
