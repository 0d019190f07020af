import type { EvEventMap } from './events.js';

/** A customer's room (contract section 4): `customer:<id>`, the id matching `[A-Za-z0-9_-]{1,64}`. */
export type CustomerRoom = `customer:${string}`;
/** An operators' room: `cms:<name>`, the name matching `[a-z0-9_-]{1,32}`. */
export type CmsRoom = `cms:${string}`;
/** The rooms the daemon's default routing fills (contract section 2). */
export type KnownCmsRoom = 'cms:dashboard' | 'cms:stations' | 'cms:points' | 'cms:sessions';
/** Any room name; a string of another shape is refused as `invalid_room`. */
export type Room = CustomerRoom | CmsRoom;

/**
 * A notification as the daemon delivers it (contract section 3): the Socket.IO event
 * `notification`, and each item of a polling answer.
 */
export interface NotificationEnvelope<Type extends string = string, Data = unknown> {
  /** Opaque cursor: compare only for equality, hand back as `since`. */
  id: string;
  /** The room it was emitted to; `null` for a broadcast to sockets in none of its rooms. */
  room: Room | null;
  /** The last segment of the routing key: `station`, `charger`, `session`, `customer`, … */
  category: string;
  /** e.g. `charging.started` */
  type: Type;
  /** The producer's `data`; `null` when it sent none. */
  data: Data | null;
  messageId: string | null;
  /** RFC 3339 */
  timestamp: string;
}

/**
 * One notification of an event map (`type` → `data`): a union discriminated by `type`, so that
 * `if (n.type === 'charging.progress')` narrows `n.data` to that event's data. The default map
 * is the EV-charging catalogue (`EvEventMap`, generated from `schemas/events/`); extend it with
 * your own types (`EvEventMap & { 'tariff.changed': TariffData }`), or use
 * `Record<string, unknown>` to receive every type untyped.
 */
export type NotifyNotification<Events extends object = EvEventMap> = {
  [Type in keyof Events & string]: NotificationEnvelope<Type, Events[Type]>;
}[keyof Events & string];

/** `GET /api/config` (contract section 6). */
export interface DaemonConfig {
  ENABLE_RABBITMQ: boolean;
  pollIntervalMs: number;
  authRequired: boolean;
}

/** A count since the statistics began (`all`) and since midnight in the daemon's time zone (`today`). */
export interface StatsCounter {
  all: number;
  today: number;
}

/** One minute of the last hour: its start (UTC, RFC 3339), its total and its count per category. */
export interface StatsMinute {
  minute: string;
  total: number;
  categories: Record<string, number>;
}

/** The statistics of contract section 7: `GET /api/stats` and the socket event `stats` (room `cms:dashboard`). */
export interface DashboardStats {
  generatedAt: string;
  since: string;
  /** IANA time zone in which `today` begins (`STATS_TIMEZONE`). */
  timezone: string;
  /** The date `today` counts, e.g. `2026-12-06`. */
  today: string;
  total: StatsCounter;
  categories: Record<string, StatsCounter>;
  /** At most 200 types by name; the rest under `other`. */
  types: Record<string, StatsCounter>;
  /** 60 entries, oldest first; the last is the current minute. */
  perMinute: StatsMinute[];
}

/** `GET /api/config` (contract section 6). */
export interface DaemonConfig {
  ENABLE_RABBITMQ: boolean;
  pollIntervalMs: number;
  authRequired: boolean;
}

/** How notifications currently arrive; `off`: they do not (the client gave up, or was closed). */
export type Mode = 'connecting' | 'realtime' | 'polling' | 'off';

/** The connection's state, for a status badge. */
export type State = 'connecting' | 'connected' | 'disconnected' | 'polling' | 'error' | 'closed';

/** Something the app may want to show; the client keeps going unless `state` says `error`. */
export interface ClientError {
  /**
   * `config_invalid` (`/api/config` answered something that is not the daemon's JSON: a wrong
   * `baseUrl`), `config_unreachable`, `unauthorized`, `forbidden`, `invalid_room`,
   * `token_expired`, `rate_limited`, `http_503`, …
   */
  code: string;
  message: string;
  room?: Room;
}

/** Where the client could not fill a gap: reload this room's view from your own source. */
export interface ResetEvent {
  room: Room;
}

export interface NotifyOptions<Events extends object = EvEventMap> {
  /** Daemon URL; a path prefix is kept for the API and `/socket.io`. Default: the page's origin. */
  baseUrl?: string;
  /** A fixed JWT. Prefer `getToken` for tokens that expire. */
  token?: string;
  /**
   * Returns a valid JWT (or `''` when the daemon's auth is off). Called at connect, on every
   * reconnect, before polling requests, on `token-expired`, before `exp` to refresh the live
   * socket, and once more after a refusal. Cache in it as you like; return a fresh token once
   * the old one is near its end.
   */
  getToken?: () => string | Promise<string>;
  /** Rooms to join, e.g. `['customer:123']`; change them later with `join` / `leave`. */
  rooms?: Room[];
  /** Where to resume: per room (`client.cursors` of an earlier run), or one cursor for all. */
  since?: Record<string, string> | string;
  /** Without a cursor, load the retained history first (which also gives the room a cursor). Default true. */
  history?: boolean;
  /** Fall back to polling if the socket is not connected by then. Default 5000. */
  connectTimeoutMs?: number;
  /**
   * With `getToken`, send `refresh-token` on the live socket this long before its token's `exp`
   * (at most half the token's life), so the socket never drops. Default 60000.
   */
  refreshBeforeMs?: number;
  /** `false`: no `refresh-token`; at `token-expired` the socket reconnects with a new token. Default true. */
  refresh?: boolean;
  /** Polling interval multiplier while the page is hidden. Default 4. */
  hiddenSlowdown?: number;
  /** Socket.IO transports. Default socket.io-client's (polling, then websocket). */
  transports?: ('polling' | 'websocket')[];
  /**
   * `notification` (default): a notification emitted to several of your rooms reaches
   * `onNotification` once. `room`: once per room (what a view per room wants).
   */
  dedupe?: 'notification' | 'room';
  onNotification?: (notification: NotifyNotification<Events>) => void;
  /** The daemon's statistics (contract section 7), pushed to sockets in `cms:dashboard` (real time only). */
  onStats?: (stats: DashboardStats) => void;
  onReset?: (event: ResetEvent) => void;
  onMode?: (mode: Mode) => void;
  onState?: (state: State) => void;
  onError?: (error: ClientError) => void;
}

export interface NotifyClient {
  readonly mode: Mode;
  readonly state: State;
  /** The rooms asked for (including any the daemon refused). */
  readonly rooms: readonly Room[];
  /** The last id seen per room: keep it (e.g. in sessionStorage) and pass it back as `since`. */
  readonly cursors: Readonly<Record<string, string>>;
  /** Joins a room on the live connection (or adds it to the next poll). Resolves false when refused. */
  join(room: Room, options?: { since?: string }): Promise<boolean>;
  /** Leaves a room on the live connection and forgets its cursor. */
  leave(room: Room): Promise<void>;
  /** Stops everything: no timer, request or socket is left behind. Safe to call twice. */
  close(): void;
}
