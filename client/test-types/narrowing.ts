// Compile-time tests (tsc, strict): `data` narrows by `type`, rooms are checked, the DOM's
// `Notification` is left alone. Every `@ts-expect-error` fails the build if the error goes away.
import {
  connectNotifications, type EvEventMap, type NotifyNotification, type Room,
} from '@notify-bridge/client';
import { useRoom } from '@notify-bridge/client/react';

declare const n: NotifyNotification;

if (n.type === 'charging.progress' && n.data) {
  const kwh: number = n.data.kwh;
  const station: string = n.data.stationId;
  // @ts-expect-error charging.progress has no chargerId
  void n.data.chargerId;
  void kwh, station;
}
if (n.type === 'charger.faulted' && n.data) {
  const code: string = n.data.error;
  // @ts-expect-error charger.faulted has no kwh
  void n.data.kwh;
  void code;
}
switch (n.type) {
  case 'station.online':
  case 'station.offline':
    void (n.data?.stationId satisfies string | undefined);
    break;
  case 'customer.updated':
    void (n.data?.change satisfies string | undefined);
    break;
  default:
    break;
}
// @ts-expect-error not a type of the catalogue
if (n.type === 'charging.paused') void n;

// Rooms are template literals.
const ok: Room[] = ['customer:123', 'cms:dashboard'];
// @ts-expect-error a room must be customer:<id> or cms:<name>
const bad: Room = 'station:1';
void ok, bad;

// Your own event types next to the catalogue's.
type MyEvents = EvEventMap & { 'tariff.changed': { tariffId: string; pricePerKwh: number } };
connectNotifications<MyEvents>({
  rooms: ['cms:sessions'],
  onNotification: (m) => {
    if (m.type === 'tariff.changed' && m.data) void (m.data.pricePerKwh satisfies number);
  },
});

// Everything untyped.
connectNotifications<Record<string, unknown>>({ onNotification: (m) => void (m.data satisfies unknown) });

// @ts-expect-error rooms are checked in options too
connectNotifications({ rooms: ['dashboard'] });

// The hooks narrow the same way.
export function useKwh(customerId: string): number | undefined {
  const { items } = useRoom(`customer:${customerId}`);
  const last = items[0];
  return last?.type === 'charging.progress' ? last.data?.kwh : undefined;
}

// The DOM's Notification is still the DOM's.
const permission: NotificationPermission = Notification.permission;
void permission;
