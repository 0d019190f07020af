// Shared helpers for the browser tests: flags, tokens, Chromium, screenshots, failure reporting.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SCREENSHOT_DIR = path.resolve(process.env.SCREENSHOT_DIR || path.join(REPO, 'artifacts', 'screenshots'));

/**
 * `--name value` / `--name=value` flags, each falling back to an environment variable.
 * @param {Record<string, {env?: string[], default?: string, required?: boolean, help?: string}>} spec
 */
export function parseArgs(spec, usage) {
  const given = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z0-9-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) fail(`unexpected argument ${argv[i]}\n${usage}`);
    if (m[1] === 'help') {
      console.log(usage);
      process.exit(0);
    }
    if (!(m[1] in spec)) fail(`unknown flag --${m[1]}\n${usage}`);
    given[m[1]] = m[2] ?? argv[++i];
    if (given[m[1]] === undefined) fail(`--${m[1]} needs a value`);
  }
  const out = {};
  for (const [name, s] of Object.entries(spec)) {
    const fromEnv = (s.env ?? []).map((e) => process.env[e]).find((v) => v);
    const value = given[name] ?? fromEnv ?? s.default;
    if (s.required && !value) fail(`missing --${name}${s.env ? ` (or ${s.env.join(' / ')})` : ''}\n${usage}`);
    out[name.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
  }
  if (out.base) out.base = out.base.replace(/\/+$/, '');
  return out;
}

/** HS256 JWT, for when the test is given the daemon's secret instead of ready tokens. */
export function mintToken(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${head}.${crypto.createHmac('sha256', secret).update(head).digest('base64url')}`;
}

/** The given token, else one minted from the secret, else '' (daemon with auth off). */
export const tokenFor = (given, secret, claims) => given || (secret ? mintToken(secret, claims) : '');

export class TestFailure extends Error {}
export function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) fail(`no Chromium at ${executablePath}: apt-get install -y chromium, or set CHROMIUM_PATH`);
  return chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

/** A page at 1280x800 whose console errors and failed requests are kept for the failure report. */
export async function openPage(browser, url, name) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.log = [];
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') page.log.push(`[${name} console.${m.type()}] ${m.text()}`); });
  page.on('pageerror', (e) => page.log.push(`[${name} pageerror] ${e.message}`));
  page.on('requestfailed', (r) => page.log.push(`[${name} requestfailed] ${r.method()} ${redact(r.url())} ${r.failure()?.errorText}`));
  page.testName = name;
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 15000 });
  return page;
}

export const redact = (url) => url.replace(/([?&](token|secret)=)[^&]+/g, '$1…');

export async function screenshot(page, file) {
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const target = path.join(SCREENSHOT_DIR, file);
  await page.screenshot({ path: target, fullPage: false }).catch(() => {});
  console.log(`screenshot ${path.relative(process.cwd(), target)}`);
}

/** Wait for a selector with a bounded timeout; on time-out say what was expected and what the page shows. */
export async function expectSelector(page, selector, what, timeout = 15000) {
  try {
    return await page.waitForSelector(selector, { timeout, state: 'attached' });
  } catch {
    const status = await page.evaluate(() => ({
      mode: document.getElementById('mode')?.textContent,
      state: document.getElementById('state')?.textContent,
      message: document.getElementById('message')?.textContent,
      items: document.querySelectorAll('#events li[data-id]').length,
    })).catch(() => ({}));
    throw new TestFailure(`${page.testName}: ${what} not seen within ${timeout} ms (selector ${selector}); page shows ${JSON.stringify(status)}`);
  }
}

/** Wait until a function evaluated in the page returns something truthy, with a bounded timeout. */
export async function expectInPage(page, fn, arg, what, timeout = 15000) {
  try {
    await page.waitForFunction(fn, arg, { timeout });
  } catch {
    throw new TestFailure(`${page.testName}: ${what} not seen within ${timeout} ms`);
  }
}

/**
 * Connects a page the way a user does: the token typed into #token (pages never read one from
 * the address), then Connect. With the daemon's auth off and no token, autoconnect is enough.
 */
export async function connectPage(page, token) {
  if (token) await page.fill('#token', token);
  await page.click('#connect');
}

/** Fail early, with the fix, when the daemon wants tokens and the test was given none. */
export function requireTokens(config, tokens) {
  if (config.authRequired && tokens.some((t) => !t)) {
    throw new TestFailure('the daemon requires auth: pass --jwt-secret (or JWT_SECRET) or the --*-token flags');
  }
}

/** Run a test body with a browser, a global time limit and screenshots of every open page on failure. */
export async function runTest(name, body, { limitMs = 120000 } = {}) {
  const timer = setTimeout(() => fail(`${name}: gave up after ${limitMs} ms`), limitMs);
  const browser = await launchBrowser();
  const pages = [];
  const track = async (url, pageName) => {
    const page = await openPage(browser, url, pageName);
    pages.push(page);
    return page;
  };
  let code = 0;
  try {
    await body({ browser, open: track });
    console.log(`PASS: ${name}`);
  } catch (err) {
    code = 1;
    console.error(`FAIL: ${name}: ${err instanceof TestFailure ? err.message : err.stack}`);
    for (const page of pages) {
      await screenshot(page, `${name}-FAILED-${page.testName}.png`);
      page.log.slice(-20).forEach((l) => console.error(l));
    }
  } finally {
    clearTimeout(timer);
    await browser.close().catch(() => {});
  }
  process.exit(code);
}

export const uniqueId = (prefix) => `${prefix}-${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;

/** Publish one JSON message to a topic exchange with a publisher confirm. */
export async function publish(amqpUrl, exchange, routingKey, body) {
  const amqp = (await import('amqplib')).default;
  const conn = await amqp.connect(amqpUrl);
  conn.on('error', () => {}); // failures surface through the awaited calls below
  try {
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => {});
    // The daemon declares the exchange; a passive check turns a typo into a clear error.
    await ch.checkExchange(exchange).catch((e) => { throw new TestFailure(`exchange ${exchange} does not exist (is the daemon running with RABBITMQ_EXCHANGE=${exchange}?): ${e.message}`); });
    ch.publish(exchange, routingKey, Buffer.from(JSON.stringify(body)), {
      contentType: 'application/json',
      persistent: true,
      messageId: body.messageId,
    });
    await ch.waitForConfirms();
  } finally {
    await conn.close().catch(() => {});
  }
}

/** GET JSON from the daemon; throws with the status and body on a non-2xx answer. */
export async function getJson(url, token) {
  const res = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(10000) });
  const text = await res.text();
  if (!res.ok) throw new TestFailure(`GET ${redact(url)} → ${res.status} ${text}`);
  return JSON.parse(text);
}

/** Bounded check of a condition that has no page element to wait on (e.g. the daemon's own state). */
export async function until(what, check, { timeout = 15000, every = 250 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, every));
  }
  throw new TestFailure(`${what} not true within ${timeout} ms${last ? ` (last error: ${last.message})` : ''}`);
}
