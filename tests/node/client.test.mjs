// @notify-bridge/client against the real daemon binary, in both modes: delivery, tokens
// (refresh before exp, token-expired then a new token, one retry after a 401), gaps (onReset
// after a restart), messageId dedupe, rooms changed on a live connection, and close().
// Run by `npm run test:client` (make test), after cargo has built target/debug/notify-bridge.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectNotifications } from '../../client/dist/index.js';
import { nowSecs, recorder, startDaemon, token, unique, until } from './daemon.mjs';

const customer = (sub, extra = {}) => token({ sub, role: 'customer', ...extra });

/** Runs `body` with a daemon and a client made by `makeClient`, always cleaning both up. */
async function withDaemon(settings, body) {
  const daemon = await startDaemon(settings);
  const clients = [];
  try {
    await body(daemon, (options) => {
      const client = connectNotifications({ baseUrl: daemon.base, ...options });
      clients.push(client);
      return client;
    });
  } catch (err) {
    err.message += `\ndaemon log:\n${daemon.log.join('').slice(-2000)}`;
    throw err;
  } finally {
    clients.forEach((c) => c.close());
    await daemon.cleanup();
  }
}

test('without RabbitMQ the client polls and delivers a posted notification', async () => {
  await withDaemon({ rabbit: false, vars: { POLL_INTERVAL_MS: '250' } }, async (daemon, connect) => {
    const rec = recorder();
    const client = connect({ token: customer('1'), rooms: ['customer:1'], ...rec.options });
    await until('first poll', () => client.state === 'polling');
    const messageId = unique('m');
    await daemon.post({ recipients: [1], messageId, data: { kwh: 3 } });
    const n = await rec.received((n) => n.messageId === messageId, 'the notification');
    assert.equal(n.room, 'customer:1');
    assert.deepEqual(n.data, { kwh: 3 });
    assert.equal(client.mode, 'polling');
    assert.equal(client.cursors['customer:1'], n.id);
  });
});

test('with RabbitMQ the client is in real time and delivers a published notification', async () => {
  await withDaemon({ rabbit: true }, async (daemon, connect) => {
    const rec = recorder();
    const client = connect({ getToken: () => customer('1'), rooms: ['customer:1'], transports: ['websocket'], ...rec.options });
    await until('real time', () => client.mode === 'realtime' && client.state === 'connected');
    const messageId = unique('m');
    await daemon.post({ recipients: [1], messageId });
    const n = await rec.received((n) => n.messageId === messageId, 'the notification');
    assert.equal(n.type, 'charging.started');
    assert.equal(client.mode, 'realtime');
  });
});

test('a token is refreshed on the live socket before its exp, so the socket never drops', async () => {
  await withDaemon({ rabbit: true }, async (daemon, connect) => {
    const rec = recorder();
    const issued = [];
    const getToken = () => {
      const exp = nowSecs() + 3;
      issued.push(exp);
      return customer('1', { exp });
    };
    const client = connect({ getToken, rooms: ['customer:1'], transports: ['websocket'], ...rec.options });
    await until('real time', () => client.state === 'connected');
    const firstExp = issued[0];
    // Past the first token's end, and past the second's.
    await until('two refreshes', () => issued.length >= 3, { timeout: 8000 });
    await until('past the first exp', () => nowSecs() > firstExp + 1);
    const messageId = unique('m');
    await daemon.post({ recipients: [1], messageId });
    await rec.received((n) => n.messageId === messageId, 'a notification after the first exp');
    assert.ok(!rec.states.includes('disconnected'), `the socket dropped: ${rec.states}`);
    assert.equal(client.mode, 'realtime');
  });
});

test('at token-expired the client connects again with a new token', async () => {
  await withDaemon({ rabbit: true }, async (daemon, connect) => {
    const rec = recorder();
    let calls = 0;
    const getToken = () => customer('1', { exp: nowSecs() + (++calls === 1 ? 2 : 3600) });
    const client = connect({ getToken, refresh: false, rooms: ['customer:1'], transports: ['websocket'], ...rec.options });
    await until('real time', () => client.state === 'connected');
    await until('disconnected at exp', () => rec.states.includes('disconnected'), { timeout: 5000 });
    await until('connected again', () => client.state === 'connected' && client.mode === 'realtime');
    assert.ok(calls >= 2, 'a new token was asked for');
    const messageId = unique('m');
    await daemon.post({ recipients: [1], messageId });
    await rec.received((n) => n.messageId === messageId, 'a notification on the new connection');
    assert.deepEqual(rec.errors.filter((e) => e.code === 'unauthorized'), []);
  });
});

test('a 401 and an unauthorized handshake are retried once with a fresh token', async () => {
  await withDaemon({ rabbit: false, vars: { POLL_INTERVAL_MS: '250' } }, async (_daemon, connect) => {
    const rec = recorder();
    let calls = 0;
    const client = connect({ getToken: () => (++calls === 1 ? 'stale' : customer('1')), rooms: ['customer:1'], ...rec.options });
    await until('a successful poll', () => client.state === 'polling');
    assert.ok(calls >= 2);
    assert.deepEqual(rec.errors, []);
  });
  await withDaemon({ rabbit: true }, async (_daemon, connect) => {
    const rec = recorder();
    let calls = 0;
    const client = connect({ getToken: () => (++calls === 1 ? 'stale' : customer('1')), rooms: ['customer:1'], transports: ['websocket'], ...rec.options });
    await until('connected', () => client.state === 'connected');
    assert.equal(client.mode, 'realtime');
  });
  await withDaemon({ rabbit: false }, async (_daemon, connect) => {
    const rec = recorder();
    const client = connect({ token: 'always-bad', rooms: ['customer:1'], ...rec.options });
    await until('gives up', () => client.state === 'error');
    assert.equal(rec.errors[0]?.code, 'unauthorized');
  });
});

test('after a restart in memory mode: onReset, and a messageId seen before reaches the callback once', async () => {
  await withDaemon({ rabbit: false, vars: { POLL_INTERVAL_MS: '250' } }, async (daemon, connect) => {
    const rec = recorder();
    const client = connect({ getToken: () => customer('1'), rooms: ['customer:1'], ...rec.options });
    await until('first poll', () => client.state === 'polling');
    const repeated = unique('repeated');
    await daemon.post({ recipients: [1], messageId: repeated });
    await rec.received((n) => n.messageId === repeated, 'the first copy');
    assert.deepEqual(rec.resets, []);

    // The new process knows neither the cursor nor the messageId.
    await daemon.restart();
    await daemon.post({ recipients: [1], messageId: repeated });
    const fresh = unique('fresh');
    await daemon.post({ recipients: [1], messageId: fresh });
    await rec.received((n) => n.messageId === fresh, 'a notification after the restart');
    assert.deepEqual(rec.resets, [{ room: 'customer:1' }]);
    assert.equal(rec.notifications.filter((n) => n.messageId === repeated).length, 1);
  });
});

test('join and leave change rooms on a live connection', async () => {
  await withDaemon({ rabbit: true }, async (daemon, connect) => {
    const rec = recorder();
    const client = connect({ getToken: () => token({ sub: 'ops', role: 'cms' }), rooms: ['customer:1'], transports: ['websocket'], ...rec.options });
    await until('real time', () => client.state === 'connected');

    assert.equal(await client.join('customer:2'), true);
    const first = unique('m');
    await daemon.post({ recipients: [2], messageId: first });
    await rec.received((n) => n.messageId === first && n.room === 'customer:2', 'a notification of the joined room');
    assert.deepEqual(client.rooms, ['customer:1', 'customer:2']);

    await client.leave('customer:2');
    const ignored = unique('left');
    const marker = unique('marker');
    await daemon.post({ recipients: [2], messageId: ignored });
    await daemon.post({ recipients: [1], messageId: marker });
    await rec.received((n) => n.messageId === marker, 'the marker in the remaining room');
    assert.ok(!rec.notifications.some((n) => n.messageId === ignored), 'nothing from the left room');
    assert.deepEqual(Object.keys(client.cursors), ['customer:1']);
    assert.equal(client.mode, 'realtime');

    // A room the token may not read is refused, and said so.
    const customerOnly = connect({ getToken: () => customer('1'), rooms: [], transports: ['websocket'], ...rec.options });
    await until('connected', () => customerOnly.state === 'connected');
    assert.equal(await customerOnly.join('customer:9'), false);
    assert.ok(rec.errors.some((e) => e.code === 'forbidden' && e.room === 'customer:9'));
  });
});

test('join and leave change the rooms polled, and a refused room does not stop the others', async () => {
  await withDaemon({ rabbit: false, vars: { POLL_INTERVAL_MS: '250' } }, async (daemon, connect) => {
    const rec = recorder();
    const client = connect({ token: customer('1'), rooms: ['customer:1'], ...rec.options });
    await until('first poll', () => client.state === 'polling');
    assert.equal(await client.join('customer:2'), false, 'another customer is forbidden');
    assert.ok(rec.errors.some((e) => e.code === 'forbidden' && e.room === 'customer:2'));
    const mine = unique('mine');
    await daemon.post({ recipients: [1], messageId: mine });
    await rec.received((n) => n.messageId === mine, 'the allowed room keeps polling');

    const staff = recorder();
    const cms = connect({ token: token({ sub: 'ops', role: 'cms' }), rooms: ['customer:1'], ...staff.options });
    await until('first poll', () => cms.state === 'polling');
    assert.equal(await cms.join('customer:2'), true);
    const joined = unique('joined');
    await daemon.post({ recipients: [2], messageId: joined });
    await staff.received((n) => n.messageId === joined, 'the joined room is polled');
    await cms.leave('customer:2');
    const left = unique('left');
    const marker = unique('marker');
    await daemon.post({ recipients: [2], messageId: left });
    await daemon.post({ recipients: [1], messageId: marker });
    await staff.received((n) => n.messageId === marker, 'the remaining room');
    assert.ok(!staff.notifications.some((n) => n.messageId === left), 'nothing from the left room');
  });
});

test('since resumes each room from its cursor', async () => {
  await withDaemon({ rabbit: false, vars: { POLL_INTERVAL_MS: '250' } }, async (daemon, connect) => {
    const first = recorder();
    const a = connect({ token: customer('1'), rooms: ['customer:1'], ...first.options });
    const before = unique('before');
    await daemon.post({ recipients: [1], messageId: before });
    await first.received((n) => n.messageId === before, 'the first');
    const cursors = a.cursors;
    a.close();

    const after = unique('after');
    await daemon.post({ recipients: [1], messageId: after });
    const second = recorder();
    connect({ token: customer('1'), rooms: ['customer:1'], since: cursors, ...second.options });
    await second.received((n) => n.messageId === after, 'what came after the cursor');
    assert.ok(!second.notifications.some((n) => n.messageId === before), 'nothing before the cursor');
    assert.deepEqual(second.resets, []);
  });
});

test('close() leaves no timer or socket behind, even right after connecting (StrictMode)', async () => {
  await withDaemon({ rabbit: true }, async (daemon) => {
    const handles = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout' || r === 'TCPSocketWrap').length;
    const baseline = handles();
    // A double mount: the first client is closed before it has even read /api/config.
    const first = connectNotifications({ baseUrl: daemon.base, getToken: () => customer('1'), rooms: ['customer:1'] });
    first.close();
    const second = connectNotifications({ baseUrl: daemon.base, getToken: () => customer('1'), rooms: ['customer:1'] });
    await until('connected', () => second.state === 'connected');
    assert.ok(handles() > baseline, 'a connected client holds handles');
    second.close();
    second.close();
    await until('handles released', () => handles() <= baseline);
    assert.equal(second.state, 'closed');
  });
});
