# The two entry points: `make run` (the daemon, no broker needed) and `make test` (everything).
# Both install what they need on a fresh machine. `make test-brokers` runs the broker-facing
# tests again against the other brokers the daemon supports (CI runs it after `make test`).

# npm's record of an installed node_modules: newer than the lock file once `npm ci` has run.
NODE_DEPS := node_modules/.package-lock.json

.PHONY: run demo test test-brokers vendor services

## Run the daemon on http://127.0.0.1:3000 (ENABLE_RABBITMQ=false by default; DEMO=true for sample events).
run:
	cargo run --release

## Same, with the demo feed of EV-charging events.
demo:
	cargo run --release -- --demo

## Every test: unit, integration against the real RabbitMQ, official socket.io-client,
## headless Chromium, property tests, deploy-file validation; then the AsyncAPI document, the
## Node publisher and the client package (client/): tsc over their declarations and examples,
## node's test runner against the daemon binary cargo has just built, a Chromium page built
## from the client, npm pack into a fresh app.
test: $(NODE_DEPS) services
	cargo test --locked --workspace --all-targets
	node docs/validate-asyncapi.mjs
	node_modules/.bin/tsc --noEmit -p producer
	node --test --test-concurrency=1 producer/test/publisher.test.mjs
	npm run test:client
	bash scripts/validate-deploy.sh

## The broker-facing integration tests against RabbitMQ 4.0 with 4.3's defaults, 4.0 with
## default_queue_type = quorum, the local broker in stream-less mode (RABBITMQ_STREAM=off), and a
## three-node cluster losing a node mid-run. Starts those brokers itself (private nodes, their own
## ports; RabbitMQ 4.0 is fetched from Debian trixie once and cached) and stops them after.
test-brokers:
	bash scripts/test-brokers.sh

## The browser bundles in public/vendor: socket.io-client's, and the client package's (esbuild).
## They are committed (the binary embeds public/ at build time, so `cargo build` needs no npm);
## this refreshes them after a change to client/src or an upgrade of socket.io-client.
vendor: $(NODE_DEPS)
	npm run vendor

$(NODE_DEPS): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

## RabbitMQ on 127.0.0.1:5672, Chromium, promtool and python-socketio (.venv), started or
## installed if missing.
services:
	bash scripts/ensure-rabbitmq.sh
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-promtool.sh
	bash scripts/ensure-python-client.sh
