import { NotifyProvider, useNotifyStatus, useRoom } from '@notify-bridge/client/react';

// One connection for the whole app. `getToken` may be an inline function: a new one on each
// render does not reconnect (the provider always calls the latest).
export function App({ customerId }: { customerId: string }) {
  return (
    <NotifyProvider
      baseUrl="https://notify.example.com"
      getToken={async () => (await fetch('/auth/notify-token')).text()}
    >
      <Status />
      <SessionCard customerId={customerId} />
      <Feed customerId={customerId} />
    </NotifyProvider>
  );
}

function Status() {
  const { mode, error } = useNotifyStatus(); // 'realtime' | 'polling' | 'connecting' | 'off'
  return <p role="status">{error ? `${mode}: ${error.message}` : mode}</p>;
}

// Two components, one room: it is joined once, on the one shared socket.
function SessionCard({ customerId }: { customerId: string }) {
  const { items } = useRoom(`customer:${customerId}`);
  const latest = items.find((n) => n.type === 'charging.progress' || n.type === 'charging.stopped');
  if (!latest?.data) return null;
  return <p>{latest.type === 'charging.stopped' ? 'Done' : 'Charging'}: {latest.data.kwh} kWh</p>;
}

function Feed({ customerId }: { customerId: string }) {
  const { items } = useRoom(`customer:${customerId}`, { limit: 20 });
  return <ul>{items.map((n) => <li key={n.id}>{n.type}</li>)}</ul>;
}
