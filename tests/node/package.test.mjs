// The client package as other teams get it: `npm pack` makes a tarball that a fresh app installs
// and imports; the README shows the examples that `tsc` checks; the committed browser bundle is
// what the build makes from the package's source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bundle, DEFAULT_OUT } from '../../client/bundle.mjs';
import { REPO } from './daemon.mjs';

const CLIENT = path.join(REPO, 'client');

test('the committed browser bundle is what the build makes from the package source', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nb-bundle-'));
  try {
    const fresh = path.join(dir, 'notify-client.js');
    await bundle(fresh);
    assert.ok(
      fs.readFileSync(fresh).equals(fs.readFileSync(DEFAULT_OUT)),
      'public/vendor/notify-client.js is stale: run `npm run bundle` and commit it',
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the README shows the type-checked examples as they are', () => {
  const readme = fs.readFileSync(path.join(CLIENT, 'README.md'), 'utf8');
  for (const file of fs.readdirSync(path.join(CLIENT, 'examples'))) {
    const code = fs.readFileSync(path.join(CLIENT, 'examples', file), 'utf8').trim();
    assert.ok(readme.includes(code), `client/README.md does not show examples/${file} as it is`);
  }
});

test('npm pack makes a tarball that a fresh app installs and imports', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nb-pack-'));
  const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8', timeout: 120000 });
  try {
    const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], CLIENT));
    const files = packed[0].files.map((f) => f.path);
    assert.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts') && files.includes('README.md'), files.join(', '));
    const tarball = path.join(dir, packed[0].filename);

    const app = path.join(dir, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }));
    const peer = JSON.parse(fs.readFileSync(path.join(REPO, 'node_modules', 'socket.io-client', 'package.json'), 'utf8')).version;
    npm(['install', '--prefer-offline', tarball, `socket.io-client@${peer}`], app);

    const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
      import { connectNotifications, tokenExp } from '@notify-bridge/client';
      console.log(typeof connectNotifications, typeof tokenExp);
    `], { cwd: app, encoding: 'utf8', timeout: 30000 });
    assert.equal(out.trim(), 'function function');
    const installed = path.join(app, 'node_modules', '@notify-bridge', 'client', 'dist');
    assert.ok(fs.existsSync(path.join(installed, 'index.d.ts')), 'types are installed');
    const source = fs.readFileSync(path.join(installed, 'index.js'), 'utf8');
    assert.ok(!/from ['"]\.\.?\/vendor/.test(source), 'no relative vendor import');
    assert.ok(/from ['"]socket\.io-client['"]/.test(source), 'socket.io-client is imported as the peer dependency');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
