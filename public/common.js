// Helpers shared by the customer page and the CMS dashboard.
// vendor/notify-client.js is the @notify-bridge/client package (client/) bundled by esbuild.
import { connectNotifications } from './vendor/notify-client.js';

const enc = new TextEncoder();
const b64url = (bytes) =>
  btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

/**
 * Mint an HS256 JWT in the browser. For development only: it needs the daemon's secret.
 * @param {string} secret the daemon's JWT_SECRET
 * @param {object} claims e.g. `{ sub: '123', role: 'customer' }`; `exp` defaults to one hour from now
 * @returns {Promise<string>}
 */
export async function mintDevToken(secret, claims) {
  // WebCrypto exists only in secure contexts: https, localhost and 127.0.0.1.
  if (!globalThis.crypto?.subtle) {
    throw new Error('Minting needs a secure context (https, localhost or 127.0.0.1). Paste a token instead.');
  }
  const payload = { exp: Math.floor(Date.now() / 1000) + 3600, ...claims };
  const head = `${b64url(enc.encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' })))}.${b64url(enc.encode(JSON.stringify(payload)))}`;
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return `${head}.${b64url(await crypto.subtle.sign('HMAC', key, enc.encode(head)))}`;
}

/** A URL under the daemon's base URL (a path prefix is kept). */
export const daemonUrl = (baseUrl, path) => new URL(path, baseUrl.replace(/\/*$/, '/'));

/**
 * What `GET {baseUrl}/api/config` says: `{ config }`, or `{ config: null, problem }` with
 * `problem` `unreachable` (no answer: wrong host, daemon down, CORS) or `not_daemon` (an answer,
 * but not the daemon's configuration: a wrong URL).
 */
export async function probeDaemon(baseUrl) {
  let res;
  try {
    res = await fetch(daemonUrl(baseUrl, 'api/config'), { cache: 'no-store' });
  } catch {
    return { config: null, problem: 'unreachable' };
  }
  const config = await res.json().catch(() => null);
  if (!res.ok || typeof config?.ENABLE_RABBITMQ !== 'boolean') return { config: null, problem: 'not_daemon' };
  return { config, problem: null };
}

/** `GET {baseUrl}/api/config`, or null when the daemon cannot be reached or is not a daemon. */
export async function fetchConfig(baseUrl) {
  return (await probeDaemon(baseUrl)).config;
}

const PROBLEMS = {
  unreachable: (url) => `Cannot reach the daemon at ${url}: check the URL and that it is running.`,
  not_daemon: (url) => `${url} answered, but not as a notify-bridge daemon: check the URL.`,
};

/** The sentence for a daemon that cannot be used, or '' when it can. */
export const problemText = (problem, url) => (problem ? PROBLEMS[problem](url) : '');

/** The token to connect with: the pasted one, else one minted from the secret, else none if auth is off. */
export async function resolveToken({ probe, baseUrl, token, secret, claims }) {
  if (probe.problem) throw new Error(problemText(probe.problem, baseUrl));
  if (token.trim()) return token.trim();
  if (secret) return mintDevToken(secret, claims);
  if (probe.config.authRequired === false) return '';
  throw new Error('This daemon requires a token: paste one.');
}

/** What the client's errors mean for the person looking at the page. */
export function explainError(err, baseUrl) {
  switch (err.code) {
    case 'unauthorized':
      return 'The daemon refused this token: it is invalid, expired, or signed with another secret. Paste a new one.';
    case 'forbidden':
      return `This token may not read ${err.room ?? 'this room'}.`;
    case 'token_expired':
      return 'The token expired: paste a new one and connect again.';
    case 'config_invalid':
      return problemText('not_daemon', baseUrl);
    case 'config_unreachable':
      return problemText('unreachable', baseUrl);
    case 'rate_limited':
      return 'The daemon asks to slow down; trying again shortly.';
    default:
      return err.message;
  }
}

/**
 * Says `text` to screen readers through the page's polite live region (#announcer), at most one
 * sentence every 2 s: what arrives in between is summed up in the next one.
 */
let pending = [];
let announceTimer = null;
export function announce(text) {
  pending.push(text);
  if (announceTimer) return;
  const flush = () => {
    announceTimer = null;
    if (!pending.length) return;
    const el = document.getElementById('announcer');
    if (el) el.textContent = pending.length === 1 ? pending[0] : `${pending.length} new notifications; the latest: ${pending.at(-1)}`;
    pending = [];
    announceTimer = setTimeout(flush, 2000);
  };
  flush();
}

export const MODE_LABELS = { realtime: 'Real time', polling: 'Polling', connecting: 'Connecting…', off: 'Not connected' };
export const CATEGORIES = ['station', 'charger', 'session', 'customer', 'other'];
export const categoryOf = (n) => (CATEGORIES.includes(n.category) ? n.category : 'other');

export function showMode(el, mode) {
  el.dataset.mode = mode;
  el.textContent = MODE_LABELS[mode] ?? mode;
}

export function showState(el, state) {
  el.dataset.state = state;
  el.textContent = state;
}

export function showMessage(el, text, kind = 'error') {
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = !text;
}

const ACRONYMS = { id: 'ID', kwh: 'kWh', kw: 'kW', soc: 'SoC', evse: 'EVSE', ocpp: 'OCPP', url: 'URL' };
const humanize = (key) =>
  key
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/[_.-]+/g, ' ')
    .split(' ')
    .filter(Boolean)
    .map((w, i) => ACRONYMS[w.toLowerCase()] ?? (i === 0 ? w[0].toUpperCase() + w.slice(1) : w.toLowerCase()))
    .join(' ');

/** "charging.started" → "Charging started" */
export const typeLabel = (type) => humanize(String(type ?? 'notification'));

function valueText(v) {
  if (v == null) return '—';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'object') {
    const s = JSON.stringify(v);
    return s.length > 60 ? `${s.slice(0, 57)}…` : s;
  }
  return String(v);
}

/** A one-line, readable summary of a notification's `data`. */
export function summarize(data) {
  if (data == null) return 'No details';
  if (typeof data !== 'object' || Array.isArray(data)) return valueText(data);
  const entries = Object.entries(data);
  if (!entries.length) return 'No details';
  const shown = entries.slice(0, 6).map(([k, v]) => `${humanize(k)}: ${valueText(v)}`);
  if (entries.length > 6) shown.push(`+${entries.length - 6} more`);
  return shown.join(' · ');
}

export function timeOf(n) {
  const t = Date.parse(n.timestamp);
  return Number.isNaN(t) ? new Date() : new Date(t);
}

export function isToday(date, now = new Date()) {
  return date.toDateString() === now.toDateString();
}

export function formatTime(date) {
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  return isToday(date) ? time : `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

/** A list item for one notification, with the attributes tests and styles hook onto. */
export function notificationItem(n, { showRoom = false } = {}) {
  const li = document.createElement('li');
  const cat = categoryOf(n);
  const when = timeOf(n);
  li.className = 'event';
  li.dataset.id = n.id;
  li.dataset.messageId = n.messageId ?? '';
  li.dataset.type = n.type ?? '';
  li.dataset.category = cat;

  const head = document.createElement('div');
  head.className = 'event-head';
  const badge = Object.assign(document.createElement('span'), { className: `badge cat-${cat}`, textContent: n.category ?? 'other' });
  const title = Object.assign(document.createElement('strong'), { className: 'event-type', textContent: typeLabel(n.type), title: n.type ?? '' });
  const time = Object.assign(document.createElement('time'), { dateTime: when.toISOString(), textContent: formatTime(when), title: n.timestamp ?? '' });
  head.append(badge, title, time);

  const body = Object.assign(document.createElement('p'), { className: 'event-body', textContent: summarize(n.data) });
  li.append(head, body);
  if (showRoom && n.room) li.append(Object.assign(document.createElement('p'), { className: 'event-room', textContent: n.room }));
  return li;
}

/**
 * The page's query parameters. Tokens and secrets are never read from the address (they would
 * stay in history, logs and Referer headers); if one is there it is dropped from the address bar.
 */
export function pageParams() {
  const url = new URL(location.href);
  if (['token', 'secret'].some((k) => url.searchParams.has(k))) {
    url.searchParams.delete('token');
    url.searchParams.delete('secret');
    history.replaceState(null, '', url);
  }
  return url.searchParams;
}

/** The mint-a-development-token controls (`[data-dev-only]`) show only when the daemon's auth is off. */
export function showDevControls(config) {
  const dev = config?.authRequired === false;
  for (const el of document.querySelectorAll('[data-dev-only]')) el.hidden = !dev;
  if (!dev) for (const el of document.querySelectorAll('[data-dev-only] input')) el.value = '';
}

/**
 * The connection panel (#connection, a <details>) folds away once notifications flow, and opens
 * again when something needs the user (an error, a disconnect by hand); #connection-summary says
 * where the page is connected while it is folded.
 */
function foldConnection(open, summary) {
  const panel = document.getElementById('connection');
  if (panel) panel.open = open;
  const line = document.getElementById('connection-summary');
  if (line && summary !== undefined) line.textContent = summary;
}

/**
 * Connect with @notify-bridge/client and wire the page's mode and state badges, message line and
 * Connect/Disconnect buttons (elements #mode, #state, #message, #connect, #disconnect).
 * @returns the connection handle, also exposed as `window.notifyConnection` for tests
 */
function connectPage({ baseUrl, token, rooms, onNotification, onReset, onStats, onMode }) {
  const $ = (id) => document.getElementById(id);
  $('connect').disabled = true;
  $('disconnect').disabled = false;
  const where = `${rooms.join(', ')} at ${new URL(baseUrl).host}`;
  foldConnection(true, `connecting to ${where}…`);
  const conn = connectNotifications({
    baseUrl,
    token,
    rooms,
    onNotification,
    onReset,
    onStats,
    onMode: (mode) => {
      showMode($('mode'), mode);
      onMode?.(mode);
    },
    onState: (state) => {
      showState($('state'), state);
      $('connect').disabled = state !== 'error'; // allow a retry once the client has given up
      if (state === 'connected' || state === 'polling') {
        showMessage($('message'), ''); // recovered
        foldConnection(false, `${state === 'connected' ? 'live' : 'polling'}: ${where}`);
      }
      if (state === 'error') foldConnection(true, `not connected: ${where}`);
    },
    onError: (err) => showMessage($('message'), explainError(err, baseUrl)),
  });
  window.notifyConnection = conn;
  return conn;
}

/**
 * The connect form every page has (#connect-form, #connect, #disconnect, #base-url, #message):
 * submitting connects, Disconnect closes, a new base URL is described again.
 * `prepare(config)` is the page's part: it resolves the token, resets its view and returns
 * connectPage's options; what it throws is shown in #message.
 * @returns {() => Promise<void>} connect, for the page's autoconnect
 */
export function wireConnectForm({ describeDaemon, prepare }) {
  const $ = (id) => document.getElementById(id);
  let conn = null;
  const disconnect = () => {
    conn?.close();
    conn = null;
    showMode($('mode'), 'off');
    showState($('state'), 'idle');
    $('connect').disabled = false;
    $('disconnect').disabled = true;
    foldConnection(true, 'not connected');
  };
  const connect = async () => {
    disconnect();
    showMessage($('message'), '');
    try {
      conn = connectPage(await prepare(await describeDaemon()));
    } catch (err) {
      showMessage($('message'), err.message);
      showState($('state'), 'error');
      $('connect').disabled = false;
      foldConnection(true, 'not connected');
    }
  };
  $('connect-form').addEventListener('submit', (e) => {
    e.preventDefault();
    connect();
  });
  $('disconnect').addEventListener('click', disconnect);
  $('base-url').addEventListener('change', describeDaemon);
  return connect;
}
