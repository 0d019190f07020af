// The client package as other teams get it: client/ copied alone (no repository around it)
// installs its own devDependencies, packs, and a fresh app installs the tarball as the README
// says, imports both entry points in Node and type-checks a strict TypeScript + React module
// against it; the README shows the examples that `tsc` checks; the committed browser bundles
// are what the build makes from the package's source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bundle, DEFAULT_OUT, VERSIONED_OUT } from '../../client/bundle.mjs';
import { REPO } from './daemon.mjs';

const CLIENT = path.join(REPO, 'client');
const versionOf = (name) => JSON.parse(fs.readFileSync(path.join(REPO, 'node_modules', name, 'package.json'), 'utf8')).version;

test('the committed browser bundles, versioned and not, are what the build makes from the package source', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nb-bundle-'));
  try {
    const fresh = path.join(dir, 'notify-client.js');
    await bundle(fresh);
    for (const committed of [DEFAULT_OUT, VERSIONED_OUT]) {
      assert.ok(fs.existsSync(committed), `${path.relative(REPO, committed)} is missing: run \`npm run bundle\``);
      assert.ok(
        fs.readFileSync(fresh).equals(fs.readFileSync(committed)),
        `${path.relative(REPO, committed)} is stale: run \`npm run bundle\` and commit it`,
      );
    }
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

// What a fresh Vite + React + TypeScript app compiles with (its tsconfig.app.json), minus
// skipLibCheck so the package's declarations are checked too.
const APP_TSCONFIG = {
  compilerOptions: {
    target: 'es2022', lib: ['es2022', 'dom', 'dom.iterable'], module: 'esnext', moduleResolution: 'bundler',
    jsx: 'react-jsx', strict: true, noEmit: true, noUnusedLocals: true, noFallthroughCasesInSwitch: true,
    verbatimModuleSyntax: true, skipLibCheck: false, types: [],
  },
  include: ['src'],
};

const APP_SOURCE = `
import { useState } from 'react';
import { connectNotifications, type NotifyNotification } from '@notify-bridge/client';
import { NotifyProvider, useRoom } from '@notify-bridge/client/react';

export function describe(n: NotifyNotification): string {
  switch (n.type) {
    case 'charging.progress': return \`\${n.data?.kwh ?? 0} kWh at \${n.data?.stationId}\`;
    case 'charger.faulted': return \`\${n.data?.chargerId}: \${n.data?.error}\`;
    default: return n.type;
  }
}

export const client = connectNotifications({ baseUrl: 'http://127.0.0.1:3000', rooms: ['customer:1'], onNotification: describe });

function Kwh({ id }: { id: string }) {
  const { items, mode } = useRoom(\`customer:\${id}\`);
  const last = items.find((n) => n.type === 'charging.progress');
  return <p>{mode}: {last?.type === 'charging.progress' ? last.data?.kwh : '—'}</p>;
}

export function App() {
  const [id] = useState('1');
  return <NotifyProvider baseUrl="http://127.0.0.1:3000" getToken={() => ''}><Kwh id={id} /></NotifyProvider>;
}
`;

test('client/ copied alone packs, and a fresh app installs the tarball, imports it and type-checks strictly', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nb-pack-'));
  // Offline first: everything comes from the npm cache that installing the repository filled.
  const npm = (args, cwd) => execFileSync('npm', [...args, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8', timeout: 120000 });
  try {
    const copy = path.join(dir, 'client');
    fs.cpSync(CLIENT, copy, { recursive: true, filter: (src) => !/[\\/](node_modules|dist)$/.test(src) });

    // The README's steps, as written: `cd client && npm install && npm pack`.
    npm(['install'], copy);
    const packed = JSON.parse(npm(['pack', '--json'], copy));
    const files = packed[0].files.map((f) => f.path);
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/react.js', 'dist/react.d.ts', 'dist/events.d.ts', 'README.md']) {
      assert.ok(files.includes(f), `${f} not packed: ${files.join(', ')}`);
    }
    const tarball = path.join(copy, packed[0].filename);

    const app = path.join(dir, 'app');
    fs.mkdirSync(path.join(app, 'src'), { recursive: true });
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }));
    npm(['install', `socket.io-client@${versionOf('socket.io-client')}`, tarball,
      `react@${versionOf('react')}`, `@types/react@${versionOf('@types/react')}`, `typescript@${versionOf('typescript')}`], app);

    const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
      import { connectNotifications, tokenExp, isRoom, EV_EVENT_CATEGORIES } from '@notify-bridge/client';
      import { NotifyProvider, useRoom } from '@notify-bridge/client/react';
      console.log(typeof connectNotifications, typeof tokenExp, typeof NotifyProvider, typeof useRoom,
        isRoom('customer:1'), EV_EVENT_CATEGORIES['charging.progress']);
    `], { cwd: app, encoding: 'utf8', timeout: 30000 });
    assert.equal(out.trim(), 'function function function function true session');

    const source = fs.readFileSync(path.join(app, 'node_modules', '@notify-bridge', 'client', 'dist', 'index.js'), 'utf8');
    assert.ok(/from ['"]socket\.io-client['"]/.test(source), 'socket.io-client is imported as the peer dependency');

    fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify(APP_TSCONFIG));
    fs.writeFileSync(path.join(app, 'src', 'App.tsx'), APP_SOURCE);
    // A type error in the app's use of the package must fail, or the check above proves nothing.
    fs.writeFileSync(path.join(app, 'src', 'wrong.ts'), `import type { NotifyNotification } from '@notify-bridge/client';
export const f = (n: NotifyNotification) => (n.type === 'station.online' ? n.data?.kwh : 0);\n`);
    const tsc = path.join(app, 'node_modules', '.bin', 'tsc');
    assert.throws(() => execFileSync(tsc, ['-p', '.'], { cwd: app, encoding: 'utf8', timeout: 60000 }),
      (err) => /kwh/.test(String(err.stdout)), 'a wrong field on a narrowed event is a type error');
    fs.rmSync(path.join(app, 'src', 'wrong.ts'));
    try {
      execFileSync(tsc, ['-p', '.'], { cwd: app, encoding: 'utf8', timeout: 60000 });
    } catch (err) {
      assert.fail(`the fresh app does not type-check:\n${err.stdout}${err.stderr}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
