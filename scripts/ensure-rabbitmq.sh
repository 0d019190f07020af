#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest): starts it, or installs and starts
# it, or fails with the fix. The broker tests are never skipped.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for_port() {
  for _ in $(seq 1 120); do
    port_open && return 0
    sleep 0.5
  done
  return 1
}

if port_open; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "RabbitMQ is not installed: installing it from Debian's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "RabbitMQ is not running on 127.0.0.1:5672 and is not installed." >&2
    echo "Fix: install it (apt-get install rabbitmq-server) and start it (rabbitmq-server -detached)." >&2
    exit 1
  fi
fi

echo "RabbitMQ is not running: starting it (rabbitmq-server -detached)" >&2
rabbitmq-server -detached >/dev/null 2>&1 || true
if ! wait_for_port; then
  echo "RabbitMQ did not come up on 127.0.0.1:5672 within 60 s." >&2
  echo "Fix: look at /var/log/rabbitmq/ and start it by hand: rabbitmq-server -detached" >&2
  exit 1
fi
# The port opens before the broker accepts logins; wait for it to be fully up.
if command -v rabbitmqctl >/dev/null 2>&1; then
  timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
