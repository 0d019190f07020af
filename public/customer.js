// Customer page: one customer's notifications, live.
import {
  wireConnectForm,
  fetchConfig, mintDevToken, resolveToken, notificationItem,
  showMessage, pageParams, showDevControls,
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
  const config = await fetchConfig($('base-url').value);
  showDevControls(config);
  $('auth-hint').textContent = !config ? '' : config.authRequired ? '(required)' : '(optional: auth is off)';
  $('daemon-info').textContent = !config
    ? 'unreachable'
    : `${config.ENABLE_RABBITMQ ? 'real time' : 'polling'} · poll every ${Math.round(config.pollIntervalMs / 1000)} s`;
  return config;
}

function addNotification(n) {
  received += 1;
  $('event-count').textContent = String(received);
  $('empty').hidden = true;
  events.prepend(notificationItem(n));
  while (events.children.length > MAX_ITEMS) events.lastElementChild.remove();
}

const connect = wireConnectForm({
  describeDaemon,
  async prepare(config) {
    const customer = $('customer-id').value.trim();
    const token = await resolveToken({
      config,
      token: $('token').value,
      secret: $('secret').value,
      claims: { sub: customer, role: 'customer' },
    });
    const room = `customer:${customer}`;
    $('room').textContent = room;
    events.replaceChildren();
    received = 0;
    $('event-count').textContent = '0';
    $('empty').hidden = false;
    // A gap the daemon could not fill: start the list again from what it still holds.
    const onReset = () => {
      events.replaceChildren();
      received = 0;
      $('event-count').textContent = '0';
      $('empty').hidden = false;
    };
    return { baseUrl: $('base-url').value, token, rooms: [room], onNotification: addNotification, onReset };
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
