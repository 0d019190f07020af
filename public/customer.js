// Customer page: one customer's notifications, live, with the session in progress as a card.
import {
  wireConnectForm, announce, summarize, typeLabel,
  probeDaemon, problemText, mintDevToken, resolveToken, notificationItem,
  showMessage, pageParams, showDevControls, timeOf,
} from './common.js';

const MAX_ITEMS = 200;
const $ = (id) => document.getElementById(id);
const form = $('connect-form');
const events = $('events');
let received = 0;

const params = pageParams();
$('base-url').value = params.get('base') || location.origin;
$('customer-id').value = params.get('customer') || '';

async function describeDaemon() {
  const baseUrl = $('base-url').value;
  const probe = await probeDaemon(baseUrl);
  const { config } = probe;
  showDevControls(config);
  $('auth-hint').textContent = !config ? '' : config.authRequired ? '(required)' : '(optional: auth is off)';
  $('daemon-info').textContent = !config
    ? problemText(probe.problem, baseUrl)
    : `${config.ENABLE_RABBITMQ ? 'real time' : 'polling'} · poll every ${Math.round(config.pollIntervalMs / 1000)} s`;
  return probe;
}

// The session in progress, from charging.started / charging.progress / charging.stopped.
let session = null; // { id, station, kwh, startedAt (ms), approximate, updatedAt, stopped }
const minutes = (ms) => {
  const s = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
};

function trackSession(n) {
  if (!['charging.started', 'charging.progress', 'charging.stopped'].includes(n.type)) return;
  const d = n.data ?? {};
  if (!d.sessionId) return;
  const at = timeOf(n).getTime();
  if (!session || session.id !== d.sessionId) {
    // A newer session replaces a finished or older one; an old event of another session does not.
    if (session && !session.stopped && at < session.updatedAt) return;
    session = { id: d.sessionId, startedAt: at, approximate: n.type !== 'charging.started', kwh: 0 };
  }
  if (n.type === 'charging.started') {
    session.startedAt = at;
    session.approximate = false;
  }
  if (typeof d.kwh === 'number') session.kwh = d.kwh;
  if (d.stationId) session.station = d.stationId;
  session.updatedAt = at;
  session.stopped = n.type === 'charging.stopped';
  if (session.stopped) session.endedAt = at;
  renderSession();
}

function renderSession() {
  $('session').hidden = !session;
  if (!session) return;
  $('session').dataset.sessionId = session.id;
  $('session-title').textContent = session.stopped ? 'Last charging session' : 'Charging now';
  $('session-status').dataset.status = session.stopped ? 'stopped' : 'charging';
  $('session-status').textContent = session.stopped ? 'Finished' : 'Charging';
  $('session-kwh').textContent = session.kwh.toFixed(2);
  const end = session.stopped ? session.endedAt : Date.now();
  $('session-duration').textContent = `${session.approximate ? 'at least ' : ''}${minutes(end - session.startedAt)}`;
  $('session-station').textContent = session.station ?? '—';
  $('session-id').textContent = `Session ${session.id}`;
  const updated = new Date(session.updatedAt);
  $('session-updated').dateTime = updated.toISOString();
  $('session-updated').textContent = updated.toLocaleTimeString();
}
setInterval(() => { if (session && !session.stopped) renderSession(); }, 1000); // the duration ticks

function clearView() {
  events.replaceChildren();
  received = 0;
  $('event-count').textContent = '0';
  $('empty').hidden = false;
  session = null;
  renderSession();
}

function addNotification(n) {
  received += 1;
  $('event-count').textContent = String(received);
  $('empty').hidden = true;
  events.prepend(notificationItem(n));
  while (events.children.length > MAX_ITEMS) events.lastElementChild.remove();
  trackSession(n);
  announce(`${typeLabel(n.type)}: ${summarize(n.data)}`);
}

const connect = wireConnectForm({
  describeDaemon,
  async prepare(probe) {
    const baseUrl = $('base-url').value;
    const customer = $('customer-id').value.trim();
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(customer)) throw new Error('Type a customer ID (letters, digits, _ or -).');
    const token = await resolveToken({
      probe,
      baseUrl,
      token: $('token').value,
      secret: $('secret').value,
      claims: { sub: customer, role: 'customer' },
    });
    const room = `customer:${customer}`;
    $('room').textContent = room;
    clearView();
    // A gap the daemon could not fill: start the list again from what it still holds.
    return { baseUrl, token, rooms: [room], onNotification: addNotification, onReset: clearView };
  },
});

$('mint-button').addEventListener('click', async () => {
  try {
    if (!form.reportValidity()) return;
    if (!$('secret').value) throw new Error('Type the JWT secret first.');
    $('token').value = await mintDevToken($('secret').value, { sub: $('customer-id').value.trim(), role: 'customer' });
    showMessage($('message'), 'Token minted; it expires in one hour.', 'info');
  } catch (err) {
    showMessage($('message'), err.message);
  }
});

if (params.get('autoconnect') === '1' && form.checkValidity()) connect();
else describeDaemon();
