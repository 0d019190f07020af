import { connectNotifications, type NotifyNotification } from '@notify-bridge/client';

// Resume where the last page load stopped.
const saved = JSON.parse(sessionStorage.getItem('notify-cursors') ?? '{}') as Record<string, string>;

const client = connectNotifications({
  baseUrl: 'https://notify.example.com',
  rooms: ['customer:123'],
  since: saved,
  // Called at connect, on every reconnect, before polls and before the token's exp.
  getToken: async () => (await fetch('/auth/notify-token')).text(),
  onNotification: (n: NotifyNotification) => {
    // `data` narrows by `type`: the EV event catalogue (schemas/events/) types each one.
    if (n.type === 'charging.progress' && n.data) console.log(`${n.data.kwh} kWh at ${n.data.stationId}`);
    if (n.type === 'charger.faulted' && n.data) console.warn(n.data.chargerId, n.data.error);
    sessionStorage.setItem('notify-cursors', JSON.stringify(client.cursors));
  },
  // The daemon could not fill a gap: reload this view from the app's own API.
  onReset: ({ room }) => console.log(`reload ${room}`),
  // e.g. config_invalid: baseUrl does not point at the daemon.
  onError: (err) => console.warn(err.code, err.message),
});

// Rooms change on the live connection.
await client.join('cms:sessions');
await client.leave('cms:sessions');

window.addEventListener('pagehide', () => client.close());
