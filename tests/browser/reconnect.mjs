#!/usr/bin/env node
// Reconnect: a notification published while the page is cut off arrives exactly once after the link is back.
import net from 'node:net';
import {
  parseArgs, tokenFor, requireTokens, runTest, expectSelector, screenshot, publish, uniqueId, getJson, until, TestFailure,
} from './lib.mjs';
import { connectPage } from './lib.mjs';

const USAGE = `usage: node tests/browser/reconnect.mjs --base URL --amqp URL --exchange NAME
         [--customer ID] [--customer-token T] [--jwt-secret S]
Daemon must run with ENABLE_RABBITMQ=true and RABBITMQ_EXCHANGE=NAME. The page is opened through a
TCP proxy on 127.0.0.1 that the test cuts and restores; the daemon itself is asked directly.`;

const args = parseArgs({
  base: { env: ['BASE_URL'], required: true },
  amqp: { env: ['AMQP_URL', 'RABBITMQ_URL'], default: 'amqp://guest:guest@127.0.0.1:5672/%2f' },
  exchange: { env: ['EXCHANGE', 'RABBITMQ_EXCHANGE'], default: 'notifications' },
  customer: { env: ['CUSTOMER_ID'], default: '123' },
  'customer-token': { env: ['CUSTOMER_TOKEN'] },
  'jwt-secret': { env: ['JWT_SECRET'] },
}, USAGE);

const token = tokenFor(args.customerToken, args.jwtSecret, { sub: args.customer, role: 'customer' });
const room = `customer:${args.customer}`;
const recipient = Number(args.customer) || args.customer;

/** A TCP proxy to the daemon that can be cut (all connections dropped, new ones refused) and restored. */
async function startProxy(target) {
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return client.destroy();
    const upstream = net.connect(Number(target.port || 80), target.hostname.replace(/^\[|\]$/g, ''));
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((resolve, reject) => server.listen(0, '127.0.0.1', resolve).on('error', reject));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      cut = true;
      for (const s of sockets) s.destroy();
    },
    restore() { cut = false; },
    close() {
      this.cut();
      server.close();
    },
  };
}

await runTest('reconnect', async ({ open }) => {
  const config = await getJson(`${args.base}/api/config`);
  if (config.ENABLE_RABBITMQ !== true) throw new TestFailure(`daemon at ${args.base} has ENABLE_RABBITMQ=${config.ENABLE_RABBITMQ}; this test needs true`);
  requireTokens(config, [token]);
  const pollMs = Number(config.pollIntervalMs) || 10000;
  const proxy = await startProxy(new URL(args.base));
  try {
    const page = await open(`${proxy.url}/customer.html?${new URLSearchParams({ customer: args.customer })}`, 'customer');
    await connectPage(page, token);
    await expectSelector(page, '#mode[data-mode="realtime"]', 'real-time mode through the proxy');
    await screenshot(page, 'reconnect-1-realtime.png');

    proxy.cut();
    console.log('proxy cut');
    await expectSelector(page, '#mode:not([data-mode="realtime"])', 'leaving real-time mode after the cut');

    const messageId = uniqueId('reconnect');
    await publish(args.amqp, args.exchange, 'notification.session', {
      type: 'charging.stopped',
      recipients: [recipient],
      data: { sessionId: `s-${messageId}`, customerId: recipient, kwh: 12.5 },
      messageId,
    });
    console.log(`published ${messageId} while cut`);

    // Make sure the daemon has it before the page can reach the daemon again.
    await until(`daemon holding ${messageId} in ${room}`, async () => {
      const body = await getJson(`${args.base}/api/notifications?room=${encodeURIComponent(room)}&limit=1000`, token);
      return body.notifications.some((n) => n.messageId === messageId);
    });
    const item = `#events li[data-message-id="${messageId}"]`;
    if (await page.$(item)) throw new TestFailure('the notification reached the page while the proxy was cut');
    await screenshot(page, 'reconnect-2-cut.png');

    proxy.restore();
    console.log('proxy restored');
    // Socket.IO's reconnection back-off is at most 5 s by default; polling may get there first.
    await expectSelector(page, item, `notification ${messageId} after restoring`, pollMs + 20000);
    // Back in real time means the room was re-joined with its cursor and any replay is done.
    await expectSelector(page, '#mode[data-mode="realtime"]', 'real-time mode again', 20000);
    const count = await page.locator(item).count();
    if (count !== 1) throw new TestFailure(`expected the notification once on the page, found ${count}`);

    // The restored connection keeps delivering live.
    const liveId = uniqueId('after');
    await publish(args.amqp, args.exchange, 'notification.session', {
      type: 'charging.progress', recipients: [recipient], data: { kwh: 20 }, messageId: liveId,
    });
    await expectSelector(page, `#events li[data-message-id="${liveId}"]`, `live notification ${liveId}`);
    const again = await page.locator(item).count();
    if (again !== 1) throw new TestFailure(`the replayed notification now shows ${again} times`);
    await screenshot(page, 'reconnect-3-restored.png');
  } finally {
    proxy.close();
  }
});
