// The README's "Replacing setInterval in a plain module": a plain <script type="module"> on
// another origin imports the daemon's versioned bundle (cached as immutable, beside the
// unversioned alias), and refreshes when a station or charger event arrives instead of every
// 10 s. The daemon serves its built-in pages and bundles here (no PUBLIC_DIR).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { launchBrowser } from '../browser/lib.mjs';
import { REPO, startDaemon, token, unique } from './daemon.mjs';

const VERSION = JSON.parse(fs.readFileSync(path.join(REPO, 'client', 'package.json'), 'utf8')).version;
const WAIT = { timeout: 15000 };

const page = (daemon, jwt) => `<!doctype html>
<html lang="en"><title>charging points</title>
<p id="refreshes">0</p><ul id="log"></ul>
<script type="module">
import { connectNotifications } from '${daemon}/vendor/notify-client-${VERSION}.js';
let refreshes = 0;
function refresh() { document.getElementById('refreshes').textContent = String(++refreshes); }
refresh();
connectNotifications({
  baseUrl: '${daemon}',
  getToken: () => '${jwt}',
  rooms: ['cms:stations', 'cms:points'],
  history: false,
  onNotification: (n) => {
    document.getElementById('log').insertAdjacentHTML('beforeend', '<li data-message-id="' + n.messageId + '">' + n.type + '</li>');
    refresh();
  },
  onReset: refresh,
});
</script>`;

test('a plain module on another origin imports the versioned bundle and refreshes on events', async () => {
  const daemon = await startDaemon({ vars: { POLL_INTERVAL_MS: '300', CORS_ORIGINS: '*' } });
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page(daemon.base, token({ sub: 'ops', role: 'cms' })));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const browser = await launchBrowser();
  try {
    const versioned = await fetch(`${daemon.base}/vendor/notify-client-${VERSION}.js`, { headers: { Origin: origin } });
    assert.equal(versioned.status, 200);
    assert.match(versioned.headers.get('content-type'), /javascript/);
    assert.equal(versioned.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.ok(versioned.headers.get('access-control-allow-origin'), 'the bundle may be imported from another origin');
    const alias = await fetch(`${daemon.base}/vendor/notify-client.js`);
    assert.equal(alias.headers.get('cache-control'), 'no-cache');
    assert.equal(await alias.text(), await versioned.text(), 'the alias is the current version');

    const tab = await browser.newPage();
    const errors = [];
    tab.on('pageerror', (e) => errors.push(e.message));
    await tab.goto(origin, { waitUntil: 'load' });
    await tab.waitForSelector('#refreshes:text-is("1")', WAIT);
    const messageId = unique('plain');
    await daemon.post({ category: 'station', type: 'station.offline', messageId, data: { stationId: 'ST-1' } });
    await tab.waitForSelector(`#log li[data-message-id="${messageId}"]`, WAIT);
    assert.equal(await tab.textContent('#refreshes'), '2');
    assert.deepEqual(errors, []);
  } finally {
    await browser.close().catch(() => {});
    await new Promise((r) => server.close(r));
    await daemon.cleanup();
  }
});
