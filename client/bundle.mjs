// Builds the browser bundle the daemon's pages import: this package and socket.io-client in one
// ES module (public/vendor/notify-client.js, committed so a plain `cargo build` embeds it).
// Usage: node client/bundle.mjs [outfile]
import { build } from 'esbuild';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const DEFAULT_OUT = path.join(here, '..', 'public', 'vendor', 'notify-client.js');

export async function bundle(outfile = DEFAULT_OUT) {
  await build({
    entryPoints: [path.join(here, 'src', 'index.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    minify: true,
    legalComments: 'none',
    logLevel: 'warning',
    outfile,
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await bundle(process.argv[2]);
