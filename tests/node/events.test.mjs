// The EV event catalogue (schemas/events/) is usable as published: each schema compiles and
// accepts its own example, ev-notification.schema.json types `data` by `type` (and lets other
// types through), and the statistics schema takes a contract section 7 answer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { REPO } from './daemon.mjs';

const require = createRequire(import.meta.url);
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

const SCHEMAS = path.join(REPO, 'schemas');
const read = (file) => JSON.parse(fs.readFileSync(file, 'utf8'));
const ajv = new Ajv2020({ allErrors: true, strict: false });
addFormats(ajv);
const files = [
  ...fs.readdirSync(SCHEMAS).filter((f) => f.endsWith('.json')).map((f) => path.join(SCHEMAS, f)),
  ...fs.readdirSync(path.join(SCHEMAS, 'events')).map((f) => path.join(SCHEMAS, 'events', f)),
];
for (const file of files) ajv.addSchema(read(file));
const validate = (name) => ajv.getSchema(`https://notify-bridge.example/schemas/${name}`);

const envelope = (type, data) => ({ id: 'k3x9-42', room: 'customer:101', category: 'session', type, data, messageId: null, timestamp: '2026-11-22T10:00:00Z' });

test('every event schema accepts its own example, and names its type and category', () => {
  const events = fs.readdirSync(path.join(SCHEMAS, 'events'));
  assert.ok(events.length >= 7, events.join(', '));
  for (const f of events) {
    const schema = read(path.join(SCHEMAS, 'events', f));
    assert.equal(f, `${schema['x-notify-type']}.schema.json`);
    assert.ok(schema['x-notify-category'], `${f}: x-notify-category`);
    const check = validate(`events/${f}`);
    for (const example of schema.examples) assert.ok(check(example), `${f}: ${JSON.stringify(check.errors)}`);
    const ev = validate('ev-notification.schema.json');
    assert.ok(ev(envelope(schema['x-notify-type'], schema.examples[0])), `${f} in an envelope: ${JSON.stringify(ev.errors)}`);
  }
});

test('ev-notification types data by type and lets other types through', () => {
  const ev = validate('ev-notification.schema.json');
  const progress = { sessionId: 's-1', customerId: 101, stationId: 'ST-1', kwh: 2.5 };
  assert.ok(ev(envelope('charging.progress', progress)));
  assert.ok(ev(envelope('charging.progress', null)), 'data may be null');
  assert.equal(ev(envelope('charging.progress', { ...progress, kwh: '2.5' })), false, 'kwh must be a number');
  assert.equal(ev(envelope('charger.faulted', { stationId: 'ST-1' })), false, 'chargerId and error are required');
  assert.ok(ev(envelope('tariff.changed', { anything: true })), 'a type outside the catalogue carries any data');
});

test('the statistics schema takes an answer shaped as contract section 7 says', () => {
  const stats = validate('stats.schema.json');
  const answer = {
    generatedAt: '2026-12-06T10:15:02Z', since: '2026-11-22T08:00:00Z', timezone: 'Asia/Karachi', today: '2026-12-06',
    total: { all: 18210, today: 412 },
    categories: { session: { all: 9100, today: 230 }, station: { all: 5200, today: 95 } },
    types: { 'charging.started': { all: 3050, today: 77 } },
    perMinute: Array.from({ length: 60 }, (_, i) => ({ minute: `2026-12-06T09:${String(i).padStart(2, '0')}:00Z`, total: 0, categories: {} })),
  };
  assert.ok(stats(answer), JSON.stringify(stats.errors));
  assert.equal(stats({ ...answer, perMinute: answer.perMinute.slice(1) }), false, 'perMinute has 60 entries');
});
