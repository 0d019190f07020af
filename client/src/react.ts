// @notify-bridge/client/react: one connection per app, shared by every component that wants
// notifications. `NotifyProvider` holds it; `useRoom` and `useNotifications` join rooms on it
// while they are mounted (a room wanted by several components is joined once) and give the
// latest notifications. Written with createElement, so the package needs no JSX setup.
import {
  createContext, createElement, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore,
  type ReactNode,
} from 'react';
import { connectNotifications } from './index.js';
import type { EvEventMap } from './events.js';
import type {
  ClientError, DashboardStats, Mode, NotificationEnvelope, NotifyClient, NotifyNotification, Room, State,
} from './types.js';

type Listener = (n: NotificationEnvelope) => void;

/** What the provider shares: the client, the rooms its components want, and who listens to what. */
class Hub {
  client: NotifyClient | null = null;
  mode: Mode = 'connecting';
  state: State = 'connecting';
  error: ClientError | null = null;
  stats: DashboardStats | null = null;
  /** How many mounted hooks want each room: joined at the first, left after the last. */
  private readonly wanted = new Map<Room, number>();
  private readonly listeners = new Set<{ rooms: readonly Room[] | null; listener: Listener; reset: () => void }>();
  private readonly watchers = new Set<() => void>();
  private snapshot = { mode: this.mode, state: this.state, error: this.error, stats: this.stats };

  open(make: (rooms: Room[], hub: Hub) => NotifyClient) {
    this.client = make([...this.wanted.keys()], this);
  }

  close() {
    this.client?.close();
    this.client = null;
  }

  want(rooms: readonly Room[]) {
    for (const room of rooms) {
      const count = this.wanted.get(room) ?? 0;
      this.wanted.set(room, count + 1);
      if (count === 0) void this.client?.join(room);
    }
  }

  unwant(rooms: readonly Room[]) {
    for (const room of rooms) {
      const count = this.wanted.get(room) ?? 0;
      if (count <= 1) {
        this.wanted.delete(room);
        void this.client?.leave(room);
      } else {
        this.wanted.set(room, count - 1);
      }
    }
  }

  listen(rooms: readonly Room[] | null, listener: Listener, reset: () => void) {
    const entry = { rooms, listener, reset };
    this.listeners.add(entry);
    return () => { this.listeners.delete(entry); };
  }

  dispatch(n: NotificationEnvelope) {
    for (const { rooms, listener } of this.listeners) {
      if (!rooms || n.room == null || rooms.includes(n.room)) listener(n);
    }
  }

  resetRoom(room: Room) {
    for (const { rooms, reset } of this.listeners) if (!rooms || rooms.includes(room)) reset();
  }

  update(change: Partial<Pick<Hub, 'mode' | 'state' | 'error' | 'stats'>>) {
    Object.assign(this, change);
    this.snapshot = { mode: this.mode, state: this.state, error: this.error, stats: this.stats };
    this.watchers.forEach((w) => w());
  }

  watch = (onChange: () => void) => {
    this.watchers.add(onChange);
    return () => { this.watchers.delete(onChange); };
  };

  read = () => this.snapshot;
}

const HubContext = createContext<Hub | null>(null);

export interface NotifyProviderProps {
  /** The daemon's URL. Default: the page's origin (right only when the daemon serves the app). */
  baseUrl?: string;
  /**
   * Returns a JWT (or `''` when the daemon's auth is off). It may be a new function on every
   * render: the provider always calls the latest one and never reconnects because it changed.
   */
  getToken?: () => string | Promise<string>;
  /** Socket.IO transports; default socket.io-client's. */
  transports?: ('polling' | 'websocket')[];
  /** Every error the client reports (also readable through `useNotifyStatus().error`). */
  onError?: (error: ClientError) => void;
  children?: ReactNode;
}

/**
 * Holds one connection to notify-bridge for everything below it. Put it near the root of the
 * app, once; a new `baseUrl` (or `transports`) opens a new connection, nothing else does.
 */
export function NotifyProvider({ baseUrl, getToken, transports, onError, children }: NotifyProviderProps) {
  const [hub] = useState(() => new Hub());
  const latest = useRef({ getToken, onError });
  latest.current = { getToken, onError };
  const transportKey = transports?.join(',') ?? '';

  useEffect(() => {
    hub.open((rooms, h) => connectNotifications<Record<string, unknown>>({
      baseUrl,
      rooms,
      getToken: async () => String((await latest.current.getToken?.()) ?? ''),
      transports: transportKey ? (transportKey.split(',') as ('polling' | 'websocket')[]) : undefined,
      dedupe: 'room',
      onNotification: (n) => h.dispatch(n),
      onReset: ({ room }) => h.resetRoom(room),
      onMode: (mode) => h.update({ mode }),
      onState: (state) => h.update({ state, ...(state === 'connected' || state === 'polling' ? { error: null } : {}) }),
      onError: (error) => { h.update({ error }); latest.current.onError?.(error); },
      onStats: (stats) => h.update({ stats }),
    }));
    // StrictMode mounts twice: close() leaves no socket or timer behind.
    return () => hub.close();
  }, [hub, baseUrl, transportKey]);

  return createElement(HubContext.Provider, { value: hub }, children);
}

function useHub(): Hub {
  const hub = useContext(HubContext);
  if (!hub) throw new Error('@notify-bridge/client/react: wrap the app in <NotifyProvider>');
  return hub;
}

/** The shared connection's mode and state, its last error, and (in `cms:dashboard`) the daemon's statistics. */
export function useNotifyStatus(): { mode: Mode; state: State; error: ClientError | null; stats: DashboardStats | null } {
  const hub = useHub();
  return useSyncExternalStore(hub.watch, hub.read, hub.read);
}

export interface UseNotificationsOptions {
  /** How many notifications to keep, newest first. Default 50. */
  limit?: number;
}

/**
 * The latest notifications of `rooms` (joined on the shared connection while the component is
 * mounted), newest first, with the connection's status. Without `rooms`: those of every room
 * the app's components have joined. A reset (a gap the daemon could not fill) empties the list.
 */
export function useNotifications<Events extends object = EvEventMap>(
  rooms?: readonly Room[],
  { limit = 50 }: UseNotificationsOptions = {},
) {
  const hub = useHub();
  const status = useNotifyStatus();
  const [items, setItems] = useState<NotifyNotification<Events>[]>([]);
  const key = rooms ? rooms.join('\n') : null;

  useEffect(() => {
    const list = key === null ? null : (key.split('\n') as Room[]);
    const seen = new Set<string>(); // one notification in several of these rooms is kept once
    if (list) hub.want(list);
    const stop = hub.listen(
      list,
      (n) => {
        if (seen.has(n.id)) return;
        seen.add(n.id);
        setItems((prev) => [n as unknown as NotifyNotification<Events>, ...prev].slice(0, limit));
      },
      () => { seen.clear(); setItems([]); },
    );
    return () => {
      stop();
      if (list) hub.unwant(list);
    };
  }, [hub, key, limit]);

  return useMemo(() => ({ items, ...status }), [items, status]);
}

/** `useNotifications([room])`: one room's latest notifications, newest first, and the connection's status. */
export function useRoom<Events extends object = EvEventMap>(room: Room, options?: UseNotificationsOptions) {
  const rooms = useMemo(() => [room], [room]);
  return useNotifications<Events>(rooms, options);
}
