// @notify-bridge/client: notifications of notify-bridge rooms, in real time over Socket.IO when
// the daemon consumes RabbitMQ, by HTTP polling otherwise (or while the socket is away).
import { io, type Socket } from 'socket.io-client';
import type {
  ClientError, DaemonConfig, DashboardStats, Mode, NotificationEnvelope, NotifyClient, NotifyNotification,
  NotifyOptions, Room, State,
} from './types.js';
import type { EvEventMap } from './events.js';

export type {
  ClientError, CmsRoom, CustomerRoom, DaemonConfig, DashboardStats, KnownCmsRoom, Mode, NotificationEnvelope,
  NotifyClient, NotifyNotification, NotifyOptions, ResetEvent, Room, State, StatsCounter, StatsMinute,
} from './types.js';
export * from './events.js';

/** Ids and messageIds remembered to drop copies (polling and replay overlap, producer retries). */
const SEEN_MAX = 5000;
const PAGE_LIMIT = 1000;
const PAGES_PER_POLL = 10;
const REQUEST_TIMEOUT_MS = 15000;
const ACK_TIMEOUT_MS = 10000;
/** ±20 % on every polling and retry delay, so a fleet of tabs does not poll in step. */
const JITTER = 0.2;
/** setTimeout's largest delay. */
const MAX_DELAY_MS = 2 ** 31 - 1;

/** An error from the daemon's API, with its HTTP status (0: no answer) and an error code. */
class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** `/api/config` as the daemon answers it, or undefined for anything else (an HTML page, `null`). */
function asConfig(body: unknown): DaemonConfig | undefined {
  const c = body as Partial<DaemonConfig> | null;
  if (!c || typeof c !== 'object' || typeof c.ENABLE_RABBITMQ !== 'boolean') return undefined;
  return c as DaemonConfig;
}

/** A valid room name (contract section 4). */
export function isRoom(name: string): name is Room {
  return /^(customer:[A-Za-z0-9_-]{1,64}|cms:[a-z0-9_-]{1,32})$/.test(name);
}

/** A set that forgets its oldest entries beyond `max`. */
class Recent {
  private readonly items = new Set<string>();
  constructor(private readonly max: number) {}
  has(key: string): boolean {
    return this.items.has(key);
  }
  add(key: string): void {
    this.items.add(key);
    if (this.items.size > this.max) this.items.delete(this.items.values().next().value as string);
  }
}

/** A JWT's `exp` (Unix seconds), read without verifying it; undefined when it has none. */
export function tokenExp(token: string): number | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof json?.exp === 'number' ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

const jittered = (ms: number) => Math.round(ms * (1 - JITTER + Math.random() * 2 * JITTER));
const clampDelay = (ms: number) => Math.min(Math.max(0, ms), MAX_DELAY_MS);

/**
 * Connects to notify-bridge and delivers the notifications of some rooms, each once.
 *
 * Reads `GET {baseUrl}/api/config`. With `ENABLE_RABBITMQ` true it uses Socket.IO and joins every
 * room (again on each reconnect, with each room's cursor, so the daemon replays what was missed).
 * Otherwise, or while the socket cannot connect, it polls `GET {baseUrl}/api/notifications`.
 */
export function connectNotifications<Events extends object = EvEventMap>(
  options: NotifyOptions<Events> = {},
): NotifyClient {
  type N = NotifyNotification<Events>;
  const {
    token: staticToken = '',
    getToken,
    history = true,
    connectTimeoutMs = 5000,
    refreshBeforeMs = 60000,
    refresh: refreshing = true,
    hiddenSlowdown = 4,
    transports,
    dedupe = 'notification',
    onNotification = () => {},
    onStats,
    onReset = () => {},
    onMode = () => {},
    onState = () => {},
    onError = () => {},
  } = options;
  const here = (globalThis as { location?: { href: string } }).location?.href;
  const base = new URL(options.baseUrl ?? here ?? 'http://127.0.0.1:3000', here);
  const prefix = base.pathname.replace(/\/+$/, '');
  const doc = (globalThis as { document?: Document }).document;
  const win = globalThis as unknown as Partial<Pick<Window, 'addEventListener' | 'removeEventListener'>>;

  const rooms: Room[] = [...new Set(options.rooms ?? [])];
  const cursors = new Map<string, string>();
  if (typeof options.since === 'string') rooms.forEach((r) => cursors.set(r, options.since as string));
  else if (options.since) Object.entries(options.since).forEach(([r, c]) => c && cursors.set(r, String(c)));
  const refused = new Set<string>(); // rooms the daemon refused: not retried on each reconnect
  const seenIds = new Recent(SEEN_MAX);
  const seenMessageIds = new Recent(SEEN_MAX);
  const aborter = new AbortController();
  const timers = new Set<ReturnType<typeof setTimeout>>();

  let mode: Mode = 'connecting';
  let state: State = 'connecting';
  let socket: Socket | null = null;
  let pollMs = 10000;
  let polling = false;
  let pollGen = 0; // bumping it ends the current polling loop
  let pollTimer: ReturnType<typeof setTimeout> | undefined;
  let pollNow: (() => void) | null = null;
  let connectTimer: ReturnType<typeof setTimeout> | undefined;
  let refreshTimer: ReturnType<typeof setTimeout> | undefined;
  let connGen = 0;
  let authRetried = false;
  let tokenExpired = false;
  let socketToken = '';
  let closed = false;

  const setMode = (m: Mode) => { if (m !== mode && !closed) { mode = m; onMode(m); } };
  const setState = (s: State) => { if (s !== state && !closed) { state = s; onState(s); } };
  const report = (code: string, message: string, extra: Partial<ClientError> = {}) => {
    if (!closed) onError({ code, message, ...extra });
  };
  const activeRooms = () => rooms.filter((r) => !refused.has(r));
  const hasRoom = (room: string | null): room is Room => room != null && (rooms as string[]).includes(room);
  const later = (fn: () => void, ms: number) => {
    const t = setTimeout(() => { timers.delete(t); if (!closed) fn(); }, clampDelay(ms));
    timers.add(t);
    return t;
  };
  const cancel = (t: ReturnType<typeof setTimeout> | undefined) => {
    if (t !== undefined) { clearTimeout(t); timers.delete(t); }
  };
  const sleep = (ms: number) => new Promise<void>((resolve) => later(resolve, ms));

  /** A token from `getToken` (every call), else the static one. */
  async function currentToken(): Promise<string> {
    if (!getToken) return staticToken;
    return String((await getToken()) ?? '');
  }

  function deliver(n: NotificationEnvelope) {
    if (closed || !n || n.id == null) return;
    if (hasRoom(n.room)) cursors.set(n.room, n.id);
    // The copies of one notification in several rooms share its id; a producer's retry shares
    // its messageId. The app sees each once (once per room with `dedupe: 'room'`).
    const scope = dedupe === 'room' ? `${n.room ?? ''}\n` : '';
    const id = scope + n.id;
    const messageId = n.messageId != null ? scope + n.messageId : null;
    const byId = seenIds.has(id);
    const byMessageId = messageId != null && seenMessageIds.has(messageId);
    seenIds.add(id);
    if (messageId != null) seenMessageIds.add(messageId);
    if (byId || byMessageId) return;
    onNotification(n as unknown as N);
  }

  async function request(path: string, token: string): Promise<unknown> {
    const ctl = new AbortController();
    const abort = () => ctl.abort();
    aborter.signal.addEventListener('abort', abort);
    const timer = setTimeout(abort, REQUEST_TIMEOUT_MS);
    try {
      const url = new URL(prefix + path, base.origin);
      let res: Response;
      try {
        res = await fetch(url, {
          headers: token ? { Authorization: `Bearer ${token}` } : {},
          cache: 'no-store',
          signal: ctl.signal,
        });
      } catch (err) {
        if (closed) throw err;
        throw new ApiError(0, 'unreachable', `${url.origin} did not answer (${(err as Error).message})`);
      }
      const text = await res.text();
      let body: { error?: string; message?: string } | null;
      try {
        body = JSON.parse(text);
      } catch {
        // An HTML fallback page (a dev server's, nginx's), a proxy's error page: not the daemon.
        throw new ApiError(res.status, 'not_json', `${url.pathname} answered ${res.status} ${res.headers.get('content-type') || 'without a content type'}, not JSON`);
      }
      if (!res.ok) {
        throw new ApiError(res.status, body?.error || `http_${res.status}`, body?.message || `HTTP ${res.status}`);
      }
      return body;
    } finally {
      clearTimeout(timer);
      aborter.signal.removeEventListener('abort', abort);
    }
  }

  /** An authenticated GET, asked once more with a fresh token after a 401. */
  async function getJson(path: string): Promise<unknown> {
    try {
      return await request(path, await currentToken());
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401 || closed) throw err;
      return request(path, await currentToken());
    }
  }

  interface Page { notifications?: NotificationEnvelope[]; cursor?: string; reset?: boolean }

  // Rooms sharing a cursor go in one request; after it they all share the answer's cursor.
  async function pollOnce(which: string[] = activeRooms()) {
    const groups = new Map<string, string[]>();
    for (const room of which) {
      const key = cursors.get(room) ?? '';
      groups.set(key, [...(groups.get(key) ?? []), room]);
    }
    for (const [start, group] of groups) {
      let cursor = start;
      for (let page = 0; page < PAGES_PER_POLL && !closed; page++) {
        const q = new URLSearchParams(group.map((r) => ['room', r]));
        if (cursor) q.set('after', cursor);
        q.set('limit', String(PAGE_LIMIT));
        const body = (await getJson(`/api/notifications?${q}`)) as Page | null;
        // Rooms left while the request was out are not delivered to.
        const still = group.filter((r) => hasRoom(r));
        if (body?.reset) still.forEach((room) => onReset({ room }));
        const items = Array.isArray(body?.notifications) ? body.notifications : [];
        items.filter((n) => !n.room || (still as string[]).includes(n.room)).forEach(deliver);
        if (body?.cursor) cursor = body.cursor;
        if (cursor) still.forEach((r) => cursors.set(r, cursor));
        if (items.length < PAGE_LIMIT) break;
      }
    }
  }

  const pollDelay = () => jittered(pollMs * (doc?.visibilityState === 'hidden' ? hiddenSlowdown : 1));

  function startPolling() {
    if (polling || closed) return;
    polling = true;
    const gen = ++pollGen;
    setMode('polling');
    const tick = async () => {
      pollNow = null;
      try {
        await pollOnce();
        if (gen === pollGen) setState('polling');
      } catch (err) {
        if (gen !== pollGen || closed) return;
        const e = err as Partial<ApiError>;
        if (e.status === 400 || e.status === 401 || e.status === 403) {
          // Asking again would get the same answer (401: after a fresh token too).
          stopPolling();
          setMode('off');
          setState('error');
          report(e.code ?? 'poll_failed', `polling stopped: ${e.message}`);
          return;
        }
        setState('disconnected');
      }
      if (gen !== pollGen) return;
      pollTimer = later(tick, pollDelay());
      pollNow = () => { cancel(pollTimer); tick(); };
    };
    tick();
  }

  function stopPolling() {
    polling = false;
    pollGen++;
    pollNow = null;
    cancel(pollTimer);
  }

  function armFallback() {
    cancel(connectTimer);
    connectTimer = later(() => { if (!socket?.connected) startPolling(); }, connectTimeoutMs);
  }

  async function joinOnSocket(room: Room): Promise<boolean> {
    const s = socket;
    if (!s?.connected) return false;
    const cursor = cursors.get(room);
    try {
      const ack = await s.timeout(ACK_TIMEOUT_MS).emitWithAck('join-room', cursor ? { room, after: cursor } : room);
      if (closed || s !== socket) return false;
      if (ack?.ok) {
        if (ack.reset) onReset({ room });
        return true;
      }
      // A refusal is final for this connection; only a rate limit is worth another try later,
      // and a `forbidden` that came because the socket's token has just ended (the daemon is
      // about to send token-expired: the room is joined again with the next token).
      const expired = tokenExpired || (tokenExp(socketToken) ?? Infinity) * 1000 <= Date.now();
      const retry = ack?.error === 'rate_limited' || (ack?.error === 'forbidden' && expired);
      if (!retry) refused.add(room);
      report(ack?.error || 'join_failed', `join-room ${room} refused: ${ack?.error || 'no reason given'}`, { room });
    } catch {
      report('ack_timeout', `join-room ${room}: no acknowledgement`, { room });
    }
    return false;
  }

  /** Sends `refresh-token` before the live socket's token ends; once more with a fresh token if refused. */
  function scheduleRefresh(exp: number | undefined) {
    cancel(refreshTimer);
    if (!getToken || !refreshing || !exp) return;
    const left = exp * 1000 - Date.now();
    refreshTimer = later(refresh, left - Math.min(refreshBeforeMs, left / 2));
  }

  async function refresh() {
    for (let attempt = 0; attempt < 2; attempt++) {
      const s = socket;
      if (closed || !s?.connected) return;
      let token: string;
      try {
        token = await currentToken();
      } catch (err) {
        report('token_failed', `getToken failed: ${(err as Error).message}`);
        break;
      }
      try {
        const ack = await s.timeout(ACK_TIMEOUT_MS).emitWithAck('refresh-token', token);
        if (closed || s !== socket) return;
        if (ack?.ok) {
          socketToken = token;
          scheduleRefresh(typeof ack.exp === 'number' ? ack.exp : tokenExp(token));
          return;
        }
      } catch {
        // No ack: tried once more below; else token-expired will reconnect with a new token.
      }
    }
    report('refresh_refused', 'the daemon refused the refreshed token; reconnecting at expiry');
  }

  async function onConnect() {
    cancel(connectTimer);
    authRetried = false;
    tokenExpired = false;
    const gen = ++connGen;
    setState('connecting');
    scheduleRefresh(tokenExp(socketToken));
    if (history && activeRooms().some((r) => !cursors.has(r))) {
      await pollOnce().catch((err) => report(err.code || 'history_failed', `history not loaded: ${err.message}`));
    }
    if (gen !== connGen || !socket?.connected) return;
    const results = await Promise.all(activeRooms().map(joinOnSocket));
    if (gen !== connGen || !socket?.connected) return;
    stopPolling();
    setMode('realtime');
    setState(results.every(Boolean) ? 'connected' : 'error');
  }

  function startSocket() {
    const s = io(base.origin, {
      path: `${prefix}/socket.io`,
      // Called at connect and on every reconnect, so each handshake carries a current token.
      auth: (cb) => {
        currentToken().then(
          (token) => { socketToken = token; cb(token ? { token } : {}); },
          (err) => { report('token_failed', `getToken failed: ${err?.message}`); cb({}); },
        );
      },
      forceNew: true,
      ...(transports ? { transports } : {}),
    });
    socket = s;
    s.on('connect', onConnect);
    s.on('notification', (n: NotificationEnvelope) => {
      if (!n?.room || hasRoom(n.room)) deliver(n);
    });
    if (onStats) s.on('stats', (stats: DashboardStats) => { if (!closed && stats && typeof stats === 'object') onStats(stats); });
    s.on('token-expired', () => { tokenExpired = true; });
    s.on('connect_error', (err: Error) => {
      if (closed) return;
      if (!s.active) {
        // The daemon refused the handshake; socket.io will not retry by itself.
        if (err.message === 'unauthorized' && !authRetried) {
          authRetried = true;
          s.connect(); // the auth callback asks getToken again
          return;
        }
        if (err.message === 'unauthorized') {
          setMode('off');
          setState('error');
          report('unauthorized', 'the daemon refused the token (invalid, expired, or not allowed here)');
          return;
        }
        report(err.message || 'connect_error', `socket refused: ${err.message}`);
        later(() => { if (!s.connected && !s.active) s.connect(); }, jittered(pollMs));
      }
      startPolling();
    });
    s.on('disconnect', (reason: string) => {
      if (closed) return;
      connGen++;
      cancel(refreshTimer);
      setState('disconnected');
      if (reason === 'io server disconnect') {
        if (tokenExpired) {
          // The token ended: connect again at once with a new one (the auth callback asks).
          if (!getToken) {
            setMode('off');
            setState('error');
            report('token_expired', 'the token expired; connect again with a new one');
            return;
          }
          setMode('connecting');
          armFallback();
          s.connect();
          return;
        }
        // Closed by the daemon for another reason: poll meanwhile, try the socket again later.
        startPolling();
        later(() => { if (!s.connected) s.connect(); }, jittered(pollMs));
      } else {
        setMode('connecting');
        armFallback();
      }
    });
    armFallback();
  }

  // Polite in a browser: retry at once when the network is back, and poll at the normal pace
  // again as soon as the page is visible.
  const onOnline = () => {
    if (polling) pollNow?.();
    if (socket && !socket.connected && !socket.active) socket.connect();
  };
  const onVisible = () => { if (doc?.visibilityState === 'visible' && polling) pollNow?.(); };
  win.addEventListener?.('online', onOnline);
  doc?.addEventListener('visibilitychange', onVisible);

  (async () => {
    await null; // let the caller keep the returned handle before any callback runs
    if (closed) return;
    onMode(mode);
    onState(state);
    // Every failure waits (1 s, 2 s, 4 s … 30 s, with jitter) before asking again, so a wrong
    // baseUrl or a dead daemon costs a request now and then, never a storm.
    let config: DaemonConfig | undefined;
    for (let delay = 1000; !closed && !config; delay = Math.min(delay * 2, 30000)) {
      try {
        config = asConfig(await request('/api/config', ''));
        if (!config) throw new ApiError(200, 'not_json', 'answered JSON that is not the daemon\'s configuration');
      } catch (err) {
        if (closed) return;
        const e = err as ApiError;
        setState('disconnected');
        const where = `${base.origin}${prefix}/api/config`;
        if (e.code === 'not_json' || e.status === 404) {
          report('config_invalid', `config_invalid: ${where} did not answer the daemon's JSON (${e.message}); is baseUrl the daemon?`);
        } else if (e.code === 'unreachable') {
          report('config_unreachable', `config_unreachable: ${e.message}; is the daemon running, and does CORS_ORIGINS allow this page?`);
        } else {
          report(e.code || 'config_failed', `cannot read ${where}: ${e.message}`);
        }
        await sleep(jittered(delay));
      }
    }
    if (closed || !config) return;
    pollMs = Math.max(250, Number(config.pollIntervalMs) || 10000);
    if (config.ENABLE_RABBITMQ === true) startSocket();
    else startPolling();
  })();

  return {
    get mode() { return mode; },
    get state() { return state; },
    get rooms() { return [...rooms]; },
    get cursors() { return Object.fromEntries(cursors); },
    async join(room: Room, { since }: { since?: string } = {}) {
      if (closed) return false;
      if (!rooms.includes(room)) rooms.push(room);
      refused.delete(room);
      if (since) cursors.set(room, since);
      if (socket?.connected) {
        if (history && !cursors.has(room)) {
          // A cursor first, so that a reconnect resumes this room too.
          await pollOnce().catch((err) => report(err.code || 'history_failed', `history not loaded: ${err.message}`));
        }
        return joinOnSocket(room);
      }
      if (!polling) return true; // joined when the socket connects, or at the first poll
      try {
        // Alone first, so that a room the token may not read is refused without stopping the
        // polling of the others.
        await pollOnce([room]);
        return true;
      } catch (err) {
        const e = err as Partial<ApiError>;
        if (e.status === 400 || e.status === 403) {
          refused.add(room);
          report(e.code ?? 'join_failed', `${room} refused: ${e.message}`, { room });
        }
        return false;
      }
    },
    async leave(room: Room) {
      const at = rooms.indexOf(room);
      if (at >= 0) rooms.splice(at, 1);
      cursors.delete(room);
      refused.delete(room);
      const s = socket;
      if (s?.connected) {
        await s.timeout(ACK_TIMEOUT_MS).emitWithAck('leave-room', room).catch(() => {
          report('ack_timeout', `leave-room ${room}: no acknowledgement`, { room });
        });
      }
    },
    close() {
      if (closed) return;
      stopPolling();
      for (const t of timers) clearTimeout(t);
      timers.clear();
      win.removeEventListener?.('online', onOnline);
      doc?.removeEventListener('visibilitychange', onVisible);
      if (socket) {
        socket.removeAllListeners();
        socket.io.removeAllListeners();
        socket.disconnect();
      }
      if (mode !== 'off') { mode = 'off'; onMode(mode); }
      state = 'closed';
      onState(state);
      closed = true;
      aborter.abort();
    },
  };
}
