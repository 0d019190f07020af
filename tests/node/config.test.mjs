// A client pointed at something that is not the daemon (a dev server's or nginx's HTML fallback
// page on every path, a wrong baseUrl, nothing listening) says so through onError and asks
// again with backoff, instead of asking again at once, forever.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { connectNotifications } from '../../client/dist/index.js';
import { freePort, recorder, until } from './daemon.mjs';

const WINDOW_MS = 5000;

/** A server answering `status` with an HTML page on every path, counting requests per path. */
async function htmlServer(status) {
  const hits = new Map();
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    res.writeHead(status, { 'content-type': 'text/html' });
    res.end('<!doctype html><html><body><div id="root"></div><script type="module" src="/src/main.tsx"></script></body></html>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${server.address().port}`, hits, close: () => new Promise((r) => server.close(r)) };
}

for (const status of [200, 404]) {
  test(`an HTML page (${status}) at /api/config: onError config_invalid, and fewer than 10 requests in 5 s`, async () => {
    const server = await htmlServer(status);
    const rec = recorder();
    const started = Date.now();
    const client = connectNotifications({ baseUrl: server.base, rooms: ['customer:1'], ...rec.options });
    try {
      const error = await until('onError', () => rec.errors[0], { timeout: WINDOW_MS });
      assert.equal(error.code, 'config_invalid');
      assert.match(error.message, /baseUrl/);
      // Watch the rest of the window: the client must keep its distance.
      await new Promise((r) => setTimeout(r, Math.max(0, WINDOW_MS - (Date.now() - started))));
      const asked = server.hits.get('/api/config') ?? 0;
      assert.ok(asked >= 2 && asked < 10, `/api/config asked ${asked} times in ${WINDOW_MS} ms`);
      assert.deepEqual([...server.hits.keys()], ['/api/config'], 'nothing else is asked before the config is read');
      assert.equal(client.mode, 'connecting');
      assert.ok(rec.errors.every((e) => e.code === 'config_invalid'), JSON.stringify(rec.errors));
    } finally {
      client.close();
      await server.close();
    }
  });
}

test('nothing listening at baseUrl: onError config_unreachable, then retries with backoff', async () => {
  const rec = recorder();
  const client = connectNotifications({ baseUrl: `http://127.0.0.1:${await freePort()}`, ...rec.options });
  try {
    const error = await until('onError', () => rec.errors[0], { timeout: WINDOW_MS });
    assert.equal(error.code, 'config_unreachable');
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(rec.errors.length <= 3, `${rec.errors.length} attempts in about 1.5 s`);
  } finally {
    client.close();
  }
});
