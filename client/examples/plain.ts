import { connectNotifications, type Notification } from '@notify-bridge/client';

interface SessionData {
  sessionId: string;
  kwh: number;
}

// Resume where the last page load stopped.
const saved = JSON.parse(sessionStorage.getItem('notify-cursors') ?? '{}') as Record<string, string>;

const client = connectNotifications<SessionData>({
  baseUrl: 'https://notify.example.com',
  rooms: ['customer:123'],
  since: saved,
  // Called at connect, on every reconnect, before polls and before the token's exp.
  getToken: async () => (await fetch('/auth/notify-token')).text(),
  onNotification: (n: Notification<SessionData>) => {
    console.log(n.type, n.data?.kwh);
    sessionStorage.setItem('notify-cursors', JSON.stringify(client.cursors));
  },
  // The daemon could not fill a gap: reload this view from the app's own API.
  onReset: ({ room }) => console.log(`reload ${room}`),
  onError: (err) => console.warn(err.code, err.message),
});

// Rooms change on the live connection.
await client.join('cms:sessions');
await client.leave('cms:sessions');

window.addEventListener('pagehide', () => client.close());
