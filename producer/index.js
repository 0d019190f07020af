// @notify-bridge/producer: publish notify-bridge notifications (contract section 2) to the
// RabbitMQ topic exchange on a confirm channel.
//
// One connection per publisher, kept up by amqplib's own connection recovery (capped
// exponential backoff with jitter); the confirm channel is opened on every (re)connection.
// `publish` never waits unboundedly: for the connection at most `connectWaitMs`, for the
// broker's confirm at most `confirmTimeoutMs`, and at most `maxPending` publishes are in flight.
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import amqp from "amqplib";

const CATEGORY = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_TYPE_LENGTH = 256;
const MAX_MESSAGE_ID_BYTES = 256;

/** Why a publish did not succeed; `code` is one of the documented codes. */
export class PublishError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "PublishError";
    this.code = code;
  }
}

const DEFAULTS = {
  exchange: "notifications",
  routingKeyPrefix: "notification.",
  confirmTimeoutMs: 5000,
  connectWaitMs: 2000,
  maxPending: 1000,
  heartbeatSeconds: 10,
  socketTimeoutMs: 10000,
  assertExchange: true,
  reconnect: { initialDelayMs: 100, maxDelayMs: 10000, jitter: 0.5 },
};

// The optional peer dependency: loaded once, never required.
let otelApi;
function loadOtel() {
  otelApi ??= import("@opentelemetry/api").catch(() => null);
  return otelApi;
}

/** Adds the active trace context (W3C `traceparent`, and whatever the propagator adds). */
function injectTrace(api, headers) {
  if (!api) return;
  const ctx = api.context.active();
  api.propagation.inject(ctx, headers);
  if (headers.traceparent !== undefined) return;
  // No propagator registered (API without an SDK): write the W3C header ourselves.
  const span = api.trace.getSpan(ctx);
  const sc = span?.spanContext();
  if (sc && api.trace.isSpanContextValid(sc)) {
    const flags = (sc.traceFlags & 0xff).toString(16).padStart(2, "0");
    headers.traceparent = `00-${sc.traceId}-${sc.spanId}-${flags}`;
  }
}

function checkBody(body) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return "the body must be a JSON object";
  }
  if (typeof body.type !== "string" || body.type.length === 0) {
    return "the body needs a non-empty string `type`";
  }
  if ([...body.type].length > MAX_TYPE_LENGTH) return `\`type\` is longer than ${MAX_TYPE_LENGTH}`;
  return null;
}

function withId(error, messageId) {
  if (error instanceof PublishError) error.messageId = messageId;
  return error;
}

function checkMessageId(id) {
  return typeof id === "string" && id.length > 0 && Buffer.byteLength(id) <= MAX_MESSAGE_ID_BYTES;
}

class Publisher extends EventEmitter {
  #options;
  #connection = null;
  #channel = null;
  #waiters = new Set();
  #inFlight = new Set();
  #closed = false;
  #lastError = null;
  #connectedSince = null;
  #reconnects = 0;
  #connectedOnce = false;

  constructor(options) {
    super();
    if (!options || typeof options.url !== "string") {
      throw new TypeError("createPublisher needs { url }");
    }
    this.#options = {
      ...DEFAULTS,
      ...options,
      reconnect: { ...DEFAULTS.reconnect, ...options.reconnect },
    };
    loadOtel();
    const o = this.#options;
    amqp
      .connect(o.url, {
        heartbeat: o.heartbeatSeconds,
        // Bounds a TCP connect or handshake to a broker that accepts but does not answer.
        timeout: o.socketTimeoutMs,
        recovery: {
          initialDelay: o.reconnect.initialDelayMs,
          maxDelay: o.reconnect.maxDelayMs,
          jitter: o.reconnect.jitter,
          factor: 2,
          maxRetries: Infinity,
          // Return at once: the application starts whether or not the broker is there.
          waitForConnect: false,
          setup: (model) => this.#setup(model),
        },
      })
      .then((connection) => {
        this.#connection = connection;
        connection.on("disconnect", (error) => this.#lost(error));
        connection.on("connect-failed", (error) => {
          this.#lastError = error;
        });
        connection.on("reconnect-scheduled", ({ attempt, delay }) => {
          this.emit("reconnecting", { attempt, delayMs: delay });
        });
        // Connection errors arrive with their close; recorded, never thrown.
        connection.on("error", (error) => {
          this.#lastError = error;
        });
        if (this.#closed) connection.close().catch(() => {});
      })
      .catch((error) => {
        this.#lastError = error;
      });
  }

  /** Opens the confirm channel on a fresh connection; a throw makes amqplib retry later. */
  async #setup(model) {
    const channel = await model.createConfirmChannel();
    channel.on("error", (error) => {
      this.#lastError = error;
    });
    channel.on("close", () => {
      if (this.#channel !== channel) return;
      this.#channel = null;
      // A channel-level error (say, the exchange was deleted) leaves the connection up:
      // closing it hands the retry to the connection recovery and its backoff.
      if (!this.#closed) model.close().catch(() => {});
    });
    const o = this.#options;
    if (o.assertExchange) {
      await channel.assertExchange(o.exchange, "topic", { durable: true });
    }
    if (this.#connectedOnce) this.#reconnects += 1;
    this.#connectedOnce = true;
    this.#channel = channel;
    this.#connectedSince = new Date();
    this.#lastError = null;
    for (const waiter of this.#waiters) waiter.resolve(channel);
    this.#waiters.clear();
    this.emit("connect");
  }

  #lost(error) {
    this.#channel = null;
    this.#connectedSince = null;
    this.#lastError = error ?? this.#lastError;
    this.emit("disconnect", error);
  }

  /** The open confirm channel, waiting at most `connectWaitMs` for one. */
  #awaitChannel() {
    if (this.#channel) return Promise.resolve(this.#channel);
    const wait = this.#options.connectWaitMs;
    const unavailable = () =>
      new PublishError("unavailable", `not connected to RabbitMQ (waited ${wait} ms)`, {
        cause: this.#lastError ?? undefined,
      });
    if (wait <= 0) return Promise.reject(unavailable());
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (channel) => {
          clearTimeout(timer);
          resolve(channel);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(unavailable());
      }, wait);
      this.#waiters.add(waiter);
    });
  }

  /**
   * Publishes `body` with routing key `<routingKeyPrefix><category>`; resolves on the broker's
   * confirm with the `messageId` it was sent with.
   */
  async publish(category, body, options = {}) {
    if (this.#closed) throw new PublishError("closed", "the publisher is closed");
    if (typeof category !== "string" || !CATEGORY.test(category)) {
      throw new PublishError("invalid", "the category must match [A-Za-z0-9_-]{1,64}");
    }
    const problem = checkBody(body);
    if (problem) throw new PublishError("invalid", problem);
    // The body's messageId wins in the daemon, so it does here too.
    const messageId = body.messageId ?? options.messageId ?? randomUUID();
    if (!checkMessageId(messageId)) {
      throw new PublishError("invalid", "messageId must be a string of 1 to 256 bytes");
    }
    const o = this.#options;
    if (this.#inFlight.size >= o.maxPending) {
      throw withId(new PublishError("overloaded", `${o.maxPending} publishes are already waiting`), messageId);
    }
    const content = Buffer.from(JSON.stringify(body));
    const headers = { ...options.headers };
    injectTrace(await loadOtel(), headers);

    const attempt = this.#send(category, content, messageId, headers);
    this.#inFlight.add(attempt);
    try {
      await attempt;
      return { messageId };
    } catch (error) {
      // The caller retries with this id, so a message that did arrive is emitted once.
      throw withId(error, messageId);
    } finally {
      this.#inFlight.delete(attempt);
    }
  }

  /** Waits for the channel, publishes, and settles on the confirm, a nack or the timeout. */
  async #send(category, content, messageId, headers) {
    const o = this.#options;
    const channel = await this.#awaitChannel();
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new PublishError(
            "timeout",
            `RabbitMQ did not confirm within ${o.confirmTimeoutMs} ms; retry with the same messageId`,
          ),
        );
      }, o.confirmTimeoutMs);
      const settle = (error) => {
        clearTimeout(timer);
        if (!error) resolve();
        else if (error.message === "message nacked") {
          reject(new PublishError("nack", "RabbitMQ refused the message (nack)", { cause: error }));
        } else {
          reject(
            new PublishError(
              "unconfirmed",
              "the connection was lost before the confirm; retry with the same messageId",
              { cause: error },
            ),
          );
        }
      };
      try {
        channel.publish(
          o.exchange,
          `${o.routingKeyPrefix}${category}`,
          content,
          {
            persistent: true,
            contentType: "application/json",
            messageId,
            timestamp: Math.floor(Date.now() / 1000),
            headers,
          },
          settle,
        );
      } catch (error) {
        settle(error);
      }
    });
  }

  /** A snapshot for health endpoints; never waits. */
  health() {
    return {
      status: this.#closed ? "closed" : this.#channel ? "connected" : this.#connectedOnce ? "reconnecting" : "connecting",
      connected: this.#channel !== null,
      connectedSince: this.#connectedSince,
      pending: this.#inFlight.size,
      reconnects: this.#reconnects,
      lastError: this.#lastError ? String(this.#lastError.message ?? this.#lastError) : null,
    };
  }

  /** Refuses new publishes, lets those in flight settle (each is bounded), then disconnects. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new PublishError("closed", "the publisher is closed");
    for (const waiter of this.#waiters) waiter.reject(closed);
    this.#waiters.clear();
    // Each one is bounded by connectWaitMs + confirmTimeoutMs.
    await Promise.allSettled([...this.#inFlight]);
    this.#channel = null;
    await this.#connection?.close().catch(() => {});
  }
}

/** Creates a publisher; it connects in the background and returns at once. */
export function createPublisher(options) {
  return new Publisher(options);
}
