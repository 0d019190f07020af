// Test support for the client package's tests: the real daemon binary (target/debug, built by
// `cargo test`) on a free port, tokens, publishing, bounded waits, and RabbitMQ clean-up.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BINARY = process.env.NOTIFY_BRIDGE_BIN || path.join(REPO, 'target', 'debug', 'notify-bridge');
export const SECRET = 'client-test-secret-0123456789abcdef0123';
export const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
/** Every wait in these tests is bounded by this. */
export const WAIT_MS = 15000;

export const unique = (prefix) => `${prefix}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`;
export const nowSecs = () => Math.floor(Date.now() / 1000);

/** HS256 JWT; `exp` defaults to an hour from now. */
export function token(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: nowSecs() + 3600, ...claims })}`;
  return `${head}.${crypto.createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/** A port nothing listens on right now. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves once `check()` is truthy; rejects after `timeout` ms saying `what`. */
export async function until(what, check, { timeout = WAIT_MS, every = 50 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout} ms`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/**
 * The daemon binary with its own exchange and queue (RabbitMQ mode) on `port`; `restart()`
 * starts it again on the same port, `stop()` ends it, `cleanup()` also deletes its topology.
 */
export async function startDaemon({ rabbit = false, port, vars = {} } = {}) {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build (make test does)`);
  const daemon = {
    port: port ?? (await freePort()),
    exchange: unique('nb-client-ex'),
    queue: unique('nb-client-q'),
    rabbit,
    child: null,
    log: [],
  };
  daemon.base = `http://127.0.0.1:${daemon.port}`;
  daemon.start = async () => {
    const env = {
      PATH: process.env.PATH,
      HOST: '127.0.0.1',
      PORT: String(daemon.port),
      JWT_SECRET: SECRET,
      ENABLE_RABBITMQ: String(rabbit),
      RABBITMQ_URL: AMQP_URL,
      RABBITMQ_EXCHANGE: daemon.exchange,
      RABBITMQ_QUEUE: daemon.queue,
      RABBITMQ_RECONNECT_MAX_MS: '1000',
      SHUTDOWN_TIMEOUT_MS: '2000',
      RUST_LOG: 'warn',
      ...vars,
    };
    const child = spawn(BINARY, [], { env, cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr.on('data', (d) => daemon.log.push(String(d)));
    daemon.child = child;
    daemon.exited = new Promise((resolve) => child.once('exit', resolve));
    await until(`daemon on ${daemon.base} ready`, async () => (await fetch(`${daemon.base}/readyz`)).ok);
  };
  daemon.stop = async () => {
    if (!daemon.child || daemon.child.exitCode !== null) return;
    daemon.child.kill('SIGTERM');
    await Promise.race([daemon.exited, new Promise((r) => setTimeout(r, WAIT_MS))]);
    if (daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  };
  daemon.restart = async () => {
    await daemon.stop();
    await daemon.start();
  };
  daemon.cleanup = async () => {
    await daemon.stop();
    if (rabbit) await deleteTopology(daemon.exchange, daemon.queue);
  };
  /** POST /api/notifications (to the exchange in RabbitMQ mode); asserts 202. */
  daemon.post = async (body) => {
    const res = await fetch(`${daemon.base}/api/notifications`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token({ sub: 'test', role: 'service' })}` },
      body: JSON.stringify({ category: 'session', type: 'charging.started', ...body }),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    if (res.status !== 202) throw new Error(`POST → ${res.status} ${await res.text()}`);
  };
  await daemon.start();
  return daemon;
}

/** Deletes what a RabbitMQ-mode daemon declared, so tests leave nothing on the shared broker. */
export async function deleteTopology(exchange, queue) {
  const amqp = (await import('amqplib')).default;
  const conn = await amqp.connect(AMQP_URL);
  conn.on('error', () => {});
  try {
    for (const q of [queue, `${queue}.dead`, `${queue}.log`]) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      await ch.deleteQueue(q).catch(() => {});
      await ch.close().catch(() => {});
    }
    for (const e of [exchange, `${queue}.dlx`]) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      await ch.deleteExchange(e).catch(() => {});
      await ch.close().catch(() => {});
    }
  } finally {
    await conn.close().catch(() => {});
  }
}

/** Collects what a client reports, with bounded waits on it. */
export function recorder() {
  const rec = { notifications: [], resets: [], errors: [], modes: [], states: [] };
  rec.options = {
    onNotification: (n) => rec.notifications.push(n),
    onReset: (r) => rec.resets.push(r),
    onError: (e) => rec.errors.push(e),
    onMode: (m) => rec.modes.push(m),
    onState: (s) => rec.states.push(s),
  };
  rec.received = (pred, what) => until(what, () => rec.notifications.find(pred));
  return rec;
}
