// The daemon's pages in headless Chromium as a phone (390 px wide) shows them, before and after
// connecting: no sideways scroll, no serious or critical axe-core violation, the connection
// form folded once notifications flow, errors that say what is wrong, a live region for new
// notifications, the session in progress as a card, and the dashboard's statistics panel
// (shown with /api/stats, hidden when the daemon answers 404). The pages served are the working
// tree's public/ (PUBLIC_DIR), so these tests need no rebuild of the binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { launchBrowser } from '../browser/lib.mjs';
import { REPO, freePort, startDaemon, token, unique } from './daemon.mjs';

const WAIT = { timeout: 15000 };
const PHONE = { width: 390, height: 844 };
const AXE = path.join(REPO, 'node_modules', 'axe-core', 'axe.min.js');

let daemon;
let browser;
before(async () => {
  daemon = await startDaemon({ vars: { POLL_INTERVAL_MS: '300', PUBLIC_DIR: path.join(REPO, 'public') } });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close().catch(() => {});
  await daemon?.cleanup();
});

async function phonePage(url) {
  const page = await browser.newPage({ viewport: PHONE, bypassCSP: true }) // the daemon's CSP would refuse the injected axe-core;
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.goto(url, { waitUntil: 'load' });
  return page;
}

/** The page is no wider than the phone: nothing to scroll sideways. */
async function assertFits(page, what) {
  const { scrollWidth, wide } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    // What sticks out, for the failure message.
    wide: [...document.querySelectorAll('body *')].filter((el) => el.getBoundingClientRect().right > innerWidth + 1)
      .slice(0, 5).map((el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}.${el.className}`),
  }));
  assert.ok(scrollWidth <= PHONE.width, `${what}: scrollWidth ${scrollWidth} > ${PHONE.width}; too wide: ${wide.join(', ')}`);
}

/** axe-core over the whole page: no violation of impact serious or critical. */
async function assertAccessible(page, what) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('; ')})`);
  });
  assert.deepEqual(violations, [], `${what}: axe-core`);
}

const post = (body) => daemon.post(body);

test('the landing page fits a phone and passes axe', async () => {
  const page = await phonePage(`${daemon.base}/`);
  await page.waitForFunction(() => !/checking/.test(document.getElementById('daemon-mode').textContent), null, WAIT);
  await assertFits(page, 'index.html');
  await assertAccessible(page, 'index.html');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('customer page: fits, passes axe, folds the form, announces, and shows the session as a card', async () => {
  const customer = unique('c').replace(/\W/g, '');
  const page = await phonePage(`${daemon.base}/customer.html?customer=${customer}`);
  await page.waitForSelector('#auth-hint:has-text("required")', WAIT);
  await assertFits(page, 'customer.html, not connected');
  await assertAccessible(page, 'customer.html, not connected');

  await page.fill('#token', token({ sub: customer, role: 'customer' }));
  await page.click('#connect');
  await page.waitForSelector('#state[data-state="polling"]', WAIT);
  assert.equal(await page.$eval('#connection', (d) => d.open), false, 'the connection form folds away once connected');
  assert.match(await page.textContent('#connection-summary'), new RegExp(`customer:${customer}`));

  const stationId = 'ST-LONG-STATION-NAME-0042';
  await post({ category: 'session', type: 'charging.started', recipients: [customer], data: { sessionId: 's-9', customerId: customer, stationId, kwh: 0 } });
  await post({ category: 'session', type: 'charging.progress', recipients: [customer], data: { sessionId: 's-9', customerId: customer, stationId, kwh: 2.5 } });
  await page.waitForSelector('#session:not([hidden]) #session-kwh:text-is("2.50")', WAIT);
  assert.equal(await page.textContent('#session-station'), stationId);
  assert.match(await page.textContent('#session-duration'), /^\d+:\d\d$/);
  // The card is above the log.
  const [card, log] = await page.$$eval('#session, #events', (els) => els.map((e) => e.getBoundingClientRect().top));
  assert.ok(card < log, 'the session card is above the log');
  await page.waitForFunction(() => /Charging (started|progress)/.test(document.getElementById('announcer').textContent), null, WAIT);

  await post({ category: 'session', type: 'charging.stopped', recipients: [customer], data: { sessionId: 's-9', customerId: customer, stationId, kwh: 7.25 } });
  await page.waitForSelector('#session-status[data-status="stopped"]', WAIT);
  assert.equal(await page.textContent('#session-kwh'), '7.25');

  await assertFits(page, 'customer.html, connected, with a session');
  await assertAccessible(page, 'customer.html, connected, with a session');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('customer page errors say what is wrong: unreachable, needs a token, token refused', async () => {
  const page = await phonePage(`${daemon.base}/customer.html?customer=1`);
  await page.waitForSelector('#auth-hint:has-text("required")', WAIT);

  await page.click('#connect');
  await page.waitForSelector('#message:not([hidden]):has-text("requires a token")', WAIT);

  await page.fill('#token', token({ sub: '1', role: 'customer' }).replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')));
  await page.click('#connect');
  await page.waitForSelector('#message:not([hidden]):has-text("refused this token")', WAIT);
  assert.equal(await page.getAttribute('#mode', 'data-mode'), 'off', 'a refused token is not "Connecting…"');
  assert.equal(await page.getAttribute('#state', 'data-state'), 'error');
  assert.equal(await page.$eval('#connection', (d) => d.open), true, 'the form is open again to fix it');

  await page.fill('#base-url', `http://127.0.0.1:${await freePort()}`);
  await page.click('#connect');
  await page.waitForSelector('#message:not([hidden]):has-text("Cannot reach the daemon")', WAIT);
  assert.doesNotMatch(await page.textContent('#message'), /requires a token/);
  await assertFits(page, 'customer.html, with an error');
  await page.close();
});

const STATS = {
  generatedAt: '2026-12-06T10:15:02Z',
  since: '2026-11-22T08:00:00Z',
  timezone: 'Asia/Karachi',
  today: '2026-12-06',
  total: { all: 18210, today: 412 },
  categories: { session: { all: 9100, today: 230 }, station: { all: 5200, today: 95 } },
  types: { 'charging.started': { all: 3050, today: 77 } },
  perMinute: Array.from({ length: 60 }, (_, i) => ({
    minute: new Date(Date.UTC(2026, 11, 6, 9, 16 + i)).toISOString().replace('.000', ''),
    total: i % 7, categories: i % 7 ? { session: i % 7 - 1, station: 1 } : {},
  })),
};

for (const withStats of [false, true]) {
  test(`dashboard ${withStats ? 'with' : 'without (404)'} /api/stats: fits, passes axe, ${withStats ? 'shows' : 'hides'} the statistics`, async () => {
    const page = await browser.newPage({ viewport: PHONE, bypassCSP: true }) // the daemon's CSP would refuse the injected axe-core;
    // Answered here either way: the figures of section 7's example, or the 404 of a daemon
    // that predates /api/stats.
    await page.route('**/api/stats', (route) => (withStats
      ? route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(STATS) })
      : route.fulfill({ status: 404, contentType: 'application/json', body: '{"error":"not_found","message":"no such route"}' })));
    await page.goto(`${daemon.base}/dashboard.html`, { waitUntil: 'load' });
    await page.waitForSelector('#auth-hint:has-text("required")', WAIT);
    await assertFits(page, 'dashboard.html, not connected');
    await page.fill('#token', token({ sub: 'ops', role: 'cms' }));
    await page.click('#connect');
    await page.waitForSelector('#state[data-state="polling"]', WAIT);
    const messageId = unique('dash');
    await post({ category: 'charger', type: 'charger.faulted', messageId, data: { stationId: 'ST-1', chargerId: 'ST-1-C2', error: 'GroundFailure' } });
    await page.waitForSelector(`#events li[data-message-id="${messageId}"]`, WAIT);
    if (withStats) {
      await page.waitForSelector('#stats:not([hidden])', WAIT);
      assert.equal(await page.textContent('#count-all-total'), (18210).toLocaleString('en-US'));
      assert.equal(await page.textContent('#count-session-today'), '230');
      assert.equal(await page.textContent('#count-other-total'), (18210 - 9100 - 5200).toLocaleString('en-US'));
      assert.equal(await page.textContent('#chart-hour-total'), String(STATS.perMinute.reduce((s, m) => s + m.total, 0)));
    } else {
      assert.equal(await page.isHidden('#stats'), true, 'no statistics panel without /api/stats');
      assert.equal(await page.isHidden('#message'), true, 'a missing /api/stats is not an error');
    }
    assert.equal(await page.$eval('#events', (el) => el.tabIndex), 0, 'the scrolling event list is reachable by keyboard');
    await assertFits(page, 'dashboard.html, connected');
    await assertAccessible(page, 'dashboard.html, connected');
    await page.close();
  });
}
