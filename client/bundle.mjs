// Builds the browser bundle the daemon's pages import: this package and socket.io-client in one
// ES module, written twice: public/vendor/notify-client-<version>.js, which never changes under
// its name (the daemon serves it with `Cache-Control: immutable`, for modules on other origins
// to import), and public/vendor/notify-client.js, the unversioned alias the daemon's own pages
// use (revalidated on every load). Both are committed so a plain `cargo build` embeds them.
// Usage: node client/bundle.mjs [outfile]   (with outfile: that one file only)
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const VENDOR = path.join(here, '..', 'public', 'vendor');
export const VERSION = JSON.parse(fs.readFileSync(path.join(here, 'package.json'), 'utf8')).version;
export const DEFAULT_OUT = path.join(VENDOR, 'notify-client.js');
export const VERSIONED_OUT = path.join(VENDOR, `notify-client-${VERSION}.js`);

export async function bundle(outfile = DEFAULT_OUT) {
  await build({
    entryPoints: [path.join(here, 'src', 'index.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    minify: true,
    legalComments: 'none',
    banner: { js: `/* @notify-bridge/client ${VERSION} with socket.io-client (MIT) */` },
    logLevel: 'warning',
    outfile,
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv[2]) {
    await bundle(process.argv[2]);
  } else {
    await bundle(DEFAULT_OUT);
    // Older versioned bundles stay: pages and modules elsewhere may still import them.
    fs.copyFileSync(DEFAULT_OUT, VERSIONED_OUT);
  }
}
