// Browser client for notify-bridge: real time over Socket.IO, HTTP polling as the fallback.
import { io } from './vendor/socket.io.esm.min.js';

const SEEN_MAX = 2000; // ids remembered to drop copies seen through both polling and replay
const PAGE_LIMIT = 1000;
const REQUEST_TIMEOUT_MS = 15000;
const ACK_TIMEOUT_MS = 10000;

/**
 * Connect to notify-bridge and deliver the notifications of some rooms.
 *
 * Reads `GET {baseUrl}/api/config`. With `ENABLE_RABBITMQ` true it uses Socket.IO and joins
 * every room (re-joining with the last id seen per room on each reconnect, so the daemon
 * replays what was missed). With it false, or while the socket cannot connect, it polls
 * `GET {baseUrl}/api/notifications` every `pollIntervalMs`. Either way each notification
 * (contract section 3) is passed to `onNotification` once.
 *
 * @param {object} options
 * @param {string} [options.baseUrl=location.origin] daemon URL; a path prefix is kept for the API and `/socket.io`
 * @param {string} [options.token] JWT; omitted from requests when empty
 * @param {string[]} options.rooms rooms to join, e.g. `['customer:123']` or `['cms:dashboard']`
 * @param {string} [options.after] start cursor for every room: only notifications after this id are delivered
 * @param {boolean} [options.history=true] without `after`, load the retained history over HTTP before
 *   the first join, which also gives every room a cursor to resume from after a disconnect
 * @param {number} [options.connectTimeoutMs=5000] fall back to polling if the socket is not connected by then
 * @param {(n: object) => void} [options.onNotification] called once per notification id
 * @param {(mode: 'realtime'|'polling'|'connecting') => void} [options.onMode] called on every mode change
 * @param {(state: 'connecting'|'connected'|'disconnected'|'polling'|'error') => void} [options.onState]
 * @param {(err: {code: string, message: string, room?: string}) => void} [options.onError]
 * @returns {{readonly mode: string, readonly state: string, readonly socket: object|null, close(): void}}
 */
export function connectNotifications({
  baseUrl = location.origin,
  token = '',
  rooms = [],
  after,
  history = true,
  connectTimeoutMs = 5000,
  onNotification = () => {},
  onMode = () => {},
  onState = () => {},
  onError = () => {},
} = {}) {
  const base = new URL(baseUrl, location.href);
  const prefix = base.pathname.replace(/\/+$/, '');
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const cursors = new Map(after ? rooms.map((r) => [r, String(after)]) : []);
  const refused = new Set(); // rooms the daemon refused: not retried on each reconnect
  const seen = new Set();
  const aborter = new AbortController();
  let mode = 'connecting';
  let state = 'connecting';
  let socket = null;
  let pollMs = 10000;
  let pollGen = 0; // bumping it ends the current polling loop
  let polling = false;
  let pollTimer = null;
  let connectTimer = null;
  let connGen = 0;
  let closed = false;

  const setMode = (m) => { if (m !== mode && !closed) { mode = m; onMode(m); } };
  const setState = (s) => { if (s !== state && !closed) { state = s; onState(s); } };
  const report = (code, message, extra = {}) => { if (!closed) onError({ code, message, ...extra }); };
  const activeRooms = () => rooms.filter((r) => !refused.has(r));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function deliver(n) {
    if (!n || n.id == null || seen.has(n.id) || closed) return;
    seen.add(n.id);
    if (seen.size > SEEN_MAX) seen.delete(seen.values().next().value);
    if (n.room) cursors.set(n.room, n.id);
    onNotification(n);
  }

  async function getJson(path) {
    const ctl = new AbortController();
    const abort = () => ctl.abort();
    aborter.signal.addEventListener('abort', abort);
    const timer = setTimeout(abort, REQUEST_TIMEOUT_MS);
    try {
      const res = await fetch(new URL(prefix + path, base.origin), { headers, cache: 'no-store', signal: ctl.signal });
      const body = await res.json().catch(() => null);
      if (!res.ok) {
        const err = new Error(body?.message || `HTTP ${res.status}`);
        throw Object.assign(err, { status: res.status, code: body?.error || `http_${res.status}` });
      }
      return body;
    } finally {
      clearTimeout(timer);
      aborter.signal.removeEventListener('abort', abort);
    }
  }

  // Rooms sharing a cursor go in one request; after one round they all share the response cursor.
  async function pollOnce() {
    const groups = new Map();
    for (const room of activeRooms()) {
      const key = cursors.get(room) ?? '';
      groups.set(key, [...(groups.get(key) ?? []), room]);
    }
    for (const [start, group] of groups) {
      let cursor = start;
      for (let page = 0; page < 10; page++) {
        const q = new URLSearchParams(group.map((r) => ['room', r]));
        if (cursor) q.set('after', cursor);
        q.set('limit', String(PAGE_LIMIT));
        // reset: true (daemon restarted) needs nothing special: deliver and go on from the new cursor.
        const body = await getJson(`/api/notifications?${q}`);
        const items = Array.isArray(body?.notifications) ? body.notifications : [];
        items.forEach(deliver);
        if (body?.cursor) cursor = body.cursor;
        if (cursor) group.forEach((r) => cursors.set(r, cursor));
        if (items.length < PAGE_LIMIT) break;
      }
    }
  }

  function startPolling() {
    if (polling || closed) return;
    polling = true;
    const gen = ++pollGen;
    setMode('polling');
    const tick = async () => {
      try {
        await pollOnce();
        if (gen === pollGen) setState('polling');
      } catch (err) {
        if (gen !== pollGen) return;
        if ([400, 401, 403].includes(err.status)) {
          // Asking again would get the same answer.
          stopPolling();
          setState('error');
          return report(err.code, `polling stopped: ${err.message}`);
        }
        setState('disconnected');
      }
      if (gen === pollGen) pollTimer = setTimeout(tick, pollMs);
    };
    tick();
  }

  function stopPolling() {
    polling = false;
    pollGen++;
    clearTimeout(pollTimer);
  }

  function armFallback() {
    clearTimeout(connectTimer);
    connectTimer = setTimeout(() => { if (!socket?.connected) startPolling(); }, connectTimeoutMs);
  }

  async function join(room) {
    const cursor = cursors.get(room);
    try {
      const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck('join-room', cursor ? { room, after: cursor } : room);
      if (ack?.ok) return true;
      // A refusal is final for this connection; only a rate limit is worth another try on reconnect.
      if (ack?.error !== 'rate_limited') refused.add(room);
      report(ack?.error || 'join_failed', `join-room ${room} refused: ${ack?.error || 'no reason given'}`, { room });
    } catch {
      report('ack_timeout', `join-room ${room}: no acknowledgement`, { room });
    }
    return false;
  }

  async function onConnect() {
    clearTimeout(connectTimer);
    const gen = ++connGen;
    setState('connecting');
    if (history && activeRooms().some((r) => !cursors.has(r))) {
      await pollOnce().catch((err) => report(err.code || 'history_failed', `history not loaded: ${err.message}`));
    }
    if (gen !== connGen || !socket.connected) return;
    const results = await Promise.all(activeRooms().map(join));
    if (gen !== connGen || !socket.connected) return;
    stopPolling();
    setMode('realtime');
    setState(results.every(Boolean) ? 'connected' : 'error');
  }

  function startSocket() {
    socket = io(base.origin, { path: `${prefix}/socket.io`, auth: token ? { token } : {}, forceNew: true });
    socket.on('connect', onConnect);
    socket.on('notification', deliver);
    socket.on('connect_error', (err) => {
      // Not active: the daemon refused the handshake (e.g. unauthorized) and socket.io will not retry.
      if (!socket.active) report(err.message || 'connect_error', `socket refused: ${err.message}`);
      startPolling();
    });
    socket.on('disconnect', (reason) => {
      if (closed) return;
      connGen++;
      setState('disconnected');
      if (reason === 'io server disconnect') {
        // The daemon closed this socket (e.g. shutting down); socket.io does not reconnect by itself.
        startPolling();
        setTimeout(() => { if (!closed && !socket.connected) socket.connect(); }, pollMs);
      } else {
        setMode('connecting');
        armFallback();
      }
    });
    armFallback();
  }

  (async () => {
    await null; // let the caller keep the returned handle before any callback runs
    onMode(mode);
    onState(state);
    let config;
    for (let delay = 1000; !closed && !config; delay = Math.min(delay * 2, 30000)) {
      try {
        config = await getJson('/api/config');
      } catch (err) {
        setState('disconnected');
        report(err.code || 'config_failed', `cannot read /api/config: ${err.message}`);
        await sleep(delay);
      }
    }
    if (closed) return;
    pollMs = Math.max(250, Number(config.pollIntervalMs) || 10000);
    if (config.ENABLE_RABBITMQ === true) startSocket();
    else startPolling();
  })();

  return {
    get mode() { return mode; },
    get state() { return state; },
    get socket() { return socket; },
    close() {
      if (closed) return;
      stopPolling();
      clearTimeout(connectTimer);
      socket?.disconnect();
      state = 'disconnected';
      onState(state);
      closed = true;
      aborter.abort();
    },
  };
}
