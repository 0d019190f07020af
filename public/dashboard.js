// CMS dashboard: counters per category, a per-minute chart of the last hour and the latest events.
import {
  wireConnectForm,
  CATEGORIES, categoryOf, fetchConfig, resolveToken, notificationItem, timeOf,
  pageParams, showDevControls,
} from './common.js';

const ROOM = 'cms:dashboard';
const MAX_EVENTS = 50;
const MINUTE = 60_000;
const $ = (id) => document.getElementById(id);
const events = $('events');
const canvas = $('chart');

// Counts are kept as numbers and per-minute buckets, never as a list of events, so memory
// stays flat however busy the room is.
const KEYS = ['all', ...CATEGORIES];
const zero = () => Object.fromEntries(KEYS.map((c) => [c, 0]));
let totals; // since connecting
let today; // for the local day `todayKey`; starts again at midnight
let todayKey;
let minutes; // minute start (ms) → per-category counts, pruned to the last hour
resetCounts();

const params = pageParams();
$('base-url').value = params.get('base') || location.origin;

function resetCounts() {
  totals = zero();
  today = zero();
  todayKey = new Date().toDateString();
  minutes = new Map();
}

function rollDay() {
  const key = new Date().toDateString();
  if (key !== todayKey) {
    todayKey = key;
    today = zero();
  }
}

function count(n) {
  const cat = categoryOf(n);
  const at = timeOf(n);
  totals.all += 1;
  totals[cat] += 1;
  rollDay();
  if (at.toDateString() === todayKey) {
    today.all += 1;
    today[cat] += 1;
  }
  const minute = Math.floor(at.getTime() / MINUTE) * MINUTE;
  if (minute > Date.now() - 60 * MINUTE) {
    if (!minutes.has(minute)) minutes.set(minute, zero());
    const bucket = minutes.get(minute);
    bucket.all += 1;
    bucket[cat] += 1;
  }
}

function renderCounts() {
  rollDay();
  for (const c of KEYS) {
    $(`count-${c}-total`).textContent = totals[c].toLocaleString();
    $(`count-${c}-today`).textContent = today[c].toLocaleString();
  }
}

const COLORS = {};
function readColors() {
  const css = getComputedStyle(document.documentElement);
  for (const c of CATEGORIES) COLORS[c] = css.getPropertyValue(`--cat-${c}`).trim() || '#888';
  COLORS.grid = css.getPropertyValue('--line').trim() || '#e5e7eb';
  COLORS.text = css.getPropertyValue('--muted').trim() || '#6b7280';
}

function drawChart() {
  const now = Date.now();
  const end = Math.floor(now / MINUTE) * MINUTE; // start of the current minute
  const start = end - 59 * MINUTE;
  for (const m of minutes.keys()) if (m < start) minutes.delete(m);
  const buckets = Array.from({ length: 60 }, (_, i) => minutes.get(start + i * MINUTE) ?? zero());
  const hourTotal = buckets.reduce((sum, b) => sum + b.all, 0);
  $('chart-hour-total').textContent = hourTotal.toLocaleString();

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
  const max = Math.max(...buckets.map((b) => b.all));
  const step = niceStep(max);
  const top = Math.max(step * Math.ceil(max / step), step * 4);

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

  const slot = w / 60;
  const barW = Math.max(1, slot - 2);
  buckets.forEach((b, i) => {
    let y = pad.top + h;
    for (const c of CATEGORIES) {
      if (!b[c]) continue;
      const bh = (b[c] / top) * h;
      ctx.fillStyle = COLORS[c];
      ctx.fillRect(pad.left + i * slot + 1, y - bh, barW, bh);
      y -= bh;
    }
  });

  ctx.fillStyle = COLORS.text;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (let ago = 0; ago < 60; ago += 10) {
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
    renderCounts();
    drawChart();
  });
}

function addNotification(n) {
  count(n);
  $('empty').hidden = true;
  events.prepend(notificationItem(n));
  while (events.children.length > MAX_EVENTS) events.lastElementChild.remove();
  scheduleRedraw();
}

async function describeDaemon() {
  const config = await fetchConfig($('base-url').value);
  showDevControls(config);
  $('auth-hint').textContent = !config ? '(daemon unreachable)' : config.authRequired ? '(required)' : '(optional: auth is off)';
  return config;
}

const connect = wireConnectForm({
  describeDaemon,
  async prepare(config) {
    const token = await resolveToken({
      config,
      token: $('token').value,
      secret: $('secret').value,
      claims: { sub: 'cms-dashboard', role: 'cms' },
    });
    resetCounts();
    events.replaceChildren();
    $('empty').hidden = false;
    scheduleRedraw();
    // A gap the daemon could not fill: count again from what it still holds.
    const onReset = () => {
      resetCounts();
      events.replaceChildren();
      $('empty').hidden = false;
      scheduleRedraw();
    };
    return { baseUrl: $('base-url').value, token, rooms: [ROOM], onNotification: addNotification, onReset };
  },
});

new ResizeObserver(scheduleRedraw).observe(canvas);
setInterval(scheduleRedraw, 10_000); // slide the hour window even when nothing arrives

readColors();
scheduleRedraw();
if (params.get('autoconnect') === '1') connect();
else describeDaemon();
