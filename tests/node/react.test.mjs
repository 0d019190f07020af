// @notify-bridge/client/react in headless Chromium, in an app served from another origin than
// the daemon: one NotifyProvider and four useRoom widgets (two on the same room) open one
// socket, keep it while the app re-renders with a new inline getToken every time, and each
// widget shows the notifications of its room.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { build } from 'esbuild';
import http from 'node:http';
import path from 'node:path';
import { launchBrowser } from '../browser/lib.mjs';
import { REPO, startDaemon, token, unique } from './daemon.mjs';

const WAIT = { timeout: 20000 };

/** The fixture app bundled by esbuild, on a server of its own (another origin than the daemon). */
async function serveApp() {
  const out = await build({
    entryPoints: [path.join(REPO, 'tests', 'node', 'fixtures', 'provider-app.jsx')],
    bundle: true, write: false, format: 'esm', jsx: 'automatic', logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"development"' },
    alias: { '@notify-bridge/client/react': path.join(REPO, 'client', 'src', 'react.ts') },
  });
  const js = out.outputFiles[0].text;
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/app.js')) {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(js);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><html lang="en"><title>app</title><div id="root"></div><script type="module" src="/app.js"></script>');
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

test('one NotifyProvider opens one socket for several useRoom widgets, and re-renders do not reconnect', async () => {
  const daemon = await startDaemon({ rabbit: true, vars: { CORS_ORIGINS: '*' } });
  const app = await serveApp();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    const sockets = [];
    page.on('websocket', (ws) => { if (ws.url().includes('/socket.io/')) sockets.push(ws.url()); });
    const q = new URLSearchParams({ base: daemon.base, token: token({ sub: 'ops', role: 'cms' }) });
    await page.goto(`${app.base}/?${q}`, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('#status[data-mode="realtime"][data-state="connected"]', WAIT);

    // Several hundred milliseconds of re-renders, each with a new getToken.
    const renders = Number(await page.textContent('#renders'));
    await page.waitForFunction((n) => Number(document.getElementById('renders').textContent) > n + 10, renders, WAIT);

    const toCustomer = unique('react');
    await daemon.post({ category: 'session', type: 'charging.progress', recipients: [7], messageId: toCustomer,
      data: { sessionId: 's-1', customerId: 7, stationId: 'ST-1', kwh: 1.5 } });
    for (const id of ['a', 'b', 'c', 'd']) {
      await page.waitForSelector(`[data-widget="${id}"] li[data-message-id="${toCustomer}"]`, WAIT);
    }
    const station = unique('react');
    await daemon.post({ category: 'station', type: 'station.offline', messageId: station, data: { stationId: 'ST-1' } });
    await page.waitForSelector(`[data-widget="d"] li[data-message-id="${station}"]`, WAIT);
    assert.equal(await page.locator(`[data-widget="a"] li[data-message-id="${station}"]`).count(), 0, 'a station event is not in customer:7');

    assert.equal(sockets.length, 1, `sockets opened: ${sockets.length}`);
  } finally {
    await browser.close().catch(() => {});
    await app.close();
    await daemon.cleanup();
  }
});
