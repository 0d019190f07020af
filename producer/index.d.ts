// Types for @notify-bridge/producer. The body shape follows schemas/notification-body.schema.json.
import { EventEmitter } from "node:events";

/** A customer id: `customer:<id>` is its room. */
export type CustomerId = string | number;

/** `customer:<id>` or `cms:<name>` (contract section 4). */
export type RoomName = `customer:${string}` | `cms:${string}`;

/** The AMQP message body (contract section 2); only `type` is required. */
export interface NotificationBody {
  /** What happened, e.g. `charging.started`; 1 to 256 characters. */
  type: string;
  /** Any JSON, passed to clients verbatim. */
  data?: unknown;
  recipients?: CustomerId[] | null;
  rooms?: RoomName[] | null;
  broadcast?: boolean | null;
  /** Wins over the generated or given message id. */
  messageId?: string | null;
  /** RFC 3339. */
  timestamp?: string | null;
  [extra: string]: unknown;
}

export interface ReconnectOptions {
  /** First delay after a lost or failed connection. Default 100. */
  initialDelayMs?: number;
  /** Cap of the doubling delay, jitter included. Default 10000. */
  maxDelayMs?: number;
  /** Spread of each delay, 0 to 1 (0.5: ±50 %). Default 0.5. */
  jitter?: number;
}

export interface PublisherOptions {
  /** amqp:// or amqps:// URL of the broker. */
  url: string;
  /** Topic exchange (RABBITMQ_EXCHANGE). Default `notifications`. */
  exchange?: string;
  /** Routing key = prefix + category. Default `notification.`. */
  routingKeyPrefix?: string;
  /** Declare the exchange (topic, durable) on each connection. Default true. */
  assertExchange?: boolean;
  /** Reject with `timeout` when the broker has not confirmed within this. Default 5000. */
  confirmTimeoutMs?: number;
  /** While disconnected, wait this long for the connection, then reject with `unavailable`; 0 rejects at once. Default 2000. */
  connectWaitMs?: number;
  /** Publishes waiting or unconfirmed at once; more reject with `overloaded`. Default 1000. */
  maxPending?: number;
  /** AMQP heartbeat: a silent broker is detected within about twice this. Default 10. */
  heartbeatSeconds?: number;
  /** Socket timeout for connecting and for a connection that goes silent. Default 10000. */
  socketTimeoutMs?: number;
  reconnect?: ReconnectOptions;
}

export interface PublishOptions {
  /** Used when the body has no `messageId`; else a random UUID. Retry with the same one. */
  messageId?: string;
  /** Extra AMQP headers; `traceparent` is added when a trace is active. */
  headers?: Record<string, string | number | boolean>;
}

export interface PublishResult {
  /** The id the message was sent with: retry with it to be emitted once. */
  messageId: string;
}

export type PublishErrorCode =
  | "invalid"
  | "overloaded"
  | "unavailable"
  | "timeout"
  | "nack"
  | "unconfirmed"
  | "closed";

export class PublishError extends Error {
  readonly name: "PublishError";
  readonly code: PublishErrorCode;
  /** The id the message was (or would have been) sent with; absent for `invalid` and `closed`. */
  readonly messageId?: string;
  constructor(code: PublishErrorCode, message: string, options?: { cause?: unknown });
}

export interface PublisherHealth {
  status: "connecting" | "connected" | "reconnecting" | "closed";
  connected: boolean;
  connectedSince: Date | null;
  /** Publishes waiting for the connection or for their confirm. */
  pending: number;
  /** Successful reconnections since the first connection. */
  reconnects: number;
  lastError: string | null;
}

export interface Publisher extends EventEmitter {
  /** Resolves on the broker's confirm; rejects with a {@link PublishError}. */
  publish(category: string, body: NotificationBody, options?: PublishOptions): Promise<PublishResult>;
  health(): PublisherHealth;
  /** Lets publishes in flight settle, then disconnects. Later publishes reject with `closed`. */
  close(): Promise<void>;
  on(event: "connect", listener: () => void): this;
  on(event: "disconnect", listener: (error: Error | undefined) => void): this;
  on(event: "reconnecting", listener: (info: { attempt: number; delayMs: number }) => void): this;
}

/** Returns at once; the connection is made (and remade) in the background. */
export function createPublisher(options: PublisherOptions): Publisher;
