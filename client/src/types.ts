/**
 * A notification as the daemon delivers it (contract section 3): the Socket.IO event
 * `notification`, and each item of a polling answer.
 */
export interface Notification<Data = unknown> {
  /** Opaque cursor: compare only for equality, hand back as `since`. */
  id: string;
  /** The room it was emitted to; `null` for a broadcast to sockets in none of its rooms. */
  room: string | null;
  /** The last segment of the routing key: `station`, `charger`, `session`, `customer`, … */
  category: string;
  /** e.g. `charging.started` */
  type: string;
  data: Data | null;
  messageId: string | null;
  /** RFC 3339 */
  timestamp: string;
}

/** `GET /api/config` (contract section 6). */
export interface DaemonConfig {
  ENABLE_RABBITMQ: boolean;
  pollIntervalMs: number;
  authRequired: boolean;
}

/** How notifications currently arrive. */
export type Mode = 'connecting' | 'realtime' | 'polling';

/** The connection's state, for a status badge. */
export type State = 'connecting' | 'connected' | 'disconnected' | 'polling' | 'error' | 'closed';

/** Something the app may want to show; the client keeps going unless `state` says `error`. */
export interface ClientError {
  /** `unauthorized`, `forbidden`, `invalid_room`, `token_expired`, `http_503`, … */
  code: string;
  message: string;
  room?: string;
}

/** Where the client could not fill a gap: reload this room's view from your own source. */
export interface ResetEvent {
  room: string;
}

export interface NotifyOptions<Data = unknown> {
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
  rooms?: string[];
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
  onNotification?: (notification: Notification<Data>) => void;
  onReset?: (event: ResetEvent) => void;
  onMode?: (mode: Mode) => void;
  onState?: (state: State) => void;
  onError?: (error: ClientError) => void;
}

export interface NotifyClient {
  readonly mode: Mode;
  readonly state: State;
  /** The rooms asked for (including any the daemon refused). */
  readonly rooms: readonly string[];
  /** The last id seen per room: keep it (e.g. in sessionStorage) and pass it back as `since`. */
  readonly cursors: Readonly<Record<string, string>>;
  /** Joins a room on the live connection (or adds it to the next poll). Resolves false when refused. */
  join(room: string, options?: { since?: string }): Promise<boolean>;
  /** Leaves a room on the live connection and forgets its cursor. */
  leave(room: string): Promise<void>;
  /** Stops everything: no timer, request or socket is left behind. Safe to call twice. */
  close(): void;
}
