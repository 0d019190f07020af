import { useEffect, useState } from 'react';
import { connectNotifications, type Mode, type Notification } from '@notify-bridge/client';

/**
 * The latest notifications of `rooms`, newest first, and how they arrive. Pass a stable
 * `getToken` (module-level or `useCallback`): a new one reconnects.
 */
export function useNotifications(rooms: string[], getToken: () => Promise<string>) {
  const [items, setItems] = useState<Notification[]>([]);
  const [mode, setMode] = useState<Mode>('connecting');
  const key = rooms.join(',');

  useEffect(() => {
    const client = connectNotifications({
      rooms: key.split(','),
      getToken,
      onNotification: (n) => setItems((list) => [n, ...list].slice(0, 100)),
      onReset: () => setItems([]), // then reload from the app's own API
      onMode: setMode,
    });
    // StrictMode mounts twice: close() leaves no socket or timer behind.
    return () => client.close();
  }, [key, getToken]);

  return { items, mode };
}

export function CustomerFeed({ customerId, getToken }: { customerId: string; getToken: () => Promise<string> }) {
  const { items, mode } = useNotifications([`customer:${customerId}`], getToken);
  return (
    <section>
      <p>{mode}</p>
      <ul>{items.map((n) => <li key={n.id}>{n.type}</li>)}</ul>
    </section>
  );
}
