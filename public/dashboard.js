// CMS dashboard: the daemon's statistics (contract section 7: counters since the start and today
// per category, a per-minute chart of the last hour) beside the latest events of cms:dashboard.
// The figures come from the daemon (GET /api/stats, then the socket event `stats`), so they are
// the same on every instance and survive a reload; a daemon without /api/stats (404) gets a
// dashboard without the statistics panel.
import {
  wireConnectForm, announce, summarize, typeLabel, daemonUrl,
  CATEGORIES, probeDaemon, problemText, resolveToken, notificationItem,
  pageParams, showDevControls, showMessage,
} from './common.js';

const ROOM = 'cms:dashboard';
const MAX_EVENTS = 50;
const $ = (id) => document.getElementById(id);
const events = $('events');
const canvas = $('chart');
const KNOWN = CATEGORIES.filter((c) => c !== 'other');

const params = pageParams();
$('base-url').value = params.get('base') || location.origin;

let stats = null; // the last statistics received
let statsSession = 0; // bumped on every (dis)connect: answers for an older connection are dropped
let statsTimer = null;

/** Per-category counts with `other` = the total minus the known categories. */
function splitCategories(total, byCategory, pick) {
  const out = {};
  let known = 0;
  for (const c of KNOWN) {
    out[c] = Number(pick(byCategory?.[c])) || 0;
    known += out[c];
  }
  out.other = Math.max(0, (Number(total) || 0) - known);
  return out;
}

function renderStats() {
  $('stats').hidden = !stats;
  if (!stats) return;
  const all = splitCategories(stats.total?.all, stats.categories, (c) => c?.all);
  const today = splitCategories(stats.total?.today, stats.categories, (c) => c?.today);
  $('count-all-total').textContent = (Number(stats.total?.all) || 0).toLocaleString();
  $('count-all-today').textContent = (Number(stats.total?.today) || 0).toLocaleString();
  for (const c of CATEGORIES) {
    $(`count-${c}-total`).textContent = all[c].toLocaleString();
    $(`count-${c}-today`).textContent = today[c].toLocaleString();
  }
  const since = new Date(stats.since);
  $('stats-note').textContent = `since ${Number.isNaN(since.getTime()) ? stats.since : since.toLocaleString()} · today is ${stats.today} (${stats.timezone})`;
  drawChart();
}

const COLORS = {};
function readColors() {
  const css = getComputedStyle(document.documentElement);
  for (const c of CATEGORIES) COLORS[c] = css.getPropertyValue(`--cat-${c}`).trim() || '#888';
  COLORS.grid = css.getPropertyValue('--line').trim() || '#e5e7eb';
  COLORS.text = css.getPropertyValue('--muted').trim() || '#6b7280';
}

function drawChart() {
  const minutes = Array.isArray(stats?.perMinute) ? stats.perMinute.slice(-60) : [];
  const buckets = minutes.map((m) => ({ total: Number(m.total) || 0, ...splitCategories(m.total, m.categories, (v) => v) }));
  const hourTotal = buckets.reduce((sum, b) => sum + b.total, 0);
  $('chart-hour-total').textContent = hourTotal.toLocaleString();
  const busiest = buckets.reduce((a, b) => Math.max(a, b.total), 0);
  canvas.setAttribute('aria-label', `Notifications per minute over the last hour: ${hourTotal} in all, at most ${busiest} in one minute`);

  const dpr = window.devicePixelRatio || 1;
  const { width, height } = canvas.getBoundingClientRect();
  if (!width || !height) return;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const pad = { left: 36, right: 8, top: 8, bottom: 24 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const step = niceStep(busiest);
  const top = Math.max(step * Math.ceil(busiest / step), step * 4);

  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = COLORS.text;
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let v = 0; v <= top; v += step) {
    const y = Math.round(pad.top + h - (v / top) * h) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.left, y);
    ctx.lineTo(pad.left + w, y);
    ctx.stroke();
    ctx.fillText(String(v), pad.left - 6, y);
  }

  // The newest minute is drawn at the right edge, however many entries there are.
  const slot = w / 60;
  const barW = Math.max(1, slot - 2);
  const offset = 60 - buckets.length;
  buckets.forEach((b, i) => {
    let y = pad.top + h;
    for (const c of CATEGORIES) {
      if (!b[c]) continue;
      const bh = (b[c] / top) * h;
      ctx.fillStyle = COLORS[c];
      ctx.fillRect(pad.left + (offset + i) * slot + 1, y - bh, barW, bh);
      y -= bh;
    }
  });

  ctx.fillStyle = COLORS.text;
  ctx.textBaseline = 'top';
  const every = w < 300 ? 20 : 10; // fewer labels on a phone
  for (let ago = 0; ago < 60; ago += every) {
    const x = pad.left + (59 - ago) * slot + slot / 2;
    ctx.textAlign = ago === 0 ? 'right' : 'center';
    ctx.fillText(ago === 0 ? 'now' : `−${ago} min`, ago === 0 ? pad.left + w : x, pad.top + h + 6);
  }
}

// 1, 2, 5, 10, 20, 50… so that the axis has at most about five lines.
function niceStep(max) {
  const raw = Math.max(1, max / 5);
  const pow = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw);
}

let redrawQueued = false;
function scheduleRedraw() {
  if (redrawQueued) return;
  redrawQueued = true;
  requestAnimationFrame(() => {
    redrawQueued = false;
    if (stats) drawChart();
  });
}

function showStats(next, session) {
  if (session !== statsSession || !next || typeof next !== 'object') return;
  stats = next;
  renderStats();
}

/**
 * GET /api/stats. 404: this daemon has no statistics (the panel stays hidden, for good on this
 * connection); another failure keeps the last figures and says why.
 */
async function loadStats(baseUrl, token, session) {
  try {
    const res = await fetch(daemonUrl(baseUrl, 'api/stats'), {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      cache: 'no-store',
    });
    if (session !== statsSession) return false;
    if (res.status === 404) {
      stats = null;
      renderStats();
      return false;
    }
    if (!res.ok) {
      if (res.status === 401 || res.status === 403) showMessage($('message'), 'This token may not read the statistics (role cms or admin).');
      return res.status !== 401 && res.status !== 403;
    }
    showStats(await res.json(), session);
  } catch {
    // Unreachable for now: the connection's own state says so; try again at the next round.
  }
  return true;
}

function stopStats() {
  statsSession += 1;
  clearTimeout(statsTimer);
  statsTimer = null;
}

function addNotification(n) {
  $('empty').hidden = true;
  events.prepend(notificationItem(n, { showRoom: false }));
  while (events.children.length > MAX_EVENTS) events.lastElementChild.remove();
  announce(`${typeLabel(n.type)}: ${summarize(n.data)}`);
}

function clearEvents() {
  events.replaceChildren();
  $('empty').hidden = false;
}

async function describeDaemon() {
  const baseUrl = $('base-url').value;
  const probe = await probeDaemon(baseUrl);
  showDevControls(probe.config);
  $('auth-hint').textContent = probe.problem ? `(${problemText(probe.problem, baseUrl)})` : probe.config.authRequired ? '(required)' : '(optional: auth is off)';
  return probe;
}

const connect = wireConnectForm({
  describeDaemon,
  async prepare(probe) {
    stopStats();
    const baseUrl = $('base-url').value;
    const token = await resolveToken({
      probe,
      baseUrl,
      token: $('token').value,
      secret: $('secret').value,
      claims: { sub: 'cms-dashboard', role: 'cms' },
    });
    clearEvents();
    stats = null;
    renderStats();
    const session = statsSession;
    const pollMs = Math.max(1000, Number(probe.config.pollIntervalMs) || 10000);
    let live = false; // in real time the socket pushes `stats`; otherwise they are polled
    const poll = async () => {
      statsTimer = null;
      const again = await loadStats(baseUrl, token, session);
      if (again && !live && session === statsSession) statsTimer = setTimeout(poll, pollMs);
    };
    poll();
    return {
      baseUrl,
      token,
      rooms: [ROOM],
      onNotification: addNotification,
      onReset: clearEvents,
      onStats: (next) => showStats(next, session),
      onMode: (mode) => {
        const wasLive = live;
        live = mode === 'realtime';
        if (session !== statsSession) return;
        if (!live && wasLive && !statsTimer) poll();
        if (mode === 'off') stopStats();
      },
    };
  },
});
$('disconnect').addEventListener('click', stopStats);

new ResizeObserver(scheduleRedraw).observe(canvas);
readColors();
if (params.get('autoconnect') === '1') connect();
else describeDaemon();
