#!/usr/bin/env node
// Polling: with RabbitMQ off, the pages poll, and a notification POSTed to the daemon appears after a poll.
import {
  parseArgs, tokenFor, requireTokens, runTest, expectSelector, expectInPage, screenshot, uniqueId, getJson, redact, TestFailure,
} from './lib.mjs';
import { connectPage } from './lib.mjs';

const USAGE = `usage: node tests/browser/polling.mjs --base URL
         [--customer ID] [--customer-token T] [--cms-token T] [--service-token T] [--jwt-secret S]
Daemon must run with ENABLE_RABBITMQ=false (a small POLL_INTERVAL_MS keeps the test short).
Tokens are minted from --jwt-secret when not given; neither is needed when the daemon's auth is off.`;

const args = parseArgs({
  base: { env: ['BASE_URL'], required: true },
  customer: { env: ['CUSTOMER_ID'], default: '123' },
  'customer-token': { env: ['CUSTOMER_TOKEN'] },
  'cms-token': { env: ['CMS_TOKEN'] },
  'service-token': { env: ['SERVICE_TOKEN'] },
  'jwt-secret': { env: ['JWT_SECRET'] },
}, USAGE);

const customerToken = tokenFor(args.customerToken, args.jwtSecret, { sub: args.customer, role: 'customer' });
const cmsToken = tokenFor(args.cmsToken, args.jwtSecret, { sub: 'browser-test', role: 'cms' });
const serviceToken = tokenFor(args.serviceToken, args.jwtSecret, { sub: 'browser-test', role: 'service' });

await runTest('polling', async ({ open }) => {
  const config = await getJson(`${args.base}/api/config`);
  if (config.ENABLE_RABBITMQ !== false) throw new TestFailure(`daemon at ${args.base} has ENABLE_RABBITMQ=${config.ENABLE_RABBITMQ}; this test needs false`);
  requireTokens(config, [customerToken, cmsToken, serviceToken]);
  const pollMs = Number(config.pollIntervalMs) || 10000;

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

  // data-state="polling" is set after the first successful poll, so the page has its cursor by then.
  for (const page of [customer, dashboard]) {
    await expectSelector(page, '#mode[data-mode="polling"]', 'polling mode');
    await expectSelector(page, '#state[data-state="polling"]', 'a successful poll', pollMs + 10000);
    const mode = await page.textContent('#mode');
    if (mode.trim() !== 'Polling') throw new TestFailure(`${page.testName}: #mode reads "${mode}", expected "Polling"`);
  }

  if (hasStats) await expectSelector(dashboard, '#stats:not([hidden])', 'the statistics panel');
  else if (!(await dashboard.isHidden('#stats'))) throw new TestFailure('dashboard: a statistics panel without /api/stats');
  const sessionsBefore = hasStats ? await dashboard.evaluate(() => sessionCount()) : 0;
  const messageId = uniqueId('poll');
  const recipient = Number(args.customer) || args.customer;
  const body = {
    type: 'charging.started',
    category: 'session',
    recipients: [recipient],
    data: { sessionId: `s-${messageId}`, customerId: recipient, kwh: 0, stationId: 'ST-007' },
    messageId,
  };
  const url = `${args.base}/api/notifications`;
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(serviceToken ? { Authorization: `Bearer ${serviceToken}` } : {}) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  if (res.status !== 202) throw new TestFailure(`POST ${redact(url)} → ${res.status} ${await res.text()}`);
  console.log(`posted ${messageId}; poll interval ${pollMs} ms`);

  const item = `#events li[data-message-id="${messageId}"]`;
  for (const page of [customer, dashboard]) {
    await expectSelector(page, item, `notification ${messageId} after a poll`, pollMs * 2 + 10000);
    if ((await page.textContent('#mode')).trim() !== 'Polling') throw new TestFailure(`${page.testName}: left polling mode`);
  }
  if (hasStats) await expectInPage(dashboard, (before) => sessionCount() > before, sessionsBefore, `session counter above ${sessionsBefore}`, 5000);
  // The customer sees the session as a card above the log.
  await expectSelector(customer, '#session:not([hidden])', 'the session card');
  const station = await customer.textContent('#session-station');
  if (station !== body.data.stationId) throw new TestFailure(`customer: the session card shows station "${station}", expected ${body.data.stationId}`);

  await screenshot(customer, 'polling-customer.png');
  await screenshot(dashboard, 'polling-dashboard.png');
});
