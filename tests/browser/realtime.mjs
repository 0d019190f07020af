#!/usr/bin/env node
// Real time: a notification published to RabbitMQ shows up on the customer page and the dashboard.
import {
  parseArgs, tokenFor, requireTokens, runTest, expectSelector, expectInPage, screenshot, publish, uniqueId, getJson, TestFailure,
} from './lib.mjs';
import { connectPage } from './lib.mjs';

const USAGE = `usage: node tests/browser/realtime.mjs --base URL --amqp URL --exchange NAME
         [--customer ID] [--customer-token T] [--cms-token T] [--jwt-secret S]
Daemon must run with ENABLE_RABBITMQ=true and RABBITMQ_EXCHANGE=NAME.
Tokens are minted from --jwt-secret when not given; neither is needed when the daemon's auth is off.`;

const args = parseArgs({
  base: { env: ['BASE_URL'], required: true },
  amqp: { env: ['AMQP_URL', 'RABBITMQ_URL'], default: 'amqp://guest:guest@127.0.0.1:5672/%2f' },
  exchange: { env: ['EXCHANGE', 'RABBITMQ_EXCHANGE'], default: 'notifications' },
  customer: { env: ['CUSTOMER_ID'], default: '123' },
  'customer-token': { env: ['CUSTOMER_TOKEN'] },
  'cms-token': { env: ['CMS_TOKEN'] },
  'jwt-secret': { env: ['JWT_SECRET'] },
}, USAGE);

const customerToken = tokenFor(args.customerToken, args.jwtSecret, { sub: args.customer, role: 'customer' });
const cmsToken = tokenFor(args.cmsToken, args.jwtSecret, { sub: 'browser-test', role: 'cms' });

await runTest('realtime', async ({ open }) => {
  const config = await getJson(`${args.base}/api/config`);
  if (config.ENABLE_RABBITMQ !== true) throw new TestFailure(`daemon at ${args.base} has ENABLE_RABBITMQ=${config.ENABLE_RABBITMQ}; this test needs true`);
  requireTokens(config, [customerToken, cmsToken]);

  const customer = await open(`${args.base}/customer.html?${new URLSearchParams({ customer: args.customer })}`, 'customer');
  const dashboard = await open(`${args.base}/dashboard.html`, 'dashboard');
  await connectPage(customer, customerToken);
  await connectPage(dashboard, cmsToken);
  await dashboard.evaluate(() => {
    window.sessionCount = () => Number(document.getElementById('count-session-total').textContent.replace(/\D/g, ''));
  });
  // The statistics panel shows the daemon's figures (GET /api/stats, the `stats` event); a
  // daemon without /api/stats gets a dashboard without it.
  const statsStatus = (await fetch(`${args.base}/api/stats`, {
    headers: cmsToken ? { Authorization: `Bearer ${cmsToken}` } : {}, signal: AbortSignal.timeout(10000),
  })).status;
  const hasStats = statsStatus !== 404;

  // The client reports "realtime" only once its rooms are joined, so publishing after this is safe.
  for (const page of [customer, dashboard]) await expectSelector(page, '#mode[data-mode="realtime"]', 'real-time mode');

  if (hasStats) await expectSelector(dashboard, '#stats:not([hidden])', 'the statistics panel');
  else if (!(await dashboard.isHidden('#stats'))) throw new TestFailure('dashboard: a statistics panel without /api/stats');
  const sessionsBefore = hasStats ? await dashboard.evaluate(() => sessionCount()) : 0;
  const messageId = uniqueId('rt');
  const data = { sessionId: `s-${messageId}`, customerId: Number(args.customer) || args.customer, kwh: 0, stationId: 'ST-042' };
  await publish(args.amqp, args.exchange, 'notification.session', {
    type: 'charging.started', recipients: [Number(args.customer) || args.customer], data, messageId,
  });
  console.log(`published ${messageId} to ${args.exchange} (notification.session)`);

  const item = `#events li[data-message-id="${messageId}"]`;
  for (const page of [customer, dashboard]) {
    const el = await expectSelector(page, item, `notification ${messageId}`);
    const text = await el.textContent();
    if (!text.includes('Charging started')) throw new TestFailure(`${page.testName}: item text lacks the type: ${text}`);
    const mode = await page.textContent('#mode');
    if (mode.trim() !== 'Real time') throw new TestFailure(`${page.testName}: #mode reads "${mode}", expected "Real time"`);
  }
  if (hasStats) {
    await expectInPage(dashboard, (before) => sessionCount() > before, sessionsBefore, `session counter above ${sessionsBefore}`, 5000);
    // A reload shows the daemon's figures, not what the tab had counted itself.
    const reloaded = await open(`${args.base}/dashboard.html`, 'dashboard-reloaded');
    await connectPage(reloaded, cmsToken);
    await expectSelector(reloaded, '#stats:not([hidden])', 'the statistics panel after a reload');
    const figures = await getJson(`${args.base}/api/stats`, cmsToken);
    const shown = (id) => reloaded.evaluate((el) => Number(document.getElementById(el).textContent.replace(/\D/g, '')), id);
    await expectInPage(
      reloaded,
      (want) => Number(document.getElementById('count-all-total').textContent.replace(/\D/g, '')) === want,
      figures.total.all,
      `all = ${figures.total.all} after a reload, as /api/stats says`,
      5000,
    );
    const session = await shown('count-session-total');
    if (session !== (figures.categories.session?.all ?? 0)) {
      throw new TestFailure(`dashboard after a reload: sessions ${session}, /api/stats says ${figures.categories.session?.all}`);
    }
  }
  // The customer sees the session as a card above the log.
  await expectSelector(customer, '#session:not([hidden])', 'the session card');
  const station = await customer.textContent('#session-station');
  if (station !== data.stationId) throw new TestFailure(`customer: the session card shows station "${station}", expected ${data.stationId}`);

  await screenshot(customer, 'realtime-customer.png');
  await screenshot(dashboard, 'realtime-dashboard.png');
});
