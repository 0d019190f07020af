#!/usr/bin/env bash
# Benchmarks notify-bridge on this machine: builds the daemon and loadgen (release), makes sure
# RabbitMQ runs, starts the daemon on a free port with a fresh exchange and queue, runs every
# loadgen scenario against it, stops it, deletes the broker objects, and prints the figures and
# a table against the targets. Prints figures only: exits 0 whether targets are met or not.
#
#   tools/loadgen/run-bench.sh                # everything, a few minutes
#   PERF=1 tools/loadgen/run-bench.sh         # also profile the daemon during a latency run
#   BENCH_OUT=/tmp/bench tools/loadgen/run-bench.sh   # where logs and summaries go
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${BENCH_OUT:-$ROOT/target/bench}"
mkdir -p "$OUT"
rm -f "$OUT"/summary-*.txt
cd "$ROOT"

echo "== build (release)"
cargo build --release --bin notify-bridge
cargo build --release -p loadgen
LOADGEN="$ROOT/target/release/loadgen"

bash scripts/ensure-rabbitmq.sh
AMQP="amqp://guest:guest@127.0.0.1:5672/%2f"

# 10,000 sockets on each side need more descriptors than the usual 1024; root may raise the
# hard limit, others go as far as it allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# A free port below the ephemeral range, so that it never clashes with the clients' ports.
PORT=""
for candidate in $(shuf -i 20000-30000 -n 50); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then PORT=$candidate; break; fi
done
[ -n "$PORT" ] || { echo "no free port found" >&2; exit 1; }
URL="http://127.0.0.1:$PORT"
NAME="loadgen-bench-$(date +%s)-$$"
JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '/+=\n')"
export JWT_SECRET

echo "== daemon on $URL, exchange and queue $NAME"
# Started from $OUT so that a .env file in the repository does not change the settings.
(
  cd "$OUT"
  exec env ENABLE_RABBITMQ=true RABBITMQ_URL="$AMQP" RABBITMQ_EXCHANGE="$NAME" RABBITMQ_QUEUE="$NAME" \
    RABBITMQ_QUEUE_EXPIRES_MS=3600000 JWT_SECRET="$JWT_SECRET" HOST=127.0.0.1 PORT="$PORT" \
    LOG_FORMAT=json RUST_LOG=warn MAX_CONNECTIONS=20000 PUBLIC_DIR="$ROOT/public" \
    "$ROOT/target/release/notify-bridge"
) >"$OUT/daemon.log" 2>&1 &
DAEMON=$!

stop_daemon() {
  if kill -0 "$DAEMON" 2>/dev/null; then
    kill -TERM "$DAEMON"
    for _ in $(seq 1 60); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$DAEMON" 2>/dev/null && { echo "daemon did not stop on SIGTERM: killing it"; kill -KILL "$DAEMON"; }
  fi
  wait "$DAEMON" 2>/dev/null || true
}
cleanup() {
  stop_daemon
  "$LOADGEN" --cleanup --amqp "$AMQP" --exchange "$NAME" --queue "$NAME" || true
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$DAEMON" 2>/dev/null || { echo "the daemon exited:"; cat "$OUT/daemon.log"; exit 1; }
  sleep 0.25
done
curl -fsS "$URL/readyz" >/dev/null || { echo "the daemon is not ready:"; tail "$OUT/daemon.log"; exit 1; }

if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing wrk (apt-get install -y wrk)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || echo "wrk could not be installed: loadgen uses its own closed loop"
fi

machine_note() {
  echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $(pgrep -c -x rustc || true) rustc processes running besides us"
}

run() {
  local scenario=$1
  shift
  machine_note
  "$LOADGEN" --url "$URL" --amqp "$AMQP" --exchange "$NAME" --pid "$DAEMON" \
    --scenario "$scenario" --summary "$OUT/summary-$scenario.txt" "$@" || echo "!! scenario $scenario failed"
}

# The same scenario at a quarter of the rate, keyed latency_500 in the summary.
run_labelled() {
  local label=$1 scenario=$2
  shift 2
  machine_note
  "$LOADGEN" --url "$URL" --amqp "$AMQP" --exchange "$NAME" --pid "$DAEMON" \
    --scenario "$scenario" --summary "$OUT/summary-$label.txt" --summary-label "$label" "$@" \
    || echo "!! scenario $scenario ($label) failed"
}

run_labelled latency_500 latency --customers 1000 --cms 10 --rate 500 --duration 20s
run latency --customers 1000 --cms 10 --rate 2000 --duration 20s
run throughput --customers 1000 --messages 100000
run connections --connections 10000 --concurrency 200
run http --http-connections 64 --http-threads 2 --http-duration 10s
run replay --replay-records 10000

if [ "${PERF:-0}" = 1 ]; then
  echo
  echo "== profile: perf record -g on the daemon during a second latency run (its figures are skewed by perf)"
  if ! command -v perf >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 || true
  fi
  perf record -F 999 -g -p "$DAEMON" -o "$OUT/perf.data" >"$OUT/perf-record.log" 2>&1 &
  PERF_PID=$!
  sleep 1
  "$LOADGEN" --url "$URL" --amqp "$AMQP" --exchange "$NAME" --pid "$DAEMON" --scenario latency \
    --customers 1000 --cms 10 --rate 2000 --duration 20s >"$OUT/perf-latency.txt" || true
  kill -INT "$PERF_PID"
  wait "$PERF_PID" 2>/dev/null || true
  squeeze() { grep -E '^ +[0-9.]+%' | sed 's/   */  /g; s/[[:space:]-]*$//'; }
  perf report -i "$OUT/perf.data" --stdio --no-children --sort comm 2>/dev/null | squeeze >"$OUT/perf-threads.txt" || true
  perf report -i "$OUT/perf.data" --stdio --no-children --sort symbol 2>/dev/null | squeeze | head -80 >"$OUT/perf-self.txt" || true
  # With call chains: where the time goes including callees (syscalls, their callers).
  perf report -i "$OUT/perf.data" --stdio --children --sort symbol 2>/dev/null | squeeze | head -80 >"$OUT/perf-children.txt" || true
  echo "by thread:"
  cat "$OUT/perf-threads.txt"
  echo "top symbols, self time ($OUT/perf-self.txt):"
  head -25 "$OUT/perf-self.txt"
  echo "top symbols, with callees ($OUT/perf-children.txt):"
  head -30 "$OUT/perf-children.txt"
fi

machine_note
trap - EXIT
cleanup

# --- targets ------------------------------------------------------------------------------------
get() { cat "$OUT"/summary-*.txt 2>/dev/null | grep "^$1=" | tail -1 | cut -d= -f2; }
row() { # label value op target unit
  local label=$1 value=$2 op=$3 target=$4 unit=$5 verdict
  if [ -z "$value" ]; then
    verdict="missed (no figure)"
    value="n/a"
  elif awk -v v="$value" -v t="$target" -v op="$op" 'BEGIN { exit !((op == "le" && v <= t) || (op == "ge" && v >= t)) }'; then
    verdict="met"
  else
    verdict="missed"
  fi
  printf '%-58s %14s %-9s %s\n' "$label" "$value" "$unit" "$verdict"
}
# A figure shown beside the targets, with none of its own.
info() { # label value unit
  printf '%-58s %14s %-9s %s\n' "$1" "${2:-n/a}" "$3" "-"
}
# The sum of several figures; empty (no figure) if none of them was recorded.
sum() {
  local total=0 found="" v key
  for key in "$@"; do
    v=$(get "$key")
    [ -n "$v" ] && { total=$((total + v)); found=1; }
  done
  [ -n "$found" ] && echo "$total" || true
}

echo
echo "== targets (rate achieved in the latency run: $(get latency.rate)/s over $(get latency.sockets) sockets)"
printf '%-58s %14s %-9s %s\n' "target" "figure" "unit" "verdict"
row "latency p99 <= 5 ms (2000/s, 1000+10 sockets)" "$(get latency.p99_ms)" le 5 ms
row "latency p99.9 <= 20 ms" "$(get latency.p999_ms)" le 20 ms
row "CPU <= 1.0 CPU-s per 10,000 notifications at 2000/s" "$(get latency.cpu_s_per_10k)" le 1.0 CPU-s
info "  the same at 500/s" "$(get latency_500.cpu_s_per_10k)" CPU-s
info "  latency p99 at 500/s" "$(get latency_500.p99_ms)" ms
info "  the same at full speed (the throughput run)" "$(get throughput.cpu_s_per_10k)" CPU-s
row "throughput >= 75% of the broker's queue + stream hop limit" "$(get throughput.ratio_both_pct)" ge 75 %
info "  the same, of a bare queue consumer alone (one hop)" "$(get throughput.ratio_pct)" %
row "RSS <= 10 KiB per idle connection (10,000)" "$(get connections.kib_per_conn)" le 10 KiB
row "connect+join >= 2000/s" "$(get connections.per_s)" ge 2000 /s
row "HTTP polling >= 20,000 req/s" "$(get http.rps)" ge 20000 req/s
row "no loss (lost + misrouted, latency and throughput)" \
  "$(sum latency.lost latency.misrouted latency_500.lost latency_500.misrouted throughput.lost throughput.misrouted)" le 0 copies
row "no duplicates (latency and throughput)" "$(sum latency.duplicated latency_500.duplicated throughput.duplicated)" le 0 copies
row "no failed connections (connections)" "$(get connections.failed)" le 0 sockets
row "replay: nothing missed (a join and a poller, 10,000 back)" "$(get replay.missed)" le 0 records
info "  a join's replay, records/s" "$(get replay.join_per_s)" /s
info "  its daemon CPU per 10,000 replayed" "$(get replay.join_cpu_s_per_10k)" CPU-s
info "  polling pages of 100, records/s" "$(get replay.poll_per_s)" /s
info "  its daemon CPU per 10,000 polled" "$(get replay.poll_cpu_s_per_10k)" CPU-s
echo "stream hop in the latency run: p50 $(get latency.stream_hop_p50_ms), p99 $(get latency.stream_hop_p99_ms) ms in the daemon;" \
  "p50 $(get latency.bare_hop_p50_ms), p99 $(get latency.bare_hop_p99_ms) ms bare (broker and client alone)"
floor=$(get latency.floor_cpu_s_per_10k)
echo "CPU floor: a bare lapin consumer alone, at the same rate in a process of its own, spends ${floor:-n/a} CPU-s per 10,000"
echo "  (one queue hop; the daemon takes two through lapin, the queue and the stream)"
echo "(logs and summaries in $OUT)"
exit 0
