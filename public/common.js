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

/** `GET {baseUrl}/api/config`, or null when the daemon cannot be reached. */
export async function fetchConfig(baseUrl) {
  try {
    const res = await fetch(new URL('api/config', baseUrl.replace(/\/*$/, '/')), { cache: 'no-store' });
    return res.ok ? await res.json() : null;
  } catch {
    return null;
  }
}

/** The token to connect with: the pasted one, else one minted from the secret, else none if auth is off. */
export async function resolveToken({ config, token, secret, claims }) {
  if (token.trim()) return token.trim();
  if (secret) return mintDevToken(secret, claims);
  if (config && config.authRequired === false) return '';
  throw new Error('This daemon requires a token: paste one or mint one from the secret.');
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
 * Connect with @notify-bridge/client and wire the page's mode and state badges, message line and
 * Connect/Disconnect buttons (elements #mode, #state, #message, #connect, #disconnect).
 * @returns the connection handle, also exposed as `window.notifyConnection` for tests
 */
function connectPage({ baseUrl, token, rooms, onNotification, onReset }) {
  const $ = (id) => document.getElementById(id);
  $('connect').disabled = true;
  $('disconnect').disabled = false;
  const conn = connectNotifications({
    baseUrl,
    token,
    rooms,
    onNotification,
    onReset,
    onMode: (mode) => showMode($('mode'), mode),
    onState: (state) => {
      showState($('state'), state);
      $('connect').disabled = state !== 'error'; // allow a retry once the client has given up
      if (state === 'connected' || state === 'polling') showMessage($('message'), ''); // recovered
    },
    onError: (err) => showMessage($('message'), err.message),
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
    $('connect').disabled = false;
    $('disconnect').disabled = true;
  };
  const connect = async () => {
    disconnect();
    showMessage($('message'), '');
    try {
      conn = connectPage(await prepare(await describeDaemon()));
    } catch (err) {
      showMessage($('message'), err.message);
      $('connect').disabled = false;
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
