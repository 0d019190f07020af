// The publisher against the real broker and a running notify-bridge (target/debug/notify-bridge,
// built by `cargo test`): notifications reach a socket, a cut broker connection loses nothing
// the publisher reported as confirmed, a retry with the same messageId is emitted once, and the
// AMQP properties and trace context are set. Every wait is bounded.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import amqp from "amqplib";
import { io } from "socket.io-client";
import { context, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { createPublisher, PublishError } from "../index.js";

const BROKER_HOST = "127.0.0.1";
const BROKER_PORT = 5672;
const BROKER = `amqp://guest:guest@${BROKER_HOST}:${BROKER_PORT}/%2f`;
const BIN = process.env.NOTIFY_BRIDGE_BIN ?? fileURLToPath(new URL("../../target/debug/notify-bridge", import.meta.url));
const WAIT_MS = 10_000;

const unique = (prefix) => `${prefix}-${randomBytes(6).toString("hex")}`;

/** Resolves with `promise`, or fails the test naming `what` after `ms`. */
function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** A TCP proxy to the broker that can be cut (every connection dropped, new ones refused). */
async function startProxy() {
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return client.destroy();
    const upstream = net.connect(BROKER_PORT, BROKER_HOST);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `amqp://guest:guest@127.0.0.1:${server.address().port}/%2f`,
    cut() {
      cut = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      cut = false;
    },
    close() {
      this.cut();
      server.close();
    },
  };
}

/** The daemon on a free port, consuming a fresh exchange and queue; auth off (dev mode). */
async function startDaemon() {
  assert.ok(existsSync(BIN), `${BIN} is missing: run cargo build (make test does) first`);
  const port = await freePort();
  const exchange = unique("nb-producer-ex");
  const queue = unique("nb-producer-q");
  const child = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      ENABLE_RABBITMQ: "true",
      RABBITMQ_URL: BROKER,
      RABBITMQ_EXCHANGE: exchange,
      RABBITMQ_QUEUE: queue,
      HOST: "127.0.0.1",
      PORT: String(port),
      PUBLIC_DIR: fileURLToPath(new URL("../../public", import.meta.url)),
      RUST_LOG: "error",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const base = `http://127.0.0.1:${port}`;
  const exited = once(child, "exit").then(([code]) => {
    throw new Error(`notify-bridge exited early (${code})`);
  });
  exited.catch(() => {});
  // /readyz has no push form: poll it, bounded.
  const ready = (async () => {
    for (;;) {
      const ok = await fetch(`${base}/readyz`).then((r) => r.ok, () => false);
      if (ok) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  await within(WAIT_MS * 2, Promise.race([ready, exited]), "notify-bridge ready");
  return {
    base,
    exchange,
    queue,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await within(WAIT_MS, once(child, "exit"), "notify-bridge stops");
      }
      await deleteTopology(exchange, queue);
    },
  };
}

/** Deletes everything the daemon declared; each on its own channel, as a miss closes it. */
async function deleteTopology(exchange, queue) {
  const connection = await amqp.connect(BROKER);
  const attempt = async (op) => {
    const channel = await connection.createChannel();
    channel.on("error", () => {});
    await op(channel).catch(() => {});
    await channel.close().catch(() => {});
  };
  for (const q of [queue, `${queue}.dead`, `${queue}.log`]) await attempt((c) => c.deleteQueue(q));
  for (const e of [exchange, `${queue}.dlx`]) await attempt((c) => c.deleteExchange(e));
  await connection.close();
}

/** A socket joined to `room`, collecting the notifications it receives. */
async function joinedSocket(base, room) {
  const socket = io(base, { transports: ["websocket"], reconnection: false });
  const received = [];
  const waiters = [];
  socket.on("notification", (n) => {
    received.push(n);
    for (const w of waiters.splice(0)) w();
  });
  const ack = await within(WAIT_MS, socket.timeout(WAIT_MS).emitWithAck("join-room", room), `join ${room}`);
  assert.deepEqual(ack, { ok: true, room });
  return {
    received,
    /** Waits until a notification of type `kind` arrived; returns all received so far. */
    async until(kind) {
      const seen = () => received.some((n) => n.type === kind);
      const arrived = new Promise((resolve) => {
        const check = () => (seen() ? resolve() : waiters.push(check));
        check();
      });
      await within(WAIT_MS, arrived, `a ${kind} notification in ${room}`);
      return received;
    },
    close: () => socket.close(),
  };
}

describe("publisher against RabbitMQ and notify-bridge", () => {
  let daemon;
  before(async () => {
    daemon = await startDaemon();
  });
  after(async () => {
    await daemon?.stop();
  });

  test("a published notification reaches a socket", async () => {
    const customer = unique("c");
    const socket = await joinedSocket(daemon.base, `customer:${customer}`);
    const publisher = createPublisher({ url: BROKER, exchange: daemon.exchange });
    try {
      const { messageId } = await publisher.publish("session", {
        type: "charging.started",
        recipients: [customer],
        data: { sessionId: "s-1", kwh: 0 },
      });
      const [n] = await socket.until("charging.started");
      assert.equal(n.room, `customer:${customer}`);
      assert.equal(n.category, "session");
      assert.deepEqual(n.data, { sessionId: "s-1", kwh: 0 });
      assert.equal(n.messageId, messageId, "the generated messageId reaches the client");
      assert.equal(publisher.health().status, "connected");
    } finally {
      socket.close();
      await publisher.close();
    }
  });

  test("a cut broker connection: the publisher recovers and loses nothing it confirmed", async () => {
    const proxy = await startProxy();
    const customer = unique("c");
    const socket = await joinedSocket(daemon.base, `customer:${customer}`);
    const publisher = createPublisher({
      url: proxy.url,
      exchange: daemon.exchange,
      connectWaitMs: 300,
      reconnect: { initialDelayMs: 50, maxDelayMs: 400 },
    });
    const confirmed = [];
    const failed = [];
    const send = async (i) => {
      try {
        const { messageId } = await publisher.publish("session", { type: `n-${i}`, recipients: [customer] });
        confirmed.push(messageId);
      } catch (error) {
        assert.ok(error instanceof PublishError, String(error));
        failed.push(error.code);
      }
    };
    try {
      let i = 0;
      // Before the cut: confirmed in flight, concurrently.
      await Promise.all(Array.from({ length: 50 }, () => send(i++)));
      assert.equal(confirmed.length, 50);

      // Cut while a burst is in flight: some confirm, the rest reject; none hangs.
      const disconnected = once(publisher, "disconnect");
      const burst = Promise.all(Array.from({ length: 50 }, () => send(i++)));
      proxy.cut();
      await within(WAIT_MS, disconnected, "the publisher notices the cut");
      await within(WAIT_MS, burst, "publishes in flight at the cut settle");

      // While the broker is away, publish rejects within connectWaitMs instead of blocking.
      const started = Date.now();
      const away = await publisher.publish("session", { type: "away", recipients: [customer] }).catch((e) => e);
      assert.equal(away.code, "unavailable");
      assert.match(away.messageId, /^[0-9a-f-]{36}$/, "the id to retry with");
      assert.ok(Date.now() - started < 2000, `rejected after ${Date.now() - started} ms`);
      assert.equal(publisher.health().connected, false);

      const reconnected = once(publisher, "connect");
      proxy.restore();
      await within(WAIT_MS, reconnected, "the publisher reconnects");
      await Promise.all(Array.from({ length: 20 }, () => send(i++)));
      const { messageId: last } = await publisher.publish("session", { type: "last", recipients: [customer] });
      confirmed.push(last);

      const received = new Set((await socket.until("last")).map((n) => n.messageId));
      const lost = confirmed.filter((id) => !received.has(id));
      assert.deepEqual(lost, [], `confirmed but never emitted (failed: ${failed.join(",")})`);
      assert.ok(confirmed.length >= 71, `${confirmed.length} confirmed`);
      const health = publisher.health();
      assert.equal(health.status, "connected");
      assert.equal(health.reconnects, 1);
      assert.equal(health.pending, 0);
    } finally {
      socket.close();
      await publisher.close();
      proxy.close();
    }
  });

  test("a broker away at start: createPublisher returns at once and connects when it comes", async () => {
    const proxy = await startProxy();
    proxy.cut();
    const customer = unique("c");
    const socket = await joinedSocket(daemon.base, `customer:${customer}`);
    const publisher = createPublisher({
      url: proxy.url,
      exchange: daemon.exchange,
      connectWaitMs: 200,
      reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
    });
    try {
      assert.equal(publisher.health().status, "connecting");
      const away = await publisher.publish("session", { type: "early", recipients: [customer] }).catch((e) => e);
      assert.equal(away.code, "unavailable");
      const connected = once(publisher, "connect");
      proxy.restore();
      await within(WAIT_MS, connected, "the first connection once the broker is there");
      await publisher.publish("session", { type: "later", recipients: [customer] });
      const received = await socket.until("later");
      assert.deepEqual(
        received.map((n) => n.type),
        ["later"],
      );
      assert.equal(publisher.health().reconnects, 0, "a first connection is not a reconnect");
    } finally {
      socket.close();
      await publisher.close();
      proxy.close();
    }
  });

  test("a retry with the same messageId is emitted once", async () => {
    const customer = unique("c");
    const socket = await joinedSocket(daemon.base, `customer:${customer}`);
    const publisher = createPublisher({ url: BROKER, exchange: daemon.exchange });
    try {
      const body = { type: "retried", recipients: [customer] };
      const { messageId } = await publisher.publish("session", body);
      // The retry a caller makes after a timeout: same body, the id it was given.
      const again = await publisher.publish("session", body, { messageId });
      assert.equal(again.messageId, messageId);
      // An id in the body wins, as in the daemon.
      const inBody = { type: "retried", recipients: [customer], messageId: unique("m") };
      await publisher.publish("session", inBody);
      await publisher.publish("session", inBody, { messageId: "ignored" });
      await publisher.publish("session", { type: "marker", recipients: [customer] });

      const received = await socket.until("marker");
      assert.deepEqual(
        received.map((n) => [n.type, n.messageId]),
        [
          ["retried", messageId],
          ["retried", inBody.messageId],
          ["marker", received.at(-1).messageId],
        ],
      );
    } finally {
      socket.close();
      await publisher.close();
    }
  });

  test("AMQP properties and the active trace's traceparent are set", async () => {
    const manager = new AsyncLocalStorageContextManager().enable();
    context.setGlobalContextManager(manager);
    const connection = await amqp.connect(BROKER);
    const channel = await connection.createChannel();
    const tap = await channel.assertQueue("", { exclusive: true });
    await channel.bindQueue(tap.queue, daemon.exchange, "notification.audit");
    const publisher = createPublisher({ url: BROKER, exchange: daemon.exchange });
    try {
      const span = trace.wrapSpanContext({
        traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
        spanId: "00f067aa0ba902b7",
        traceFlags: 1,
      });
      const traced = await context.with(trace.setSpan(context.active(), span), () =>
        publisher.publish("audit", { type: "traced" }),
      );
      const plain = await publisher.publish("audit", { type: "plain" });

      const get = async () => {
        for (const deadline = Date.now() + WAIT_MS; Date.now() < deadline; ) {
          const m = await channel.get(tap.queue, { noAck: true });
          if (m) return m;
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
        throw new Error("no message on the tap queue");
      };
      const first = await get();
      assert.equal(first.properties.messageId, traced.messageId);
      assert.equal(first.properties.contentType, "application/json");
      assert.equal(first.properties.deliveryMode, 2);
      assert.ok(Math.abs(first.properties.timestamp - Date.now() / 1000) < 60);
      assert.equal(first.properties.headers.traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
      assert.deepEqual(JSON.parse(first.content), { type: "traced" });
      const second = await get();
      assert.equal(second.properties.messageId, plain.messageId);
      assert.equal(second.properties.headers.traceparent, undefined, "no trace, no header");
    } finally {
      await publisher.close();
      await connection.close();
      context.disable();
    }
  });

  test("bad input and a closed publisher reject at once, without a broker", async () => {
    const publisher = createPublisher({ url: "amqp://guest:guest@127.0.0.1:1/%2f", connectWaitMs: 0 });
    const code = (p) => p.then(() => "resolved", (e) => e.code);
    assert.equal(await code(publisher.publish("a.b", { type: "t" })), "invalid");
    assert.equal(await code(publisher.publish("session", { type: "" })), "invalid");
    assert.equal(await code(publisher.publish("session", ["t"])), "invalid");
    assert.equal(await code(publisher.publish("session", { type: "t" }, { messageId: "" })), "invalid");
    assert.equal(await code(publisher.publish("session", { type: "t" })), "unavailable");
    assert.notEqual(publisher.health().status, "connected");
    await publisher.close();
    assert.equal(await code(publisher.publish("session", { type: "t" })), "closed");
    assert.equal(publisher.health().status, "closed");
  });
});
