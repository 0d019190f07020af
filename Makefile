# The two entry points: `make run` (the daemon, no broker needed) and `make test` (everything).
# Both install what they need on a fresh machine.

VENDOR := public/vendor/socket.io.esm.min.js

.PHONY: run demo test vendor services

## Run the daemon on http://127.0.0.1:3000 (ENABLE_RABBITMQ=false by default; DEMO=true for sample events).
run: vendor
	cargo run --release

## Same, with the demo feed of EV-charging events.
demo: vendor
	cargo run --release -- --demo

## Every test: unit, integration against the real RabbitMQ, official socket.io-client,
## headless Chromium, property tests, deploy-file validation, the AsyncAPI document, and the
## Node publisher (against the daemon the cargo step built).
test: vendor services
	cargo test --locked --workspace --all-targets
	node docs/validate-asyncapi.mjs
	node_modules/.bin/tsc --noEmit -p producer
	node --test --test-concurrency=1 producer/test/publisher.test.mjs
	bash scripts/validate-deploy.sh

## The official socket.io-client bundle, served to browsers from public/vendor (no CDN).
vendor: $(VENDOR)

$(VENDOR): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p public/vendor
	cp node_modules/socket.io-client/dist/socket.io.esm.min.js $(VENDOR)

## RabbitMQ on 127.0.0.1:5672, Chromium and promtool, started or installed if missing.
services:
	bash scripts/ensure-rabbitmq.sh
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-promtool.sh
