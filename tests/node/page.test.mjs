// Headless Chromium on the daemon's own dashboard, whose client is the package bundled by
// esbuild: under the production CSP it connects, receives, and survives a daemon restart; it
// takes no token from the address and hides the mint-a-token UI while auth is on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser } from '../browser/lib.mjs';
import { startDaemon, token, unique, until } from './daemon.mjs';

const CSP = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";
const WAIT = { timeout: 20000 };

test('the dashboard built from the package connects, receives and survives a daemon restart', async () => {
  const daemon = await startDaemon({ rabbit: true });
  const browser = await launchBrowser();
  const problems = [];
  try {
    const page = await browser.newPage();
    page.on('console', (m) => { if (m.type() === 'error' && /Content.Security.Policy/i.test(m.text())) problems.push(m.text()); });
    page.on('pageerror', (e) => problems.push(e.message));
    // The pages as served in production: the document carries the CSP header.
    await page.route((url) => url.pathname.endsWith('.html'), async (route) => {
      const response = await route.fetch();
      await route.fulfill({ response, headers: { ...response.headers(), 'content-security-policy': CSP } });
    });

    const leaked = token({ sub: 'ops', role: 'cms' });
    await page.goto(`${daemon.base}/dashboard.html?autoconnect=1&token=${leaked}`, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => !location.search.includes('token'), null, WAIT);
    // The policy is in force (an inline script does not run), so the checks below mean something.
    const inline = await page.evaluate(() => {
      document.head.append(Object.assign(document.createElement('script'), { textContent: 'window.inlineRan = true' }));
      return window.inlineRan === true;
    });
    assert.equal(inline, false, 'the CSP is applied');
    await until('the probe reported as a CSP refusal', () => problems.length > 0);
    problems.length = 0; // that refusal was the probe's; any later one is the page's
    assert.equal(await page.inputValue('#token'), '', 'a token in the address is not used');
    await page.waitForSelector('#auth-hint:has-text("required")', WAIT);
    assert.equal(await page.isVisible('#secret'), false, 'no minting while auth is on');

    await page.fill('#token', token({ sub: 'ops', role: 'cms' }));
    await page.click('#connect');
    await page.waitForSelector('#mode[data-mode="realtime"]', WAIT);
    const first = unique('page');
    await daemon.post({ messageId: first });
    await page.waitForSelector(`#events li[data-message-id="${first}"]`, WAIT);

    await daemon.restart();
    await page.waitForSelector('#mode[data-mode="realtime"]', WAIT);
    const second = unique('page');
    await daemon.post({ messageId: second });
    await page.waitForSelector(`#events li[data-message-id="${second}"]`, WAIT);
    assert.deepEqual(problems, []);
    await page.unrouteAll({ behavior: 'ignoreErrors' });
  } finally {
    await browser.close().catch(() => {});
    await daemon.cleanup();
  }
});
